//! Issue 4, real DBOS: a DBOS app from PyPI (`tests/dbos/app.py`, in the venv that
//! `scripts/dbos-venv.sh` makes) writes its SQLite system database while the sidecar
//! watches it as a `dbos` source. Its workflow runs `parse` → `DBOS.recv` (2 s timeout)
//! → `generate` → `send`.
//!
//! - Normal runs: `stallwatch_step_duration_seconds` per step equals what DBOS recorded
//!   in `operation_outputs` (read here with rusqlite), the 2 s recv wait is not a gap,
//!   and no episode is recorded.
//! - The app stopped (SIGSTOP) for 8 s between `generate` and `send`, sidecar running:
//!   one `step_gap` episode `generate` → `send` of 8 s ± 0.5 s with `cause = stall`.
//! - App and sidecar frozen together in one cgroup for 8 s: the episode is
//!   `cause = freeze` and names the `process_stall` event the sidecar recorded.
//!
//! The first two run with the system DB in WAL mode (the incident's case) and in
//! rollback-journal mode (DBOS's own default). Nothing is skipped: without Python, the
//! venv or a freezable cgroup the tests fail, saying what is missing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{assert_near, poll_until, process_state, Launch, Metrics, Sidecar};
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;
use tempfile::{NamedTempFile, TempDir};

/// How long the app is stopped between `generate` and `send` (issue 4).
const STOP: Duration = Duration::from_secs(8);
/// The tolerance issue 4 states for the gap episode's duration.
const GAP_TOLERANCE_SECONDS: f64 = 0.5;
/// The sidecar and DBOS round each step time to the same milliseconds; allow one per row.
const PER_ROW_TOLERANCE_SECONDS: f64 = 0.001;
/// Whole normal gaps of a workflow (recv end → `generate`, `generate` → `send`) are
/// milliseconds; on a loaded 2-core machine allow this much per gap. The recv wait
/// itself is 2 s, so counting it would break this bound.
const NORMAL_GAP_MAX_SECONDS: f64 = 0.5;
/// Free-running workflows in the normal-runs part.
const NORMAL_RUNS: usize = 2;
/// The source's poll interval and shortest recorded gap, as issue 4's config has them.
const POLL: &str = "500ms";
const GAP_MIN: &str = "2s";
/// Python start-up plus `DBOS.launch()` (migrations on a fresh DB): about 2 s here.
const APP_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// One workflow takes about 2.3 s (the recv times out after 2 s).
const WORKFLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// Until the sidecar's metrics show rows DBOS has written: a few 500 ms polls.
const METRICS_TIMEOUT: Duration = Duration::from_secs(15);
/// Until an episode appears: the sidecar holds it for the freeze detector's merge window
/// plus 2 s after the gap ends, then attributes it.
const EPISODE_TIMEOUT: Duration = Duration::from_secs(20);
/// After the awaited episode appeared, how long to keep watching for a second one.
const SECOND_EPISODE_WATCH: Duration = Duration::from_secs(2);
/// How long the kernel may take to report the process (or cgroup) as stopped.
const STOPPED_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `quit` may take (DBOS joins its threads).
const APP_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The source name in the sidecar's config.
const SOURCE: &str = "app";
/// The workflow's name as DBOS records it in `workflow_status.name`.
const WORKFLOW: &str = "reply";
/// The steps the app runs, in order.
const STEPS: [&str; 3] = ["parse", "generate", "send"];

// ---- the test cases -------------------------------------------------------------------

#[test]
fn wal_normal_runs_match_dbos_and_sigstop_is_one_stall_gap() {
    normal_runs_then_sigstop(Journal::Wal);
}

#[test]
fn rollback_journal_normal_runs_match_dbos_and_sigstop_is_one_stall_gap() {
    normal_runs_then_sigstop(Journal::Delete);
}

#[test]
fn wal_app_and_sidecar_frozen_together_is_a_freeze_gap() {
    let Setup {
        dir: _dir,
        db,
        mut app,
        sidecar,
    } = Setup::new(Journal::Wal);
    // Declared after the sidecar and app so it is dropped first: it thaws them, and a
    // frozen process could not even be killed.
    let mut pids = app.pids_with_descendants();
    pids.push(sidecar.pid());
    let cgroup = FreezerCgroup::create(&pids).unwrap_or_else(|e| {
        panic!(
            "cannot put the DBOS app and stallwatch in a freezable cgroup: {e}. This test \
             needs root and either the cgroup v1 freezer (/sys/fs/cgroup/freezer) or cgroup \
             v2 (cgroup.freeze); it does not skip. Deselect it with `cargo test -- --skip \
             frozen_together` where neither is available."
        )
    });

    let label = "frozen";
    let workflow_id = app.start_workflow(label, Hold::AfterGenerate);
    app.expect_phase("generate-done", label);
    cgroup.set_frozen(true).expect("freezing the cgroup");
    let t0 = Instant::now();
    poll_until("the cgroup to report frozen", STOPPED_TIMEOUT, || {
        if cgroup.is_frozen() {
            Ok(())
        } else {
            Err(format!("{} is not frozen yet", cgroup.dir.display()))
        }
    });
    // Read once it thaws: `send` starts right after.
    app.command(&format!("go {label}"));
    std::thread::sleep(STOP.saturating_sub(t0.elapsed()));
    cgroup.set_frozen(false).expect("thawing the cgroup");
    let frozen = t0.elapsed();
    app.expect_phase("done", label);

    let episode = wait_for_one_episode(&sidecar);
    let freezes = sidecar.freezes();
    eprintln!(
        "frozen {:.3} s; episode {:.3} s, cause {}, freeze_id {:?}; freezes: {freezes:?}",
        frozen.as_secs_f64(),
        episode.duration_seconds,
        episode.cause,
        episode.freeze_id
    );
    assert_gap_episode(&episode, &workflow_id, &db, frozen);
    assert_eq!(
        episode.cause, "freeze",
        "the app and the sidecar were frozen together: {episode:#?}\nfreezes: {freezes:#?}"
    );
    let freeze_id = episode
        .freeze_id
        .unwrap_or_else(|| panic!("a freeze episode must name its freeze: {episode:#?}"));
    let freeze = freezes
        .iter()
        .find(|f| f.id == freeze_id)
        .unwrap_or_else(|| panic!("freeze_id {freeze_id} is not in /api/v1/freezes: {freezes:#?}"));
    assert_eq!(freeze.kind, "process_stall", "{freeze:#?}");
    assert_near(
        "duration_seconds of the freeze",
        freeze.duration_seconds,
        frozen.as_secs_f64(),
        GAP_TOLERANCE_SECONDS,
    );

    let m = sidecar.metrics();
    assert_eq!(m.expect(&gaps_total("freeze")), 1.0);
    assert_eq!(m.expect(&gaps_total("stall")), 0.0);
    drop(cgroup);
    app.quit();
}

/// Parts (a) and (b) of issue 4 on one app and one sidecar.
fn normal_runs_then_sigstop(journal: Journal) {
    let Setup {
        dir: _dir,
        db,
        mut app,
        sidecar,
    } = Setup::new(journal);

    // (a) Normal runs.
    let labels: Vec<String> = (0..NORMAL_RUNS).map(|i| format!("normal{i}")).collect();
    for label in &labels {
        app.start_workflow(label, Hold::No);
    }
    for label in &labels {
        app.expect_phase("done", label);
    }
    let rows = wait_until_sidecar_has_all_steps(&sidecar, &db, NORMAL_RUNS);
    let m = sidecar.metrics();
    assert_step_durations_match(&m, &rows);
    // Gaps: two per workflow (recv → generate, generate → send), each what DBOS recorded.
    let gaps = db_gaps(&rows);
    assert_eq!(gaps.len(), 2 * NORMAL_RUNS, "{gaps:?}");
    let gap_sum: f64 = gaps.iter().sum();
    let gap_count = m.expect(&gap_series("count"));
    let gap_metric_sum = m.expect(&gap_series("sum"));
    eprintln!(
        "{journal:?}: normal gaps from DBOS {gaps:?} (sum {gap_sum:.3} s); sidecar: count \
         {gap_count}, sum {gap_metric_sum:.3} s"
    );
    assert_eq!(gap_count, gaps.len() as f64, "{}", gap_series("count"));
    assert_near(
        &gap_series("sum"),
        gap_metric_sum,
        gap_sum,
        PER_ROW_TOLERANCE_SECONDS * gaps.len() as f64,
    );
    assert!(
        gap_metric_sum < NORMAL_GAP_MAX_SECONDS * gaps.len() as f64,
        "the {} s recv waits must not count as gaps: {} = {gap_metric_sum}",
        2 * NORMAL_RUNS,
        gap_series("sum")
    );

    // (b) SIGSTOP between generate and send while the sidecar keeps running.
    let label = "stopped";
    let workflow_id = app.start_workflow(label, Hold::AfterGenerate);
    app.expect_phase("generate-done", label);
    let pid = app.pid();
    common::signal(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    poll_until(
        "the app to be stopped",
        STOPPED_TIMEOUT,
        || match process_state(pid) {
            Some('T') => Ok(()),
            other => Err(format!("state {other:?}")),
        },
    );
    // Waiting in the pipe: the app reads it the moment it runs again.
    app.command(&format!("go {label}"));
    std::thread::sleep(STOP.saturating_sub(t0.elapsed()));
    common::signal(pid, libc::SIGCONT);
    let stopped = t0.elapsed();
    app.expect_phase("done", label);

    let episode = wait_for_one_episode(&sidecar);
    eprintln!(
        "{journal:?}: stopped {:.3} s; episode {:.3} s, cause {}",
        stopped.as_secs_f64(),
        episode.duration_seconds,
        episode.cause
    );
    assert_gap_episode(&episode, &workflow_id, &db, stopped);
    assert_eq!(
        (episode.cause.as_str(), episode.freeze_id),
        ("stall", None),
        "only the app was stopped: {episode:#?}\nfreezes: {:#?}",
        sidecar.freezes()
    );
    let m = sidecar.metrics();
    assert_eq!(m.expect(&gaps_total("stall")), 1.0);
    assert_eq!(m.expect(&gaps_total("freeze")), 0.0);
    // The stopped workflow's steps are counted like any other.
    let rows = db_rows(&db);
    assert_step_durations_match(&m, &rows);
    app.quit();
}

// ---- what is asserted -----------------------------------------------------------------

/// Per step, `stallwatch_step_duration_seconds` count and sum equal DBOS's rows; the
/// intended waits (`DBOS.recv`, `DBOS.sleep`) are not steps.
#[track_caller]
fn assert_step_durations_match(m: &Metrics, rows: &[Row]) {
    for step in STEPS {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.step == step).collect();
        let sum: f64 = mine.iter().map(|r| r.duration_seconds()).sum();
        let count = m.expect(&duration_series(step, "count"));
        let metric_sum = m.expect(&duration_series(step, "sum"));
        eprintln!(
            "step {step}: DBOS {} rows, {sum:.3} s; sidecar {count}, {metric_sum:.3} s",
            mine.len()
        );
        assert_eq!(
            count,
            mine.len() as f64,
            "{}",
            duration_series(step, "count")
        );
        assert_near(
            &duration_series(step, "sum"),
            metric_sum,
            sum,
            PER_ROW_TOLERANCE_SECONDS * mine.len() as f64,
        );
    }
    for wait in ["DBOS.recv", "DBOS.sleep"] {
        assert!(
            rows.iter().any(|r| r.step == wait),
            "DBOS wrote no {wait} row: the app is not doing what this test expects"
        );
        let series = duration_series(wait, "count");
        assert_eq!(
            m.value(&series),
            None,
            "an intended wait is not a step, yet {series} is exported"
        );
    }
}

/// The one episode of a stopped or frozen workflow: `generate` → `send` in that
/// workflow, as long as DBOS's own gap (to the millisecond) and as the stop (± 0.5 s).
#[track_caller]
fn assert_gap_episode(e: &Episode, workflow_id: &str, db: &Path, stopped: Duration) {
    assert_eq!(
        (
            e.source.as_str(),
            e.kind.as_str(),
            e.workflow_id.as_str(),
            e.workflow_name.as_str(),
            e.from_step.as_str(),
            e.to_step.as_str()
        ),
        (
            SOURCE,
            "step_gap",
            workflow_id,
            WORKFLOW,
            "generate",
            "send"
        ),
        "{e:#?}"
    );
    let rows = db_rows(db);
    let find = |step: &str| {
        rows.iter()
            .find(|r| r.workflow_id == workflow_id && r.step == step)
            .unwrap_or_else(|| panic!("DBOS has no {step} row for {workflow_id}: {rows:#?}"))
    };
    let recorded = (find("send").started_ms - find("generate").completed_ms) as f64 / 1e3;
    assert_near(
        "episode duration_seconds vs DBOS's generate → send",
        e.duration_seconds,
        recorded,
        PER_ROW_TOLERANCE_SECONDS,
    );
    assert_near(
        "episode duration_seconds vs how long the test stopped the app",
        e.duration_seconds,
        stopped.as_secs_f64(),
        GAP_TOLERANCE_SECONDS,
    );
}

/// Waits for the first episode of the source, watches a little longer for others, and
/// asserts there is exactly one.
#[track_caller]
fn wait_for_one_episode(sidecar: &Sidecar) -> Episode {
    poll_until("a step-gap episode", EPISODE_TIMEOUT, || {
        let episodes = episodes(sidecar);
        if episodes.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    });
    std::thread::sleep(SECOND_EPISODE_WATCH);
    let mut episodes = episodes(sidecar);
    assert_eq!(
        episodes.len(),
        1,
        "expected one episode (normal runs and recv waits are not gaps): {episodes:#?}"
    );
    episodes.remove(0)
}

/// Waits until the sidecar counted every step row of `workflows` finished workflows.
fn wait_until_sidecar_has_all_steps(sidecar: &Sidecar, db: &Path, workflows: usize) -> Vec<Row> {
    poll_until(
        "the sidecar to count every step DBOS wrote",
        METRICS_TIMEOUT,
        || {
            let rows = db_rows(db);
            let m = sidecar.metrics();
            let counts: Vec<(&str, usize, Option<f64>)> = STEPS
                .iter()
                .map(|step| {
                    let in_db = rows.iter().filter(|r| r.step == *step).count();
                    (*step, in_db, m.value(&duration_series(step, "count")))
                })
                .collect();
            let done = counts
                .iter()
                .all(|(_, in_db, seen)| *in_db == workflows && *seen == Some(workflows as f64));
            if done {
                Ok(rows)
            } else {
                Err(format!("(step, rows in DB, sidecar count): {counts:?}"))
            }
        },
    )
}

fn duration_series(step: &str, part: &str) -> String {
    format!("stallwatch_step_duration_seconds_{part}{{source=\"{SOURCE}\",step=\"{step}\"}}")
}

fn gap_series(part: &str) -> String {
    format!("stallwatch_step_gap_seconds_{part}{{source=\"{SOURCE}\",workflow=\"{WORKFLOW}\"}}")
}

fn gaps_total(cause: &str) -> String {
    format!("stallwatch_step_gaps_total{{cause=\"{cause}\",source=\"{SOURCE}\"}}")
}

// ---- the sidecar's episodes -----------------------------------------------------------

/// One entry of `/api/v1/episodes`.
#[derive(Debug, Clone, Deserialize)]
#[allow(dead_code)]
struct Episode {
    id: i64,
    source: String,
    kind: String,
    workflow_id: String,
    workflow_name: String,
    from_step: String,
    to_step: String,
    started_at: String,
    duration_seconds: f64,
    cause: String,
    freeze_id: Option<i64>,
    detected_at: String,
}

#[track_caller]
fn episodes(sidecar: &Sidecar) -> Vec<Episode> {
    let r = sidecar.get(&format!("/api/v1/episodes?source={SOURCE}"));
    assert_eq!(r.status, 200, "/api/v1/episodes: {r:?}");
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/api/v1/episodes is not a list of episodes ({e}): {r:?}"))
}

// ---- what DBOS wrote ------------------------------------------------------------------

/// One `operation_outputs` row.
#[derive(Debug, Clone)]
struct Row {
    workflow_id: String,
    function_id: i64,
    step: String,
    started_ms: i64,
    completed_ms: i64,
}

impl Row {
    fn duration_seconds(&self) -> f64 {
        (self.completed_ms - self.started_ms) as f64 / 1e3
    }
}

/// Every `operation_outputs` row, read-only, in one short statement.
fn db_rows(db: &Path) -> Vec<Row> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT workflow_uuid, function_id, function_name, started_at_epoch_ms, \
             completed_at_epoch_ms FROM operation_outputs \
             ORDER BY workflow_uuid, function_id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                workflow_id: r.get(0)?,
                function_id: r.get(1)?,
                step: r.get(2)?,
                started_ms: r.get(3)?,
                completed_ms: r.get(4)?,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// The gaps DBOS's rows show, in seconds: per workflow, end of the previous activity (a
/// step or an intended wait) to the start of each following step.
fn db_gaps(rows: &[Row]) -> Vec<f64> {
    let mut by_workflow: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_workflow.entry(&r.workflow_id).or_default().push(r);
    }
    let mut gaps = Vec::new();
    for (_, mut rows) in by_workflow {
        rows.sort_by_key(|r| (r.completed_ms, r.function_id));
        let mut end: Option<i64> = None;
        for r in rows {
            let wait = r.step.starts_with("DBOS.");
            if let (Some(e), false) = (end, wait) {
                gaps.push((r.started_ms.max(e) - e) as f64 / 1e3);
            }
            end = Some(end.map_or(r.completed_ms, |e| e.max(r.completed_ms)));
        }
    }
    gaps
}

// ---- setup: venv, app, sidecar --------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Journal {
    Wal,
    /// Rollback-journal mode, which DBOS leaves a new SQLite DB in.
    Delete,
}

impl Journal {
    fn as_str(self) -> &'static str {
        match self {
            Journal::Wal => "wal",
            Journal::Delete => "delete",
        }
    }
}

/// A temp dir with a running DBOS app and a sidecar watching its system DB.
struct Setup {
    // Field order is drop order: the sidecar and app go before their directory.
    sidecar: Sidecar,
    app: App,
    db: PathBuf,
    dir: TempDir,
}

impl Setup {
    fn new(journal: Journal) -> Setup {
        let python = dbos_python();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dbos.sqlite");
        let app = App::start(python, &db, journal, dir.path());
        let config = format!(
            "[[source]]\nname = \"{SOURCE}\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n\
             poll = \"{POLL}\"\ngap_min = \"{GAP_MIN}\"\n",
            db.display()
        );
        let sidecar = Sidecar::start_with(
            &dir.path().join("data"),
            &Launch {
                config: Some(config),
                env: Vec::new(),
            },
        );
        // The source is up and reports the journal mode the app runs in.
        let info = format!(
            "stallwatch_source_info{{journal_mode=\"{}\",kind=\"dbos\",source=\"{SOURCE}\"}}",
            journal.as_str()
        );
        poll_until("the dbos source to be up", METRICS_TIMEOUT, || {
            let m = sidecar.metrics();
            match (
                m.value(&format!("stallwatch_source_up{{source=\"{SOURCE}\"}}")),
                m.value(&info),
            ) {
                (Some(1.0), Some(_)) => Ok(()),
                other => Err(format!("(source_up, {info}) = {other:?}")),
            }
        });
        Setup {
            sidecar,
            app,
            db,
            dir,
        }
    }
}

/// The python of the venv with the pinned dbos, made once per test binary by
/// `scripts/dbos-venv.sh`. A venv that cannot be made fails the test.
fn dbos_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/dbos-venv.sh"))
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/dbos-venv.sh: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/dbos-venv.sh failed ({}); the real-DBOS tests need Python 3 with venv \
             and pip, and PyPI (or a wheel cache) for dbos:\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let python = PathBuf::from(stdout.trim());
        assert!(
            python.is_file(),
            "scripts/dbos-venv.sh printed {python:?}, which is not a file"
        );
        python
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    No,
    AfterGenerate,
}

/// `tests/dbos/app.py`, driven over stdin; its stdout lines arrive on a channel.
struct App {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Lines read but not yet claimed by [`App::expect`], as words.
    backlog: Vec<Vec<String>>,
    stderr: NamedTempFile,
    exited: bool,
}

impl App {
    fn start(python: &Path, db: &Path, journal: Journal, cwd: &Path) -> App {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dbos/app.py");
        let stderr = NamedTempFile::new().expect("temp file for the app's stderr");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--db")
            .arg(db)
            .arg("--journal")
            .arg(journal.as_str())
            .current_dir(cwd)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    script.display()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            stdin: child.stdin.take(),
            child,
            lines,
            backlog: Vec::new(),
            stderr,
            exited: false,
        };
        let ready = app.expect(&["READY"], APP_READY_TIMEOUT);
        let want = format!("journal_mode={}", journal.as_str());
        assert_eq!(ready.get(1), Some(&want), "the app's system DB: {ready:?}");
        app
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The app and every process descended from it (DBOS 3.4 starts none, but a freezer
    /// must hold them all).
    fn pids_with_descendants(&self) -> Vec<i32> {
        let mut parents: Vec<(i32, i32)> = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        let mut family = vec![self.pid()];
        let mut i = 0;
        while i < family.len() {
            let parent = family[i];
            family.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        family
    }

    #[track_caller]
    fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the app's stdin is open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("writing {line:?} to the app: {e}\n{}", self.stderr_text());
        }
    }

    /// Starts a workflow; returns its id.
    #[track_caller]
    fn start_workflow(&mut self, label: &str, hold: Hold) -> String {
        let how = if hold == Hold::AfterGenerate {
            "hold"
        } else {
            "free"
        };
        self.command(&format!("run {label} {how}"));
        let started = self.expect(&["STARTED", label], WORKFLOW_TIMEOUT);
        started[2].clone()
    }

    #[track_caller]
    fn expect_phase(&mut self, phase: &str, label: &str) -> Vec<String> {
        self.expect(&["PHASE", phase, label], WORKFLOW_TIMEOUT)
    }

    /// Takes the first stdout line (already read or still to come) that starts with the
    /// words `prefix`, and returns its words. Lines that do not match stay for later
    /// calls: concurrent workflows print in any order.
    #[track_caller]
    fn expect(&mut self, prefix: &[&str], timeout: Duration) -> Vec<String> {
        let matches = |words: &[String]| {
            words.len() >= prefix.len() && words.iter().zip(prefix).all(|(w, p)| w == p)
        };
        if let Some(i) = self.backlog.iter().position(|w| matches(w)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    assert!(
                        !line.starts_with("ERROR"),
                        "the app said {line:?}\n{}",
                        self.stderr_text()
                    );
                    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                    if matches(&words) {
                        return words;
                    }
                    self.backlog.push(words);
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the app did not print {prefix:?} within {timeout:?}; unclaimed lines: \
                     {:?}\nstderr:\n{}",
                    self.backlog,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the app exited ({:?}) before printing {prefix:?}; unclaimed lines: {:?}\n\
                     stderr:\n{}",
                    self.child.try_wait(),
                    self.backlog,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Asks DBOS to shut down and waits for a clean exit.
    #[track_caller]
    fn quit(mut self) {
        self.command("quit");
        drop(self.stdin.take());
        let status = common::wait_with_timeout(&mut self.child, APP_EXIT_TIMEOUT);
        self.exited = true;
        match status {
            Some(s) if s.success() => {}
            other => panic!(
                "the app did not exit cleanly after quit: {other:?}\n{}",
                self.stderr_text()
            ),
        }
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if !self.exited {
            // SIGKILL also ends a stopped process; a frozen one dies once thawed.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- DBOS app (pid {}) stderr ----\n{}",
                self.child.id(),
                self.stderr_text()
            );
        }
    }
}

// ---- a freezer cgroup holding several processes ---------------------------------------

/// Which cgroup interface freezes the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// `freezer.state` ← `FROZEN` / `THAWED`.
    V1,
    /// `cgroup.freeze` ← `1` / `0`; `cgroup.events` says `frozen 1`.
    V2,
}

/// A cgroup made for one test. Dropping it thaws it, moves its processes back to the
/// hierarchy's root and removes it, even when the test failed.
struct FreezerCgroup {
    version: Version,
    root: PathBuf,
    dir: PathBuf,
}

impl FreezerCgroup {
    /// Makes a cgroup holding `pids`: the v1 freezer when mounted, else v2;
    /// `STALLWATCH_TEST_CGROUP=v1|v2` forces one.
    fn create(pids: &[i32]) -> Result<FreezerCgroup, String> {
        let (v1, v2) = cgroup_mounts();
        let forced = std::env::var("STALLWATCH_TEST_CGROUP").ok();
        let (version, root) = match (forced.as_deref(), v1, v2) {
            (Some("v2"), _, Some(root)) | (None, None, Some(root)) => (Version::V2, root),
            (Some("v1") | None, Some(root), _) => (Version::V1, root),
            (forced, v1, v2) => {
                return Err(format!(
                    "no usable cgroup hierarchy (forced: {forced:?}, v1 freezer mount: {v1:?}, \
                     v2 mount: {v2:?})"
                ))
            }
        };
        let dir = root.join(format!("stallwatch-dbos-test-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cgroup = FreezerCgroup { version, root, dir };
        for pid in pids {
            fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| format!("cannot move pid {pid} into {}: {e}", cgroup.dir.display()))?;
        }
        let members = fs::read_to_string(cgroup.dir.join("cgroup.procs")).unwrap_or_default();
        let missing: Vec<&i32> = pids
            .iter()
            .filter(|p| !members.lines().any(|l| l.trim() == p.to_string()))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "pids {missing:?} are not in {} after moving them (cgroup.procs: {members:?})",
                cgroup.dir.display()
            ));
        }
        Ok(cgroup)
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let (file, value) = match (self.version, frozen) {
            (Version::V1, true) => ("freezer.state", "FROZEN"),
            (Version::V1, false) => ("freezer.state", "THAWED"),
            (Version::V2, true) => ("cgroup.freeze", "1"),
            (Version::V2, false) => ("cgroup.freeze", "0"),
        };
        fs::write(self.dir.join(file), value)
    }

    fn is_frozen(&self) -> bool {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        match self.version {
            Version::V1 => read("freezer.state").trim() == "FROZEN",
            Version::V2 => read("cgroup.events")
                .lines()
                .any(|l| l.trim() == "frozen 1"),
        }
    }
}

/// Where the cgroup hierarchies are mounted: (v1 freezer, v2 unified), from /proc/self/mounts.
fn cgroup_mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut v1, mut v2) = (None, None);
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fs_type, options, ..] = fields[..] else {
            continue;
        };
        if fs_type == "cgroup" && options.split(',').any(|o| o == "freezer") {
            v1.get_or_insert_with(|| PathBuf::from(mount_point));
        } else if fs_type == "cgroup2" {
            v2.get_or_insert_with(|| PathBuf::from(mount_point));
        }
    }
    (v1, v2)
}

impl Drop for FreezerCgroup {
    fn drop(&mut self) {
        let _ = self.set_frozen(false);
        // Removal fails while processes remain; they may take a moment to thaw.
        for _ in 0..50 {
            let members = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in members.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.dir.display()
        );
    }
}
