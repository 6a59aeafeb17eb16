//! Was a gap or stall the machine's fault? Pure: an interval and the freeze events that
//! might overlap it in, a cause out.

use crate::freeze::FreezeKind;

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
}

/// Why a gap or stall happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The machine (or this process with it) was frozen for at least half of it.
    Freeze { freeze_id: i64 },
    /// The app was running and made no progress.
    Stall,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Freeze { .. } => "freeze",
            Cause::Stall => "stall",
        }
    }
}

/// Attributes the interval `[start_ns, end_ns]` to the freeze that overlaps it most,
/// if that freeze (widened by [`OVERLAP_SLACK_NS`] each side) covers at least half of
/// it; else to a stall.
pub fn attribute(start_ns: i64, end_ns: i64, freezes: &[FreezeSpan]) -> Cause {
    let length = (end_ns - start_ns).max(1);
    freezes
        .iter()
        .filter(|f| f.kind.is_lost_time())
        .map(|f| {
            let from = (f.start_ns - OVERLAP_SLACK_NS).max(start_ns);
            let to = (f.start_ns + f.duration_ns + OVERLAP_SLACK_NS).min(end_ns);
            (f.id, to - from)
        })
        .filter(|(_, overlap)| 2 * overlap >= length)
        .max_by_key(|(_, overlap)| *overlap)
        .map_or(Cause::Stall, |(freeze_id, _)| Cause::Freeze { freeze_id })
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
        };
        assert_eq!(attribute(100 * S, 108 * S, &[step]), Cause::Stall);
    }

    #[test]
    fn the_biggest_overlap_wins() {
        let got = attribute(100 * S, 120 * S, &[stall(1, 100, 11), stall(2, 111, 9)]);
        assert_eq!(got, Cause::Freeze { freeze_id: 1 });
    }
}
