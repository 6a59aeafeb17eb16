//! "Stopped by a signal": a `SIGCONT` handler that records when this process was last
//! continued. A process stopped by `SIGSTOP`/`SIGTSTP` (a debugger, `kill -STOP`, a job
//! control stop) runs again only after a `SIGCONT`, so one landing at the end of a stall
//! says the stall was a stop.
//!
//! The handler is async-signal-safe: it reads CLOCK_MONOTONIC (`clock_gettime` is on
//! POSIX's safe list) and stores it and a count in atomics, nothing else. It is installed
//! with `sigaction` and `SA_RESTART` for `SIGCONT` only, so the runtime's own handlers
//! (`SIGTERM`, `SIGINT`) are untouched, and a continued process still continues: the
//! kernel resumes it whatever the handler does.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Once;

/// MONOTONIC of the last `SIGCONT`, ns; 0 before the first.
static LAST_SIGCONT_MONO_NS: AtomicI64 = AtomicI64::new(0);
/// `SIGCONT`s received since the handler was installed.
static SIGCONTS: AtomicI64 = AtomicI64::new(0);

extern "C" fn on_sigcont(_signal: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the interrupted code's.
    let saved_errno = unsafe { *libc::__errno_location() };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime is async-signal-safe.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        let mono_ns = ts
            .tv_sec
            .saturating_mul(crate::clock::NANOS_PER_SEC)
            .saturating_add(ts.tv_nsec);
        LAST_SIGCONT_MONO_NS.store(mono_ns, Ordering::Relaxed);
    }
    SIGCONTS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

static INSTALL: Once = Once::new();
/// The errno of the one installation, 0 for success.
static INSTALL_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Installs the handler (once per process; later calls only report the first result).
pub fn install() -> io::Result<()> {
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; the fields used are set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigcont as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset; sigaction gets valid pointers and
        // replaces only SIGCONT's disposition.
        let rc = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGCONT, &action, std::ptr::null_mut())
        };
        let errno = if rc == 0 {
            0
        } else {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        };
        INSTALL_ERRNO.store(errno, Ordering::Relaxed);
    });
    // call_once has completed: the store above happened before this load.
    match INSTALL_ERRNO.load(Ordering::Relaxed) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// MONOTONIC of the last `SIGCONT` this process received, if any.
pub fn last_sigcont_mono_ns() -> Option<i64> {
    Some(LAST_SIGCONT_MONO_NS.load(Ordering::Relaxed)).filter(|&ns| ns > 0)
}

/// `SIGCONT`s received since the handler was installed.
pub fn sigconts() -> i64 {
    SIGCONTS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigcont_is_recorded_with_its_time() {
        install().unwrap();
        let before = crate::clock::mono_ns();
        let count = sigconts();
        // SAFETY: raise has no memory preconditions; SIGCONT to a running process only
        // runs the handler.
        assert_eq!(unsafe { libc::raise(libc::SIGCONT) }, 0);
        assert_eq!(sigconts(), count + 1);
        let at = last_sigcont_mono_ns().unwrap();
        assert!(at >= before && at <= crate::clock::mono_ns(), "{at}");
        install().unwrap();
    }
}
