//! The real DBOS app of the tests, `tests/dbos/app.py`, run in the venv with the pinned
//! `dbos` that `scripts/dbos-venv.sh` makes (`STALLWATCH_DBOS_VENV` says where): started in
//! one of its modes on a SQLite file or a Postgres URL, driven over stdin, its stdout read
//! as words, killed (SIGKILL) when dropped. What each mode runs and prints is in app.py's
//! docstring.
//!
//! Not here: the sidecar watching the app (`Sidecar`), freezing it (`cgroup.rs`), reading
//! what DBOS wrote (`dbos_history.rs`, and each test reads the tables it asserts on).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

/// Python start-up plus `DBOS.launch()` (migrations on a fresh DB): about 2 s on SQLite
/// here, more on Postgres; 90 s only matters when something is wrong.
pub const APP_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Until a `STARTED` or `PHASE` line: a workflow takes a few seconds, a queue dequeue
/// polls every 0.2 s, and after a restart DBOS's recovery queue polls every 1 s.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `quit` may take (DBOS joins its threads).
pub const APP_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The python of the venv with the pinned dbos, made once per test binary by
/// `scripts/dbos-venv.sh`. A venv that cannot be made fails the test.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/dbos-venv.sh"))
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/dbos-venv.sh: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/dbos-venv.sh failed ({}); the real-DBOS tests need Python 3 with venv \
             and pip, and PyPI (or a wheel cache) for dbos:\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let python = PathBuf::from(stdout.trim());
        assert!(
            python.is_file(),
            "scripts/dbos-venv.sh printed {python:?}, which is not a file"
        );
        python
    })
}

/// `tests/dbos/app.py`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dbos/app.py")
}

/// Which of app.py's workflows and commands it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `reply`: `parse` → `DBOS.recv` (2 s) → `generate` → `send`, the incident's steps.
    Reply,
    /// `waiter`, `blocker` and `queued`: overruns, recovery, a blocked queue.
    Health,
    /// `ingest`: `fetch` → `crunch` → `DBOS.recv` (1 s) → `store`.
    Trace,
}

impl Mode {
    /// app.py's first argument.
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Reply => "reply",
            Mode::Health => "health",
            Mode::Trace => "trace",
        }
    }
}

/// The journal mode app.py puts a SQLite system DB in before DBOS opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    Wal,
    /// Rollback-journal mode, set by the app.
    Delete,
    /// Left to DBOS: SQLite's rollback journal (`delete`).
    Default,
}

impl Journal {
    /// app.py's `--journal`.
    pub fn arg(self) -> &'static str {
        match self {
            Journal::Wal => "wal",
            Journal::Delete => "delete",
            Journal::Default => "default",
        }
    }

    /// What `PRAGMA journal_mode` says for it.
    pub fn mode(self) -> &'static str {
        match self {
            Journal::Wal => "wal",
            Journal::Delete | Journal::Default => "delete",
        }
    }
}

/// Where the app keeps its DBOS system database.
#[derive(Debug, Clone, Copy)]
pub enum SystemDb<'a> {
    /// A SQLite file (absolute path) in the given journal mode.
    Sqlite(&'a Path, Journal),
    /// A `postgresql://` URL.
    Postgres(&'a str),
}

/// When a `reply` workflow waits for `go LABEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    No,
    AfterGenerate,
    /// Between `parse` and `DBOS.recv`: the founding incident's gap.
    AfterParse,
}

/// A running `tests/dbos/app.py`; its stdout lines arrive on a channel.
pub struct App {
    mode: Mode,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Lines read but not yet claimed by [`App::expect`], as words.
    backlog: Vec<Vec<String>>,
    stderr: NamedTempFile,
    exited: bool,
}

impl App {
    /// Starts the app in `mode` on `db`, in `cwd`, and waits for its `READY` (on SQLite,
    /// checking the journal mode it reports).
    pub fn start(mode: Mode, db: SystemDb, cwd: &Path) -> App {
        App::start_with_env(mode, db, cwd, &[])
    }

    /// Like [`App::start`], with extra environment (a libfaketime clock).
    pub fn start_with_env(mode: Mode, db: SystemDb, cwd: &Path, env: &[(String, String)]) -> App {
        let python = python();
        let script = script();
        let stderr = NamedTempFile::new().expect("temp file for the app's stderr");
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg(mode.arg());
        match db {
            SystemDb::Sqlite(path, journal) => cmd
                .arg("--db")
                .arg(path)
                .arg("--journal")
                .arg(journal.arg()),
            SystemDb::Postgres(url) => cmd.arg("--url").arg(url),
        };
        let mut child = cmd
            .current_dir(cwd)
            .env("PYTHONUNBUFFERED", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    python.display(),
                    script.display()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            mode,
            stdin: child.stdin.take(),
            child,
            lines,
            backlog: Vec::new(),
            stderr,
            exited: false,
        };
        let ready = app.expect(&["READY"], APP_READY_TIMEOUT);
        if let SystemDb::Sqlite(_, journal) = db {
            let want = format!("journal_mode={}", journal.mode());
            assert_eq!(ready.get(1), Some(&want), "the app's system DB: {ready:?}");
        }
        app
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The app and every process descended from it (DBOS 3.4 starts none, but a freezer
    /// must hold them all).
    pub fn pids_with_descendants(&self) -> Vec<i32> {
        let mut parents: Vec<(i32, i32)> = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        let mut family = vec![self.pid()];
        let mut i = 0;
        while i < family.len() {
            let parent = family[i];
            family.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        family
    }

    /// Writes one command line to the app's stdin.
    #[track_caller]
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the app's stdin is open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("writing {line:?} to the app: {e}\n{}", self.stderr_text());
        }
    }

    /// Starts (or enqueues) a workflow with the command `verb LABEL ARGS…`; returns its id.
    #[track_caller]
    pub fn run(&mut self, verb: &str, label: &str, args: &[&str]) -> String {
        let mut line = format!("{verb} {label}");
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        self.command(&line);
        let started = self.expect(&["STARTED", label], LINE_TIMEOUT);
        started[2].clone()
    }

    /// Starts a `reply` workflow; returns its id.
    #[track_caller]
    pub fn start_workflow(&mut self, label: &str, hold: Hold) -> String {
        self.start_workflow_with(label, hold, None)
    }

    /// Starts a `reply` workflow whose recv waits `recv_seconds` (default: the app's 2 s).
    #[track_caller]
    pub fn start_workflow_with(
        &mut self,
        label: &str,
        hold: Hold,
        recv_seconds: Option<f64>,
    ) -> String {
        assert_eq!(
            self.mode,
            Mode::Reply,
            "`reply` workflows run in mode reply"
        );
        let how = match hold {
            Hold::No => "free",
            Hold::AfterGenerate => "hold",
            Hold::AfterParse => "hold-parse",
        };
        let recv = recv_seconds.map(|s| s.to_string());
        let mut args = vec![how];
        args.extend(recv.as_deref());
        self.run("run", label, &args)
    }

    /// Starts an `ingest` workflow whose `crunch` takes `crunch_seconds`; returns its id.
    #[track_caller]
    pub fn start_ingest(&mut self, label: &str, crunch_seconds: f64, hold: bool) -> String {
        assert_eq!(
            self.mode,
            Mode::Trace,
            "`ingest` workflows run in mode trace"
        );
        let how = if hold { "hold" } else { "free" };
        self.run("run", label, &[&crunch_seconds.to_string(), how])
    }

    /// `PHASE phase label workflow_id epoch`, as words.
    #[track_caller]
    pub fn expect_phase(&mut self, phase: &str, label: &str) -> Vec<String> {
        self.expect(&["PHASE", phase, label], LINE_TIMEOUT)
    }

    /// Takes the first stdout line (already read or still to come) that starts with the
    /// words `prefix`, and returns its words. Lines that do not match stay for later
    /// calls: concurrent workflows print in any order. An `ERROR` line fails the test.
    #[track_caller]
    pub fn expect(&mut self, prefix: &[&str], timeout: Duration) -> Vec<String> {
        let matches = |words: &[String]| {
            words.len() >= prefix.len() && words.iter().zip(prefix).all(|(w, p)| w == p)
        };
        if let Some(i) = self.backlog.iter().position(|w| matches(w)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    assert!(
                        !line.starts_with("ERROR"),
                        "the app said {line:?}\n{}",
                        self.stderr_text()
                    );
                    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                    if matches(&words) {
                        return words;
                    }
                    self.backlog.push(words);
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the app did not print {prefix:?} within {timeout:?}; unclaimed lines: \
                     {:?}\nstderr:\n{}",
                    self.backlog,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the app exited ({:?}) before printing {prefix:?}; unclaimed lines: {:?}\n\
                     stderr:\n{}",
                    self.child.try_wait(),
                    self.backlog,
                    self.stderr_text()
                ),
            }
        }
    }

    /// SIGKILL, as a crash: DBOS gets no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }

    /// Asks DBOS to shut down and waits for a clean exit.
    #[track_caller]
    pub fn quit(mut self) {
        self.command("quit");
        drop(self.stdin.take());
        let status = super::wait_with_timeout(&mut self.child, APP_EXIT_TIMEOUT);
        self.exited = true;
        match status {
            Some(s) if s.success() => {}
            other => panic!(
                "the app did not exit cleanly after quit: {other:?}\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Everything it wrote to stderr so far (DBOS's log).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if !self.exited {
            // SIGKILL also ends a stopped process; a frozen one dies once thawed.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- DBOS app (pid {}) stderr ----\n{}",
                self.child.id(),
                self.stderr_text()
            );
        }
    }
}
