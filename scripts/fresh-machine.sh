#!/usr/bin/env bash
# Proves the README's two commands on a bare Debian 12: builds a Debian 12 root with
# debootstrap (from the Debian mirror this machine's apt sources name), binds this
# machine's rustup toolchain into it read-only (rustup's stable Rust is the one thing
# the README assumes), clones this repository inside and runs there
#
#   1. scripts/install-test-deps.sh and `cargo fetch`, with the network: what a first
#      `scripts/test.sh` downloads (Debian packages, cargo-nextest, crates, the DBOS venv,
#      the VM test's kernel);
#   2. in a network namespace of its own (loopback only, so nothing on this machine's
#      127.0.0.1 — its Postgres, other people's tests — is reachable or in the way):
#      `cargo run --release -- run` until it serves /metrics, then `scripts/test.sh`.
#
# Usage (root): scripts/fresh-machine.sh [ROOT_DIR]   (default /var/tmp/stallwatch-fresh)
# The root is kept and reused (remove it for a bare start); the clone inside is new each
# run. Uses systemd-nspawn when it is installed and systemd runs this machine (nspawn needs
# its bus), chroot (with /proc, /sys, /dev) otherwise.
# Not run in CI: it downloads a Debian system and takes the better part of an hour.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-/var/tmp/stallwatch-fresh}"
suite=bookworm

say() { echo "fresh-machine: $*" >&2; }
die() { say "$*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, mounts, namespaces)"
command -v debootstrap >/dev/null || die "needs debootstrap (apt-get install debootstrap)"
toolchain_rustup="${RUSTUP_HOME:-$HOME/.rustup}"
toolchain_cargo="${CARGO_HOME:-$HOME/.cargo}"
[ -x "$toolchain_cargo/bin/cargo" ] || die "no rustup toolchain at $toolchain_cargo (install Rust with rustup first)"

sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sources+=("$f")
done
[ "${#sources[@]}" -gt 0 ] || die "no apt sources in /etc/apt to take the Debian mirror from"
# The Debian mirror this machine's apt uses for $suite: the first URI of a deb822 stanza
# whose Suites name $suite, or of a one-line `deb URI $suite …` entry.
mirror="$(awk -v suite="$suite" '
  function flush() {
    if (!found && uris != "" && (" " suites " ") ~ (" " suite " ")) { split(uris, u, " "); print u[1]; found = 1 }
    uris = ""; suites = ""
  }
  FNR == 1 { flush() }
  /^[[:space:]]*$/ { flush(); next }
  /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0; next }
  /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0; next }
  /^deb[[:space:]]/ {
    line = $0; gsub(/\[[^]]*\]/, "", line); n = split(line, f, " ")
    if (!found && f[3] == suite) { print f[2]; found = 1 }
  }
  END { flush() }
' "${sources[@]}")"
[ -n "$mirror" ] || die "no Debian $suite mirror in /etc/apt (sources.list or sources.list.d)"

start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }

if [ ! -e "$root/.stallwatch-root-done" ]; then
  say "debootstrap $suite into $root"
  rm -rf "$root"
  mkdir -p "$root"
  # A bare Debian plus what a user needs to have cloned the repo and installed rustup:
  # git, and curl with the CA certificates.
  debootstrap --include=git,ca-certificates,curl "$suite" "$root" "$mirror"
  # Services a package installs are not started inside the root (as in Debian's container
  # images): a Postgres started by apt here would sit on this machine's 127.0.0.1:5432.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  touch "$root/.stallwatch-root-done"
  say "root ready after $(elapsed)"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"

# Mounts, undone on every exit.
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" || true; done
}
trap cleanup EXIT
bind_ro() {
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
  mounted+=("$2")
}
# The root bound onto itself, so that inside the chroot / is a mount point: `unshare
# --pid --fork --mount-proc` (tests/run_child.rs, stallwatch as PID 1) makes / private
# first and fails with "cannot change root filesystem propagation" when it is not.
mount --rbind "$root" "$root"
mounted+=("$root")
bind_ro "$toolchain_rustup" "$root/opt/rustup"
bind_ro "$toolchain_cargo" "$root/opt/cargo"

# A fresh clone of this repository's committed HEAD.
rm -rf "$root/root/stallwatch"
git clone --quiet --no-hardlinks "$repo" "$root/root/stallwatch"
say "cloned $(git -C "$root/root/stallwatch" log -1 --format='%h %s')"

# Inside: the read-only toolchain through RUSTUP_HOME, a writable CARGO_HOME of the
# root's own (crates, cargo-nextest) with the toolchain's proxies after it on PATH.
inner_env=(
  HOME=/root
  TERM=dumb
  LANG=C.UTF-8
  RUSTUP_HOME=/opt/rustup
  CARGO_HOME=/root/.cargo
  PATH=/root/.cargo/bin:/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
)

# Certificate authorities this machine adds for its own network (a TLS-inspecting egress,
# say) go into the root too, with the variables that point pip and npm (which carry their
# own bundles) at the system bundle: without them no download inside would verify.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
  bundle=/etc/ssl/certs/ca-certificates.crt
  inner_env+=(SSL_CERT_FILE=$bundle PIP_CERT=$bundle NODE_EXTRA_CA_CERTS=$bundle)
  say "added this machine's CA certificates: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi

if command -v systemd-nspawn >/dev/null && [ -d /run/systemd/system ]; then
  run_inside() { # $1: "net" or "nonet"; rest: a bash script
    local net=() mode="$1"; shift
    [ "$mode" = nonet ] && net=(--private-network)
    # The toolchain binds above are already in the root's tree.
    systemd-nspawn --quiet --register=no --as-pid2 "${net[@]}" -D "$root" \
      /usr/bin/env -i "${inner_env[@]}" bash -c "$*"
  }
else
  for m in proc sys dev; do mkdir -p "$root/$m"; done
  mount -t proc proc "$root/proc"; mounted+=("$root/proc")
  mount --rbind /sys "$root/sys"; mount --make-rslave "$root/sys"; mounted+=("$root/sys")
  mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"; mounted+=("$root/dev")
  mount -t tmpfs tmpfs "$root/tmp"; chmod 1777 "$root/tmp"; mounted+=("$root/tmp")
  run_inside() {
    local mode="$1"; shift
    if [ "$mode" = nonet ]; then
      unshare --net chroot "$root" /usr/bin/env -i "${inner_env[@]}" \
        bash -c "ip link set lo up 2>/dev/null || true; $*"
    else
      chroot "$root" /usr/bin/env -i "${inner_env[@]}" bash -c "$*"
    fi
  }
fi

step() { # name, mode, script
  local name="$1" mode="$2" t0 rc
  shift 2
  t0=$(date +%s)
  say "step '$name' starts"
  set +e
  run_inside "$mode" "cd /root/stallwatch && $*"
  rc=$?
  set -e
  say "step '$name' exit $rc after $(( $(date +%s) - t0 ))s"
  return "$rc"
}

step "install (network)" net 'bash scripts/install-test-deps.sh && cargo fetch --locked'

# README command 1: the sidecar with no config, until /metrics answers; then SIGTERM.
step "cargo run --release -- run" nonet '
  cargo build --release --locked || exit 1
  cargo run --release -- run >/tmp/run.log 2>&1 &
  pid=$!
  for i in $(seq 1 60); do
    if curl -fsS http://127.0.0.1:9847/metrics >/tmp/metrics.txt 2>/dev/null; then
      echo "serving /metrics: $(grep -c "^stallwatch_" /tmp/metrics.txt) stallwatch_ samples"
      kill -TERM "$pid"; wait "$pid"; rc=$?
      echo "sidecar exit $rc after SIGTERM"; exit "$rc"
    fi
    sleep 1
  done
  echo "no /metrics on 127.0.0.1:9847 within 60 s"; cat /tmp/run.log; kill -KILL "$pid"; exit 1
'

# README command 2.
step "scripts/test.sh" nonet 'CARGO_NET_OFFLINE=true scripts/test.sh'
say "all steps passed after $(elapsed)"
