#!/usr/bin/env bash
# benches/analyze.sh — issue 8's analyze benchmark: `stallwatch analyze` over a DBOS
# SQLite system database with 1,000,000 operation_outputs rows; prints wall time and
# peak RSS per run against the targets (≤ 3 s, ≤ 100 MB). Then the same for issue 19's
# `stallwatch verify --source` over the same DB (the same read, gaps counted per window:
# --before the first half of the history, --after the second half).
#
#   bash benches/analyze.sh        # from anywhere; ~1 minute the first time (release
#                                  # build + the test DB), seconds after that
#
# It PRINTS figures; it never fails on a timing (exit 0 unless something could not be set
# up, or analyze did not find the gaps planted in the DB — then the figure means nothing).
#
# Test DB: the operation_outputs and workflow_status tables as DBOS 3.4 creates them on
# SQLite (primary key (workflow_uuid, function_id), the index on completed_at_epoch_ms,
# function_name, application_name), ROWS/5 workflows `reply` of five rows each, in the
# incident's shape: parse_email, DBOS.recv (2 s debounce) with its DBOS.sleep
# placeholder (output = the deadline), generate_reply, send_reply; one workflow starts
# every 0.4 s, so several are in flight at once and rows of different workflows
# interleave. Every 20,000th workflow stalls 107 minutes between the debounce and
# generate_reply (the incident): those gaps, and nothing else, are ≥ 60 s. Built with
# python's sqlite3 in one transaction, index created after the load, journal_mode WAL;
# cached as target/bench/analyze-ROWS.sqlite (delete it to rebuild).
#
# Each run: `/usr/bin/time -v target/release/stallwatch analyze --source DB --gap-min 60s
# --format json`, the DB file already in the page cache (one unmeasured warm-up run
# first). Wall time = GNU time's elapsed (process start to exit: opening the DB,
# every batch, the output); peak RSS = its "Maximum resident set size".
#
# Environment: ROWS (1000000), RUNS (3), CARGO_TARGET_DIR (target), KEEP_TMP (0: delete
# the temp dir with the runs' output at exit).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
swb_init stallwatch-analyze-bench

ROWS=${ROWS:-1000000}
RUNS=${RUNS:-3}
DB="target/bench/analyze-${ROWS}.sqlite"
TARGET_SECONDS=3
TARGET_MB=100

[ -x /usr/bin/time ] || { echo "analyze.sh: needs GNU time (/usr/bin/time, Debian package time)" >&2; exit 1; }

swb_build

if [ ! -f "$DB" ]; then
  echo "== generating $DB ($ROWS rows)" >&2
  mkdir -p target/bench
  python3 - "$DB.tmp" "$ROWS" <<'PY'
import sqlite3, sys
path, rows = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(path)
conn.execute("PRAGMA journal_mode=WAL")
conn.executescript("""
CREATE TABLE workflow_status (
    workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT, authenticated_user TEXT,
    assumed_role TEXT, authenticated_roles TEXT, request TEXT, output TEXT, error TEXT,
    executor_id TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    application_version TEXT, application_id TEXT, class_name TEXT, config_name TEXT,
    recovery_attempts INTEGER DEFAULT 0, queue_name TEXT, workflow_timeout_ms INTEGER,
    workflow_deadline_epoch_ms INTEGER, inputs TEXT, started_at_epoch_ms INTEGER,
    deduplication_id TEXT, priority INTEGER NOT NULL DEFAULT 0);
CREATE TABLE operation_outputs (
    workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL,
    function_name TEXT NOT NULL DEFAULT '', output TEXT, error TEXT, child_workflow_id TEXT,
    started_at_epoch_ms INTEGER, completed_at_epoch_ms INTEGER, serialization TEXT,
    application_name TEXT DEFAULT NULL, retention_timestamp INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_uuid, function_id));
""")
base = 1_763_600_000_000  # 2025-11-20T00:53:20Z, ms
workflows = rows // 5
STALL_EVERY = 20_000
STALL_MS = 107 * 60_000
def ops():
    for w in range(workflows):
        wf = f"{(w * 2654435761) % (1 << 32):08x}-{w:08d}-reply"
        t = base + w * 400
        yield (wf, 1, "parse_email", None, t, t + 150)
        recv_at = t + 152
        deadline = recv_at + 2 + 2_000
        yield (wf, 2, "DBOS.recv", None, recv_at, deadline + 3)
        yield (wf, 3, "DBOS.sleep", f"{deadline // 1000}.{deadline % 1000:03d}", recv_at + 2, recv_at + 3)
        g = deadline + 6 + (STALL_MS if w % STALL_EVERY == 7 else 0)
        yield (wf, 4, "generate_reply", None, g, g + 800)
        yield (wf, 5, "send_reply", None, g + 803, g + 900)
with conn:
    conn.executemany(
        "INSERT INTO workflow_status (workflow_uuid, status, name, created_at, updated_at) VALUES (?, 'SUCCESS', 'reply', ?, ?)",
        (((f"{(w * 2654435761) % (1 << 32):08x}-{w:08d}-reply"), base + w * 400, base + w * 400) for w in range(workflows)))
    conn.executemany(
        "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name, output, started_at_epoch_ms, completed_at_epoch_ms) VALUES (?, ?, ?, ?, ?, ?)",
        ops())
conn.execute("CREATE INDEX idx_operation_outputs_completed_at_function_name_v2 ON operation_outputs (completed_at_epoch_ms, function_name, application_name)")
conn.execute("CREATE INDEX workflow_status_created_at_index ON workflow_status (created_at)")
conn.commit()
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.close()
PY
  mv "$DB.tmp" "$DB"
fi

rows_in_db=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from operation_outputs').fetchone()[0])" "$DB")
planted=$(( (ROWS / 5 - 7 + 20000 - 1) / 20000 ))
echo "== $DB: $rows_in_db operation_outputs rows, $(du -m "$DB" | cut -f1) MB, $planted planted 107-minute gaps"

"$BIN" analyze --source "$DB" --gap-min 60s --format json >/dev/null  # warm-up, unmeasured

summary() {  # figures file, label
  sort -n "$1" | awk -v n="$RUNS" -v ts="$TARGET_SECONDS" -v tm="$TARGET_MB" -v label="$2" '
    { wall[NR] = $1; if ($2 > rss) rss = $2 }
    END {
      median = wall[int((n + 1) / 2)]
      printf "%s: median wall %.2f s (target ≤ %d s: %s); peak RSS %.1f MB (target ≤ %d MB: %s)\n",
        label, median, ts, (median <= ts ? "met" : "NOT met"), rss / 1024, tm, (rss / 1024 <= tm ? "met" : "NOT met")
    }'
}

measure() {  # output file, command...
  local json=$1; shift
  /usr/bin/time -v "$@" >"$json" 2>"$TMP/time" || [ $? -le 3 ]
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$TMP/time" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
  rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TMP/time")
}

echo "== analyze"
printf '%-5s %10s %12s %8s %8s\n' run wall_s peak_rss_MB rows gaps
for i in $(seq 1 "$RUNS"); do
  measure "$TMP/json" "$BIN" analyze --source "$DB" --gap-min 60s --format json
  read -r rows gaps _ < <(python3 -c "
import json,sys; v=json.load(open(sys.argv[1]))
print(v['rows'], v['step_gaps'] + v['wait_overruns'], v['longest'][0]['duration_seconds'] if v['longest'] else 0)" "$TMP/json")
  printf '%-5s %10.2f %12.1f %8s %8s\n' "$i" "$wall" "$(echo "$rss_kb / 1024" | bc -l)" "$rows" "$gaps"
  echo "$wall $rss_kb" >>"$TMP/figures"
  if [ "$rows" != "$rows_in_db" ] || [ "$gaps" != "$planted" ]; then
    echo "analyze.sh: analyze read $rows rows (want $rows_in_db) and found $gaps gaps (want $planted)" >&2
    exit 1
  fi
done

# verify --source: the history's first and last completion split it in two windows.
read -r first_s mid_s last_s < <(python3 -c "
import sqlite3,sys; c=sqlite3.connect('file:'+sys.argv[1]+'?immutable=1', uri=True)
a,b=c.execute('select min(started_at_epoch_ms), max(completed_at_epoch_ms) from operation_outputs').fetchone()
a//=1000; b=b//1000+1; print(a, (a+b)//2, b)" "$DB")
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
echo "== verify --source (before $(iso "$first_s")..$(iso "$mid_s"), after $(iso "$mid_s")..$(iso "$last_s"))"
printf '%-5s %10s %12s %8s %8s %s\n' run wall_s peak_rss_MB rows gaps verdict
for i in $(seq 1 "$RUNS"); do
  measure "$TMP/vjson" "$BIN" verify --source "$DB" --gap-min 60s --format json \
    --before "$(iso "$first_s")..$(iso "$mid_s")" --after "$(iso "$mid_s")..$(iso "$last_s")"
  read -r rows gaps verdict < <(python3 -c "
import json,sys; v=json.load(open(sys.argv[1])); a=v['app_history']
print(a['records'], sum(w['gaps'] for w in a['windows']), v['verdict'].replace(' ', '_'))" "$TMP/vjson")
  printf '%-5s %10.2f %12.1f %8s %8s %s\n' "$i" "$wall" "$(echo "$rss_kb / 1024" | bc -l)" "$rows" "$gaps" "$verdict"
  echo "$wall $rss_kb" >>"$TMP/vfigures"
  if [ "$rows" != "$rows_in_db" ] || [ "$gaps" != "$planted" ]; then
    echo "analyze.sh: verify --source read $rows rows (want $rows_in_db) and found $gaps gaps (want $planted)" >&2
    exit 1
  fi
done
summary "$TMP/figures" "analyze"
summary "$TMP/vfigures" "verify --source"
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo), $(uname -r)"
