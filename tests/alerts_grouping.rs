//! Alerts a phone can live with (issue 15 items 1 and 3), end to end: a real `stallwatch
//! run` watching real SQLite queue tables, a webhook receiver on 127.0.0.1 showing what
//! was sent.
//!
//! - 30 dead letters over 60 s are at most 3 notifications whose counts add up to 30;
//! - a kill -9 inside `group_wait` loses nothing: after the restart the group is
//!   delivered once;
//! - 10,000 jobs past their lease at once, across 100 queues, are at most 5 notifications
//!   that account for every alert;
//! - 50 distinct alerts in a minute on a channel with `max_per_hour = 10`: 10 sent, the
//!   other 40 in one digest when the window opens, every one counted in
//!   `notifications_total`.

mod common;
mod lab_db;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::receiver::{show, Received, Receiver};
use common::{poll_until, Launch, Metrics, Sidecar, QUIET_RULES};
use lab_db::{create, insert_dead_letter, now_unix_s, Journal};
use rusqlite::Connection;

const HOOK: &str = "hook";

fn hook(receiver: &Receiver) -> String {
    format!(
        "[[channel]]\nname = \"{HOOK}\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        receiver.url("/hook")
    )
}

fn launch(config: String) -> Launch {
    Launch {
        config: Some(config),
        env: Vec::new(),
    }
}

fn lab_config(receiver: &Receiver, db: &Path, alerts: &str) -> Launch {
    launch(format!(
        "[alerts]\nbackoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n{alerts}\n{}\n\
         [[source]]\nname = \"demo-jobs\"\nkind = \"queue_table\"\nurl = \"sqlite://{}\"\n\
         preset = \"lab-jobs\"\npoll = \"500ms\"\n{QUIET_RULES}",
        hook(receiver),
        db.display()
    ))
}

/// The `count` of events each delivered notification stands for.
fn counts(requests: &[Received]) -> Vec<u64> {
    requests
        .iter()
        .map(|r| r.json()["data"]["count"].as_u64().unwrap_or(0))
        .collect()
}

fn outcome(m: &Metrics, outcome: &str) -> f64 {
    m.value(&format!(
        "stallwatch_notifications_total{{channel=\"{HOOK}\",outcome=\"{outcome}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn thirty_dead_letters_in_a_minute_are_at_most_three_notifications_that_count_30() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lab.db");
    let conn = create(&db, Journal::Wal);
    let receiver = Receiver::start();
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &lab_config(
            &receiver,
            &db,
            "group_wait = \"10s\"\ngroup_interval = \"30s\"\n",
        ),
    );
    std::thread::sleep(Duration::from_secs(2)); // the first poll sets the baseline
    for i in 0..30 {
        insert_dead_letter(&conn, &format!("k{i}"), now_unix_s());
        std::thread::sleep(Duration::from_secs(2));
    }
    let sent = receiver.wait_until(
        "notifications counting 30 dead letters",
        Duration::from_secs(90),
        |r| counts(r).iter().sum::<u64>() >= 30,
    );
    // Nothing more comes after the count is complete.
    std::thread::sleep(Duration::from_secs(8));
    let sent_after = receiver.requests();
    assert_eq!(sent_after.len(), sent.len(), "{}", show(&sent_after));
    assert!(
        sent.len() <= 3,
        "30 dead letters in a minute paged {} times:\n{}",
        sent.len(),
        show(&sent)
    );
    assert_eq!(counts(&sent).iter().sum::<u64>(), 30, "{}", show(&sent));
    for r in &sent {
        let v = r.json();
        let n = v["data"]["count"].as_u64().unwrap();
        let title = v["data"]["title"].as_str().unwrap_or_default().to_string();
        assert!(
            title.contains(&format!("{n} new dead letter")),
            "each message names its count in its first line: {title}"
        );
    }
    let m = sidecar.metrics();
    assert_eq!(outcome(&m, "sent"), sent.len() as f64);
    let notes = outcome(&m, "sent") + outcome(&m, "grouped");
    let members: u64 = sent
        .iter()
        .map(|r| r.json()["data"]["notifications"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        notes, members as f64,
        "every notification is sent or grouped, once"
    );
}

#[test]
fn a_kill_inside_group_wait_loses_nothing_and_sends_the_group_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lab.db");
    let conn = create(&db, Journal::Wal);
    let receiver = Receiver::start();
    let config = lab_config(&receiver, &db, "group_wait = \"12s\"\n");
    let data = dir.path().join("data");
    let mut sidecar = Sidecar::start_with(&data, &config);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..5 {
        insert_dead_letter(&conn, &format!("k{i}"), now_unix_s());
        std::thread::sleep(Duration::from_millis(700));
    }
    // All five are in the outbox, waiting for the group to be due.
    poll_until(
        "the group to wait in the outbox",
        Duration::from_secs(20),
        || {
            let v = sidecar.get("/api/v1/alerts").json();
            let fired = v["recent"].as_array().map_or(0, |a| {
                a.iter().filter(|x| x["rule"] == "dead_letters").count()
            });
            if fired >= 1 && v["outbox"]["pending"] == 1 {
                Ok(())
            } else {
                Err(format!("{v:#}"))
            }
        },
    );
    assert!(
        receiver.requests().is_empty(),
        "nothing leaves inside group_wait"
    );
    sidecar.kill_hard();
    let sidecar = Sidecar::start_with(&data, &config);
    receiver.wait_until(
        "the group after the restart",
        Duration::from_secs(30),
        |r| !r.is_empty(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let sent = receiver.requests();
    assert_eq!(sent.len(), 1, "the group goes once:\n{}", show(&sent));
    assert_eq!(counts(&sent), [5], "{}", show(&sent));
    drop(sidecar);
}

/// A queue table with a lease (`claimed_at` + 1 s), as in tests/alerts_silence.rs.
fn lease_config(db: &Path, alerts: &str, channel: &str) -> Launch {
    launch(format!(
        "[alerts]\nbackoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n{alerts}\n{channel}\n\
         [[source]]\nname = \"payments-db\"\nkind = \"queue_table\"\nurl = \"sqlite://{}\"\n\
         poll = \"1s\"\ntable = \"jobs\"\nkey_column = \"id\"\nstatus_column = \"status\"\n\
         queue_column = \"queue\"\nclaimed_column = \"claimed_at\"\nrunning_status = \"running\"\n\
         lease = \"1s\"\nopen_statuses = [\"queued\", \"running\"]\n\
         [[rule]]\nrule = \"stuck_jobs\"\nthreshold = 1\nresolve_after = \"0s\"\n{QUIET_RULES}",
        db.display()
    ))
}

/// `jobs` with `jobs` running jobs claimed an hour ago over `queues` queues, written
/// beside and renamed into place so the polling sidecar never sees it half made.
fn write_stuck(db: &Path, jobs: usize, queues: usize) {
    let building = db.with_extension("building");
    let _ = std::fs::remove_file(&building);
    {
        let mut conn = Connection::open(&building).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, status TEXT NOT NULL, claimed_at REAL);",
        )
        .unwrap();
        let claimed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - 3600.0;
        let tx = conn.transaction().unwrap();
        for i in 0..jobs {
            tx.execute(
                "INSERT INTO jobs (queue, status, claimed_at) VALUES (?1, 'running', ?2)",
                rusqlite::params![format!("q{:03}", i % queues), claimed],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    std::fs::rename(&building, db).unwrap();
}

/// A sidecar watching an empty lease table (`write_stuck` fills it), with `alerts` in
/// `[alerts]` and `channel` as its one channel.
fn lease_sidecar(
    alerts: &str,
    channel: impl FnOnce(&Receiver) -> String,
) -> (tempfile::TempDir, std::path::PathBuf, Receiver, Sidecar) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    write_stuck(&db, 0, 1);
    let receiver = Receiver::start();
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &lease_config(&db, alerts, &channel(&receiver)),
    );
    (dir, db, receiver, sidecar)
}

#[test]
fn ten_thousand_jobs_past_their_lease_are_at_most_five_notifications_all_counted() {
    let (_dir, db, receiver, sidecar) = lease_sidecar("group_wait = \"5s\"\n", hook);
    std::thread::sleep(Duration::from_secs(2));
    write_stuck(&db, 10_000, 100);
    let firing = |m: &Metrics| {
        m.value("stallwatch_alerts_firing{rule=\"stuck_jobs\"}")
            .unwrap_or(0.0)
    };
    poll_until("stuck_jobs alerts firing", Duration::from_secs(30), || {
        let n = firing(&sidecar.metrics());
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n} firing"))
        }
    });
    let sent = receiver.wait_until("the grouped notification", Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    std::thread::sleep(Duration::from_secs(8));
    let sent = if receiver.requests().len() > sent.len() {
        receiver.requests()
    } else {
        sent
    };
    let m = sidecar.metrics();
    let alerts = firing(&m);
    assert!(
        sent.len() <= 5,
        "{alerts} stuck_jobs alerts paged {} times:\n{}",
        sent.len(),
        show(&sent)
    );
    let members: u64 = sent
        .iter()
        .map(|r| r.json()["data"]["notifications"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        members as f64,
        alerts,
        "every alert is in a notification: {}",
        show(&sent)
    );
    assert_eq!(
        outcome(&m, "sent") + outcome(&m, "grouped"),
        alerts,
        "and counted once, sent or grouped"
    );
    let text = sent[0].json()["data"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("and ") && text.contains("more"), "{text}");
}

#[test]
fn fifty_alerts_on_a_channel_limited_to_ten_are_ten_sends_and_one_digest() {
    // Each alert alone and at once: only the rate limit folds.
    let (_dir, db, receiver, sidecar) = lease_sidecar("group_wait = \"0s\"\n", |r| {
        format!("{}max_per_hour = 10\nrate_window = \"20s\"\n", hook(r))
    });
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    write_stuck(&db, 50, 50);
    let first = receiver.wait_until("ten sends", Duration::from_secs(15), |r| r.len() >= 10);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        receiver.requests().len(),
        10,
        "the limit holds:\n{}",
        show(&receiver.requests())
    );
    let all = receiver.wait_until("the digest", Duration::from_secs(40), |r| r.len() >= 11);
    assert!(
        t0.elapsed() >= Duration::from_secs(15),
        "the digest waits for the window"
    );
    std::thread::sleep(Duration::from_secs(3));
    let all = if receiver.requests().len() > all.len() {
        receiver.requests()
    } else {
        all
    };
    assert_eq!(all.len(), 11, "{}", show(&all));
    let digest = all[10].json();
    let title = digest["data"]["title"].as_str().unwrap_or_default();
    assert!(title.contains("40 notifications"), "{title}");
    let m = sidecar.metrics();
    assert_eq!(outcome(&m, "sent"), 11.0);
    assert_eq!(outcome(&m, "folded"), 40.0);
    assert_eq!(first.len(), 10);
}

/// Issue 15 item 2, the other side: a job stuck for a reason other than a freeze (its
/// worker alone stopped, the sidecar running) pages on its own.
#[test]
fn a_job_stuck_because_its_worker_alone_stopped_pages_on_its_own() {
    let (_dir, db, receiver, sidecar) = lease_sidecar("group_wait = \"1s\"\n", hook);
    // The worker holds a running job and renews its 1 s lease every 200 ms.
    let mut worker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n\
             c.execute(\"INSERT INTO jobs (queue, status, claimed_at) VALUES ('mail', 'running', ?)\", (time.time(),))\n\
             while True:\n    time.sleep(0.2)\n    c.execute('UPDATE jobs SET claimed_at = ?', (time.time(),))\n",
        )
        .arg(&db)
        .spawn()
        .expect("python3 for the worker");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        receiver.requests().is_empty(),
        "a renewed lease is not stuck"
    );
    common::signal(worker.id() as i32, libc::SIGSTOP);
    let sent = receiver.wait_until("the stuck job's page", Duration::from_secs(20), |r| {
        r.iter().any(|x| x.json()["data"]["rule"] == "stuck_jobs")
    });
    common::signal(worker.id() as i32, libc::SIGCONT);
    let _ = worker.kill();
    let _ = worker.wait();
    let page = sent
        .iter()
        .find(|x| x.json()["data"]["rule"] == "stuck_jobs")
        .unwrap()
        .json();
    assert!(
        page["data"]["title"]
            .as_str()
            .unwrap_or_default()
            .contains("stuck past their lease"),
        "{page:#}"
    );
    assert!(sidecar.freezes().is_empty(), "the sidecar ran throughout");
    assert_eq!(outcome(&sidecar.metrics(), "explained"), 0.0);
}
