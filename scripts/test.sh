#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (scripts/install-test-deps.sh,
# quick when everything is there), then runs every unit and integration test with
# cargo-nextest (including the QEMU VM pause and the busy-machine soak). No fallback:
# without nextest the install step fails, it does not quietly run something else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
exec cargo nextest run --profile ci "$@"
