//! Shared harness for the integration tests: runs the real `stallwatch` binary on a free
//! 127.0.0.1 port with its own data dir, speaks HTTP/1.1 to it over a plain `TcpStream`
//! (no client dependency), polls for conditions with a deadline, and kills it on drop.
//!
//! Nothing here is mocked: real processes, real clocks, real sockets. What the tests
//! assert is what an operator sees: `/api/v1/freezes`, `/metrics`, exit codes, stderr.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

pub mod alertmanager;
pub mod cgroup;
pub mod dbos;
pub mod dbos_history;
pub mod dbos_schema;
pub mod faketime;
pub mod pgdb;
pub mod receiver;
pub mod servers;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::NamedTempFile;

/// How long a start may take to answer `/readyz` 200: a cold debug binary on a busy
/// 2-core machine takes well under a second; 30 s only matters when something is wrong.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of one HTTP request to the sidecar.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// `[[rule]]` tables that keep the sidecar's own health out of an alert test: freezes and
/// clock steps of a loaded CI machine, a source's down time. Only the rules the test is
/// about page.
pub const QUIET_RULES: &str = "
[[rule]]
rule = \"freeze\"
enabled = false

[[rule]]
rule = \"wall_clock_step\"
enabled = false

[[rule]]
rule = \"source_down\"
enabled = false
";

/// [`QUIET_RULES`] without the table of `rule`, for a test about that rule (which gives
/// its own table for it).
pub fn quiet_rules_except(rule: &str) -> String {
    let own = format!("rule = \"{rule}\"\n");
    let kept: Vec<&str> = QUIET_RULES
        .split("\n\n")
        .filter(|table| !table.contains(&own))
        .collect();
    assert!(
        kept.len() < QUIET_RULES.split("\n\n").count(),
        "QUIET_RULES has no table for rule {rule:?}"
    );
    format!("{}\n", kept.join("\n\n").trim_end())
}

/// Pause between two looks at a condition being polled for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a command that should fail at once (bad config) may run before the test
/// calls it hung and kills it.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts at a free port when another process grabs the one picked first.
const PORT_ATTEMPTS: usize = 5;
/// Largest response body read from the sidecar; `/metrics` is about 6 KiB.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// The `stallwatch` binary Cargo built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stallwatch"))
}

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it; we release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Sends `sig` to `pid`, panicking if the kernel refuses.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the result is checked.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        io::Error::last_os_error()
    );
}

/// The state letter of a process from `/proc/PID/stat` (`S`, `R`, `T` stopped, …).
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// How long the kernel may take to show a stopped process as stopped (`T`), or a frozen
/// cgroup as frozen.
pub const STOPPED_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the kernel reports process `pid` (`what`, for the message) stopped (`T`).
pub fn wait_stopped(what: &str, pid: i32) {
    poll_until(
        &format!("{what} to be stopped"),
        STOPPED_TIMEOUT,
        || match process_state(pid) {
            Some('T') => Ok(()),
            other => Err(format!("state {other:?}")),
        },
    );
}

/// Stops process `pid` (SIGSTOP) and continues it (SIGCONT) `how_long` after, once the
/// kernel has reported it stopped; returns how long it was stopped.
pub fn stop_for(what: &str, pid: i32, how_long: Duration) -> Duration {
    signal(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    // If this fails the caller's guard (a dropped `Sidecar`, `App`) kills it: SIGKILL
    // ends a stopped process too.
    wait_stopped(what, pid);
    std::thread::sleep(how_long.saturating_sub(t0.elapsed()));
    signal(pid, libc::SIGCONT);
    t0.elapsed()
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, or panics after `timeout`
/// with `what` and the last thing `probe` reported.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Waits for `child` to exit for at most `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts `|actual − expected| ≤ tolerance`, naming `what`.
#[track_caller]
pub fn assert_near(what: &str, actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} is not within ±{tolerance} of {expected}"
    );
}

// ---- one-shot commands ----------------------------------------------------------------

/// A finished command: exit status and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `stallwatch ARGS…` to completion; a run that does not exit within
/// [`EXIT_TIMEOUT`] is killed and the test fails. Output goes to files, not pipes, so a
/// chatty process can never block on a full pipe.
pub fn run_to_exit<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let stdout = NamedTempFile::new().expect("temp file");
    let stderr = NamedTempFile::new().expect("temp file");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("STALLWATCH_LOG")
        .stdin(Stdio::null())
        .stdout(stdout.reopen().expect("reopen"))
        .stderr(stderr.reopen().expect("reopen"));
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawning stallwatch");
    let status = match wait_with_timeout(&mut child, EXIT_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} was still running after {EXIT_TIMEOUT:?}; it should have exited at once.\nstderr:\n{}",
                std::fs::read_to_string(stderr.path()).unwrap_or_default()
            );
        }
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(stdout.path()).unwrap_or_default(),
        stderr: std::fs::read_to_string(stderr.path()).unwrap_or_default(),
    }
}

// ---- HTTP ----------------------------------------------------------------------------

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// `GET path` with HTTP/1.1 and `Connection: close`, read to the end.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: stallwatch-tests\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw)?;
    parse_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(format!("body has {} of {len} bytes", body.len()));
        }
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).map_err(|e| e.to_string())?,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Makes the child of `cmd` write `0` (itself) to each `cgroup.procs` before `exec`.
fn join_cgroups_before_exec(cmd: &mut Command, cgroup_procs: &[PathBuf]) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let paths: Vec<std::ffi::CString> = cgroup_procs
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("a path without NUL"))
        .collect();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // calls (open, write, close) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            Ok(())
        });
    }
}

// ---- what the API and /metrics return -------------------------------------------------

/// One entry of `/api/v1/freezes`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Freeze {
    pub id: i64,
    pub kind: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub channels: Vec<ChannelEstimate>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChannelEstimate {
    pub channel: String,
    pub estimate_seconds: f64,
}

impl Freeze {
    /// The estimate of channel `name`, if that channel saw this freeze.
    pub fn channel(&self, name: &str) -> Option<f64> {
        self.channels
            .iter()
            .find(|c| c.channel == name)
            .map(|c| c.estimate_seconds)
    }
}

/// One entry of `/api/v1/episodes`.
#[derive(Debug, Clone, Deserialize)]
pub struct Episode {
    pub id: i64,
    pub source: String,
    pub kind: String,
    pub workflow_id: String,
    pub workflow_name: String,
    pub from_step: String,
    pub to_step: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub cause: String,
    pub freeze_id: Option<i64>,
    pub detected_at: String,
}

/// Every freeze kind the sidecar exports a `stallwatch_freezes_total` series for.
pub const FREEZE_KINDS: [&str; 6] = [
    "process_stall",
    "vm_pause",
    "suspend",
    "wall_clock_step",
    "restart",
    "reboot",
];

/// A `/metrics` scrape.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series, written exactly as exported, e.g.
    /// `stallwatch_freezes_total{kind="process_stall"}`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| *s == series)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// The value of `name{labels…}` whatever order the labels are written in; `None` if
    /// no such series is exported.
    pub fn labelled(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| {
                let (n, rest) = s.split_once('{').unwrap_or((s, "}"));
                let have: BTreeSet<String> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                n == name && have == want
            })
            .and_then(|(_, v)| v.parse().ok())
    }

    #[track_caller]
    pub fn expect(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("/metrics has no series {series}:\n{}", self.0))
    }

    /// `stallwatch_freezes_total{kind=…}`.
    #[track_caller]
    pub fn freezes(&self, kind: &str) -> f64 {
        self.expect(&format!("stallwatch_freezes_total{{kind=\"{kind}\"}}"))
    }

    /// Asserts the freeze counters: `expected` kinds with their counts, every other kind 0.
    #[track_caller]
    pub fn assert_freezes(&self, expected: &[(&str, f64)]) {
        for kind in FREEZE_KINDS {
            let want = expected
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0.0, |(_, n)| *n);
            assert_eq!(
                self.freezes(kind),
                want,
                "stallwatch_freezes_total{{kind=\"{kind}\"}}"
            );
        }
    }
}

// ---- the sidecar ----------------------------------------------------------------------

/// How to start a sidecar besides its data dir.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// TOML written to a config file and passed with `--config`.
    pub config: Option<String>,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
}

/// A running `stallwatch run`, killed (SIGKILL) when dropped.
pub struct Sidecar {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: NamedTempFile,
    _config: Option<NamedTempFile>,
    exited: Option<ExitStatus>,
}

impl Sidecar {
    /// Starts with no config file (freeze detector only, defaults) and waits for `/readyz`.
    pub fn start(data_dir: &Path) -> Sidecar {
        Sidecar::start_with(data_dir, &Launch::default())
    }

    /// Starts on a free port and waits for `/readyz`; panics with its stderr if it exits.
    pub fn start_with(data_dir: &Path, launch: &Launch) -> Sidecar {
        Sidecar::start_in(data_dir, launch, &[])
    }

    /// Like [`Sidecar::start_with`], inside the cgroups whose `cgroup.procs` files are
    /// given: the child moves itself in before `exec`, so it never runs outside them and
    /// sees them as its own from its first read of `/proc/self/cgroup`.
    pub fn start_in(data_dir: &Path, launch: &Launch, cgroup_procs: &[PathBuf]) -> Sidecar {
        for attempt in 1..=PORT_ATTEMPTS {
            let mut sidecar = Sidecar::spawn_in(data_dir, launch, free_port(), cgroup_procs);
            match sidecar.wait_ready() {
                Ok(()) => return sidecar,
                // Someone took the port between our probe and its bind: pick another.
                Err(_) if attempt < PORT_ATTEMPTS && sidecar.log().contains("cannot listen") => {
                    continue
                }
                Err(why) => panic!("stallwatch did not become ready: {why}\n{}", sidecar.log()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts without waiting for readiness (for tests that expect a refusal).
    pub fn spawn(data_dir: &Path, launch: &Launch, port: u16) -> Sidecar {
        Sidecar::spawn_in(data_dir, launch, port, &[])
    }

    fn spawn_in(data_dir: &Path, launch: &Launch, port: u16, cgroup_procs: &[PathBuf]) -> Sidecar {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = NamedTempFile::new().expect("temp file for stderr");
        let config = launch.config.as_ref().map(|text| {
            let mut f = NamedTempFile::new().expect("temp file for the config");
            f.write_all(text.as_bytes()).expect("writing the config");
            f
        });
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(f) = &config {
            cmd.arg("--config").arg(f.path());
        }
        cmd.env("NO_COLOR", "1")
            .env("STALLWATCH_LOG", "info")
            .env_remove("FAKETIME")
            .env_remove("LD_PRELOAD")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("reopen"));
        if !cgroup_procs.is_empty() {
            join_cgroups_before_exec(&mut cmd, cgroup_procs);
        }
        let child = cmd.spawn().expect("spawning stallwatch");
        Sidecar {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            _config: config,
            exited: None,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for stallwatch") {
                self.exited = Some(status);
                return Err(format!("it exited with {status}"));
            }
            match http_get(self.addr, "/readyz") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) if Instant::now() >= deadline => {
                    return Err(format!("/readyz still says {} {:?}", r.status, r.body))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("/readyz unreachable after {READY_TIMEOUT:?}: {e}"))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        http_get(self.addr, path).unwrap_or_else(|e| {
            panic!(
                "GET {path} on {} failed: {e}\nstallwatch stderr:\n{}",
                self.addr,
                self.log()
            )
        })
    }

    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        Metrics(r.body)
    }

    /// Every recorded freeze (`/api/v1/freezes` without `since`), oldest first.
    #[track_caller]
    pub fn freezes(&self) -> Vec<Freeze> {
        let r = self.get("/api/v1/freezes");
        assert_eq!(r.status, 200, "/api/v1/freezes: {r:?}");
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("/api/v1/freezes is not a list of freezes ({e}): {r:?}"))
    }

    /// The episodes of source `source` (`/api/v1/episodes?source=…`).
    #[track_caller]
    pub fn episodes(&self, source: &str) -> Vec<Episode> {
        let r = self.get(&format!("/api/v1/episodes?source={source}"));
        assert_eq!(r.status, 200, "/api/v1/episodes: {r:?}");
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("/api/v1/episodes is not a list of episodes ({e}): {r:?}"))
    }

    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/api/v1/status");
        assert_eq!(r.status, 200, "/api/v1/status: {r:?}");
        r.json()
    }

    /// Waits until `/api/v1/freezes` holds at least `n` events, and returns them.
    #[track_caller]
    pub fn wait_for_freezes(&self, n: usize, timeout: Duration) -> Vec<Freeze> {
        poll_until(&format!("{n} freeze event(s)"), timeout, || {
            let events = self.freezes();
            if events.len() >= n {
                Ok(events)
            } else {
                Err(format!("{events:?}"))
            }
        })
    }

    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Stops it (SIGSTOP) for `how_long`, see [`stop_for`]; returns how long it was stopped.
    pub fn stop_for(&self, how_long: Duration) -> Duration {
        stop_for("the sidecar", self.pid(), how_long)
    }

    /// SIGKILL, then reap.
    pub fn kill_hard(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("reaping stallwatch");
        self.exited = Some(status);
        status
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_with_timeout(&mut self.child, timeout);
        }
        self.exited
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- stallwatch (pid {}, {}) stderr ----\n{}",
                self.child.id(),
                self.addr,
                self.log()
            );
        }
    }
}
