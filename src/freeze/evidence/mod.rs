//! Host evidence for a stall: the thin readers that tell a whole-machine stop from this
//! process alone not running — its run delay ([`schedstat`]), its cgroup's CPU throttling
//! and freezer ([`cgroup`]), and a `SIGCONT` after a stop ([`sigcont`]). Steal time is
//! read with the clocks (`crate::clock::StealReader`).
//!
//! [`HostEvidence`] opens everything once, on the tick thread at start (the cgroup is
//! resolved then: a process moved to another cgroup later is not followed), and
//! [`HostEvidence::sample`] reads it all, which the tick thread does once a second, never
//! on every tick: two `pread`s, one non-blocking `read` of an inotify descriptor and two
//! atomic loads. The pure [`crate::freeze::detector`] turns the samples into channels.

pub mod cgroup;
pub mod schedstat;
pub mod sigcont;

use std::path::PathBuf;

use self::cgroup::{CgroupDirs, FreezerWatch, Throttle};
use self::schedstat::RunDelay;
use super::detector::HostSample;

/// The evidence sources this process could open, and their state.
pub struct HostEvidence {
    run_delay: Option<RunDelay>,
    throttle: Option<Throttle>,
    freezer: Option<FreezerWatch>,
    sigcont: bool,
    dirs: CgroupDirs,
    /// The v2 `cgroup.events`, to read the `frozen` line when the freezer fired.
    v2_events: Option<PathBuf>,
}

/// What a [`HostEvidence::sample`] saw besides the sample itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleNews {
    /// Freezer notifications new since the last sample.
    pub freezer_events: i64,
    /// The v2 `frozen` line read after them, when there is one.
    pub frozen_now: Option<bool>,
}

impl HostEvidence {
    /// Opens every source this machine has. Call it on the tick thread: the run delay is
    /// the calling thread's.
    pub fn open() -> HostEvidence {
        let dirs = CgroupDirs::discover().unwrap_or_default();
        let v2_events = dirs
            .v2
            .as_ref()
            .map(|d| d.join("cgroup.events"))
            .filter(|p| p.exists());
        HostEvidence {
            run_delay: RunDelay::open_for_this_thread().ok(),
            throttle: Throttle::open(&dirs.cpu_stat_candidates()),
            freezer: FreezerWatch::open(&dirs.freezer_files()),
            sigcont: sigcont::install().is_ok(),
            dirs,
            v2_events,
        }
    }

    /// Reads every source once.
    pub fn sample(&mut self) -> (HostSample, SampleNews) {
        let mut news = SampleNews::default();
        let freezer_events = self.freezer.as_mut().map(|w| {
            let (total, new) = w.poll();
            news.freezer_events = new;
            total
        });
        if news.freezer_events > 0 {
            news.frozen_now = self
                .v2_events
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| cgroup::parse_frozen(&t));
        }
        let sample = HostSample {
            run_delay_ns: self.run_delay.as_ref().and_then(|r| r.read_ns().ok()),
            throttled_ns: self.throttle.as_ref().and_then(|t| t.read_ns().ok()),
            last_sigcont_mono_ns: self
                .sigcont
                .then(|| sigcont::last_sigcont_mono_ns().unwrap_or(0)),
            freezer_events,
        };
        (sample, news)
    }

    /// Whether the tick thread's run delay is readable.
    pub fn has_run_delay(&self) -> bool {
        self.run_delay.is_some()
    }

    /// The `cpu.stat` that counts throttling, if any.
    pub fn throttle_file(&self) -> Option<String> {
        self.throttle
            .as_ref()
            .map(|t| t.path().display().to_string())
    }

    /// The freezer files watched.
    pub fn freezer_files(&self) -> Vec<String> {
        self.freezer.as_ref().map_or_else(Vec::new, |w| {
            w.watched()
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        })
    }

    /// Whether a `SIGCONT` is recorded.
    pub fn has_sigcont(&self) -> bool {
        self.sigcont
    }

    /// Whether the process sits in a v1 freezer cgroup other than the root.
    pub fn in_v1_freezer_cgroup(&self) -> bool {
        self.dirs.in_v1_freezer_cgroup()
    }
}
