#!/usr/bin/env bash
# Ensure QEMU + busybox-static are installed and a Debian kernel bzImage is
# cached locally (never touching /boot). Prints the path of the vmlinuz.
#
#   STALLWATCH_VM_DIR   cache dir (default: <repo>/target/vm)
#   STALLWATCH_VM_FLAVOUR  "cloud" (default) or "generic"
#
# Flavour choice: -cloud-amd64 by default, because it gets to /init about twice
# as fast under TCG. Measured on the 2-core dev machine, same initrd, 4 boots each,
# host time from starting qemu to the first line of /init:
#   linux-image-6.1.0-56-cloud-amd64  2.5 / 3.2 / 3.7 / 4.7 s
#   linux-image-6.1.0-56-amd64        6.8 / 7.5 / 8.4 / 8.6 s
# The guest's own uptime at /init is about the same (2.0-3.4 s); the difference is
# the decompressor: the cloud bzImage is LZ4 (14 MB), the generic one XZ (8 MB),
# and XZ is slow under emulation. Both have what the test needs built in (8250
# serial console, rtc_cmos -> /sys/class/rtc/rtc0, devtmpfs); neither needs a
# module. STALLWATCH_VM_FLAVOUR=generic switches to the generic kernel.
#
# All progress goes to stderr; stdout carries only the vmlinuz path.
set -euo pipefail

log() { echo "vm-kernel: $*" >&2; }
die() { echo "vm-kernel: ERROR: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vm_dir=${STALLWATCH_VM_DIR:-$repo/target/vm}
flavour=${STALLWATCH_VM_FLAVOUR:-cloud}
case $flavour in
  cloud) meta=linux-image-cloud-amd64 ;;
  generic) meta=linux-image-amd64 ;;
  *) die "STALLWATCH_VM_FLAVOUR must be 'cloud' or 'generic', not '$flavour'" ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root to run: $*"; fi
}

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
  fi
}

# --- 1. packages -------------------------------------------------------------
missing=()
for pkg in qemu-system-x86 busybox-static; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update_once
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"

# --- 2. kernel ---------------------------------------------------------------
# The versioned image package that the meta package depends on, e.g.
# linux-image-6.1.0-56-cloud-amd64. Several versions may be in the archive;
# the meta package names the current one.
resolve_image_pkg() {
  apt-cache depends "$meta" 2>/dev/null \
    | sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}
image_pkg=$(resolve_image_pkg || true)
if [ -z "$image_pkg" ]; then
  apt_update_once
  image_pkg=$(resolve_image_pkg || true)
fi
[ -n "$image_pkg" ] || die "cannot find the image package that $meta depends on (apt-cache depends $meta)"
kver=${image_pkg#linux-image-}
vmlinuz=$vm_dir/boot/vmlinuz-$kver

if [ -s "$vmlinuz" ]; then
  echo "$vmlinuz"
  exit 0
fi

mkdir -p "$vm_dir"
work=$(mktemp -d "$vm_dir/.dl.XXXXXX")
# apt downloads as its unprivileged _apt user when it can: let it write there.
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
trap 'rm -rf "$work"' EXIT
log "downloading $image_pkg into $vm_dir"
if ! (cd "$work" && apt-get download -qq "$image_pkg" >&2); then
  # The package lists may be older than the archive (the version was superseded).
  apt_update_once
  image_pkg=$(resolve_image_pkg || true)
  [ -n "$image_pkg" ] || die "cannot resolve $meta after apt-get update"
  kver=${image_pkg#linux-image-}
  vmlinuz=$vm_dir/boot/vmlinuz-$kver
  (cd "$work" && apt-get download -qq "$image_pkg" >&2) || die "apt-get download $image_pkg failed"
fi
deb=$(ls "$work"/*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || die "apt-get download $image_pkg produced no .deb"
(cd "$work" && dpkg-deb --fsys-tarfile "$deb" | tar -x ./boot) || die "unpacking ./boot from $deb failed"
[ -s "$work/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
mkdir -p "$vm_dir/boot"
# Move into place last, so an interrupted run never leaves a half-written kernel.
for f in "$work"/boot/*; do mv -f "$f" "$vm_dir/boot/"; done
log "kernel ready: $vmlinuz"
echo "$vmlinuz"
