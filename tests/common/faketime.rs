//! libfaketime for the tests that move a process's wall clock: where the preload library
//! is, and an offset file that steps the clock of every process started with
//! [`FakeClock::env`] while it runs.
//!
//! The thread-safe build `libfaketimeMT.so.1` is used: the plain `libfaketime.so.1`
//! re-reads the offset file into one unguarded static buffer, so with
//! `FAKETIME_NO_CACHE=1` threads race and the faked clock flips between the old and the
//! new offset for a moment after each rewrite.
//!
//! Only REALTIME is faked (`FAKETIME_DONT_FAKE_MONOTONIC=1`, which in libfaketime 0.9.10
//! leaves MONOTONIC and BOOTTIME real together). Faking MONOTONIC is no option for a Rust
//! program: libfaketime 0.9.10 reports it as an absolute time derived from the faked
//! REALTIME (about 1.8e9 s), while std's `Condvar::wait_timeout` and `thread::park_timeout`
//! hand the kernel an absolute CLOCK_MONOTONIC deadline through the raw `futex` syscall,
//! which libfaketime does not intercept: the deadline lands decades out and every timed
//! wait hangs until woken (a source under it polls once, then never again).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Launch;

/// Where Debian puts the preload library, for when `dpkg` cannot say.
const KNOWN_LIBFAKETIME_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];
/// The thread-safe build of the preload library (see the module doc).
const LIBFAKETIME: &str = "libfaketimeMT.so.1";

/// The thread-safe libfaketime preload library: `$STALLWATCH_TEST_LIBFAKETIME`, else what
/// `dpkg -L` lists for the `libfaketime`/`faketime` packages, else the usual Debian paths.
pub fn libfaketime() -> PathBuf {
    if let Some(p) = std::env::var_os("STALLWATCH_TEST_LIBFAKETIME") {
        return PathBuf::from(p);
    }
    for package in ["libfaketime", "faketime"] {
        let listed = Command::new("dpkg").args(["-L", package]).output();
        if let Ok(out) = listed {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(p) = text
                .lines()
                .find(|l| l.ends_with(&format!("/{LIBFAKETIME}")))
                .map(PathBuf::from)
                .filter(|p| p.is_file())
            {
                return p;
            }
        }
    }
    KNOWN_LIBFAKETIME_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{LIBFAKETIME} not found; install it with `apt-get install -y faketime` \
                 (or point STALLWATCH_TEST_LIBFAKETIME at it). This test does not skip."
            )
        })
}

/// The offset file libfaketime reads on every clock call (`FAKETIME_NO_CACHE=1`), so
/// rewriting it steps REALTIME of every process started with [`FakeClock::env`].
pub struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    /// An offset file in `dir` (which the faked processes must be able to read), at +0.
    pub fn new(dir: &Path) -> FakeClock {
        let clock = FakeClock {
            file: dir.join("faketime.offset"),
        };
        clock.set("+0");
        clock
    }

    /// Sets REALTIME to real time plus `offset` ("+120", "-60": seconds). Written to a
    /// temporary file and renamed, so no read ever sees a half-written file.
    pub fn set(&self, offset: &str) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n")).expect("writing the faketime file");
        std::fs::rename(&tmp, &self.file).expect("renaming the faketime file");
    }

    /// The environment that puts a process under this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", libfaketime().display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A sidecar launch (no config file) under this clock.
    pub fn launch(&self) -> Launch {
        Launch {
            config: None,
            env: self.env(),
        }
    }
}
