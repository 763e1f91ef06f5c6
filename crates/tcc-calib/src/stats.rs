//! Paired statistics, kept as sums so that shards merge exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::CalibError;

/// Per-row sums of one side (reference `a` or accelerated `b`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RowSums {
    count: u64,
    sum: Vec<f64>,
}

/// The paired statistics of one calibrated site (step, branch, layer).
///
/// A *row* is identified by a key: the condition (class or prompt) under
/// `tokens` pooling, the token position under `conditions` pooling. Each
/// contribution adds one vector to its row's sum; a row's value is the mean
/// of its contributions. Rows of `a` and `b` are accumulated separately (the
/// two trajectories need not be walked at the same time) and paired by key
/// at fit time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    dim: usize,
    a: BTreeMap<u64, RowSums>,
    b: BTreeMap<u64, RowSums>,
}

/// Paired row means, row-major `n x dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    pub keys: Vec<u64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

/// Which trajectory a vector comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The reference (full computation) trajectory: `A`.
    Reference,
    /// The accelerated trajectory's uncorrected reused output: `B`.
    Accelerated,
}

impl PairStats {
    pub fn new(dim: usize) -> PairStats {
        PairStats {
            dim,
            a: BTreeMap::new(),
            b: BTreeMap::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Add one vector (length `dim`) to row `key` of one side.
    pub fn add(&mut self, side: Side, key: u64, v: &[f32]) -> Result<(), CalibError> {
        self.add_sum(side, key, v, 1)
    }

    /// Add `count` vectors to row `key` of one side, given by their sum `v`
    /// (summed on the device in f32; merged here in f64).
    pub fn add_sum(
        &mut self,
        side: Side,
        key: u64,
        v: &[f32],
        count: u64,
    ) -> Result<(), CalibError> {
        if count == 0 {
            return Err(CalibError::Shape(format!(
                "a statistic for row {key} sums no vectors"
            )));
        }
        if v.len() != self.dim {
            return Err(CalibError::Shape(format!(
                "statistics vector has length {}, expected {}",
                v.len(),
                self.dim
            )));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(CalibError::NonFinite(format!(
                "element {i} of a {} statistic for row {key} is {}",
                match side {
                    Side::Reference => "reference",
                    Side::Accelerated => "accelerated",
                },
                v[i]
            )));
        }
        let rows = match side {
            Side::Reference => &mut self.a,
            Side::Accelerated => &mut self.b,
        };
        let row = rows.entry(key).or_insert_with(|| RowSums {
            count: 0,
            sum: vec![0.0; v.len()],
        });
        row.count += count;
        for (s, &x) in row.sum.iter_mut().zip(v) {
            *s += x as f64;
        }
        Ok(())
    }

    /// Add the rows of `x` (`[n, dim]`, on any device), row `i` to row
    /// `keys[i]`. The rows of one key are summed on `x`'s device in f32 and
    /// the sums merged here in f64: a GPU sends back one row per key.
    pub fn add_rows(&mut self, side: Side, x: &Tensor, keys: &[u64]) -> Result<(), CalibError> {
        let mut distinct: Vec<u64> = Vec::new();
        let slots: Vec<u32> = keys
            .iter()
            .map(|k| match distinct.iter().position(|d| d == k) {
                Some(i) => i as u32,
                None => {
                    distinct.push(*k);
                    (distinct.len() - 1) as u32
                }
            })
            .collect();
        let sums: Vec<Vec<f32>> = group_sum(x, &slots, distinct.len())
            .and_then(|s| s.to_vec2())
            .map_err(numerics)?;
        for (i, (row, key)) in sums.iter().zip(&distinct).enumerate() {
            let count = slots.iter().filter(|&&s| s as usize == i).count();
            self.add_sum(side, *key, row, count as u64)?;
        }
        Ok(())
    }

    /// Add `x` (`[n, R, dim]`, on any device): row `r` of each of the `n`
    /// samples to row key `r`, summed over the samples on the device (f32)
    /// and merged here in f64.
    pub fn add_positions(&mut self, side: Side, x: &Tensor) -> Result<(), CalibError> {
        let n = x.dim(0).map_err(numerics)?;
        let sums: Vec<Vec<f32>> = group_sum(x, &vec![0; n], 1)
            .and_then(|s| s.squeeze(0))
            .and_then(|s| s.to_vec2())
            .map_err(numerics)?;
        for (r, row) in sums.iter().enumerate() {
            self.add_sum(side, r as u64, row, n as u64)?;
        }
        Ok(())
    }

    /// Add the statistics of another shard. Exact: the result equals one
    /// pass over both shards' contributions (up to f64 summation order).
    pub fn merge(&mut self, other: &PairStats) -> Result<(), CalibError> {
        if other.dim != self.dim {
            return Err(CalibError::Shape(format!(
                "cannot merge statistics of width {} into width {}",
                other.dim, self.dim
            )));
        }
        for (mine, theirs) in [(&mut self.a, &other.a), (&mut self.b, &other.b)] {
            for (key, row) in theirs {
                let entry = mine.entry(*key).or_insert_with(|| RowSums {
                    count: 0,
                    sum: vec![0.0; row.sum.len()],
                });
                entry.count += row.count;
                for (s, x) in entry.sum.iter_mut().zip(&row.sum) {
                    *s += x;
                }
            }
        }
        Ok(())
    }

    /// The paired rows: keys in ascending order, and the row means of `a`
    /// and `b`.
    pub fn rows(&self) -> Result<Rows, CalibError> {
        let keys_a: Vec<u64> = self.a.keys().copied().collect();
        let keys_b: Vec<u64> = self.b.keys().copied().collect();
        if keys_a != keys_b {
            return Err(CalibError::Unpaired(format!(
                "{} reference rows and {} accelerated rows with different keys",
                keys_a.len(),
                keys_b.len()
            )));
        }
        let mut a = Vec::with_capacity(keys_a.len() * self.dim);
        let mut b = Vec::with_capacity(keys_a.len() * self.dim);
        for key in &keys_a {
            let (ra, rb) = (&self.a[key], &self.b[key]);
            if ra.count != rb.count {
                return Err(CalibError::Unpaired(format!(
                    "row {key} has {} reference and {} accelerated contributions",
                    ra.count, rb.count
                )));
            }
            a.extend(ra.sum.iter().map(|s| s / ra.count as f64));
            b.extend(rb.sum.iter().map(|s| s / rb.count as f64));
        }
        Ok(Rows { keys: keys_a, a, b })
    }

    /// Number of paired rows.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }
}

impl PairStats {
    /// Writes the sums under `prefix`: per side the row keys, their
    /// contribution counts and their sums (`[rows, dim]`).
    pub(crate) fn encode(&self, prefix: &str, w: &mut Writer) {
        for (side, rows) in [("a", &self.a), ("b", &self.b)] {
            let keys: Vec<u64> = rows.keys().copied().collect();
            let counts: Vec<u64> = rows.values().map(|r| r.count).collect();
            let sums: Vec<f64> = rows.values().flat_map(|r| r.sum.iter().copied()).collect();
            w.u64(format!("{prefix}.{side}.keys"), vec![keys.len()], &keys);
            w.u64(format!("{prefix}.{side}.counts"), vec![keys.len()], &counts);
            w.f64(
                format!("{prefix}.{side}.sums"),
                vec![keys.len(), self.dim],
                &sums,
            );
        }
    }

    /// Reads what [`PairStats::encode`] wrote under `prefix`.
    pub(crate) fn decode(prefix: &str, r: &Reader) -> Result<PairStats, CalibError> {
        let mut dim = None;
        let mut sides = Vec::with_capacity(2);
        for side in ["a", "b"] {
            let (ks, keys) = r.u64(&format!("{prefix}.{side}.keys"))?;
            let (cs, counts) = r.u64(&format!("{prefix}.{side}.counts"))?;
            let name = format!("{prefix}.{side}.sums");
            let (ss, sums) = r.f64(&name)?;
            let n = keys.len();
            if ks != [n] || cs != [n] || ss.len() != 2 || ss[0] != n {
                return Err(r.bad(format!(
                    "tensors of {prefix}.{side} have inconsistent shapes (keys {ks:?}, counts {cs:?}, sums {ss:?})"
                )));
            }
            let d = ss[1];
            if d == 0 || *dim.get_or_insert(d) != d {
                return Err(r.bad(format!(
                    "tensor `{name}` has width {d}, expected {}",
                    dim.unwrap_or(0)
                )));
            }
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                return Err(r.bad(format!(
                    "tensor `{prefix}.{side}.keys` is not strictly ascending"
                )));
            }
            if let Some(i) = counts.iter().position(|&c| c == 0) {
                return Err(r.bad(format!(
                    "tensor `{prefix}.{side}.counts` has a zero count at {i}"
                )));
            }
            let map: BTreeMap<u64, RowSums> = keys
                .into_iter()
                .zip(counts)
                .zip(sums.chunks_exact(d))
                .map(|((k, count), sum)| {
                    (
                        k,
                        RowSums {
                            count,
                            sum: sum.to_vec(),
                        },
                    )
                })
                .collect();
            sides.push(map);
        }
        let b = sides.pop().expect("two sides");
        let a = sides.pop().expect("two sides");
        Ok(PairStats {
            dim: dim.expect("width read"),
            a,
            b,
        })
    }
}

fn numerics(e: candle_core::Error) -> CalibError {
    CalibError::Numerics(e.to_string())
}

/// `out[slots[i]] += x[i]` over the first dim of `x` (f32), into `n` zeroed
/// rows. candle's `index_add` adds in order on every device (no atomics),
/// so the sums are deterministic; one slot per row passes `x` through.
fn group_sum(x: &Tensor, slots: &[u32], n: usize) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if n == slots.len() && slots.iter().enumerate().all(|(i, &s)| s as usize == i) {
        return Ok(x);
    }
    let idx = Tensor::new(slots, x.device())?;
    let mut dims = x.dims().to_vec();
    dims[0] = n;
    Tensor::zeros(dims, DType::F32, x.device())?.index_add(&idx, &x, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_to_one_pass() {
        let dim = 3;
        let data: Vec<(u64, [f32; 3], [f32; 3])> = (0..20)
            .map(|i| {
                let f = i as f32;
                (i % 4, [f, f * 0.5 - 1.0, 2.0], [f + 1.0, -f, 0.25 * f])
            })
            .collect();
        let mut one = PairStats::new(dim);
        let mut left = PairStats::new(dim);
        let mut right = PairStats::new(dim);
        for (i, (k, a, b)) in data.iter().enumerate() {
            one.add(Side::Reference, *k, a).unwrap();
            one.add(Side::Accelerated, *k, b).unwrap();
            let shard = if i < 7 { &mut left } else { &mut right };
            shard.add(Side::Reference, *k, a).unwrap();
            shard.add(Side::Accelerated, *k, b).unwrap();
        }
        left.merge(&right).unwrap();
        // The values are small integers and halves: the sums are exact in
        // f64 whatever the order, so equality is exact.
        assert_eq!(left, one);
        let rows = one.rows().unwrap();
        assert_eq!(rows.keys, vec![0, 1, 2, 3]);
        // Row 0 holds i = 0, 4, 8, 12, 16: mean 8.
        assert_eq!(rows.a[0], 8.0);
    }

    #[test]
    fn non_finite_and_unpaired_inputs_are_errors() {
        let mut s = PairStats::new(2);
        assert!(matches!(
            s.add(Side::Reference, 0, &[1.0, f32::NAN]),
            Err(CalibError::NonFinite(_))
        ));
        assert!(matches!(
            s.add(Side::Reference, 0, &[1.0]),
            Err(CalibError::Shape(_))
        ));
        s.add(Side::Reference, 0, &[1.0, 2.0]).unwrap();
        assert!(matches!(s.rows(), Err(CalibError::Unpaired(_))));
        s.add(Side::Accelerated, 0, &[1.0, 2.0]).unwrap();
        s.add(Side::Accelerated, 0, &[1.0, 2.0]).unwrap();
        assert!(matches!(s.rows(), Err(CalibError::Unpaired(_))));
    }
}
