//! Fault cases: config, secrets in Postgres URLs, signals and exits (issue 14 items 7, 13
//! and the config, SIGHUP and demo parts of 14).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, poll_until, run_to_exit, Finished, Launch, Sidecar};

/// The real PostgreSQL 15 of this machine (trust auth).
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=10";
/// An error line quoting a user's value stays this short, whatever the value's size.
const MAX_ERROR_LINE_CHARS: usize = 400;

/// `stallwatch check-config` on `text`.
fn check_config(text: &str) -> Finished {
    let mut file = tempfile::NamedTempFile::new().expect("temp config");
    file.write_all(text.as_bytes()).expect("writing the config");
    run_to_exit(["check-config".as_ref(), file.path().as_os_str()])
}

/// Exit 2 and one stderr line holding every needle; returns the line.
#[track_caller]
fn refused(out: &Finished, needles: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(2), "stderr: {}", out.stderr);
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {}", out.stderr);
    for needle in needles {
        assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    }
    lines[0].to_string()
}

/// Item 7: `u64::MAX` seconds passed check-config and wrapped to −1 s inside (a
/// `wall_clock_step` every tick). Every duration and number is checked against its range.
#[test]
fn a_duration_beyond_its_range_is_refused_naming_the_range() {
    for (key, value, range) in [
        (
            "wall_step",
            "\"18446744073709551615s\"",
            "between 100ms and 1h",
        ),
        ("min", "\"18446744073709551615s\"", "between 20ms and 1h"),
        ("reference_interval", "\"5000000h\"", "between 1s and 1h"),
    ] {
        let out = check_config(&format!("[freeze]\n{key} = {value}\n"));
        let line = refused(&out, &[&format!("freeze.{key} "), range]);
        assert!(line.chars().count() < MAX_ERROR_LINE_CHARS, "{line}");
    }
    let source = "[[source]]\nname = \"q\"\nkind = \"queue_table\"\nurl = \"x.db\"\ntable = \"t\"\nopen_statuses = [\"new\"]\n";
    for (extra, key) in [
        ("max_attempts = 4000000000", "source[0].max_attempts "),
        (
            "running_status = \"R\"\nclaimed_column = \"c\"\nlease = \"18446744073709551615s\"",
            "source[0].lease ",
        ),
    ] {
        refused(
            &check_config(&format!("{source}{extra}\n")),
            &[key, "between"],
        );
    }
    let rule = "[[rule]]\nrule = \"freeze\"\n";
    for (extra, key) in [
        (
            "threshold = \"18446744073709551615s\"",
            "rule[0].threshold ",
        ),
        ("for = \"100000d\"", "rule[0].for "),
        ("resolve_after = \"100000d\"", "rule[0].resolve_after "),
    ] {
        refused(
            &check_config(&format!("{rule}{extra}\n")),
            &[key, "between"],
        );
    }
}

/// Item 7: a 100 KB value was echoed whole in the error. Now at most ~80 characters of it.
#[test]
fn a_huge_bad_value_is_quoted_short() {
    let huge = "x".repeat(100_000);
    for text in [
        format!("[freeze]\ntick = \"{huge}\"\n"),
        format!("listen = \"{huge}\"\n"),
        format!("log_format = \"{huge}\"\n"),
        format!("[[source]]\nname = \"{huge}\"\nkind = \"dbos\"\nurl = \"x.db\"\n"),
        format!("[[source]]\nname = \"a\"\nkind = \"{huge}\"\nurl = \"x.db\"\n"),
        format!("[[rule]]\nrule = \"{huge}\"\n"),
    ] {
        let out = check_config(&text);
        let line = refused(&out, &["characters)"]);
        assert!(
            line.chars().count() < MAX_ERROR_LINE_CHARS,
            "{} characters: {}…",
            line.chars().count(),
            &line[..200]
        );
    }
}

/// Item 14: `postgres://…:notaport/db` passed check-config.
#[test]
fn a_postgres_port_that_is_not_a_port_is_refused() {
    for port in ["notaport", "99999", "0"] {
        let out = check_config(&format!(
            "[[source]]\nname = \"pg\"\nkind = \"dbos\"\nurl = \"postgres://role:pw@127.0.0.1:{port}/db\"\n"
        ));
        let line = refused(&out, &["source[0].url ", "between 1 and 65535"]);
        assert!(!line.contains(":pw@"), "{line}");
    }
}

/// Item 13: a password with a raw `#`, `?`, `/` or `@` was cut wrongly by redaction
/// (`postgres://role:Hash` in logs, the API and the state DB), and with `@` the driver
/// looked up a host made of the password. Refused at config time, saying how to encode.
#[test]
fn an_ambiguous_postgres_password_is_refused_and_never_echoed() {
    for password in ["Hash#tag", "Que?ry", "Sla/sh", "At@sign"] {
        let out = check_config(&format!(
            "[[source]]\nname = \"pg\"\nkind = \"dbos\"\nurl = \"postgres://role:{password}@127.0.0.1:5432/db\"\n"
        ));
        let line = refused(&out, &["source[0].url ", "percent-encode"]);
        let head = &password[..3];
        assert!(!line.contains(head), "{line} shows part of {password:?}");
    }
    let out = run_to_exit([
        "analyze",
        "--source",
        "postgres://role:Hash#tag@127.0.0.1:5432/db",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("percent-encode") && !out.stderr.contains("Has"),
        "{}",
        out.stderr
    );
}

/// Item 13: a correctly encoded password (`%23`, `%40`, `%3F`, `%2F`) connects to the real
/// Postgres, and the password, raw or encoded, is in none of /api/v1/status, /metrics,
/// stderr or the state DB's bytes — also when the source fails and its error is shown.
/// (Trust auth accepts any password, so this asserts where it never appears.)
#[test]
fn an_encoded_postgres_password_works_and_never_shows() {
    let raw_password = "Ha#sh@x?y/zSECRET";
    let encoded = "Ha%23sh%40x%3Fy%2FzSECRET";
    let role = format!("sw_fault_{}", std::process::id());
    let mut admin = postgres::Client::connect(PG_ADMIN, postgres::NoTls)
        .expect("these tests need PostgreSQL on 127.0.0.1:5432 with trust auth");
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{}'",
            raw_password.replace('\'', "''")
        ))
        .expect("creating the test role");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[[source]]\nname = \"pg\"\nkind = \"sql\"\npoll = \"500ms\"\n\
         url = \"postgres://{role}:{encoded}@127.0.0.1:5432/postgres?sslmode=disable\"\n\
         query = \"SELECT 1 AS n\"\nvalues = [\"n\"]\n\
         [[source]]\nname = \"pg-missing\"\nkind = \"sql\"\npoll = \"500ms\"\n\
         url = \"postgres://{role}:{encoded}@127.0.0.1:5432/no_such_db_sw?sslmode=disable\"\n\
         query = \"SELECT 1 AS n\"\nvalues = [\"n\"]\n"
    );
    let sidecar = Sidecar::start_with(
        dir.path(),
        &Launch {
            config: Some(config),
            env: vec![],
        },
    );
    let status = poll_until("both sources polled", Duration::from_secs(20), || {
        let status = sidecar.status();
        let sources = status["sources"].as_array().cloned().unwrap_or_default();
        let up = sources.iter().any(|s| s["name"] == "pg" && s["up"] == true);
        let failed = sources
            .iter()
            .any(|s| s["name"] == "pg-missing" && s["last_error"].is_string());
        if up && failed {
            Ok(status)
        } else {
            Err(format!("{status}"))
        }
    });
    let error = status["sources"][1]["last_error"].to_string();
    assert!(
        error.contains("***@127.0.0.1"),
        "the error names the redacted URL: {error}"
    );
    let metrics = sidecar.metrics().0;
    assert!(
        metrics.contains("stallwatch_sql_n{source=\"pg\"} 1"),
        "{metrics}"
    );
    drop(sidecar);
    let mut places = vec![
        ("/api/v1/status".to_string(), status.to_string()),
        ("/metrics".to_string(), metrics),
    ];
    let log = std::fs::read_dir(dir.path()).expect("data dir");
    for entry in log.flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        places.push((
            entry.path().display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for (place, text) in &places {
        for secret in [raw_password, encoded, "SECRET", "Ha#sh", "Ha%23"] {
            assert!(!text.contains(secret), "{place} holds {secret:?}");
        }
    }
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .expect("dropping the test role");
}

/// Item 14: SIGHUP killed the sidecar without a clean heartbeat. It is logged and
/// ignored (config reload is not supported); SIGTERM afterwards stops it cleanly.
#[test]
fn sighup_is_logged_and_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sidecar = Sidecar::start(dir.path());
    sidecar.signal(libc::SIGHUP);
    poll_until("SIGHUP logged", Duration::from_secs(5), || {
        let log = sidecar.log();
        if log.contains("SIGHUP") {
            Ok(())
        } else {
            Err(log)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sidecar.get("/healthz").status, 200, "{}", sidecar.log());
    sidecar.signal(libc::SIGTERM);
    let status = sidecar
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", sidecar.log());
    assert!(
        sidecar.log().contains("last heartbeat written"),
        "{}",
        sidecar.log()
    );
}

/// Item 14: `stallwatch demo` logged "stopped" after 0.14 s but exited after 9.3 s: it
/// waited for its synthetic worker to finish an 8 s stall. Stopped during that stall, it
/// now exits within a second or two.
#[test]
fn demo_exits_promptly_even_mid_stall() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = common::free_port();
    let stderr = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(common::bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("TMPDIR", tmp.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.reopen().expect("reopen"))
        .spawn()
        .expect("spawning the demo");
    let pid = child.id() as i32;
    let db = tmp
        .path()
        .join(format!("stallwatch-demo-{pid}"))
        .join("app.sqlite");
    // Workflow 7 stalls 8 s between `summarize` (function 3) and `send` (function 4).
    let stalled = poll_until(
        "the demo's worker inside its stall",
        Duration::from_secs(60),
        || in_demo_stall(&db),
    );
    assert!(stalled);
    let asked = Instant::now();
    common::signal(pid, libc::SIGTERM);
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(15));
    let took = asked.elapsed();
    let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the demo did not exit within 15 s\n{log}")
    });
    assert!(status.success(), "{status}\n{log}");
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM\n{log}"
    );
    assert!(!db.exists(), "the demo removes its files");
}

/// Whether the demo worker is in workflow 7's stall: `summarize` written, `send` not.
fn in_demo_stall(db: &Path) -> Result<bool, String> {
    if !db.exists() {
        return Err("no app DB yet".into());
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let ids: Vec<i64> = conn
        .prepare("SELECT function_id FROM operation_outputs WHERE workflow_uuid = 'wf-7'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| e.to_string())?;
    if ids.contains(&3) && !ids.contains(&4) {
        Ok(true)
    } else if ids.contains(&4) {
        panic!("missed workflow 7's stall: {ids:?}")
    } else {
        Err(format!("wf-7 steps so far: {ids:?}"))
    }
}

/// Item 7: the command line quotes what it refuses (`--since`, `--listen`) at most ~80
/// characters long, like the config and the API.
#[test]
fn a_huge_command_line_value_is_quoted_short() {
    let dir = tempfile::tempdir().expect("temp dir");
    let huge = "7".repeat(100_000);
    for args in [
        vec![
            "report",
            "--data-dir",
            &dir.path().display().to_string(),
            "--since",
            &huge,
        ],
        vec!["run", "--listen", &huge],
        vec!["analyze", "--source", &format!("sqlite:///{huge}")],
    ] {
        let out = run_to_exit(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{:?}: {}",
            &args[..2],
            &out.stderr[..out.stderr.len().min(300)]
        );
        assert!(
            out.stderr.len() < 2_000,
            "{:?}: {} bytes on stderr: {}…",
            &args[..2],
            out.stderr.len(),
            &out.stderr[..300]
        );
    }
}
