//! Issue 16 item 2: `stallwatch run [options] -- CMD [ARGS…]` runs the app as its child.
//! Real processes only: the real binary, `sh`/`sleep` children, `unshare` for a PID
//! namespace, and a real DBOS app from PyPI. What is asserted is what an operator sees:
//! exit codes, the child's processes in /proc, `/metrics` and `/api/v1/status`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::dbos;
use common::{bin, free_port, http_get, poll_until, process_state, signal, Metrics, Sidecar};
use tempfile::NamedTempFile;

/// A stop that is passed on to a child that obeys it ends well within this (the issue's
/// bound; the sidecar's own shutdown is ≤ 5 s with nothing to drain).
const STOP_BOUND: Duration = Duration::from_secs(5);
/// Generous bound for the runs that end by themselves.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A `stallwatch run … -- CMD` (optionally under a wrapper such as `unshare`).
struct Run {
    child: Child,
    addr: SocketAddr,
    log: NamedTempFile,
    stdin: Option<ChildStdin>,
    stdout: Option<mpsc::Receiver<String>>,
    exited: Option<ExitStatus>,
}

struct Opts<'a> {
    wrapper: &'a [&'a str],
    extra: &'a [&'a str],
    config: Option<&'a Path>,
    piped: bool,
}

const PLAIN: Opts<'static> = Opts {
    wrapper: &[],
    extra: &[],
    config: None,
    piped: false,
};

impl Run {
    fn start(data_dir: &Path, opts: &Opts, command: &[&str]) -> Run {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = NamedTempFile::new().expect("temp file for stderr");
        let mut cmd = match opts.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(opts.extra);
        if let Some(config) = opts.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--")
            .args(command)
            .env("NO_COLOR", "1")
            .env("STALLWATCH_LOG", "info")
            .env("PYTHONUNBUFFERED", "1")
            .stderr(log.reopen().expect("reopen"));
        if opts.piped {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawning stallwatch run");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Run {
            child,
            addr,
            log,
            stdin,
            stdout,
            exited: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until `/readyz` answers 200 (the app is started right after).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + common::READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "stallwatch exited with {status} before ready:\n{}",
                    self.log()
                );
            }
            if matches!(http_get(self.addr, "/readyz"), Ok(r) if r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "never ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = common::wait_with_timeout(&mut self.child, timeout);
        }
        self.exited
    }

    /// The exit code it ended with within `timeout`, or a panic with its log.
    #[track_caller]
    fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self
            .wait_exit(timeout)
            .unwrap_or_else(|| panic!("still running after {timeout:?}:\n{}", self.log()));
        status
            .code()
            .unwrap_or_else(|| panic!("ended by a signal: {status}\n{}", self.log()))
    }

    fn metrics(&self) -> Metrics {
        Metrics(http_get(self.addr, "/metrics").expect("GET /metrics").body)
    }

    /// The next stdout line of the app starting with `prefix`.
    fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let rx = self.stdout.as_ref().expect("piped stdout");
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no {prefix:?} line from the app:\n{}", self.log()),
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").expect("writing to the app");
        stdin.flush().expect("flushing");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- stallwatch run stderr ----\n{}", self.log());
        }
    }
}

/// `(pid, ppid, state)` of every process in /proc.
fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        let ppid = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            out.push((pid, ppid, state));
        }
    }
    out
}

fn children_of(pid: i32) -> Vec<(i32, char)> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == pid)
        .map(|(p, _, s)| (p, s))
        .collect()
}

/// Waits until `parent` has a child (`what` it is, for the message); returns its pid.
fn first_child(what: &str, parent: i32) -> i32 {
    poll_until(what, RUN_TIMEOUT, || {
        children_of(parent)
            .first()
            .map(|&(pid, _)| pid)
            .ok_or_else(|| "no child yet".to_string())
    })
}

#[test]
fn the_childs_exit_code_is_stallwatchs() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), &PLAIN, &["sh", "-c", "exit 7"]);
    assert_eq!(run.exit_code(RUN_TIMEOUT), 7, "{}", run.log());
    // It stopped cleanly with the app: the next start sees a planned stop, no freeze.
    let next = Sidecar::start(dir.path());
    let m = next.metrics();
    assert!(m.expect("stallwatch_downtime_seconds_total{reason=\"stopped\"}") > 0.0);
    assert_eq!(m.freezes("restart"), 0.0, "{}", m.0);
}

#[test]
fn a_child_killed_by_a_signal_gives_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), &PLAIN, &["sh", "-c", "kill -USR1 $$"]);
    assert_eq!(run.exit_code(RUN_TIMEOUT), 128 + libc::SIGUSR1);
    assert!(
        run.log().contains("killed by SIGUSR1"),
        "the log says how: {}",
        run.log()
    );
}

#[test]
fn a_command_that_does_not_exist_exits_127_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), &PLAIN, &["/nonexistent/app"]);
    assert_eq!(run.exit_code(RUN_TIMEOUT), 127);
    assert!(run.log().contains("cannot run the app"), "{}", run.log());
}

#[test]
fn sigterm_is_passed_on_and_stallwatch_exits_with_the_childs_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), &PLAIN, &["sleep", "60"]);
    run.wait_ready();
    let sleep = first_child("the app running", run.pid());
    let asked = Instant::now();
    run.signal(libc::SIGTERM);
    // sleep dies of SIGTERM: 143 says the child got it (stallwatch's own would be 0).
    assert_eq!(run.exit_code(STOP_BOUND), 128 + libc::SIGTERM);
    assert!(asked.elapsed() <= STOP_BOUND);
    assert_eq!(process_state(sleep), None, "the child is gone");
    let m = Sidecar::start(dir.path()).metrics();
    assert!(m.expect("stallwatch_downtime_seconds_total{reason=\"stopped\"}") > 0.0);
    assert_eq!(
        m.expect("stallwatch_downtime_seconds_total{reason=\"restart\"}"),
        0.0
    );
    assert_eq!(m.freezes("restart"), 0.0);
    assert_eq!(
        m.expect("stallwatch_app_restarts_total"),
        0.0,
        "a stop that was asked for is not an app restart"
    );
}

#[test]
fn sighup_is_passed_on_to_the_child() {
    let dir = tempfile::tempdir().unwrap();
    // The app reports a SIGHUP by exiting 42.
    let mut run = Run::start(
        dir.path(),
        &PLAIN,
        &[
            "sh",
            "-c",
            "trap 'exit 42' HUP; while :; do sleep 0.1; done",
        ],
    );
    run.wait_ready();
    first_child("the app running", run.pid());
    std::thread::sleep(Duration::from_millis(300)); // the trap is set
    run.signal(libc::SIGHUP);
    assert_eq!(run.exit_code(STOP_BOUND), 42);
}

impl Run {
    fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(
        dir.path(),
        &Opts {
            extra: &["--stop-grace", "2s"],
            ..PLAIN
        },
        // An ignored signal stays ignored across exec: sleep ignores SIGTERM.
        &["sh", "-c", "trap '' TERM; exec sleep 60"],
    );
    run.wait_ready();
    first_child("the app running", run.pid());
    std::thread::sleep(Duration::from_millis(300)); // the trap is set
    let asked = Instant::now();
    run.signal(libc::SIGTERM);
    assert_eq!(run.exit_code(RUN_TIMEOUT), 128 + libc::SIGKILL);
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "killed only after the grace: {:?}",
        asked.elapsed()
    );
    assert!(run.log().contains("after the stop grace"), "{}", run.log());
}

#[test]
fn stop_grace_out_of_range_or_without_a_command_is_a_usage_error() {
    let out = common::run_to_exit(["run", "--stop-grace", "0s", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.contains("must be between 1s and 5m, not 0s"),
        "{}",
        out.stderr
    );
    let out = common::run_to_exit(["run", "--stop-grace", "3s"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
}

/// The app double-forks three short-lived daemons and keeps running.
const DOUBLE_FORK: &str = "for i in 1 2 3; do (sleep 1 &); done; exec sleep 60";

/// Waits until the orphans of [`DOUBLE_FORK`] are children of `parent` (`who`, for the
/// messages) beside the app, then until they are reaped: only the app is left, and no
/// zombie.
fn wait_orphans_reaped(parent: i32, who: &str) {
    poll_until(
        &format!("the orphans reparented to {who}"),
        RUN_TIMEOUT,
        || {
            let kids = children_of(parent);
            (kids.len() >= 4)
                .then_some(())
                .ok_or_else(|| format!("{kids:?}"))
        },
    );
    poll_until(&format!("the orphans reaped by {who}"), RUN_TIMEOUT, || {
        let kids = children_of(parent);
        (kids.len() == 1 && kids.iter().all(|&(_, s)| s != 'Z'))
            .then_some(())
            .ok_or_else(|| format!("{kids:?}"))
    });
}

#[test]
fn orphans_of_a_double_forking_child_are_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(dir.path(), &PLAIN, &["sh", "-c", DOUBLE_FORK]);
    run.wait_ready();
    let pid = run.pid();
    // The orphans come to stallwatch (a child subreaper), not to the host's init …
    // … and once they exit, none is left a zombie: only the app itself remains.
    wait_orphans_reaped(pid, "stallwatch");
    run.signal(libc::SIGTERM);
    assert_eq!(run.exit_code(STOP_BOUND), 128 + libc::SIGTERM);
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_reaps_and_passes_sigterm_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::start(
        dir.path(),
        &Opts {
            wrapper: &["unshare", "--pid", "--fork", "--mount-proc"],
            ..PLAIN
        },
        &["sh", "-c", DOUBLE_FORK],
    );
    run.wait_ready();
    let status: serde_json::Value =
        serde_json::from_str(&http_get(run.addr, "/api/v1/status").unwrap().body).unwrap();
    assert_eq!(status["pid"], 1, "stallwatch is PID 1 inside: {status}");
    // unshare's child is stallwatch; seen from here, with its host pid.
    let stallwatch = first_child("stallwatch under unshare", run.pid());
    wait_orphans_reaped(stallwatch, "PID 1");
    signal(stallwatch, libc::SIGTERM);
    // unshare --fork exits with its child's status: stallwatch's, which is the app's.
    assert_eq!(run.exit_code(STOP_BOUND), 128 + libc::SIGTERM);
}

// ---- a real DBOS app ------------------------------------------------------------------

#[test]
fn a_dbos_app_run_as_the_child_is_watched_and_its_kill_is_an_app_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dbos.sqlite");
    let config = dir.path().join("stallwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"app\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\npoll = \"200ms\"\n",
            db.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let python = dbos::python().to_string_lossy().into_owned();
    let script = dbos::script().to_string_lossy().into_owned();
    let db_arg = db.to_string_lossy().into_owned();
    let mut run = Run::start(
        &data,
        &Opts {
            config: Some(&config),
            piped: true,
            ..PLAIN
        },
        &[&python, &script, dbos::Mode::Reply.arg(), "--db", &db_arg],
    );
    run.wait_ready();
    run.expect_line("READY", RUN_TIMEOUT);
    run.say("run one free 0");
    run.expect_line("PHASE done", RUN_TIMEOUT);
    // Its steps are watched: the sidecar that started it reads them from its system DB.
    poll_until("the app's steps in /metrics", RUN_TIMEOUT, || {
        let m = run.metrics();
        let series = "stallwatch_step_duration_seconds_count{source=\"app\",step=\"generate\"}";
        match m.value(series) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let app = children_of(run.pid())[0].0;
    signal(app, libc::SIGKILL);
    assert_eq!(run.exit_code(STOP_BOUND), 128 + libc::SIGKILL);
    // The next start: an app restart, not a machine freeze.
    let next = Sidecar::start(&data);
    let m = next.metrics();
    assert_eq!(m.expect("stallwatch_app_restarts_total"), 1.0, "{}", m.0);
    assert_eq!(m.freezes("restart"), 0.0);
    assert!(
        next.log().contains("this start is an app restart"),
        "{}",
        next.log()
    );
    assert!(next.freezes().is_empty(), "{:?}", next.freezes());
    drop(next);
    let report = common::run_to_exit(["report".as_ref(), "--data-dir".as_ref(), data.as_os_str()]);
    assert_eq!(report.status.code(), Some(0), "{}", report.stderr);
    assert!(
        report
            .stdout
            .contains("app run by `stallwatch run --` killed by SIGKILL (exit 137)"),
        "report lists the app's exit:\n{}",
        report.stdout
    );
}
