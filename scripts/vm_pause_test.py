#!/usr/bin/env python3
"""End-to-end check that stallwatch detects a real full-VM pause.

Boots a tiny busybox initramfs with a static stallwatch inside QEMU (TCG), pauses
the whole VM through QMP `stop`/`cont` for PAUSE_SECONDS of host time, then reads
stallwatch's /api/v1/freezes from the guest serial console and checks the verdict.

Modes (--mode):
  rtc     (default) QEMU's default `-rtc clock=host`: the guest RTC runs through the
          pause. Expects exactly one `vm_pause` event, with a duration close to the
          host-measured pause and the `rtc` reference among its channels.
  resync  `-rtc base=utc,clock=vm`: the RTC stops with the guest, so nothing inside it
          runs through the pause (as on a Firecracker snapshot restore). A second serial
          port (ttyS1) is a control channel; the host syncs the guest clock once before
          the pause (`date -s`), and about 1.5 s after `cont` sets it to the host time
          again. Expects exactly one lost-time freeze after the pause, kind `vm_pause`
          seen by `wall_step`, about as long as the pause, no `wall_clock_step`, and a
          `freeze` alert delivered to a webhook receiver inside the guest.
  blind   the same guest without the resync: expects no event at all after the pause,
          `stallwatch_vm_pause_visible 0` before and after, a `clock.vm_pause_blind_spot`
          sentence in /api/v1/status, and `stallwatch doctor` exiting 1 naming vm_pause as
          blind and the `sntp:` fix.

In resync and blind modes the guest's stallwatch runs with GUEST_CONFIG below: a
webhook channel and the freeze rule at 5 s. resync keeps the default references, so the
guest's RTC is discovered — and, on the VM clock, it stops with the guest: the test
proves its steady reading does not withdraw the resync. blind sets `references = []`:
the guest then has what a Firecracker x86 guest has, no clock that runs through a pause
(an RTC on the VM clock would claim a visibility it does not have).

Usage: vm_pause_test.py --kernel VMLINUZ --stallwatch STATIC_BINARY [--mode MODE]

Environment:
  PAUSE_SECONDS       pause length (default 10 in rtc mode, 13 otherwise)
  PAUSE_TOLERANCE     allowed |reported - host pause| in seconds (default 1.5 in rtc
                      mode, 2 in resync mode)
  VM_LOG              also copy the guest console to this file
  VM_VERBOSE=1        echo the guest console (and control channel) to stderr

Python 3 standard library only. Run through scripts/vm-pause-test.sh, which also
fetches the kernel.
"""

import argparse
import datetime
import gzip
import io
import json
import math
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
MODES = ("rtc", "resync", "blind")
PRESYNC_SETTLE = 4.0  # resync/blind: after the pre-pause clock sync, before the pause
RESYNC_AFTER = 1.5  # resync: set the guest clock this long after cont (or up to 1 s later)
BLIND_WATCH = 10.0  # blind: watch this long after cont for a (false) event
# Freeze kinds that are lost time (the rest: wall_clock_step).
LOST_TIME_KINDS = ("process_stall", "vm_pause", "suspend", "restart", "reboot")

# /init of the guest. Every line the host parses starts with a fixed marker; the
# kernel may print warnings in between (loglevel=4), so the host ignores the rest.
# @SETUP@ and @SW_ARGS@ differ per mode (init_script); in rtc mode @SETUP@ is empty.
INIT_TEMPLATE = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp/sw
ip link set lo up
ip addr show dev lo | grep -q 'inet 127\.0\.0\.1/' || ip addr add 127.0.0.1/8 dev lo
echo "INIT-START uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
[ -r /sys/class/rtc/rtc0/since_epoch ] || echo "INIT-WARN no /sys/class/rtc/rtc0/since_epoch"
@SETUP@

# stallwatch's own output goes to the console too, prefixed, as evidence.
(
  /bin/stallwatch run @SW_ARGS@ 2>&1
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
"""

# The port of the webhook receiver inside the guest (busybox httpd + a CGI).
HOOK_PORT = 8080

# resync and blind: the guest's stallwatch config (blind adds `references = []`, below).
GUEST_CONFIG = """\
listen = "@LISTEN@"
data_dir = "/tmp/sw"
@FREEZE@
[[channel]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:@HOOK_PORT@/cgi-bin/hook"

[[rule]]
rule = "freeze"
threshold = "5s"
channels = ["hook"]
""".replace("@LISTEN@", LISTEN).replace("@HOOK_PORT@", str(HOOK_PORT))

# The webhook receiver's CGI: each request body (one line of JSON) goes to the console
# at once, marked, and to a file as a record.
HOOK_CGI = r"""#!/bin/sh
b=$(head -c "${CONTENT_LENGTH:-0}")
printf '%s\n' "$b" >> /tmp/hooks/bodies
printf 'HOOK: %s\n' "$b" > /dev/console
printf 'Content-Type: text/plain\r\n\r\nok\n'
"""

# resync and blind: the webhook receiver and the control channel on ttyS1. The host
# sends one command a line and waits for its "CTL <command>" reply on the same port.
# The guest's wall clock with microseconds comes from adjtimex (busybox date has no %N).
CLOCK_VM_SETUP = r"""mkdir -p /tmp/hooks
httpd -p 127.0.0.1:@HOOK_PORT@ -h /www || echo "INIT-WARN httpd failed rc=$?"
guest_now() {
  adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {u = $2} END {printf "%d.%06d", s, u}'
}
ctl() {
  while IFS= read -r line; do
    set -- $line
    case $1 in
      SETCLOCK)
        date -s "@$2" >/dev/null 2>&1
        rc=$?
        echo "CTL SETCLOCK $2 rc=$rc now=$(guest_now)" ;;
      NOW)
        echo "CTL NOW $(guest_now)" ;;
      GET)
        if b=$(timeout 5 wget -qO- "http://@LISTEN@$2" 2>/dev/null); then
          echo "CTL GET $2 $(printf '%s' "$b" | tr -d '\n')"
        else
          echo "CTL GET $2 ERROR"
        fi ;;
      METRIC)
        echo "CTL METRIC $2 $(timeout 5 wget -qO- http://@LISTEN@/metrics 2>/dev/null | grep "^$2[ {]" | tr '\n' ';')" ;;
      DOCTOR)
        shift
        out=$(stallwatch doctor "$@" 2>&1)
        rc=$?
        printf '%s\n' "$out" | while IFS= read -r l; do echo "CTL DOCTOR| $l"; done
        echo "CTL DOCTOR rc=$rc" ;;
      *)
        echo "CTL ERROR unknown command: $1" ;;
    esac
  done
}
if stty -F /dev/ttyS1 raw -echo 2>/dev/null; then
  ctl </dev/ttyS1 >/dev/ttyS1 2>&1 &
else
  echo "INIT-WARN no /dev/ttyS1 for the control channel"
fi
""".replace("@LISTEN@", LISTEN).replace("@HOOK_PORT@", str(HOOK_PORT))


def init_script(mode):
    """The guest's /init for a mode; in rtc mode the same script as always."""
    if mode == "rtc":
        setup, sw_args = "", "--listen @LISTEN@ --data-dir /tmp/sw"
    else:
        setup, sw_args = CLOCK_VM_SETUP, "--config /etc/stallwatch.toml"
    s = INIT_TEMPLATE.replace("@SETUP@\n", setup).replace("@SW_ARGS@", sw_args)
    return s.replace("@LISTEN@", LISTEN).replace("@READY@", READY_MARKER)


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


def build_initrd(path, busybox, stallwatch, mode="rtc"):
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
    c.file("init", init_script(mode).encode())
    if mode != "rtc":
        freeze = "\n[freeze]\nreferences = []\n" if mode == "blind" else ""
        config = GUEST_CONFIG.replace("@FREEZE@", freeze)
        c.file("etc/stallwatch.toml", config.encode(), mode=0o644)
        for d in ("www", "www/cgi-bin"):
            c.dir(d)
        c.file("www/cgi-bin/hook", HOOK_CGI.encode())
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

    def __init__(self, stream, log_path=None, verbose=False, label="guest"):
        self.lines = []  # (host monotonic, text)
        self.cond = threading.Condition()
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.verbose = verbose
        self.label = label
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
                self.log.write(("" if self.label == "guest" else self.label + "| ") + text + "\n")
                self.log.flush()
            if self.verbose:
                print("  %s| %s" % (self.label, text), file=sys.stderr, flush=True)
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout, start=0):
        """First line (t, text) from line number `start` on satisfying pred, or None on
        timeout / console closed."""
        deadline = time.monotonic() + timeout
        seen = start
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

    def count(self):
        with self.cond:
            return len(self.lines)


def connect_unix(path, timeout):
    """A connected unix stream socket, retrying while QEMU has not created it yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Qmp:
    def __init__(self, path, timeout=30.0):
        self.sock = connect_unix(path, timeout)
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


# Host wall clock minus host monotonic: the console stamps lines with the monotonic
# clock; the guest's wall clock is compared with the host's.
WALL_MINUS_MONO = time.time() - time.monotonic()


def wall_of(t_mono):
    return t_mono + WALL_MINUS_MONO


class Ctl:
    """The guest's control channel: its second serial port (ttyS1), a unix socket here.
    One command a line; the guest answers each with a line starting "CTL <command>"."""

    def __init__(self, path, log_path=None, verbose=False, timeout=30.0):
        self.sock = connect_unix(path, timeout)
        self.con = Console(self.sock.makefile("rb"), log_path, verbose, label="ctl")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def request(self, line, timeout=20.0):
        """Sends a command; returns (host wall clock when the reply arrived, reply text,
        the lines before the reply), or raises on timeout."""
        word = line.split()[0]
        done = "CTL DOCTOR rc=" if word == "DOCTOR" else "CTL %s" % word
        start = self.con.count()
        self.send(line)
        got = self.con.wait_for(lambda s: s.startswith(done) or s.startswith("CTL ERROR"), timeout, start)
        if got is None:
            raise RuntimeError("no reply to %r on the control channel within %.0f s" % (line, timeout))
        lines = [text for _, text in self.con.snapshot()[start:]]
        upto = lines.index(got[1])
        return wall_of(got[0]), got[1], lines[:upto]

    def offset(self, tries=3):
        """Guest wall clock minus host wall clock, from the NOW round trip with the
        shortest time: (offset, round trip)."""
        best = None
        for _ in range(tries):
            t1 = time.time()
            t2, reply, _ = self.request("NOW")
            g = float(reply.split()[2])
            rtt = t2 - t1
            if best is None or rtt < best[1]:
                best = (g - (t1 + t2) / 2, rtt)
        return best

    def setclock(self, not_before, lead):
        """Sets the guest clock to the host's, to whole seconds (busybox date): sends
        `SETCLOCK N` for the first whole second N with N - lead >= not_before, at host
        time N - lead, so that `date -s` runs at about N. Returns (host wall clock when
        sent, N)."""
        n = math.ceil(not_before + lead)
        time.sleep(max(0.0, n - lead - time.time()))
        sent = time.time()
        _, reply, _ = self.request("SETCLOCK %d" % n)
        if " rc=0 " not in reply + " ":
            raise RuntimeError("the guest's date -s failed: %s" % reply)
        return sent, n

    def get(self, path):
        """The body of GET http://LISTEN<path> in the guest, or None."""
        _, reply, _ = self.request("GET " + path)
        body = reply[len("CTL GET %s " % path):]
        return None if body == "ERROR" else body

    def metric(self, name):
        """The value of an unlabelled sample in the guest's /metrics, or None."""
        _, reply, _ = self.request("METRIC " + name)
        for sample in reply[len("CTL METRIC %s " % name):].split(";"):
            parts = sample.split()
            if len(parts) == 2 and parts[0] == name:
                try:
                    return float(parts[1])
                except ValueError:
                    return None
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def pause_vm(qmp, pause):
    """QMP stop, sleep `pause` s of host time, cont. Returns (host wall clock at stop,
    monotonic stop, monotonic cont, the host-measured pause, the QMP round trips in s)."""
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
    return wall_stop, t_stop, t_cont, host_pause, (t_stop - a, t_cont - b)


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


def event_start(e):
    """An event's started_at as unix seconds, or None."""
    try:
        t = datetime.datetime.fromisoformat(str(e.get("started_at")).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.timestamp()


def brief(e):
    """kind:duration[channels] of an event, for the summary."""
    chans = "+".join(str(c.get("channel")) for c in e.get("channels") or [] if isinstance(c, dict))
    dur = e.get("duration_seconds")
    return "%s:%s[%s]" % (e.get("kind"), "%.3fs" % dur if isinstance(dur, (int, float)) else dur, chans)


def parse_hook(text):
    """The JSON body of a webhook request the guest's receiver got, or None."""
    m = re.search(r"HOOK: (.*)$", text)
    if not m:
        return None
    try:
        v = json.loads(m.group(1))
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def is_freeze_alert(body, kind="vm_pause"):
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    labels = data.get("labels") if isinstance(data.get("labels"), dict) else {}
    return (body.get("type") == "alert.firing" and data.get("rule") == "freeze"
            and labels.get("kind") == kind)


def run_clock_vm(mode, con, qemu, qmp, ctl, fail, pause, tol, t_start, boot_s):
    """resync and blind: the guest RTC on the VM clock, nothing inside runs through the
    pause. See the module docstring for what each mode expects."""
    tag = "vm-pause-" + mode
    log = lambda msg: print("%s: %s" % (tag, msg), file=sys.stderr, flush=True)

    def num(v, fmt="%.3fs"):
        return fmt % v if isinstance(v, (int, float)) else "n/a"

    def latest_freezes(t0=0.0):
        got = [(t, f) for t, s in con.snapshot() if t >= t0 for f in [parse_freezes(s)] if f is not None]
        return got[-1] if got else None

    def sw_lines(t0, t1, needle):
        return [s[4:] for t, s in con.snapshot() if t0 <= t <= t1 and s.startswith("SW| ") and needle in s]

    # 1. As in rtc mode: let stallwatch run a while (it judges what it can see after
    # its merge window).
    time.sleep(SETTLE_BEFORE)
    if qemu.poll() is not None:
        return fail("qemu exited before the pause")

    # 2. Sync the guest clock to the host once, so that the only lag at the pause is the
    # pause itself. It is a step of its own (the guest set its clock from the RTC at
    # boot, to whole seconds): recorded, and left to settle before the pause.
    try:
        off_boot, rtt = ctl.offset()
        lead = rtt / 2  # host send -> guest `date -s`, about half a round trip
        t_presync = time.monotonic()
        wall_presync, _ = ctl.setclock(time.time() + 0.2, lead)
        off_presync, _ = ctl.offset()
    except RuntimeError as e:
        return fail("pre-pause clock sync: %s" % e)
    log("guest clock was %+.3f s off the host's at boot; after the sync %+.3f s (round trip %.0f ms)"
        % (off_boot, off_presync, rtt * 1e3))
    time.sleep(PRESYNC_SETTLE)
    wall_settle = time.time()
    t_settle = time.monotonic()
    pre = latest_freezes(t_settle - 1.5)
    if pre is None:
        return fail("no parseable FREEZES line before the pause")
    pre_events = [e for e in pre[1] if isinstance(e, dict)]
    presync_events = [e for e in pre_events if (event_start(e) or 0) >= wall_presync - 3]
    presync_log = sw_lines(t_presync, t_settle, "wall clock")
    log("the pre-pause sync (a step of about %+.3f s) became: %s; stallwatch said: %s"
        % (off_presync - off_boot, json.dumps(presync_events) if presync_events else "no event",
           " | ".join(presync_log) or "nothing"))

    try:
        visible_before = ctl.metric("stallwatch_vm_pause_visible")
        status_before = ctl.get("/api/v1/status")
    except RuntimeError as e:
        return fail("reading the guest's /metrics and /api/v1/status: %s" % e)

    # 3. The pause.
    wall_stop, t_stop, t_cont, host_pause, rtts = pause_vm(qmp, pause)
    wall_cont = wall_of(t_cont)
    log("VM stopped for %.3f s of host time (QMP round trips %.1f/%.1f ms)"
        % (host_pause, rtts[0] * 1e3, rtts[1] * 1e3))

    # 4. resync: the guest clock set right about 1.5 s after cont.
    wall_resync = t_resync = off_before_resync = off_resync = None
    if mode == "resync":
        try:
            off_before_resync, _ = ctl.offset(tries=1)
            wall_resync, _ = ctl.setclock(wall_cont + RESYNC_AFTER, lead)
            t_resync = wall_resync - WALL_MINUS_MONO
            off_resync, _ = ctl.offset()
        except RuntimeError as e:
            return fail("resync after the pause: %s" % e)
        log("resync %.2f s after cont; guest clock %+.3f s off before, %+.3f s after"
            % (wall_resync - wall_cont, off_before_resync, off_resync))

    # 5. Watch. resync: until the freeze and its alert are in (then SETTLE_AFTER more
    # to catch a second event), at most LATE_DEADLINE. blind: BLIND_WATCH.
    first_seen = first_hook = None
    while True:
        now = time.monotonic()
        if qemu.poll() is not None:
            return fail("qemu exited after the pause (rc=%s)" % qemu.poll())
        if mode == "blind":
            if now - t_cont >= BLIND_WATCH:
                break
        else:
            for t, s in con.snapshot():
                if t < t_resync:
                    continue
                f = parse_freezes(s)
                if first_seen is None and f and any(
                        isinstance(e, dict) and e.get("kind") == "vm_pause"
                        and (event_start(e) or 0) >= wall_settle for e in f):
                    first_seen = t - t_resync
                h = parse_hook(s)
                if first_hook is None and h and is_freeze_alert(h):
                    first_hook = t - t_resync
            done = first_seen is not None and first_hook is not None
            if (done and now - t_resync >= max(first_seen, first_hook) + SETTLE_AFTER) \
                    or now - t_cont >= LATE_DEADLINE:
                break
        time.sleep(0.25)

    final = latest_freezes(t_cont)
    if final is None:
        errs = sum(1 for t, s in con.snapshot() if t >= t_cont and "FREEZES-ERROR" in s)
        return fail("no parseable FREEZES line after cont (%d FREEZES-ERROR lines)" % errs)
    events = [e for e in final[1] if isinstance(e, dict)]
    # What the assertions count: events that START after the pre-pause settle.
    after = [e for e in events if (event_start(e) or 0) >= wall_settle]
    problems = []
    total = lambda: time.monotonic() - t_start

    if mode == "resync":
        lost = [e for e in after if e.get("kind") in LOST_TIME_KINDS]
        steps = [e for e in after if e.get("kind") == "wall_clock_step"]
        dur = started_err = None
        if len(lost) != 1:
            problems.append("expected exactly 1 lost-time freeze after the pause, got %d: %s"
                            % (len(lost), " ".join(map(brief, lost)) or "none"))
        if steps:
            problems.append("the resync was recorded as wall_clock_step: %s" % " ".join(map(brief, steps)))
        if lost:
            ev = lost[0]
            chans = [c.get("channel") for c in ev.get("channels") or [] if isinstance(c, dict)]
            if ev.get("kind") != "vm_pause":
                problems.append("the freeze is %s, not vm_pause" % ev.get("kind"))
            if "wall_step" not in chans:
                problems.append("channels has no {\"channel\":\"wall_step\"}: %s" % json.dumps(ev.get("channels")))
            dur = ev.get("duration_seconds")
            if not isinstance(dur, (int, float)):
                problems.append("duration_seconds missing or not a number: %r" % (dur,))
                dur = None
            elif abs(dur - host_pause) > tol:
                problems.append("duration_seconds %.3f is not within %.1f s of the host pause %.3f"
                                % (dur, tol, host_pause))
            started_err = (event_start(ev) or 0) - wall_stop
        hooks = [(t, h) for t, s in con.snapshot() for h in [parse_hook(s)] if h is not None]
        freeze_hooks = [h for t, h in hooks if t >= t_resync and is_freeze_alert(h)]
        if len(freeze_hooks) != 1:
            try:
                alerts = ctl.get("/api/v1/alerts")
            except RuntimeError as e:
                alerts = "unreadable: %s" % e
            problems.append("expected 1 freeze alert (vm_pause) at the webhook after the resync, got %d "
                            "(all webhook bodies: %d; /api/v1/alerts: %s)"
                            % (len(freeze_hooks), len(hooks), (alerts or "none")[:600]))
        fields = [
            ("host_pause", num(host_pause)),
            ("reported", num(dur)),
            ("error", num(dur - host_pause if dur is not None else None)),
            # The step the resync should make: the pause plus how far the two syncs missed.
            ("expected_step", num(host_pause + off_resync - off_presync)),
            ("detected_after_resync", num(first_seen)),
            ("alerted_after_resync", num(first_hook)),
            ("resync_after_cont", num(wall_resync - wall_cont)),
            ("started_at_vs_host_stop", num(started_err)),
            ("guest_offset_boot", num(off_boot)),
            ("guest_offset_presync", num(off_presync)),
            ("guest_offset_before_resync", num(off_before_resync)),
            ("guest_offset_after_resync", num(off_resync)),
            ("presync_event", ",".join(map(brief, presync_events)) or "none"),
            ("vm_pause_visible", num(visible_before, "%g")),
            ("other_events", len(after) - len(lost)),
            ("boot", "%.1fs" % boot_s),
            ("total", "%.1fs" % total()),
        ]
    else:
        try:
            visible_after = ctl.metric("stallwatch_vm_pause_visible")
            status_after = ctl.get("/api/v1/status")
            doctor = ctl.request("DOCTOR --config /etc/stallwatch.toml", timeout=30)
            doctor_json = ctl.request("DOCTOR --config /etc/stallwatch.toml --format json", timeout=30)
        except RuntimeError as e:
            return fail("reading the guest's state after the pause: %s" % e)
        if after:
            problems.append("expected no event after the pause, got %d: %s"
                            % (len(after), " ".join(map(brief, after))))
        for when, v in (("before", visible_before), ("after", visible_after)):
            if v != 0:
                problems.append("stallwatch_vm_pause_visible is %s %s the pause, not 0" % (v, when))
        blind_spot = None
        for when, body in (("before", status_before), ("after", status_after)):
            try:
                clock = json.loads(body or "null")["clock"]
            except (ValueError, TypeError, KeyError):
                problems.append("/api/v1/status %s the pause has no clock object: %s" % (when, (body or "none")[:300]))
                continue
            spot = clock.get("vm_pause_blind_spot")
            if clock.get("vm_pause_visible") is not False:
                problems.append("status clock.vm_pause_visible %s the pause is %r, not false"
                                % (when, clock.get("vm_pause_visible")))
            if not isinstance(spot, str) or len(spot.split()) < 5:
                problems.append("status clock.vm_pause_blind_spot %s the pause is not a sentence: %r" % (when, spot))
            else:
                blind_spot = spot
        # stallwatch doctor: exit 1 (a kind is blind), vm_pause named, the sntp: fix shown.
        doctor_rc = int(doctor[1].split("rc=")[1])
        doctor_text = "\n".join(l[len("CTL DOCTOR| "):] for l in doctor[2] if l.startswith("CTL DOCTOR| "))
        doctor_json_text = "\n".join(l[len("CTL DOCTOR| "):] for l in doctor_json[2] if l.startswith("CTL DOCTOR| "))
        log("stallwatch doctor (rc=%d):\n%s" % (doctor_rc, doctor_text))
        log("stallwatch doctor --format json (%s): %s" % (doctor_json[1], doctor_json_text))
        doctor_vm_pause = None
        has_doctor = "unrecognized subcommand 'doctor'" not in doctor_text
        if not has_doctor:
            problems.append("this stallwatch has no doctor subcommand (rc=%d): the doctor check "
                            "cannot pass until it lands" % doctor_rc)
        elif doctor_rc != 1:
            problems.append("stallwatch doctor exited %d, not 1 (some freeze kind blind): %s"
                            % (doctor_rc, doctor_text.replace("\n", " | ")[:400]))
        if has_doctor:
            flat = doctor_text.replace("\n", " | ")[:400]
            if not [l for l in doctor_text.splitlines() if "vm_pause" in l and "blind" in l.lower()]:
                problems.append("stallwatch doctor does not name vm_pause as blind: %s" % flat)
            if "sntp:" not in doctor_text:
                problems.append("stallwatch doctor does not mention the sntp: fix: %s" % flat)
            try:
                doctor_vm_pause = find_kind(json.loads(doctor_json_text), "vm_pause")
            except ValueError:
                pass
            if doctor_vm_pause is None:
                problems.append("stallwatch doctor --format json has no vm_pause entry: %s" % doctor_json_text[:400])
            elif doctor_vm_pause.get("visible") == "yes":
                problems.append("stallwatch doctor --format json calls vm_pause visible: %s" % json.dumps(doctor_vm_pause))
        fields = [
            ("host_pause", num(host_pause)),
            ("events_after_pause", len(after)),
            ("vm_pause_visible_before", num(visible_before, "%g")),
            ("vm_pause_visible_after", num(visible_after, "%g")),
            ("doctor_rc", doctor_rc),
            ("doctor_vm_pause", doctor_vm_pause.get("visible") if doctor_vm_pause else "n/a"),
            ("guest_offset_boot", num(off_boot)),
            ("guest_offset_presync", num(off_presync)),
            ("presync_event", ",".join(map(brief, presync_events)) or "none"),
            ("boot", "%.1fs" % boot_s),
            ("total", "%.1fs" % total()),
        ]
        log("blind spot: %s" % blind_spot)

    summary = " ".join("%s=%s" % kv for kv in fields)
    log("events before the pause: %s" % json.dumps(pre_events))
    log("events after the pause: %s" % json.dumps(after))
    if problems:
        return fail("; ".join(problems) + " | " + summary)
    print("PASS %s: %s" % (tag, summary))
    return 0


def find_kind(doc, kind):
    """The object with "kind": kind anywhere in a JSON document, or None."""
    if isinstance(doc, dict):
        if doc.get("kind") == kind:
            return doc
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            found = find_kind(v, kind)
            if found is not None:
                return found
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--stallwatch", required=True, help="static stallwatch binary")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--mode", choices=MODES, default="rtc",
                    help="rtc (default): RTC on the host clock; resync/blind: RTC on the VM clock")
    args = ap.parse_args()
    mode = args.mode
    # The PASS/FAIL tag: "vm-pause" in rtc mode as always, else "vm-pause-<mode>".
    tag = "vm-pause" if mode == "rtc" else "vm-pause-" + mode

    pause = float(os.environ.get("PAUSE_SECONDS", "10" if mode == "rtc" else "13"))
    tol = float(os.environ.get("PAUSE_TOLERANCE", "1.5" if mode == "rtc" else "2"))
    verbose = os.environ.get("VM_VERBOSE") == "1"

    why = check_static(args.stallwatch)
    if why:
        print("FAIL %s: %s: %s" % (tag, args.stallwatch, why))
        return 1

    tmp = tempfile.mkdtemp(prefix="swvm-", dir="/tmp")  # short: the QMP socket path
    qemu = None
    qmp = None
    ctl = None
    # SIGTERM/SIGHUP (e.g. the wrapper's trap, a test timeout) -> clean exit via finally.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        t_start = time.monotonic()
        initrd = os.path.join(tmp, "initrd.gz")
        build_initrd(initrd, args.busybox, args.stallwatch, mode)
        sock = os.path.join(tmp, "qmp.sock")
        ctl_sock = os.path.join(tmp, "ctl.sock")
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", args.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 loglevel=4 edd=off",
            "-qmp", "unix:%s,server,nowait" % sock,
        ]
        if mode != "rtc":
            # The RTC on the VM clock: it stops with the guest. ttyS1: the control
            # channel. (A second serial port drops the default one: ttyS0 is named.)
            cmd += [
                "-rtc", "base=utc,clock=vm",
                "-serial", "mon:stdio",
                "-chardev", "socket,id=ctl,path=%s,server=on,wait=off" % ctl_sock,
                "-serial", "chardev:ctl",
            ]
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        con = Console(qemu.stdout, os.environ.get("VM_LOG"), verbose)

        def fail(msg):
            tail = "\n".join("  guest| " + s for _, s in con.snapshot()[-40:])
            print("--- last guest console lines ---\n%s\n---" % tail, file=sys.stderr)
            if ctl is not None:
                tail = "\n".join("  ctl| " + s[:300] for _, s in ctl.con.snapshot()[-15:])
                print("--- last control channel lines ---\n%s\n---" % tail, file=sys.stderr)
            print("FAIL %s: %s" % (tag, msg))
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
        if mode != "rtc":
            ctl = Ctl(ctl_sock, os.environ.get("VM_LOG"), verbose)
            return run_clock_vm(mode, con, qemu, qmp, ctl, fail, pause, tol, t_start, boot_s)
        time.sleep(SETTLE_BEFORE)
        if qemu.poll() is not None:
            return fail("qemu exited before the pause")

        wall_stop, t_stop, t_cont, host_pause, rtts = pause_vm(qmp, pause)
        print("vm-pause: VM stopped for %.3f s of host time (QMP round trips %.1f/%.1f ms)"
              % (host_pause, rtts[0] * 1e3, rtts[1] * 1e3), file=sys.stderr)

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
        if ctl:
            ctl.close()
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
