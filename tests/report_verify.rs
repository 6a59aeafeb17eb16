//! Issue 8, `stallwatch verify` and `stallwatch report` on state DBs written by this test
//! through `stallwatch::state::StateDb` with known freeze histories.
//!
//! - `verify_verdicts_and_exit_codes_where_expected`: 10 lost-time freezes in a 30-day
//!   before window (λ = 1/3 per day). A quiet 10-day after window: P(0 | 10/3) = 0.0357 →
//!   FIXED, exit 0. A quiet 5-day one: P(0 | 5/3) = 0.189 → NOT ENOUGH DATA, exit 3, and
//!   it needs ln(20)/λ = 8.99 days. Three freezes in 10 days: P(X ≤ 3 | 10/3) = 0.573 →
//!   NOT FIXED, exit 1. Wall-clock steps after are shown and not counted. At λ = 1/day,
//!   two freezes in 10 days: P(X ≤ 2 | 10) = 61 e^-10 → FIXED (clearly lower), exit 0.
//!   No freeze in either window → NOT ENOUGH DATA. Evidence (counts, frozen s/day, gap
//!   p99, window lengths) is checked to the value.
//! - `coverage_ends_at_the_last_heartbeat`: the sidecar stopped (clean heartbeat) 5 days
//!   into the quiet 10-day after window: only 5 days are covered → NOT ENOUGH DATA.
//! - `migrated_at_compares_everything_before_with_since`: `--migrated-at T`; the before
//!   window starts with the first watch session, and every freeze in it counts.
//! - `report_of_a_window_counts_kinds_and_causes_and_draws_a_self_contained_timeline`:
//!   text, JSON, Markdown and HTML (inline CSS and SVG, nothing external) of one window;
//!   the state DB file is not modified.
//! - `report_on_an_empty_or_missing_state_db`: a new state DB says "no data in this
//!   window" (exit 0); a data dir without one is one sentence, exit 2, and nothing is
//!   created; a newer schema and a corrupt file are one sentence, exit 2.
//! - `report_reads_a_state_db_in_a_directory_it_cannot_write`: another user (nobody),
//!   with read access only, reads a stopped sidecar's WAL-mode state DB.
//! - `bad_windows_are_one_sentence_and_exit_2`: `--since` after `--until`, times that are
//!   not times, overlapping or reversed verify windows, a migration in the future.
//! - `report_over_a_year_of_history_is_quick`: 10,000 freezes and 10,000 episodes over a
//!   year (plus the heartbeat), HTML report of the whole year: prints the time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{run_to_exit, Finished};
use serde_json::Value;
use stallwatch::clock::ClockReading;
use stallwatch::freeze::downtime::Heartbeat;
use stallwatch::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
use stallwatch::signals::attribution::Cause;
use stallwatch::signals::episode::{Episode, EpisodeKind};
use stallwatch::state::{StateDb, STATE_DB_FILE};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// RFC 3339 to the second (the test's windows are whole seconds).
fn at(ns: i64) -> String {
    assert_eq!(ns % S, 0, "whole seconds only");
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns as u64)).to_string()
}

fn window(from: i64, to: i64) -> String {
    format!("{}..{}", at(from), at(to))
}

/// A state DB in a temp data dir.
struct State {
    dir: TempDir,
    db: Option<StateDb>,
}

impl State {
    fn new() -> State {
        let dir = TempDir::new().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        State { dir, db: Some(db) }
    }

    fn db(&self) -> &StateDb {
        self.db.as_ref().unwrap()
    }

    fn freeze(&self, kind: FreezeKind, start_ns: i64, seconds: i64) -> i64 {
        let event = FreezeEvent {
            kind,
            started_at_ns: start_ns,
            duration_ns: seconds * S,
            channels: vec![ChannelEstimate {
                channel: "rtc".into(),
                estimate_ns: seconds * S,
            }],
        };
        self.db()
            .insert_event(&event, start_ns + seconds.abs() * S)
            .unwrap()
    }

    fn episode(
        &self,
        kind: EpisodeKind,
        cause: Cause,
        workflow: &str,
        start_ns: i64,
        seconds: i64,
    ) {
        let e = Episode {
            source: "app".into(),
            kind,
            workflow_id: workflow.into(),
            workflow_name: "reply".into(),
            from_step: "parse".into(),
            to_step: "generate".into(),
            started_at_ns: start_ns,
            duration_ns: seconds * S,
            cause,
        };
        assert!(self
            .db()
            .insert_episode(&e, start_ns + seconds * S)
            .unwrap());
    }

    fn heartbeat(&self, real_ns: i64, clean: bool) {
        self.db()
            .write_heartbeat(&Heartbeat {
                clocks: ClockReading {
                    mono_ns: 1,
                    real_ns,
                    boot_ns: 1,
                },
                boot_id: "boot".into(),
                clean,
            })
            .unwrap();
    }

    /// A run of the sidecar from `from_ns` to its last heartbeat at `to_ns`, as the
    /// sidecar records one: a session begun at its start, followed by its heartbeat.
    fn watched(&self, from_ns: i64, to_ns: i64, clean: bool) {
        self.db().begin_session(from_ns, None).unwrap();
        self.heartbeat(to_ns, clean);
    }

    /// Closes the writer (as a stopped sidecar would) and returns the data dir.
    fn close(&mut self) -> &Path {
        self.db = None;
        self.dir.path()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn run(dir: &Path, args: &[&str]) -> Finished {
    let mut all = vec![args[0], "--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    run_to_exit(all)
}

/// Runs `verify … --format json`; returns the exit code and the JSON.
#[track_caller]
fn verify(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let out = run(dir, &all);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.status.code().unwrap(), v)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[track_caller]
fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: {got}, want {want}"
    );
}

/// P(X ≤ k | mu), written out independently of the crate.
fn poisson_cdf(k: u64, mu: f64) -> f64 {
    let mut term = (-mu).exp();
    let mut sum = term;
    for i in 1..=k {
        term *= mu / i as f64;
        sum += term;
    }
    sum
}

/// Ten lost-time freezes of known kinds in `[start, start + 30 d)`, one every three days
/// at 1.5 d + 3i; and gap episodes of 1..=100 s in it (p99 = 99 s). Returns their lost time.
fn ten_freezes_in_thirty_days(s: &State, start: i64) -> i64 {
    let kinds = [
        FreezeKind::VmPause,
        FreezeKind::VmPause,
        FreezeKind::Restart,
        FreezeKind::VmPause,
        FreezeKind::Reboot,
        FreezeKind::ProcessStall,
        FreezeKind::VmPause,
        FreezeKind::Suspend,
        FreezeKind::VmPause,
        FreezeKind::VmPause,
    ];
    let mut lost = 0;
    for (i, kind) in kinds.into_iter().enumerate() {
        let secs = 60 * (i as i64 + 1);
        s.freeze(kind, start + DAY * 3 / 2 + 3 * DAY * i as i64, secs);
        lost += secs * S;
    }
    for secs in 1..=100 {
        s.episode(
            EpisodeKind::StepGap,
            Cause::Stall,
            &format!("wf-{secs}"),
            start + DAY + secs * 60 * S,
            secs,
        );
    }
    lost
}

/// Midnight-aligned "now minus whole days", so windows are whole seconds.
fn base() -> (i64, i64) {
    let now = now_ns();
    (now, now.div_euclid(DAY) * DAY)
}

#[test]
fn verify_verdicts_and_exit_codes_where_expected() {
    let (now, today) = base();
    let b0 = today - 60 * DAY;
    let a0 = today - 30 * DAY;

    // Quiet after the change, with clock steps (not lost time) after it.
    let quiet = State::new();
    let lost = ten_freezes_in_thirty_days(&quiet, b0);
    for i in 0..3 {
        quiet.freeze(FreezeKind::WallClockStep, a0 + DAY + i * DAY, 30);
    }
    quiet.watched(b0 - 30 * DAY, now, false);
    let before = window(b0, a0);

    let (code, v) = verify(
        quiet.path(),
        &["--before", &before, "--after", &window(a0, a0 + 10 * DAY)],
    );
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["reason"], "quiet_long_enough");
    assert_close("p", f(&v["p_value"]), (-10.0f64 / 3.0).exp());
    assert_close("μ", f(&v["expected_after"]), 10.0 / 3.0);
    assert_close("λ", f(&v["before_rate_per_day"]), 1.0 / 3.0);
    let b = &v["before"];
    assert_eq!(
        (b["freezes"].as_u64(), b["gaps"].as_u64()),
        (Some(10), Some(100))
    );
    assert_close("before window", f(&b["window"]["seconds"]), 30.0 * 86_400.0);
    assert_close("before covered", f(&b["covered_seconds"]), 30.0 * 86_400.0);
    assert_close("frozen", f(&b["frozen_seconds"]), lost as f64 / 1e9);
    assert_close(
        "frozen per day",
        f(&b["frozen_seconds_per_day"]),
        lost as f64 / 1e9 / 30.0,
    );
    assert_close("gap p99", f(&b["gap_p99_seconds"]), 99.0);
    let kinds: Vec<(&str, u64)> = b["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kind"].as_str().unwrap(), k["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("process_stall", 1),
            ("reboot", 1),
            ("restart", 1),
            ("suspend", 1),
            ("vm_pause", 6)
        ]
    );
    let a = &v["after"];
    assert_eq!(
        (
            a["freezes"].as_u64(),
            a["wall_clock_steps_not_counted"].as_u64()
        ),
        (Some(0), Some(3))
    );
    assert_eq!(
        (a["gaps"].as_u64(), a["gap_p99_seconds"].as_f64()),
        (Some(0), None)
    );
    assert_close("after covered", f(&a["covered_seconds"]), 10.0 * 86_400.0);

    // Too short to tell: 5 quiet days.
    let (code, v) = verify(
        quiet.path(),
        &["--before", &before, "--after", &window(a0, a0 + 5 * DAY)],
    );
    assert_eq!(
        (code, v["verdict"].as_str()),
        (3, Some("NOT ENOUGH DATA")),
        "{v:#}"
    );
    assert_close("p", f(&v["p_value"]), (-5.0f64 / 3.0).exp());
    // ln(20) / λ = 3 ln 20 days.
    assert!(
        (f(&v["needed_after_seconds"]) - 3.0 * 20f64.ln() * 86_400.0).abs() < 1e-6,
        "{v:#}"
    );
    let text = run(
        quiet.path(),
        &[
            "verify",
            "--before",
            &before,
            "--after",
            &window(a0, a0 + 5 * DAY),
        ],
    );
    assert_eq!(text.status.code(), Some(3));
    assert!(
        text.stdout.starts_with("verdict: NOT ENOUGH DATA\n"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("at least ln(20)/λ = 8d 23h 41m 34s"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("planned stops"), "{}", text.stdout);
    eprintln!("{}", text.stdout);

    // Still freezing at about the old rate.
    let freezing = State::new();
    ten_freezes_in_thirty_days(&freezing, b0);
    for i in 0..3 {
        freezing.freeze(FreezeKind::VmPause, a0 + 2 * DAY + 3 * i * DAY, 45);
    }
    freezing.watched(b0, now, false);
    let (code, v) = verify(
        freezing.path(),
        &["--before", &before, "--after", &window(a0, a0 + 10 * DAY)],
    );
    assert_eq!(
        (code, v["verdict"].as_str(), v["reason"].as_str()),
        (1, Some("NOT FIXED"), Some("rate_not_clearly_lower")),
        "{v:#}"
    );
    assert_close("p", f(&v["p_value"]), poisson_cdf(3, 10.0 / 3.0));
    assert_close(
        "after frozen per day",
        f(&v["after"]["frozen_seconds_per_day"]),
        135.0 / 10.0,
    );

    // Clearly fewer, not none: 30 in 30 days before, 2 in 10 days after.
    let fewer = State::new();
    for i in 0..30 {
        fewer.freeze(FreezeKind::VmPause, b0 + i * DAY + DAY / 2, 20);
    }
    fewer.freeze(FreezeKind::Restart, a0 + DAY, 5);
    fewer.freeze(FreezeKind::VmPause, a0 + 7 * DAY, 5);
    fewer.watched(b0, now, false);
    let (code, v) = verify(
        fewer.path(),
        &["--before", &before, "--after", &window(a0, a0 + 10 * DAY)],
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (0, Some("rate_clearly_lower")),
        "{v:#}"
    );
    assert_close("p", f(&v["p_value"]), 61.0 * (-10.0f64).exp());
    assert!(
        v["statistics"]
            .as_str()
            .unwrap()
            .contains("2 freezes remain"),
        "{v:#}"
    );

    // Nothing before: nothing to show fixed.
    let (code, v) = verify(
        quiet.path(),
        &[
            "--before",
            &window(b0 - 30 * DAY, b0),
            "--after",
            &window(a0, a0 + 10 * DAY),
        ],
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (3, Some("no_freezes_either")),
        "{v:#}"
    );
}

#[test]
fn coverage_ends_at_the_last_heartbeat() {
    let (_, today) = base();
    let b0 = today - 60 * DAY;
    let a0 = today - 30 * DAY;
    let mut s = State::new();
    ten_freezes_in_thirty_days(&s, b0);
    // Stopped on purpose 5 days after the change, and not started again.
    s.watched(b0, a0 + 5 * DAY, true);
    let dir = s.close().to_path_buf();
    let (code, v) = verify(
        &dir,
        &[
            "--before",
            &window(b0, a0),
            "--after",
            &window(a0, a0 + 10 * DAY),
        ],
    );
    assert_eq!(
        (code, v["verdict"].as_str()),
        (3, Some("NOT ENOUGH DATA")),
        "{v:#}"
    );
    assert_close(
        "after window",
        f(&v["after"]["window"]["seconds"]),
        10.0 * 86_400.0,
    );
    assert_close(
        "after covered",
        f(&v["after"]["covered_seconds"]),
        5.0 * 86_400.0,
    );
    let listed = &v["coverage"]["sessions"]["listed"][0];
    assert_eq!(
        (listed["last_heartbeat"].as_str(), listed["ended"].as_str()),
        (
            Some(at(a0 + 5 * DAY).replace('Z', ".000Z").as_str()),
            Some("stopped")
        ),
        "{v:#}"
    );
    assert_close("p", f(&v["p_value"]), (-5.0f64 / 3.0).exp());
    assert!(
        v["coverage"]["note"]
            .as_str()
            .unwrap()
            .contains("all runs: 1 run (1 stopped)"),
        "{v:#}"
    );
}

#[test]
fn migrated_at_compares_everything_before_with_since() {
    let (now, today) = base();
    let t = today - 10 * DAY;
    let s = State::new();
    // Watching began 30 days before the change; every freeze after that counts, the first
    // one too.
    s.db().begin_session(t - 30 * DAY, None).unwrap();
    s.freeze(FreezeKind::Reboot, t - 30 * DAY, 300);
    for i in 0..10 {
        s.freeze(FreezeKind::VmPause, t - 29 * DAY + 2 * i * DAY, 60);
    }
    // Older history read back from the app is not watched time.
    s.freeze(FreezeKind::VmPause, t - 40 * DAY, 60);
    s.heartbeat(now, false);
    let (code, v) = verify(s.path(), &["--migrated-at", &at(t)]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    let b = &v["before"];
    assert_eq!(b["window"]["start"], at(t - 30 * DAY));
    assert_eq!(
        (b["freezes"].as_u64(), b["freezes_counted"].as_u64()),
        (Some(11), Some(11))
    );
    assert_close("before covered", f(&b["covered_seconds"]), 30.0 * 86_400.0);
    // After: T to the last heartbeat (the binary's now is a little later).
    let after = (now - t) as f64 / 1e9;
    assert_close("after covered", f(&v["after"]["covered_seconds"]), after);
    assert_close(
        "p",
        f(&v["p_value"]),
        (-11.0 * after / (30.0 * 86_400.0)).exp(),
    );
    let text = run(s.path(), &["verify", "--migrated-at", &at(t)]);
    assert!(
        text.stdout
            .contains("starts with the sidecar's first watch session"),
        "{}",
        text.stdout
    );
}

#[test]
fn report_of_a_window_counts_kinds_and_causes_and_draws_a_self_contained_timeline() {
    let (_, today) = base();
    let w0 = today - 2 * DAY;
    let mut s = State::new();
    let long = s.freeze(FreezeKind::VmPause, w0 + 10 * 3_600 * S, 900);
    s.freeze(FreezeKind::VmPause, w0 + 20 * 3_600 * S, 15);
    s.freeze(FreezeKind::ProcessStall, w0 + 30 * 3_600 * S, 3);
    s.freeze(FreezeKind::Restart, w0 + 40 * 3_600 * S, 120);
    s.freeze(FreezeKind::WallClockStep, w0 + 41 * 3_600 * S, -30);
    s.freeze(FreezeKind::VmPause, w0 - DAY, 5_000); // before the window
    s.episode(
        EpisodeKind::StepGap,
        Cause::Freeze { freeze_id: long },
        "wf-frozen",
        w0 + 10 * 3_600 * S - S,
        902,
    );
    s.episode(
        EpisodeKind::StepGap,
        Cause::Stall,
        "wf-<slow>",
        w0 + 12 * 3_600 * S,
        45,
    );
    s.episode(
        EpisodeKind::WaitOverrun,
        Cause::Stall,
        "wf-late",
        w0 + 13 * 3_600 * S,
        30,
    );
    s.episode(
        EpisodeKind::Stall,
        Cause::Stall,
        "wf-stuck",
        w0 + 14 * 3_600 * S,
        700,
    );
    s.watched(w0 - 2 * DAY, today, true);
    let dir = s.close().to_path_buf();
    let db_file = dir.join(STATE_DB_FILE);
    let bytes = std::fs::read(&db_file).unwrap();
    let (since, until) = (at(w0), at(w0 + 2 * DAY));
    let win = ["--since", since.as_str(), "--until", until.as_str()];

    let out = run(
        &dir,
        &[&["report"][..], &win, &["--format", "json"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["no_data"], false);
    assert_eq!(v["freezes"]["count"], 4);
    assert_close(
        "frozen",
        f(&v["freezes"]["frozen_seconds"]),
        900.0 + 15.0 + 3.0 + 120.0,
    );
    let kinds: Vec<(&str, u64, f64)> = v["freezes"]["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kind"].as_str().unwrap(),
                k["count"].as_u64().unwrap(),
                f(&k["longest_seconds"]),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("process_stall", 1, 3.0),
            ("restart", 1, 120.0),
            ("vm_pause", 2, 900.0),
            ("wall_clock_step", 1, 30.0)
        ]
    );
    let longest: Vec<f64> = v["freezes"]["longest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| f(&e["duration_seconds"]))
        .collect();
    assert_eq!(
        longest,
        vec![900.0, 120.0, 15.0, 3.0],
        "lost time only, longest first"
    );
    let causes: Vec<(&str, &str, u64)> = v["episodes"]["by_kind_and_cause"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["cause"].as_str().unwrap(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        causes,
        vec![
            ("stall", "stall", 1),
            ("step_gap", "freeze", 1),
            ("step_gap", "stall", 1),
            ("wait_overrun", "stall", 1)
        ]
    );
    assert_eq!(v["episodes"]["longest"][0]["freeze_id"], long);

    let text = run(&dir, &[&["report"][..], &win].concat());
    assert!(
        text.stdout.contains("Freezes: 4, 17m 18s frozen"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("wall_clock_step (not lost time)"),
        "{}",
        text.stdout
    );
    eprintln!("{}", text.stdout);
    let md = run(
        &dir,
        &[&["report"][..], &win, &["--format", "markdown"]].concat(),
    );
    assert!(
        md.stdout.contains("## Freezes: 4, 17m 18s frozen")
            && md.stdout.contains("| kind | count | total | longest |"),
        "{}",
        md.stdout
    );

    let html = run(
        &dir,
        &[&["report"][..], &win, &["--format", "html"]].concat(),
    )
    .stdout;
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert!(
        html.contains("<style>") && html.contains("<svg"),
        "inline CSS and SVG"
    );
    for external in [
        "<script", "src=", "href=", "url(", "@import", "http://", "https://", "<link", "<img",
    ] {
        assert!(
            !html.contains(external),
            "the page must be self-contained, found {external:?}"
        );
    }
    assert_eq!(
        html.matches("<rect").count(),
        5 + 4,
        "one bar per freeze and episode in the window"
    );
    for lane in [
        "freeze: vm_pause (2)",
        "freeze: restart (1)",
        "freeze: wall_clock_step (1)",
        "step gap (2)",
        "wait overrun (1)",
        "stall (1)",
    ] {
        assert!(html.contains(lane), "lane {lane:?} missing");
    }
    assert!(
        html.contains("wf-&lt;slow&gt;") && !html.contains("wf-<slow>"),
        "names are escaped"
    );
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report_verify.html");
    std::fs::write(&artifact, &html).unwrap();
    eprintln!("HTML report: {}", artifact.display());

    assert_eq!(
        std::fs::read(&db_file).unwrap(),
        bytes,
        "report must not modify the state DB"
    );
}

#[test]
fn report_on_an_empty_or_missing_state_db() {
    let mut s = State::new();
    let dir = s.close().to_path_buf();
    let out = run(&dir, &["report"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("no data in this window")
            && out.stdout.contains("the state DB holds nothing yet"),
        "{}",
        out.stdout
    );
    let (code, v) = {
        let out = run(&dir, &["report", "--format", "json"]);
        (
            out.status.code(),
            serde_json::from_str::<Value>(&out.stdout).unwrap(),
        )
    };
    assert_eq!((code, v["no_data"].as_bool()), (Some(0), Some(true)));
    let html = run(&dir, &["report", "--format", "html"]).stdout;
    assert!(html.contains("no data in this window") && html.trim_end().ends_with("</html>"));

    // Data outside the window: says where it is.
    let s = State::new();
    s.freeze(FreezeKind::VmPause, now_ns() - 30 * DAY, 60);
    let out = run(s.path(), &["report", "--since", "2d"]);
    assert!(
        out.stdout.contains("no data in this window")
            && out.stdout.contains("holds 1 freeze and 0 episodes"),
        "{}",
        out.stdout
    );

    // No state DB at all: one sentence, exit 2, and none is created.
    let empty = TempDir::new().unwrap();
    for cmd in [&["report"][..], &["verify", "--migrated-at", "1d"]] {
        let out = run(empty.path(), cmd);
        assert_one_sentence_exit_2(&out, "no state database at");
    }
    assert!(
        !empty.path().join(STATE_DB_FILE).exists(),
        "report must never create the state DB"
    );

    // A newer schema and a corrupt file: refused, named, left alone.
    let newer = TempDir::new().unwrap();
    let conn = rusqlite::Connection::open(newer.path().join(STATE_DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert_one_sentence_exit_2(
        &run(newer.path(), &["report"]),
        "newer than this stallwatch understands",
    );
    let corrupt = TempDir::new().unwrap();
    std::fs::write(corrupt.path().join(STATE_DB_FILE), vec![0x5a; 8192]).unwrap();
    assert_one_sentence_exit_2(&run(corrupt.path(), &["report"]), "cannot be read");
}

#[test]
fn report_reads_a_state_db_in_a_directory_it_cannot_write() {
    // The sidecar stopped (no -wal or -shm left) and the operator is another user, who
    // can read the file but not create SQLite's shared-memory file beside it.
    use std::os::unix::fs::PermissionsExt;
    let mut s = State::new();
    s.freeze(FreezeKind::VmPause, now_ns() - 3_600 * S, 15);
    let dir = s.close().to_path_buf();
    std::fs::set_permissions(
        dir.join(STATE_DB_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    std::fs::set_permissions(
        &dir,
        std::fs::Permissions::from_mode(if root { 0o755 } else { 0o555 }),
    )
    .unwrap();
    let mut cmd = if root {
        // root may write anywhere: run as nobody, as an operator without rights would.
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::bin());
        c
    } else {
        std::process::Command::new(common::bin())
    };
    let out = cmd
        .args(["report", "--data-dir"])
        .arg(&dir)
        .arg("--format")
        .arg("json")
        .output()
        .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["freezes"]["count"], 1, "{v:#}");
    for suffix in ["-wal", "-shm"] {
        let mut name = dir.join(STATE_DB_FILE).into_os_string();
        name.push(suffix);
        assert!(!Path::new(&name).exists(), "{suffix} must not appear");
    }
}

#[track_caller]
fn assert_one_sentence_exit_2(out: &Finished, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    assert!(
        lines[0].starts_with("stallwatch: ") && lines[0].contains(needle),
        "{lines:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn bad_windows_are_one_sentence_and_exit_2() {
    let s = State::new();
    s.freeze(FreezeKind::VmPause, now_ns() - DAY, 60);
    let dir = s.path();
    let out = run(
        dir,
        &[
            "report",
            "--since",
            "2025-11-20T00:00:00Z",
            "--until",
            "2025-11-19T00:00:00Z",
        ],
    );
    assert_one_sentence_exit_2(
        &out,
        "--since 2025-11-20T00:00:00Z is not before --until 2025-11-19T00:00:00Z",
    );
    assert_one_sentence_exit_2(
        &run(dir, &["report", "--since", "last tuesday"]),
        "--since: \"last tuesday\" is not a time",
    );
    assert_one_sentence_exit_2(
        &run(dir, &["report", "--since", "1h", "--until", "2h"]),
        "is not before --until",
    );

    let w = |a: &str, b: &str| format!("{a}..{b}");
    let (d1, d2, d3, d4) = (
        "2025-11-01T00:00:00Z",
        "2025-11-10T00:00:00Z",
        "2025-11-05T00:00:00Z",
        "2025-11-20T00:00:00Z",
    );
    assert_one_sentence_exit_2(
        &run(
            dir,
            &["verify", "--before", &w(d1, d2), "--after", &w(d3, d4)],
        ),
        "--before and --after overlap",
    );
    assert_one_sentence_exit_2(
        &run(
            dir,
            &["verify", "--before", &w(d2, d1), "--after", &w(d2, d4)],
        ),
        "--before: window",
    );
    assert_one_sentence_exit_2(
        &run(dir, &["verify", "--before", d1, "--after", &w(d2, d4)]),
        "is not a window: write START..END",
    );
    assert_one_sentence_exit_2(
        &run(dir, &["verify", "--migrated-at", "2200-01-01T00:00:00Z"]),
        "is not in the past",
    );
    assert_one_sentence_exit_2(
        &run(dir, &["verify", "--migrated-at", "2999-01-01T00:00:00Z"]),
        "is not a time",
    );
    let out = run(dir, &["verify", "--migrated-at", "1d", "--format", "html"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr == "stallwatch: --format must be one of text, json, not \"html\"\n",
        "{out:?}"
    );
    // Usage errors (clap): exit 2 too, and no verdict.
    for args in [
        &["verify", "--before", "a..b"][..],
        &["verify"],
        &[
            "verify",
            "--migrated-at",
            "1d",
            "--before",
            "a..b",
            "--after",
            "c..d",
        ],
    ] {
        let out = run(dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn report_over_a_year_of_history_is_quick() {
    let (now, _) = base();
    let s = State::new();
    let year = 365 * DAY;
    let step = year / 10_000;
    for i in 0..10_000i64 {
        let t = now - year + i * step;
        let kind = FreezeKind::ALL[(i % 6) as usize];
        s.freeze(kind, t, 1 + i % 50);
        s.episode(
            if i % 3 == 0 {
                EpisodeKind::WaitOverrun
            } else {
                EpisodeKind::StepGap
            },
            if i % 2 == 0 {
                Cause::Stall
            } else {
                Cause::Freeze { freeze_id: i + 1 }
            },
            &format!("wf-{i}"),
            t + S,
            2 + i % 90,
        );
    }
    s.watched(now - year, now, false);
    for format in ["html", "json"] {
        let started = Instant::now();
        let out = run(s.path(), &["report", "--since", "366d", "--format", format]);
        let elapsed = started.elapsed();
        assert!(out.status.success(), "{out:?}");
        eprintln!("report --format {format} over a year, 10,000 freezes + 10,000 episodes: {:.3} s, {} bytes", elapsed.as_secs_f64(), out.stdout.len());
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
    let (code, v) = verify(s.path(), &["--migrated-at", "30d"]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (1, Some("NOT FIXED")),
        "{v:#}"
    );
}
