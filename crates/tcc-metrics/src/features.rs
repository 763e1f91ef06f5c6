//! Mergeable first and second moments of feature vectors.

use std::collections::BTreeMap;
use std::path::Path;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{check_len, MetricsError, Result};
use crate::frechet::frechet_distance;

/// Value of the `format` metadata key in a saved statistics file.
pub const FEATURE_STATS_FORMAT: &str = "tcc-feature-stats/1";

/// Sums that determine the mean and covariance of a set of `dim`-vectors:
/// the count `n`, `sum = Σ x` and `sum_outer = Σ x x^T` (row-major
/// `dim x dim`), all in f64.
///
/// Shards of a data set can be accumulated separately and [`merged`]
/// (plain addition, so the result equals one pass over all rows up to f64
/// rounding). The covariance is formed as `(Σ x x^T - n m m^T) / (n - 1)`;
/// with f64 sums that is accurate as long as the features' mean is not many
/// orders of magnitude larger than their spread (true for network features).
///
/// [`merged`]: FeatureStats::merge
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFeatureStats")]
pub struct FeatureStats {
    n: u64,
    sum: Vec<f64>,
    sum_outer: Vec<f64>,
}

#[derive(Deserialize)]
struct RawFeatureStats {
    n: u64,
    sum: Vec<f64>,
    sum_outer: Vec<f64>,
}

impl TryFrom<RawFeatureStats> for FeatureStats {
    type Error = MetricsError;
    fn try_from(r: RawFeatureStats) -> Result<Self> {
        FeatureStats::from_parts(r.n, r.sum, r.sum_outer)
    }
}

impl FeatureStats {
    /// Empty statistics of `dim`-dimensional features.
    pub fn new(dim: usize) -> Self {
        Self {
            n: 0,
            sum: vec![0.0; dim],
            sum_outer: vec![0.0; dim * dim],
        }
    }

    /// Statistics from their sums (checks shapes and finiteness).
    pub fn from_parts(n: u64, sum: Vec<f64>, sum_outer: Vec<f64>) -> Result<Self> {
        let d = sum.len();
        check_len("feature statistics: sum_outer", d * d, sum_outer.len())?;
        if sum.iter().chain(&sum_outer).any(|x| !x.is_finite()) {
            return Err(MetricsError::NonFinite {
                what: "feature statistics",
            });
        }
        Ok(Self { n, sum, sum_outer })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Number of feature vectors added.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// `Σ x`.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// `Σ x x^T`, row-major.
    pub fn sum_outer(&self) -> &[f64] {
        &self.sum_outer
    }

    /// Adds one feature vector.
    pub fn add<T: Copy + Into<f64>>(&mut self, x: &[T]) -> Result<()> {
        check_len("feature statistics: added vector", self.dim(), x.len())?;
        self.add_batch(x)
    }

    /// Adds a batch of feature vectors, given row-major (`rows.len()` must be
    /// a multiple of `dim`).
    pub fn add_batch<T: Copy + Into<f64>>(&mut self, rows: &[T]) -> Result<()> {
        let d = self.dim();
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(MetricsError::Invalid(format!(
                "feature statistics: batch of {} values is not a whole number of {d}-dimensional rows",
                rows.len()
            )));
        }
        let x: Vec<f64> = rows.iter().map(|&v| v.into()).collect();
        if x.iter().any(|v| !v.is_finite()) {
            return Err(MetricsError::NonFinite {
                what: "feature statistics: added features",
            });
        }
        let n = x.len() / d;
        for row in x.chunks_exact(d) {
            for (s, v) in self.sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        let xm = MatRef::from_row_major_slice(&x, n, d);
        let outer = MatMut::from_row_major_slice_mut(&mut self.sum_outer, d, d);
        matmul(outer, Accum::Add, xm.transpose(), xm, 1.0, Par::Seq);
        self.n += n as u64;
        Ok(())
    }

    /// Adds the sums of `other` (another shard of the same features).
    pub fn merge(&mut self, other: &FeatureStats) -> Result<()> {
        check_len(
            "feature statistics merge: dimension",
            self.dim(),
            other.dim(),
        )?;
        self.n += other.n;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_outer.iter_mut().zip(&other.sum_outer) {
            *a += b;
        }
        Ok(())
    }

    /// Mean vector.
    pub fn mean(&self) -> Result<Vec<f64>> {
        self.need(1, "feature mean")?;
        let n = self.n as f64;
        Ok(self.sum.iter().map(|s| s / n).collect())
    }

    /// Unbiased covariance (divides by `n - 1`, like
    /// `np.cov(x, rowvar=False)`), row-major `dim x dim`, exactly symmetric.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        self.need(2, "feature covariance")?;
        let d = self.dim();
        let n = self.n as f64;
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..=i {
                let outer = 0.5 * (self.sum_outer[i * d + j] + self.sum_outer[j * d + i]);
                let v = (outer - self.sum[i] * self.sum[j] / n) / (n - 1.0);
                c[i * d + j] = v;
                c[j * d + i] = v;
            }
        }
        Ok(c)
    }

    /// Fréchet distance between the Gaussians fitted to `self` and `other`
    /// (FID when the features are Inception pool features).
    pub fn frechet_distance(&self, other: &FeatureStats) -> Result<f64> {
        check_len(
            "frechet distance: feature dimension",
            self.dim(),
            other.dim(),
        )?;
        frechet_distance(
            &self.mean()?,
            &self.covariance()?,
            &other.mean()?,
            &other.covariance()?,
        )
    }

    fn need(&self, needed: u64, what: &'static str) -> Result<()> {
        if self.n < needed {
            return Err(MetricsError::TooFewSamples {
                what,
                needed,
                have: self.n,
            });
        }
        Ok(())
    }

    /// Writes the sums to a safetensors file (`n` as U64 scalar, `sum` and
    /// `sum_outer` as F64), with `metadata` (e.g. the feature network's
    /// identity) plus `format`. Atomic: a temporary file in the same
    /// directory is renamed over `path`, so readers never see a partial file.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let file_err = |message: String| MetricsError::File {
            path: path.to_path_buf(),
            message,
        };
        let d = self.dim();
        let n_bytes = self.n.to_le_bytes();
        let sum_bytes = f64_bytes(&self.sum);
        let outer_bytes = f64_bytes(&self.sum_outer);
        let tensors = [
            ("n", TensorView::new(Dtype::U64, vec![], &n_bytes)),
            ("sum", TensorView::new(Dtype::F64, vec![d], &sum_bytes)),
            (
                "sum_outer",
                TensorView::new(Dtype::F64, vec![d, d], &outer_bytes),
            ),
        ]
        .into_iter()
        .map(|(k, v)| v.map(|v| (k, v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
        let mut meta = metadata.clone();
        meta.insert("format".into(), FEATURE_STATS_FORMAT.into());
        let bytes = tcc_fs::safetensors_bytes(tensors, Some(meta)).map_err(file_err)?;
        tcc_fs::write_atomically(path, &bytes).map_err(|e| file_err(e.to_string()))
    }

    /// Reads a file written by [`save`](FeatureStats::save); returns the
    /// statistics and the metadata (without `format`).
    pub fn load(path: &Path) -> Result<(Self, BTreeMap<String, String>)> {
        let file_err = |message: String| MetricsError::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = tcc_fs::read_input(path, 1 << 32).map_err(|e| file_err(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match meta.remove("format").as_deref() {
            Some(FEATURE_STATS_FORMAT) => {}
            other => {
                return Err(file_err(format!(
                    "format is {other:?}, expected {FEATURE_STATS_FORMAT:?}"
                )))
            }
        }
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
        let get = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|_| file_err(format!("missing tensor `{name}`")))?;
            if t.dtype() != dtype {
                return Err(file_err(format!(
                    "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let n_t = get("n", Dtype::U64)?;
        let sum_t = get("sum", Dtype::F64)?;
        let outer_t = get("sum_outer", Dtype::F64)?;
        let d = sum_t.shape().first().copied().unwrap_or(0);
        if !n_t.shape().is_empty() || sum_t.shape() != [d] || outer_t.shape() != [d, d] {
            return Err(file_err(format!(
                "tensor shapes n {:?}, sum {:?}, sum_outer {:?}; expected [], [D], [D, D]",
                n_t.shape(),
                sum_t.shape(),
                outer_t.shape()
            )));
        }
        let n = u64::from_le_bytes(
            n_t.data()
                .try_into()
                .map_err(|_| file_err("bad `n`".into()))?,
        );
        let stats = Self::from_parts(n, f64_from(sum_t.data()), f64_from(outer_t.data()))
            .map_err(|e| file_err(e.to_string()))?;
        Ok((stats, meta))
    }
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_from(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
        .collect()
}
