//! Issue 4: the `lab-jobs` preset on a generated database with known content. Every
//! metric equals the exact count, on the first poll and after the queue changes:
//! depth of the open status only, dead letters now and new since the sidecar started,
//! retries, and the journal mode — in WAL and in rollback-journal mode.
//!
//! Retries are this build's definition (`src/sources/queue_table.rs`): failed attempts
//! seen on open jobs, i.e. the attempts of pending rows on the first poll, then every
//! increase of a pending row's attempts.

mod common;
mod lab_db;

use lab_db::{
    create, dead_letters, dead_letters_total, depth, info, insert_dead_letter, insert_job,
    lab_source, now_unix_s, retries_total, start, up, wait_metrics, Journal, SEVERAL_POLLS,
};
use rusqlite::Connection;

const PENDING: i64 = 37;
const DONE: i64 = 120;
const DEAD: i64 = 7;
/// Attempts of pending job `i`: 0, 1, 2, 3, 0, 1, … (ten 0s, nine each of 1, 2 and 3).
fn pending_attempts(i: i64) -> i64 {
    i % 4
}

/// Writes the known content: 37 pending jobs with attempts 0–3, 120 done jobs (with
/// attempts, which must not count as retries) and 7 dead letters from the last week.
fn fill(conn: &Connection) {
    let tx = conn.unchecked_transaction().expect("transaction");
    // Interleaved, as a real queue is: done and pending rows share pages.
    for i in 0..DONE {
        insert_job(&tx, &format!("done-{i:03}"), "done", 1 + i % 4);
        if i < PENDING {
            insert_job(&tx, &format!("job-{i:03}"), "pending", pending_attempts(i));
        }
    }
    let now = now_unix_s();
    for i in 0..DEAD {
        insert_dead_letter(&tx, &format!("dead-{i}"), now - 3600.0 * (i + 1) as f64);
    }
    tx.commit().expect("commit");
}

fn lab_jobs_counts_exactly(journal: Journal) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lab.db");
    let conn = create(&db, journal);
    fill(&conn);
    let retries: i64 = (0..PENDING).map(pending_attempts).sum();
    assert_eq!(retries, 54, "the fixture's sum of pending attempts");

    let sidecar = start(dir.path(), &lab_source("lab", &db));
    let first = vec![
        (up("lab"), 1.0),
        (depth("lab", "pending"), PENDING as f64),
        (dead_letters("lab"), DEAD as f64),
        (dead_letters_total("lab"), 0.0),
        (retries_total("lab"), retries as f64),
        (info("lab", journal), 1.0),
    ];
    let m = wait_metrics(&sidecar, "the first poll's exact counts", &first);
    assert_no_done_depth(&m.0);

    // Further polls of an unchanged queue count nothing again.
    std::thread::sleep(SEVERAL_POLLS);
    let m = wait_metrics(&sidecar, "the same counts after more polls", &first);
    assert_no_done_depth(&m.0);

    // Two jobs die and three pending jobs fail once more, in one write.
    let tx = conn.unchecked_transaction().expect("transaction");
    let now = now_unix_s();
    insert_dead_letter(&tx, "dead-new-1", now);
    insert_dead_letter(&tx, "dead-new-2", now);
    let bumped = tx
        .execute(
            "UPDATE jobs SET attempts = attempts + 1 WHERE key IN ('job-000', 'job-005', 'job-010')",
            [],
        )
        .expect("bumping attempts");
    assert_eq!(bumped, 3);
    tx.commit().expect("commit");

    let after = vec![
        (up("lab"), 1.0),
        (depth("lab", "pending"), PENDING as f64),
        (dead_letters("lab"), (DEAD + 2) as f64),
        (dead_letters_total("lab"), 2.0),
        (retries_total("lab"), (retries + 3) as f64),
        (info("lab", journal), 1.0),
    ];
    wait_metrics(&sidecar, "the new dead letters and retries", &after);
    std::thread::sleep(SEVERAL_POLLS);
    let m = wait_metrics(&sidecar, "the same counts after more polls", &after);
    assert_no_done_depth(&m.0);
    let other_mode = match journal {
        Journal::Wal => Journal::Rollback,
        Journal::Rollback => Journal::Wal,
    };
    assert_eq!(m.value(&info("lab", other_mode)), None, "{}", m.0);
}

/// Finished rows are never counted (the query reads open statuses only).
#[track_caller]
fn assert_no_done_depth(metrics: &str) {
    let done: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("stallwatch_queue_depth{") && !l.contains("status=\"pending\""))
        .collect();
    assert!(
        done.is_empty(),
        "only the pending status may have a depth series: {done:?}"
    );
}

#[test]
fn lab_jobs_preset_counts_exactly_in_wal_mode() {
    lab_jobs_counts_exactly(Journal::Wal);
}

#[test]
fn lab_jobs_preset_counts_exactly_in_rollback_journal_mode() {
    lab_jobs_counts_exactly(Journal::Rollback);
}

/// A queue that had no dead letters when the sidecar started: the first ones still count,
/// in the gauge and as new.
#[test]
fn first_dead_letters_in_an_empty_table_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lab.db");
    let conn = create(&db, Journal::Wal);
    insert_job(&conn, "job-1", "pending", 0);
    let sidecar = start(dir.path(), &lab_source("lab", &db));
    let empty = [
        (up("lab"), 1.0),
        (depth("lab", "pending"), 1.0),
        (dead_letters("lab"), 0.0),
        (dead_letters_total("lab"), 0.0),
    ];
    wait_metrics(&sidecar, "an empty dead-letter table", &empty);
    std::thread::sleep(SEVERAL_POLLS);

    let now = now_unix_s();
    insert_dead_letter(&conn, "dead-1", now);
    insert_dead_letter(&conn, "dead-2", now + 0.5);
    let two = [
        (up("lab"), 1.0),
        (dead_letters("lab"), 2.0),
        (dead_letters_total("lab"), 2.0),
    ];
    wait_metrics(&sidecar, "the first two dead letters", &two);
    std::thread::sleep(SEVERAL_POLLS);
    wait_metrics(&sidecar, "the same counts after more polls", &two);
}

/// Starts a sidecar on a rollback-journal lab DB with the known content and waits for
/// its first exact counts.
fn started() -> (tempfile::TempDir, Connection, common::Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lab.db");
    let conn = create(&db, Journal::Rollback);
    fill(&conn);
    let sidecar = start(dir.path(), &lab_source("lab", &db));
    wait_metrics(
        &sidecar,
        "the first poll",
        &[(up("lab"), 1.0), (dead_letters("lab"), DEAD as f64)],
    );
    (dir, conn, sidecar)
}

/// `stallwatch_dead_letters` is "dead letters now": when the operator requeues (deletes)
/// dead letters, the gauge goes down.
#[test]

fn dead_letters_gauge_follows_requeued_dead_letters() {
    let (_dir, conn, sidecar) = started();
    conn.execute(
        "DELETE FROM dead_letter WHERE key IN ('dead-0', 'dead-1', 'dead-2')",
        [],
    )
    .expect("requeueing three dead letters");
    wait_metrics(
        &sidecar,
        "the dead-letter gauge after three were requeued",
        &[
            (dead_letters("lab"), (DEAD - 3) as f64),
            (dead_letters_total("lab"), 0.0),
        ],
    );
}

/// The app's clock is not synchronised (docs/design.md): a dead letter written after the
/// clock stepped back has a `died` below the newest one seen. It is still a dead letter.
#[test]

fn dead_letter_with_an_earlier_died_time_is_counted() {
    let (_dir, conn, sidecar) = started();
    // The newest existing dead letter died an hour ago; this one "died" two hours ago.
    insert_dead_letter(&conn, "dead-after-clock-step", now_unix_s() - 7200.0);
    wait_metrics(
        &sidecar,
        "the late-stamped dead letter",
        &[
            (dead_letters("lab"), (DEAD + 1) as f64),
            (dead_letters_total("lab"), 1.0),
        ],
    );
}
