//! The median of per-round paired differences with a distribution-free confidence interval.
//!
//! Each round loads every variant once, so a variant's CPU per request minus the baseline's in the same round
//! cancels what that round's machine state added to both. The interval for the median of those differences comes
//! from order statistics: with `n` rounds, the `l`-th smallest and the `l`-th largest difference bracket the true
//! median with probability `1 - 2 P(B <= l - 1)`, B ~ Binomial(n, 1/2), whatever the noise's distribution.

/// The confidence the report asks for; the interval used is the narrowest whose coverage is at least this.
pub const LEVEL: f64 = 0.95;

/// A median with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianCi {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl MedianCi {
    pub fn of(values: &[f64]) -> MedianCi {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let at = |i: usize| sorted.get(i).copied().unwrap_or(0.0);
        let median = if n % 2 == 1 { at(n / 2) } else { (at((n / 2).saturating_sub(1)) + at(n / 2)) / 2.0 };
        let (l, _) = interval_rank(n);
        MedianCi { median, low: at(l.saturating_sub(1)), high: at(n.saturating_sub(l)) }
    }

    /// `12.3 [11.0, 14.1]`.
    pub fn show(&self, decimals: usize) -> String {
        format!("{:.d$} [{:.d$}, {:.d$}]", self.median, self.low, self.high, d = decimals)
    }
}

/// For `n` rounds: the rank `l` (1-based, from each end) of the interval's bounds, and its coverage. The largest
/// `l` whose coverage is at least [`LEVEL`]; with too few rounds for that, the whole range (`l` = 1).
pub fn interval_rank(n: usize) -> (usize, f64) {
    let coverage = |l: usize| 1.0 - 2.0 * binomial_half_cdf(n, l.saturating_sub(1));
    let mut l = 1;
    while l < n / 2 && coverage(l + 1) >= LEVEL {
        l += 1;
    }
    (l, coverage(l))
}

/// P(B <= k) for B ~ Binomial(n, 1/2).
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX)); // C(n, 0) / 2^n
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        sum += term;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    sum
}

/// What a target's interval says: met only if the whole interval meets it, missed only if none of it does.
pub fn verdict(ci: &MedianCi) -> &'static str {
    if ci.high <= 0.0 {
        "met"
    } else if ci.low > 0.0 {
        "**missed**"
    } else {
        "undecided"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_coverage_follow_the_binomial_table() {
        // n = 10: the 2nd smallest and 2nd largest, 97.9 %; n = 20: the 6th, 95.9 %; n = 25: the 8th, 95.7 %.
        let (l, c) = interval_rank(10);
        assert_eq!(l, 2);
        assert!((c - 0.9785).abs() < 1e-3);
        assert_eq!(interval_rank(20).0, 6);
        assert!((interval_rank(20).1 - 0.9586).abs() < 1e-3);
        assert_eq!(interval_rank(25).0, 8);
        // Too few rounds for 95 %: the whole range.
        assert_eq!(interval_rank(4).0, 1);
    }

    #[test]
    fn interval_brackets_the_median() {
        let values: Vec<f64> = (1..=10).map(f64::from).rev().collect();
        let ci = MedianCi::of(&values);
        assert_eq!((ci.median, ci.low, ci.high), (5.5, 2.0, 9.0));
        assert_eq!(verdict(&MedianCi { median: -1.0, low: -2.0, high: 0.5 }), "undecided");
        assert_eq!(verdict(&MedianCi { median: -1.0, low: -2.0, high: -0.5 }), "met");
        assert_eq!(verdict(&MedianCi { median: 1.0, low: 0.5, high: 2.0 }), "**missed**");
    }
}
