//! Issue 4, bad input: a source that cannot be read reports `stallwatch_source_up 0`, counts
//! the failure by kind in `stallwatch_source_errors_total`, and logs one clear line naming
//! the source and the problem — while a healthy source in the same sidecar keeps reading
//! (`source_up 1`, its exact depth) and `/metrics` keeps answering. Where the problem can
//! be fixed under a running sidecar, the source recovers on its own.
//!
//! `source_up` is 0 before a source's first poll too, so every "down" here also requires
//! an error of the expected kind: a source that never polled cannot pass.

mod common;
mod lab_db;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{poll_until, Metrics, Sidecar};
use lab_db::{
    create, create_healthy, depth, errors, healthy_ok, insert_job, lab_source, shown, start, up,
    wait_metrics, Journal, SEEN_TIMEOUT,
};
use rusqlite::Connection;

/// The healthy source beside every broken one.
const GOOD: &str = "good";
/// The source under test.
const BAD: &str = "bad";
/// Pending jobs in the databases the broken source reads once it is fixed.
const FIXED_PENDING: i64 = 3;
/// How long the writer in the lock test holds its exclusive lock (issue 4).
const LOCK_HOLD: Duration = Duration::from_secs(10);

/// Starts a sidecar with the healthy source and `BAD` reading `bad_db`.
fn start_beside_healthy(dir: &Path, bad_db: &Path) -> Sidecar {
    let good_db = dir.join("good.db");
    create_healthy(&good_db, Journal::Rollback);
    start(
        dir,
        &format!("{}{}", lab_source(GOOD, &good_db), lab_source(BAD, bad_db)),
    )
}

/// Waits until `BAD` is down with at least one error of `kind` while the healthy source
/// reads its exact depth, all in one scrape; returns it.
#[track_caller]
fn wait_down(sidecar: &Sidecar, kind: &str) -> Metrics {
    let mut expected = healthy_ok(GOOD);
    expected.push((up(BAD), 0.0));
    poll_until(
        &format!("{BAD} down with a {kind:?} error beside a healthy source"),
        SEEN_TIMEOUT,
        || {
            let m = sidecar.metrics();
            let mut wrong: Vec<String> = expected
                .iter()
                .filter(|(s, v)| m.value(s) != Some(*v))
                .map(|(s, v)| format!("{} (want {v})", shown(&m, s)))
                .collect();
            if !m.value(&errors(BAD, kind)).is_some_and(|n| n >= 1.0) {
                wrong.push(format!("{} (want ≥ 1)", shown(&m, &errors(BAD, kind))));
            }
            if wrong.is_empty() {
                Ok(m)
            } else {
                Err(wrong.join("; "))
            }
        },
    )
}

/// The stderr line that reports `BAD`'s failed poll of `kind`.
#[track_caller]
fn failure_line(sidecar: &Sidecar, kind: &str) -> String {
    let tag = format!("kind=\"{kind}\"");
    poll_until(
        &format!("a log line for {BAD}'s {kind} error"),
        SEEN_TIMEOUT,
        || {
            let log = sidecar.log();
            log.lines()
                .find(|l| {
                    l.contains("WARN")
                        && l.contains("source poll failed")
                        && names_source(l, BAD)
                        && l.contains(&tag)
                })
                .map(str::to_string)
                .ok_or(log)
        },
    )
}

/// The line carries the field `source=NAME` (not a longer name starting with it).
fn names_source(line: &str, name: &str) -> bool {
    let field = format!("source={name}");
    line.match_indices(&field).any(|(i, _)| {
        let after = &line[i + field.len()..];
        (i == 0 || line.as_bytes()[i - 1] == b' ') && (after.is_empty() || after.starts_with(' '))
    })
}

/// `last_error` of `BAD` in `/api/v1/status`.
fn status_error(sidecar: &Sidecar) -> String {
    let status = sidecar.status();
    let source = status["sources"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == BAD))
        .unwrap_or_else(|| panic!("/api/v1/status lists no source {BAD}: {status}"));
    assert_eq!(source["up"], false, "{source}");
    source["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{BAD} has no last_error: {source}"))
        .to_string()
}

#[track_caller]
fn assert_mentions(what: &str, text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what} should mention {needle:?}: {text}"
        );
    }
}

/// Writes a lab-jobs database with `FIXED_PENDING` pending jobs.
fn write_fixed(path: &Path) {
    let conn = create(path, Journal::Rollback);
    for i in 0..FIXED_PENDING {
        insert_job(&conn, &format!("fixed-{i}"), "pending", 0);
    }
}

/// Waits until `BAD` reads `FIXED_PENDING` pending jobs and says so in the log.
#[track_caller]
fn wait_recovered(sidecar: &Sidecar) {
    let mut expected = healthy_ok(GOOD);
    expected.push((up(BAD), 1.0));
    expected.push((depth(BAD, "pending"), FIXED_PENDING as f64));
    wait_metrics(sidecar, &format!("{BAD} to recover"), &expected);
    let log = sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.contains("source readable again") && names_source(l, BAD)),
        "no 'source readable again' line for {BAD}:\n{log}"
    );
}

#[test]
fn missing_file_is_reported_then_picked_up_once_created() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("not-yet.db");
    let sidecar = start_beside_healthy(dir.path(), &bad_db);

    wait_down(&sidecar, "missing");
    let line = failure_line(&sidecar, "missing");
    assert_mentions(
        "the log line",
        &line,
        &[&bad_db.display().to_string(), "does not exist"],
    );

    // The app starts and creates its database in place, while the sidecar polls it.
    write_fixed(&bad_db);
    wait_recovered(&sidecar);
}

#[test]
fn a_text_file_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("notes.db");
    fs::write(&bad_db, "these are notes, not a database\n".repeat(64)).unwrap();
    let sidecar = start_beside_healthy(dir.path(), &bad_db);

    wait_down(&sidecar, "not_a_database");
    let line = failure_line(&sidecar, "not_a_database");
    assert_mentions(
        "the log line",
        &line,
        &[&bad_db.display().to_string(), "not a SQLite database"],
    );
    assert_mentions(
        "last_error",
        &status_error(&sidecar),
        &["not a SQLite database"],
    );
}

#[test]
fn missing_table_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("other-app.db");
    let conn = Connection::open(&bad_db).unwrap();
    conn.execute_batch(
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, status TEXT);
         CREATE TABLE dead_letter (key, payload, error, died REAL);",
    )
    .unwrap();
    drop(conn);
    let sidecar = start_beside_healthy(dir.path(), &bad_db);

    wait_down(&sidecar, "schema");
    let line = failure_line(&sidecar, "schema");
    assert_mentions("the log line", &line, &["no such table: jobs"]);
    assert_mentions(
        "last_error",
        &status_error(&sidecar),
        &["no such table: jobs"],
    );
}

/// A `jobs` table whose columns are `columns`, one pending row: the preset's query names
/// a column it lacks, and the error must name that column.
fn missing_column_is_named(columns: &str, row: &str, column: &str) {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("old-schema.db");
    let conn = Connection::open(&bad_db).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE jobs ({columns});
         CREATE TABLE dead_letter (key, payload, error, died REAL);
         INSERT INTO jobs VALUES ({row});"
    ))
    .unwrap();
    drop(conn);
    let sidecar = start_beside_healthy(dir.path(), &bad_db);

    wait_down(&sidecar, "schema");
    // SQLite writes the name bare, or quoted when it was written quoted.
    let names = |text: &str| {
        [
            format!("no such column: {column}"),
            format!("no such column: \"{column}\""),
        ]
        .iter()
        .any(|n| text.contains(n.as_str()))
    };
    let line = failure_line(&sidecar, "schema");
    assert!(
        names(&line),
        "the log line should name column {column}: {line}"
    );
    let last_error = status_error(&sidecar);
    assert!(
        names(&last_error),
        "last_error should name column {column}: {last_error}"
    );
}

#[test]
fn missing_attempts_column_is_named() {
    missing_column_is_named(
        "key TEXT PRIMARY KEY, payload, status TEXT, result",
        "'a', '{}', 'pending', NULL",
        "attempts",
    );
}

#[test]
fn missing_status_column_is_named() {
    missing_column_is_named(
        "key TEXT PRIMARY KEY, payload, state TEXT, attempts INTEGER, result",
        "'a', '{}', 'pending', 1, NULL",
        "status",
    );
}

#[test]
fn exclusive_lock_for_10s_is_locked_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("busy.db");
    write_fixed(&bad_db);
    let sidecar = start_beside_healthy(dir.path(), &bad_db);
    let mut readable = healthy_ok(GOOD);
    readable.push((up(BAD), 1.0));
    readable.push((depth(BAD, "pending"), FIXED_PENDING as f64));
    let m = wait_metrics(&sidecar, "both sources up before the lock", &readable);
    assert_eq!(m.expect(&errors(BAD, "locked")), 0.0);

    // A writer in rollback-journal mode takes the exclusive lock and holds it.
    let (locked_tx, locked_rx) = mpsc::channel();
    let path = bad_db.clone();
    let writer = std::thread::spawn(move || {
        let conn = Connection::open(&path).expect("the writer's connection");
        conn.execute_batch(
            "BEGIN EXCLUSIVE; UPDATE jobs SET attempts = attempts WHERE key = 'fixed-0';",
        )
        .expect("taking the exclusive lock");
        let since = Instant::now();
        locked_tx.send(since).unwrap();
        std::thread::sleep(LOCK_HOLD);
        conn.execute_batch("COMMIT").expect("releasing the lock");
    });
    let since: Instant = locked_rx.recv().expect("the writer took the lock");

    let m = wait_down(&sidecar, "locked");
    assert!(
        since.elapsed() < LOCK_HOLD,
        "up 0 was seen only after the lock was released"
    );
    let first = m.expect(&errors(BAD, "locked"));
    // Still locked, still polled: the count goes on rising, the healthy source stays up.
    poll_until("another locked poll", LOCK_HOLD, || {
        let m = wait_down(&sidecar, "locked");
        let n = m.expect(&errors(BAD, "locked"));
        if n > first {
            Ok(())
        } else {
            Err(format!("{} locked errors", n))
        }
    });
    assert!(
        since.elapsed() < LOCK_HOLD,
        "the second locked poll was seen only after the lock was released"
    );
    let line = failure_line(&sidecar, "locked");
    assert_mentions(
        "the log line",
        &line,
        &[&bad_db.display().to_string(), "locked"],
    );

    writer.join().expect("the writer thread");
    wait_recovered(&sidecar);
}

/// Linux capability numbers (linux/capability.h): what lets root read any file.
const CAP_DAC_OVERRIDE: libc::c_ulong = 1;
const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;

/// Starts the sidecar from a thread whose capability bounding set lacks the two
/// capabilities that let root ignore file modes: the child (still uid 0) gets no
/// permitted or effective copy of them at exec, so a mode-000 file really denies it.
/// `None` if this process may not drop them (then the case cannot be tested here).
fn start_without_dac_override(dir: &Path, bad_db: &Path) -> Option<Sidecar> {
    let (dir, bad_db) = (dir.to_path_buf(), bad_db.to_path_buf());
    std::thread::spawn(move || {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            for cap in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
                // SAFETY: PR_CAPBSET_DROP changes only this thread's bounding set; the
                // thread ends after spawning the sidecar.
                let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
                if rc != 0 {
                    eprintln!(
                        "cannot drop capability {cap}: {}",
                        std::io::Error::last_os_error()
                    );
                    return None;
                }
            }
        }
        Some(start_beside_healthy(&dir, &bad_db))
    })
    .join()
    .expect("the spawning thread")
}

/// Effective capabilities of `pid` from `/proc/PID/status`.
fn effective_caps(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/PID/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn permission_denied_is_reported_then_recovers_when_granted() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("private.db");
    write_fixed(&bad_db);
    fs::set_permissions(&bad_db, fs::Permissions::from_mode(0o000)).unwrap();
    let Some(sidecar) = start_without_dac_override(dir.path(), &bad_db) else {
        // Root with CAP_DAC_OVERRIDE reads a mode-000 file, and this process cannot take
        // that capability away from the sidecar: no real denial is possible here.
        eprintln!("SKIPPED: cannot run the sidecar without CAP_DAC_OVERRIDE");
        return;
    };
    let caps = effective_caps(sidecar.pid());
    assert_eq!(
        caps & (1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH),
        0,
        "the sidecar can still override file modes (CapEff {caps:x})"
    );

    wait_down(&sidecar, "permission");
    let line = failure_line(&sidecar, "permission");
    assert_mentions(
        "the log line",
        &line,
        &[&bad_db.display().to_string(), "ermission denied"],
    );
    assert_mentions("last_error", &status_error(&sidecar), &["ermission denied"]);

    fs::set_permissions(&bad_db, fs::Permissions::from_mode(0o644)).unwrap();
    wait_recovered(&sidecar);
}

#[test]
fn corrupt_page_in_the_middle_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad_db = dir.path().join("damaged.db");
    let conn = create(&bad_db, Journal::Rollback);
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..2000 {
        insert_job(&tx, &format!("job-{i:05}"), "pending", 1);
    }
    tx.commit().unwrap();
    // Leaf pages of the jobs table: every poll reads them all (attempts of pending rows).
    let leaves: Vec<i64> = conn
        .prepare(
            "SELECT pageno FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf' ORDER BY pageno",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let page_count: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert!(
        leaves.len() >= 10,
        "the table spans {} leaf pages",
        leaves.len()
    );
    let victim = leaves[leaves.len() / 2];
    assert!(
        1 < victim && victim < page_count,
        "page {victim} of {page_count}"
    );

    let mut bytes = fs::read(&bad_db).unwrap();
    let len = bytes.len();
    let start = ((victim - 1) * page_size) as usize;
    for (i, b) in bytes[start..start + page_size as usize]
        .iter_mut()
        .enumerate()
    {
        *b = [0xde, 0xad, 0xbe, 0xef][i % 4];
    }
    fs::write(&bad_db, &bytes).unwrap();
    assert_eq!(fs::metadata(&bad_db).unwrap().len() as usize, len);
    // The damage is real: SQLite itself refuses the data.
    let check =
        Connection::open(&bad_db)
            .unwrap()
            .query_row("SELECT sum(attempts) FROM jobs", [], |r| r.get::<_, i64>(0));
    assert!(check.is_err(), "the damaged page went unnoticed: {check:?}");

    let sidecar = start_beside_healthy(dir.path(), &bad_db);
    wait_down(&sidecar, "corrupt");
    let line = failure_line(&sidecar, "corrupt");
    assert_mentions(
        "the log line",
        &line,
        &[&bad_db.display().to_string(), "corrupt"],
    );
    assert_mentions("last_error", &status_error(&sidecar), &["malformed"]);
}
