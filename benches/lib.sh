# shellcheck shell=bash disable=SC2034 # (SWB_ variables are read by the benches that source this)
# benches/lib.sh — what the benches share; each sources it first thing:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Bash: the repo root and temp dir, the exit trap that stops every process the bench
# started, the release build, free ports, starting/stopping a process and waiting for its
# URL, query-exporter's venv, elapsed seconds. Python: swb_init writes swb.py into the temp
# dir, where the drivers (written there too) import it — processes a driver starts,
# /proc/PID/stat CPU ticks, RSS, per-thread schedstat CPU, /metrics scrapes, percentiles,
# stallwatch and query-exporter poll timing, and the poll table sources.sh and
# postgres.sh print. Names it defines start with swb_/SWB_ (swb. in Python).
# It changes no shell option: the benches set -euo pipefail themselves.

# Seconds a process gets between SIGTERM and SIGKILL at exit: stallwatch stops within
# 5 s of SIGTERM with nothing open, and 3 s has always been enough idle; soak.sh gives its
# demo (app, worker and sidecar) 10 s.
SWB_STOP_GRACE_S=3
# Seconds swb_wait_ready waits for a URL: a release stallwatch answers within a second
# even on a loaded 2-core machine; 30 s means it is not coming.
SWB_READY_TIMEOUT_S=30

SWB_PIDS=() # every process the bench started and has not stopped, one pid an element

# Enters the repo root (sets REPO) and makes the temp dir TMP (prefix $1); sets SWB_T_START,
# installs the exit trap and writes swb.py into TMP. Drivers append the pids they start to
# SWB_PIDS_FILE.
swb_init() {
    SWB_T_START=$(date +%s.%N)
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    REPO=$(pwd)
    TMP=$(mktemp -d -t "$1.XXXXXX")
    SWB_PIDS_FILE="$TMP/pids"
    : >"$SWB_PIDS_FILE"
    trap swb_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    swb_write_pylib "$TMP/swb.py"
}

# The EXIT trap: stops every process the bench (or its driver) started, runs the bench's
# own swb_on_exit if it defines one, removes TMP (KEEP_TMP=1 keeps it), exits with $?.
swb_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pids=("${SWB_PIDS[@]}")
    if [[ -s "$SWB_PIDS_FILE" ]]; then
        mapfile -t -O "${#pids[@]}" pids <"$SWB_PIDS_FILE"
    fi
    swb_stop_all "${pids[@]}"
    if declare -F swb_on_exit >/dev/null; then
        swb_on_exit || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "logs kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# True while process $1 exists and is not a zombie (kill -0 succeeds on a zombie).
swb_running() {
    local state
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) && [[ -n "$state" && "$state" != Z ]]
}

# Stops processes $@: SIGCONT (a stopped one does not act on SIGTERM), SIGTERM, up to
# SWB_STOP_GRACE_S each to exit, then SIGKILL; reaps those that are this shell's children.
swb_stop_all() {
    local pid
    for pid in "$@"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq $((SWB_STOP_GRACE_S * 10))); do
            swb_running "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# Drops pid $1 from SWB_PIDS, so that the exit trap never signals it once reused.
swb_forget() {
    local keep=() pid
    for pid in "${SWB_PIDS[@]}"; do
        [[ "$pid" == "$1" ]] || keep+=("$pid")
    done
    SWB_PIDS=("${keep[@]}")
}

# Builds the release binary into CARGO_TARGET_DIR (default target/); sets BIN to its
# absolute path and SWB_BUILD_SECONDS to the build's wall time.
swb_build() {
    echo "building release binary ..." >&2
    local t0
    t0=$(date +%s.%N)
    cargo build --release --quiet --bin stallwatch
    SWB_BUILD_SECONDS=$(swb_seconds_since "$t0")
    BIN="${CARGO_TARGET_DIR:-target}/release/stallwatch"
    [[ "$BIN" == /* ]] || BIN="$REPO/$BIN"
}

# Prints the whole seconds since $1 (a `date +%s.%N` reading).
swb_seconds_since() {
    python3 -c "print(f'{$(date +%s.%N) - $1:.0f}')"
}

# Prints $1 TCP ports on 127.0.0.1 that are free now, space-separated (all bound at once,
# so they differ).
swb_free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()' "$1"
}

# Starts command $2... in the background, stdout and stderr to log file $1; sets
# SWB_LAST_PID and adds it to SWB_PIDS. (`env -C DIR` / `env VAR=value` in front of the
# command set its directory / environment and keep the pid the command's.)
swb_spawn() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    SWB_LAST_PID=$!
    SWB_PIDS+=("$SWB_LAST_PID")
}

# Stops process $1 started by swb_spawn: SIGTERM, waits for it, forgets its pid.
swb_stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    swb_forget "$1"
}

# Waits until URL $1 answers 2xx; if process $2 (named $3 in messages) exits first, or
# SWB_READY_TIMEOUT_S passes, prints its log $4 to stderr and exits 1.
swb_wait_ready() {
    local url=$1 pid=$2 name=$3 log=$4
    for _ in $(seq $((SWB_READY_TIMEOUT_S * 10))); do
        curl -fs "$url" >/dev/null 2>&1 && return 0
        if ! swb_running "$pid"; then
            echo "$name exited; log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name not ready after $SWB_READY_TIMEOUT_S s; log:" >&2
    cat "$log" >&2
    exit 1
}

# Runs python3 with args $@ in the background and waits for it, so that the INT/TERM
# traps act at once (bash runs a trap only after a foreground child exits); returns its
# exit status.
swb_run_python() {
    python3 "$@" &
    local pid=$! rc=0
    SWB_PIDS+=("$pid")
    wait "$pid" || rc=$?
    swb_forget "$pid"
    return "$rc"
}

# Installs query-exporter (benches/requirements.txt) into target/bench-venv unless
# SKIP_QUERY_EXPORTER=1; exports SWB_QE_BIN, SWB_QE_UNAVAILABLE (why it cannot be
# measured; empty when it can) and SWB_QE_VERSION (its version, SQLAlchemy's, then the
# facts of the python expression list $2, e.g. "'psycopg', m.version('psycopg')").
# $1 says what is being installed, for the progress line.
swb_setup_query_exporter() {
    local what=$1 more=$2
    local venv="$REPO/target/bench-venv"
    export SWB_QE_BIN="$venv/bin/query-exporter"
    export SWB_QE_UNAVAILABLE=""
    export SWB_QE_VERSION=""
    if [[ "${SKIP_QUERY_EXPORTER:-0}" == 1 ]]; then
        SWB_QE_UNAVAILABLE="skipped (SKIP_QUERY_EXPORTER=1)"
    else
        echo "installing $what into $venv (benches/requirements.txt) ..." >&2
        if [[ ! -x "$venv/bin/python" ]] && ! python3 -m venv "$venv" >"$TMP/venv.log" 2>&1; then
            SWB_QE_UNAVAILABLE="python3 -m venv $venv failed: $(tail -n 3 "$TMP/venv.log" | tr '\n' ' ')"
        elif ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r benches/requirements.txt >"$TMP/pip.log" 2>&1; then
            SWB_QE_UNAVAILABLE="pip install -r benches/requirements.txt failed: $(grep -E 'ERROR|error' "$TMP/pip.log" | head -n 3 | tr '\n' ' ')"
        elif [[ ! -x "$SWB_QE_BIN" ]]; then
            SWB_QE_UNAVAILABLE="pip installed query-exporter but $SWB_QE_BIN is missing"
        fi
        if [[ -n "$SWB_QE_UNAVAILABLE" ]]; then
            echo "query-exporter unavailable: $SWB_QE_UNAVAILABLE" >&2
        fi
    fi
    if [[ -z "$SWB_QE_UNAVAILABLE" ]]; then
        SWB_QE_VERSION=$("$venv/bin/python" -c \
            "import importlib.metadata as m; print(m.version('query-exporter'), 'SQLAlchemy', m.version('sqlalchemy'), $more)" 2>/dev/null || true)
    fi
}

# Writes the benches' shared Python module to $1 (swb.py in TMP, next to the drivers).
swb_write_pylib() {
    cat >"$1" <<'PY'
"""The benches' shared Python, written by benches/lib.sh next to each bench's driver:
processes a driver starts and stops, /proc readings (CPU ticks, RSS, per-thread
schedstat), /metrics scrapes, percentiles, stallwatch and query-exporter poll timing, and
the poll table of sources.sh and postgres.sh."""
import json, math, os, re, signal, socket, statistics, subprocess, sys, time
import urllib.error, urllib.request

MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
ENV = os.environ
CHILDREN = []  # the processes spawn() started and stop() has not stopped


def log(*a):
    """Prints a progress line to stderr."""
    print(*a, file=sys.stderr, flush=True)


def tmp():
    """The bench's temp dir (logs, configs, the pids file)."""
    return ENV.get("TMP", "/tmp")


# ---------------------------------------------------------------- processes ----
def free_port():
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name, argv, **kw):
    """Starts argv with its output in TMP/name.log; records its pid for the exit trap."""
    out = open(f"{tmp()}/{name}.log", "ab")
    p = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out, **kw)
    p.bench_name = name
    CHILDREN.append(p)
    with open(f"{tmp()}/pids", "a") as f:
        f.write(f"{p.pid}\n")
    return p


def stop(p):
    """SIGTERM to a spawned process, SIGKILL after 5 s; forgets it."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    """Stops every process spawn() started that is still known."""
    for p in list(CHILDREN):
        stop(p)


def exit_on_signals():
    """SIGTERM/SIGINT exit with 143, so that `finally` blocks stop the children."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))


def log_tail(name, n=5):
    """The last n lines of TMP/name.log, on one line."""
    try:
        lines = open(f"{tmp()}/{name}.log", errors="replace").read().strip().splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------ /proc readings ----
def stat_ticks(pid):
    """utime + stime of the process in clock ticks (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def proc_status(pid):
    """VmRSS and VmHWM in bytes and Threads, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
            elif k == "Threads":
                out[k] = int(v)
    return out


def read_sched(pid, names=None):
    """ns of CPU per live thread (/proc/PID/task/*/schedstat); with `names`, also
    (runs, comm) per thread into it."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                fields = f.read().split()
            out[int(tid)] = int(fields[0])
            if names is not None:
                with open(f"{base}/{tid}/comm") as f:
                    names[int(tid)] = (int(fields[2]), f.read().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread exited between listdir and open
    return out


class Cpu:
    """CPU time of one process over a window, summed over its threads, ns-precise; poll()
    now and then so that threads exiting inside the window keep the time they used up to
    their last poll."""

    def __init__(self, pid):
        self.pid = pid
        self.t0 = time.monotonic_ns()
        self.ticks0 = stat_ticks(pid)
        self.runs0 = {}
        self.base = read_sched(pid, self.runs0)
        self.last = dict(self.base)
        self.runs = dict(self.runs0)
        self.born = 0

    def poll(self):
        try:
            sched = read_sched(self.pid, self.runs)
        except FileNotFoundError:
            return  # the process is gone; finish() will say so
        for tid, ns in sched.items():
            if tid not in self.base:
                self.base[tid] = 0  # created inside the window: all of its time counts
                self.runs0[tid] = (0, "")
                self.born += 1
            self.last[tid] = ns

    def per_thread(self):
        """{thread name: (CPU s, runs)} over the window, threads of one name summed."""
        out = {}
        for tid, ns in self.last.items():
            runs, name = self.runs.get(tid, (0, "?"))
            cpu, n = out.get(name, (0.0, 0))
            out[name] = (cpu + (ns - self.base[tid]) / 1e9, n + runs - self.runs0[tid][0])
        return out

    def finish(self):
        """The window's figures: CPU % of one core by schedstat and by stat ticks, and more."""
        self.poll()
        t1 = time.monotonic_ns()
        live = set(read_sched(self.pid))
        wall = (t1 - self.t0) / 1e9
        sched_s = sum(self.last[t] - self.base[t] for t in self.last) / 1e9
        ticks = stat_ticks(self.pid) - self.ticks0
        return {
            "wall_s": wall,
            "cpu_sched_s": sched_s,
            "cpu_pct_sched": 100.0 * sched_s / wall,
            "cpu_ticks": ticks,
            "cpu_pct_stat": 100.0 * ticks / CLK_TCK / wall,
            "threads_born": self.born,
            "threads_exited": len(set(self.last) - live),
            "per_thread": self.per_thread(),
        }


# ------------------------------------------------------------------- metrics ----
def http_get(url, headers=None, timeout=5.0):
    """(status, headers, body) of a GET."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


def scrape(port, timeout=5.0):
    """The samples of http://127.0.0.1:PORT/metrics as (name, labels, value)."""
    text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=timeout)[2].decode("utf-8", "replace")
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
    """The first sample of `name` with those labels, or None."""
    for n, l, v in samples:
        if n == name and all(l.get(k) == v2 for k, v2 in labels.items()):
            return v
    return None


def total(samples, name, **labels):
    """The sum of the samples of `name` with those labels."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == v2 for k, v2 in labels.items()))


def wait_http(url, alive, what, deadline):
    """Waits until url answers 200 before time.monotonic() reaches deadline; RuntimeError
    when alive() turns false (the process exited) or the deadline passes."""
    while True:
        if not alive():
            raise RuntimeError(f"{what} exited during start-up")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within the start-up timeout")
        time.sleep(0.1)


def wait_metrics(p, port, deadline_s=30):
    """wait_http for a spawned process's /metrics; the error carries its log's tail."""
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", lambda: p.poll() is None, p.bench_name,
                  time.monotonic() + deadline_s)
    except RuntimeError as e:
        code = "" if p.returncode is None else f" (exit {p.returncode})"
        raise RuntimeError(f"{e}{code}: {log_tail(p.bench_name)}")


def pct(values, q):
    """The nearest-rank q-quantile (0 < q <= 1) of values."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# ---------------------------------------------------------------- stallwatch ----
def start_stallwatch(tag, config):
    """Starts `stallwatch run` with config (TOML text) on a free port, waits for /metrics;
    returns (process, port)."""
    port = free_port()
    data = f"{tmp()}/sw-data-{tag}"
    os.makedirs(data, exist_ok=True)
    cfg = f"{tmp()}/stallwatch-{tag}.toml"
    with open(cfg, "w") as f:
        f.write(config)
    p = spawn(f"stallwatch-{tag}", [ENV["BIN"], "run", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                                    "--data-dir", data])
    wait_metrics(p, port)
    return p, port


def wait_source_up(p, port, source, deadline_s=30):
    """Waits for stallwatch_source_up{source} = 1 (its first good poll); returns that scrape."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        s = scrape(port)
        if get(s, "stallwatch_source_up", source=source) == 1.0:
            return s
        if p.poll() is not None:
            raise RuntimeError(f"stallwatch exited: {log_tail(p.bench_name)}")
        time.sleep(0.1)
    raise RuntimeError(f"stallwatch source '{source}' not up within {deadline_s} s: {log_tail(p.bench_name)}")


def new_poll_ms(samples, source, polls, last):
    """Appends stallwatch's last poll duration for source (ms) to polls if it is a new
    value; returns the value now last seen."""
    v = get(samples, "stallwatch_source_poll_duration_seconds", source=source)
    if v is not None and v != last:
        polls.append(v * 1e3)
        return v
    return last


def measure_stallwatch(tag, config, source, polls, skip):
    """One poll's time of stallwatch started with config (TOML text):
    stallwatch_source_poll_duration_seconds{source} (the last poll's duration) scraped
    every 0.5 s, each new value one poll; the first `skip` dropped, then `polls` kept; CPU
    (schedstat) over the kept ones; RSS at the end. Returns (result row, the last scrape)."""
    p, port = start_stallwatch(tag, config)
    try:
        return _measure_stallwatch(p, port, source, polls, skip)
    finally:
        stop(p)


def _measure_stallwatch(p, port, source, polls, skip):
    wait_source_up(p, port, source)
    values, last, cpu, s = [], None, None, []
    deadline = time.monotonic() + (polls + skip) * 3 + 30
    while len(values) < skip + polls:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stallwatch gave only {len(values)} polls: {log_tail(p.bench_name)}")
        s = scrape(port)
        seen = len(values)
        last = new_poll_ms(s, source, values, last)
        if len(values) > seen and len(values) == skip:
            cpu = Cpu(p.pid)  # the window starts at the first kept poll
        if cpu:
            cpu.poll()
        time.sleep(0.5)
    cpu_pct = cpu.finish()["cpu_pct_sched"] if cpu else float("nan")
    st = proc_status(p.pid)
    kept = values[skip:]
    return {"tool": "stallwatch", "polls": kept, "median": statistics.median(kept), "p95": pct(kept, 0.95),
            "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct}, s


def sw_reported(samples, source):
    """What every queue source of stallwatch reports besides its depth, for a "reported:" line."""
    return (f"dead_letters={get(samples, 'stallwatch_dead_letters', source=source)}"
            f" source_up={get(samples, 'stallwatch_source_up', source=source)}"
            f" errors={total(samples, 'stallwatch_source_errors_total', source=source):.0f}")


# ------------------------------------------------------------ query-exporter ----
def write_qe_config(path, database, dsn, metrics, queries):
    """Writes a query-exporter config to path: one database, metrics {name: (type,
    labels)}, queries {name: ("metric ...", sql)} each every 1 s; returns path."""
    out = ["databases:", f"  {database}:", f"    dsn: {dsn}", "metrics:"]
    for name, (kind, labels) in metrics.items():
        out += [f"  {name}:", f"    type: {kind}"]
        if labels:
            out.append(f"    labels: [{', '.join(labels)}]")
    out.append("queries:")
    for qname, (names, sql) in queries.items():
        out += [f"  {qname}:", "    interval: 1", f"    databases: [{database}]",
                f"    metrics: [{', '.join(names.split())}]", f"    sql: {json.dumps(sql)}"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def qe_failed(samples):
    """{query: count} of query-exporter's queries_total that did not succeed."""
    return {l.get("query"): v for n, l, v in samples if n == "queries_total" and l.get("status") != "success"}


def measure_qe(tool, name, cfg, database, queries, polls, skip):
    """One poll's time of query-exporter on config cfg, by its own query_latency histogram
    (labels database, query): each time a query's _count goes up by one, the _sum increase
    is that execution's latency; one poll = the sum over its queries of their i-th
    executions; the first `skip` dropped, then `polls` kept; CPU (schedstat) over the kept
    ones; RSS at the end. Returns (result row, the last scrape)."""
    port = free_port()
    p = spawn(name, [ENV["SWB_QE_BIN"], "--config", cfg, "-H", "127.0.0.1", "-p", str(port), "-L", "warning"])
    try:
        wait_metrics(p, port)
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
                c = get(s, "query_latency_count", database=database, query=q)
                sm = get(s, "query_latency_sum", database=database, query=q)
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
        cpu_pct = cpu.finish()["cpu_pct_sched"] if cpu else float("nan")
        st = proc_status(p.pid)
        rounds = [sum(lat[q][i] for q in queries) * 1e3 for i in range(skip, skip + polls)]
        return {"tool": tool, "polls": rounds, "median": statistics.median(rounds), "p95": pct(rounds, 0.95),
                "rss": st["VmRSS"], "hwm": st["VmHWM"], "cpu_pct": cpu_pct,
                "per_query": {q: statistics.median(lat[q][skip:skip + polls]) * 1e3 for q in queries}}, s
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

async def main(cfg_path, polls, skip, gap, out_path, database):
    cfg = load_config([Path(cfg_path)])
    db = Database(database, cfg.databases[database])
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

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]))
"""


def measure_qe_e2e(tool, name, cfg, database, polls, skip, gap=0.25):
    """One poll's time of query-exporter's code path (QE_E2E) on config cfg, polls `gap` s
    apart; the first `skip` dropped. Returns the result row (no RSS/CPU)."""
    script, out = f"{tmp()}/qe_e2e.py", f"{tmp()}/{name}.json"
    with open(script, "w") as f:
        f.write(QE_E2E)
    python = os.path.join(os.path.dirname(ENV["SWB_QE_BIN"]), "python")
    p = spawn(name, [python, script, cfg, str(polls), str(skip), str(gap), out, database])
    try:
        rc = p.wait(timeout=(polls + skip) * (gap + 2) + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError("timed out")
    finally:
        stop(p)
    if rc != 0:
        raise RuntimeError(f"exited with {rc}: {log_tail(p.bench_name)}")
    vals = json.load(open(out))
    return {"tool": tool, "polls": vals, "median": statistics.median(vals), "p95": pct(vals, 0.95),
            "rss": None, "hwm": None, "cpu_pct": None}


def measure_qe_both(results, notes, what, measure, measure_e2e, polls, skip):
    """Appends query-exporter's rows to results: measure() (its histogram), then
    measure_e2e() (its code path end to end); a failure becomes a note. `what` names the
    variant in the messages ("" for none)."""
    tag = f" ({what})" if what else ""
    log(f"part 1: query-exporter{tag}, {skip}+{polls} polls ...")
    try:
        results.append(measure())
    except Exception as e:  # report, keep going
        notes.append(f"query-exporter{tag} could not be measured: {e}")
    log(f"part 1: query-exporter code path timed end to end{tag}, {skip}+{polls} polls ...")
    try:
        results.append(measure_e2e())
    except Exception as e:
        notes.append(f"query-exporter end-to-end timing{tag} could not be measured: {e}")


# ------------------------------------------------------------------ printing ----
def mark(ok):
    """The target column: met or NOT met, one width."""
    return "met    " if ok else "NOT met"


def print_poll_table(results, cpu_spec):
    """The per-poll table, one row a tool, results[0] stallwatch (the /sw columns divide by
    it); CPU % printed with format cpu_spec."""
    hdr = (f"{'tool':<22}{'median ms':>10}{'p95 ms':>8}{'min ms':>8}{'max ms':>8}{'RSS MiB':>8}{'peak MiB':>9}"
           f"{'CPU %':>7}{'/sw median':>11}{'/sw p95':>8}{'/sw RSS':>8}")
    print(hdr)
    print("-" * len(hdr))
    sw = results[0]
    f1 = lambda v, spec: "-" if v is None else format(v, spec)
    for r in results:
        line = (f"{r['tool']:<22}{r['median']:>10.2f}{r['p95']:>8.2f}{min(r['polls']):>8.2f}{max(r['polls']):>8.2f}"
                f"{f1(r['rss'] and r['rss'] / MiB, '.1f'):>8}{f1(r['hwm'] and r['hwm'] / MiB, '.1f'):>9}"
                f"{f1(r['cpu_pct'], cpu_spec):>7}")
        if r is not sw:
            line += (f"{r['median'] / sw['median']:>11.1f}{r['p95'] / sw['p95']:>8.1f}"
                     f"{f1(r['rss'] and r['rss'] / sw['rss'], '.1f'):>8}")
        print(line)


def print_reported(results, queries):
    """What each tool reported, its per-query medians, and query-exporter's SQL (queries:
    {name: (metrics, sql)}) when it was measured."""
    for r in (r for r in results if "saw" in r):
        print(f"{r['tool']} reported: {r['saw']}")
        if "per_query" in r:
            print("  per-query median ms (query_latency): " +
                  ", ".join(f"{q} {v:.2f}" for q, v in r["per_query"].items()))
    if len(results) > 1:
        print("query-exporter SQL (one query each, interval 1 s; poll = sum of their latencies):")
        for q, (_, sql) in queries.items():
            print(f"  {q:<9}{sql}")


def print_poll_target(sw, unavailable, notes):
    """Why query-exporter was not measured, the notes, and the targets head with
    stallwatch's 50 ms line."""
    if unavailable:
        print(f"query-exporter NOT measured: {unavailable}")
    for n in notes:
        print(n)
    print()
    print("targets:")
    print(f"  {mark(sw['median'] <= 50 and sw['p95'] <= 50)}  stallwatch <= 50 ms per poll "
          f"(median {sw['median']:.2f} ms, p95 {sw['p95']:.2f} ms)")


def poll_cells(polls, errors):
    """The sw polls / sw med ms / sw max ms / sw errors cells of a part-2 row."""
    return (f"{len(polls):>9}{statistics.median(polls) if polls else float('nan'):>10.2f}"
            f"{max(polls) if polls else float('nan'):>10.2f}{errors:>10.0f}")


def drop_and_noise(off_rates, on_rates):
    """(% drop of the mean with stallwatch, % noise: the widest spread of one config's runs)."""
    off, on = statistics.mean(off_rates), statistics.mean(on_rates)
    noise = max(100 * (max(rs) - min(rs)) / statistics.mean(rs) for rs in (off_rates, on_rates))
    return 100 * (off - on) / off, noise
PY
}
