//! Issue 16 item 3, the first hour with the demo:
//!
//! - `demo_keep_leaves_a_state_db_that_the_printed_report_and_verify_read`: `stallwatch
//!   demo --keep DIR`, SIGSTOPped for 3 s once its worker has stalled on purpose, then
//!   SIGTERM. The terminal told each thing one line at a time (the stall "on purpose",
//!   the freeze, the episode, an alert firing) and carried none of the alert engine's
//!   WARNs; the banner leads with the status page. DIR holds the state DB (no `-wal` left
//!   behind); the `report` and `verify` command lines the demo printed, run as printed
//!   through `sh -c`, read it: `report` exits 0 and shows the freeze and the episodes,
//!   `verify` gives a verdict (0, 1 or 3, not 2).
//! - `demo_keep_refuses_a_dir_that_is_not_new_or_empty`: a regular file, a directory with
//!   a file in it, a FIFO and a dangling symlink are each refused with one sentence and
//!   exit 2, before anything is created or a port is bound; a FIFO is never opened.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, poll_until, run_to_exit, signal, wait_with_timeout};
use serde_json::Value;

/// How long the demo may take to reach its first on-purpose stall (workflow 7, about
/// 15 s in on an idle machine; a cold debug binary on a busy one is slower).
const FIRST_STALL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the demo is stopped: above the default freeze.min (2 s).
const STOP_FOR: Duration = Duration::from_secs(3);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn demo_keep_leaves_a_state_db_that_the_printed_report_and_verify_read() {
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("kept demo");
    let out = tmp.path().join("stdout");
    let err = tmp.path().join("stderr");
    let port = free_port();
    let mut child = Command::new(common::bin())
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--keep"])
        .arg(&keep)
        .env("NO_COLOR", "1")
        .env_remove("STALLWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let told = |what: &str| {
        let text = read(&out);
        if text.contains(what) {
            Ok(text)
        } else {
            Err(format!("stdout so far:\n{text}\nstderr:\n{}", read(&err)))
        }
    };
    poll_until("the worker's on-purpose stall", FIRST_STALL_TIMEOUT, || {
        told("stalled 8 s on purpose")
    });
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(STOP_FOR);
    signal(pid, libc::SIGCONT);
    poll_until("the freeze told", Duration::from_secs(20), || {
        told("sidecar: freeze #1 recorded, process_stall")
    });
    poll_until(
        "the on-purpose stall's episode told",
        Duration::from_secs(30),
        || {
            told("stalled").and_then(|t| {
                t.lines()
                    .any(|l| {
                        l.contains("sidecar: demo-dbos: ")
                            && l.contains("workflow wf-7")
                            && l.contains("(/api/v1/episodes)")
                    })
                    .then_some(())
                    .ok_or(t)
            })
        },
    );
    signal(pid, libc::SIGTERM);
    let status = wait_with_timeout(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the demo did not exit within 15 s\n{}", read(&err))
    });
    let (stdout, stderr) = (read(&out), read(&err));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");

    // The banner leads with the status page; each thing is one line on stdout.
    let banner: Vec<&str> = stdout.lines().take(3).collect();
    assert!(
        banner[1].contains(&format!("status page:  http://127.0.0.1:{port}/ ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("alert workflow_stalled firing: "),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("stalled 8 s on purpose").count(),
        stdout.lines().filter(|l| l.contains("on purpose")).count(),
        "{stdout}"
    );
    // The alert engine's WARNs are not on the terminal (its firing line would be
    // "WARN stallwatch::alerts::engine"), nor the sources' episode WARNs.
    assert!(
        !stderr.contains("stallwatch::alerts::engine") && !stderr.contains("episode recorded"),
        "{stderr}"
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");

    // DIR holds the state DB, its WAL folded in.
    assert!(keep.join("stallwatch.sqlite").is_file(), "{stdout}");
    assert!(
        !keep.join("stallwatch.sqlite-wal").exists(),
        "a -wal file was left"
    );
    assert!(keep.join("app/app.sqlite").is_file());

    // The printed commands, run as printed.
    let printed = |verb: &str| -> String {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.contains(&format!("stallwatch {verb} --data-dir ")))
            .unwrap_or_else(|| panic!("no `{verb}` command printed:\n{stdout}"))
            .split("   #")
            .next()
            .unwrap()
            .to_string()
    };
    let sh = |line: &str| {
        let o = Command::new("sh").arg("-c").arg(line).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let report = printed("report");
    assert!(
        report.contains("'"),
        "a path with a space is quoted: {report}"
    );
    let (code, text, e) = sh(&report);
    assert_eq!(code, Some(0), "{report}\n{text}{e}");
    assert!(text.contains("Freezes: 1,"), "{text}");
    assert!(text.contains("process_stall"), "{text}");
    assert!(text.contains("wf-7 (digest)"), "{text}");
    let (code, text, e) = sh(&printed("verify"));
    assert!(matches!(code, Some(0 | 1 | 3)), "{code:?}\n{text}{e}");
    assert!(text.starts_with("verdict: "), "{text}");

    // And the JSON agrees: the SIGSTOP's freeze and the on-purpose stall's episodes.
    let json = run_to_exit([
        "report",
        "--data-dir",
        keep.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    let text = v.to_string();
    assert!(text.contains("process_stall"), "{v:#}");
    assert!(text.contains("wf-7"), "{v:#}");
}

#[test]
fn demo_keep_refuses_a_dir_that_is_not_new_or_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "mine").unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("notes.txt"), "mine").unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; the result is checked.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();

    // A port someone holds: a refusal must come before the bind, or it would say "taken".
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let cases = [
        (&file, "is not a directory"),
        (&full, "is not empty"),
        (&fifo, "is not a directory"),
        (&dangling, "is not a directory"),
    ];
    for (dir, problem) in cases {
        let out = run_to_exit(["demo", "--listen", &addr, "--keep", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{dir:?}: {out:?}");
        assert_eq!(
            out.stderr_lines(),
            vec![format!(
                "stallwatch: --keep {:?} {problem}; name a new or empty directory for the demo's files",
                dir.to_str().unwrap()
            )],
            "{dir:?}"
        );
        assert!(out.stdout.is_empty(), "{dir:?}: {out:?}");
    }
    // Nothing was touched.
    assert_eq!(read(&file), "mine");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!tmp.path().join("nowhere").exists());
}
