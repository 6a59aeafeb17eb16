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
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
swb_init stallwatch-soak
SWB_STOP_GRACE_S=10 # the demo is the app, its worker and the sidecar in one process

SOAK_SECONDS=${SOAK_SECONDS:-7200}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-60}
SCRAPE_SECONDS=${SCRAPE_SECONDS:-15}
WARMUP_SECONDS=${WARMUP_SECONDS:-600}

swb_build

PORT=$(swb_free_ports 1)
URL="http://127.0.0.1:$PORT"

# TMPDIR: the demo puts its app in the temp dir; keep it inside ours.
swb_spawn "$TMP/demo.log" env TMPDIR="$TMP" "$BIN" demo --listen "127.0.0.1:$PORT"
DEMO_PID=$SWB_LAST_PID
swb_wait_ready "$URL/readyz" "$DEMO_PID" "the demo" "$TMP/demo.log"

# Prometheus's request: OpenMetrics or text, gzip.
(
    while sleep "$SCRAPE_SECONDS"; do
        curl -fsS --compressed \
            -H 'Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4' \
            "$URL/metrics" -o /dev/null || true
    done
) &
SWB_PIDS+=("$!")

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
    swb_running "$DEMO_PID" || { echo "the demo died:"; tail -20 "$TMP/demo.log"; exit 1; }
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
