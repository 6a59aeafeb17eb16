//! Fault cases: the state DB under faults (issue 14, items 9–11).
//!
//! - Item 9: the state DB deleted while the sidecar runs is noticed on the next
//!   heartbeat (`/readyz` 503 naming it, `stallwatch_state_db_recreated_total`, the
//!   status), put back at its path with its history, and written from then on; a kill
//!   and restart after it is still classified. A start over a data dir whose state DB
//!   is gone says so in one warning line and records where history starts.
//! - Item 10: freezes detected while the data dir's filesystem is full (a real tiny
//!   tmpfs, filled with a ballast file) are held and written once space comes back; the
//!   API and `/metrics` agree. A full disk at start says "no space left on device", a
//!   directory where the DB file should be "is a directory".
//! - Item 11: a poll that yields more episodes than the writer's queue takes folds the
//!   rest: `/api/v1/episodes` ends with a `folded` row per source, `report` says "N
//!   more episodes folded", and stored + folded = the episodes counted in `/metrics`.
//!
//! The tmpfs cases need root and `mount` (this project's test VMs have both); without
//! them they fail, saying so.

use crate::common::dbos_schema;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags};

use crate::common::{self, poll_until, Launch, Sidecar};

/// How long each stop of the sidecar lasts: over the default `freeze.min` of 2 s.
const STOP: Duration = Duration::from_millis(2_600);
/// Until a freeze shows in the API: the 2 s merge window and the writer's queue.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(15);
/// Until a deletion is noticed: the writer checks the path once a second.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Until held writes reach the DB after space came back: the retry backoff is at most 8 s.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// Until a source's first poll is settled and written (or folded).
const EPISODE_TIMEOUT: Duration = Duration::from_secs(90);

const STATE_DB: &str = "stallwatch.sqlite";

/// Stops the sidecar (SIGSTOP) for [`STOP`], then continues it.
fn stop_for_a_while(sidecar: &Sidecar) {
    sidecar.signal(libc::SIGSTOP);
    common::wait_stopped("the sidecar", sidecar.pid());
    std::thread::sleep(STOP);
    sidecar.signal(libc::SIGCONT);
}

/// Rows of `table` in the state DB at `dir`, read with a connection of this test's own.
fn rows(dir: &Path, table: &str) -> i64 {
    rows_where(dir, table, "1")
}

fn rows_where(dir: &Path, table: &str, condition: &str) -> i64 {
    let conn = Connection::open_with_flags(dir.join(STATE_DB), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("opening the state DB in {}: {e}", dir.display()));
    conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE {condition}"),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn facts(dir: &Path) -> Vec<String> {
    let conn =
        Connection::open_with_flags(dir.join(STATE_DB), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind FROM state_fact ORDER BY id")
        .unwrap();
    let kinds = stmt.query_map([], |r| r.get(0)).unwrap();
    kinds.collect::<Result<_, _>>().unwrap()
}

fn freeze_count(sidecar: &Sidecar) -> f64 {
    sidecar.metrics().freezes("process_stall")
}

// ---- item 9 ---------------------------------------------------------------------------

/// Issue 14 item 9: before, `/readyz` stayed 200, later freezes went into the deleted
/// file, and the next start silently made a new, empty DB.
#[test]
fn a_state_db_deleted_while_running_is_noticed_and_put_back_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sidecar = Sidecar::start(&data);
    stop_for_a_while(&sidecar);
    sidecar.wait_for_freezes(1, FREEZE_TIMEOUT);

    // What an operator cleaning up by hand does: the DB and its WAL files.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data.join(format!("{STATE_DB}{suffix}")));
    }
    let said = poll_until("/readyz to say the DB was deleted", NOTICE_TIMEOUT, || {
        let r = sidecar.get("/readyz");
        if r.status == 503 && r.body.contains("deleted") {
            Ok(r.body)
        } else {
            Err(format!("{} {:?}", r.status, r.body))
        }
    });
    assert!(said.contains(STATE_DB), "{said}");
    let status = sidecar.status();
    assert!(
        status["state_db_error"]
            .as_str()
            .is_some_and(|e| e.contains("deleted")),
        "{status:#}"
    );
    assert!(
        status["state_db_notice"]
            .as_str()
            .is_some_and(|e| e.contains("no history was lost")),
        "{status:#}"
    );
    assert_eq!(
        sidecar
            .metrics()
            .expect("stallwatch_state_db_recreated_total"),
        1.0
    );
    poll_until("the state_db alert to fire", NOTICE_TIMEOUT, || {
        let firing = sidecar
            .metrics()
            .value("stallwatch_alerts_firing{rule=\"state_db\"}");
        if firing == Some(1.0) {
            Ok(())
        } else {
            Err(format!("{firing:?}"))
        }
    });

    // The alert engine follows the DB put back: the state_db alert is in the file at the
    // path (and so in /api/v1/alerts and after a restart), not only in the deleted one.
    poll_until(
        "the state_db alert in the DB at the path",
        NOTICE_TIMEOUT,
        || {
            let n = rows_where(&data, "alert", "rule = 'state_db'");
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} state_db alert rows"))
            }
        },
    );

    // Back at its path, with the history it held.
    assert_eq!(
        rows(&data, "freeze_event"),
        1,
        "the freeze before the deletion"
    );
    assert_eq!(facts(&data), vec!["restored".to_string()]);

    // Freezes after the deletion go to the file at the path, and the API reads it.
    stop_for_a_while(&sidecar);
    sidecar.wait_for_freezes(2, FREEZE_TIMEOUT);
    assert_eq!(rows(&data, "freeze_event"), 2);
    assert_eq!(freeze_count(&sidecar), 2.0);

    // A kill after it is still a restart, measured from the heartbeat in the new file.
    sidecar.kill_hard();
    let again = Sidecar::start(&data);
    let status = again.status();
    assert_eq!(status["last_downtime"]["reason"], "restart", "{status:#}");
    let log = again.log();
    assert!(!log.contains("is missing"), "{log}");
    let kinds: Vec<String> = again.freezes().into_iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["process_stall", "process_stall", "restart"]);
}

/// Issue 14 item 9: a start over a data dir that held a state DB, now gone, used to start
/// fresh without a word.
#[test]
fn a_start_over_a_lost_state_db_says_what_was_lost_and_where_history_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = Sidecar::start(&data);
    first.signal(libc::SIGTERM);
    assert!(
        first.wait_exit(Duration::from_secs(10)).is_some(),
        "SIGTERM did not stop it"
    );
    // `rm data/*`: the DB goes, a hidden marker stays.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
            std::fs::remove_file(path).unwrap();
        }
    }

    let second = Sidecar::start(&data);
    let log = second.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is missing but this data dir held one"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("lost"),
        "{}",
        warnings[0]
    );
    let status = second.status();
    assert!(
        status["state_db_notice"]
            .as_str()
            .is_some_and(|n| n.contains("is missing")),
        "{status:#}"
    );
    assert_eq!(facts(&data), vec!["recreated".to_string()]);
    let report = common::run_to_exit(["report".as_ref(), "--data-dir".as_ref(), data.as_os_str()]);
    assert!(report.status.success(), "{report:?}");
    assert!(
        report.stdout.contains("history starts"),
        "{}",
        report.stdout
    );
}

// ---- item 10 --------------------------------------------------------------------------

/// A tmpfs of `bytes` mounted for this test, unmounted when dropped.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: u64) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let options = CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a {bytes}-byte tmpfs on {} failed ({}): these cases need root",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        TinyFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a ballast file until the filesystem is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let ballast = self.path().join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        // Fill the last partial block too.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
        ballast
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH so a still-open file cannot keep it.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Issue 14 item 10: three freezes during ENOSPC never reached the state DB after space
/// came back (API 1, metrics 4), and nothing counted them.
#[test]
fn freezes_while_the_disk_is_full_are_written_when_space_comes_back() {
    let fs = TinyFs::mount(4 << 20);
    let data = fs.path().join("data");
    let sidecar = Sidecar::start(&data);
    let ballast = fs.fill();
    let said = poll_until(
        "the state DB to report the full disk",
        NOTICE_TIMEOUT,
        || {
            let r = sidecar.get("/readyz");
            if r.status == 503 {
                Ok(r.body)
            } else {
                Err(format!("{} {:?}", r.status, r.body))
            }
        },
    );
    assert!(said.contains("no space left on device"), "{said}");

    for n in 1..=3 {
        stop_for_a_while(&sidecar);
        poll_until("the freeze to be counted", FREEZE_TIMEOUT, || {
            let seen = freeze_count(&sidecar);
            if seen >= n as f64 {
                Ok(())
            } else {
                Err(format!("{seen}"))
            }
        });
    }
    let status = sidecar.status();
    assert_eq!(status["state_db_pending_writes"], 3, "{status:#}");
    assert!(sidecar.freezes().is_empty(), "nothing could be written yet");
    assert_eq!(
        sidecar.metrics().expect("stallwatch_state_writes_pending"),
        3.0
    );

    std::fs::remove_file(ballast).unwrap();
    let events = poll_until("the held freezes in the API", RECOVER_TIMEOUT, || {
        let events = sidecar.freezes();
        if events.len() >= 3 {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    });
    let m = sidecar.metrics();
    assert_eq!(
        events.len() as f64,
        m.freezes("process_stall"),
        "API and metrics"
    );
    assert_eq!(events.len(), 3);
    assert_eq!(
        m.expect("stallwatch_state_writes_dropped_total{kind=\"freeze\"}"),
        0.0
    );
    poll_until("/readyz 200 again", RECOVER_TIMEOUT, || {
        let r = sidecar.get("/readyz");
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {:?}", r.status, r.body))
        }
    });
}

/// Issue 14 item 10: a start on a full disk said "disk I/O error".
#[test]
fn a_full_disk_at_start_says_no_space_left_on_device() {
    // Free space from none to a few pages: SQLite fails at a different write each time.
    for free_blocks in [0u64, 1, 2, 4, 8] {
        let fs = TinyFs::mount(64 << 10);
        let ballast = fs.fill();
        // Hand back some blocks.
        let len = std::fs::metadata(&ballast).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&ballast)
            .unwrap();
        f.set_len(len.saturating_sub(free_blocks * 4096)).unwrap();
        drop(f);
        let data = fs.path().join("data");
        let port = common::free_port().to_string();
        let run = common::run_to_exit([
            "run".as_ref(),
            "--listen".as_ref(),
            format!("127.0.0.1:{port}").as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ]);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{free_blocks} blocks free: {run:?}"
        );
        assert!(
            run.stderr.contains("no space left on device") && !run.stderr.contains("disk I/O"),
            "{free_blocks} blocks free: {}",
            run.stderr
        );
    }
}

/// Issue 14 item 10: a directory where the state DB file should be.
#[test]
fn a_directory_where_the_state_db_should_be_says_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(STATE_DB)).unwrap();
    let port = common::free_port().to_string();
    let run = common::run_to_exit([
        "run".as_ref(),
        "--listen".as_ref(),
        format!("127.0.0.1:{port}").as_ref(),
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "one sentence: {lines:?}");
    assert!(lines[0].contains("is a directory"), "{}", lines[0]);
}

// ---- item 11 --------------------------------------------------------------------------

/// Workflows in the DBOS fixture, and steps in each: every step but a workflow's first
/// starts 3 s after the one before ended, a gap over `gap_min`.
const WORKFLOWS: usize = 10;
const STEPS_PER_WORKFLOW: usize = 1000;

/// A DBOS system DB (SQLite, the columns the source reads) holding
/// [`WORKFLOWS`] × [`STEPS_PER_WORKFLOW`] finished steps within the last hour.
fn dbos_db_full_of_gaps(dir: &Path) -> PathBuf {
    let path = dir.join("dbos.sqlite");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(dbos_schema::SQLITE).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let first_ms = now_ms - 55 * 60_000;
    let tx = conn.transaction().unwrap();
    for w in 0..WORKFLOWS {
        let id = format!("wf-{w}");
        tx.execute(
            "INSERT INTO workflow_status (workflow_uuid, status, name, created_at, updated_at,
                 started_at_epoch_ms) VALUES (?1, 'SUCCESS', 'burst', ?2, ?2, ?2)",
            params![id, first_ms],
        )
        .unwrap();
        for s in 0..STEPS_PER_WORKFLOW {
            let start = first_ms + (s as i64) * 3_010 + w as i64;
            tx.execute(
                "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name,
                     started_at_epoch_ms, completed_at_epoch_ms) VALUES (?1, ?2, 'step', ?3, ?4)",
                params![id, s as i64 + 1, start, start + 10],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    path
}

/// Issue 14 item 11: episodes beyond the writer's queue were dropped from the durable
/// record with only `dropped_total` to show for it; `/api/v1/episodes` said nothing.
#[test]
fn episodes_beyond_the_writers_queue_are_folded_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_db_full_of_gaps(dir.path());
    let config = format!(
        "[[source]]\nname = \"app\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n\
         poll = \"500ms\"\ngap_min = \"2s\"\nstall_after = \"1h\"\n",
        db.display()
    );
    let data = dir.path().join("data");
    let sidecar = Sidecar::start_with(
        &data,
        &Launch {
            config: Some(config),
            env: Vec::new(),
        },
    );
    let gaps = |m: &common::Metrics| {
        m.0.lines()
            .filter(|l| {
                l.starts_with("stallwatch_step_gaps_total{") && l.contains("source=\"app\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let expected = (WORKFLOWS * (STEPS_PER_WORKFLOW - 1)) as f64;
    // Counted, then stored or folded, in a state that no longer changes.
    let (counted, stored, folded) =
        poll_until("every episode stored or folded", EPISODE_TIMEOUT, || {
            let counted = gaps(&sidecar.metrics());
            let r = sidecar.get("/api/v1/episodes?limit=10000");
            let rows: Vec<serde_json::Value> =
                serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
            let stored = rows.iter().filter(|r| r["kind"] != "folded").count() as f64;
            let folded: f64 = rows
                .iter()
                .filter(|r| r["kind"] == "folded")
                .map(|r| {
                    assert_eq!(r["source"], "app", "{r}");
                    r["folded"].as_f64().unwrap()
                })
                .sum();
            if counted >= expected && stored + folded == counted {
                Ok((counted, stored, folded))
            } else {
                Err(format!(
                    "counted {counted}, stored {stored}, folded {folded}"
                ))
            }
        });
    eprintln!("episodes: {counted} counted, {stored} stored, {folded} folded");
    assert_eq!(counted, expected, "one episode per gap");
    assert!(
        folded > 0.0,
        "the queue must have overflowed: {stored} stored"
    );
    let m = sidecar.metrics();
    assert_eq!(
        m.expect("stallwatch_episodes_folded_total{source=\"app\"}"),
        folded
    );
    assert_eq!(
        m.expect("stallwatch_dropped_total{queue=\"state_episodes\"}"),
        folded
    );

    let report = common::run_to_exit(["report".as_ref(), "--data-dir".as_ref(), data.as_os_str()]);
    assert!(report.status.success(), "{report:?}");
    let line = format!("app: {folded} more episodes folded");
    assert!(
        report.stdout.contains(&line),
        "want {line:?} in:\n{}",
        report.stdout
    );
}
