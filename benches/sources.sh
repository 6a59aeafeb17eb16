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
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
swb_init stallwatch-sources-bench

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

mkdir -p "$REPO/target/bench"
export TMP REPO

# At exit: part 2's scratch copy of the test DB.
swb_on_exit() {
    rm -f "$REPO"/target/bench/writer.db "$REPO"/target/bench/writer.db-*
}

swb_build
export BIN
swb_setup_query_exporter "query-exporter" "'sqlite', __import__('sqlite3').sqlite_version"

# --- the driver (python3 stdlib) ------------------------------------------------------------
cat >"$TMP/driver.py" <<'PY'
import array, json, os, shutil, sqlite3, statistics, subprocess, sys, time

import swb
from swb import (CHILDREN, ENV, MiB, Cpu, exit_on_signals, get, log, log_tail, mark, new_poll_ms, pct, poll_cells,
                 print_poll_table, print_poll_target, print_reported, qe_failed, scrape, spawn, start_stallwatch,
                 stop, stop_all, sw_reported, total, wait_source_up, write_qe_config)

TMP = ENV.get("TMP", "/tmp")


def env_int(name, default):
    return int(ENV.get(name, default))


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
def sw_config(db):
    return ('[[source]]\nname = "lab"\nkind = "queue_table"\npreset = "lab-jobs"\n'
            f'url = "sqlite://{db}"\npoll = "1s"\n')


def measure_stallwatch(db, polls, skip):
    r, s = swb.measure_stallwatch("part1", sw_config(db), "lab", polls, skip)
    r["saw"] = (f"queue_depth{{status=pending}}={get(s, 'stallwatch_queue_depth', source='lab', status='pending')} "
                + sw_reported(s, "lab"))
    return r


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


def qe_config(db, naive):
    tag = "naive" if naive else "equiv"
    return write_qe_config(f"{TMP}/query-exporter-{tag}.yaml", "lab", f"sqlite:///{db}", QE_METRICS, qe_queries(naive))


def measure_qe(db, naive, polls, skip):
    tag = "naive" if naive else "equiv"
    r, s = swb.measure_qe("qe naive" if naive else "query-exporter", f"query-exporter-{tag}", qe_config(db, naive),
                          "lab", qe_queries(naive), polls, skip)
    r["saw"] = (f"lab_queue_depth={[(l.get('status'), v) for n, l, v in s if n == 'lab_queue_depth']}"
                f" lab_dead_letters={get(s, 'lab_dead_letters')}"
                f" failed_queries={qe_failed(s) or 0}")
    return r


def measure_qe_e2e(db, naive, polls, skip):
    tag = "naive" if naive else "equiv"
    return swb.measure_qe_e2e("qe naive (e2e)" if naive else "query-exporter (e2e)", f"qe-e2e-{tag}",
                              qe_config(db, naive), "lab", polls, skip)


def part1(db, facts):
    polls, skip = env_int("POLLS", 30), env_int("WARMUP_POLLS", 2)
    warm(db)
    results, qe_notes = [], []
    log(f"part 1: stallwatch, {skip}+{polls} polls ...")
    results.append(measure_stallwatch(db, polls, skip))
    unavailable = ENV.get("SWB_QE_UNAVAILABLE", "")
    if not unavailable:
        for naive in (False, True):
            swb.measure_qe_both(results, qe_notes, "naive depth" if naive else "equivalent queries",
                                lambda: measure_qe(db, naive, polls, skip),
                                lambda: measure_qe_e2e(db, naive, polls, skip), polls, skip)
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
    print_poll_table(results, ".3f")
    print("(/sw = the tool's figure divided by stallwatch's; CPU % = process CPU over the window, one core = 100,")
    print(" from /proc/PID/task/*/schedstat; it includes 2 /metrics scrapes per second and, for stallwatch, its freeze")
    print(" ticks; (e2e) rows time query-exporter's Database.execute() per query end to end in a harness process,")
    print(" polls 0.25 s apart, so they have no RSS/CPU of the exporter)")
    print()
    print_reported(results, qe_queries(False))
    if len(results) > 1:
        if any(r["tool"].startswith("qe naive") for r in results):
            print(f"  naive row: depth is `{QE_DEPTH_NAIVE}`, the others as above")
        print("query-exporter rows = its query_latency histogram (cursor.execute() time: first row of each statement;")
        print("  excludes pool checkout, fetching further rows, metric updates) — a lower bound of its real poll;")
        print("  the (e2e) rows add those (all but the metric update).")
    sw = results[0]
    print_poll_target(sw, unavailable, qe_notes)
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
            sw, port = start_stallwatch(label, sw_config(work))
            wait_source_up(sw, port, "lab")
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
                last = new_poll_ms(scrape(port), "lab", polls, last)
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
                      "sw_cpu": cpu.finish()["cpu_pct_sched"] if cpu else float("nan"),
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
                line += poll_cells([p for r in rs for p in r["sw_polls"]], sum(r["sw_locked"] for r in rs))
            print(line)
    print("(w/s = committed write transactions per second; per-s sd% = spread of 1-second throughput buckets;")
    print(" wr CPU% / runq% = the writer's time on a CPU / waiting for one (other load on the machine), % of wall;")
    print(" busy err = SQLITE_BUSY/LOCKED that outlived busy_timeout (rolled back, retried); sw polls = distinct polls")
    print(" seen during the runs; sw locked = its polls that gave up on the lock (source_errors_total{kind=locked}))")
    print()
    print("throughput drop with stallwatch polling (mean of runs; noise = spread between the repeated runs of one config):")
    for mode in modes:
        off, on = means[(mode, False)], means[(mode, True)]
        drop, noise = swb.drop_and_noise([r["rate"] for r in runs[(mode, False)]], [r["rate"] for r in runs[(mode, True)]])
        print(f"  {mark(drop <= 2)}  {mode:<7} drop {drop:+.1f} % (target <= 2 %): {off:.0f} -> {on:.0f} w/s; "
              f"run-to-run noise up to {noise:.1f} %")
    sys.stdout.flush()


# -------------------------------------------------------------------- main ----
def main():
    exit_on_signals()
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
        stop_all()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        writer_main(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    else:
        main()
PY

swb_run_python "$TMP/driver.py"

echo
echo "total run time $(swb_seconds_since "$SWB_T_START") s (of which release build $SWB_BUILD_SECONDS s)"
