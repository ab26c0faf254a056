#!/usr/bin/env bash
# Gateway benchmark: requests/s and latency through `ficus gateway` and through nginx and
# HAProxy set up as the same reverse proxy in front of the same upstream, and straight to the
# upstream (the limit), measured side by side in one run with wrk on loopback. Medians of
# RUNS runs; each run measures every path once, so a ratio compares paths of the same run.
#
#   bench/gateway.sh                 # DURATION=10 CONNS=64 RUNS=3
#   JSON_OUT=gw.json bench/gateway.sh   # also write every run and the medians as JSON
#   BIN=target/release/ficus bench/gateway.sh   # use an already built binary (bench/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
RUNS=${RUNS:-3}
UP=127.0.0.1:18081
FICUS=127.0.0.1:18082
NGINX=127.0.0.1:18083
HAPROXY=127.0.0.1:18084
TARGETS=(upstream ficus nginx haproxy)

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v haproxy >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk haproxy >/dev/null
fi
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p ficus-server
  BIN=$PWD/target/release/ficus
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -f "$work/haproxy.pid" ] && kill "$(cat "$work/haproxy.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN" debug upstream --listen "$UP" & pids+=($!)
upstream_pid=$!

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
ficus_pid=$!

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

# HAProxy in the same shape: two threads (one per core, as nginx's two workers), keep-alive
# to the upstream with connections reused across clients, no logging.
cat > "$work/haproxy.cfg" <<HAPROXY
global
  nbthread 2
  maxconn 8192
  pidfile $work/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind $HAPROXY
  option forwardfor
  default_backend legacy
backend legacy
  server up1 $UP maxconn 256
HAPROXY
haproxy -D -f "$work/haproxy.cfg"

for addr in "$UP" "$FICUS" "$NGINX" "$HAPROXY"; do
  ok=0
  for _ in $(seq 100); do curl -fs "http://$addr/p" >/dev/null && { ok=1; break; }; sleep 0.1; done
  [ "$ok" = 1 ] || { echo "gateway bench: nothing answers on $addr" >&2; exit 1; }
done

# The processes of each path, for the CPU each one spends per request (user + system time of
# all their threads, from /proc, around the wrk run).
pids_of() {
  case $1 in
    upstream) echo "$upstream_pid" ;;
    ficus) echo "$ficus_pid" ;;
    nginx) echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')" ;;
    haproxy) echo "$(cat "$work/haproxy.pid")" ;;
  esac
}
cpu_ticks() {
  local t=0 f
  for p in "$@"; do
    for f in /proc/"$p"/task/*/stat; do
      # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
      t=$((t + $(sed 's/.*) //' "$f" | awk '{ print $12 + $13 }')))
    done
  done
  echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# wrk prints latencies as 812.00us, 1.23ms or 1.05s: in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

addr_of() { case $1 in upstream) echo "$UP" ;; ficus) echo "$FICUS" ;; nginx) echo "$NGINX" ;; haproxy) echo "$HAPROXY" ;; esac; }

declare -A r a b c
runs_json=()
for run in $(seq "$RUNS"); do
  for target in "${TARGETS[@]}"; do
    procs=$(pids_of "$target")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $procs)
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "http://$(addr_of "$target")/api/products/1")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $procs)
    done_reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    cc=$(awk -v d="$((after - before))" -v hz="$CLK_TCK" -v n="$done_reqs" 'BEGIN { printf "%.2f", d / hz / n * 1e6 }')
    rr=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    aa=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    bb=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errs=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
    [ "$errs" = 0 ] || { echo "gateway bench: $target answered with errors:" >&2; echo "$out" >&2; exit 1; }
    r[$target]+="$rr "; a[$target]+="$aa "; b[$target]+="$bb "; c[$target]+="$cc "
    runs_json+=("{\"run\":$run,\"target\":\"$target\",\"requests_per_sec\":$rr,\"p50_ms\":$aa,\"p99_ms\":$bb,\"cpu_us_per_request\":$cc}")
    echo "run $run/$RUNS $target: $rr req/s, p50 $aa ms, p99 $bb ms, $cc µs CPU per request" >&2
  done
done
declare -A rps p50 p99 cpu
for target in "${TARGETS[@]}"; do
  cpu[$target]=$(tr ' ' '\n' <<<"${c[$target]}" | grep . | median)
  rps[$target]=$(tr ' ' '\n' <<<"${r[$target]}" | grep . | median)
  p50[$target]=$(tr ' ' '\n' <<<"${a[$target]}" | grep . | median)
  p99[$target]=$(tr ' ' '\n' <<<"${b[$target]}" | grep . | median)
done
if [ -n "${JSON_OUT:-}" ]; then
  (IFS=,; echo "{\"conns\":$CONNS,\"duration_secs\":$DURATION,\"runs\":[${runs_json[*]}]}") > "$JSON_OUT"
fi

echo
echo "gateway benchmark — wrk -t2 -c$CONNS -d${DURATION}s, median of $RUNS runs, all on this machine"
echo
echo "| path | requests/s | p50 | p99 | p99 added over direct | CPU per request (its processes) |"
echo "|---|---:|---:|---:|---:|---:|"
for target in "${TARGETS[@]}"; do
  added=$(awk -v x="${p99[$target]}" -v d="${p99[upstream]}" 'BEGIN { printf "%.3f", x - d }')
  printf '| %s | %.0f | %s ms | %s ms | %s ms | %s µs |\n' "$target" "${rps[$target]}" "${p50[$target]}" "${p99[$target]}" "$added" "${cpu[$target]}"
done
awk -v f="${rps[ficus]}" -v n="${rps[nginx]}" -v h="${rps[haproxy]}" \
  'BEGIN { printf "\nficus / nginx throughput: %.2f; ficus / haproxy: %.2f\n", f / n, f / h }'
