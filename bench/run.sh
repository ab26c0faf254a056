#!/usr/bin/env bash
# One entry point for every benchmark: Ficus side by side with the peers users would pick
# instead, and with the machine's limits, measured in one run on this machine.
#
#   bench/run.sh            # full: 3 rounds per scenario, 200,000 jobs, 5 s / 10 s points
#   bench/run.sh --quick    # smoke: 1 round, 20,000 jobs, short points (CI runs this)
#
# It installs what it needs (Debian: wrk, nginx-light, haproxy; PyPI into bench/.venv:
# matplotlib; npm into bench/peers/node: graphile-worker, pg-boss; crates into the separate
# cargo project bench/peers/rust: cqrs-es + postgres-es, apalis + apalis-postgres, axum),
# builds Ficus in release, runs the scenarios (bench/run.py) and writes
# bench/results/<date>[-quick].json, .md and .png. PostgreSQL: FICUS_BENCH_PG_URL, else
# FICUS_TEST_PG_URL, else postgres://postgres@127.0.0.1:5432/test; every system gets a
# database of its own per run, created and dropped here. Any failure exits non-zero; slow
# numbers never do.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac
PG_URL=${FICUS_BENCH_PG_URL:-${FICUS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}}
start=$(date +%s)
say() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

need=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy psql:postgresql-client pgbench:postgresql-client; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v node >/dev/null && command -v npm >/dev/null || { echo "bench: node and npm are needed" >&2; exit 1; }
psql "$PG_URL" -qAtc 'SELECT 1' >/dev/null || { echo "bench: PostgreSQL at $PG_URL does not answer" >&2; exit 1; }

if [ ! -x bench/.venv/bin/python ] || ! bench/.venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  say "installing matplotlib into bench/.venv"
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --disable-pip-version-check 'matplotlib>=3.8,<4'
fi

say "installing the Node.js peers (npm ci)"
(cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

say "building Ficus (release)"
cargo build --release --locked -q -p ficus-server
say "building the Rust peers (release, bench/peers/rust)"
cargo build --release --locked -q --manifest-path bench/peers/rust/Cargo.toml

args=(--pg-url "$PG_URL" --command "bench/run.sh")
if [ $mode = quick ]; then args=(--pg-url "$PG_URL" --command "bench/run.sh --quick" --quick); fi
bench/.venv/bin/python bench/run.py "${args[@]}" "${@:2}"
say "done in $(( $(date +%s) - start )) s (including installs and builds)"
