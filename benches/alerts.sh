#!/usr/bin/env bash
# benches/alerts.sh — what alert delivery costs and how fast it is, with the release
# binary, a real clock and real sockets on 127.0.0.1:
#
#   bash benches/alerts.sh          # from the repo root; ~4 minutes plus the build
#
# It PRINTS figures; it never fails on a timing (exit 0 unless something could not be
# set up). "met"/"NOT met" compare with the targets:
#   latency: p99 ≤ 1 s from the end of a freeze to the webhook POST;
#   backlog: with 10,000 notifications pending and the receiver down, RSS growth
#            ≤ 10 MB and CPU ≤ 1 % of one core over BACKLOG_SECONDS (60).
#
# Part 1 (latency). `stallwatch run` with `[[rule]] rule = "freeze" threshold = "2s"`
# and a generic webhook channel to a receiver written here (python3 stdlib http.server,
# its own process), which appends time.time() of each POST's arrival (taken in
# do_POST, once the request head is read) to a file. LATENCY_RUNS (20) times: SIGSTOP
# the sidecar, sleep STOP_SECONDS (3), take time.time() and SIGCONT; latency = arrival
# of the next POST − that time (an upper bound by the kill() call). Both times are
# CLOCK_REALTIME on the same machine, read by two python processes. Runs are
# GAP_SECONDS (3) apart after the POST arrived, so freezes never merge.
#
# Part 2 (backlog). One webhook channel to a 127.0.0.1 port nothing listens on
# (connections refused), default backoff (1 s doubling to 5 m), the `freeze` rule off
# (so a restart adds no notification). Baseline: a sidecar on a fresh data dir (which
# creates and migrates the state DB), empty outbox, measured over the window below;
# then stopped with SIGTERM. BACKLOG_ROWS (10,000) pending notifications are inserted
# into its `notification` table with python's sqlite3 (BACKLOG_ROWS/2 alerts × firing
# + resolve, each message a full serialized Message, due now) and it is started again
# and measured the same way. Measure: after SETTLE_SECONDS (5), VmRSS from
# /proc/PID/status and utime+stime from /proc/PID/stat; again after BACKLOG_SECONDS.
# /metrics is read at both ends (pending rows, retried count), not during the window,
# so scrapes are not counted. ~4 minutes in all.
#
# Environment: LATENCY_RUNS (20), STOP_SECONDS (3), GAP_SECONDS (3), BACKLOG_ROWS
# (10000), BACKLOG_SECONDS (60), SETTLE_SECONDS (5), KEEP_TMP (0: delete the temp dir
# with the logs at exit).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
swb_init stallwatch-alerts-bench

LATENCY_RUNS=${LATENCY_RUNS:-20}
STOP_SECONDS=${STOP_SECONDS:-3}
GAP_SECONDS=${GAP_SECONDS:-3}
BACKLOG_ROWS=${BACKLOG_ROWS:-10000}
BACKLOG_SECONDS=${BACKLOG_SECONDS:-60}
SETTLE_SECONDS=${SETTLE_SECONDS:-5}
export LATENCY_RUNS STOP_SECONDS GAP_SECONDS BACKLOG_ROWS BACKLOG_SECONDS SETTLE_SECONDS

swb_build
export BIN TMP

# Starts `stallwatch run` on a free port with data dir $1, config $2 and log $3; sets
# SW_PID and SW_PORT and waits for /readyz.
start_sidecar() {
    local data=$1 config=$2 log=$3
    SW_PORT=$(swb_free_ports 1)
    swb_spawn "$log" env STALLWATCH_LOG=info NO_COLOR=1 "$BIN" run --listen "127.0.0.1:$SW_PORT" \
        --data-dir "$data" --config "$config"
    SW_PID=$SWB_LAST_PID
    swb_wait_ready "http://127.0.0.1:$SW_PORT/readyz" "$SW_PID" stallwatch "$log"
}

# ---- the receiver (python3 stdlib) ---------------------------------------------------
cat >"$TMP/receiver.py" <<'PY'
"""Answers every POST with 200 and appends `arrival_unix_s key type` to a file."""
import http.server, json, sys, time

port_file, log_file = sys.argv[1], sys.argv[2]
out = open(log_file, "a", buffering=1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        arrived = time.time()  # the request head has been read
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            kind = json.loads(body).get("type", "?")
        except ValueError:
            kind = "?"
        out.write(f"{arrived:.6f} {self.headers.get('Idempotency-Key', '-')} {kind}\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY

# ---- part 1: latency ------------------------------------------------------------------
echo "part 1: freeze → webhook latency, $LATENCY_RUNS runs of a ${STOP_SECONDS} s SIGSTOP ..." >&2
python3 "$TMP/receiver.py" "$TMP/receiver.port" "$TMP/arrivals.log" &
SWB_PIDS+=("$!")
for _ in $(seq 100); do [[ -s "$TMP/receiver.port" ]] && break; sleep 0.05; done
RECEIVER_PORT=$(cat "$TMP/receiver.port")
cat >"$TMP/latency.toml" <<EOF
[[channel]]
name = "bench"
kind = "webhook"
url = "http://127.0.0.1:$RECEIVER_PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[rule]]
rule = "freeze"
threshold = "2s"
EOF
mkdir -p "$TMP/latency-state"
start_sidecar "$TMP/latency-state" "$TMP/latency.toml" "$TMP/latency.log"
LATENCY_PID=$SW_PID LATENCY_PORT=$SW_PORT PYTHONPATH="$TMP" python3 - "$TMP/arrivals.log" <<'PY'
import os, signal, sys, time

from swb import pct

arrivals, pid = sys.argv[1], int(os.environ["LATENCY_PID"])
runs, stop, gap = (int(os.environ["LATENCY_RUNS"]), float(os.environ["STOP_SECONDS"]),
                   float(os.environ["GAP_SECONDS"]))
POST_TIMEOUT = 15.0

def lines():
    with open(arrivals) as f:
        return [l.split() for l in f if l.strip()]

time.sleep(2.0)  # let the tick loop settle after start-up
latencies, missing = [], 0
for run in range(runs):
    seen = len(lines())
    os.kill(pid, signal.SIGSTOP)
    time.sleep(stop)
    # Read before the kill(): the freeze ends at or after this, so the latency is never
    # under-stated (kill() itself takes microseconds).
    resumed = time.time()
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + POST_TIMEOUT
    while len(lines()) <= seen and time.monotonic() < deadline:
        time.sleep(0.005)
    new = lines()[seen:]
    if not new:
        missing += 1
        print(f"  run {run + 1:2}: no POST within {POST_TIMEOUT:.0f} s", file=sys.stderr)
    else:
        latency = float(new[0][0]) - resumed
        latencies.append(latency)
        print(f"  run {run + 1:2}: {latency * 1000:7.1f} ms ({new[0][2]})", file=sys.stderr)
    time.sleep(gap)

print()
print("latency: end of a freeze (SIGCONT) → webhook POST arrival")
if latencies:
    s = sorted(latencies)
    p99 = pct(s, 0.99)
    print(f"  runs {len(s)}/{runs}   p50 {pct(s, 0.50) * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   "
          f"max {s[-1] * 1000:.1f} ms   min {s[0] * 1000:.1f} ms")
    verdict = "met" if p99 <= 1.0 and not missing else "NOT met"
    print(f"  target p99 ≤ 1 s: {verdict}" + (f" ({missing} run(s) without a POST)" if missing else ""))
else:
    print(f"  no POST arrived in any of {runs} runs: target NOT met")
PY
swb_stop "$SW_PID"

# ---- part 2: backlog ------------------------------------------------------------------
echo "part 2: $BACKLOG_ROWS pending notifications, receiver down, ${BACKLOG_SECONDS} s ..." >&2
CLOSED_PORT=$(swb_free_ports 1) # nothing listens: connections are refused
cat >"$TMP/backlog.toml" <<EOF
[[channel]]
name = "bench"
kind = "webhook"
url = "http://127.0.0.1:$CLOSED_PORT/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[rule]]
rule = "freeze"
enabled = false
EOF
cat >"$TMP/measure.py" <<'PY'
"""RSS and CPU of a running sidecar over BACKLOG_SECONDS, after SETTLE_SECONDS."""
import os, sys, time, urllib.request

from swb import CLK_TCK, proc_status, stat_ticks

label = sys.argv[1]

pid, port = int(os.environ["BACKLOG_PID"]), int(os.environ["BACKLOG_PORT"])
settle, window = float(os.environ["SETTLE_SECONDS"]), float(os.environ["BACKLOG_SECONDS"])
MB = 1_000_000

def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if name == "stallwatch_notifications_total" and 'outcome="retried"' not in line:
                continue
            return float(line.rsplit(" ", 1)[1])
    return float("nan")

def scrape():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return metric(text, "stallwatch_outbox_pending"), metric(text, "stallwatch_notifications_total")

time.sleep(settle)
pending0, retried0 = scrape()
rss0, ticks0, t0 = proc_status(pid)["VmRSS"], stat_ticks(pid), time.monotonic()
time.sleep(window)
rss1, ticks1, t1 = proc_status(pid)["VmRSS"], stat_ticks(pid), time.monotonic()
pending1, retried1 = scrape()

growth = (rss1 - rss0) / MB
cpu = (ticks1 - ticks0) / CLK_TCK / (t1 - t0) * 100
print()
print(f"backlog, {label}: {int(pending0)} pending, receiver refusing connections, {t1 - t0:.0f} s")
print(f"  RSS   {rss0 / MB:.1f} MB → {rss1 / MB:.1f} MB   growth {growth:+.2f} MB   "
      f"(target ≤ 10 MB: {'met' if growth <= 10 else 'NOT met'})")
print(f"  CPU   {(ticks1 - ticks0) / CLK_TCK:.2f} s over {t1 - t0:.0f} s = {cpu:.2f} % of a core   "
      f"(target ≤ 1 %: {'met' if cpu <= 1 else 'NOT met'})")
print(f"  probes in the window: {retried1 - retried0:.0f} (notifications_total retried); "
      f"pending {int(pending0)} → {int(pending1)}")
PY
mkdir -p "$TMP/backlog-state"
start_sidecar "$TMP/backlog-state" "$TMP/backlog.toml" "$TMP/backlog-init.log"
BACKLOG_PID=$SW_PID BACKLOG_PORT=$SW_PORT python3 "$TMP/measure.py" "baseline (empty outbox)"
swb_stop "$SW_PID"
python3 - "$TMP/backlog-state/stallwatch.sqlite" <<'PY'
import json, os, sqlite3, sys, time

db, rows = sys.argv[1], int(os.environ["BACKLOG_ROWS"])
now = time.time_ns()
conn = sqlite3.connect(db)
columns = {r[1] for r in conn.execute("PRAGMA table_info(notification)")}
if not columns:
    sys.exit(f"{db} has no notification table: is this build's alert engine in?")

def message(i, kind):
    alert = i // 2
    return {
        "key": f"sw_bench{i:08d}",
        "fingerprint": f"bench{alert:06d}",
        "rule": "stuck_jobs",
        "kind": kind,
        "severity": "critical",
        "labels": {"source": "bench", "queue": f"q{alert:05d}"},
        "title": f"[bench] bench: 1 job stuck past its lease in queue q{alert:05d}",
        "text": "A job has been running past its lease.\nHost: bench.",
        "started_at_ns": now - 60 * 10**9,
        "ended_at_ns": now if kind == "resolved" else None,
        "created_at_ns": now,
        "runbook_url": "https://github.com/stallwatch/stallwatch/blob/main/alerts/RUNBOOK.md#stuck_jobs",
        "host": "bench",
    }

with conn:
    for i in range(rows):
        kind = "firing" if i % 2 == 0 else "resolved"
        m = message(i, kind)
        conn.execute(
            "INSERT INTO notification (key, fingerprint, channel, kind, severity, message, state,"
            " next_attempt_at_ns, created_at_ns) VALUES (?, ?, 'bench', ?, 2, ?, 'pending', ?, ?)",
            (m["key"], m["fingerprint"], kind, json.dumps(m), now, now),
        )
print(f"  inserted {rows} pending rows into {db}", file=sys.stderr)
PY
start_sidecar "$TMP/backlog-state" "$TMP/backlog.toml" "$TMP/backlog.log"
BACKLOG_PID=$SW_PID BACKLOG_PORT=$SW_PORT python3 "$TMP/measure.py" "with $BACKLOG_ROWS pending"
swb_stop "$SW_PID"
