//! Thin readers of the machine's clocks and counters: MONOTONIC, REALTIME, BOOTTIME,
//! absolute sleeps, `boot_id`, `/proc/stat` steal time and the kernel's own idea of the
//! wall clock's quality (`adjtimex`).
//!
//! Owns only the system calls. It decides nothing: readings go to the pure
//! [`crate::freeze::detector`], which is where every threshold lives. All times are
//! signed i64 nanoseconds.

use std::io;

/// Nanoseconds per second, for conversions.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// One reading of the three kernel clocks, taken back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockReading {
    /// CLOCK_MONOTONIC: stops during a VM pause and a suspend.
    pub mono_ns: i64,
    /// CLOCK_REALTIME: wall clock, unix epoch; can be stepped.
    pub real_ns: i64,
    /// CLOCK_BOOTTIME: MONOTONIC plus time spent suspended.
    pub boot_ns: i64,
}

fn gettime(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used here always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    ts.tv_sec
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now.
pub fn mono_ns() -> i64 {
    gettime(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME now.
pub fn real_ns() -> i64 {
    gettime(libc::CLOCK_REALTIME)
}

/// Reads MONOTONIC, REALTIME and BOOTTIME back to back (three vDSO calls, ~100 ns).
pub fn read_clocks() -> ClockReading {
    ClockReading {
        mono_ns: gettime(libc::CLOCK_MONOTONIC),
        real_ns: gettime(libc::CLOCK_REALTIME),
        boot_ns: gettime(libc::CLOCK_BOOTTIME),
    }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (an absolute deadline, so time
/// spent working between sleeps does not accumulate as drift). If the absolute sleep
/// fails (an LD_PRELOAD clock faker can hand the kernel an invalid time), falls back to a
/// relative sleep for the time left, so the loop never spins.
pub fn sleep_until_mono(deadline_ns: i64) {
    let ts = libc::timespec {
        tv_sec: deadline_ns.div_euclid(NANOS_PER_SEC),
        tv_nsec: deadline_ns.rem_euclid(NANOS_PER_SEC),
    };
    loop {
        // SAFETY: `ts` is a valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        match rc {
            0 => return,
            libc::EINTR => continue,
            _ => {
                let left = deadline_ns - mono_ns();
                if left > 0 {
                    std::thread::sleep(std::time::Duration::from_nanos(left as u64));
                }
                return;
            }
        }
    }
}

/// Reads a clock given by id (for PTP clocks opened as dynamic POSIX clocks).
pub fn gettime_clockid(clock: libc::clockid_t) -> io::Result<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid id is reported through errno.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts
        .tv_sec
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(ts.tv_nsec))
}

/// The kernel's view of the wall clock's quality, from `adjtimex(2)` in read-only mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// A time daemon disciplines the clock (`STA_UNSYNC` clear, state not `TIME_ERROR`).
    pub synced: bool,
    /// The kernel's bound on the wall clock's error (`maxerror`), in nanoseconds. While
    /// unsynchronised it grows to 16 s and stops meaning anything.
    pub max_error_ns: i64,
    /// The kernel's estimated error (`esterror`), in nanoseconds.
    pub est_error_ns: i64,
}

/// Reads the kernel clock state without changing it (`modes = 0`).
pub fn kernel_clock() -> io::Result<KernelClock> {
    // SAFETY: an all-zero timex is a valid argument; modes = 0 only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelClock {
        synced: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        max_error_ns: (tx.maxerror as i64).saturating_mul(1_000),
        est_error_ns: (tx.esterror as i64).saturating_mul(1_000),
    })
}

/// Where the kernel names the clocksource behind every clock.
pub const CLOCKSOURCE_PATH: &str =
    "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The kernel's current clocksource (`kvm-clock`, `tsc`, `hpet`, …).
pub fn clocksource() -> io::Result<String> {
    Ok(std::fs::read_to_string(CLOCKSOURCE_PATH)?
        .trim()
        .to_string())
}

/// Where the kernel publishes the id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel's id of this boot: the same for every process until the machine reboots.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID_PATH)?.trim().to_string())
}

/// Reads cumulative steal time from a `/proc/stat` file.
pub struct StealReader {
    path: std::path::PathBuf,
    ticks_per_sec: i64,
}

impl StealReader {
    pub fn new() -> StealReader {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        StealReader {
            path: "/proc/stat".into(),
            ticks_per_sec: if hz > 0 { hz } else { 100 },
        }
    }

    /// Steal time summed over all CPUs since boot, in nanoseconds.
    pub fn read_ns(&self) -> io::Result<i64> {
        let text = std::fs::read_to_string(&self.path)?;
        let ticks = parse_steal_ticks(&text).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no steal column in /proc/stat")
        })?;
        Ok(ticks * (NANOS_PER_SEC / self.ticks_per_sec))
    }
}

impl Default for StealReader {
    fn default() -> Self {
        StealReader::new()
    }
}

/// The 8th value of the aggregate `cpu` line of `/proc/stat`, in USER_HZ ticks.
pub fn parse_steal_ticks(proc_stat: &str) -> Option<i64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_are_read_in_order_and_boottime_covers_monotonic() {
        let a = read_clocks();
        let b = read_clocks();
        assert!(b.mono_ns >= a.mono_ns);
        assert!(a.boot_ns >= a.mono_ns);
        assert!(a.real_ns > 1_500_000_000 * NANOS_PER_SEC);
    }

    #[test]
    fn sleep_until_reaches_the_deadline() {
        let deadline = mono_ns() + 20_000_000;
        sleep_until_mono(deadline);
        assert!(mono_ns() >= deadline);
    }

    #[test]
    fn steal_column_is_parsed() {
        let stat =
            "cpu  4578 0 2509 15191 320 0 91 657 0 0\ncpu0 2044 0 997 8314 25 0 10 314 0 0\n";
        assert_eq!(parse_steal_ticks(stat), Some(657));
        assert_eq!(parse_steal_ticks("intr 1 2\n"), None);
    }

    #[test]
    fn the_kernel_clock_state_is_readable_without_privileges() {
        let k = kernel_clock().unwrap();
        assert!(k.max_error_ns >= 0, "{k:?}");
        assert!(!clocksource().unwrap().is_empty());
    }

    #[test]
    fn real_boot_id_and_steal_are_readable() {
        assert_eq!(boot_id().unwrap().len(), 36);
        assert!(StealReader::new().read_ns().unwrap() >= 0);
    }
}
