//! What a freeze is once detected: its kind, when it started, how long it lasted and
//! which evidence channels saw it. Plain data; no I/O.

use serde::Serialize;

/// The cause a freeze is attributed to, from the evidence that saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeKind {
    /// This process did not run while MONOTONIC kept going (SIGSTOP, cgroup freezer, CPU starvation).
    ProcessStall,
    /// The whole VM stopped: MONOTONIC stopped, a host-backed reference kept going.
    VmPause,
    /// The system slept: BOOTTIME − MONOTONIC grew.
    Suspend,
    /// REALTIME − MONOTONIC stepped (NTP step, manual `date -s`, snapshot restore catch-up).
    WallClockStep,
    /// The sidecar was gone and came back on the same boot without a clean stop.
    Restart,
    /// The machine rebooted since the last heartbeat.
    Reboot,
}

impl FreezeKind {
    pub const ALL: [FreezeKind; 6] = [
        FreezeKind::ProcessStall,
        FreezeKind::VmPause,
        FreezeKind::Suspend,
        FreezeKind::WallClockStep,
        FreezeKind::Restart,
        FreezeKind::Reboot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FreezeKind::ProcessStall => "process_stall",
            FreezeKind::VmPause => "vm_pause",
            FreezeKind::Suspend => "suspend",
            FreezeKind::WallClockStep => "wall_clock_step",
            FreezeKind::Restart => "restart",
            FreezeKind::Reboot => "reboot",
        }
    }

    pub fn parse(s: &str) -> Option<FreezeKind> {
        FreezeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the event's duration is time the machine or process lost. A wall-clock step
    /// is a jump of the clock, not lost time: its duration is the signed step size.
    pub fn is_lost_time(self) -> bool {
        self != FreezeKind::WallClockStep
    }
}

/// One evidence channel's estimate of a freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChannelEstimate {
    /// `tick`, `wall_step`, `suspend`, `downtime`, a reference name (`rtc`, `ptp:/dev/ptp0`,
    /// …), or evidence on a `process_stall`: `steal`, `run_delay`, `throttled`, `sigcont`,
    /// `cgroup_freeze` (see [`crate::freeze::detector`]).
    pub channel: String,
    pub estimate_ns: i64,
}

/// A freeze: one event however many channels saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeEvent {
    pub kind: FreezeKind,
    /// Wall-clock start, unix nanoseconds (as this machine's clock saw it).
    pub started_at_ns: i64,
    /// Lost time in nanoseconds; for `wall_clock_step` the signed step size.
    pub duration_ns: i64,
    pub channels: Vec<ChannelEstimate>,
}
