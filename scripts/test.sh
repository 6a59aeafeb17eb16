#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then runs every
# unit and integration test (including the QEMU VM pause and the busy-machine soak).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --profile ci "$@"
else
  # Timing tests must not share the 2 cores with each other.
  exec cargo test "$@" -- --test-threads=1
fi
