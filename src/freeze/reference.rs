//! Tracks one reference clock against MONOTONIC and finds the time this machine never saw.
//!
//! Pure: samples in, jumps out. A sample says "the reference minus MONOTONIC lies in
//! [lo, hi]" (the width is the reference's resolution plus the read's round trip).
//! Consecutive samples are intersected, so a 1 s-resolution RTC read every tick pins the
//! offset down to about one tick. When a sample no longer overlaps (allowing for
//! drift), the offset moved: if forward by at least the freeze threshold, MONOTONIC
//! missed that time — a VM pause. The estimate is refined while later samples narrow
//! the new interval.

/// Largest rate difference between a reference and MONOTONIC treated as drift rather
/// than a jump: NTP never slews faster than 500 ppm.
pub const MAX_DRIFT_PPM: i64 = 500;
/// How long after a jump later samples may still refine its estimate.
pub const REFINE_WINDOW_NS: i64 = 3_000_000_000;

/// One read of a reference: `reference − MONOTONIC` lies in `[lo_ns, hi_ns]`, read at `mono_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefSample {
    pub mono_ns: i64,
    pub lo_ns: i64,
    pub hi_ns: i64,
}

impl RefSample {
    /// A reference read taking place between MONOTONIC `m0` and `m1`, which showed
    /// `value_ns` with resolution `resolution_ns` (the true value is in
    /// `[value, value + resolution)`).
    pub fn from_read(m0_ns: i64, m1_ns: i64, value_ns: i64, resolution_ns: i64) -> RefSample {
        RefSample {
            mono_ns: m0_ns + (m1_ns - m0_ns) / 2,
            lo_ns: value_ns - m1_ns,
            hi_ns: value_ns + resolution_ns - m0_ns,
        }
    }

    fn mid(&self) -> i64 {
        self.lo_ns + (self.hi_ns - self.lo_ns) / 2
    }
}

/// What a sample told the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefOutcome {
    /// Consistent with what came before.
    Steady,
    /// The reference moved forward by `estimate_ns` that MONOTONIC did not see,
    /// between MONOTONIC `from_mono_ns` and `to_mono_ns`.
    Jump {
        estimate_ns: i64,
        from_mono_ns: i64,
        to_mono_ns: i64,
    },
    /// A later sample sharpened the estimate of the last jump.
    Refined { estimate_ns: i64 },
    /// The offset moved by less than the threshold or backwards (the reference itself was
    /// stepped): tracking starts again from this sample.
    Resync { moved_ns: i64 },
}

/// Tracks the offset interval of one reference.
#[derive(Debug, Clone)]
pub struct RefTracker {
    min_jump_ns: i64,
    current: Option<RefSample>,
    /// The interval before the last jump, kept while refining.
    before_jump: Option<(RefSample, i64)>,
}

impl RefTracker {
    pub fn new(min_jump_ns: i64) -> RefTracker {
        RefTracker {
            min_jump_ns,
            current: None,
            before_jump: None,
        }
    }

    /// The best current estimate of `reference − MONOTONIC` (midpoint of the interval).
    pub fn offset_ns(&self) -> Option<i64> {
        self.current.map(|c| c.mid())
    }

    /// Feeds one sample.
    pub fn observe(&mut self, sample: RefSample) -> RefOutcome {
        let Some(cur) = self.current else {
            self.current = Some(sample);
            return RefOutcome::Steady;
        };
        let elapsed = (sample.mono_ns - cur.mono_ns).max(0);
        let drift = elapsed / 1_000_000 * MAX_DRIFT_PPM + 1_000;
        let lo = cur.lo_ns - drift;
        let hi = cur.hi_ns + drift;
        if sample.lo_ns <= hi && sample.hi_ns >= lo {
            let merged = RefSample {
                mono_ns: sample.mono_ns,
                lo_ns: sample.lo_ns.max(lo),
                hi_ns: sample.hi_ns.min(hi),
            };
            self.current = Some(merged);
            return self.refine(merged);
        }
        // Disjoint: the offset moved. Estimate from the midpoints.
        let moved = sample.mid() - cur.mid();
        self.current = Some(sample);
        if moved >= self.min_jump_ns {
            self.before_jump = Some((cur, sample.mono_ns));
            RefOutcome::Jump {
                estimate_ns: moved,
                from_mono_ns: cur.mono_ns,
                to_mono_ns: sample.mono_ns,
            }
        } else {
            self.before_jump = None;
            RefOutcome::Resync { moved_ns: moved }
        }
    }

    fn refine(&mut self, now: RefSample) -> RefOutcome {
        match self.before_jump {
            Some((before, jumped_at)) if now.mono_ns - jumped_at <= REFINE_WINDOW_NS => {
                RefOutcome::Refined {
                    estimate_ns: now.mid() - before.mid(),
                }
            }
            Some(_) => {
                self.before_jump = None;
                RefOutcome::Steady
            }
            None => RefOutcome::Steady,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const MS: i64 = 1_000_000;

    /// An RTC with 1 s resolution whose true offset from MONOTONIC is `offset`.
    fn rtc(mono: i64, offset: i64) -> RefSample {
        let truth = mono + offset;
        let shown = truth - truth.rem_euclid(S);
        RefSample::from_read(mono, mono + 20_000, shown, S)
    }

    #[test]
    fn steady_rtc_narrows_to_about_a_tick() {
        let mut t = RefTracker::new(2 * S);
        let offset = 1_700_000_000 * S + 123 * MS;
        for i in 0..40 {
            assert_eq!(t.observe(rtc(i * 250 * MS, offset)), RefOutcome::Steady);
        }
        let err = (t.offset_ns().unwrap() - offset).abs();
        assert!(err < 300 * MS, "offset error {err}");
    }

    #[test]
    fn a_ten_second_pause_is_a_jump_refined_to_a_quarter_second() {
        let mut t = RefTracker::new(2 * S);
        let offset = 1_700_000_000 * S + 700 * MS;
        let mut mono = 0;
        for _ in 0..40 {
            t.observe(rtc(mono, offset));
            mono += 250 * MS;
        }
        // MONOTONIC stood still for 10 s while the RTC kept going.
        let paused = offset + 10 * S;
        let first = t.observe(rtc(mono, paused));
        let RefOutcome::Jump { estimate_ns, .. } = first else {
            panic!("{first:?}")
        };
        assert!((estimate_ns - 10 * S).abs() <= 1_100 * MS, "{estimate_ns}");
        let mut best = estimate_ns;
        for _ in 0..8 {
            mono += 250 * MS;
            if let RefOutcome::Refined { estimate_ns } = t.observe(rtc(mono, paused)) {
                best = estimate_ns;
            }
        }
        assert!((best - 10 * S).abs() <= 300 * MS, "refined {best}");
    }

    #[test]
    fn drift_within_500_ppm_is_not_a_jump() {
        let mut t = RefTracker::new(2 * S);
        // 400 ppm fast for an hour of 1 s samples.
        for i in 0..3600 {
            let mono = i * S;
            let outcome = t.observe(rtc(mono, 5 * S + mono / 1_000_000 * 400));
            assert!(matches!(outcome, RefOutcome::Steady), "at {i}: {outcome:?}");
        }
    }

    #[test]
    fn backward_step_of_the_reference_resyncs() {
        let mut t = RefTracker::new(2 * S);
        t.observe(rtc(0, 100 * S));
        let out = t.observe(rtc(S, 90 * S));
        assert!(
            matches!(out, RefOutcome::Resync { moved_ns } if moved_ns < 0),
            "{out:?}"
        );
    }

    #[test]
    fn small_forward_move_resyncs_without_a_jump() {
        let mut t = RefTracker::new(2 * S);
        let p = RefSample {
            mono_ns: 0,
            lo_ns: 0,
            hi_ns: 10 * MS,
        };
        t.observe(p);
        let out = t.observe(RefSample {
            mono_ns: S,
            lo_ns: S,
            hi_ns: S + 10 * MS,
        });
        assert_eq!(out, RefOutcome::Resync { moved_ns: S });
    }
}
