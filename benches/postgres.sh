#!/usr/bin/env bash
# benches/postgres.sh — issue 6's two Postgres benchmarks, printed side by side:
#
#   1. One poll of a 1,000,000-row `digest_tasks` table (status index present) with the
#      `digest-tasks` preset: stallwatch's per-poll time and RSS next to query-exporter
#      (PyPI) running the same reads against the same table, and the ratio.
#   2. pgbench TPS on the same server without and with stallwatch polling that table
#      every 1 s; runs interleaved (without, with, without, with, ...), RUNS of each.
#
#   bash benches/postgres.sh        # from the repo root; ~5 minutes with defaults, plus
#                                   # the release build and, the first time, the venv
#
# It PRINTS figures; it never fails on a timing (exit 0 unless something could not be
# set up). "met"/"NOT met" marks compare with the issue's targets: stallwatch ≤ 50 ms per
# poll; pgbench TPS drop ≤ 2 %.
#
# Needs: the machine's Postgres on PGHOST:PGPORT (127.0.0.1:5432) with trust auth for
# PGUSER (postgres), `psql` and `pgbench` on PATH, python3 (stdlib) for the driver.
#
# How each figure is measured
# ---------------------------
# Test DB: database DB (swbench_digest, dropped at the end unless KEEP_DB=1) with
# digest_tasks(id bigserial PK, status text, claimed_at, attempts, created_at,
# updated_at, payload jsonb): ROWS rows, PENDING of them 'PENDING' (attempts 0-2),
# RUNNING 'RUNNING' (claimed 0-19 minutes ago: about half past the preset's 600 s lease),
# FAILED 'FAILED', the rest 'COMPLETED'; the special rows spread evenly through the id
# range. Loaded with one INSERT … SELECT generate_series, then CREATE INDEX on status and
# VACUUM ANALYZE. The same database gets pgbench's tables (pgbench -i -s PGBENCH_SCALE).
#
# Part 1. Each exporter runs alone against that table; /metrics is scraped every 0.5 s;
# the first WARMUP_POLLS polls are dropped, then POLLS polls are kept.
#   * stallwatch: stallwatch_source_poll_duration_seconds{source="digest"}, a gauge of the
#     last poll's duration — the whole poll: every statement of the digest-tasks preset
#     (depth by open status with the oldest created_at, open rows' attempts, RUNNING rows'
#     claimed_at, FAILED count) and the server-clock read, rows fetched and parsed.
#     Each new value is one poll.
#   * query-exporter: one query per read of the preset, each `interval: 1` (see QE_SQL):
#     the per-row reads become aggregates (a label per job would be unbounded) and the
#     lease check is done in SQL. Measured by its own query_latency histogram (labels
#     database, query): each time a query's _count goes up by one, the _sum increase is
#     that execution's latency; one poll = the sum over its queries of their i-th
#     executions. That times cursor.execute() only — a lower bound of its poll.
#   * query-exporter (e2e): its code path timed from outside — a harness in its venv loads
#     the same YAML with query_exporter.config.load_config() and, per poll, awaits
#     query_exporter.db.Database.execute() for each query in turn (pool checkout, execute,
#     fetch, metric results; only the prometheus_client update is left out), timed with
#     perf_counter, polls 0.25 s apart. No RSS/CPU for these rows.
#   * RSS: VmRSS at the end of the window (peak = VmHWM). CPU: schedstat of all threads
#     over the window (includes stallwatch's freeze ticks and the 2 scrapes/s).
#   Both connect as the server allows by default (sslmode=prefer: TLS if it offers it).
#
# Part 2. pgbench (built-in TPC-B-like script, -c PGBENCH_CLIENTS -j PGBENCH_JOBS -T
# PGBENCH_SECONDS -n) on the same database. "with" runs start stallwatch (digest-tasks
# preset, poll 1 s) first and wait for its first successful poll; it is stopped after the
# run. The drop is (mean without − mean with) / mean without; the noise is the spread of
# the runs of one configuration. A CHECKPOINT precedes every run.
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), DB (swbench_digest),
# ROWS (1000000), PENDING (1000), RUNNING (20), FAILED (500), POLLS (30), WARMUP_POLLS (2),
# RUNS (3), PGBENCH_SCALE (10), PGBENCH_CLIENTS (4), PGBENCH_JOBS (2),
# PGBENCH_SECONDS (20), SKIP_QUERY_EXPORTER (0), SKIP_PART1 (0), SKIP_PART2 (0),
# KEEP_DB (0), KEEP_TMP (0).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

export PGHOST=${PGHOST:-127.0.0.1}
export PGPORT=${PGPORT:-5432}
export PGUSER=${PGUSER:-postgres}
export DB=${DB:-swbench_digest}
export ROWS=${ROWS:-1000000}
export PENDING=${PENDING:-1000}
export RUNNING=${RUNNING:-20}
export FAILED=${FAILED:-500}
export POLLS=${POLLS:-30}
export WARMUP_POLLS=${WARMUP_POLLS:-2}
export RUNS=${RUNS:-3}
export PGBENCH_SCALE=${PGBENCH_SCALE:-10}
export PGBENCH_CLIENTS=${PGBENCH_CLIENTS:-4}
export PGBENCH_JOBS=${PGBENCH_JOBS:-2}
export PGBENCH_SECONDS=${PGBENCH_SECONDS:-20}
export SKIP_QUERY_EXPORTER=${SKIP_QUERY_EXPORTER:-0}
export SKIP_PART1=${SKIP_PART1:-0}
export SKIP_PART2=${SKIP_PART2:-0}
KEEP_DB=${KEEP_DB:-0}
KEEP_TMP=${KEEP_TMP:-0}

T_START=$(date +%s.%N)
TMP=$(mktemp -d -t stallwatch-postgres-bench.XXXXXX)
export TMP REPO
PIDS_FILE="$TMP/pids"   # every process the driver starts, one pid a line
: >"$PIDS_FILE"
DRIVER_PID=""

for tool in psql pgbench python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found on PATH; this bench needs it" >&2; exit 1; }
done
if ! psql -X -q -d postgres -c "SELECT 1" >/dev/null 2>"$TMP/psql.err"; then
    echo "cannot reach Postgres at $PGHOST:$PGPORT as $PGUSER: $(cat "$TMP/psql.err")" >&2
    exit 1
fi

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
    if [[ "$KEEP_DB" != 1 ]]; then
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
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

# --- query-exporter in a venv (PyPI) -------------------------------------------------------
VENV="$REPO/target/bench-venv"
export SWB_QE_BIN="$VENV/bin/query-exporter"
export SWB_QE_UNAVAILABLE=""
if [[ "$SKIP_QUERY_EXPORTER" == 1 ]]; then
    SWB_QE_UNAVAILABLE="skipped (SKIP_QUERY_EXPORTER=1)"
else
    echo "installing query-exporter and psycopg into $VENV (benches/requirements.txt) ..." >&2
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
    "import importlib.metadata as m; print(m.version('query-exporter'), 'SQLAlchemy', m.version('sqlalchemy'), 'psycopg', m.version('psycopg'))" 2>/dev/null || true)
export SWB_PG_VERSION=$(psql -X -qAt -d postgres -c "SHOW server_version")
export SWB_PGBENCH_VERSION=$(pgbench --version)

# --- the driver (python3 stdlib; SQL through psql) -------------------------------------------
cat >"$TMP/driver.py" <<'PY'
import json, math, os, re, signal, socket, statistics, subprocess, sys, time
import urllib.error, urllib.request

MiB = 1024 * 1024
ENV = os.environ
TMP = ENV["TMP"]
DB = ENV["DB"]
CHILDREN = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def env_int(name):
    return int(ENV[name])


def dsn():
    return f"postgresql://{ENV['PGUSER']}@{ENV['PGHOST']}:{ENV['PGPORT']}/{DB}"


# ------------------------------------------------------------------ processes ----
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


def read_sched(pid):
    """ns of CPU per live thread (/proc/PID/task/*/schedstat)."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


class Cpu:
    """CPU of one process over a window, summed over its threads."""

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


def psql(sql, db=None, capture=False):
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db or DB, "-At", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"psql failed: {sql[:200]}...: {r.stderr.strip()}")
    return r.stdout.strip() if capture else None


# -------------------------------------------------------------------- metrics ----
def scrape(port, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode("utf-8", "replace")
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, _, rest = head.partition("{")
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
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


# ------------------------------------------------------------------ the table ----
def make_db():
    rows, pending, running, failed = (env_int(k) for k in ("ROWS", "PENDING", "RUNNING", "FAILED"))
    t0 = time.monotonic()
    psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', db="postgres")
    psql(f'CREATE DATABASE "{DB}"', db="postgres")
    pstep, rstep, fstep = (max(3, rows // max(1, n)) for n in (pending, running, failed))
    psql(f"""
        CREATE TABLE digest_tasks (
            id bigserial PRIMARY KEY,
            status text NOT NULL,
            claimed_at timestamptz,
            attempts int NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz,
            payload jsonb);
        INSERT INTO digest_tasks (status, claimed_at, attempts, created_at, updated_at, payload)
        SELECT s,
               CASE s WHEN 'RUNNING' THEN now() - ((i / {rstep}) % 20) * interval '1 minute'
                      WHEN 'PENDING' THEN NULL ELSE t + interval '5 seconds' END,
               CASE s WHEN 'PENDING' THEN (i / {pstep}) % 3 WHEN 'FAILED' THEN 3 ELSE 1 + i % 2 END,
               t, t + interval '30 seconds',
               jsonb_build_object('user_id', i % 5000, 'digest', 'daily', 'items', i % 40)
        FROM (SELECT i,
                     CASE WHEN i % {pstep} = 0 AND i / {pstep} <= {pending} THEN 'PENDING'
                          WHEN i % {rstep} = 1 AND i / {rstep} < {running} THEN 'RUNNING'
                          WHEN i % {fstep} = 2 AND i / {fstep} < {failed} THEN 'FAILED'
                          ELSE 'COMPLETED' END AS s,
                     now() - ({rows} - i) * interval '1 second' AS t
              FROM generate_series(1, {rows}) AS i) AS g;
        CREATE INDEX digest_tasks_status ON digest_tasks (status);
    """)
    psql("VACUUM ANALYZE digest_tasks")
    log(f"loaded {rows:,} rows in {time.monotonic() - t0:.1f} s; pgbench -i -s {ENV['PGBENCH_SCALE']} ...")
    r = subprocess.run(["pgbench", "-i", "-q", "-s", ENV["PGBENCH_SCALE"], DB], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {r.stderr.strip()[-500:]}")
    log(f"test database ready in {time.monotonic() - t0:.1f} s")


def db_facts():
    q = lambda sql: psql(sql, capture=True)
    return {
        "by_status": q("SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM "
                       "(SELECT status, count(*) AS n FROM digest_tasks GROUP BY status) s"),
        "stuck": q("SELECT count(*) FROM digest_tasks WHERE status = 'RUNNING' AND claimed_at < now() - interval '600 seconds'"),
        "table_mib": float(q("SELECT pg_total_relation_size('digest_tasks')")) / MiB,
        "plan": q("EXPLAIN (COSTS OFF) SELECT status, count(*) FROM digest_tasks WHERE status IN ('PENDING', 'RUNNING') "
                  "GROUP BY status").replace("\n", " / "),
        "ssl": q("SHOW ssl"),
        "cores": os.cpu_count(),
    }


# ----------------------------------------------------------------- stallwatch ----
def start_stallwatch(tag):
    port = free_port()
    data = f"{TMP}/sw-data-{tag}"
    os.makedirs(data, exist_ok=True)
    cfg = f"{TMP}/stallwatch-{tag}.toml"
    with open(cfg, "w") as f:
        f.write('[freeze]\nreferences = []\n\n[[source]]\nname = "digest"\nkind = "queue_table"\n'
                f'preset = "digest-tasks"\nurl = "{dsn()}"\npoll = "1s"\n')
    p = spawn(f"stallwatch-{tag}", [ENV["BIN"], "run", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                                    "--data-dir", data])
    wait_http(p, port)
    return p, port


def wait_source_up(p, port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        s = scrape(port)
        if get(s, "stallwatch_source_up", source="digest") == 1.0:
            return s
        if p.poll() is not None:
            raise RuntimeError(f"stallwatch exited: {log_tail(p.bench_name)}")
        time.sleep(0.1)
    raise RuntimeError(f"stallwatch source 'digest' not up within {deadline_s} s: {log_tail(p.bench_name)}")


def measure_stallwatch(polls, skip):
    p, port = start_stallwatch("part1")
    try:
        wait_source_up(p, port)
        values, last, cpu, s = [], None, None, []
        deadline = time.monotonic() + (polls + skip) * 3 + 30
        while len(values) < skip + polls:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stallwatch gave only {len(values)} polls: {log_tail(p.bench_name)}")
            s = scrape(port)
            v = get(s, "stallwatch_source_poll_duration_seconds", source="digest")
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
        depth = {l.get("status"): v for n, l, v in s if n == "stallwatch_queue_depth" and l.get("source") == "digest"}
        return {
            "tool": "stallwatch", "polls": kept, "median": statistics.median(kept), "p95": pct(kept, 0.95),
            "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct,
            "saw": f"queue_depth={depth} stuck_jobs={get(s, 'stallwatch_stuck_jobs', source='digest')}"
                   f" dead_letters={get(s, 'stallwatch_dead_letters', source='digest')}"
                   f" source_up={get(s, 'stallwatch_source_up', source='digest')}"
                   f" errors={total(s, 'stallwatch_source_errors_total', source='digest'):.0f}",
        }
    finally:
        stop(p)


# ------------------------------------------------------------- query-exporter ----
# What the digest-tasks preset reads each poll (src/sources/queue_table.rs), as
# query-exporter queries with one metric each:
#   depth     SELECT '', status, count(*), min(created_at) … WHERE status IN ('PENDING','RUNNING') GROUP BY 1, 2
#   attempts  SELECT '', CAST(id AS TEXT), attempts … WHERE status IN (…) AND attempts > 0 ORDER BY id LIMIT 10000
#   claimed   SELECT '', claimed_at … WHERE status = 'RUNNING' LIMIT 10000   (lease checked in the sidecar)
#   dead      SELECT '', count(*) … WHERE status = 'FAILED' GROUP BY 1
#   clock     SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
# query-exporter cannot diff per-row values between polls and a label per task would be
# unbounded, so "attempts" reads the same rows but aggregates them by attempts, and
# "stuck" checks the lease in SQL.
QE_METRICS = {
    "digest_queue_depth": ("gauge", ["status"]),
    "digest_oldest_created_seconds": ("gauge", ["status"]),
    "digest_open_tasks_by_attempts": ("gauge", ["attempts"]),
    "digest_stuck_tasks": ("gauge", []),
    "digest_dead_letters": ("gauge", []),
    "digest_db_clock_seconds": ("gauge", []),
}
QE_SQL = {
    "depth": ("digest_queue_depth digest_oldest_created_seconds",
              "SELECT status, count(*) AS digest_queue_depth, "
              "extract(epoch FROM min(created_at))::float8 AS digest_oldest_created_seconds "
              "FROM digest_tasks WHERE status IN ('PENDING', 'RUNNING') GROUP BY status"),
    "attempts": ("digest_open_tasks_by_attempts",
                 "SELECT attempts::text AS attempts, count(*) AS digest_open_tasks_by_attempts FROM digest_tasks "
                 "WHERE status IN ('PENDING', 'RUNNING') AND attempts > 0 GROUP BY attempts"),
    "stuck": ("digest_stuck_tasks",
              "SELECT count(*) AS digest_stuck_tasks FROM digest_tasks "
              "WHERE status = 'RUNNING' AND claimed_at < now() - interval '600 seconds'"),
    "dead": ("digest_dead_letters", "SELECT count(*) AS digest_dead_letters FROM digest_tasks WHERE status = 'FAILED'"),
    "clock": ("digest_db_clock_seconds", "SELECT extract(epoch FROM clock_timestamp())::float8 AS digest_db_clock_seconds"),
}


def qe_config():
    out = ["databases:", "  digest:", f"    dsn: {dsn()}", "metrics:"]
    for name, (kind, labels) in QE_METRICS.items():
        out += [f"  {name}:", f"    type: {kind}"]
        if labels:
            out.append(f"    labels: [{', '.join(labels)}]")
    out.append("queries:")
    for qname, (metrics, sql) in QE_SQL.items():
        out += [f"  {qname}:", "    interval: 1", "    databases: [digest]",
                f"    metrics: [{', '.join(metrics.split())}]", f"    sql: {json.dumps(sql)}"]
    path = f"{TMP}/query-exporter.yaml"
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def measure_qe(polls, skip):
    cfg = qe_config()
    port = free_port()
    p = spawn("query-exporter", [ENV["SWB_QE_BIN"], "--config", cfg, "-H", "127.0.0.1", "-p", str(port),
                                 "-L", "warning"])
    try:
        wait_http(p, port)
        lat = {q: [] for q in QE_SQL}
        last = {q: (0.0, 0.0) for q in QE_SQL}
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
            for q in QE_SQL:
                c = get(s, "query_latency_count", database="digest", query=q)
                sm = get(s, "query_latency_sum", database="digest", query=q)
                if c is None or sm is None:
                    continue
                dc, ds = c - last[q][0], sm - last[q][1]
                if dc > 0:
                    lat[q].extend([ds / dc] * int(dc))
                    last[q] = (c, sm)
            if cpu is None and min(len(v) for v in lat.values()) >= skip:
                cpu = Cpu(p.pid)
            if cpu:
                cpu.poll()
            time.sleep(0.5)
        cpu_pct = cpu.finish() if cpu else float("nan")
        st = proc_status(p.pid)
        rounds = [sum(lat[q][i] for q in QE_SQL) * 1e3 for i in range(skip, skip + polls)]
        failed = {l.get("query"): v for n, l, v in s if n == "queries_total" and l.get("status") != "success"}
        return {
            "tool": "query-exporter", "polls": rounds, "median": statistics.median(rounds), "p95": pct(rounds, 0.95),
            "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct,
            "per_query": {q: statistics.median(lat[q][skip:skip + polls]) * 1e3 for q in QE_SQL},
            "saw": f"digest_queue_depth={[(l.get('status'), v) for n, l, v in s if n == 'digest_queue_depth']}"
                   f" digest_stuck_tasks={get(s, 'digest_stuck_tasks')}"
                   f" digest_dead_letters={get(s, 'digest_dead_letters')} failed_queries={failed or 0}",
        }
    finally:
        stop(p)


QE_E2E = r"""
import asyncio, json, sys, time
from pathlib import Path
from query_exporter.config import load_config
from query_exporter.db import Database

async def main(cfg_path, polls, skip, gap, out_path):
    cfg = load_config([Path(cfg_path)])
    db = Database("digest", cfg.databases["digest"])
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


def measure_qe_e2e(polls, skip, gap=0.25):
    cfg = qe_config()
    script, out = f"{TMP}/qe_e2e.py", f"{TMP}/qe-e2e.json"
    with open(script, "w") as f:
        f.write(QE_E2E)
    python = os.path.join(os.path.dirname(ENV["SWB_QE_BIN"]), "python")
    p = spawn("qe-e2e", [python, script, cfg, str(polls), str(skip), str(gap), out])
    try:
        rc = p.wait(timeout=(polls + skip) * (gap + 2) + 30)
    finally:
        stop(p)
    if rc != 0:
        raise RuntimeError(f"exited with {rc}: {log_tail(p.bench_name)}")
    vals = json.load(open(out))
    return {"tool": "query-exporter (e2e)", "polls": vals, "median": statistics.median(vals),
            "p95": pct(vals, 0.95), "rss": None, "hwm": None, "cpu_pct": None}


def part1(facts):
    polls, skip = env_int("POLLS"), env_int("WARMUP_POLLS")
    results, notes = [], []
    log(f"part 1: stallwatch, {skip}+{polls} polls ...")
    results.append(measure_stallwatch(polls, skip))
    unavailable = ENV.get("SWB_QE_UNAVAILABLE", "")
    if not unavailable:
        log(f"part 1: query-exporter, {skip}+{polls} polls ...")
        try:
            results.append(measure_qe(polls, skip))
        except Exception as e:
            notes.append(f"query-exporter could not be measured: {e}")
        log(f"part 1: query-exporter code path timed end to end, {skip}+{polls} polls ...")
        try:
            results.append(measure_qe_e2e(polls, skip))
        except Exception as e:
            notes.append(f"query-exporter end-to-end timing could not be measured: {e}")
    print_part1(facts, results, unavailable, notes, polls, skip)


def print_part1(facts, results, unavailable, notes, polls, skip):
    print()
    print(f"== 1. One poll of a {env_int('ROWS'):,}-row digest_tasks table (digest-tasks preset) ==")
    print(f"PostgreSQL {ENV['SWB_PG_VERSION']} at {ENV['PGHOST']}:{ENV['PGPORT']} (ssl={facts['ssl']}), {facts['cores']} CPUs "
          f"shared with other work; table + indexes {facts['table_mib']:.0f} MiB; by status: {facts['by_status']}; "
          f"{facts['stuck']} RUNNING past the 600 s lease")
    print(f"plan of the open-status count: {facts['plan']}")
    print(f"each tool alone, poll every 1 s, {skip} warm-up polls dropped, {polls} polls kept")
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
                f"{f1(r['cpu_pct'], '.2f'):>7}")
        if r is not sw:
            line += (f"{r['median'] / sw['median']:>11.1f}{r['p95'] / sw['p95']:>8.1f}"
                     f"{f1(r['rss'] and r['rss'] / sw['rss'], '.1f'):>8}")
        print(line)
    print("(/sw = the tool's figure divided by stallwatch's; CPU % = process CPU over the window, one core = 100;")
    print(" the (e2e) row times query-exporter's Database.execute() per query end to end in a harness process)")
    print()
    for r in (r for r in results if "saw" in r):
        print(f"{r['tool']} reported: {r['saw']}")
        if "per_query" in r:
            print("  per-query median ms (query_latency): " +
                  ", ".join(f"{q} {v:.2f}" for q, v in r["per_query"].items()))
    if len(results) > 1:
        print("query-exporter SQL (one query each, interval 1 s; poll = sum of their latencies):")
        for q, (_, sql) in QE_SQL.items():
            print(f"  {q:<9}{sql}")
    if unavailable:
        print(f"query-exporter NOT measured: {unavailable}")
    for n in notes:
        print(n)
    print()
    print("targets:")
    mark = lambda ok: "met    " if ok else "NOT met"
    print(f"  {mark(sw['median'] <= 50 and sw['p95'] <= 50)}  stallwatch <= 50 ms per poll "
          f"(median {sw['median']:.2f} ms, p95 {sw['p95']:.2f} ms)")
    for r in results[1:]:
        rss = f", RSS {r['rss'] / sw['rss']:.1f}x stallwatch's" if r["rss"] else ""
        print(f"  ratio    {r['tool']} / stallwatch per poll: median {r['median'] / sw['median']:.2f}x, "
              f"p95 {r['p95'] / sw['p95']:.2f}x{rss}")
    sys.stdout.flush()


# -------------------------------------------------------------------- pgbench ----
def pgbench_run(with_sw, label):
    psql("CHECKPOINT")
    sw = None
    try:
        if with_sw:
            sw, port = start_stallwatch(label)
            wait_source_up(sw, port)
            s0 = scrape(port)
        log(f"part 2: {label}: pgbench {ENV['PGBENCH_SECONDS']} s, stallwatch {'polling' if with_sw else 'off'} ...")
        w = spawn(f"pgbench-{label}", ["pgbench", "-n", "-c", ENV["PGBENCH_CLIENTS"], "-j", ENV["PGBENCH_JOBS"],
                                       "-T", ENV["PGBENCH_SECONDS"], DB], stdout=subprocess.PIPE)
        polls, last = [], None
        if sw:
            last = get(s0, "stallwatch_source_poll_duration_seconds", source="digest")
        while w.poll() is None:
            if sw:
                v = get(scrape(port), "stallwatch_source_poll_duration_seconds", source="digest")
                if v is not None and v != last:
                    polls.append(v * 1e3)
                    last = v
            time.sleep(0.5)
        out = w.stdout.read().decode()
        CHILDREN.remove(w)
        if w.returncode != 0:
            raise RuntimeError(f"pgbench failed ({w.returncode}): {log_tail(w.bench_name)}")
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        lat = re.search(r"latency average = ([0-9.]+) ms", out)
        if not m:
            raise RuntimeError(f"no tps in pgbench output: {out}")
        r = {"tps": float(m.group(1)), "lat_ms": float(lat.group(1)) if lat else float("nan"), "polls": polls}
        if sw:
            s1 = scrape(port)
            r["sw_errors"] = (total(s1, "stallwatch_source_errors_total", source="digest")
                              - total(s0, "stallwatch_source_errors_total", source="digest"))
        return r
    finally:
        if sw:
            stop(sw)


def part2():
    runs = env_int("RUNS")
    res = {False: [], True: []}
    for i in range(runs):
        for with_sw in (False, True):
            res[with_sw].append(pgbench_run(with_sw, f"{'with' if with_sw else 'without'}-{i + 1}"))
    print()
    print(f"== 2. pgbench TPS on the same server, without and with stallwatch polling digest_tasks every 1 s ==")
    print(f"{ENV['SWB_PGBENCH_VERSION']}: built-in TPC-B-like script, scale {ENV['PGBENCH_SCALE']}, "
          f"-c {ENV['PGBENCH_CLIENTS']} -j {ENV['PGBENCH_JOBS']} -T {ENV['PGBENCH_SECONDS']} -n, same database; "
          f"runs interleaved without/with x{runs}, CHECKPOINT before each")
    print()
    hdr = (f"{'stallwatch':<11}" + "".join(f"{'run' + str(i + 1) + ' tps':>11}" for i in range(runs)) +
           f"{'mean tps':>10}{'lat ms':>8}{'sw polls':>9}{'sw med ms':>10}{'sw max ms':>10}{'sw errors':>10}")
    print(hdr)
    print("-" * len(hdr))
    means = {}
    for with_sw in (False, True):
        rs = res[with_sw]
        means[with_sw] = statistics.mean(r["tps"] for r in rs)
        line = f"{'polling' if with_sw else 'off':<11}" + "".join(f"{r['tps']:>11.0f}" for r in rs)
        line += f"{means[with_sw]:>10.0f}{statistics.mean(r['lat_ms'] for r in rs):>8.2f}"
        if with_sw:
            polls = [p for r in rs for p in r["polls"]]
            line += (f"{len(polls):>9}{statistics.median(polls) if polls else float('nan'):>10.2f}"
                     f"{max(polls) if polls else float('nan'):>10.2f}{sum(r['sw_errors'] for r in rs):>10.0f}")
        print(line)
    off, on = means[False], means[True]
    drop = 100 * (off - on) / off
    noise = max(100 * (max(r["tps"] for r in res[w]) - min(r["tps"] for r in res[w])) / means[w] for w in (False, True))
    print()
    print(f"  {'met    ' if drop <= 2 else 'NOT met'}  TPS drop with stallwatch polling {drop:+.1f} % (target <= 2 %): "
          f"{off:.0f} -> {on:.0f} tps; run-to-run noise up to {noise:.1f} %")
    sys.stdout.flush()


# ----------------------------------------------------------------------- main ----
def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))
    log(f"creating database {DB} with {env_int('ROWS'):,} digest_tasks ...")
    make_db()
    facts = db_facts()
    try:
        if ENV.get("SKIP_PART1") != "1":
            part1(facts)
        if ENV.get("SKIP_PART2") != "1":
            part2()
    finally:
        for p in list(CHILDREN):
            stop(p)


if __name__ == "__main__":
    main()
PY

python3 "$TMP/driver.py" &
DRIVER_PID=$!
wait "$DRIVER_PID"
DRIVER_PID=""

T_END=$(date +%s.%N)
echo
python3 -c "print(f'total run time {$T_END - $T_START:.0f} s (of which release build {$BUILD_SECONDS} s)')"
