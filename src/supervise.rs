//! `stallwatch run [options] -- CMD [ARGS…]`: the app runs as stallwatch's child, the way
//! Litestream's `-exec` runs it, so one container `CMD` starts both and the sidecar sees
//! every stop the app sees.
//!
//! Owns the child's life: spawning it once the sidecar is serving, forwarding SIGTERM,
//! SIGINT and SIGHUP to it, SIGKILL after [`DEFAULT_STOP_GRACE`] (or `--stop-grace`) when a
//! stop signal is not obeyed, reaping every child that ends up ours (stallwatch may be PID
//! 1 of a container, and sets itself a child subreaper otherwise, so a double-forking app
//! leaves no zombies), and the exit code: the child's own, or 128 + the signal that killed
//! it. It does not own the sidecar's shutdown (`sidecar.rs` does, after the child is gone).
//!
//! How a child's end is recorded: the sidecar always stops cleanly with it (final
//! heartbeat), so the downtime until the next start is a planned stop, never a `restart`
//! freeze. A child that ended on its own — crashed, exited, killed by someone else — is an
//! **app exit**: a `state_fact` row of kind [`crate::state::FACT_APP_EXIT`] written as the sidecar stops,
//! counted at every start in `stallwatch_app_restarts_total` and listed by `report`. A
//! child that ended after a forwarded SIGTERM/SIGINT is a planned stop and is not counted.
//!
//! Pure decisions ([`Supervisor`], [`ChildStatus`], [`exit_code`]) are separate from the
//! system calls ([`supervise`], `reap`), which are thin.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::config::limits::Range;

/// Time a child has to exit after a forwarded SIGTERM or SIGINT before it is killed.
/// 8 s leaves the sidecar's own 2–3 s shutdown inside Docker's default 10 s stop timeout;
/// raise the orchestrator's timeout (Fly `kill_timeout`, Kubernetes
/// `terminationGracePeriodSeconds`) to at least the grace + 5 s when raising this.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(8);
/// `--stop-grace`: at least 1 s (an app needs a moment to finish a request); at most 5 min,
/// Fly's longest `kill_timeout` — no orchestrator waits longer.
pub const STOP_GRACE: Range<Duration> =
    Range::new(Duration::from_secs(1), Duration::from_secs(300));
/// Exit code when the command cannot be found (the shells' convention).
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit code when the command exists but cannot be executed (the shells' convention).
pub const EXIT_NOT_EXECUTABLE: u8 = 126;

/// `--stop-grace` as given on the command line: a duration within [`STOP_GRACE`].
pub fn parse_stop_grace(text: &str) -> Result<Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|_| {
        format!(
            "must be a duration like \"10s\", not {}",
            crate::config::limits::quoted(text)
        )
    })?;
    STOP_GRACE.check(grace)
}

/// The app to run and how to stop it.
#[derive(Debug, Clone)]
pub struct App {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub stop_grace: Duration,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// It never ran: the command was not found (127) or not executable (126).
    NotStarted(u8),
}

impl ChildStatus {
    /// From a `waitpid` status; `None` for a stop or continue report.
    pub fn from_wait(raw: i32) -> Option<ChildStatus> {
        if libc::WIFEXITED(raw) {
            Some(ChildStatus::Exited(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(ChildStatus::Killed(libc::WTERMSIG(raw)))
        } else {
            None
        }
    }

    /// In words, with the exit code stallwatch passes on: "exited with status 7",
    /// "killed by SIGKILL (exit 137)".
    pub fn describe(self) -> String {
        match self {
            ChildStatus::Exited(code) => format!("exited with status {code}"),
            ChildStatus::Killed(sig) => {
                format!("killed by {} (exit {})", signal_name(sig), exit_code(self))
            }
            ChildStatus::NotStarted(code) => format!("could not be started (exit {code})"),
        }
    }
}

/// The exit code stallwatch ends with: the child's, or 128 + the signal that killed it.
pub fn exit_code(status: ChildStatus) -> u8 {
    match status {
        ChildStatus::Exited(code) => (code & 0xff) as u8,
        ChildStatus::Killed(sig) => 128u8.saturating_add((sig & 0x7f) as u8),
        ChildStatus::NotStarted(code) => code,
    }
}

/// A signal's name for logs ("SIGTERM"); the number for one without a common name.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        other => format!("signal {other}"),
    }
}

/// What the run's end means for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The child ended after stallwatch was asked to stop: a planned stop.
    Planned,
    /// The child ended on its own: an app exit, recorded as [`crate::state::FACT_APP_EXIT`].
    AppExit,
}

/// The supervision decisions, pure: signals and the time in, what to do out.
#[derive(Debug)]
pub struct Supervisor {
    grace: Duration,
    /// The first stop signal forwarded and when.
    stop: Option<(i32, Instant)>,
    killed: bool,
}

impl Supervisor {
    pub fn new(grace: Duration) -> Supervisor {
        Supervisor {
            grace,
            stop: None,
            killed: false,
        }
    }

    /// A signal stallwatch received: the one to send the child (the same one). SIGTERM
    /// and SIGINT start the grace; SIGHUP is only passed on.
    pub fn on_signal(&mut self, sig: i32, now: Instant) -> i32 {
        if (sig == libc::SIGTERM || sig == libc::SIGINT) && self.stop.is_none() {
            self.stop = Some((sig, now));
        }
        sig
    }

    /// When the child is to be killed if it is still running.
    pub fn kill_at(&self) -> Option<Instant> {
        match self.stop {
            Some((_, at)) if !self.killed => Some(at + self.grace),
            _ => None,
        }
    }

    /// True once, when the grace is over at `now`: send SIGKILL.
    pub fn should_kill(&mut self, now: Instant) -> bool {
        match self.kill_at() {
            Some(at) if now >= at => {
                self.killed = true;
                true
            }
            _ => false,
        }
    }

    /// The stop signal stallwatch was asked to stop by, if any.
    pub fn stop_signal(&self) -> Option<i32> {
        self.stop.map(|(sig, _)| sig)
    }

    /// Whether the child was killed because it outlived the grace.
    pub fn killed_after_grace(&self) -> bool {
        self.killed
    }

    /// Planned when a stop was asked for before the child ended, else an app exit.
    pub fn ending(&self) -> Ending {
        if self.stop.is_some() {
            Ending::Planned
        } else {
            Ending::AppExit
        }
    }
}

/// How a supervised run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ChildStatus,
    pub ending: Ending,
    /// What stopped the sidecar, for its log: "SIGTERM", or "app exit".
    pub reason: String,
}

// ---- system calls ---------------------------------------------------------------------

/// Runs `app` until it ends: forwards stop signals, kills it after the grace, reaps
/// every child. The sidecar is already serving; it stops once this returns.
pub async fn supervise(app: &App) -> Outcome {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers before the spawn: a signal or an exit in between is not lost.
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let mut chld = signal(SignalKind::child()).expect("installing a SIGCHLD handler");
    become_subreaper();
    let pid = match std::process::Command::new(&app.program)
        .args(&app.args)
        .spawn()
    {
        Ok(child) => child.id() as i32,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_NOT_EXECUTABLE,
            };
            tracing::error!(
                command = %app.program.to_string_lossy(),
                error = %e.to_string().to_lowercase(),
                "cannot run the app; stopping"
            );
            return Outcome {
                status: ChildStatus::NotStarted(code),
                ending: Ending::AppExit,
                reason: "app could not start".into(),
            };
        }
    };
    tracing::info!(
        pid,
        command = %app.program.to_string_lossy(),
        stop_grace_ms = app.stop_grace.as_millis() as u64,
        "app started"
    );
    let mut supervisor = Supervisor::new(app.stop_grace);
    loop {
        if let Some(status) = reap(pid) {
            let reason = match supervisor.stop_signal() {
                Some(sig) => signal_name(sig),
                None => "app exit".into(),
            };
            tracing::info!(
                pid,
                how = %status.describe(),
                killed_after_grace = supervisor.killed_after_grace(),
                "app ended"
            );
            return Outcome {
                status,
                ending: supervisor.ending(),
                reason,
            };
        }
        let kill_at = supervisor.kill_at().map(tokio::time::Instant::from_std);
        let received = tokio::select! {
            _ = term.recv() => Some(libc::SIGTERM),
            _ = int.recv() => Some(libc::SIGINT),
            _ = hup.recv() => Some(libc::SIGHUP),
            _ = chld.recv() => None,
            _ = sleep_until(kill_at) => None,
        };
        if let Some(sig) = received {
            let forward = supervisor.on_signal(sig, Instant::now());
            tracing::info!(signal = %signal_name(sig), pid, "passing the signal on to the app");
            send(pid, forward);
        }
        if supervisor.should_kill(Instant::now()) {
            tracing::warn!(
                pid,
                stop_grace_ms = app.stop_grace.as_millis() as u64,
                "app still running after the stop grace; killing it (SIGKILL)"
            );
            send(pid, libc::SIGKILL);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reaps every child that has ended (ours, and orphans reparented to us); the status of
/// `ours` if it was among them.
fn reap(ours: i32) -> Option<ChildStatus> {
    let mut found = None;
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only to `raw`; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == ours {
            found = ChildStatus::from_wait(raw).or(found);
        }
    }
}

fn send(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions. ESRCH (already gone) is fine: the
    // next reap sees its status.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Orphans of the app (a double fork) are reparented to us, not to the host's init, so
/// `reap` collects them. PID 1 already gets them.
fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot become a child subreaper; orphans of the app go to init"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_the_childs_or_128_plus_the_signal() {
        assert_eq!(exit_code(ChildStatus::Exited(7)), 7);
        assert_eq!(exit_code(ChildStatus::Exited(0)), 0);
        assert_eq!(exit_code(ChildStatus::Killed(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ChildStatus::Killed(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ChildStatus::NotStarted(EXIT_NOT_FOUND)), 127);
    }

    #[test]
    fn wait_statuses_are_read_as_exit_or_signal() {
        // Linux encodings: exit code in bits 8..16, a killing signal in the low 7 bits.
        assert_eq!(ChildStatus::from_wait(7 << 8), Some(ChildStatus::Exited(7)));
        assert_eq!(ChildStatus::from_wait(9), Some(ChildStatus::Killed(9)));
        // Stopped by SIGSTOP: 0x7f in the low byte.
        assert_eq!(ChildStatus::from_wait((19 << 8) | 0x7f), None);
    }

    #[test]
    fn sigterm_starts_the_grace_and_the_kill_comes_once_after_it() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(Duration::from_secs(8));
        assert_eq!(s.kill_at(), None);
        assert_eq!(s.on_signal(libc::SIGHUP, t0), libc::SIGHUP);
        assert_eq!(s.kill_at(), None, "SIGHUP is passed on, not a stop");
        assert_eq!(s.ending(), Ending::AppExit);
        assert_eq!(s.on_signal(libc::SIGTERM, t0), libc::SIGTERM);
        // A second stop signal later does not move the deadline.
        s.on_signal(libc::SIGINT, t0 + Duration::from_secs(5));
        assert_eq!(s.kill_at(), Some(t0 + Duration::from_secs(8)));
        assert!(!s.should_kill(t0 + Duration::from_secs(7)));
        assert!(s.should_kill(t0 + Duration::from_secs(8)));
        assert!(!s.should_kill(t0 + Duration::from_secs(9)), "killed once");
        assert!(s.killed_after_grace());
        assert_eq!(s.ending(), Ending::Planned);
        assert_eq!(s.stop_signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn stop_grace_outside_its_range_is_refused_in_words() {
        assert_eq!(parse_stop_grace("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_stop_grace("0s").unwrap_err(),
            "must be between 1s and 5m, not 0s"
        );
        assert!(parse_stop_grace("soon")
            .unwrap_err()
            .starts_with("must be a duration"));
    }

    #[test]
    fn statuses_are_described_with_the_code_passed_on() {
        assert_eq!(
            ChildStatus::Killed(libc::SIGKILL).describe(),
            "killed by SIGKILL (exit 137)"
        );
        assert_eq!(ChildStatus::Exited(7).describe(), "exited with status 7");
    }
}
