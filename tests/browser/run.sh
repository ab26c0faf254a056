#!/usr/bin/env bash
# Browser tests of the operator console: installs Debian's Chromium and the npm packages
# when missing, builds the `ficus` binary, runs the Playwright tests. Exits non-zero on any
# failure. Screenshots and the server's log land in tests/browser/output/.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then APT=(apt-get); else APT=(sudo apt-get); fi
  "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq chromium >/dev/null
fi
if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
(cd ../.. && cargo build --locked --bin ficus)
rm -rf output
mkdir -p output
# A hang becomes a failure: each test bounds its steps, and the whole run is bounded here.
timeout 300 node --test --test-reporter=spec console.test.mjs
