//! A PTP hardware clock (`/dev/ptpN`) read as a dynamic POSIX clock. `ptp_kvm` exposes
//! the host's clock this way, which makes it an exact VM-pause reference.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::local::LocalReference;
use crate::clock::{gettime_clockid, mono_ns};
use crate::freeze::reference::RefSample;

pub struct Ptp {
    path: PathBuf,
    file: Option<File>,
}

impl Ptp {
    pub fn new(path: PathBuf) -> Ptp {
        Ptp { path, file: None }
    }
}

/// The clock id of a dynamic POSIX clock opened as `fd` (the kernel's FD_TO_CLOCKID).
fn fd_to_clockid(fd: i32) -> libc::clockid_t {
    ((!fd) << 3) | 3
}

impl LocalReference for Ptp {
    fn read(&mut self) -> Result<RefSample, String> {
        if self.file.is_none() {
            let f = File::open(&self.path)
                .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
            self.file = Some(f);
        }
        let fd = self.file.as_ref().expect("opened above").as_raw_fd();
        let m0 = mono_ns();
        let value = gettime_clockid(fd_to_clockid(fd));
        let m1 = mono_ns();
        match value {
            Ok(v) => Ok(RefSample::from_read(m0, m1, v, 1)),
            Err(e) => {
                self.file = None;
                Err(format!("cannot read {}: {e}", self.path.display()))
            }
        }
    }
}
