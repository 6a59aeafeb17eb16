#!/usr/bin/env bash
# benches/soak.sh — does stallwatch's memory level off? A long run of `stallwatch demo`
# (its synthetic app and worker feeding the demo's five sources: DBOS, a queue table,
# a task table with leases, a JSONL spend log and an operator's SQL query), scraped
# every 15 s as Prometheus would, sampled once a minute.
#
#   bash benches/soak.sh                    # 2 h, from the repo root
#   SOAK_SECONDS=1800 bash benches/soak.sh  # a shorter look
#
# Every minute it prints: minutes since start, VmRSS (MiB), open fds, threads, and the
# workflows the demo's DBOS source has seen so far (from /metrics), so memory that grows
# with workflows seen shows where it levels off. At the end: the RSS slope, by least
# squares over the samples after the first WARMUP_SECONDS (10 min), in MB/h, against
# the target of ≤ 0.1 MB/h, and the same slope for fds and threads.
#
# It PRINTS figures; it never fails on one (exit 0 unless the demo could not start).
# The process measured is the whole demo (app writer, worker and sidecar in one
# process), as a user running the demo sees it.
#
# Environment: SOAK_SECONDS (7200), SAMPLE_SECONDS (60), SCRAPE_SECONDS (15),
# WARMUP_SECONDS (600), CARGO_TARGET_DIR (target; the release build goes there),
# KEEP_TMP (0: delete the temp dir with the demo's log at exit).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SOAK_SECONDS=${SOAK_SECONDS:-7200}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-60}
SCRAPE_SECONDS=${SCRAPE_SECONDS:-15}
WARMUP_SECONDS=${WARMUP_SECONDS:-600}
KEEP_TMP=${KEEP_TMP:-0}
TARGET=${CARGO_TARGET_DIR:-target}

TMP=$(mktemp -d -t stallwatch-soak.XXXXXX)
DEMO_PID=
SCRAPER_PID=

cleanup() {
    trap - EXIT INT TERM
    [ -n "$SCRAPER_PID" ] && kill "$SCRAPER_PID" 2>/dev/null || true
    if [ -n "$DEMO_PID" ]; then
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$DEMO_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
    fi
    if [ "$KEEP_TMP" = 1 ]; then
        echo "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT INT TERM

echo "building the release binary ..."
cargo build --release --quiet --bin stallwatch
BIN="$TARGET/release/stallwatch"

# A port the OS says is free now.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

# TMPDIR: the demo puts its app in the temp dir; keep it inside ours.
TMPDIR="$TMP" "$BIN" demo --listen "127.0.0.1:$PORT" >"$TMP/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 300); do
    curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$DEMO_PID" 2>/dev/null || { echo "the demo exited:"; cat "$TMP/demo.log"; exit 1; }
    sleep 0.1
done
curl -fsS "$URL/readyz" >/dev/null || { echo "the demo never became ready"; cat "$TMP/demo.log"; exit 1; }

# Prometheus's request: OpenMetrics or text, gzip.
(
    while sleep "$SCRAPE_SECONDS"; do
        curl -fsS --compressed \
            -H 'Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4' \
            "$URL/metrics" -o /dev/null || true
    done
) &
SCRAPER_PID=$!

workflows_seen() {
    # Completed steps the DBOS source has timed, summed over step names: grows with the
    # workflows the demo runs.
    curl -fsS "$URL/metrics" 2>/dev/null |
        awk '/^stallwatch_step_duration_seconds_count\{.*source="demo-dbos"/ { n += $NF } END { printf "%d", n }'
}

sample() {
    local t=$1 rss fds threads
    rss=$(awk '/^VmRSS:/ { printf "%.2f", $2 / 1024 }' "/proc/$DEMO_PID/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$DEMO_PID/status")
    fds=$(find "/proc/$DEMO_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%8.1f %10s %6s %8s %12s\n' "$(awk -v t="$t" 'BEGIN { print t / 60 }')" "$rss" "$fds" "$threads" "$(workflows_seen)"
    echo "$t $rss $fds $threads" >>"$TMP/samples"
}

echo "soak: stallwatch demo (pid $DEMO_PID) for ${SOAK_SECONDS}s, scraped every ${SCRAPE_SECONDS}s, sampled every ${SAMPLE_SECONDS}s"
printf '%8s %10s %6s %8s %12s\n' minutes rss_mib fds threads steps_seen
START=$(date +%s)
sample 0
while :; do
    NOW=$(date +%s)
    ELAPSED=$((NOW - START))
    [ "$ELAPSED" -ge "$SOAK_SECONDS" ] && break
    NEXT=$(((ELAPSED / SAMPLE_SECONDS + 1) * SAMPLE_SECONDS))
    sleep $((NEXT - ELAPSED))
    kill -0 "$DEMO_PID" 2>/dev/null || { echo "the demo died:"; tail -20 "$TMP/demo.log"; exit 1; }
    sample "$(($(date +%s) - START))"
done

# Least-squares slope of column $2 against time (s), samples after the warm-up, per hour.
slope() {
    awk -v col="$1" -v warm="$WARMUP_SECONDS" '
        $1 >= warm { n++; x = $1 / 3600; y = $col; sx += x; sy += y; sxx += x * x; sxy += x * y }
        END {
            if (n < 3 || n * sxx - sx * sx == 0) { print "n/a"; exit }
            printf "%.3f", (n * sxy - sx * sy) / (n * sxx - sx * sx)
        }' "$TMP/samples"
}

RSS_SLOPE=$(slope 2)
FD_SLOPE=$(slope 3)
THREAD_SLOPE=$(slope 4)
FIRST=$(awk -v warm="$WARMUP_SECONDS" '$1 >= warm { print $2; exit }' "$TMP/samples")
LAST=$(tail -1 "$TMP/samples" | awk '{ print $2 }')
echo
echo "after the first $((WARMUP_SECONDS / 60)) min: RSS ${FIRST:-n/a} → ${LAST} MiB"
echo "RSS slope:     ${RSS_SLOPE} MiB/h (target ≤ 0.1)"
echo "fd slope:      ${FD_SLOPE} fds/h"
echo "thread slope:  ${THREAD_SLOPE} threads/h"
if [ "$RSS_SLOPE" != n/a ]; then
    awk -v s="$RSS_SLOPE" 'BEGIN { print (s <= 0.1 ? "PASS" : "MISS") " rss slope " s " MiB/h vs 0.1" }'
fi
