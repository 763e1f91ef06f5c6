//! Mean ± standard deviation, as a mergeable running summary.

use serde::{Deserialize, Serialize};

/// Count, mean and sum of squared deviations of a stream of values
/// (Welford's update; shards combine with Chan et al.'s formula, equal to
/// one pass up to f64 rounding).
///
/// [`std`](Summary::std) is the sample standard deviation (divides by
/// `n - 1`, numpy's `ddof=1`). Non-finite values are kept: one `+inf` PSNR
/// (identical images) makes the mean `+inf`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Summary {
    /// Empty summary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Summary of `values`.
    pub fn of(values: &[f64]) -> Self {
        let mut s = Self::new();
        values.iter().for_each(|&v| s.add(v));
        s
    }

    /// Adds one value.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        if !(x.is_finite() && self.mean.is_finite()) {
            // Welford's delta of two equal infinities is inf - inf = NaN;
            // the mean of values with one infinity is that infinity.
            self.mean += x;
            self.m2 = f64::NAN;
            return;
        }
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds the values summarised by `other`.
    pub fn merge(&mut self, other: &Summary) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        if !(self.mean.is_finite() && other.mean.is_finite()) {
            self.mean += other.mean;
            self.m2 = f64::NAN;
            self.n += other.n;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.n += other.n;
    }

    /// Number of values.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.mean
        }
    }

    /// Sample standard deviation, `n - 1` in the denominator (NaN for fewer
    /// than two values, or with an infinite value).
    pub fn std(&self) -> f64 {
        if self.n < 2 || self.m2.is_nan() {
            f64::NAN
        } else {
            (self.m2 / (self.n - 1) as f64).max(0.0).sqrt()
        }
    }
}

/// `(mean, sample std)` of `values` (std divides by `n - 1`).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let s = Summary::of(values);
    (s.mean(), s.std())
}

/// `"mean ± std"` with `digits` decimals (`"mean"` alone for one value).
pub fn format_mean_std(values: &[f64], digits: usize) -> String {
    let s = Summary::of(values);
    if s.n() < 2 {
        format!("{:.digits$}", s.mean())
    } else {
        format!("{:.digits$} ± {:.digits$}", s.mean(), s.std())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_values_make_an_infinite_mean_not_nan() {
        // Two identical image pairs (PSNR +inf) and one finite PSNR.
        let s = Summary::of(&[f64::INFINITY, 30.0, f64::INFINITY]);
        assert_eq!(s.mean(), f64::INFINITY);
        assert!(s.std().is_nan());
        let mut a = Summary::of(&[f64::INFINITY]);
        a.merge(&Summary::of(&[f64::INFINITY, 20.0]));
        assert_eq!((a.n(), a.mean()), (3, f64::INFINITY));
        // Opposite infinities have no mean.
        assert!(Summary::of(&[f64::INFINITY, f64::NEG_INFINITY])
            .mean()
            .is_nan());
        // Finite values keep Welford's update exactly.
        assert_eq!(Summary::of(&[1.0, 2.0, 4.0]).mean(), 7.0 / 3.0);
    }

    #[test]
    fn matches_two_pass_formula_and_merges() {
        let v: Vec<f64> = (0..37)
            .map(|i| ((i * 7919) % 101) as f64 * 0.37 - 5.0)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        let (m, s) = mean_std(&v);
        assert!((m - mean).abs() < 1e-12);
        assert!((s - var.sqrt()).abs() < 1e-12);

        let mut a = Summary::of(&v[..10]);
        a.merge(&Summary::of(&v[10..]));
        assert_eq!(a.n(), 37);
        assert!((a.mean() - mean).abs() < 1e-12);
        assert!((a.std() - var.sqrt()).abs() < 1e-12);
        let mut empty = Summary::new();
        empty.merge(&a);
        assert_eq!(empty, a);
    }

    #[test]
    fn degenerate_cases() {
        assert!(Summary::new().mean().is_nan());
        assert!(Summary::of(&[3.0]).std().is_nan());
        assert_eq!(format_mean_std(&[1.0, 3.0], 2), "2.00 ± 1.41");
        assert_eq!(format_mean_std(&[1.0], 1), "1.0");
    }
}
