//! Paired Wilcoxon signed-rank test, two-sided.

use serde::{Deserialize, Serialize};

use crate::error::{check_len, MetricsError, Result};

/// Largest number of non-zero differences for which the exact null
/// distribution is used (when there are also no ties and no zeros). The
/// same threshold as `scipy.stats.wilcoxon(method="auto")`.
pub const EXACT_MAX_N: usize = 50;

/// How the p-value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WilcoxonMethod {
    /// Exact null distribution of the signed-rank sum.
    Exact,
    /// Normal approximation with tie correction of the variance and a
    /// continuity correction of 0.5.
    Normal,
}

/// Result of [`wilcoxon_signed_rank`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wilcoxon {
    /// Number of non-zero differences (zeros are dropped, Wilcoxon's method).
    pub n: usize,
    /// Sum of the ranks of positive differences `x - y`.
    pub w_plus: f64,
    /// `min(W+, W-)`, what scipy reports as the two-sided statistic.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    pub method: WilcoxonMethod,
}

/// Two-sided paired Wilcoxon signed-rank test of `x` against `y`
/// (differences `x - y`; zero differences are dropped).
///
/// With at most [`EXACT_MAX_N`] differences, none zero and no ties among
/// their absolute values, the p-value is exact; otherwise it uses the normal
/// approximation with tie-corrected variance and continuity correction.
/// Matches `scipy.stats.wilcoxon(x, y)` with `method="exact"` or
/// `method="asymptotic", correction=True` respectively.
pub fn wilcoxon_signed_rank(x: &[f64], y: &[f64]) -> Result<Wilcoxon> {
    check_len("wilcoxon: paired samples", x.len(), y.len())?;
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).collect();
    if d.iter().any(|v| !v.is_finite()) {
        return Err(MetricsError::NonFinite {
            what: "wilcoxon: differences",
        });
    }
    let had_zeros = d.contains(&0.0);
    let mut nz: Vec<f64> = d.into_iter().filter(|&v| v != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return Err(MetricsError::Invalid(
            "wilcoxon: all paired differences are zero, the test is undefined".into(),
        ));
    }
    nz.sort_by(|a, b| a.abs().total_cmp(&b.abs()));

    // Average ranks of |d|, and the tie-group sizes.
    let mut w_plus = 0.0;
    let mut tie_term = 0.0;
    let mut has_ties = false;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && nz[j].abs() == nz[i].abs() {
            j += 1;
        }
        let rank = (i + 1 + j) as f64 / 2.0; // mean of ranks i+1 ..= j
        let t = (j - i) as f64;
        if j - i > 1 {
            has_ties = true;
            tie_term += t * t * t - t;
        }
        w_plus += rank * nz[i..j].iter().filter(|&&v| v > 0.0).count() as f64;
        i = j;
    }
    let nf = n as f64;
    let total = nf * (nf + 1.0) / 2.0;
    let statistic = w_plus.min(total - w_plus);

    let (p_value, method) = if n <= EXACT_MAX_N && !has_ties && !had_zeros {
        (exact_p(n, w_plus), WilcoxonMethod::Exact)
    } else {
        let mean = total / 2.0;
        let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie_term / 2.0) / 24.0).sqrt();
        let z = (w_plus - mean) / se;
        let z = z - z.signum() * 0.5 / se;
        // Two-sided: 2 * P(Z > |z|) = erfc(|z| / sqrt 2).
        let p = libm::erfc(z.abs() / std::f64::consts::SQRT_2);
        (p.min(1.0), WilcoxonMethod::Normal)
    };
    Ok(Wilcoxon {
        n,
        w_plus,
        statistic,
        p_value,
        method,
    })
}

/// Exact two-sided p-value of the signed-rank sum `w_plus` with `n` ranks
/// `1..=n`: `2 min(P(W <= w), P(W >= w))`, capped at 1. The null
/// distribution counts the subsets of `{1..n}` with each sum (2^n subsets
/// fit in u64 for n <= 63).
fn exact_p(n: usize, w_plus: f64) -> f64 {
    let max = n * (n + 1) / 2;
    let mut counts = vec![0u64; max + 1];
    counts[0] = 1;
    for r in 1..=n {
        for s in (r..=max).rev() {
            counts[s] += counts[s - r];
        }
    }
    let total = (1u64 << n) as f64;
    let w = w_plus.round() as usize;
    let cdf: u64 = counts[..=w].iter().sum();
    let sf: u64 = counts[w..].iter().sum();
    (2.0 * cdf.min(sf) as f64 / total).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_distribution_small_n() {
        // n = 3: subset sums of {1,2,3}: 0,1,2,3,3,4,5,6 -> P(W <= 0) = 1/8.
        assert_eq!(exact_p(3, 0.0), 0.25);
        assert_eq!(exact_p(3, 6.0), 0.25);
        assert_eq!(exact_p(3, 3.0), 1.0);
    }

    #[test]
    fn bad_input() {
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], &[1.0, 2.0]).is_err());
        assert!(wilcoxon_signed_rank(&[1.0], &[1.0, 2.0]).is_err());
        assert!(wilcoxon_signed_rank(&[f64::NAN], &[1.0]).is_err());
    }
}
