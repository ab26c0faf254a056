#!/usr/bin/env bash
# cargo-fuzz over every decoder that reads outside input (issue #8): the stored-event codec and
# upcasters, the HTTP request bodies, the gateway's TOML route table and the SSE resume ids.
# Each target runs for a set time on top of the committed seed corpus; any crash, panic,
# timeout or out-of-memory input is a finding and the script exits non-zero.
#
#   tests/fuzz/run.sh            # 30 s per target
#   tests/fuzz/run.sh 20         # the CI form
#   tests/fuzz/run.sh 600        # the long form
#   FUZZ_TARGETS="event_codec route_config" tests/fuzz/run.sh 60   # some targets only
#
# The fuzz project (fuzz/) is a cargo project of its own with its own lock file and target dir
# (fuzz/target), so it never invalidates the workspace's build. cargo-fuzz needs nightly
# features; RUSTC_BOOTSTRAP=1 lets the stable compiler provide them. New inputs found go to
# fuzz/corpus/<target> (scratch, gitignored), crashing ones to fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET=${1:-30}
# Bounds on one fuzzing process: resident memory, and the time one input may take.
RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-2048}
INPUT_TIMEOUT_S=${FUZZ_INPUT_TIMEOUT_S:-10}
# Longest input libFuzzer generates, in bytes (route tables and bodies are small documents).
MAX_INPUT_BYTES=${FUZZ_MAX_INPUT_BYTES:-8192}
CARGO_FUZZ_VERSION="0.13.2"
export RUSTC_BOOTSTRAP=1
# The bundled SQLite (rusqlite) trips AddressSanitizer's start-up ODR check on its own
# duplicated globals before any input runs; that check is about the C build, not our code.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
say() { echo "[fuzz $(date +%H:%M:%S)] $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# cargo fuzz has no --locked of its own: refuse a lock file that would have to change.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

TARGETS=${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)}
started=$(date +%s)
say "building: $(echo $TARGETS)"
for t in $TARGETS; do
  cargo fuzz build --fuzz-dir fuzz "$t"
done
say "build took $(( $(date +%s) - started )) s"

failed=()
summary=()
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
  log="fuzz/artifacts/$t/last-run.log"
  say "$t: ${SECONDS_PER_TARGET} s"
  set +e
  # The scratch corpus comes first: libFuzzer writes what it finds into the first directory,
  # so the committed seeds are read but never changed.
  cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_LIMIT_MB" \
    -timeout="$INPUT_TIMEOUT_S" -max_len="$MAX_INPUT_BYTES" -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || true)
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || true)
  corp=$(echo "$last" | grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' | cut -d' ' -f2 || true)
  line="$t: executions=${execs:-?} cov=${cov:-?} features=${ft:-?} corpus=${corp:-?} peak_rss_mb=${rss:-?} exit=$rc"
  summary+=("$line")
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    say "$t FOUND SOMETHING (exit $rc); the log's tail:"
    tail -40 "$log" >&2
    ls fuzz/artifacts/"$t" >&2
  fi
done

echo "fuzz summary (${SECONDS_PER_TARGET} s per target):"
for line in "${summary[@]}"; do echo "  $line"; done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: findings in ${failed[*]} (inputs under fuzz/artifacts/; reproduce with" \
    "RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> <artifact>)"
  exit 1
fi
echo "fuzz: no findings"
