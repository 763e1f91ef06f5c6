//! Run-time cache policies: the decision to compute or reuse is taken per
//! step while sampling, from the data, instead of being fixed in the plan.

use serde::{Deserialize, Serialize};

spelled_enum! {
    /// A data-dependent cache policy.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum DynamicPolicy {
        /// First-block cache (cache-dit's FBCache / DBCache with one front
        /// block, diffusers' `FirstBlockCache`): block 0 always runs; if the
        /// relative change of its residual since the last fully computed
        /// step is below the threshold, blocks 1.. add their residual delta
        /// cached at that step instead of running.
        FirstBlock = "first-block",
        /// TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to
        /// Cache for Video Diffusion Model"): before block 0, the relative
        /// change of block 0's modulated input since the previous step,
        /// rescaled by a polynomial, is accumulated over steps; while the
        /// sum stays below the threshold every block adds the residual
        /// delta (last block's output minus block 0's input) cached at the
        /// last computed step instead of running.
        TeaCache = "teacache",
    }
}

/// Where a policy looks at a step before it decides, which fixes the
/// blocks a reuse skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbePoint {
    /// After block 0 has run, at its residual: a reuse skips blocks 1...
    AfterFirstBlock,
    /// Before block 0, at its modulated input: a reuse skips every block.
    BeforeFirstBlock,
}

impl ProbePoint {
    /// The first block a reuse skips (it skips every block from there to
    /// the last).
    pub fn first_reused_block(self) -> usize {
        match self {
            ProbePoint::AfterFirstBlock => 1,
            ProbePoint::BeforeFirstBlock => 0,
        }
    }
}

impl DynamicPolicy {
    /// Where the policy probes each step.
    pub fn probe_point(self) -> ProbePoint {
        match self {
            DynamicPolicy::FirstBlock => ProbePoint::AfterFirstBlock,
            DynamicPolicy::TeaCache => ProbePoint::BeforeFirstBlock,
        }
    }
}

/// The most coefficients a rescaling polynomial may have (degree 7;
/// TeaCache's published fits have degree 4).
pub const MAX_RESCALE_COEFFS: usize = 8;

/// A polynomial in numpy's `polyval` order, `[c_n, ..., c_1, c_0]`, with
/// 1 to [`MAX_RESCALE_COEFFS`] finite coefficients. Kept inline (no
/// allocation) so that [`DynamicSpec`] stays `Copy`. Serialised as the list
/// of its coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Polynomial {
    coeffs: [f64; MAX_RESCALE_COEFFS],
    len: usize,
}

impl Polynomial {
    /// `None` unless there are 1 to [`MAX_RESCALE_COEFFS`] coefficients,
    /// all finite.
    pub fn new(coeffs: &[f64]) -> Option<Polynomial> {
        if coeffs.is_empty()
            || coeffs.len() > MAX_RESCALE_COEFFS
            || !coeffs.iter().all(|c| c.is_finite())
        {
            return None;
        }
        let mut out = [0.0; MAX_RESCALE_COEFFS];
        out[..coeffs.len()].copy_from_slice(coeffs);
        Some(Polynomial {
            coeffs: out,
            len: coeffs.len(),
        })
    }

    /// The coefficients, highest power first.
    pub fn coeffs(&self) -> &[f64] {
        &self.coeffs[..self.len]
    }

    /// The value at `x` by Horner's rule, as `numpy.polyval` computes it.
    pub fn eval(&self, x: f64) -> f64 {
        self.coeffs().iter().fold(0.0, |acc, &c| acc * x + c)
    }
}

/// Why [`Polynomial::fit`] found no polynomial.
#[derive(Clone, Debug, PartialEq)]
pub enum FitError {
    /// A degree whose coefficients a [`Polynomial`] cannot hold.
    Degree(usize),
    /// `x` and `y` differ in length.
    Lengths(usize, usize),
    /// A pair with a NaN or infinite value.
    NotFinite(usize),
    /// Fewer distinct `x` than coefficients: the fit is not unique.
    Underdetermined { degree: usize, distinct: usize },
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::Degree(d) => write!(
                f,
                "degree {d} is out of range: expected 0 to {}",
                MAX_RESCALE_COEFFS - 1
            ),
            FitError::Lengths(a, b) => write!(f, "{a} x values but {b} y values"),
            FitError::NotFinite(i) => write!(f, "pair {i} is not finite"),
            FitError::Underdetermined { degree, distinct } => write!(
                f,
                "a degree-{degree} fit needs at least {} distinct x values, there are {distinct}",
                degree + 1
            ),
        }
    }
}

impl std::error::Error for FitError {}

impl Polynomial {
    /// The least-squares polynomial of `degree` through the pairs
    /// `(x[i], y[i])`, as `numpy.polyfit(x, y, degree)` gives it: the
    /// Vandermonde matrix's columns are scaled to unit norm (numpy does the
    /// same), the system is solved by Householder QR in f64, and the scale
    /// is undone. Refuses a fit that is not unique (numpy warns and returns
    /// one of many).
    pub fn fit(x: &[f64], y: &[f64], degree: usize) -> Result<Polynomial, FitError> {
        let m = degree + 1;
        if m > MAX_RESCALE_COEFFS {
            return Err(FitError::Degree(degree));
        }
        if x.len() != y.len() {
            return Err(FitError::Lengths(x.len(), y.len()));
        }
        if let Some(i) = (0..x.len()).find(|&i| !(x[i].is_finite() && y[i].is_finite())) {
            return Err(FitError::NotFinite(i));
        }
        let mut distinct: Vec<f64> = x.to_vec();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if distinct.len() < m {
            return Err(FitError::Underdetermined {
                degree,
                distinct: distinct.len(),
            });
        }
        let n = x.len();
        // Column j holds x^(degree - j) (numpy's `vander` order), row-major.
        let mut a: Vec<f64> = x
            .iter()
            .flat_map(|&xi| (0..m).map(move |j| xi.powi((degree - j) as i32)))
            .collect();
        let scale: Vec<f64> = (0..m)
            .map(|j| (0..n).map(|i| a[i * m + j].powi(2)).sum::<f64>().sqrt())
            .collect();
        for i in 0..n {
            for j in 0..m {
                a[i * m + j] /= scale[j];
            }
        }
        let mut b = y.to_vec();
        // Householder QR, applied to b as it goes.
        for k in 0..m {
            let norm = (k..n).map(|i| a[i * m + k].powi(2)).sum::<f64>().sqrt();
            if norm == 0.0 {
                continue;
            }
            let alpha = if a[k * m + k] > 0.0 { -norm } else { norm };
            let mut v: Vec<f64> = (k..n).map(|i| a[i * m + k]).collect();
            v[0] -= alpha;
            let vv: f64 = v.iter().map(|t| t * t).sum();
            if vv == 0.0 {
                continue;
            }
            for j in k..m {
                let dot: f64 = (k..n).map(|i| v[i - k] * a[i * m + j]).sum();
                let f = 2.0 * dot / vv;
                for i in k..n {
                    a[i * m + j] -= f * v[i - k];
                }
            }
            let dot: f64 = (k..n).map(|i| v[i - k] * b[i]).sum();
            let f = 2.0 * dot / vv;
            for i in k..n {
                b[i] -= f * v[i - k];
            }
        }
        let mut c = vec![0.0; m];
        for k in (0..m).rev() {
            let rest: f64 = (k + 1..m).map(|j| a[k * m + j] * c[j]).sum();
            c[k] = (b[k] - rest) / a[k * m + k];
        }
        for (cj, sj) in c.iter_mut().zip(&scale) {
            *cj /= sj;
        }
        // Distinct x make the scaled Vandermonde matrix full rank; a
        // result that still overflows is refused like any non-finite input.
        Polynomial::new(&c).ok_or(FitError::NotFinite(0))
    }
}

impl Serialize for Polynomial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.coeffs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Polynomial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Polynomial, D::Error> {
        let v = Vec::<f64>::deserialize(d)?;
        Polynomial::new(&v).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected 1 to {MAX_RESCALE_COEFFS} finite coefficients, found {v:?}"
            ))
        })
    }
}

/// A dynamic policy with its threshold and bounds, as a plan records it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DynamicSpec {
    pub policy: DynamicPolicy,
    /// Reuse when the policy's change indicator is strictly below this
    /// (>= 0; `inf` reuses whenever the bounds allow). Written `"inf"` in
    /// JSON, which has no infinity.
    #[serde(with = "threshold_serde")]
    pub threshold: f64,
    /// The first `warmup` steps always compute (step 0 always does).
    pub warmup: usize,
    /// The last `cutoff` steps always compute.
    pub cutoff: usize,
    /// At most this many reuse steps in a row; `None`: no limit.
    pub max_reuse: Option<usize>,
    /// TeaCache's rescaling of its indicator (`None`: the identity). Only
    /// TeaCache has one. Absent from files and the hash when `None`, so
    /// plans without it keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<Polynomial>,
}

/// Default warm-up of a dynamic policy: the first step (nothing is cached
/// before it).
pub const DEFAULT_DYNAMIC_WARMUP: usize = 1;

impl DynamicSpec {
    /// Whether the bounds allow a reuse at `step` of `steps`, after
    /// `run` reuse steps in a row. The cache must also hold something, which
    /// only the executor knows.
    pub fn may_reuse(&self, step: usize, steps: usize, run: usize) -> bool {
        step >= self.warmup.max(1)
            && step + self.cutoff < steps
            && self.max_reuse.is_none_or(|m| run < m)
    }

    /// The reuse steps when every step the bounds allow reuses (the best
    /// case, and what an infinite threshold gives).
    pub fn most_reuses(&self, steps: usize) -> Vec<usize> {
        let mut run = 0;
        let mut out = Vec::new();
        for s in 0..steps {
            if self.may_reuse(s, steps, run) {
                out.push(s);
                run += 1;
            } else {
                run = 0;
            }
        }
        out
    }
}

/// A threshold in JSON through [`crate::json_float`] (an infinite one as
/// `"inf"`), refused unless >= 0.
mod threshold_serde {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        crate::json_float::serialize(x, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let x = crate::json_float::deserialize(d)?;
        if x.is_nan() || x < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "expected a threshold >= 0 or \"inf\", found {x}"
            )));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(warmup: usize, cutoff: usize, max_reuse: Option<usize>) -> DynamicSpec {
        DynamicSpec {
            policy: DynamicPolicy::FirstBlock,
            threshold: 0.1,
            warmup,
            cutoff,
            max_reuse,
            rescale: None,
        }
    }

    #[test]
    fn polynomials_evaluate_in_numpy_order_and_refuse_bad_coefficients() {
        let p = Polynomial::new(&[2.0, -3.0, 0.5]).unwrap();
        // 2 x^2 - 3 x + 0.5 at x = 1.5: 4.5 - 4.5 + 0.5.
        assert_eq!(p.eval(1.5), 0.5);
        assert_eq!(p.eval(0.0), 0.5);
        assert_eq!(p.coeffs(), [2.0, -3.0, 0.5]);
        assert!(Polynomial::new(&[]).is_none());
        assert!(Polynomial::new(&[1.0, f64::NAN]).is_none());
        assert!(Polynomial::new(&[f64::INFINITY]).is_none());
        assert!(Polynomial::new(&[1.0; MAX_RESCALE_COEFFS + 1]).is_none());
        assert!(Polynomial::new(&[1.0; MAX_RESCALE_COEFFS]).is_some());
    }

    #[test]
    fn rescale_survives_json_and_is_absent_when_none() {
        let mut s = spec(1, 0, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("rescale"));
        s.policy = DynamicPolicy::TeaCache;
        s.rescale = Polynomial::new(&[1.5, -0.25]);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""rescale":[1.5,-0.25]"#), "{text}");
        assert_eq!(serde_json::from_str::<DynamicSpec>(&text).unwrap(), s);
        let bad = text.replace("[1.5,-0.25]", "[]");
        assert!(serde_json::from_str::<DynamicSpec>(&bad).is_err());
    }

    #[test]
    fn probe_points_fix_the_reused_blocks() {
        assert_eq!(
            DynamicPolicy::FirstBlock.probe_point().first_reused_block(),
            1
        );
        assert_eq!(
            DynamicPolicy::TeaCache.probe_point().first_reused_block(),
            0
        );
    }

    #[test]
    fn bounds_give_the_most_reuses() {
        assert_eq!(spec(2, 1, Some(3)).most_reuses(10), vec![2, 3, 4, 6, 7, 8]);
        assert_eq!(spec(0, 0, None).most_reuses(4), vec![1, 2, 3]);
        assert_eq!(spec(0, 0, Some(1)).most_reuses(5), vec![1, 3]);
        assert!(spec(1, 0, Some(0)).most_reuses(5).is_empty());
        assert!(spec(3, 3, None).most_reuses(5).is_empty());
    }

    #[test]
    fn infinite_thresholds_survive_json() {
        let mut s = spec(2, 1, None);
        s.threshold = f64::INFINITY;
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""threshold":"inf""#), "{text}");
        assert_eq!(serde_json::from_str::<DynamicSpec>(&text).unwrap(), s);
        let bad = text.replace(r#""inf""#, "-1.0");
        assert!(serde_json::from_str::<DynamicSpec>(&bad).is_err());
    }
}
