//! The tick thread's run delay: how long it was runnable but not running (waiting for a
//! CPU), from the kernel's scheduler statistics. Time spent stopped, frozen or asleep is
//! not in it; time spent waiting for a CPU quota to refill is (measured on Linux 6.18,
//! cgroup v1 CFS quota: a 750 ms overrun while throttled is 750 ms of run delay).
//!
//! Owns the one read; decides nothing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The calling thread's scheduler statistics: `run_ns wait_ns timeslices`.
pub const THREAD_SELF_SCHEDSTAT: &str = "/proc/thread-self/schedstat";
/// Largest schedstat read: three numbers.
const SCHEDSTAT_MAX_BYTES: usize = 128;

/// The second field of a schedstat line: time runnable but waiting, ns.
pub fn parse_run_delay_ns(schedstat: &str) -> Option<i64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// One thread's schedstat, held open: the file names the thread that opened it, so
/// reads from anywhere later report on that thread.
pub struct RunDelay {
    file: File,
}

impl RunDelay {
    /// Opens the calling thread's schedstat. Call it on the thread to be watched.
    pub fn open_for_this_thread() -> io::Result<RunDelay> {
        let delay = RunDelay {
            file: File::open(THREAD_SELF_SCHEDSTAT)?,
        };
        delay.read_ns()?;
        Ok(delay)
    }

    /// Cumulative run delay of that thread, ns.
    pub fn read_ns(&self) -> io::Result<i64> {
        let mut buf = [0u8; SCHEDSTAT_MAX_BYTES];
        let n = self.file.read_at(&mut buf, 0)?;
        parse_run_delay_ns(&String::from_utf8_lossy(&buf[..n])).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no run delay in /proc/thread-self/schedstat",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_field_is_the_run_delay() {
        assert_eq!(parse_run_delay_ns("49427863 4009517 99\n"), Some(4_009_517));
        assert_eq!(parse_run_delay_ns("49427863\n"), None);
    }

    #[test]
    fn this_thread_s_run_delay_is_readable_and_never_goes_back() {
        let delay = RunDelay::open_for_this_thread().unwrap();
        let a = delay.read_ns().unwrap();
        let b = delay.read_ns().unwrap();
        assert!(a >= 0 && b >= a, "{a} then {b}");
    }
}
