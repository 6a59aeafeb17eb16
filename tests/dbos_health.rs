//! Issue 9, real DBOS: DBOS health beyond step gaps. A DBOS app from PyPI
//! (`tests/dbos/app.py` in mode `health`, in the venv `scripts/dbos-venv.sh` makes) writes
//! its SQLite system database while the sidecar watches it as a `dbos` source.
//!
//! - A workflow stopped (SIGSTOP) for 6 s inside a `DBOS.recv` with a 2 s timeout: while the
//!   process is still stopped and the deadline has passed by more than `gap_min`, a live
//!   `wait_overrun` episode is in `/api/v1/episodes` and `stallwatch_waits_overdue` is 1;
//!   after SIGCONT the same episode (same id, `started_at` = the deadline) holds the whole
//!   overrun DBOS recorded, and `waits_overdue` is 0 again.
//! - An app SIGKILLed while a workflow is PENDING, then started again several times (DBOS
//!   recovers it at every launch): `stallwatch_dbos_recovery_attempts_max` climbs with each
//!   restart, always equal to DBOS's own `max(recovery_attempts)` of PENDING workflows,
//!   and so does `recovery_attempts_max` in `/api/v1/status`; the sidecar's own
//!   `recovery_loop` alert reaches its webhook once, at the threshold, and resolves when
//!   the workflow finally completes.
//! - A queue with concurrency 1 whose running workflow blocks inside a step past
//!   `stall_after` while three more are ENQUEUED: `stallwatch_queue_blocked` is 1, the
//!   oldest ENQUEUED age grows, `/api/v1/status` and the `queue_blocked` alert delivered
//!   to a webhook name the blocking workflow; all clear (the alert resolves) when the step
//!   finishes.
//! - A DBOS SQLite DB left in DBOS's default rollback-journal mode is reported as
//!   `journal_mode="delete"` in `stallwatch_source_info` and `/api/v1/status`, and the log
//!   says so once, with the fix.
//!
//! Every expected value is read from what DBOS wrote (`workflow_status`,
//! `operation_outputs`, read-only with rusqlite), not assumed. Nothing is skipped: without
//! Python or the venv the tests fail, saying what is missing.

mod common;

use common::receiver::{Received, Receiver as WebhookReceiver};

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::dbos::{App, Journal, Mode, SystemDb};
use common::dbos_history::{open_read_only, wait_deadline};
use common::{assert_near, poll_until, process_state, Episode, Launch, Sidecar};
use tempfile::TempDir;

/// The source name in the sidecar's config.
const SOURCE: &str = "app";
/// Poll interval and shortest recorded gap or overrun (the brief's config).
const POLL: &str = "300ms";
const GAP_MIN_SECONDS: f64 = 1.0;
const GAP_MIN: &str = "1s";
/// `stall_after` of the blocked-queue test.
const STALL_AFTER_SECONDS: f64 = 2.0;
const STALL_AFTER: &str = "2s";

/// The recv's timeout in the app (`RECV_TIMEOUT_SECONDS`).
const RECV_TIMEOUT_SECONDS: f64 = 2.0;
/// How far into the recv the app is stopped, and for how long.
const STOP_INTO_WAIT_SECONDS: f64 = 0.5;
const STOP: Duration = Duration::from_secs(6);
/// What the overrun should be: the stop ends 6 − 0.5 − 2 s after the deadline.
const EXPECTED_OVERRUN_SECONDS: f64 = 6.0 - (RECV_TIMEOUT_SECONDS - STOP_INTO_WAIT_SECONDS);
/// Tolerance against the test's own clock readings (the brief's ± 0.5 s).
const OVERRUN_TOLERANCE_SECONDS: f64 = 0.5;
/// Tolerance against what DBOS recorded: the sidecar reads the same rows.
const DB_TOLERANCE_SECONDS: f64 = 0.010;
/// `started_at` in the API has millisecond resolution.
const STARTED_AT_TOLERANCE_SECONDS: f64 = 0.0015;

/// Restarts after the first run in the recovery-loop test: attempts go 1, 2, 3, 4.
const RESTARTS: usize = 3;
/// The alert's threshold (alerts/stallwatch.rules.yml, StallwatchDbosRecoveryLoop).
const RECOVERY_ALERT_THRESHOLD: i64 = 3;
/// Workflows enqueued behind the blocking one.
const WAITING: usize = 3;

/// A workflow step or phase of the app, including a queue dequeue (polled every 0.2 s)
/// and, after a restart, the recovery dequeue (DBOS's internal queue polls every 1 s).
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Until the sidecar's metrics or status show what DBOS has written: a few 300 ms polls.
const METRICS_TIMEOUT: Duration = Duration::from_secs(20);
/// Until a finished overrun is attributed: the merge window plus 2 s after it ends.
const EPISODE_TIMEOUT: Duration = Duration::from_secs(30);

// ---- (a) a wait overrun, visible while it is happening ------------------------------------

#[test]
fn live_wait_overrun_is_visible_while_the_app_is_still_stopped() {
    let (setup, mut app) = Setup::new(Journal::Wal, &[]);
    let workflow_id = app.run("wait", "w1", &[]);
    app.expect_phase("waiting", "w1");

    // The placeholder row DBOS writes as the wait starts holds its deadline.
    let deadline = poll_until("DBOS's wait placeholder row", PHASE_TIMEOUT, || {
        wait_deadline(&setup.db, &workflow_id).ok_or_else(|| "no DBOS.sleep row yet".to_string())
    });
    let wait_started = deadline - RECV_TIMEOUT_SECONDS;
    let stop_at = wait_started + STOP_INTO_WAIT_SECONDS;
    std::thread::sleep(Duration::from_secs_f64((stop_at - now_secs()).max(0.0)));
    let pid = app.pid();
    common::signal(pid, libc::SIGSTOP);
    let stopped_at = now_secs();
    let t0 = Instant::now();
    assert!(
        stopped_at < deadline - 0.5,
        "the app was stopped only {:.3} s before its wait's deadline (wanted {STOP_INTO_WAIT_SECONDS} s \
         into a {RECV_TIMEOUT_SECONDS} s wait): the machine is too slow for this test",
        deadline - stopped_at
    );
    common::wait_stopped("the app", pid);

    // While it is still stopped: the live episode and the gauge. Leave 0.5 s before SIGCONT.
    let live_timeout = STOP.saturating_sub(t0.elapsed() + Duration::from_millis(500));
    let overdue = overdue_series();
    let first = poll_until(
        "a live wait_overrun episode and waits_overdue 1 while the app is stopped",
        live_timeout,
        || {
            let m = setup.sidecar.metrics();
            let live = overruns(&setup.sidecar, &workflow_id);
            match (live.as_slice(), m.value(&overdue)) {
                ([e], Some(1.0)) => Ok(e.clone()),
                (other, gauge) => Err(format!("{overdue} = {gauge:?}; episodes {other:#?}")),
            }
        },
    );
    let seen_at = now_secs();
    assert_eq!(
        process_state(pid),
        Some('T'),
        "the live episode must be seen while the app is still stopped"
    );
    eprintln!(
        "deadline {deadline:.3}; stopped at {stopped_at:.3}; live episode seen {:.3} s past the \
         deadline: {first:?}",
        seen_at - deadline
    );
    assert!(
        seen_at - deadline > GAP_MIN_SECONDS,
        "seen {:.3} s past the deadline",
        seen_at - deadline
    );
    assert_eq!(
        (
            first.kind.as_str(),
            first.workflow_name.as_str(),
            first.from_step.as_str(),
            first.to_step.as_str(),
            first.cause.as_str()
        ),
        ("wait_overrun", "waiter", "DBOS.sleep", "", "stall"),
        "{first:#?}"
    );
    assert_started_at("the live episode's started_at", &first, deadline);
    assert!(
        first.duration_seconds >= GAP_MIN_SECONDS && first.duration_seconds <= seen_at - deadline,
        "a live overrun is at least gap_min ({GAP_MIN_SECONDS} s) and at most how late the wait is \
         now ({:.3} s): {first:#?}",
        seen_at - deadline
    );
    // The live row keeps growing while the app stays stopped.
    let grown = poll_until(
        "the live episode to grow while the app is stopped",
        STOP.saturating_sub(t0.elapsed() + Duration::from_millis(300)),
        || match overruns(&setup.sidecar, &workflow_id).as_slice() {
            [e] if e.duration_seconds > first.duration_seconds => Ok(e.clone()),
            other => Err(format!("{other:#?}")),
        },
    );
    assert_eq!(grown.id, first.id, "the live episode is updated, not added");
    assert_eq!(process_state(pid), Some('T'), "still stopped");
    assert_eq!(
        setup
            .sidecar
            .metrics()
            .expect(&wait_overruns_total("stall")),
        0.0,
        "a live overrun is counted once, when it ends"
    );

    std::thread::sleep(STOP.saturating_sub(t0.elapsed()));
    common::signal(pid, libc::SIGCONT);
    let resumed_at = now_secs();
    app.expect_phase("done", "w1");

    // What DBOS recorded: the recv row ends when the process woke up.
    let recv_completed = recv_completed(&setup.db, &workflow_id);
    let recorded = recv_completed - deadline;
    eprintln!(
        "stopped {:.3} s; DBOS: recv completed {:.3} s after the deadline; test clock: resumed \
         {:.3} s after it",
        resumed_at - stopped_at,
        recorded,
        resumed_at - deadline
    );
    let last = poll_until(
        "the overrun to be settled with DBOS's recv row",
        EPISODE_TIMEOUT,
        || {
            let all = overruns(&setup.sidecar, &workflow_id);
            match all.as_slice() {
                // Settled: the recv row's steps, not only its length (the live row, grown
                // to the resume, can already be as long as the recorded one).
                [e] if (e.duration_seconds - recorded).abs() <= DB_TOLERANCE_SECONDS
                    && !e.to_step.is_empty() =>
                {
                    Ok(e.clone())
                }
                other => Err(format!("want one of {recorded:.3} s: {other:#?}")),
            }
        },
    );
    assert_eq!(
        last.id, first.id,
        "the finished overrun updates the live row: {last:#?}"
    );
    assert_started_at("the finished episode's started_at", &last, deadline);
    assert_eq!(
        (
            last.from_step.as_str(),
            last.to_step.as_str(),
            last.cause.as_str()
        ),
        ("DBOS.recv", "DBOS.recv", "stall"),
        "{last:#?}"
    );
    assert_near(
        "overrun vs the test's stop",
        last.duration_seconds,
        resumed_at - deadline,
        OVERRUN_TOLERANCE_SECONDS,
    );
    assert_near(
        "overrun vs 6 s stopped 0.5 s into a 2 s wait",
        last.duration_seconds,
        EXPECTED_OVERRUN_SECONDS,
        OVERRUN_TOLERANCE_SECONDS,
    );

    let m = poll_until("waits_overdue back to 0", METRICS_TIMEOUT, || {
        let m = setup.sidecar.metrics();
        match m.value(&overdue) {
            Some(0.0) => Ok(m),
            other => Err(format!("{overdue} = {other:?}")),
        }
    });
    assert_eq!(m.expect(&wait_overruns_total("stall")), 1.0);
    assert_eq!(m.expect(&wait_overruns_total("freeze")), 0.0);
    assert_eq!(
        m.expect(&format!(
            "stallwatch_wait_overrun_seconds_count{{source=\"{SOURCE}\"}}"
        )),
        1.0
    );
    assert_near(
        "stallwatch_wait_overrun_seconds_sum",
        m.expect(&format!(
            "stallwatch_wait_overrun_seconds_sum{{source=\"{SOURCE}\"}}"
        )),
        recorded,
        DB_TOLERANCE_SECONDS,
    );
    // Still exactly one, with nothing else recorded for the workflow.
    let all: Vec<Episode> = setup
        .sidecar
        .episodes(SOURCE)
        .into_iter()
        .filter(|e| e.workflow_id == workflow_id)
        .collect();
    assert_eq!(all.len(), 1, "{all:#?}");
    app.quit();
}

// ---- (b) a recovery loop ------------------------------------------------------------------

#[test]
fn recovery_loop_climbs_with_each_crash() {
    let (setup, mut app) = Setup::new(Journal::Wal, &[]);
    let release = setup.dir.path().join("release-b1");
    let release_arg = release.to_string_lossy().to_string();
    let workflow_id = app.run("block", "b1", &[&release_arg]);
    app.expect_phase("blocking", "b1");
    let mut observed = vec![agree_on_recovery_attempts(&setup)];
    app.kill();

    for restart in 1..=RESTARTS {
        // DBOS.launch() re-enqueues the PENDING workflow; its internal queue runs it again,
        // counting the dispatch in recovery_attempts. Crash while it is in the step again.
        let mut app = setup.start_app(Journal::Wal);
        let phase = app.expect_phase("blocking", "b1");
        assert_eq!(
            phase[3], workflow_id,
            "restart {restart} ran another workflow"
        );
        observed.push(agree_on_recovery_attempts(&setup));
        app.kill();
    }
    eprintln!("recovery_attempts_max after each start: {observed:?}");
    assert!(
        observed.len() > RESTARTS && observed.windows(2).all(|w| w[0] < w[1]),
        "stallwatch_dbos_recovery_attempts_max must climb with each restart: {observed:?}"
    );
    assert!(
        *observed.last().unwrap() >= RECOVERY_ALERT_THRESHOLD,
        "the loop reached the alert threshold: {observed:?}"
    );
    // The sidecar's own alert fired once, when the count reached the threshold, and not
    // again as it climbed past it.
    let fired = setup
        .hook
        .wait_until("the recovery-loop alert", METRICS_TIMEOUT, |r| {
            !alerts_of(r, "recovery_loop", "firing").is_empty()
        });
    let firing = alerts_of(&fired, "recovery_loop", "firing");
    assert_eq!(firing.len(), 1, "fired once: {firing:#?}");
    assert_eq!(firing[0].json()["data"]["labels"]["source"], SOURCE);

    // Let it finish: nothing PENDING is left, the gauge drops to 0.
    fs::write(&release, b"go").unwrap();
    let mut app = setup.start_app(Journal::Wal);
    app.expect_phase("done", "b1");
    poll_until("DBOS to finish the workflow", PHASE_TIMEOUT, || {
        match db_max_pending_recovery_attempts(&setup.db) {
            None => Ok(()),
            Some(n) => Err(format!("still PENDING with recovery_attempts {n}")),
        }
    });
    setup
        .hook
        .wait_until("the recovery-loop alert to resolve", METRICS_TIMEOUT, |r| {
            !alerts_of(r, "recovery_loop", "resolved").is_empty()
        });
    assert_eq!(
        alerts_of(&setup.hook.requests(), "recovery_loop", "firing").len(),
        1,
        "no second firing"
    );
    poll_until(
        "recovery_attempts_max 0 with nothing pending",
        METRICS_TIMEOUT,
        || {
            let (metric, status) = recovery_attempts(&setup.sidecar);
            match (metric, status) {
                (Some(0.0), Some(0)) => Ok(()),
                other => Err(format!("(metric, status) = {other:?}")),
            }
        },
    );
    app.quit();
}

/// Waits until the metric and `/api/v1/status` show DBOS's `max(recovery_attempts)` of
/// PENDING workflows, and returns it.
#[track_caller]
fn agree_on_recovery_attempts(setup: &Setup) -> i64 {
    let db_value = db_max_pending_recovery_attempts(&setup.db)
        .unwrap_or_else(|| panic!("DBOS has no PENDING workflow while one is blocked in a step"));
    poll_until(
        &format!("recovery_attempts_max = {db_value} as in DBOS"),
        METRICS_TIMEOUT,
        || match recovery_attempts(&setup.sidecar) {
            (Some(m), Some(s)) if m == db_value as f64 && s == db_value => Ok(()),
            other => Err(format!("(metric, status) = {other:?}, DBOS {db_value}")),
        },
    );
    db_value
}

/// The webhook notifications of `rule` with notification kind `kind`.
fn alerts_of<'a>(requests: &'a [Received], rule: &str, kind: &str) -> Vec<&'a Received> {
    requests
        .iter()
        .filter(|r| r.json()["data"]["rule"] == rule && r.json()["data"]["kind"] == kind)
        .collect()
}

/// `stallwatch_dbos_recovery_attempts_max{source}` and the status's `recovery_attempts_max`.
fn recovery_attempts(sidecar: &Sidecar) -> (Option<f64>, Option<i64>) {
    let metric = sidecar.metrics().value(&format!(
        "stallwatch_dbos_recovery_attempts_max{{source=\"{SOURCE}\"}}"
    ));
    let status = source_status(sidecar)["recovery_attempts_max"].as_i64();
    (metric, status)
}

// ---- (c) a blocked queue ------------------------------------------------------------------

#[test]
fn blocked_queue_names_the_blocking_workflow() {
    let (setup, mut app) = Setup::new(Journal::Wal, &[("stall_after", STALL_AFTER)]);
    let blocking = app.run("enqueue", "a", &["hold"]);
    app.expect_phase("working", "a");
    let mut behind = Vec::new();
    for label in ["b", "c", "d"] {
        behind.push((label, app.run("enqueue", label, &["free"])));
    }
    let statuses = db_statuses(&setup.db);
    assert_eq!(
        statuses.iter().filter(|s| s.1 == "ENQUEUED").count(),
        WAITING,
        "the three behind it wait: {statuses:?}"
    );
    // Its last progress: the `prepare` step before `work`, which is still running.
    let last_progress = db_last_completed(&setup.db, &blocking).expect("`prepare` row");

    let blocked = blocked_series();
    poll_until("queue q blocked", METRICS_TIMEOUT, || {
        match setup.sidecar.metrics().value(&blocked) {
            Some(1.0) => Ok(()),
            other => Err(format!("{blocked} = {other:?}")),
        }
    });
    let seen = now_secs();
    assert!(
        seen - last_progress > STALL_AFTER_SECONDS,
        "blocked only {:.3} s after its workflow's last step: not past stall_after",
        seen - last_progress
    );
    let status = source_status(&setup.sidecar);
    let queues = status["blocked_queues"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "blocked {:.3} s after the last step: {queues:?}",
        seen - last_progress
    );
    assert_eq!(queues.len(), 1, "{status:#}");
    let q = &queues[0];
    assert_eq!(
        (
            q["queue"].as_str(),
            q["blocking_workflow_id"].as_str(),
            q["blocking_workflow_name"].as_str(),
            q["waiting"].as_u64()
        ),
        (
            Some("q"),
            Some(blocking.as_str()),
            Some("queued"),
            Some(WAITING as u64)
        ),
        "{q:#}"
    );
    // The sidecar's own alert names the blocking workflow.
    let fired = setup
        .hook
        .wait_until("the queue-blocked alert", METRICS_TIMEOUT, |r| {
            !alerts_of(r, "queue_blocked", "firing").is_empty()
        });
    let alert = alerts_of(&fired, "queue_blocked", "firing")[0].json();
    let text = alert["data"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(blocking.as_str()),
        "names the workflow: {alert:#}"
    );
    assert_eq!(alert["data"]["labels"]["queue"], "q", "{alert:#}");
    let idle = q["idle_seconds"].as_f64().unwrap_or(-1.0);
    assert!(
        idle > STALL_AFTER_SECONDS && idle <= now_secs() - last_progress + 0.1,
        "idle_seconds {idle} vs {:.3} s since the last step",
        now_secs() - last_progress
    );

    // The oldest ENQUEUED age: there and growing, as old as DBOS's oldest ENQUEUED row.
    let age_series = format!(
        "stallwatch_queue_oldest_age_seconds{{queue=\"q\",source=\"{SOURCE}\",status=\"ENQUEUED\"}}"
    );
    let first_age = setup.sidecar.metrics().expect(&age_series);
    let oldest_created = db_oldest_enqueued(&setup.db).expect("an ENQUEUED row");
    assert_near(
        "oldest ENQUEUED age vs DBOS's created_at",
        first_age,
        now_secs() - oldest_created,
        1.0,
    );
    let later = poll_until("the oldest ENQUEUED age to grow", METRICS_TIMEOUT, || {
        let age = setup.sidecar.metrics().expect(&age_series);
        if age >= first_age + 1.0 {
            Ok(age)
        } else {
            Err(format!("{age_series} = {age}, first {first_age}"))
        }
    });
    eprintln!("oldest ENQUEUED age {first_age:.3} s, then {later:.3} s");
    assert_eq!(
        setup.sidecar.metrics().expect(&blocked),
        1.0,
        "still blocked"
    );

    // The step finishes: everything drains and the queue is not blocked any more.
    app.command("go a");
    app.expect_phase("done", "a");
    for (label, _) in &behind {
        app.expect_phase("done", label);
    }
    let depth_series =
        format!("stallwatch_queue_depth{{queue=\"q\",source=\"{SOURCE}\",status=\"ENQUEUED\"}}");
    poll_until("queue q drained and not blocked", METRICS_TIMEOUT, || {
        let m = setup.sidecar.metrics();
        let status = source_status(&setup.sidecar);
        match (
            m.value(&blocked),
            status["blocked_queues"].as_array().map(Vec::len),
            m.value(&depth_series),
            m.value(&age_series),
        ) {
            (Some(0.0), Some(0), Some(0.0), None) => Ok(()),
            other => Err(format!(
                "({blocked}, blocked_queues, {depth_series}, {age_series}) = {other:?}"
            )),
        }
    });
    setup
        .hook
        .wait_until("the queue-blocked alert to resolve", METRICS_TIMEOUT, |r| {
            !alerts_of(r, "queue_blocked", "resolved").is_empty()
        });
    app.quit();
}

// ---- (d) the journal mode -----------------------------------------------------------------

#[test]
fn rollback_journal_mode_is_reported_in_metrics_status_and_once_in_the_log() {
    let (setup, app) = Setup::new(Journal::Default, &[]);
    let conn = open_read_only(&setup.db);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert_eq!(mode, "delete", "DBOS's default journal mode");

    let info = |mode: &str| {
        format!(
            "stallwatch_source_info{{journal_mode=\"{mode}\",kind=\"dbos\",source=\"{SOURCE}\"}}"
        )
    };
    poll_until("journal_mode delete reported", METRICS_TIMEOUT, || {
        let m = setup.sidecar.metrics();
        let status = source_status(&setup.sidecar);
        match (m.value(&info("delete")), status["journal_mode"].as_str()) {
            (Some(1.0), Some("delete")) => Ok(()),
            other => Err(format!(
                "({}, status journal_mode) = {other:?}",
                info("delete")
            )),
        }
    });
    // A few more polls: still one series, and the warning once.
    std::thread::sleep(Duration::from_secs(2));
    let m = setup.sidecar.metrics();
    let series: Vec<&str> =
        m.0.lines()
            .filter(|l| l.starts_with("stallwatch_source_info{"))
            .filter(|l| l.contains(&format!("source=\"{SOURCE}\"")))
            .collect();
    assert_eq!(series, vec![format!("{} 1", info("delete"))]);
    let log = setup.sidecar.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not in WAL mode"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "the rollback-journal warning, once:\n{log}"
    );
    assert!(
        warnings[0].contains("PRAGMA journal_mode=WAL")
            && warnings[0].contains("journal_mode=delete"),
        "the warning names the mode and the fix: {}",
        warnings[0]
    );
    app.quit();
}

// ---- the sidecar's answers ----------------------------------------------------------------

/// The `wait_overrun` episodes of one workflow.
#[track_caller]
fn overruns(sidecar: &Sidecar, workflow_id: &str) -> Vec<Episode> {
    sidecar
        .episodes(SOURCE)
        .into_iter()
        .filter(|e| e.kind == "wait_overrun" && e.workflow_id == workflow_id)
        .collect()
}

#[track_caller]
fn assert_started_at(what: &str, e: &Episode, deadline: f64) {
    let t = humantime::parse_rfc3339(&e.started_at)
        .unwrap_or_else(|err| panic!("{what}: {:?} is not RFC 3339: {err}", e.started_at));
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert_near(what, secs, deadline, STARTED_AT_TOLERANCE_SECONDS);
}

/// The source's entry in `/api/v1/status`.
#[track_caller]
fn source_status(sidecar: &Sidecar) -> serde_json::Value {
    let status = sidecar.status();
    status["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == SOURCE))
        .cloned()
        .unwrap_or_else(|| panic!("/api/v1/status has no source {SOURCE}: {status:#}"))
}

fn overdue_series() -> String {
    format!("stallwatch_waits_overdue{{source=\"{SOURCE}\"}}")
}

fn blocked_series() -> String {
    format!("stallwatch_queue_blocked{{queue=\"q\",source=\"{SOURCE}\"}}")
}

fn wait_overruns_total(cause: &str) -> String {
    format!("stallwatch_wait_overruns_total{{cause=\"{cause}\",source=\"{SOURCE}\"}}")
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- what DBOS wrote ----------------------------------------------------------------------

/// When the `DBOS.recv` row of a workflow completed, in epoch seconds.
#[track_caller]
fn recv_completed(db: &Path, workflow_id: &str) -> f64 {
    let ms: i64 = open_read_only(db)
        .query_row(
            "SELECT completed_at_epoch_ms FROM operation_outputs WHERE workflow_uuid = ?1 \
             AND function_name = 'DBOS.recv'",
            [workflow_id],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("DBOS has no DBOS.recv row for {workflow_id}: {e}"));
    ms as f64 / 1e3
}

/// The latest `completed_at` of a workflow's rows, in epoch seconds.
fn db_last_completed(db: &Path, workflow_id: &str) -> Option<f64> {
    let ms: Option<i64> = open_read_only(db)
        .query_row(
            "SELECT max(completed_at_epoch_ms) FROM operation_outputs WHERE workflow_uuid = ?1",
            [workflow_id],
            |r| r.get(0),
        )
        .unwrap();
    ms.map(|ms| ms as f64 / 1e3)
}

/// `max(recovery_attempts)` of the PENDING workflows, if any.
fn db_max_pending_recovery_attempts(db: &Path) -> Option<i64> {
    open_read_only(db)
        .query_row(
            "SELECT max(recovery_attempts) FROM workflow_status WHERE status = 'PENDING'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// `created_at` (epoch seconds) of the oldest ENQUEUED workflow on queue "q".
fn db_oldest_enqueued(db: &Path) -> Option<f64> {
    let ms: Option<i64> = open_read_only(db)
        .query_row(
            "SELECT min(created_at) FROM workflow_status WHERE status = 'ENQUEUED' \
             AND queue_name = 'q'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    ms.map(|ms| ms as f64 / 1e3)
}

/// Every workflow's id and status.
fn db_statuses(db: &Path) -> Vec<(String, String)> {
    let conn = open_read_only(db);
    let mut stmt = conn
        .prepare("SELECT workflow_uuid, status FROM workflow_status ORDER BY created_at")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

// ---- setup: venv, app, sidecar ------------------------------------------------------------

/// A temp dir, the path of a DBOS system DB in it, and a sidecar watching that DB.
struct Setup {
    // Field order is drop order: the sidecar goes before its directory.
    sidecar: Sidecar,
    /// The sidecar's alert channel: a webhook receiver.
    hook: WebhookReceiver,
    db: PathBuf,
    dir: TempDir,
}

impl Setup {
    /// Starts the app (it creates the DB and DBOS's tables), then a sidecar watching it
    /// with `extra` source keys; returns both once the source is up.
    fn new(journal: Journal, extra: &[(&str, &str)]) -> (Setup, App) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dbos.sqlite");
        let mut config = format!(
            "[[source]]\nname = \"{SOURCE}\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n\
             poll = \"{POLL}\"\ngap_min = \"{GAP_MIN}\"\n",
            db.display()
        );
        for (key, value) in extra {
            config.push_str(&format!("{key} = \"{value}\"\n"));
        }
        // The sidecar's own alerts for these conditions, to a webhook receiver.
        let hook = WebhookReceiver::start();
        config.push_str(&format!(
            "[alerts]\ngroup_wait = \"0s\"\n\n[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\
             [[rule]]\nrule = \"queue_blocked\"\nresolve_after = \"0s\"\n\
             [[rule]]\nrule = \"recovery_loop\"\nresolve_after = \"0s\"\n\
             threshold = {RECOVERY_ALERT_THRESHOLD}\n",
            hook.url("/hook")
        ));
        let app = App::start(Mode::Health, SystemDb::Sqlite(&db, journal), dir.path());
        let sidecar = Sidecar::start_with(
            &dir.path().join("data"),
            &Launch {
                config: Some(config),
                env: Vec::new(),
            },
        );
        poll_until(
            "the dbos source to be up",
            METRICS_TIMEOUT,
            || match sidecar
                .metrics()
                .value(&format!("stallwatch_source_up{{source=\"{SOURCE}\"}}"))
            {
                Some(1.0) => Ok(()),
                other => Err(format!("source_up = {other:?}")),
            },
        );
        (
            Setup {
                sidecar,
                hook,
                db,
                dir,
            },
            app,
        )
    }

    /// Starts the app again on the same DB (DBOS recovers what a killed run left PENDING).
    fn start_app(&self, journal: Journal) -> App {
        App::start(
            Mode::Health,
            SystemDb::Sqlite(&self.db, journal),
            self.dir.path(),
        )
    }
}
