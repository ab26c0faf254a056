#!/usr/bin/env bash
# Gateway benchmark: requests/s and latency through `ficus gateway` and through nginx set up
# as the same reverse proxy in front of the same upstream, and straight to the upstream (the
# limit), measured side by side in one run with wrk on loopback. Medians of RUNS runs.
#
#   bench/gateway.sh                 # DURATION=10 CONNS=64 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
RUNS=${RUNS:-3}
UP=127.0.0.1:18081
FICUS=127.0.0.1:18082
NGINX=127.0.0.1:18083

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
fi
cargo build --release -q -p ficus-server
BIN=$PWD/target/release/ficus

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN" debug upstream --listen "$UP" & pids+=($!)

cat > "$work/routes.toml" <<TOML
[upstreams]
legacy = "http://$UP"

[[routes]]
name = "all"
path_prefix = "/"
legacy = "legacy"
TOML
FICUS_AUTH_HS256_SECRET=bench "$BIN" gateway --routes "$work/routes.toml" --listen "$FICUS" \
  --log-format text 2>/dev/null & pids+=($!)

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream legacy { server $UP; keepalive 256; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://legacy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf"

for addr in "$UP" "$FICUS" "$NGINX"; do
  for _ in $(seq 100); do curl -fs "http://$addr/p" >/dev/null && break; sleep 0.1; done
done

# wrk prints latencies as 812.00us, 1.23ms or 1.05s: in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A rps p50 p99
for target in upstream ficus nginx; do
  case $target in upstream) addr=$UP ;; ficus) addr=$FICUS ;; nginx) addr=$NGINX ;; esac
  r=(); a=(); b=()
  for run in $(seq "$RUNS"); do
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "http://$addr/api/products/1")
    r+=("$(awk '/Requests\/sec/ { print $2 }' <<<"$out")")
    a+=("$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")")
    b+=("$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")")
    echo "run $run/$RUNS $target: ${r[-1]} req/s, p50 ${a[-1]} ms, p99 ${b[-1]} ms" >&2
  done
  rps[$target]=$(printf '%s\n' "${r[@]}" | median)
  p50[$target]=$(printf '%s\n' "${a[@]}" | median)
  p99[$target]=$(printf '%s\n' "${b[@]}" | median)
done

echo
echo "gateway benchmark — wrk -t2 -c$CONNS -d${DURATION}s, median of $RUNS runs, all on this machine"
echo
echo "| path | requests/s | p50 | p99 | p99 added over direct |"
echo "|---|---:|---:|---:|---:|"
for target in upstream ficus nginx; do
  added=$(awk -v x="${p99[$target]}" -v d="${p99[upstream]}" 'BEGIN { printf "%.3f", x - d }')
  printf '| %s | %.0f | %s ms | %s ms | %s ms |\n' "$target" "${rps[$target]}" "${p50[$target]}" "${p99[$target]}" "$added"
done
awk -v f="${rps[ficus]}" -v n="${rps[nginx]}" 'BEGIN { printf "\nficus / nginx throughput: %.2f\n", f / n }'
