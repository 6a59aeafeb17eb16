//! Issue 13, item 4: `stallwatch doctor` against the real binary on this machine (a
//! Firecracker microVM: no RTC, no PTP clock, an unsynchronised kernel clock) and a real
//! Postgres on 127.0.0.1:5432 (trust auth). What is asserted is what an operator reads:
//! the exit code, the line per freeze kind, the JSON object, the sentence per problem.
//! Doctor must never hang: a FIFO as a source or a PTP device is refused before it is
//! opened, and every check is bounded in time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, run_to_exit, Finished};
use serde_json::Value;
use tempfile::TempDir;

/// The Postgres every Postgres test on this machine uses (trust auth).
const PG_URL: &str = "postgres://127.0.0.1:5432/postgres";
/// A doctor with only local checks answers at once; one with a dead network reference
/// waits its 2 s timeout. Anything near the harness's 15 s kill is a hang.
const QUICK: Duration = Duration::from_secs(6);

fn doctor(data_dir: &Path, config: Option<&Path>, json: bool) -> Finished {
    let mut args = vec![
        "doctor".to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    if let Some(c) = config {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    if json {
        args.extend(["--format".into(), "json".into()]);
    }
    run_to_exit(args)
}

fn write_config(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("stallwatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[track_caller]
fn json(out: &Finished) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --format json printed no JSON ({e}):\n{}",
            out.stdout
        )
    })
}

#[track_caller]
fn kind<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["kinds"]
        .as_array()
        .expect("kinds is an array")
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[track_caller]
fn source<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sources"]
        .as_array()
        .expect("sources is an array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {report}"))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn assert_machine_has_no_reference() {
    assert!(
        !Path::new("/sys/class/rtc/rtc0/since_epoch").exists(),
        "these tests expect a machine without an RTC (Firecracker)"
    );
}

#[test]
fn no_config_on_this_machine_is_blind_to_vm_pause_and_names_the_fix() {
    assert_machine_has_no_reference();
    let dir = TempDir::new().unwrap();
    let out = doctor(dir.path(), None, false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("vm_pause"))
        .unwrap_or_else(|| panic!("no vm_pause line:\n{}", out.stdout));
    assert!(line.contains("BLIND (after resync only)"), "{line}");
    assert!(line.contains("references = [\"sntp:"), "{line}");
    assert!(line.contains("Postgres source"), "{line}");
    // Every other kind is covered here, each on its own line.
    for other in [
        "process_stall",
        "suspend",
        "wall_clock_step",
        "restart",
        "reboot",
    ] {
        let l = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(other))
            .unwrap_or_else(|| panic!("no {other} line:\n{}", out.stdout));
        assert!(l.contains(" ok "), "{l}");
    }
    assert!(
        out.stdout.contains("NOT covered: blind to vm_pause"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("clocksource"), "{}", out.stdout);
    assert!(out.stdout.contains("NOT synchronised"), "{}", out.stdout);
    // Nothing created: not the state DB, not a probe file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn json_is_one_object_with_covered_false() {
    assert_machine_has_no_reference();
    let dir = TempDir::new().unwrap();
    let out = doctor(dir.path(), None, true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&out);
    assert_eq!(report["covered"], false);
    let pause = kind(&report, "vm_pause");
    assert_eq!(pause["visible"], "after_resync");
    assert_eq!(pause["channels"], serde_json::json!(["wall_step"]));
    assert!(pause["missing"].as_str().unwrap().contains("sntp:"));
    assert_eq!(kind(&report, "restart")["visible"], "yes");
    assert_eq!(report["kinds"].as_array().unwrap().len(), 6);
    assert_eq!(report["references_from"], "discovered");
    assert_eq!(report["references"], serde_json::json!([]));
    assert_eq!(report["data_dir"]["usable"], true);
    assert_eq!(report["clock"]["synchronised"], false);
    assert!(report["clock"]["clocksource"].is_string());
    assert_eq!(report["cgroup"]["version"], "hybrid");
    assert!(report["cgroup"]["path"].is_string());
    assert_eq!(report["sources"], serde_json::json!([]));
}

#[test]
fn an_answering_postgres_source_covers_vm_pause() {
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[[source]]\nname = \"app\"\nkind = \"sql\"\nurl = \"{PG_URL}\"\n\
             query = \"SELECT 1 AS one\"\nvalues = [\"one\"]\n"
        ),
    );
    let data = TempDir::new().unwrap();
    let out = doctor(data.path(), Some(&config), true);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["covered"], true);
    let app = source(&report, "app");
    assert_eq!(app["usable"], true, "{app}");
    assert_eq!(app["server_clock"], true, "{app}");
    assert_eq!(app["reference"], "postgres:app");
    let pause = kind(&report, "vm_pause");
    assert_eq!(pause["visible"], "yes");
    assert!(
        pause["channels"]
            .as_array()
            .unwrap()
            .contains(&Value::from("postgres:app")),
        "{pause}"
    );
    let reference = &report["references"][0];
    assert_eq!(reference["name"], "postgres:app");
    assert_eq!(reference["readable"], true);

    let text = doctor(data.path(), Some(&config), false);
    assert_eq!(text.status.code(), Some(0), "{}", text.stdout);
    assert!(
        text.stdout.contains("covered: every freeze kind"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_sqlite_source_that_is_a_directory_or_a_fifo_is_unusable_without_a_hang() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("app.db");
    mkfifo(&fifo);
    let tree = dir.path().join("tree.db");
    std::fs::create_dir(&tree).unwrap();
    let ptp = dir.path().join("ptp-fifo");
    mkfifo(&ptp);
    // A UDP port nothing listens on: the SNTP reference is down within its 2 s timeout.
    let sntp = format!("sntp:127.0.0.1:{}", free_port());
    let config = write_config(
        &dir,
        &format!(
            "[freeze]\nreferences = [\"{sntp}\", \"ptp:{}\"]\n\n\
             [[source]]\nname = \"fifo\"\nkind = \"dbos\"\nurl = \"{}\"\n\n\
             [[source]]\nname = \"tree\"\nkind = \"dbos\"\nurl = \"{}\"\n",
            ptp.display(),
            fifo.display(),
            tree.display()
        ),
    );
    let data = TempDir::new().unwrap();
    let started = Instant::now();
    let out = doctor(data.path(), Some(&config), true);
    assert!(
        started.elapsed() < QUICK,
        "doctor took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&out);
    let fifo_source = source(&report, "fifo");
    assert_eq!(fifo_source["usable"], false);
    let sentence = fifo_source["error"].as_str().unwrap();
    assert!(
        sentence.contains("is a FIFO (named pipe), not a SQLite database file"),
        "{sentence}"
    );
    let tree_source = source(&report, "tree");
    assert_eq!(tree_source["usable"], false);
    let sentence = tree_source["error"].as_str().unwrap();
    assert!(
        sentence.contains(&format!(
            "{} is a directory, not a SQLite database file",
            tree.display()
        )),
        "{sentence}"
    );
    assert_eq!(report["references_from"], "configured");
    let refs = report["references"].as_array().unwrap();
    assert_eq!(refs.len(), 2, "{refs:?}");
    assert!(refs.iter().all(|r| r["readable"] == false), "{refs:?}");
    assert!(
        refs[1]["error"]
            .as_str()
            .unwrap()
            .contains("not a PTP clock device"),
        "{refs:?}"
    );
    let pause = kind(&report, "vm_pause");
    assert!(
        pause["missing"].as_str().unwrap().contains(&sntp),
        "the down reference is named: {pause}"
    );

    let text = doctor(data.path(), Some(&config), false);
    assert!(
        text.stdout.contains("fifo") && text.stdout.contains("NOT USABLE"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_bad_config_key_is_exit_2_with_one_sentence() {
    let dir = TempDir::new().unwrap();
    let config = write_config(&dir, "[freeze]\nreferencez = [\"rtc\"]\n");
    let out = doctor(dir.path(), Some(&config), false);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("referencez"), "{}", lines[0]);
    assert!(
        lines[0].contains(&config.display().to_string()),
        "{}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn a_data_dir_that_is_a_regular_file_is_not_usable() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("state");
    std::fs::write(&file, "not a directory").unwrap();
    let out = doctor(&file, None, true);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&out);
    assert_eq!(report["data_dir"]["usable"], false);
    let problem = report["data_dir"]["problem"].as_str().unwrap();
    assert!(
        problem.contains("is a regular file, not a directory"),
        "{problem}"
    );
    assert_eq!(kind(&report, "restart")["visible"], "no");
    assert_eq!(kind(&report, "reboot")["visible"], "no");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "not a directory",
        "untouched"
    );
}
