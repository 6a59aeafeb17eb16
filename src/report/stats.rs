//! The statistics the operator tools print. Pure: values in, values out.
//!
//! - Quantiles are **nearest-rank** (the smallest value with at least `q` of the values at
//!   or below it): always a value that was observed, never an interpolation, so "p99 of
//!   gaps" names a real gap.
//! - Freezes are treated as a **Poisson process**: [`poisson_cdf`] is `P(X ≤ k)` for a
//!   mean `μ`, summed in log space so a large `μ` (thousands of expected freezes) neither
//!   underflows nor loses the tail.

/// Index (0-based, into the sorted values) of the nearest-rank `q` quantile of `n` values.
pub fn rank_index(n: usize, q: f64) -> Option<usize> {
    if n == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = (q * n as f64).ceil() as usize;
    Some(rank.clamp(1, n) - 1)
}

/// The nearest-rank `q` quantile of values sorted ascending.
pub fn quantile_sorted(sorted: &[i64], q: f64) -> Option<i64> {
    rank_index(sorted.len(), q).map(|i| sorted[i])
}

/// `P(X ≤ k)` for `X ~ Poisson(mu)`. `mu ≤ 0` gives 1.
pub fn poisson_cdf(k: u64, mu: f64) -> f64 {
    if mu <= 0.0 || !mu.is_finite() {
        return 1.0;
    }
    // ln P(X = i) = -mu + i ln mu - ln i!, by recurrence; then a log-sum-exp.
    let ln_mu = mu.ln();
    let mut term = -mu;
    let mut max = term;
    let mut terms = Vec::with_capacity(k as usize + 1);
    terms.push(term);
    for i in 1..=k {
        term += ln_mu - (i as f64).ln();
        max = max.max(term);
        terms.push(term);
    }
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (max + sum.ln()).exp().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile_sorted(&v, 0.5), Some(50));
        assert_eq!(quantile_sorted(&v, 0.99), Some(99));
        assert_eq!(quantile_sorted(&v, 1.0), Some(100));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1));
        assert_eq!(quantile_sorted(&[7], 0.99), Some(7));
        assert_eq!(quantile_sorted(&[1, 2, 3], 0.5), Some(2));
        assert_eq!(quantile_sorted(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(rank_index(10, 1.5), None);
    }

    #[test]
    fn poisson_cdf_matches_closed_forms() {
        // P(0 | mu) = e^-mu: the rule behind "no freezes after" (ln 20 → exactly 0.05).
        assert!((poisson_cdf(0, 3.0) - (-3.0f64).exp()).abs() < 1e-15);
        assert!((poisson_cdf(0, 20f64.ln()) - 0.05).abs() < 1e-15);
        // P(X ≤ 2 | 4) = e^-4 (1 + 4 + 8) = 13 e^-4.
        assert!((poisson_cdf(2, 4.0) - 13.0 * (-4.0f64).exp()).abs() < 1e-14);
        assert_eq!(poisson_cdf(5, 0.0), 1.0);
        // Large means: no underflow to 0 or NaN; the median of Poisson(1000) is 1000.
        let p = poisson_cdf(1000, 1000.0);
        assert!(p > 0.5 && p < 0.52, "{p}");
        assert!(poisson_cdf(0, 1000.0) < 1e-300);
        assert!((poisson_cdf(5000, 10.0) - 1.0).abs() < 1e-12);
    }
}
