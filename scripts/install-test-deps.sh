#!/usr/bin/env bash
# Installs what the test suite needs on Debian 12 with rustup's stable Rust, idempotently:
# Debian packages (only when one is missing, so a warm machine does no network work),
# cargo-nextest, the rustfmt and clippy components, the VM test's kernel, the DBOS venv,
# the dashboard schema check's npm packages, and a Postgres on 127.0.0.1:5432 with trust
# auth. Every step either succeeds or stops this script with a sentence saying why: no
# test is left to skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "install-test-deps: $*" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); else sudo=(); fi

# Package | a command or file that, when present, counts as the package (tools installed
# some other way, e.g. Node's own nodejs with npm bundled) | why.
packages=(
  "build-essential|cc|the C compiler the build needs: bundled SQLite (rusqlite) and ring (rustls)"
  "postgresql|/usr/lib/postgresql/15/bin/initdb|tests/postgres_sources.rs starts its own servers with initdb/pg_ctl and drives a worker with psql; the Postgres tests use the server this script starts on 127.0.0.1:5432"
  "openssl|openssl|tests/postgres_sources.rs makes the TLS test CA and certificates"
  "python3-venv|-|scripts/dbos-venv.sh: the venv with the pinned dbos the real-DBOS tests run their app in"
  "python3-yaml|-|tests/ecosystem_*: reading rules and manifests"
  "nodejs|node|tests/ecosystem_dashboards.rs: the dashboards checked against Grafana's published schema"
  "npm|npm|tests/ecosystem_dashboards.rs: installs @grafana/schema and TypeScript from the lock file"
  "faketime|-|tests/wall_step.rs and others step the sidecar's wall clock with libfaketime"
  "prometheus|-|promtool check metrics on real /metrics output; a real Prometheus scrapes and evaluates the rules"
  "prometheus-alertmanager|-|tests/ecosystem_* and alerts_delivery.rs: amtool check-config, a real Alertmanager route"
  "qemu-system-x86|-|tests/vm_pause.rs: a real full-VM pause under TCG"
  "busybox-static|-|the VM test's initramfs"
  "docker-compose|-|tests/ecosystem_deploy.rs: docker-compose config on deploy/ (no engine needed)"
  "systemd|systemd-analyze|tests/ecosystem_deploy.rs: systemd-analyze verify on the unit"
  "chromium|-|tests/status_page.rs: loads the status page in headless Chromium (DevTools over a pipe)"
  "fonts-dejavu-core|-|tests/status_page.rs: text in the screenshot (chromium only recommends fonts)"
)

installed() {
  local pkg="$1" probe="$2"
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' && return 0
  case "$probe" in
    -) return 1 ;;
    /*) [ -e "$probe" ] ;;
    *) command -v "$probe" >/dev/null 2>&1 ;;
  esac
}

missing=()
for entry in "${packages[@]}"; do
  IFS='|' read -r pkg probe _why <<<"$entry"
  installed "$pkg" "$probe" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}" >&2
  # A postgresql installed here gets no main cluster of its own: on a machine where apt
  # starts services it would take 127.0.0.1:5432 with password auth, and the tests need
  # the trust-auth server this script starts there below.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && ! installed postgresql-common -; then
    "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false  # stallwatch scripts/install-test-deps.sh" |
      "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/stallwatch-tests.conf >/dev/null
  fi
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
  for entry in "${packages[@]}"; do
    IFS='|' read -r pkg probe _why <<<"$entry"
    installed "$pkg" "$probe" || die "$pkg is still not installed after apt-get install"
  done
fi

# The Rust side: rustfmt and clippy (.ci/run), cargo-nextest (the test runner). A cargo
# install puts binaries in $CARGO_HOME/bin, which may not be on PATH yet.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (stable)"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null || die "cargo fmt or cargo clippy is missing and there is no rustup to add them with"
  echo "install-test-deps: rustup component add rustfmt clippy" >&2
  rustup component add rustfmt clippy || die "rustup component add rustfmt clippy failed"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-test-deps: cargo install --locked cargo-nextest" >&2
  cargo install --locked cargo-nextest || die "cargo install --locked cargo-nextest failed"
  cargo nextest --version >/dev/null 2>&1 || die "cargo nextest still does not run after cargo install"
fi

# The Debian kernel the VM test boots (cached under target/vm).
bash scripts/vm-kernel.sh >/dev/null

# The Python venv with the pinned dbos that the real-DBOS tests run their app in (target/dbos-venv).
bash scripts/dbos-venv.sh >/dev/null

# The dashboard schema check's npm packages, where tests/ecosystem_dashboards.rs looks for
# them ($CARGO_TARGET_TMPDIR/grafana-schema-check), so the test itself needs no network.
schema_src=dashboards/schema-check
schema_dir="${CARGO_TARGET_DIR:-target}/tmp/grafana-schema-check"
if ! cmp -s "$schema_src/package-lock.json" "$schema_dir/package-lock.json" ||
  [ ! -f "$schema_dir/node_modules/@grafana/schema/package.json" ] ||
  [ ! -f "$schema_dir/node_modules/typescript/package.json" ]; then
  echo "install-test-deps: npm ci in $schema_dir" >&2
  mkdir -p "$schema_dir"
  cp "$schema_src/package.json" "$schema_src/package-lock.json" "$schema_src/check.mjs" "$schema_dir/"
  (cd "$schema_dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci for the dashboard schema check failed"
fi

# A Postgres on 127.0.0.1:5432 that lets role postgres in without a password (tests/common/pgdb.rs).
bash scripts/test-postgres.sh
