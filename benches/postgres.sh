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
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
swb_init stallwatch-postgres-bench

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
export TMP REPO

for tool in psql pgbench python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found on PATH; this bench needs it" >&2; exit 1; }
done
if ! psql -X -q -d postgres -c "SELECT 1" >/dev/null 2>"$TMP/psql.err"; then
    echo "cannot reach Postgres at $PGHOST:$PGPORT as $PGUSER: $(cat "$TMP/psql.err")" >&2
    exit 1
fi

# At exit: the test database, unless KEEP_DB=1.
swb_on_exit() {
    if [[ "$KEEP_DB" != 1 ]]; then
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}

swb_build
export BIN
swb_setup_query_exporter "query-exporter and psycopg" "'psycopg', m.version('psycopg')"
SWB_PG_VERSION=$(psql -X -qAt -d postgres -c "SHOW server_version")
SWB_PGBENCH_VERSION=$(pgbench --version)
export SWB_PG_VERSION SWB_PGBENCH_VERSION

# --- the driver (python3 stdlib; SQL through psql) -------------------------------------------
cat >"$TMP/driver.py" <<'PY'
import os, re, statistics, subprocess, sys, time

import swb
from swb import (CHILDREN, ENV, MiB, exit_on_signals, get, log, log_tail, mark, new_poll_ms, poll_cells,
                 print_poll_table, print_poll_target, print_reported, qe_failed, scrape, spawn, start_stallwatch,
                 stop, stop_all, sw_reported, total, wait_source_up, write_qe_config)

TMP = ENV["TMP"]
DB = ENV["DB"]


def env_int(name):
    return int(ENV[name])


def dsn():
    return f"postgresql://{ENV['PGUSER']}@{ENV['PGHOST']}:{ENV['PGPORT']}/{DB}"


def psql(sql, db=None, capture=False):
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db or DB, "-At", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"psql failed: {sql[:200]}...: {r.stderr.strip()}")
    return r.stdout.strip() if capture else None


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
def sw_config():
    return ('[freeze]\nreferences = []\n\n[[source]]\nname = "digest"\nkind = "queue_table"\n'
            f'preset = "digest-tasks"\nurl = "{dsn()}"\npoll = "1s"\n')


def measure_stallwatch(polls, skip):
    r, s = swb.measure_stallwatch("part1", sw_config(), "digest", polls, skip)
    depth = {l.get("status"): v for n, l, v in s if n == "stallwatch_queue_depth" and l.get("source") == "digest"}
    r["saw"] = f"queue_depth={depth} stuck_jobs={get(s, 'stallwatch_stuck_jobs', source='digest')} " + sw_reported(s, "digest")
    return r


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
    return write_qe_config(f"{TMP}/query-exporter.yaml", "digest", dsn(), QE_METRICS, QE_SQL)


def measure_qe(polls, skip):
    r, s = swb.measure_qe("query-exporter", "query-exporter", qe_config(), "digest", QE_SQL, polls, skip)
    r["saw"] = (f"digest_queue_depth={[(l.get('status'), v) for n, l, v in s if n == 'digest_queue_depth']}"
                f" digest_stuck_tasks={get(s, 'digest_stuck_tasks')}"
                f" digest_dead_letters={get(s, 'digest_dead_letters')} failed_queries={qe_failed(s) or 0}")
    return r


def measure_qe_e2e(polls, skip):
    return swb.measure_qe_e2e("query-exporter (e2e)", "qe-e2e", qe_config(), "digest", polls, skip)


def part1(facts):
    polls, skip = env_int("POLLS"), env_int("WARMUP_POLLS")
    results, notes = [], []
    log(f"part 1: stallwatch, {skip}+{polls} polls ...")
    results.append(measure_stallwatch(polls, skip))
    unavailable = ENV.get("SWB_QE_UNAVAILABLE", "")
    if not unavailable:
        swb.measure_qe_both(results, notes, "", lambda: measure_qe(polls, skip), lambda: measure_qe_e2e(polls, skip),
                            polls, skip)
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
    print_poll_table(results, ".2f")
    print("(/sw = the tool's figure divided by stallwatch's; CPU % = process CPU over the window, one core = 100;")
    print(" the (e2e) row times query-exporter's Database.execute() per query end to end in a harness process)")
    print()
    print_reported(results, QE_SQL)
    sw = results[0]
    print_poll_target(sw, unavailable, notes)
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
            sw, port = start_stallwatch(label, sw_config())
            wait_source_up(sw, port, "digest")
            s0 = scrape(port)
        log(f"part 2: {label}: pgbench {ENV['PGBENCH_SECONDS']} s, stallwatch {'polling' if with_sw else 'off'} ...")
        w = spawn(f"pgbench-{label}", ["pgbench", "-n", "-c", ENV["PGBENCH_CLIENTS"], "-j", ENV["PGBENCH_JOBS"],
                                       "-T", ENV["PGBENCH_SECONDS"], DB], stdout=subprocess.PIPE)
        polls, last = [], None
        if sw:
            last = get(s0, "stallwatch_source_poll_duration_seconds", source="digest")
        while w.poll() is None:
            if sw:
                last = new_poll_ms(scrape(port), "digest", polls, last)
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
            line += poll_cells([p for r in rs for p in r["polls"]], sum(r["sw_errors"] for r in rs))
        print(line)
    off, on = means[False], means[True]
    drop, noise = swb.drop_and_noise([r["tps"] for r in res[False]], [r["tps"] for r in res[True]])
    print()
    print(f"  {mark(drop <= 2)}  TPS drop with stallwatch polling {drop:+.1f} % (target <= 2 %): "
          f"{off:.0f} -> {on:.0f} tps; run-to-run noise up to {noise:.1f} %")
    sys.stdout.flush()


# ----------------------------------------------------------------------- main ----
def main():
    exit_on_signals()
    log(f"creating database {DB} with {env_int('ROWS'):,} digest_tasks ...")
    make_db()
    facts = db_facts()
    try:
        if ENV.get("SKIP_PART1") != "1":
            part1(facts)
        if ENV.get("SKIP_PART2") != "1":
            part2()
    finally:
        stop_all()


if __name__ == "__main__":
    main()
PY

swb_run_python "$TMP/driver.py"

echo
echo "total run time $(swb_seconds_since "$SWB_T_START") s (of which release build $SWB_BUILD_SECONDS s)"
