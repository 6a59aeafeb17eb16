//! Fault cases: JSONL sources (cost day, non-regular files, oversized lines, shutdown).
//!
//! - Issue 14 item 3: one line dated two days ahead moved the cost day forward, so
//!   `cost_usd_today` read 0 and the cap never fired while today's spend was over it.
//! - Issue 14 item 14 (first sentence): a line over 1 MiB was only a log line.
//! - Issue 14 item 4: a source path that is (or becomes) a FIFO blocked the source in
//!   `open()` forever with `source_up` 1, and SIGTERM no longer stopped the process.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::receiver::Receiver;
use crate::common::{poll_until, run_to_exit, Launch, Metrics, Sidecar};

/// Poll interval of every source under test.
const POLL: &str = "300ms";
/// How long a change to a source's file may take to show, on a loaded 2-core machine.
const SEEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cost alert may take from the spend to the receiver.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest run of one test here, with room: the UTC cost day must not turn during it.
const LONGEST_TEST: Duration = Duration::from_secs(120);
/// What an orchestrator waits after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// The source's name in every config here.
const SOURCE: &str = "spend";

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// If the UTC day would turn during the test, wait for it to turn first.
fn avoid_utc_midnight() {
    let left = 86_400.0 - now_unix_s().rem_euclid(86_400.0);
    if left < LONGEST_TEST.as_secs_f64() {
        std::thread::sleep(Duration::from_secs_f64(left + 1.0));
    }
}

fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} to append: {e}", path.display()));
    f.write_all(data).expect("appending");
}

/// One spend line at unix time `ts`, as the job agent logs it.
fn spend_line(ts: f64, usd: f64) -> String {
    format!(
        "{{\"ts\": {ts:.6}, \"key\": \"job-1\", \"event\": \"step_done\", \"cost_usd\": {usd}}}\n"
    )
}

fn jsonl_source(log: &Path, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"{SOURCE}\"\nkind = \"jsonl\"\nurl = \"{}\"\npoll = \"{POLL}\"\n{extra}\n",
        log.display()
    )
}

fn start(data: &Path, config: String) -> Sidecar {
    Sidecar::start_with(
        data,
        &Launch {
            config: Some(config),
            env: Vec::new(),
        },
    )
}

fn series(family: &str, labels: &str) -> String {
    format!("stallwatch_{family}{{{labels}}}")
}

fn errors(source: &str, kind: &str) -> String {
    series(
        "source_errors_total",
        &format!("kind=\"{kind}\",source=\"{source}\""),
    )
}

fn up(source: &str) -> String {
    series("source_up", &format!("source=\"{source}\""))
}

/// Waits until every `(series, value)` holds in one scrape; returns that scrape.
#[track_caller]
fn wait_metrics(sidecar: &Sidecar, want: &[(String, f64)]) -> Metrics {
    poll_until(&format!("{want:?}"), SEEN_TIMEOUT, || {
        let m = sidecar.metrics();
        let wrong: Vec<String> = want
            .iter()
            .filter(|(s, v)| m.value(s) != Some(*v))
            .map(|(s, v)| format!("{s} is {:?}, want {v}", m.value(s)))
            .collect();
        if wrong.is_empty() {
            Ok(m)
        } else {
            Err(wrong.join("; "))
        }
    })
}

/// The entry of `/api/v1/status` for source `name`.
#[track_caller]
fn source_status(sidecar: &Sidecar, name: &str) -> Value {
    let status = sidecar.status();
    status["sources"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("/api/v1/status lists no source {name}: {status}"))
        .clone()
}

/// Waits until source `name` is down with an error of `kind` whose text in
/// `/api/v1/status` contains `needle`; returns that text.
#[track_caller]
fn wait_down(sidecar: &Sidecar, name: &str, kind: &str, needle: &str) -> String {
    poll_until(
        &format!("{name} down with a {kind} error saying {needle:?}"),
        SEEN_TIMEOUT,
        || {
            let m = sidecar.metrics();
            let s = source_status(sidecar, name);
            let text = s["last_error"].as_str().unwrap_or_default().to_string();
            let counted = m.value(&errors(name, kind)).unwrap_or(0.0);
            if m.value(&up(name)) == Some(0.0)
                && s["up"] == false
                && counted >= 1.0
                && text.contains(needle)
            {
                Ok(text)
            } else {
                Err(format!(
                    "{} = {:?}, {} = {counted}, status {s}",
                    up(name),
                    m.value(&up(name)),
                    errors(name, kind)
                ))
            }
        },
    )
}

/// Sends SIGTERM and waits for the exit; returns the status and how long it took.
fn terminate(sidecar: &mut Sidecar) -> (Option<std::process::ExitStatus>, Duration) {
    let asked = Instant::now();
    sidecar.signal(libc::SIGTERM);
    let status = sidecar.wait_exit(STOP_DEADLINE + Duration::from_secs(5));
    (status, asked.elapsed())
}

/// SIGTERM stops it within [`STOP_DEADLINE`], exit 0, with a clean heartbeat written.
#[track_caller]
fn assert_stops_cleanly(sidecar: &mut Sidecar) {
    let (status, took) = terminate(sidecar);
    let status =
        status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM\n{}", sidecar.log()));
    assert!(
        took <= STOP_DEADLINE,
        "SIGTERM took {took:?}, more than {STOP_DEADLINE:?}\n{}",
        sidecar.log()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let db = rusqlite::Connection::open_with_flags(
        sidecar.data_dir.join("stallwatch.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening the state DB");
    let clean: i64 = db
        .query_row("SELECT clean FROM heartbeat", [], |r| r.get(0))
        .expect("reading the heartbeat");
    assert_eq!(
        clean,
        1,
        "the last heartbeat is not clean\n{}",
        sidecar.log()
    );
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: a valid NUL-terminated path; the result is checked.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Puts what `make` creates at `path` in one rename, as a log rotation would.
fn swap_in(path: &Path, make: impl FnOnce(&Path)) {
    let tmp = path.with_extension("swap");
    make(&tmp);
    std::fs::rename(&tmp, path).expect("renaming over the source's path");
}

// ---- item 3: a line from the future does not move the cost day --------------------------

#[test]
fn a_line_dated_two_days_ahead_neither_zeroes_today_nor_silences_the_cap() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let now = now_unix_s();
    // Today's spend is 6 of a 5 USD cap; the line in the middle is two days ahead.
    let mut lines = spend_line(now - 60.0, 2.0);
    lines.push_str(&spend_line(now + 2.0 * 86_400.0, 1.0));
    lines.push_str(&spend_line(now - 30.0, 4.0));
    append(&log, lines.as_bytes());
    let rx = Receiver::start();
    let config = format!(
        "[alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\n{}\
         [[rule]]\nrule = \"cost_cap\"\n\n\
         [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        jsonl_source(&log, "cost_cap_usd = 5.0"),
        rx.url("/cost")
    );
    let sidecar = start(&dir.path().join("data"), config);

    wait_metrics(
        &sidecar,
        &[
            (
                series("cost_usd_today", &format!("source=\"{SOURCE}\"")),
                6.0,
            ),
            (errors(SOURCE, "bad_timestamp"), 1.0),
        ],
    );
    let status = source_status(&sidecar, SOURCE);
    assert_eq!(status["cost"]["today_usd"], 6.0, "{status}");
    assert_eq!(status["skipped"]["bad_timestamp"], 1, "{status}");

    // The cap's ladder fires, up to its 100 % level.
    rx.wait_for(1, DELIVERY_TIMEOUT);
    let levels = poll_until("a cost_cap alert at level 100", DELIVERY_TIMEOUT, || {
        let api = sidecar.get("/api/v1/alerts").json();
        let levels: Vec<String> = ["firing", "recent"]
            .iter()
            .flat_map(|list| api[*list].as_array().cloned().unwrap_or_default())
            .filter(|a| a["rule"] == "cost_cap")
            .filter_map(|a| a["labels"]["level"].as_str().map(str::to_string))
            .collect();
        if levels.iter().any(|l| l == "100") {
            Ok(levels)
        } else {
            Err(format!("{api}"))
        }
    });
    assert!(
        levels
            .iter()
            .all(|l| ["50", "80", "100"].contains(&l.as_str())),
        "{levels:?}"
    );
}

// ---- item 14: a line over 1 MiB is counted ----------------------------------------------

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_line_over_1_mib_is_counted_skipped_and_never_held() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    append(&log, spend_line(now_unix_s(), 1.0).as_bytes());
    let sidecar = start(
        &dir.path().join("data"),
        jsonl_source(&log, "cost_cap_usd = 100.0"),
    );
    let cost = series("cost_usd_today", &format!("source=\"{SOURCE}\""));
    wait_metrics(
        &sidecar,
        &[(cost.clone(), 1.0), (errors(SOURCE, "oversize_line"), 0.0)],
    );
    let before_kib = peak_rss_kib(sidecar.pid());

    // 1 MiB + 1 of one JSON string, then a good line: skipped and counted, the next read.
    let mut big = b"{\"ts\": 1, \"pad\": \"".to_vec();
    big.resize(1024 * 1024 + 1, b'x');
    big.extend_from_slice(b"\"}\n");
    append(&log, &big);
    append(&log, spend_line(now_unix_s(), 2.0).as_bytes());
    wait_metrics(
        &sidecar,
        &[(cost.clone(), 3.0), (errors(SOURCE, "oversize_line"), 1.0)],
    );
    let status = source_status(&sidecar, SOURCE);
    assert_eq!(status["skipped"]["oversize_line"], 1, "{status}");
    assert_eq!(status["up"], true, "{status}");

    // A runaway writer: 64 MiB without a newline, written across several polls. It is
    // counted once and the follower does not hold it.
    let chunk = vec![b'y'; 8 * 1024 * 1024];
    for _ in 0..8 {
        append(&log, &chunk);
        std::thread::sleep(Duration::from_millis(200));
    }
    append(&log, b"\n");
    append(&log, spend_line(now_unix_s(), 4.0).as_bytes());
    wait_metrics(
        &sidecar,
        &[(cost, 7.0), (errors(SOURCE, "oversize_line"), 2.0)],
    );
    let grew_kib = peak_rss_kib(sidecar.pid()).saturating_sub(before_kib);
    // One poll reads at most 16 MiB in 64 KiB chunks and keeps at most 1 MiB of a line.
    assert!(
        grew_kib < 8 * 1024,
        "peak RSS grew by {grew_kib} KiB while a 64 MiB line went by"
    );
}

// ---- item 4: paths that are not regular files -------------------------------------------

#[test]
fn a_source_path_that_is_not_a_regular_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.jsonl");
    mkfifo(&fifo);
    let tree = dir.path().join("app.db");
    std::fs::create_dir(&tree).unwrap();
    let cases: [(String, &Path, &str); 3] = [
        (
            jsonl_source(&fifo, ""),
            &fifo,
            "is a FIFO (named pipe), not a log file",
        ),
        (
            format!(
                "[[source]]\nname = \"app\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n",
                tree.display()
            ),
            &tree,
            "is a directory, not a SQLite database file",
        ),
        (
            jsonl_source(Path::new("/dev/zero"), ""),
            Path::new("/dev/zero"),
            "is a character device, not a log file",
        ),
    ];
    for (text, path, sentence) in cases {
        let config = dir.path().join("stallwatch.toml");
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join("data");
        for args in [
            vec!["check-config".into(), config.display().to_string()],
            vec![
                "run".into(),
                "--config".into(),
                config.display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", crate::common::free_port()),
            ],
        ] {
            let out = run_to_exit(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "one sentence: {out:?}");
            assert!(
                lines[0].contains(&format!("{} {sentence}", path.display())),
                "{args:?}: {}",
                lines[0]
            );
        }
    }
}

#[test]
fn a_fifo_or_device_swapped_in_while_running_is_refused_and_sigterm_still_stops_it() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    append(&log, spend_line(now_unix_s(), 1.0).as_bytes());
    let mut sidecar = start(
        &dir.path().join("data"),
        jsonl_source(&log, "cost_cap_usd = 100.0"),
    );
    let cost = series("cost_usd_today", &format!("source=\"{SOURCE}\""));
    wait_metrics(&sidecar, &[(cost.clone(), 1.0), (up(SOURCE), 1.0)]);

    // A FIFO renamed over the log: refused, not opened (the open would block forever).
    swap_in(&log, mkfifo);
    let text = wait_down(&sidecar, SOURCE, "not_a_file", "is a FIFO (named pipe)");
    assert!(text.contains(&log.display().to_string()), "{text}");

    // A character device (a link to /dev/zero, an endless file without newlines).
    swap_in(&log, |tmp| {
        std::os::unix::fs::symlink("/dev/zero", tmp).unwrap()
    });
    wait_down(&sidecar, SOURCE, "not_a_file", "is a character device");

    // A log file again: read from its beginning, as for a file that reappears.
    swap_in(&log, |tmp| {
        append(tmp, spend_line(now_unix_s(), 2.0).as_bytes())
    });
    wait_metrics(&sidecar, &[(cost, 3.0), (up(SOURCE), 1.0)]);

    // And a FIFO once more, then SIGTERM.
    swap_in(&log, mkfifo);
    wait_down(&sidecar, SOURCE, "not_a_file", "is a FIFO (named pipe)");
    assert_stops_cleanly(&mut sidecar);
}

#[test]
fn a_directory_or_fifo_in_place_of_a_sqlite_source_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (7);"))
        .expect("creating the app database");
    let config = format!(
        "[[source]]\nname = \"app\"\nkind = \"sql\"\nurl = \"sqlite://{}\"\npoll = \"{POLL}\"\n\
         query = \"SELECT n FROM t\"\nvalues = [\"n\"]\n",
        db.display()
    );
    let mut sidecar = start(&dir.path().join("data"), config);
    wait_metrics(&sidecar, &[(up("app"), 1.0)]);

    std::fs::remove_file(&db).unwrap();
    std::fs::create_dir(&db).unwrap();
    let text = wait_down(&sidecar, "app", "not_a_file", "is a directory");
    assert!(
        text.contains(&format!(
            "{} is a directory, not a SQLite database file",
            db.display()
        )),
        "{text}"
    );
    // A FIFO in its place: refused before SQLite could block opening it.
    std::fs::remove_dir(&db).unwrap();
    mkfifo(&db);
    wait_down(
        &sidecar,
        "app",
        "not_a_file",
        "is a FIFO (named pipe), not a SQLite database file",
    );
    assert_stops_cleanly(&mut sidecar);
}

/// A Postgres "server" that accepts connections and never answers: a source connecting
/// to it waits in its handshake, a syscall shutdown cannot interrupt.
struct SilentServer {
    port: u16,
    accepted: std::sync::mpsc::Receiver<std::net::TcpStream>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let (tx, accepted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        SilentServer { port, accepted }
    }
}

#[test]
fn sigterm_stops_within_5s_while_a_source_is_stuck_in_a_syscall() {
    let silent = SilentServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[source]]\nname = \"stuck\"\nkind = \"sql\"\n\
         url = \"postgres://postgres@127.0.0.1:{}/app?sslmode=disable\"\npoll = \"{POLL}\"\n\
         query = \"SELECT 1 AS one\"\nvalues = [\"one\"]\n",
        silent.port
    );
    let mut sidecar = start(&dir.path().join("data"), config);
    // The source has connected and now waits for an answer that never comes.
    let _held = silent
        .accepted
        .recv_timeout(SEEN_TIMEOUT)
        .expect("the source connected to the silent server");
    std::thread::sleep(Duration::from_secs(1));
    assert_stops_cleanly(&mut sidecar);
    let log = sidecar.log();
    assert!(
        log.contains("source thread still busy at the shutdown deadline") && log.contains("stuck"),
        "the stuck source is named on stderr:\n{log}"
    );
}
