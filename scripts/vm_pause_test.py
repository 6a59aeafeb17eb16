#!/usr/bin/env python3
"""End-to-end check that stallwatch detects a real full-VM pause.

Boots a tiny busybox initramfs with a static stallwatch inside QEMU (TCG), pauses
the whole VM through QMP `stop`/`cont` for PAUSE_SECONDS of host time, then reads
stallwatch's /api/v1/freezes from the guest serial console and checks that exactly
one `vm_pause` event was reported, with a duration close to the host-measured pause
and with the `rtc` reference among its channels.

Usage: vm_pause_test.py --kernel VMLINUZ --stallwatch STATIC_BINARY

Environment:
  PAUSE_SECONDS       pause length (default 10)
  PAUSE_TOLERANCE     allowed |reported - host pause| in seconds (default 1.5)
  VM_LOG              also copy the guest console to this file
  VM_VERBOSE=1        echo the guest console to stderr as it arrives

Python 3 standard library only. Run through scripts/vm-pause-test.sh, which also
fetches the kernel.
"""

import argparse
import datetime
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

LISTEN = "127.0.0.1:9847"
READY_MARKER = "STALLWATCH-READY"
READY_TIMEOUT = 120.0  # seconds of host time from qemu start to READY
SETTLE_BEFORE = 5.0  # run this long before pausing
SETTLE_AFTER = 6.0  # and this long after resuming before reading the verdict
LATE_DEADLINE = 30.0  # keep watching this long after cont if nothing showed yet

# /init of the guest. Every line the host parses starts with a fixed marker; the
# kernel may print warnings in between (loglevel=4), so the host ignores the rest.
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp/sw
ip link set lo up
ip addr show dev lo | grep -q 'inet 127\.0\.0\.1/' || ip addr add 127.0.0.1/8 dev lo
echo "INIT-START uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
[ -r /sys/class/rtc/rtc0/since_epoch ] || echo "INIT-WARN no /sys/class/rtc/rtc0/since_epoch"

# stallwatch's own output goes to the console too, prefixed, as evidence.
(
  /bin/stallwatch run --listen @LISTEN@ --data-dir /tmp/sw 2>&1
  echo "STALLWATCH-EXITED rc=$?"
) | while IFS= read -r l; do echo "SW| $l"; done &

# (busybox-static 1.35's `wget -T` segfaults: bound each request with `timeout`.)
until timeout 5 wget -q -O /dev/null http://@LISTEN@/healthz 2>/dev/null; do
  sleep 0.2
done
echo "@READY@ uptime=$(cut -d' ' -f1 /proc/uptime)"

while :; do
  if j=$(timeout 5 wget -qO- http://@LISTEN@/api/v1/freezes 2>/dev/null); then
    echo "FREEZES: $(printf '%s' "$j" | tr -d '\n')"
  else
    echo "FREEZES-ERROR wget failed"
  fi
  echo "CLOCKS: rtc=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null) uptime=$(cut -d' ' -f1 /proc/uptime) date=$(date +%s)"
  sleep 1
done
""".replace("@LISTEN@", LISTEN).replace("@READY@", READY_MARKER)


# --------------------------------------------------------------------------
# initramfs: cpio "newc" written here, so no root, no cpio tool, no mknod needed
# --------------------------------------------------------------------------

class Cpio:
    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 300000

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        self.ino += 1
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + name_b)
        self.buf.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o755):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initrd(path, busybox, stallwatch):
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc"):
        c.dir(d)
    # The kernel opens /dev/console before running /init; devtmpfs comes later.
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read())
    for a in applets:
        if a not in ("busybox", "stallwatch") and "/" not in a:
            c.symlink("bin/" + a, "busybox")
    with open(stallwatch, "rb") as f:
        c.file("bin/stallwatch", f.read())
    c.file("init", INIT_SCRIPT.encode())
    with open(path, "wb") as f:
        # mtime=0: the same inputs give the same initrd
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(c.finish())


def check_static(binary):
    """Only static binaries run in the initramfs: refuse early, with a clear reason."""
    with open(binary, "rb") as f:
        elf = f.read(1 << 20)
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return "not a 64-bit little-endian ELF executable"
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 <= len(elf) and struct.unpack_from("<I", elf, off)[0] == 3:  # PT_INTERP
            return "dynamically linked (has an ELF interpreter); build with -C target-feature=+crt-static"
    return None


# --------------------------------------------------------------------------
# QEMU, its serial console and QMP
# --------------------------------------------------------------------------

class Console:
    """Reads the guest serial console line by line, stamping each with host time."""

    def __init__(self, stream, log_path=None, verbose=False):
        self.lines = []  # (host monotonic, text)
        self.cond = threading.Condition()
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.verbose = verbose
        self.closed = False
        self.t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.t.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            now = time.monotonic()
            with self.cond:
                self.lines.append((now, text))
                self.cond.notify_all()
            if self.log:
                self.log.write(text + "\n")
                self.log.flush()
            if self.verbose:
                print("  guest| " + text, file=sys.stderr, flush=True)
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout):
        """First line (t, text) satisfying pred, or None on timeout / console closed."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for t, text in self.lines[seen:]:
                    if pred(text):
                        return t, text
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(left)

    def snapshot(self):
        with self.cond:
            return list(self.lines)


class Qmp:
    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError("unexpected QMP greeting: %r" % greeting)

    def _read(self):
        line = self.rfile.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def execute(self, command):
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError("QMP %s failed: %s" % (command, msg["error"]))
            # asynchronous events (STOP, RESUME, ...) are skipped

    def close(self):
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


def parse_freezes(text):
    m = re.search(r"FREEZES: (.*)$", text)
    if not m:
        return None
    try:
        v = json.loads(m.group(1))
    except ValueError:
        return None
    return v if isinstance(v, list) else None


def parse_clocks(text):
    m = re.search(r"CLOCKS: rtc=(\d+) uptime=([\d.]+) date=(\d+)", text)
    return (int(m.group(1)), float(m.group(2)), int(m.group(3))) if m else None


def started_at_error(started_at, wall_stop):
    """Event start (guest wall clock, set from the RTC at boot) minus the host wall
    clock when QMP stop returned. Informational: the guest clock has 1 s boot
    resolution and nothing syncs it, so this is not checked."""
    try:
        t = datetime.datetime.fromisoformat(str(started_at).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.timestamp() - wall_stop


def clock_jump_across(lines, t_stop, t_cont):
    """Guest clock readings just before the pause and just after it: how far the RTC
    and CLOCK_BOOTTIME (/proc/uptime) moved across it (one CLOCKS line a second)."""
    before = [(t, c) for t, s in lines if t <= t_stop for c in [parse_clocks(s)] if c]
    after = [(t, c) for t, s in lines if t >= t_cont for c in [parse_clocks(s)] if c]
    if not before or not after:
        return None
    (_, b), (_, a) = before[-1], after[0]
    return {"rtc_delta": a[0] - b[0], "uptime_delta": round(a[1] - b[1], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--stallwatch", required=True, help="static stallwatch binary")
    ap.add_argument("--busybox", default="/bin/busybox")
    args = ap.parse_args()

    pause = float(os.environ.get("PAUSE_SECONDS", "10"))
    tol = float(os.environ.get("PAUSE_TOLERANCE", "1.5"))
    verbose = os.environ.get("VM_VERBOSE") == "1"

    why = check_static(args.stallwatch)
    if why:
        print("FAIL vm-pause: %s: %s" % (args.stallwatch, why))
        return 1

    tmp = tempfile.mkdtemp(prefix="swvm-", dir="/tmp")  # short: the QMP socket path
    qemu = None
    qmp = None
    # SIGTERM/SIGHUP (e.g. the wrapper's trap, a test timeout) -> clean exit via finally.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        t_start = time.monotonic()
        initrd = os.path.join(tmp, "initrd.gz")
        build_initrd(initrd, args.busybox, args.stallwatch)
        sock = os.path.join(tmp, "qmp.sock")
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", args.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 loglevel=4 edd=off",
            "-qmp", "unix:%s,server,nowait" % sock,
        ]
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        con = Console(qemu.stdout, os.environ.get("VM_LOG"), verbose)

        def fail(msg):
            tail = "\n".join("  guest| " + s for _, s in con.snapshot()[-40:])
            print("--- last guest console lines ---\n%s\n---" % tail, file=sys.stderr)
            print("FAIL vm-pause: " + msg)
            return 1

        ready = con.wait_for(lambda s: READY_MARKER in s or "STALLWATCH-EXITED" in s, READY_TIMEOUT)
        if ready is not None and "STALLWATCH-EXITED" in ready[1]:
            return fail("stallwatch exited in the guest before serving /healthz (%s)" % ready[1].strip())
        if ready is None:
            state = "qemu exited rc=%s" % qemu.poll() if qemu.poll() is not None else "timeout %.0fs" % READY_TIMEOUT
            return fail("guest never printed %s (%s)" % (READY_MARKER, state))
        boot_s = ready[0] - t_start
        print("vm-pause: guest ready after %.1f s (host), pausing in %.0f s" % (boot_s, SETTLE_BEFORE), file=sys.stderr)

        qmp = Qmp(sock)
        qmp.execute("qmp_capabilities")
        time.sleep(SETTLE_BEFORE)
        if qemu.poll() is not None:
            return fail("qemu exited before the pause")

        wall_stop = time.time()  # host wall clock, to compare with the event's started_at
        a = time.monotonic()
        qmp.execute("stop")
        t_stop = time.monotonic()
        t_stop_mid = (a + t_stop) / 2
        time.sleep(max(0.0, pause - (time.monotonic() - t_stop_mid)))
        b = time.monotonic()
        qmp.execute("cont")
        t_cont = time.monotonic()
        host_pause = (b + t_cont) / 2 - t_stop_mid
        print("vm-pause: VM stopped for %.3f s of host time (QMP round trips %.1f/%.1f ms)"
              % (host_pause, (t_stop - a) * 1e3, (t_cont - b) * 1e3), file=sys.stderr)

        # Wait SETTLE_AFTER; if no vm_pause shows by then, keep watching up to
        # LATE_DEADLINE so a slow detector is told apart from a blind one.
        def freezes_after(t0):
            return [(t, f) for t, s in con.snapshot() if t >= t0 for f in [parse_freezes(s)] if f is not None]

        first_seen = None
        while True:
            now = time.monotonic()
            got = freezes_after(t_cont)
            for t, f in got:
                if first_seen is None and any(isinstance(e, dict) and e.get("kind") == "vm_pause" for e in f):
                    first_seen = t - t_cont
            if now - t_cont >= SETTLE_AFTER and (first_seen is not None or now - t_cont >= LATE_DEADLINE):
                break
            if qemu.poll() is not None:
                return fail("qemu exited after the pause (rc=%s)" % qemu.poll())
            time.sleep(0.25)

        lines = con.snapshot()
        got = freezes_after(t_cont)
        if not got:
            errs = sum(1 for t, s in lines if t >= t_cont and "FREEZES-ERROR" in s)
            return fail("no parseable FREEZES line after cont (%d FREEZES-ERROR lines)" % errs)
        events = [e for e in got[-1][1] if isinstance(e, dict)]
        jump = clock_jump_across(lines, t_stop, t_cont)
        total_s = time.monotonic() - t_start

        pauses = [e for e in events if e.get("kind") == "vm_pause"]
        others = [e for e in events if e.get("kind") != "vm_pause"]
        problems = []
        rtc_est = None
        dur = None
        started_err = None
        if len(pauses) != 1:
            problems.append("expected exactly 1 vm_pause event, got %d" % len(pauses))
        if pauses:
            ev = pauses[0]
            dur = ev.get("duration_seconds")
            if not isinstance(dur, (int, float)):
                problems.append("duration_seconds missing or not a number: %r" % (dur,))
                dur = None
            elif abs(dur - host_pause) > tol:
                problems.append("duration_seconds %.3f is not within %.1f s of the host pause %.3f"
                                % (dur, tol, host_pause))
            started_err = started_at_error(ev.get("started_at"), wall_stop)
            rtc = [c for c in ev.get("channels") or [] if isinstance(c, dict) and c.get("channel") == "rtc"]
            if not rtc:
                problems.append("channels has no {\"channel\":\"rtc\"}: %s" % json.dumps(ev.get("channels")))
            else:
                rtc_est = rtc[0].get("estimate_seconds")

        def num(v):
            return "%.3fs" % v if isinstance(v, (int, float)) else "n/a"

        fields = [
            ("host_pause", num(host_pause)),
            ("reported", num(dur)),
            ("rtc_estimate", num(rtc_est)),
            ("error", num(dur - host_pause if dur is not None else None)),
            ("detected_after_cont", num(first_seen)),
            ("started_at_vs_host", num(started_err)),
            ("guest_rtc_delta", jump["rtc_delta"] if jump else "n/a"),
            ("guest_uptime_delta", jump["uptime_delta"] if jump else "n/a"),
            ("other_events", len(others)),
            ("boot", "%.1fs" % boot_s),
            ("total", "%.1fs" % total_s),
        ]
        summary = " ".join("%s=%s" % kv for kv in fields)
        print("vm-pause: events after the pause: %s" % json.dumps(events), file=sys.stderr)
        if others:
            print("vm-pause: WARN other events: %s" % json.dumps(others), file=sys.stderr)
        if problems:
            return fail("; ".join(problems) + " | " + summary)
        print("PASS vm-pause: " + summary)
        return 0
    finally:
        if qmp:
            qmp.close()
        if qemu and qemu.poll() is None:
            try:
                os.killpg(qemu.pid, signal.SIGTERM)
                qemu.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(qemu.pid, signal.SIGKILL)
                    qemu.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
