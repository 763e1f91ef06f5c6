//! Per-step, per-(branch, layer) distance between a cached run's branch
//! outputs and the reference run's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compare::{moments, sample_len};
use crate::error::Result;
use crate::summary::Summary;

/// Where a branch output was taken: sampling step, branch name (`attn`,
/// `cross`, `mlp`, or any other label such as a Δ-DiT block range) and
/// layer (block index).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BranchKey {
    pub step: usize,
    pub branch: String,
    pub layer: usize,
}

/// Distances of one (step, branch, layer), over samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DistanceSums {
    /// Per-sample relative L2 `||cached - ref|| / ||ref||`.
    pub rel_l2: Summary,
    /// Per-sample cosine similarity.
    pub cosine: Summary,
    /// `Σ ||cached - ref||^2` over all samples.
    pub sq_diff: f64,
    /// `Σ ||ref||^2` over all samples.
    pub sq_ref: f64,
}

impl DistanceSums {
    /// Number of samples.
    pub fn n(&self) -> u64 {
        self.rel_l2.n()
    }

    /// Relative L2 of all samples pooled: `sqrt(Σ||c - r||^2 / Σ||r||^2)`.
    pub fn pooled_rel_l2(&self) -> f64 {
        (self.sq_diff / self.sq_ref).sqrt()
    }

    /// Adds the samples of `other`.
    pub fn merge(&mut self, other: &DistanceSums) {
        self.rel_l2.merge(&other.rel_l2);
        self.cosine.merge(&other.cosine);
        self.sq_diff += other.sq_diff;
        self.sq_ref += other.sq_ref;
    }
}

/// Distance accumulators keyed by (step, branch, layer); mergeable.
///
/// Serialises as a list of `(key, sums)` pairs in key order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "Vec<(BranchKey, DistanceSums)>",
    into = "Vec<(BranchKey, DistanceSums)>"
)]
pub struct BranchDistances {
    map: BTreeMap<BranchKey, DistanceSums>,
}

impl From<Vec<(BranchKey, DistanceSums)>> for BranchDistances {
    fn from(rows: Vec<(BranchKey, DistanceSums)>) -> Self {
        let mut out = Self::default();
        for (k, v) in rows {
            out.map.entry(k).or_default().merge(&v);
        }
        out
    }
}

impl From<BranchDistances> for Vec<(BranchKey, DistanceSums)> {
    fn from(d: BranchDistances) -> Self {
        d.map.into_iter().collect()
    }
}

impl BranchDistances {
    /// Empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample: a cached run's branch output (flattened) against the
    /// reference run's. Zero-norm vectors are an error (distances undefined).
    pub fn add<T: Copy + Into<f64>>(
        &mut self,
        step: usize,
        branch: &str,
        layer: usize,
        cached: &[T],
        reference: &[T],
    ) -> Result<()> {
        let what = "branch distance";
        let m = moments(what, cached, reference)?;
        let (rel, cos) = (m.rel_l2(what)?, m.cosine(what)?);
        let e = self
            .map
            .entry(BranchKey {
                step,
                branch: branch.to_owned(),
                layer,
            })
            .or_default();
        e.rel_l2.add(rel);
        e.cosine.add(cos);
        e.sq_diff += m.diff;
        e.sq_ref += m.bb;
        Ok(())
    }

    /// Adds `n_samples` samples stored back to back (e.g. a whole batch
    /// tensor `[n_samples, tokens, dim]`, flattened).
    pub fn add_samples<T: Copy + Into<f64>>(
        &mut self,
        step: usize,
        branch: &str,
        layer: usize,
        cached: &[T],
        reference: &[T],
        n_samples: usize,
    ) -> Result<()> {
        let len = sample_len(
            "branch distance batch",
            cached.len(),
            reference.len(),
            n_samples,
        )?;
        for (c, r) in cached.chunks_exact(len).zip(reference.chunks_exact(len)) {
            self.add(step, branch, layer, c, r)?;
        }
        Ok(())
    }

    /// Adds everything accumulated in `other`.
    pub fn merge(&mut self, other: &BranchDistances) {
        for (k, v) in &other.map {
            self.map.entry(k.clone()).or_default().merge(v);
        }
    }

    /// Distances of one (step, branch, layer).
    pub fn get(&self, step: usize, branch: &str, layer: usize) -> Option<&DistanceSums> {
        self.map.get(&BranchKey {
            step,
            branch: branch.to_owned(),
            layer,
        })
    }

    /// All entries in (step, branch, layer) order.
    pub fn iter(&self) -> impl Iterator<Item = (&BranchKey, &DistanceSums)> {
        self.map.iter()
    }

    /// Entries merged over branches and layers, per step (for per-step plots).
    pub fn per_step(&self) -> BTreeMap<usize, DistanceSums> {
        let mut out: BTreeMap<usize, DistanceSums> = BTreeMap::new();
        for (k, v) in &self.map {
            out.entry(k.step).or_default().merge(v);
        }
        out
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
