#!/usr/bin/env bash
# End-to-end: does stallwatch detect a REAL full-VM pause?
#
#   scripts/vm-pause-test.sh STALLWATCH_STATIC_BINARY [rtc|resync|blind]
#
# Boots a busybox initramfs with the given static stallwatch under QEMU (TCG),
# pauses the whole VM with QMP stop/cont for PAUSE_SECONDS of host time, and
# checks what stallwatch made of it. Mode rtc (the default): exactly one vm_pause
# event of about that length, seen by the rtc reference. resync: the guest RTC on
# the VM clock, the guest clock set right after the pause; one vm_pause seen by
# wall_step, alerted. blind: the same without the resync; no event, and stallwatch
# says it is blind. Prints one PASS/FAIL line; exit 0/1.
# The work is done by scripts/vm_pause_test.py (python3, stdlib only); see its
# docstring for the environment knobs (PAUSE_SECONDS, PAUSE_TOLERANCE, VM_LOG,
# VM_VERBOSE). Kernel and packages come from scripts/vm-kernel.sh.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 STALLWATCH_STATIC_BINARY [rtc|resync|blind]" >&2
  exit 2
fi
bin=$1
mode=${2:-rtc}
case $mode in
  rtc) tag=vm-pause ;;
  resync|blind) tag=vm-pause-$mode ;;
  *) echo "usage: $0 STALLWATCH_STATIC_BINARY [rtc|resync|blind]" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -x "$bin" ]; then
  echo "FAIL $tag: $bin is not an executable file"
  exit 1
fi

if ! kernel=$("$here/vm-kernel.sh"); then
  echo "FAIL $tag: could not install qemu/busybox-static or obtain a kernel (scripts/vm-kernel.sh failed)"
  exit 1
fi

# The driver cleans up qemu and its temp dir itself (finally + SIGTERM handler);
# this trap forwards INT/TERM to it so an interrupted run leaves nothing behind.
python3 "$here/vm_pause_test.py" --kernel "$kernel" --stallwatch "$bin" --mode "$mode" &
driver=$!
trap 'kill -TERM "$driver" 2>/dev/null; wait "$driver" 2>/dev/null; exit 130' INT TERM
rc=0
wait "$driver" || rc=$?
trap - INT TERM
exit "$rc"
