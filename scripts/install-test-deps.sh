#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages (only when one is
# missing, so a warm machine does no network work) and the VM test's kernel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Package -> why the tests need it.
packages=(
  faketime              # tests/wall_step.rs steps the sidecar's wall clock with libfaketime
  prometheus            # promtool check metrics on real /metrics output
  qemu-system-x86       # tests/vm_pause.rs: a real full-VM pause under TCG
  busybox-static        # the VM test's initramfs
  prometheus-alertmanager  # tests/ecosystem_*: amtool check-config, the end-to-end alert route
  docker-compose        # tests/ecosystem_deploy.rs: `docker-compose config` on deploy/ (no engine needed)
  python3-yaml          # tests/ecosystem_*: reading rules and manifests
  systemd               # tests/ecosystem_deploy.rs: systemd-analyze verify on the unit
  chromium              # tests/status_page.rs: loads the status page in headless Chromium (DevTools over a pipe)
  fonts-dejavu-core     # tests/status_page.rs: text in the screenshot (chromium only recommends fonts)
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); else sudo=(); fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian kernel the VM test boots (cached under target/vm).
bash scripts/vm-kernel.sh >/dev/null

# The Python venv with the pinned dbos that tests/dbos_sqlite.rs runs its app in (target/dbos-venv).
bash scripts/dbos-venv.sh >/dev/null
