#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
# Usage: bash scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# JS interop tests drive the real npm clients (versions pinned in tests/js/package-lock.json).
if ! command -v node >/dev/null 2>&1; then
  echo "node (>= 20) is required for the JS interop tests" >&2
  exit 1
fi
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

# The cluster tests (tests/cluster.rs) start their own redis-server on a free loopback port with a
# temp dir; they never use the system service. Install the binary on a fresh Debian machine.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing it (apt-get install redis-server)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "redis-server is required for the cluster tests; install it as root: apt-get install -y redis-server" >&2
      exit 1
    fi
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is still missing after the install attempt" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-features "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
