#!/usr/bin/env bash
# benches/sources.sh — issue 4's two source benchmarks, printed side by side:
#
#   1. One poll of a 1,000,000-row lab-jobs queue table (status index present):
#      stallwatch's per-poll time and RSS next to query-exporter (PyPI) running the same
#      reads, and query-exporter running the naive `SELECT status, count(*) ... GROUP BY
#      status` in place of the open-status count.
#   2. Writer impact: a python sqlite3 writer inserting and completing jobs as fast as it
#      can, in WAL and in rollback-journal (DELETE) mode, each without and with stallwatch
#      polling the same DB every 1 s; runs interleaved (without, with, without, with).
#
#   bash benches/sources.sh         # from the repo root; ~5 minutes with defaults,
#                                   # plus the release build and, the first time, the
#                                   # venv install and the test DB (~15 s)
#
# It PRINTS figures; it never fails on a timing (exit 0 unless something could not be
# set up). "met"/"NOT met" marks compare with the issue's targets:
#   stallwatch ≤ 50 ms per poll, ≥ 5x faster per poll than query-exporter, ≤ 1/5 of its
#   RSS; writer throughput drop ≤ 2 % in each journal mode.
#
# How each figure is measured
# ---------------------------
# Test DB: jobs(key TEXT PRIMARY KEY, payload, status, attempts INTEGER, result) with
# CREATE INDEX on status, ROWS rows of which PENDING are 'pending' (attempts 0-3, spread
# evenly through the key range) and the rest 'done'; dead_letter(key, payload, error,
# died REAL) with DEAD rows. Built in one python sqlite3 transaction (executemany), index
# created after the load, journal_mode DELETE; cached as target/bench/lab-jobs-*.db keyed
# by ROWS/PENDING/DEAD (delete it to rebuild).
#
# Part 1. Each exporter runs alone (one after the other, never together) against the
# cached DB, file already in the page cache. /metrics is scraped every 0.5 s; the first
# WARMUP_POLLS polls (connection open, cold statement cache) are dropped, then POLLS
# polls are kept.
#   * stallwatch: stallwatch_source_poll_duration_seconds{source="lab"} is a gauge of the
#     last poll's duration (the whole poll: every statement of the lab-jobs preset, rows
#     fetched, PRAGMA journal_mode); each new value is one poll.
#   * query-exporter: one query per read stallwatch's preset makes, each `interval: 1`
#     (see qe_queries below). Its own query_latency histogram (labels database, query)
#     is the measure: each time a query's _count goes up by one, the _sum increase is
#     that execution's latency; one poll = the sum over its queries of their i-th
#     executions. query_latency times SQLAlchemy's before/after_cursor_execute, i.e.
#     cursor.execute(), which for SQLite runs the statement to its first row: for these
#     aggregates that is nearly all of the work, but pool checkout, fetching the other
#     rows and turning rows into metrics are not in it — a lower bound of its poll.
#   * query-exporter (e2e): its own code path timed from outside its metric — a harness in
#     the venv loads the same YAML with query_exporter.config.load_config() and, per poll,
#     awaits query_exporter.db.Database.execute() for each query in turn (pool checkout,
#     execute, fetch all rows, build metric results; only the prometheus_client update is
#     left out), timed with perf_counter; polls 0.25 s apart. No RSS/CPU for these rows.
#   * RSS: VmRSS at the end of the window (peak = VmHWM). CPU: utime+stime of the process
#     over the window (includes its freeze ticks / event loop and the 2 scrapes/s).
#
# Part 2. Each run copies the cached DB afresh, sets the journal mode (kept: an idle
# connection of the driver holds it open so -wal/-shm exist before stallwatch opens it
# read-only), starts stallwatch (poll 1 s, lab-jobs) in the "with" runs and waits for its
# first successful poll, then runs the writer for WRITER_WARMUP + WRITER_SECONDS s and
# counts only the last WRITER_SECONDS. Writer: one connection, PRAGMA synchronous=
# WRITER_SYNC, busy_timeout WRITER_BUSY_MS; each transaction is BEGIN IMMEDIATE; INSERT a
# new pending job; UPDATE the oldest pending job to done (attempts+1, result); every
# 50th also bumps attempts of a pending job (a retry), every 500th also INSERTs a dead
# letter; COMMIT. So pending stays at PENDING and stallwatch has work every poll. A
# SQLITE_BUSY/LOCKED that outlives the busy_timeout is counted, rolled back and retried.
# Writes/s = committed transactions per second (each ≥ 1 INSERT + 1 UPDATE).
#
# Environment: ROWS (1000000), PENDING (1000), DEAD (500), POLLS (30), WARMUP_POLLS (2),
# WRITER_SECONDS (20), WRITER_WARMUP (1), WRITER_REPEATS (2), WRITER_SYNC (NORMAL),
# WRITER_BUSY_MS (5000), WRITER_MODES ("wal delete"), SKIP_QUERY_EXPORTER (0),
# SKIP_PART1 (0), SKIP_PART2 (0), KEEP_TMP (0: delete the temp dir with logs/configs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

export ROWS=${ROWS:-1000000}
export PENDING=${PENDING:-1000}
export DEAD=${DEAD:-500}
export POLLS=${POLLS:-30}
export WARMUP_POLLS=${WARMUP_POLLS:-2}
export WRITER_SECONDS=${WRITER_SECONDS:-20}
export WRITER_WARMUP=${WRITER_WARMUP:-1}
export WRITER_REPEATS=${WRITER_REPEATS:-2}
export WRITER_SYNC=${WRITER_SYNC:-NORMAL}
export WRITER_BUSY_MS=${WRITER_BUSY_MS:-5000}
export WRITER_MODES=${WRITER_MODES:-"wal delete"}
export SKIP_QUERY_EXPORTER=${SKIP_QUERY_EXPORTER:-0}
export SKIP_PART1=${SKIP_PART1:-0}
export SKIP_PART2=${SKIP_PART2:-0}
KEEP_TMP=${KEEP_TMP:-0}

T_START=$(date +%s.%N)
mkdir -p "$REPO/target/bench"
TMP=$(mktemp -d -t stallwatch-sources-bench.XXXXXX)
export TMP REPO
PIDS_FILE="$TMP/pids"   # every process the driver starts, one pid a line
: >"$PIDS_FILE"
DRIVER_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pids=()
    [[ -n "$DRIVER_PID" ]] && pids+=("$DRIVER_PID")
    if [[ -s "$PIDS_FILE" ]]; then
        mapfile -t -O "${#pids[@]}" pids <"$PIDS_FILE"
    fi
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ -n "$DRIVER_PID" ]] && wait "$DRIVER_PID" 2>/dev/null || true
    rm -f "$REPO"/target/bench/writer.db "$REPO"/target/bench/writer.db-*
    if [[ "$KEEP_TMP" == 1 ]]; then
        echo "logs and configs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build -----------------------------------------------------------------------------
echo "building release binary ..." >&2
T_BUILD=$(date +%s.%N)
cargo build --release --quiet
export BUILD_SECONDS=$(python3 -c "print(f'{$(date +%s.%N) - $T_BUILD:.0f}')")
export BIN="$REPO/target/release/stallwatch"

# --- query-exporter in a venv (PyPI) ---------------------------------------------------------
VENV="$REPO/target/bench-venv"
export SWB_QE_BIN="$VENV/bin/query-exporter"
export SWB_QE_UNAVAILABLE=""
if [[ "$SKIP_QUERY_EXPORTER" == 1 ]]; then
    SWB_QE_UNAVAILABLE="skipped (SKIP_QUERY_EXPORTER=1)"
else
    echo "installing query-exporter into $VENV (benches/requirements.txt) ..." >&2
    if [[ ! -x "$VENV/bin/python" ]] && ! python3 -m venv "$VENV" >"$TMP/venv.log" 2>&1; then
        SWB_QE_UNAVAILABLE="python3 -m venv $VENV failed: $(tail -n 3 "$TMP/venv.log" | tr '\n' ' ')"
    elif ! "$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements.txt >"$TMP/pip.log" 2>&1; then
        SWB_QE_UNAVAILABLE="pip install -r benches/requirements.txt failed: $(grep -E 'ERROR|error' "$TMP/pip.log" | head -n 3 | tr '\n' ' ')"
    elif [[ ! -x "$SWB_QE_BIN" ]]; then
        SWB_QE_UNAVAILABLE="pip installed query-exporter but $SWB_QE_BIN is missing"
    fi
    [[ -n "$SWB_QE_UNAVAILABLE" ]] && echo "query-exporter unavailable: $SWB_QE_UNAVAILABLE" >&2
fi
export SWB_QE_VERSION=""
[[ -z "$SWB_QE_UNAVAILABLE" ]] && SWB_QE_VERSION=$("$VENV/bin/python" -c \
    "import importlib.metadata as m; print(m.version('query-exporter'), 'SQLAlchemy', m.version('sqlalchemy'), 'sqlite', __import__('sqlite3').sqlite_version)" 2>/dev/null || true)

# --- the driver (python3 stdlib) ------------------------------------------------------------
cat >"$TMP/driver.py" <<'PY'
import array, json, math, os, random, shutil, signal, socket, sqlite3, statistics, subprocess, sys, time
import urllib.error, urllib.request

MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
ENV = os.environ
TMP = ENV.get("TMP", "/tmp")
CHILDREN = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def env_int(name, default):
    return int(ENV.get(name, default))


# ---------------------------------------------------------------- processes ----
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name, argv, **kw):
    out = open(f"{TMP}/{name}.log", "ab")
    p = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out, **kw)
    p.bench_name = name
    CHILDREN.append(p)
    with open(f"{TMP}/pids", "a") as f:
        f.write(f"{p.pid}\n")
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def log_tail(name, n=5):
    try:
        lines = open(f"{TMP}/{name}.log", errors="replace").read().strip().splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return "(no log)"


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def read_sched(pid):
    """ns of CPU per live thread (/proc/PID/task/*/schedstat)."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread exited between listdir and open
    return out


class Cpu:
    """CPU of one process over a window, summed over its threads; poll() now and then so
    that threads exiting inside the window keep the time they used up to their last poll."""

    def __init__(self, pid):
        self.pid, self.t0 = pid, time.monotonic()
        self.base = read_sched(pid)
        self.last = dict(self.base)

    def poll(self):
        try:
            for tid, ns in read_sched(self.pid).items():
                self.base.setdefault(tid, 0)
                self.last[tid] = ns
        except FileNotFoundError:
            pass

    def finish(self):
        self.poll()
        wall = time.monotonic() - self.t0
        return 100.0 * sum(self.last[t] - self.base[t] for t in self.last) / 1e9 / wall


# ------------------------------------------------------------------- metrics ----
def scrape(port, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode("utf-8", "replace")
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, _, rest = head.partition("{")
            labels = {}
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k.strip()] = v.strip().strip('"')
        else:
            name, labels = head, {}
        try:
            samples.append((name, labels, float(value)))
        except ValueError:
            pass
    return samples


def get(samples, name, **labels):
    for n, l, v in samples:
        if n == name and all(l.get(k) == v2 for k, v2 in labels.items()):
            return v
    return None


def total(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == v2 for k, v2 in labels.items()))


def wait_http(p, port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"{p.bench_name} exited with {p.returncode} during start-up: {log_tail(p.bench_name)}")
        try:
            return scrape(port, timeout=1.0)
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{p.bench_name} did not answer /metrics on port {port} within {deadline_s} s")
        time.sleep(0.1)


def pct(values, q):
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# --------------------------------------------------------------- the test DB ----
def gen_db(path, rows, pending, dead):
    tmp = path + ".tmp"
    for suffix in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(tmp + suffix):
            os.remove(tmp + suffix)
    t0 = time.monotonic()
    con = sqlite3.connect(tmp, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE jobs(key TEXT PRIMARY KEY, payload TEXT, status TEXT, attempts INTEGER, result TEXT)")
    con.execute("CREATE TABLE dead_letter(key TEXT, payload TEXT, error TEXT, died REAL)")
    step = max(1, rows // max(1, pending))

    def job_rows():
        for i in range(rows):
            payload = '{"repo":"lab/r%d","task":"eval","seed":%d,"model":"small"}' % (i % 97, i)
            if pending and i % step == step // 2 and i // step < pending:
                yield (f"job-{i:09d}", payload, "pending", (i // step) % 4, None)
            else:
                yield (f"job-{i:09d}", payload, "done", 1 + i % 4,
                       '{"ok":true,"cost_usd":%.4f,"tokens":%d}' % ((i % 1000) / 10000, 500 + i % 3000))

    now = time.time()
    con.execute("BEGIN")
    con.executemany("INSERT INTO jobs VALUES (?,?,?,?,?)", job_rows())
    con.executemany("INSERT INTO dead_letter VALUES (?,?,?,?)",
                    ((f"dead-{i:06d}", '{"repo":"lab/r%d","task":"eval"}' % i,
                      "max attempts (4) exceeded: TimeoutError", now - (dead - i) * 60.0) for i in range(dead)))
    con.execute("COMMIT")
    con.execute("CREATE INDEX jobs_status ON jobs(status)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    os.replace(tmp, path)
    log(f"generated {path} in {time.monotonic() - t0:.1f} s")


def db_facts(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    f = {
        "rows": con.execute("SELECT count(*) FROM jobs").fetchone()[0],
        "by_status": dict(con.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()),
        "pending_retried": con.execute("SELECT count(*) FROM jobs WHERE status='pending' AND attempts > 0").fetchone()[0],
        "dead": con.execute("SELECT count(*) FROM dead_letter").fetchone()[0],
        "mode": con.execute("PRAGMA journal_mode").fetchone()[0],
        "indexes": [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='jobs'")],
        "plan_open": " / ".join(r[3] for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT status, count(*) FROM jobs WHERE status IN ('pending') GROUP BY status")),
        "plan_naive": " / ".join(r[3] for r in con.execute(
            "EXPLAIN QUERY PLAN SELECT status, count(*) FROM jobs GROUP BY status")),
    }
    con.close()
    f["bytes"] = os.path.getsize(path)
    return f


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


# ---------------------------------------------------------------- stallwatch ----
def start_stallwatch(db, tag):
    port = free_port()
    data = f"{TMP}/sw-data-{tag}"
    os.makedirs(data, exist_ok=True)
    cfg = f"{TMP}/stallwatch-{tag}.toml"
    with open(cfg, "w") as f:
        f.write('[[source]]\nname = "lab"\nkind = "queue_table"\npreset = "lab-jobs"\n'
                f'url = "sqlite://{db}"\npoll = "1s"\n')
    p = spawn(f"stallwatch-{tag}", [ENV["BIN"], "run", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                                    "--data-dir", data])
    wait_http(p, port)
    return p, port


def wait_source_up(p, port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        s = scrape(port)
        if get(s, "stallwatch_source_up", source="lab") == 1.0:
            return s
        if p.poll() is not None:
            raise RuntimeError(f"stallwatch exited: {log_tail(p.bench_name)}")
        time.sleep(0.1)
    raise RuntimeError(f"stallwatch source 'lab' not up within {deadline_s} s: {log_tail(p.bench_name)}")


def measure_stallwatch(db, polls, skip):
    p, port = start_stallwatch(db, "part1")
    try:
        wait_source_up(p, port)
        values, last, cpu, s = [], None, None, []
        deadline = time.monotonic() + (polls + skip) * 3 + 30
        while len(values) < skip + polls:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stallwatch gave only {len(values)} polls: {log_tail(p.bench_name)}")
            s = scrape(port)
            v = get(s, "stallwatch_source_poll_duration_seconds", source="lab")
            if v is not None and v != last:
                values.append(v)
                last = v
                if len(values) == skip:
                    cpu = Cpu(p.pid)
            if cpu:
                cpu.poll()
            time.sleep(0.5)
        cpu_pct = cpu.finish() if cpu else float("nan")
        st = proc_status(p.pid)
        kept = [v * 1e3 for v in values[skip:]]
        return {
            "tool": "stallwatch", "polls": kept, "median": statistics.median(kept), "p95": pct(kept, 0.95),
            "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct,
            "saw": f"queue_depth{{status=pending}}={get(s, 'stallwatch_queue_depth', source='lab', status='pending')}"
                   f" dead_letters={get(s, 'stallwatch_dead_letters', source='lab')}"
                   f" source_up={get(s, 'stallwatch_source_up', source='lab')}"
                   f" errors={total(s, 'stallwatch_source_errors_total', source='lab'):.0f}",
        }
    finally:
        stop(p)


# ------------------------------------------------------------ query-exporter ----
# What stallwatch's lab-jobs preset reads each poll (src/sources/queue_table.rs), as
# query-exporter queries with one metric each:
#   depth     SELECT '', status, count(*), NULL FROM jobs WHERE status IN ('pending') GROUP BY 1, 2
#   attempts  SELECT '', CAST(key AS TEXT), attempts FROM jobs WHERE status IN ('pending')
#             AND attempts > 0 LIMIT 10000        (per-row; stallwatch diffs them into retries)
#   dead      SELECT count(*), max(died) FROM dead_letter [WHERE died > :high_water_mark]
#   (+ PRAGMA journal_mode, negligible; query-exporter cannot export a text value)
# query-exporter cannot diff per-row values between polls, and a label per job key would
# be unbounded cardinality, so "attempts" reads the same rows (same index range search +
# row lookups) but aggregates them by attempts; "dead" counts the whole table each time
# (stallwatch reads only above its high-water mark after the first poll).
QE_METRICS = {
    "lab_queue_depth": ("gauge", ["status"]),
    "lab_open_jobs_by_attempts": ("gauge", ["attempts"]),
    "lab_dead_letters": ("gauge", []),
    "lab_dead_letter_newest_seconds": ("gauge", []),
}
QE_DEPTH_OPEN = "SELECT status, count(*) AS lab_queue_depth FROM jobs WHERE status IN ('pending') GROUP BY status"
QE_DEPTH_NAIVE = "SELECT status, count(*) AS lab_queue_depth FROM jobs GROUP BY status"
QE_ATTEMPTS = ("SELECT CAST(attempts AS TEXT) AS attempts, count(*) AS lab_open_jobs_by_attempts FROM jobs "
               "WHERE status IN ('pending') AND attempts > 0 GROUP BY attempts")
QE_DEAD = "SELECT count(*) AS lab_dead_letters, coalesce(max(died), 0) AS lab_dead_letter_newest_seconds FROM dead_letter"


def qe_queries(naive):
    return {
        "depth": ("lab_queue_depth", QE_DEPTH_NAIVE if naive else QE_DEPTH_OPEN),
        "attempts": ("lab_open_jobs_by_attempts", QE_ATTEMPTS),
        "dead": ("lab_dead_letters lab_dead_letter_newest_seconds", QE_DEAD),
    }


def qe_config(db, queries):
    out = ["databases:", "  lab:", f"    dsn: sqlite:///{db}", "metrics:"]
    for name, (kind, labels) in QE_METRICS.items():
        out += [f"  {name}:", f"    type: {kind}"]
        if labels:
            out.append(f"    labels: [{', '.join(labels)}]")
    out.append("queries:")
    for qname, (metrics, sql) in queries.items():
        out += [f"  {qname}:", "    interval: 1", "    databases: [lab]",
                f"    metrics: [{', '.join(metrics.split())}]", f"    sql: {json.dumps(sql)}"]
    return "\n".join(out) + "\n"


def measure_qe(db, naive, polls, skip):
    tag = "naive" if naive else "equiv"
    queries = qe_queries(naive)
    cfg = f"{TMP}/query-exporter-{tag}.yaml"
    with open(cfg, "w") as f:
        f.write(qe_config(db, queries))
    port = free_port()
    p = spawn(f"query-exporter-{tag}", [ENV["SWB_QE_BIN"], "--config", cfg, "-H", "127.0.0.1", "-p", str(port),
                                         "-L", "warning"])
    try:
        wait_http(p, port)
        lat = {q: [] for q in queries}
        last = {q: (0.0, 0.0) for q in queries}
        cpu, s = None, []
        deadline = time.monotonic() + (polls + skip) * 3 + 30
        while min(len(v) for v in lat.values()) < skip + polls:
            if p.poll() is not None:
                raise RuntimeError(f"query-exporter exited with {p.returncode}: {log_tail(p.bench_name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"query-exporter gave only {[len(v) for v in lat.values()]} executions per query; "
                                   f"queries_total={[(l, v) for n, l, v in s if n == 'queries_total']}: "
                                   f"{log_tail(p.bench_name)}")
            s = scrape(port)
            for q in queries:
                c = get(s, "query_latency_count", database="lab", query=q)
                sm = get(s, "query_latency_sum", database="lab", query=q)
                if c is None or sm is None:
                    continue
                dc, ds = c - last[q][0], sm - last[q][1]
                if dc > 0:
                    lat[q].extend([ds / dc] * int(dc))  # dc is 1 unless a scrape was late
                    last[q] = (c, sm)
            if cpu is None and min(len(v) for v in lat.values()) >= skip:
                cpu = Cpu(p.pid)
            if cpu:
                cpu.poll()
            time.sleep(0.5)
        cpu_pct = cpu.finish() if cpu else float("nan")
        st = proc_status(p.pid)
        rounds = [sum(lat[q][i] for q in queries) * 1e3 for i in range(skip, skip + polls)]
        per_query = {q: statistics.median(lat[q][skip:skip + polls]) * 1e3 for q in queries}
        failed = {l.get("query"): v for n, l, v in s if n == "queries_total" and l.get("status") != "success"}
        return {
            "tool": "qe naive" if naive else "query-exporter", "polls": rounds,
            "median": statistics.median(rounds), "p95": pct(rounds, 0.95),
            "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct, "per_query": per_query,
            "saw": f"lab_queue_depth={[(l.get('status'), v) for n, l, v in s if n == 'lab_queue_depth']}"
                   f" lab_dead_letters={get(s, 'lab_dead_letters')}"
                   f" failed_queries={failed or 0}",
            "sql": {q: sql for q, (_, sql) in queries.items()},
        }
    finally:
        stop(p)


# query-exporter's own code path, timed end to end in its venv: load_config() on the same
# YAML, then for each poll `await Database.execute(execution)` for every query in turn
# (pool checkout, SQLAlchemy text() execution, fetching all rows, turning them into metric
# results) — what its scheduler runs per query, minus the prometheus_client update. One
# pool connection and one worker thread, as in the exporter (its default pool size 1).
QE_E2E = r"""
import asyncio, json, sys, time
from pathlib import Path
from query_exporter.config import load_config
from query_exporter.db import Database

async def main(cfg_path, polls, skip, gap, out_path):
    cfg = load_config([Path(cfg_path)])
    db = Database("lab", cfg.databases["lab"])
    executions = [ex for q in cfg.queries.values() for ex in q.executions]
    out = []
    try:
        for _ in range(skip + polls):
            t = time.perf_counter()
            for ex in executions:
                await db.execute(ex)
            out.append((time.perf_counter() - t) * 1e3)
            await asyncio.sleep(gap)
    finally:
        db.close()
    with open(out_path, "w") as f:
        json.dump(out[skip:], f)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]))
"""


def measure_qe_e2e(db, naive, polls, skip, gap=0.25):
    tag = "naive" if naive else "equiv"
    cfg = f"{TMP}/query-exporter-{tag}.yaml"
    with open(cfg, "w") as f:
        f.write(qe_config(db, qe_queries(naive)))
    script, out = f"{TMP}/qe_e2e.py", f"{TMP}/qe-e2e-{tag}.json"
    with open(script, "w") as f:
        f.write(QE_E2E)
    python = os.path.join(os.path.dirname(ENV["SWB_QE_BIN"]), "python")
    p = spawn(f"qe-e2e-{tag}", [python, script, cfg, str(polls), str(skip), str(gap), out])
    try:
        rc = p.wait(timeout=(polls + skip) * (gap + 2) + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError("timed out")
    finally:
        stop(p)
    if rc != 0:
        raise RuntimeError(f"exited with {rc}: {log_tail(p.bench_name)}")
    vals = json.load(open(out))
    return {"tool": "qe naive (e2e)" if naive else "query-exporter (e2e)", "polls": vals,
            "median": statistics.median(vals), "p95": pct(vals, 0.95), "rss": None, "hwm": None, "cpu_pct": None}


def part1(db, facts):
    polls, skip = env_int("POLLS", 30), env_int("WARMUP_POLLS", 2)
    warm(db)
    results, qe_notes = [], []
    log(f"part 1: stallwatch, {skip}+{polls} polls ...")
    results.append(measure_stallwatch(db, polls, skip))
    unavailable = ENV.get("SWB_QE_UNAVAILABLE", "")
    if not unavailable:
        for naive in (False, True):
            what = "naive depth" if naive else "equivalent queries"
            log(f"part 1: query-exporter ({what}), {skip}+{polls} polls ...")
            try:
                results.append(measure_qe(db, naive, polls, skip))
            except Exception as e:  # report, keep going
                qe_notes.append(f"query-exporter ({what}) could not be measured: {e}")
            log(f"part 1: query-exporter code path timed end to end ({what}), {skip}+{polls} polls ...")
            try:
                results.append(measure_qe_e2e(db, naive, polls, skip))
            except Exception as e:
                qe_notes.append(f"query-exporter end-to-end timing ({what}) could not be measured: {e}")
    print_part1(facts, results, unavailable, qe_notes, polls, skip)


def print_part1(facts, results, unavailable, qe_notes, polls, skip):
    print()
    print(f"== 1. One poll of a {facts['rows']:,}-row lab-jobs queue table ==")
    print(f"DB: {facts['bytes'] / MiB:.0f} MiB, journal_mode={facts['mode']}, jobs by status {facts['by_status']} "
          f"({facts['pending_retried']} pending with attempts > 0), {facts['dead']} dead letters, indexes {facts['indexes']}")
    print(f"plans: open-status count: {facts['plan_open']};  naive GROUP BY status: {facts['plan_naive']}")
    print(f"each tool alone, file in page cache, poll every 1 s, {skip} warm-up polls dropped, {polls} polls kept; "
          f"2 CPUs shared with other work")
    if ENV.get("SWB_QE_VERSION"):
        print(f"query-exporter {ENV['SWB_QE_VERSION']}")
    print()
    hdr = (f"{'tool':<22}{'median ms':>10}{'p95 ms':>8}{'min ms':>8}{'max ms':>8}{'RSS MiB':>8}{'peak MiB':>9}"
           f"{'CPU %':>7}{'/sw median':>11}{'/sw p95':>8}{'/sw RSS':>8}")
    print(hdr)
    print("-" * len(hdr))
    sw = results[0]
    f1 = lambda v, spec: "-" if v is None else format(v, spec)
    for r in results:
        line = (f"{r['tool']:<22}{r['median']:>10.2f}{r['p95']:>8.2f}{min(r['polls']):>8.2f}{max(r['polls']):>8.2f}"
                f"{f1(r['rss'] and r['rss'] / MiB, '.1f'):>8}{f1(r['hwm'] and r['hwm'] / MiB, '.1f'):>9}"
                f"{f1(r['cpu_pct'], '.3f'):>7}")
        if r is not sw:
            line += (f"{r['median'] / sw['median']:>11.1f}{r['p95'] / sw['p95']:>8.1f}"
                     f"{f1(r['rss'] and r['rss'] / sw['rss'], '.1f'):>8}")
        print(line)
    print("(/sw = the tool's figure divided by stallwatch's; CPU % = process CPU over the window, one core = 100,")
    print(" from /proc/PID/task/*/schedstat; it includes 2 /metrics scrapes per second and, for stallwatch, its freeze")
    print(" ticks; (e2e) rows time query-exporter's Database.execute() per query end to end in a harness process,")
    print(" polls 0.25 s apart, so they have no RSS/CPU of the exporter)")
    print()
    for r in (r for r in results if "saw" in r):
        print(f"{r['tool']} reported: {r['saw']}")
        if "per_query" in r:
            print("  per-query median ms (query_latency): " +
                  ", ".join(f"{q} {v:.2f}" for q, v in r["per_query"].items()))
    if len(results) > 1:
        print("query-exporter SQL (one query each, interval 1 s; poll = sum of their latencies):")
        for q, (_, sql) in qe_queries(False).items():
            print(f"  {q:<9}{sql}")
        if any(r["tool"].startswith("qe naive") for r in results):
            print(f"  naive row: depth is `{QE_DEPTH_NAIVE}`, the others as above")
        print("query-exporter rows = its query_latency histogram (cursor.execute() time: first row of each statement;")
        print("  excludes pool checkout, fetching further rows, metric updates) — a lower bound of its real poll;")
        print("  the (e2e) rows add those (all but the metric update).")
    if unavailable:
        print(f"query-exporter NOT measured: {unavailable}")
    for n in qe_notes:
        print(n)
    print()
    print("targets:")
    mark = lambda ok: "met    " if ok else "NOT met"
    print(f"  {mark(sw['median'] <= 50 and sw['p95'] <= 50)}  stallwatch <= 50 ms per poll "
          f"(median {sw['median']:.2f} ms, p95 {sw['p95']:.2f} ms)")
    qe = next((r for r in results if r["tool"] == "query-exporter"), None)
    if qe:
        print(f"  {mark(qe['median'] / sw['median'] >= 5)}  stallwatch >= 5x faster per poll than query-exporter "
              f"(median {qe['median'] / sw['median']:.1f}x, p95 {qe['p95'] / sw['p95']:.1f}x, by its query_latency)")
        for r in results:
            if r["tool"] != "query-exporter" and r is not sw:
                print(f"           vs {r['tool']}: median {r['median'] / sw['median']:.1f}x, p95 {r['p95'] / sw['p95']:.1f}x")
        print(f"  {mark(sw['rss'] * 5 <= qe['rss'])}  stallwatch RSS <= 1/5 of query-exporter's "
              f"({sw['rss'] / MiB:.1f} vs {qe['rss'] / MiB:.1f} MiB = 1/{qe['rss'] / sw['rss']:.1f})")
    else:
        print("  (ratio targets not judged: query-exporter not measured)")
    sys.stdout.flush()


# --------------------------------------------------------------- the writer ----
BUSY_CODES = {5, 6, 261, 262, 517}  # SQLITE_BUSY, SQLITE_LOCKED and extended codes


def self_sched():
    """(ns on CPU, ns waiting on a run queue) of this single-threaded process."""
    with open("/proc/self/schedstat") as f:
        run, wait, _ = f.read().split()
    return int(run), int(wait)


def writer_main(db, seconds, warmup, sync, busy_ms):
    con = sqlite3.connect(db, isolation_level=None, timeout=busy_ms / 1000.0)
    con.execute(f"PRAGMA synchronous={sync}")
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    from collections import deque
    pending = deque(k for (k,) in con.execute("SELECT key FROM jobs WHERE status='pending' ORDER BY key"))
    busy, n, measured, sched0 = 0, 0, 0, None
    lat = array.array("d")
    buckets = [0] * int(seconds + 1)
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + seconds
    payload = '{"repo":"lab/r1","task":"eval","seed":%d,"model":"small"}'
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        n += 1
        key, done = f"new-{n:09d}", pending[0]
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("INSERT INTO jobs VALUES (?, ?, 'pending', 0, NULL)", (key, payload % n))
                con.execute("UPDATE jobs SET status='done', attempts=attempts+1, result=? WHERE key=?",
                            ('{"ok":true,"cost_usd":0.0012}', done))
                if n % 50 == 0:
                    con.execute("UPDATE jobs SET attempts=attempts+1 WHERE key=?", (pending[len(pending) // 2],))
                if n % 500 == 0:
                    con.execute("INSERT INTO dead_letter VALUES (?, ?, 'max attempts (4) exceeded', ?)",
                                (f"wdead-{n:09d}", payload % n, time.time()))
                con.execute("COMMIT")
                break
            except sqlite3.OperationalError as e:
                code = getattr(e, "sqlite_errorcode", None)
                if code in BUSY_CODES or "locked" in str(e) or "busy" in str(e):
                    busy += 1
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    continue
                raise
        pending.popleft()
        pending.append(key)
        t1 = time.perf_counter()
        if t >= start:
            if sched0 is None:
                sched0 = self_sched()
            measured += 1
            lat.append(t1 - t)
            buckets[min(len(buckets) - 1, int(t - start))] += 1
    elapsed = time.perf_counter() - start
    sched1 = self_sched()
    con.close()
    s = sorted(lat)
    json.dump({"mode": mode, "txns": measured, "elapsed": elapsed, "rate": measured / elapsed, "busy": busy,
               "p50_ms": s[len(s) // 2] * 1e3 if s else 0, "p99_ms": pct(s, 0.99) * 1e3 if s else 0,
               "max_ms": s[-1] * 1e3 if s else 0, "per_second": buckets[:int(seconds)],
               "cpu_pct": 100 * (sched1[0] - sched0[0]) / 1e9 / elapsed if sched0 else 0,
               "runq_pct": 100 * (sched1[1] - sched0[1]) / 1e9 / elapsed if sched0 else 0}, sys.stdout)


def writer_run(cache, mode, with_sw, seconds, warmup, sync, busy_ms, label):
    work = os.path.join(os.path.dirname(cache), "writer.db")
    for suffix in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(work + suffix):
            os.remove(work + suffix)
    shutil.copyfile(cache, work)
    hold = sqlite3.connect(work, isolation_level=None)  # keeps -wal/-shm in place; never in a transaction
    got = hold.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    if got.lower() != mode.lower():
        raise RuntimeError(f"journal_mode={mode} not accepted (got {got})")
    sw = None
    try:
        if with_sw:
            sw, port = start_stallwatch(work, label)
            wait_source_up(sw, port)
            s0 = scrape(port)
        log(f"part 2: {label}: writer {warmup:g}+{seconds:g} s, journal_mode={mode}, "
            f"stallwatch {'polling' if with_sw else 'off'} ...")
        w = spawn(f"writer-{label}", [sys.executable, __file__, "writer", work, str(seconds), str(warmup), sync,
                                     str(busy_ms)], stdout=subprocess.PIPE)
        wal_max, polls, cpu = 0, [], None
        last = get(s0, "stallwatch_source_poll_duration_seconds", source="lab") if sw else None  # the pre-writer poll
        while w.poll() is None:
            try:
                wal_max = max(wal_max, os.path.getsize(work + "-wal"))
            except OSError:
                pass
            if sw:
                s = scrape(port)
                v = get(s, "stallwatch_source_poll_duration_seconds", source="lab")
                if v is not None and v != last:
                    polls.append(v * 1e3)
                    last = v
                if cpu is None:
                    cpu = Cpu(sw.pid)
                cpu.poll()
            time.sleep(0.5)
        out = w.stdout.read()
        w.wait()
        CHILDREN.remove(w)
        if w.returncode != 0:
            raise RuntimeError(f"writer failed ({w.returncode}): {log_tail(w.bench_name)}")
        r = json.loads(out)
        r.update({"with_sw": with_sw, "wal_max": wal_max, "db_bytes": os.path.getsize(work)})
        if sw:
            s1 = scrape(port)
            err = lambda s, k: get(s, "stallwatch_source_errors_total", source="lab", kind=k) or 0
            r.update({"sw_polls": polls, "sw_locked": err(s1, "locked") - err(s0, "locked"),
                      "sw_errors": total(s1, "stallwatch_source_errors_total", source="lab")
                      - total(s0, "stallwatch_source_errors_total", source="lab"),
                      "sw_cpu": cpu.finish() if cpu else float("nan"),
                      "sw_depth": get(s1, "stallwatch_queue_depth", source="lab", status="pending")})
        return r
    finally:
        if sw:
            stop(sw)
        hold.close()


def part2(cache):
    seconds, warmup = float(ENV.get("WRITER_SECONDS", 20)), float(ENV.get("WRITER_WARMUP", 1))
    repeats, sync, busy_ms = env_int("WRITER_REPEATS", 2), ENV.get("WRITER_SYNC", "NORMAL"), env_int("WRITER_BUSY_MS", 5000)
    modes = ENV.get("WRITER_MODES", "wal delete").split()
    warm(cache)
    runs = {}
    for mode in modes:
        for rep in range(repeats):
            for with_sw in (False, True):
                label = f"{mode}-{'with' if with_sw else 'without'}-{rep + 1}"
                runs.setdefault((mode, with_sw), []).append(
                    writer_run(cache, mode, with_sw, seconds, warmup, sync, busy_ms, label))
    print_part2(runs, modes, seconds, warmup, sync, busy_ms, repeats)


def print_part2(runs, modes, seconds, warmup, sync, busy_ms, repeats):
    print()
    print(f"== 2. Writer impact: python sqlite3 writer, {seconds:g} s counted (after {warmup:g} s warm-up) per run, "
          f"runs interleaved without/with x{repeats} ==")
    print(f"writer: one connection, synchronous={sync}, busy_timeout={busy_ms} ms; txn = BEGIN IMMEDIATE; INSERT job; "
          f"UPDATE oldest pending -> done; (1/50 +retry UPDATE, 1/500 +dead-letter INSERT); COMMIT. "
          f"stallwatch: lab-jobs preset, poll 1 s")
    print()
    hdr = (f"{'mode':<7}{'stallwatch':<11}" + "".join(f"{'run' + str(i + 1) + ' w/s':>11}" for i in range(repeats)) +
           f"{'mean w/s':>10}{'per-s sd%':>10}{'wr CPU%':>8}{'runq%':>6}{'busy err':>9}{'txn p50':>8}{'p99 ms':>8}{'max ms':>8}{'WAL max MiB':>12}"
           f"{'sw polls':>9}{'sw med ms':>10}{'sw max ms':>10}{'sw locked':>10}")
    print(hdr)
    print("-" * len(hdr))
    means = {}
    for mode in modes:
        for with_sw in (False, True):
            rs = runs[(mode, with_sw)]
            mean = statistics.mean(r["rate"] for r in rs)
            means[(mode, with_sw)] = mean
            per_s = [x for r in rs for x in r["per_second"][1:]]
            sd = 100 * statistics.pstdev(per_s) / statistics.mean(per_s) if per_s and statistics.mean(per_s) else 0
            line = f"{mode:<7}{'polling' if with_sw else 'off':<11}" + "".join(f"{r['rate']:>11.0f}" for r in rs)
            line += (f"{mean:>10.0f}{sd:>10.1f}{statistics.mean(r['cpu_pct'] for r in rs):>8.1f}"
                     f"{statistics.mean(r['runq_pct'] for r in rs):>6.1f}{sum(r['busy'] for r in rs):>9}"
                     f"{statistics.mean(r['p50_ms'] for r in rs):>8.3f}{statistics.mean(r['p99_ms'] for r in rs):>8.2f}"
                     f"{max(r['max_ms'] for r in rs):>8.1f}{max(r['wal_max'] for r in rs) / MiB:>12.1f}")
            if with_sw:
                polls = [p for r in rs for p in r["sw_polls"]]
                line += (f"{len(polls):>9}{statistics.median(polls) if polls else float('nan'):>10.2f}"
                         f"{max(polls) if polls else float('nan'):>10.2f}{sum(r['sw_locked'] for r in rs):>10.0f}")
            print(line)
    print("(w/s = committed write transactions per second; per-s sd% = spread of 1-second throughput buckets;")
    print(" wr CPU% / runq% = the writer's time on a CPU / waiting for one (other load on the machine), % of wall;")
    print(" busy err = SQLITE_BUSY/LOCKED that outlived busy_timeout (rolled back, retried); sw polls = distinct polls")
    print(" seen during the runs; sw locked = its polls that gave up on the lock (source_errors_total{kind=locked}))")
    print()
    print("throughput drop with stallwatch polling (mean of runs; noise = spread between the repeated runs of one config):")
    for mode in modes:
        off, on = means[(mode, False)], means[(mode, True)]
        drop = 100 * (off - on) / off
        noise = max(100 * (max(r["rate"] for r in runs[(mode, w)]) - min(r["rate"] for r in runs[(mode, w)]))
                    / means[(mode, w)] for w in (False, True))
        mark = "met    " if drop <= 2 else "NOT met"
        print(f"  {mark}  {mode:<7} drop {drop:+.1f} % (target <= 2 %): {off:.0f} -> {on:.0f} w/s; "
              f"run-to-run noise up to {noise:.1f} %")
    sys.stdout.flush()


# -------------------------------------------------------------------- main ----
def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))
    rows, pending, dead = env_int("ROWS", 1000000), env_int("PENDING", 1000), env_int("DEAD", 500)
    cache = os.path.join(ENV["REPO"], "target", "bench", f"lab-jobs-{rows}r-{pending}p-{dead}d-v1.db")
    if not os.path.exists(cache):
        log(f"generating {cache} ...")
        gen_db(cache, rows, pending, dead)
    facts = db_facts(cache)
    try:
        if ENV.get("SKIP_PART1") != "1":
            part1(cache, facts)
        if ENV.get("SKIP_PART2") != "1":
            part2(cache)
    finally:
        for p in list(CHILDREN):
            stop(p)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        writer_main(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    else:
        main()
PY

python3 "$TMP/driver.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"
DRIVER_PID=""

T_END=$(date +%s.%N)
echo
python3 -c "print(f'total run time {$T_END - $T_START:.0f} s (of which release build {$BUILD_SECONDS} s)')"
