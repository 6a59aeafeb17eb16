//! The `downtime` channel: what happened between the last heartbeat of a previous run
//! and this start. Pure: the heartbeat and this start's clocks in, a verdict out.
//!
//! Same `boot_id` → the machine kept running and CLOCK_BOOTTIME is comparable across
//! processes, so the gap is exact to within one heartbeat interval: an unclean gap is a
//! `restart`, a clean one (SIGTERM wrote a final heartbeat) is a planned stop. New
//! `boot_id` → a `reboot`, measured on the wall clock (the only clock that survives one).

use super::event::{ChannelEstimate, FreezeEvent, FreezeKind};
use crate::clock::ClockReading;

/// The last sign of life a previous run persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub clocks: ClockReading,
    pub boot_id: String,
    /// Written by an orderly shutdown.
    pub clean: bool,
}

/// Why the sidecar was not running, for `stallwatch_downtime_seconds_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DowntimeReason {
    /// Killed or crashed on the same boot.
    Restart,
    /// The machine rebooted.
    Reboot,
    /// Stopped on purpose (SIGTERM/SIGINT) and started again.
    Stopped,
}

impl DowntimeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DowntimeReason::Restart => "restart",
            DowntimeReason::Reboot => "reboot",
            DowntimeReason::Stopped => "stopped",
        }
    }
}

/// What the gap since the last heartbeat was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downtime {
    pub reason: DowntimeReason,
    pub duration_ns: i64,
    /// A freeze event for restarts and reboots; planned stops are not freezes.
    pub event: Option<FreezeEvent>,
}

/// Classifies the gap between `last` and this start. `heartbeat_interval_ns` is how
/// often heartbeats were written: the death happened on average half an interval after
/// the last one, so that half is taken off.
pub fn classify(
    last: &Heartbeat,
    now: ClockReading,
    boot_id: &str,
    heartbeat_interval_ns: i64,
) -> Downtime {
    let half = if last.clean {
        0
    } else {
        heartbeat_interval_ns / 2
    };
    let (reason, gap) = if last.boot_id == boot_id {
        let reason = if last.clean {
            DowntimeReason::Stopped
        } else {
            DowntimeReason::Restart
        };
        (reason, now.boot_ns - last.clocks.boot_ns)
    } else {
        (DowntimeReason::Reboot, now.real_ns - last.clocks.real_ns)
    };
    let duration_ns = (gap - half).max(0);
    let event = match reason {
        DowntimeReason::Stopped => None,
        DowntimeReason::Restart | DowntimeReason::Reboot => Some(FreezeEvent {
            kind: if reason == DowntimeReason::Reboot {
                FreezeKind::Reboot
            } else {
                FreezeKind::Restart
            },
            started_at_ns: last.clocks.real_ns + half,
            duration_ns,
            channels: vec![ChannelEstimate {
                channel: "downtime".into(),
                estimate_ns: duration_ns,
            }],
        }),
    };
    Downtime {
        reason,
        duration_ns,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn hb(boot_id: &str, clean: bool) -> Heartbeat {
        Heartbeat {
            clocks: ClockReading {
                mono_ns: 100 * S,
                real_ns: 1_700_000_000 * S,
                boot_ns: 100 * S,
            },
            boot_id: boot_id.into(),
            clean,
        }
    }

    #[test]
    fn kill_and_restart_on_the_same_boot_is_a_restart_measured_on_boottime() {
        // The wall clock was stepped meanwhile; BOOTTIME still gives the truth.
        let now = ClockReading {
            mono_ns: 106 * S,
            real_ns: 1_700_000_999 * S,
            boot_ns: 106 * S,
        };
        let d = classify(&hb("a", false), now, "a", S);
        assert_eq!(d.reason, DowntimeReason::Restart);
        assert_eq!(d.duration_ns, 5 * S + S / 2);
        let e = d.event.unwrap();
        assert_eq!(e.kind, FreezeKind::Restart);
        assert_eq!(e.channels[0].channel, "downtime");
    }

    #[test]
    fn clean_stop_is_downtime_but_not_a_freeze() {
        let now = ClockReading {
            mono_ns: 130 * S,
            real_ns: 0,
            boot_ns: 130 * S,
        };
        let d = classify(&hb("a", true), now, "a", S);
        assert_eq!(
            (d.reason, d.duration_ns, d.event),
            (DowntimeReason::Stopped, 30 * S, None)
        );
    }

    #[test]
    fn new_boot_id_is_a_reboot_on_the_wall_clock() {
        let now = ClockReading {
            mono_ns: 5 * S,
            real_ns: 1_700_000_300 * S,
            boot_ns: 5 * S,
        };
        let d = classify(&hb("a", true), now, "b", S);
        assert_eq!(d.reason, DowntimeReason::Reboot);
        assert_eq!(d.duration_ns, 300 * S);
        assert_eq!(d.event.unwrap().kind, FreezeKind::Reboot);
    }

    #[test]
    fn a_wall_clock_that_went_backwards_across_a_reboot_gives_zero_not_negative() {
        let now = ClockReading {
            mono_ns: 5 * S,
            real_ns: 1_600_000_000 * S,
            boot_ns: 5 * S,
        };
        assert_eq!(classify(&hb("a", false), now, "b", S).duration_ns, 0);
    }
}
