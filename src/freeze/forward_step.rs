//! Is a forward wall-clock step time this machine did not run, or a clock correction?
//!
//! Pure: the step and the evidence read before it in, a verdict out. The rule (also in
//! ARCHITECTURE.md, "Forward steps"):
//!
//! A forward change of REALTIME − MONOTONIC is what a Firecracker snapshot restore, a Fly
//! suspend or a VM pause with stopped clocks leaves behind once the guest clock is set
//! right again: MONOTONIC never saw the time, REALTIME catches up in one step. It is a
//! correction instead when the evidence explains it:
//!
//! 1. a reference clock already counted that time as a `vm_pause` since the last step
//!    (the step only catches REALTIME up with it; it must not be counted twice);
//! 2. the step brings REALTIME to a reference it had fallen behind (a reference's
//!    offset before the step matches the step);
//! 3. the step undoes drift of REALTIME against MONOTONIC measured since the last step,
//!    or backward steps since the last forward one (a flapping clock set back and forth);
//! 4. the step is within the kernel's own error bound for the clock: `maxerror` while a
//!    time daemon keeps it synchronised, else [`FREE_RUN_PPM`] of the time it has run
//!    free since it was last set (the last step seen, or boot).
//!
//! What is left after (1) and (3) is lost time if it is at least `freeze.min`; anything
//! shorter stays a `wall_clock_step`. Backward steps are never lost time.

use crate::clock::KernelClock;
use crate::config::ForwardSteps;

/// How fast a free-running, unsynchronised clock may plausibly wander from true time:
/// the frequency tolerance of a common quartz oscillator (and the usual spread of
/// hypervisor TSC calibration). A forward step within this much of the free-running time
/// is taken for a correction of that wander.
pub const FREE_RUN_PPM: i64 = 100;
/// Longest lost time believed: a snapshot restored a year later is conceivable, a clock
/// that jumps by more is broken (a bad RTC, a mistyped `date -s`), not a freeze.
pub const MAX_LOST_NS: i64 = 366 * 86_400 * 1_000_000_000;

/// The evidence read before a forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepEvidence {
    /// Time a reference counted as `vm_pause` since the last step, not yet matched by a step.
    pub unreconciled_pause_ns: i64,
    /// `reference − REALTIME` before the step, for each reference that was up (the
    /// closest to the step is enough).
    pub closest_reference_offset_ns: Option<i64>,
    /// REALTIME − MONOTONIC drift measured since the last step (negative: the clock fell behind).
    pub drift_since_last_step_ns: i64,
    /// How far backward steps since the last forward step set the clock back (≥ 0).
    pub stepped_back_ns: i64,
    /// MONOTONIC time since the clock was last set (the last step, or boot).
    pub free_run_ns: i64,
    /// The kernel clock state last read before the step, if readable.
    pub kernel: Option<KernelClock>,
}

/// Why a forward step is a correction and not lost time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Configured: `forward_steps = "clock_correction"`.
    Configured,
    /// A reference had counted this time already.
    CountedByReference,
    /// The step moved REALTIME onto a reference it had fallen behind.
    TowardReference,
    /// The step undid measured drift.
    UndoesDrift,
    /// The step is within the kernel's error bound for the clock.
    WithinClockError,
    /// What is left is shorter than `freeze.min`.
    TooShort,
    /// Longer than [`MAX_LOST_NS`]: a broken clock, not a freeze.
    Implausible,
}

impl Correction {
    pub fn as_str(self) -> &'static str {
        match self {
            Correction::Configured => "configured",
            Correction::CountedByReference => "counted_by_reference",
            Correction::TowardReference => "toward_reference",
            Correction::UndoesDrift => "undoes_drift",
            Correction::WithinClockError => "within_clock_error",
            Correction::TooShort => "too_short",
            Correction::Implausible => "implausible",
        }
    }
}

/// The verdict on one forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepVerdict {
    /// Time this machine did not run: `lost_ns` of it, known to within `uncertainty_ns`.
    /// `reconciled_ns` of the step matched a pause a reference had counted.
    LostTime {
        lost_ns: i64,
        uncertainty_ns: i64,
        reconciled_ns: i64,
    },
    /// A clock correction; `reconciled_ns` of it matched a counted pause.
    Correction { why: Correction, reconciled_ns: i64 },
}

/// Judges a forward step of `step_ns` (> 0) under `mode`, with `wall_step_ns` the step
/// threshold and `min_ns` the shortest freeze.
pub fn judge(
    step_ns: i64,
    evidence: &StepEvidence,
    mode: ForwardSteps,
    wall_step_ns: i64,
    min_ns: i64,
) -> StepVerdict {
    let reconciled_ns = evidence.unreconciled_pause_ns.clamp(0, step_ns);
    let correction = |why| StepVerdict::Correction { why, reconciled_ns };
    if mode == ForwardSteps::ClockCorrection {
        return correction(Correction::Configured);
    }
    let residual = step_ns - reconciled_ns;
    if residual < wall_step_ns && reconciled_ns > 0 {
        return correction(Correction::CountedByReference);
    }
    let tolerance = (wall_step_ns / 2).max(residual / 10);
    let drift_owed = (-evidence.drift_since_last_step_ns).max(0) + evidence.stepped_back_ns.max(0);
    let error_bound = clock_error_bound_ns(evidence);
    if mode == ForwardSteps::Auto {
        if let Some(offset) = evidence.closest_reference_offset_ns {
            if offset > 0 && (offset - residual).abs() <= tolerance {
                return correction(Correction::TowardReference);
            }
        }
        if drift_owed > 0 && residual <= drift_owed + tolerance {
            return correction(Correction::UndoesDrift);
        }
        if residual <= error_bound {
            return correction(Correction::WithinClockError);
        }
    }
    let lost_ns = residual - drift_owed;
    if lost_ns < min_ns {
        return correction(Correction::TooShort);
    }
    if lost_ns > MAX_LOST_NS {
        return correction(Correction::Implausible);
    }
    StepVerdict::LostTime {
        lost_ns,
        // The step also carries the clock's error from before the pause: at most the
        // error bound, and never known better than the step threshold.
        uncertainty_ns: error_bound.max(wall_step_ns),
        reconciled_ns,
    }
}

/// How far the wall clock may have been off before the step, by the kernel's account.
pub fn clock_error_bound_ns(evidence: &StepEvidence) -> i64 {
    let free_run = evidence.free_run_ns.max(0) / 1_000_000 * FREE_RUN_PPM;
    match evidence.kernel {
        Some(k) if k.synced => k.max_error_ns,
        _ => free_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const MS: i64 = 1_000_000;

    fn unsynced() -> Option<KernelClock> {
        Some(KernelClock {
            synced: false,
            max_error_ns: 16 * S,
            est_error_ns: 16 * S,
        })
    }

    fn evidence() -> StepEvidence {
        StepEvidence {
            free_run_ns: 3600 * S, // up an hour: 0.36 s of free-running wander allowed
            kernel: unsynced(),
            ..Default::default()
        }
    }

    fn auto(step: i64, e: &StepEvidence) -> StepVerdict {
        judge(step, e, ForwardSteps::Auto, S, 2 * S)
    }

    #[test]
    fn a_resync_after_a_pause_no_reference_saw_is_lost_time() {
        match auto(13 * S, &evidence()) {
            StepVerdict::LostTime { lost_ns, .. } => assert_eq!(lost_ns, 13 * S),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_founding_incident_s_step_is_lost_time_even_on_a_synced_clock() {
        let e = StepEvidence {
            kernel: Some(KernelClock {
                synced: true,
                max_error_ns: 50 * MS,
                est_error_ns: MS,
            }),
            ..evidence()
        };
        assert!(matches!(
            auto(6432 * S, &e),
            StepVerdict::LostTime { lost_ns, .. } if lost_ns == 6432 * S
        ));
    }

    #[test]
    fn a_step_a_reference_already_counted_is_a_correction() {
        let e = StepEvidence {
            unreconciled_pause_ns: 3600 * S,
            ..evidence()
        };
        assert_eq!(
            auto(3600 * S + 300 * MS, &e),
            StepVerdict::Correction {
                why: Correction::CountedByReference,
                reconciled_ns: 3600 * S
            }
        );
    }

    #[test]
    fn more_than_the_reference_counted_leaves_the_rest_as_lost_time() {
        let e = StepEvidence {
            unreconciled_pause_ns: 10 * S,
            ..evidence()
        };
        assert!(matches!(
            judge(40 * S, &e, ForwardSteps::LostTime, S, 2 * S),
            StepVerdict::LostTime { lost_ns, reconciled_ns, .. }
                if lost_ns == 30 * S && reconciled_ns == 10 * S
        ));
    }

    #[test]
    fn a_step_onto_a_reference_is_a_correction() {
        let e = StepEvidence {
            closest_reference_offset_ns: Some(30 * S),
            ..evidence()
        };
        assert!(matches!(
            auto(30 * S + 200 * MS, &e),
            StepVerdict::Correction {
                why: Correction::TowardReference,
                ..
            }
        ));
        // A reference that agreed with the clock says the step is lost time.
        let agreed = StepEvidence {
            closest_reference_offset_ns: Some(10 * MS),
            ..evidence()
        };
        assert!(matches!(
            auto(30 * S, &agreed),
            StepVerdict::LostTime { .. }
        ));
    }

    #[test]
    fn undoing_measured_drift_is_a_correction() {
        let e = StepEvidence {
            drift_since_last_step_ns: -S,
            ..evidence()
        };
        assert!(matches!(
            auto(S, &e),
            StepVerdict::Correction {
                why: Correction::UndoesDrift,
                ..
            }
        ));
    }

    #[test]
    fn undoing_a_backward_step_is_a_correction() {
        // A clock set back 10 s, then forward again: a flapping time source, not lost time.
        let e = StepEvidence {
            stepped_back_ns: 10 * S,
            ..evidence()
        };
        assert!(matches!(
            auto(10 * S, &e),
            StepVerdict::Correction {
                why: Correction::UndoesDrift,
                ..
            }
        ));
        assert!(matches!(
            auto(40 * S, &e),
            StepVerdict::LostTime { lost_ns, .. } if lost_ns == 30 * S
        ));
    }

    #[test]
    fn a_step_within_the_kernel_s_error_bound_is_a_correction() {
        let synced = StepEvidence {
            kernel: Some(KernelClock {
                synced: true,
                max_error_ns: 5 * S,
                est_error_ns: S,
            }),
            ..evidence()
        };
        assert!(matches!(
            auto(4 * S, &synced),
            StepVerdict::Correction {
                why: Correction::WithinClockError,
                ..
            }
        ));
        // Unsynchronised for 30 days: 100 ppm allows 259 s of wander.
        let free = StepEvidence {
            free_run_ns: 30 * 86_400 * S,
            ..evidence()
        };
        assert!(matches!(
            auto(200 * S, &free),
            StepVerdict::Correction {
                why: Correction::WithinClockError,
                ..
            }
        ));
        assert!(matches!(auto(400 * S, &free), StepVerdict::LostTime { .. }));
    }

    #[test]
    fn an_unsynchronised_max_error_of_16_s_is_not_an_error_bound() {
        // This machine and the QEMU guest: unsynced, maxerror 16 s, up for a minute.
        let e = StepEvidence {
            free_run_ns: 60 * S,
            ..evidence()
        };
        assert!(matches!(auto(13 * S, &e), StepVerdict::LostTime { .. }));
    }

    #[test]
    fn a_short_remainder_is_not_a_freeze() {
        assert!(matches!(
            judge(1500 * MS, &evidence(), ForwardSteps::LostTime, S, 2 * S),
            StepVerdict::Correction {
                why: Correction::TooShort,
                ..
            }
        ));
    }

    #[test]
    fn a_jump_of_centuries_is_a_broken_clock_not_a_freeze() {
        assert!(matches!(
            judge(
                286 * 365 * 86_400 * S,
                &evidence(),
                ForwardSteps::LostTime,
                S,
                2 * S
            ),
            StepVerdict::Correction {
                why: Correction::Implausible,
                ..
            }
        ));
    }

    #[test]
    fn clock_correction_mode_never_calls_a_step_lost_time() {
        assert!(matches!(
            judge(
                6432 * S,
                &evidence(),
                ForwardSteps::ClockCorrection,
                S,
                2 * S
            ),
            StepVerdict::Correction {
                why: Correction::Configured,
                ..
            }
        ));
    }

    #[test]
    fn lost_time_mode_ignores_the_clock_error_bound() {
        let free = StepEvidence {
            free_run_ns: 30 * 86_400 * S,
            ..evidence()
        };
        assert!(matches!(
            judge(200 * S, &free, ForwardSteps::LostTime, S, 2 * S),
            StepVerdict::LostTime { .. }
        ));
    }
}
