//! The real-time clock through sysfs. On a VM with QEMU's default `-rtc clock=host`
//! it follows the host's clock, so it keeps going while the guest is paused.
//! Resolution is one second; the tracker narrows that down across reads.

use std::path::PathBuf;

use super::local::LocalReference;
use crate::clock::{mono_ns, NANOS_PER_SEC};
use crate::freeze::reference::RefSample;

/// The RTC as seconds since the epoch.
pub const RTC_SINCE_EPOCH: &str = "/sys/class/rtc/rtc0/since_epoch";

pub struct Rtc {
    path: PathBuf,
}

impl Rtc {
    pub fn new(path: impl Into<PathBuf>) -> Rtc {
        Rtc { path: path.into() }
    }
}

impl LocalReference for Rtc {
    fn read(&mut self) -> Result<RefSample, String> {
        let m0 = mono_ns();
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let m1 = mono_ns();
        let secs: i64 = text.trim().parse().map_err(|_| {
            format!(
                "{} holds {:?}, not seconds",
                self.path.display(),
                text.trim()
            )
        })?;
        Ok(RefSample::from_read(
            m0,
            m1,
            secs * NANOS_PER_SEC,
            NANOS_PER_SEC,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_from_a_file_with_one_second_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("since_epoch");
        std::fs::write(&p, "1763900000\n").unwrap();
        let s = Rtc::new(&p).read().unwrap();
        assert!(s.hi_ns - s.lo_ns >= NANOS_PER_SEC);
        assert!(s.lo_ns <= 1_763_900_000 * NANOS_PER_SEC - s.mono_ns);
    }

    #[test]
    fn missing_rtc_is_an_error_naming_the_file() {
        let e = Rtc::new("/nonexistent/rtc").read().unwrap_err();
        assert!(e.contains("/nonexistent/rtc"), "{e}");
    }
}
