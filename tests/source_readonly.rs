//! Issue 4: the app database is never modified. A sidecar polling a quiescent database
//! every 300 ms for 5 s, then stopped (closing its connection, when a read-write
//! connection would checkpoint), leaves the bytes of the database file and of its `-wal`
//! exactly as they were — in WAL mode with the app's writer still open, in WAL mode with
//! nobody else connected, and in rollback-journal mode.
//!
//! Each case first proves the sidecar really read the data, including rows that exist
//! only in the `-wal`, so a sidecar that never opened the file cannot pass; and while it
//! runs, every handle it holds on the database file is open read-only.

mod common;
mod lab_db;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Sidecar;
use lab_db::{create, depth, info, insert_job, lab_source, start, up, wait_metrics, Journal};
use rusqlite::Connection;

/// How long the sidecar polls the database (issue 4).
const RUN: Duration = Duration::from_secs(5);
/// How long a SIGTERM may take.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Pending rows checkpointed into the database file, and written only to the `-wal`.
const IN_DB: i64 = 20;
const IN_WAL: i64 = 17;

fn wal_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

fn journal_of(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-journal", db.display()))
}

/// Writes `IN_DB` pending jobs into the database file itself and, in WAL mode, `IN_WAL`
/// more that stay in the `-wal` (automatic checkpoints off). Returns the open writer.
fn write_app_db(db: &Path, journal: Journal) -> Connection {
    let conn = create(db, journal);
    for i in 0..IN_DB {
        insert_job(&conn, &format!("old-{i}"), "pending", i % 3);
    }
    if journal == Journal::Wal {
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0, "the checkpoint was blocked");
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        for i in 0..IN_WAL {
            // One transaction each: several commits' frames in the -wal.
            insert_job(&conn, &format!("new-{i}"), "pending", 1);
        }
        let wal = fs::metadata(wal_of(db)).expect("a -wal file").len();
        assert!(wal > 32 + 4096, "the -wal holds frames: {wal} bytes");
    }
    conn
}

/// The bytes of the database file and of its `-wal` (empty if none).
fn snapshot(db: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    (fs::read(db).unwrap(), fs::read(wal_of(db)).ok())
}

/// Runs a sidecar on `db` for [`RUN`] after its first exact read, stops it cleanly and
/// returns once it has exited.
fn run_sidecar(dir: &Path, db: &Path, journal: Journal, pending: i64) {
    let mut sidecar: Sidecar = start(dir, &lab_source("app", db));
    let read = [
        (up("app"), 1.0),
        (depth("app", "pending"), pending as f64),
        (info("app", journal), 1.0),
    ];
    wait_metrics(&sidecar, "the sidecar to read every row", &read);
    // While it polls, every handle it holds on the database file is read-only. (Not the
    // -wal: SQLite opens that read-write even for a read-only connection, and enforces
    // read-only above the file.)
    let watched = db.canonicalize().unwrap();
    let until = Instant::now() + RUN;
    while Instant::now() < until {
        for (fd, path, mode) in open_files(sidecar.pid()) {
            if path == watched {
                assert_eq!(
                    mode,
                    libc::O_RDONLY,
                    "fd {fd} of the sidecar has {} open for writing",
                    path.display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_metrics(&sidecar, "the sidecar still reading", &read);
    sidecar.signal(libc::SIGTERM);
    let status = sidecar
        .wait_exit(STOP_DEADLINE)
        .expect("the sidecar to stop on SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// The files `pid` has open: (fd, path, access mode from `/proc/PID/fdinfo`).
fn open_files(pid: i32) -> Vec<(String, PathBuf, i32)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let fd = e.ok()?.file_name().to_string_lossy().into_owned();
        let path = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())?;
        Some((fd, path, flags & libc::O_ACCMODE))
    })
    .collect()
}

#[track_caller]
fn assert_unchanged(db: &Path, before: &(Vec<u8>, Option<Vec<u8>>)) {
    let after = snapshot(db);
    assert!(
        after.0 == before.0,
        "{} changed: {} bytes before, {} after",
        db.display(),
        before.0.len(),
        after.0.len()
    );
    assert!(
        after.1 == before.1,
        "{} changed: {:?} bytes before, {:?} after",
        wal_of(db).display(),
        before.1.as_ref().map(Vec::len),
        after.1.as_ref().map(Vec::len)
    );
}

#[test]
fn wal_db_and_its_wal_are_unchanged_with_the_app_writer_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let writer = write_app_db(&db, Journal::Wal);
    let before = snapshot(&db);
    assert!(before.1.is_some());

    run_sidecar(dir.path(), &db, Journal::Wal, IN_DB + IN_WAL);
    assert_unchanged(&db, &before);
    drop(writer);
}

#[test]
fn wal_db_and_its_wal_are_unchanged_when_the_sidecar_is_the_only_connection() {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("written.db");
    let writer = write_app_db(&written, Journal::Wal);
    // A copy taken while the writer is open: a database whose -wal was never
    // checkpointed (an app that was killed), with no -shm and no other connection.
    let db = dir.path().join("app.db");
    fs::copy(&written, &db).unwrap();
    fs::copy(wal_of(&written), wal_of(&db)).unwrap();
    drop(writer);
    let before = snapshot(&db);
    assert!(before.1.is_some());

    run_sidecar(dir.path(), &db, Journal::Wal, IN_DB + IN_WAL);
    assert_unchanged(&db, &before);
}

#[test]
fn rollback_journal_db_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    drop(write_app_db(&db, Journal::Rollback));
    let before = snapshot(&db);
    assert!(before.1.is_none());

    run_sidecar(dir.path(), &db, Journal::Rollback, IN_DB);
    assert_unchanged(&db, &before);
    assert!(
        !journal_of(&db).exists(),
        "a -journal was left behind: something wrote"
    );
}
