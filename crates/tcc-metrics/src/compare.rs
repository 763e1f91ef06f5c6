//! Per-sample error of an approximate result against the full computation.

use serde::{Deserialize, Serialize};

use crate::error::{check_len, MetricsError, Result};
use crate::summary::Summary;

/// Value range of images, for PSNR's peak signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRange {
    /// Pixels in `[0, 1]` (peak-to-peak 1).
    Unit,
    /// Pixels in `[-1, 1]`, the diffusion models' output range (peak-to-peak 2).
    Signed,
}

impl DataRange {
    /// Peak-to-peak width of the range.
    pub fn width(self) -> f64 {
        match self {
            DataRange::Unit => 1.0,
            DataRange::Signed => 2.0,
        }
    }
}

/// Dot product and squared norms, in f64.
pub(crate) struct Moments {
    pub ab: f64,
    pub aa: f64,
    pub bb: f64,
    pub diff: f64,
}

pub(crate) fn moments<T: Copy + Into<f64>>(
    what: &'static str,
    a: &[T],
    b: &[T],
) -> Result<Moments> {
    check_len(what, b.len(), a.len())?;
    if a.is_empty() {
        return Err(MetricsError::Invalid(format!("{what}: empty input")));
    }
    let mut m = Moments {
        ab: 0.0,
        aa: 0.0,
        bb: 0.0,
        diff: 0.0,
    };
    for (&x, &y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = (x.into(), y.into());
        m.ab += x * y;
        m.aa += x * x;
        m.bb += y * y;
        m.diff += (x - y) * (x - y);
    }
    if !(m.ab.is_finite() && m.aa.is_finite() && m.bb.is_finite() && m.diff.is_finite()) {
        return Err(MetricsError::NonFinite { what });
    }
    Ok(m)
}

impl Moments {
    pub(crate) fn rel_l2(&self, what: &'static str) -> Result<f64> {
        if self.bb == 0.0 {
            return Err(MetricsError::Invalid(format!(
                "{what}: reference has zero norm, relative error undefined"
            )));
        }
        Ok((self.diff / self.bb).sqrt())
    }

    pub(crate) fn cosine(&self, what: &'static str) -> Result<f64> {
        if self.aa == 0.0 || self.bb == 0.0 {
            return Err(MetricsError::Invalid(format!(
                "{what}: zero vector, cosine undefined"
            )));
        }
        Ok(self.ab / (self.aa.sqrt() * self.bb.sqrt()))
    }
}

/// Relative L2 error `||a - b|| / ||b||` of `a` against the reference `b`.
pub fn rel_l2<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> Result<f64> {
    moments("relative L2", a, b)?.rel_l2("relative L2")
}

/// Cosine similarity `<a, b> / (||a|| ||b||)`.
pub fn cosine<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> Result<f64> {
    moments("cosine similarity", a, b)?.cosine("cosine similarity")
}

/// PSNR in dB, `10 log10(width^2 / mse)`, where `width` is the range's
/// peak-to-peak width (1 for `[0, 1]` images, 2 for `[-1, 1]`). The images
/// are not clamped. Identical images give `+inf`.
pub fn psnr<T: Copy + Into<f64>>(a: &[T], b: &[T], range: DataRange) -> Result<f64> {
    let m = moments("PSNR", a, b)?;
    let mse = m.diff / a.len() as f64;
    Ok(10.0 * (range.width() * range.width() / mse).log10())
}

/// Per-sample relative L2 and PSNR against the full computation, summarised
/// (mean, std, n); mergeable across shards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// Range used for PSNR.
    pub range: DataRange,
    /// Per-sample `||a - b|| / ||b||`.
    pub rel_l2: Summary,
    /// Per-sample PSNR in dB.
    pub psnr: Summary,
}

impl ErrorStats {
    /// Empty statistics; PSNR uses `range`.
    pub fn new(range: DataRange) -> Self {
        Self {
            range,
            rel_l2: Summary::new(),
            psnr: Summary::new(),
        }
    }

    /// Adds one sample `a` against its full-computation counterpart `b`.
    pub fn add<T: Copy + Into<f64>>(&mut self, a: &[T], b: &[T]) -> Result<()> {
        let m = moments("sample error", a, b)?;
        let rel = m.rel_l2("sample error")?;
        let mse = m.diff / a.len() as f64;
        let w = self.range.width();
        self.rel_l2.add(rel);
        self.psnr.add(10.0 * (w * w / mse).log10());
        Ok(())
    }

    /// Adds `n_samples` samples stored back to back in `a` and `b`.
    pub fn add_batch<T: Copy + Into<f64>>(
        &mut self,
        a: &[T],
        b: &[T],
        n_samples: usize,
    ) -> Result<()> {
        let len = sample_len("sample error batch", a.len(), b.len(), n_samples)?;
        for (x, y) in a.chunks_exact(len).zip(b.chunks_exact(len)) {
            self.add(x, y)?;
        }
        Ok(())
    }

    /// Adds the samples summarised by `other` (same range).
    pub fn merge(&mut self, other: &ErrorStats) -> Result<()> {
        if self.range != other.range {
            return Err(MetricsError::Invalid(format!(
                "sample error merge: data ranges differ ({:?} vs {:?})",
                self.range, other.range
            )));
        }
        self.rel_l2.merge(&other.rel_l2);
        self.psnr.merge(&other.psnr);
        Ok(())
    }
}

/// Length of one sample when `a` and `b` hold `n_samples` samples each.
pub(crate) fn sample_len(
    what: &'static str,
    a_len: usize,
    b_len: usize,
    n_samples: usize,
) -> Result<usize> {
    check_len(what, b_len, a_len)?;
    if n_samples == 0 || !a_len.is_multiple_of(n_samples) || a_len == 0 {
        return Err(MetricsError::Invalid(format!(
            "{what}: {a_len} values do not split into {n_samples} non-empty samples"
        )));
    }
    Ok(a_len / n_samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_degenerate() {
        let a = [0.5f32, -0.25, 1.0];
        assert_eq!(rel_l2(&a, &a).unwrap(), 0.0);
        assert_eq!(psnr(&a, &a, DataRange::Signed).unwrap(), f64::INFINITY);
        assert!(rel_l2(&a, &[0.0f32; 3]).is_err());
        assert!(cosine(&[0.0f32; 3], &a).is_err());
        assert!(rel_l2(&a, &a[..2]).is_err());
        assert!(psnr::<f32>(&[], &[], DataRange::Unit).is_err());
        assert!(rel_l2(&[f32::NAN, 0.0, 0.0], &a).is_err());
    }

    #[test]
    fn psnr_range_convention() {
        // Error 0.1 everywhere: mse 0.01; PSNR = 20 dB in [0,1], 26.02 dB in [-1,1].
        let a = [0.1f64; 4];
        let b = [0.0f64; 4];
        let unit = psnr(&a, &b, DataRange::Unit).unwrap();
        let signed = psnr(&a, &b, DataRange::Signed).unwrap();
        assert!((unit - 20.0).abs() < 1e-9);
        assert!((signed - (20.0 + 20.0 * 2f64.log10())).abs() < 1e-9);
    }
}
