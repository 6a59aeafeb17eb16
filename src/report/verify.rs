//! `stallwatch verify`, the pure part: did the freezes stop after a change? Counts and
//! covered lengths of a before and an after window in, a verdict with its numbers out.
//!
//! **What counts.** Freezes of the lost-time kinds (`process_stall`, `vm_pause`,
//! `suspend`, `restart`, `reboot`) that *started* in the window; `wall_clock_step` is a
//! clock jump, not lost time, and is not counted. A planned stop (the sidecar shut down
//! cleanly and started again) writes no freeze event, so it is not counted either, and
//! the time it was stopped cannot be seen (see coverage).
//!
//! **Coverage.** Freezes are only seen while the sidecar runs: each window's covered
//! length is the union of the watch sessions inside it (`coverage.rs`), exact to a
//! heartbeat for sessions recorded, an upper bound for sessions estimated from a state DB
//! older than session records (its planned stops cannot be seen).
//!
//! **The rule** ([`decide`]). Freezes are a Poisson process. The before window gives the
//! rate `λ = k_before / t_before` (covered lengths). With `μ = λ · t_after`, the after
//! window's `k` freezes have the one-sided p-value `p = P(X ≤ k | μ)`: how likely so few
//! freezes would be if nothing had changed.
//! - `k = 0`: `p = e^(−μ)`. FIXED if `p ≤ 0.05`; else NOT ENOUGH DATA, and the after
//!   window must cover at least `ln(20) / λ` for a quiet after-window to prove it.
//! - `k > 0`: NOT FIXED if `p ≥ 0.05` (the after rate is not clearly lower). If `p < 0.05`
//!   the rate is clearly lower and the verdict is FIXED, with the freezes that remain
//!   listed as such: the same test, one threshold, whatever `k` is.
//! - No freeze before: nothing to compare with. NOT ENOUGH DATA if the after window is
//!   quiet too, NOT FIXED if it is not (`μ = 0`, so `p = 1`).
//! - A window with no coverage at all: NOT ENOUGH DATA.
//!
//! **Several kinds of evidence** ([`combine`]). `verify --source` adds the app's own
//! history (`app_history.rs`): its gaps, tested by the same [`decide`] over the history's
//! own coverage. Each kind gets its own test and p-value; the verdict is NOT FIXED if any
//! kind says NOT FIXED (the one with the largest p decides: the least doubt that the rate
//! did not fall), else FIXED if any says FIXED (the smallest p decides), else NOT ENOUGH
//! DATA. A fix must survive every kind of evidence that can see the freezes.

use serde::Serialize;

use super::stats::poisson_cdf;
use crate::time::DAY_NS;

/// Significance level of the one-sided test.
pub const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "FIXED")]
    Fixed,
    #[serde(rename = "NOT FIXED")]
    NotFixed,
    #[serde(rename = "NOT ENOUGH DATA")]
    NotEnoughData,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Fixed => "FIXED",
            Verdict::NotFixed => "NOT FIXED",
            Verdict::NotEnoughData => "NOT ENOUGH DATA",
        }
    }

    /// The process exit code: 0 FIXED, 1 NOT FIXED, 3 NOT ENOUGH DATA (2 is bad input).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Fixed => 0,
            Verdict::NotFixed => 1,
            Verdict::NotEnoughData => 3,
        }
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The before window has no covered time.
    BeforeNotCovered,
    /// The after window has no covered time.
    AfterNotCovered,
    /// No freeze before, none after.
    NoFreezesEither,
    /// No freeze before, some after.
    FreezesOnlyAfter,
    /// None after, and that is unlikely (p ≤ α) at the before rate.
    QuietLongEnough,
    /// None after, but the after window is too short to tell.
    QuietTooShort,
    /// Some after, at a rate clearly lower than before.
    RateClearlyLower,
    /// Some after, at a rate not clearly lower than before.
    RateNotClearlyLower,
}

/// Freezes counted in a window and the time covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub freezes: u64,
    pub covered_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// λ, freezes per day in the before window.
    pub before_per_day: Option<f64>,
    /// Freezes per day in the after window.
    pub after_per_day: Option<f64>,
    /// μ = λ · t_after: freezes expected after, had nothing changed.
    pub expected_after: Option<f64>,
    /// P(X ≤ k_after | μ).
    pub p_value: Option<f64>,
    /// Covered after-window length a quiet after-window needs (ln 20 / λ).
    pub needed_after_ns: Option<i64>,
}

fn per_day(freezes: u64, covered_ns: i64) -> Option<f64> {
    (covered_ns > 0).then(|| freezes as f64 * DAY_NS as f64 / covered_ns as f64)
}

/// The verdict for a before and an after sample; see the module doc for the rule.
pub fn decide(before: Sample, after: Sample) -> Decision {
    let mut d = Decision {
        verdict: Verdict::NotEnoughData,
        reason: Reason::BeforeNotCovered,
        before_per_day: per_day(before.freezes, before.covered_ns),
        after_per_day: per_day(after.freezes, after.covered_ns),
        expected_after: None,
        p_value: None,
        needed_after_ns: None,
    };
    if before.covered_ns <= 0 {
        return d;
    }
    if after.covered_ns <= 0 {
        d.reason = Reason::AfterNotCovered;
        if before.freezes > 0 {
            d.needed_after_ns = Some(needed_after_ns(before));
        }
        return d;
    }
    let mu = before.freezes as f64 * after.covered_ns as f64 / before.covered_ns as f64;
    let p = poisson_cdf(after.freezes, mu);
    d.expected_after = Some(mu);
    d.p_value = Some(p);
    (d.verdict, d.reason) = match (before.freezes, after.freezes) {
        (0, 0) => (Verdict::NotEnoughData, Reason::NoFreezesEither),
        (0, _) => (Verdict::NotFixed, Reason::FreezesOnlyAfter),
        (_, 0) if p <= ALPHA => (Verdict::Fixed, Reason::QuietLongEnough),
        (_, 0) => (Verdict::NotEnoughData, Reason::QuietTooShort),
        (_, _) if p >= ALPHA => (Verdict::NotFixed, Reason::RateNotClearlyLower),
        (_, _) => (Verdict::Fixed, Reason::RateClearlyLower),
    };
    if before.freezes > 0 && after.freezes == 0 {
        d.needed_after_ns = Some(needed_after_ns(before));
    }
    d
}

/// A kind of evidence a verdict can rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// Freezes the sidecar recorded, over its watch sessions.
    SidecarFreezes,
    /// Gaps in the app's own history, explained against a state DB: those a recorded
    /// freeze covers and those the sidecar did not watch; stalls it watched are not counted.
    AppGaps,
    /// Gaps in the app's own history with no state DB beside it: each may be a freeze or
    /// a stall of the app.
    UnexplainedAppGaps,
}

impl EvidenceKind {
    /// How the output names it.
    pub fn label(self) -> &'static str {
        match self {
            EvidenceKind::SidecarFreezes => "freezes the sidecar recorded",
            EvidenceKind::AppGaps => "gaps in the app's history not explained as stalls",
            EvidenceKind::UnexplainedAppGaps => "gaps the app did not explain",
        }
    }
}

/// The verdict over several kinds of evidence, and the kind that decided it (`None` when
/// no kind had enough data); see the module doc.
pub fn combine(judged: &[(EvidenceKind, Decision)]) -> (Verdict, Option<EvidenceKind>) {
    let p = |d: &Decision| d.p_value.unwrap_or(1.0);
    let of = |v: Verdict| judged.iter().filter(move |(_, d)| d.verdict == v);
    if let Some((k, _)) = of(Verdict::NotFixed).max_by(|a, b| p(&a.1).total_cmp(&p(&b.1))) {
        return (Verdict::NotFixed, Some(*k));
    }
    if let Some((k, _)) = of(Verdict::Fixed).min_by(|a, b| p(&a.1).total_cmp(&p(&b.1))) {
        return (Verdict::Fixed, Some(*k));
    }
    (Verdict::NotEnoughData, None)
}

/// `ln(20) / λ`: the covered after-window length at which zero freezes has p = 0.05.
fn needed_after_ns(before: Sample) -> i64 {
    (20f64.ln() * before.covered_ns as f64 / before.freezes as f64).ceil() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = DAY_NS;

    fn s(freezes: u64, days: i64) -> Sample {
        Sample {
            freezes,
            covered_ns: days * DAY,
        }
    }

    #[test]
    fn quiet_after_window_long_enough_is_fixed() {
        // λ = 10 per 10 days = 1/day; 3 quiet days: P(0 | 3) = e^-3 = 0.0498 ≤ 0.05.
        let d = decide(s(10, 10), s(0, 3));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Fixed, Reason::QuietLongEnough)
        );
        assert!((d.p_value.unwrap() - (-3.0f64).exp()).abs() < 1e-15);
        assert_eq!(d.expected_after, Some(3.0));
        assert_eq!(d.before_per_day, Some(1.0));
        assert_eq!(d.after_per_day, Some(0.0));
        // ln 20 days = 2.9957 d.
        assert_eq!(
            d.needed_after_ns,
            Some((20f64.ln() * DAY as f64).ceil() as i64)
        );
    }

    #[test]
    fn quiet_after_window_too_short_is_not_enough_data_and_says_how_long() {
        let d = decide(s(10, 10), s(0, 2));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::NotEnoughData, Reason::QuietTooShort)
        );
        assert!((d.p_value.unwrap() - (-2.0f64).exp()).abs() < 1e-15);
        let needed = d.needed_after_ns.unwrap();
        assert!(needed > 2 * DAY && needed < 3 * DAY, "{needed}");
        // Exactly at the boundary: e^-ln20 = 0.05 ≤ 0.05 is FIXED.
        let at = decide(
            s(1, 1),
            Sample {
                freezes: 0,
                covered_ns: needed_after_ns(s(1, 1)),
            },
        );
        assert_eq!(at.verdict, Verdict::Fixed);
    }

    #[test]
    fn freezes_after_at_the_old_rate_are_not_fixed() {
        // λ = 1/day, 10 days after: μ = 10, k = 6 → P(X ≤ 6 | 10) = 0.130 ≥ 0.05.
        let d = decide(s(10, 10), s(6, 10));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::NotFixed, Reason::RateNotClearlyLower)
        );
        assert!((d.p_value.unwrap() - 0.130_141_420_882_483).abs() < 1e-9);
        // More after than before: plainly not fixed.
        assert_eq!(decide(s(2, 10), s(5, 10)).verdict, Verdict::NotFixed);
    }

    #[test]
    fn freezes_after_at_a_clearly_lower_rate_are_fixed_with_freezes_left() {
        // μ = 10, k = 4 → P(X ≤ 4 | 10) = 0.0293 < 0.05.
        let d = decide(s(10, 10), s(4, 10));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Fixed, Reason::RateClearlyLower)
        );
        assert!((d.p_value.unwrap() - 0.029_252_688_076_961).abs() < 1e-9);
        assert_eq!(d.needed_after_ns, None);
    }

    #[test]
    fn nothing_before_cannot_prove_a_fix() {
        let d = decide(s(0, 30), s(0, 30));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::NotEnoughData, Reason::NoFreezesEither)
        );
        let d = decide(s(0, 30), s(1, 30));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::NotFixed, Reason::FreezesOnlyAfter)
        );
    }

    #[test]
    fn uncovered_windows_are_not_enough_data() {
        assert_eq!(decide(s(5, 0), s(0, 10)).reason, Reason::BeforeNotCovered);
        let d = decide(s(5, 10), s(0, 0));
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::NotEnoughData, Reason::AfterNotCovered)
        );
        assert!(d.needed_after_ns.is_some());
    }

    #[test]
    fn any_not_fixed_wins_else_the_strongest_fixed_decides() {
        use EvidenceKind::*;
        let fixed = decide(s(12, 30), s(0, 20));
        let weaker = decide(s(12, 30), s(0, 10));
        let not_fixed = decide(s(12, 30), s(2, 5));
        let unknown = decide(s(0, 0), s(0, 20));
        assert_eq!(
            (fixed.verdict, weaker.verdict, not_fixed.verdict),
            (Verdict::Fixed, Verdict::Fixed, Verdict::NotFixed)
        );
        assert_eq!(
            combine(&[(SidecarFreezes, fixed), (AppGaps, not_fixed)]),
            (Verdict::NotFixed, Some(AppGaps))
        );
        assert_eq!(
            combine(&[(SidecarFreezes, weaker), (AppGaps, fixed)]),
            (Verdict::Fixed, Some(AppGaps))
        );
        assert_eq!(
            combine(&[(SidecarFreezes, unknown), (UnexplainedAppGaps, fixed)]),
            (Verdict::Fixed, Some(UnexplainedAppGaps))
        );
        assert_eq!(
            combine(&[(SidecarFreezes, unknown)]),
            (Verdict::NotEnoughData, None)
        );
        assert_eq!(combine(&[]), (Verdict::NotEnoughData, None));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            [Verdict::Fixed, Verdict::NotFixed, Verdict::NotEnoughData].map(Verdict::exit_code),
            [0, 1, 3]
        );
    }
}
