//! Was a gap or stall the machine's fault? Pure: an interval and the freeze events that
//! might overlap it in, a cause out.
//!
//! A freeze is the machine (or this process with it) not running. A `process_stall` whose
//! `run_delay` or `throttled` evidence covers at least half of it was not that: the
//! machine ran, and this process waited for a CPU (a spent quota, a busier neighbour).
//! A gap such a stall covers is [`Cause::Starvation`], not a freeze.

use crate::freeze::{FreezeEvent, FreezeKind};

/// Slack when comparing the app's timestamps with freeze times: both come from this
/// machine's wall clock, but the app stamps a step a little after it truly starts.
pub const OVERLAP_SLACK_NS: i64 = 1_000_000_000;

/// A recorded freeze, as attribution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeSpan {
    pub id: i64,
    pub kind: FreezeKind,
    pub start_ns: i64,
    pub duration_ns: i64,
    /// The machine was running and this process was waiting for a CPU (see [`starved`]).
    pub starved: bool,
}

impl FreezeSpan {
    /// The span of stored event `id`.
    pub fn of(id: i64, e: &FreezeEvent) -> FreezeSpan {
        FreezeSpan {
            id,
            kind: e.kind,
            start_ns: e.started_at_ns,
            duration_ns: e.duration_ns,
            starved: starved(e),
        }
    }
}

/// The channels that count time this process was runnable but got no CPU.
pub const STARVATION_CHANNELS: [&str; 2] = ["run_delay", "throttled"];

/// Whether `e` is a `process_stall` that run delay or throttling covers at least half of:
/// CPU starvation, the machine running.
pub fn starved(e: &FreezeEvent) -> bool {
    e.kind == FreezeKind::ProcessStall
        && e.channels.iter().any(|c| {
            STARVATION_CHANNELS.contains(&c.channel.as_str()) && 2 * c.estimate_ns >= e.duration_ns
        })
}

/// Why a gap or stall happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The machine (or this process with it) was frozen for at least half of it.
    Freeze { freeze_id: i64 },
    /// A stall of this process covers at least half of it, and the machine was running:
    /// the process waited for a CPU (see [`starved`]).
    Starvation { freeze_id: i64 },
    /// The app was running and made no progress.
    Stall,
}

impl Cause {
    /// Every `cause` label value, for series registered at zero.
    pub const LABELS: [&'static str; 3] = ["freeze", "starvation", "stall"];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Freeze { .. } => "freeze",
            Cause::Starvation { .. } => "starvation",
            Cause::Stall => "stall",
        }
    }

    /// The freeze event it was attributed to, if any.
    pub fn freeze_id(self) -> Option<i64> {
        match self {
            Cause::Freeze { freeze_id } | Cause::Starvation { freeze_id } => Some(freeze_id),
            Cause::Stall => None,
        }
    }

    /// A cause as stored: its label and freeze id. A row without a freeze id is a stall;
    /// one with an unknown label (a newer build's) reads as a freeze.
    pub fn from_stored(label: &str, freeze_id: Option<i64>) -> Cause {
        match (label, freeze_id) {
            (_, None) => Cause::Stall,
            ("starvation", Some(freeze_id)) => Cause::Starvation { freeze_id },
            (_, Some(freeze_id)) => Cause::Freeze { freeze_id },
        }
    }
}

/// Attributes the interval `[start_ns, end_ns]` to the freeze that overlaps it most,
/// if that freeze (widened by [`OVERLAP_SLACK_NS`] each side) covers at least half of
/// it — as starvation when that freeze was ([`FreezeSpan::starved`]); else to a stall.
pub fn attribute(start_ns: i64, end_ns: i64, freezes: &[FreezeSpan]) -> Cause {
    let length = (end_ns - start_ns).max(1);
    freezes
        .iter()
        .filter(|f| f.kind.is_lost_time())
        .map(|f| {
            let from = (f.start_ns - OVERLAP_SLACK_NS).max(start_ns);
            let to = (f.start_ns + f.duration_ns + OVERLAP_SLACK_NS).min(end_ns);
            (f, to - from)
        })
        .filter(|(_, overlap)| 2 * overlap >= length)
        .max_by_key(|(_, overlap)| *overlap)
        .map_or(Cause::Stall, |(f, _)| match f.starved {
            true => Cause::Starvation { freeze_id: f.id },
            false => Cause::Freeze { freeze_id: f.id },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn stall(id: i64, start: i64, secs: i64) -> FreezeSpan {
        FreezeSpan {
            id,
            kind: FreezeKind::ProcessStall,
            start_ns: start * S,
            duration_ns: secs * S,
            starved: false,
        }
    }

    fn event(kind: FreezeKind, secs: i64, channels: &[(&str, i64)]) -> FreezeEvent {
        FreezeEvent {
            kind,
            started_at_ns: 100 * S,
            duration_ns: secs * S,
            channels: channels
                .iter()
                .map(|(c, ns)| crate::freeze::ChannelEstimate {
                    channel: c.to_string(),
                    estimate_ns: *ns,
                })
                .collect(),
        }
    }

    #[test]
    fn a_gap_covered_by_a_freeze_is_the_freeze() {
        assert_eq!(
            attribute(100 * S, 108 * S, &[stall(7, 100, 8)]),
            Cause::Freeze { freeze_id: 7 }
        );
    }

    #[test]
    fn a_gap_with_no_freeze_is_a_stall() {
        assert_eq!(attribute(100 * S, 108 * S, &[]), Cause::Stall);
        assert_eq!(
            attribute(100 * S, 108 * S, &[stall(1, 10, 8)]),
            Cause::Stall
        );
    }

    #[test]
    fn a_short_freeze_inside_a_long_gap_is_still_a_stall() {
        assert_eq!(attribute(0, 600 * S, &[stall(1, 100, 3)]), Cause::Stall);
    }

    #[test]
    fn wall_clock_steps_never_explain_a_gap() {
        let step = FreezeSpan {
            id: 3,
            kind: FreezeKind::WallClockStep,
            start_ns: 100 * S,
            duration_ns: 8 * S,
            starved: false,
        };
        assert_eq!(attribute(100 * S, 108 * S, &[step]), Cause::Stall);
    }

    #[test]
    fn the_biggest_overlap_wins() {
        let got = attribute(100 * S, 120 * S, &[stall(1, 100, 11), stall(2, 111, 9)]);
        assert_eq!(got, Cause::Freeze { freeze_id: 1 });
    }

    #[test]
    fn a_stall_starved_of_cpu_is_starvation_not_a_freeze() {
        let starved = FreezeSpan {
            starved: true,
            ..stall(7, 100, 8)
        };
        let got = attribute(100 * S, 108 * S, &[starved]);
        assert_eq!(got, Cause::Starvation { freeze_id: 7 });
        assert_eq!((got.as_str(), got.freeze_id()), ("starvation", Some(7)));
    }

    #[test]
    fn starvation_is_run_delay_or_throttling_over_half_a_process_stall() {
        let stall =
            |channels: &[(&str, i64)]| starved(&event(FreezeKind::ProcessStall, 4, channels));
        assert!(stall(&[("tick", 4 * S), ("run_delay", 2 * S)]));
        assert!(stall(&[("tick", 4 * S), ("throttled", 3 * S)]));
        assert!(!stall(&[("tick", 4 * S), ("run_delay", S)]), "a quarter");
        assert!(!stall(&[("tick", 4 * S), ("sigcont", 4 * S)]), "a stop");
        assert!(!stall(&[("tick", 4 * S), ("cgroup_freeze", 0)]));
        assert!(
            !stall(&[("tick", 4 * S), ("steal", 4 * S)]),
            "the host took it"
        );
        let pause = event(
            FreezeKind::VmPause,
            4,
            &[("rtc", 4 * S), ("run_delay", 4 * S)],
        );
        assert!(!starved(&pause), "only a process_stall");
        assert!(
            FreezeSpan::of(
                3,
                &event(FreezeKind::ProcessStall, 4, &[("throttled", 2 * S)])
            )
            .starved
        );
    }

    #[test]
    fn stored_causes_read_back() {
        for cause in [
            Cause::Freeze { freeze_id: 2 },
            Cause::Starvation { freeze_id: 3 },
            Cause::Stall,
        ] {
            assert_eq!(Cause::from_stored(cause.as_str(), cause.freeze_id()), cause);
            assert!(Cause::LABELS.contains(&cause.as_str()));
        }
    }
}
