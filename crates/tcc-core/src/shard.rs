//! The shard rule: which samples one of `N` processes takes.
//!
//! Samples are split into contiguous runs of whole batches: with `n`
//! samples in batches of `b`, batch `j` holds samples `j b .. min((j+1) b,
//! n)`, and shard `i` of `N` takes batches `floor(i B / N) .. floor((i+1) B
//! / N)` of the `B = ceil(n / b)` batches. Every shard's batches are
//! batches of the single run (same samples, same noise, same sampler seed),
//! so a sample's result does not depend on how the run was split, and the
//! shards in index order list the samples in order.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (`index` counts from 0, as Slurm's
/// `SLURM_ARRAY_TASK_ID` and MPI ranks do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// The most shards a run may be split into.
pub const MAX_SHARDS: usize = 1 << 20;

impl Shard {
    /// The whole run as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the number of shards must be 1 to {MAX_SHARDS}, not {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "shard {index}/{count}: the index counts from 0 and must be below {count}"
            ));
        }
        Ok(Shard { index, count })
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// The batches of this shard among `batches`.
    pub fn batches(&self, batches: usize) -> Range<usize> {
        // In u128: `index * batches` can exceed usize on 32-bit targets.
        let at = |i: usize| (i as u128 * batches as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// The samples of this shard among `n` samples in batches of
    /// `batch_size` (may be empty when there are fewer batches than
    /// shards).
    pub fn samples(&self, n: usize, batch_size: usize) -> Range<usize> {
        let b = batch_size.max(1);
        let r = self.batches(n.div_ceil(b));
        (r.start * b).min(n)..(r.end * b).min(n)
    }

    /// [`Shard::samples`], refusing an empty share: `what` names the
    /// samples in the message.
    pub fn nonempty_samples(
        &self,
        n: usize,
        batch_size: usize,
        what: &str,
    ) -> Result<Range<usize>, String> {
        let r = self.samples(n, batch_size);
        if r.is_empty() {
            return Err(format!(
                "shard {self} has no {what}: {n} samples in batches of {batch_size} make {} batches, fewer than {} shards (shards take whole batches: use fewer shards or a smaller --batch-size)",
                n.div_ceil(batch_size.max(1)),
                self.count
            ));
        }
        Ok(r)
    }
}

/// Orders the named parts of a sharded run by shard index: every shard of
/// `count` exactly once, or an error naming the shard given twice or the
/// shards missing. (Each part's `count` is checked by the caller, with the
/// rest of its binding.)
pub fn in_shard_order<T>(
    count: usize,
    parts: impl IntoIterator<Item = (Shard, String, T)>,
) -> Result<Vec<(String, T)>, String> {
    let mut by_index: std::collections::BTreeMap<usize, (String, T)> = Default::default();
    for (shard, name, part) in parts {
        if let Some((other, _)) = by_index.get(&shard.index) {
            return Err(format!("shard {shard} is given twice: {other} and {name}"));
        }
        by_index.insert(shard.index, (name, part));
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard{} {} missing: every shard 0/{count} .. {}/{count} is needed",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            count - 1
        ));
    }
    Ok(by_index.into_values().collect())
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, e.g. `0/8` .. `7/8`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: write I/N, e.g. 0/8 (I counts from 0)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i: usize = i.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn parts_come_back_in_shard_order_or_name_the_shard_given_twice_or_missing() {
        let part = |i: usize, name: &str| (Shard::new(i, 3).unwrap(), name.to_string(), i);
        let ordered = super::in_shard_order(3, [part(2, "c"), part(0, "a"), part(1, "b")]).unwrap();
        assert_eq!(
            ordered,
            vec![("a".into(), 0), ("b".into(), 1), ("c".into(), 2)]
        );
        let twice =
            super::in_shard_order(3, [part(0, "a"), part(1, "b"), part(0, "x")]).unwrap_err();
        assert_eq!(twice, "shard 0/3 is given twice: a and x");
        let missing = super::in_shard_order(3, [part(1, "b")]).unwrap_err();
        assert_eq!(
            missing,
            "shards 0/3, 2/3 missing: every shard 0/3 .. 2/3 is needed"
        );
    }
    use super::*;

    #[test]
    fn shards_cover_the_samples_once_in_order_in_whole_batches() {
        for (n, b, count) in [(256, 16, 2), (100, 7, 3), (10, 4, 3), (5, 1, 5), (3, 8, 2)] {
            let mut next = 0;
            for index in 0..count {
                let r = Shard::new(index, count).unwrap().samples(n, b);
                assert_eq!(r.start, next, "n {n} b {b} shard {index}/{count}");
                assert!(r.start.is_multiple_of(b), "starts on a batch boundary");
                assert!(r.end.is_multiple_of(b) || r.end == n);
                next = r.end;
            }
            assert_eq!(next, n);
        }
        assert_eq!(Shard::WHOLE.samples(37, 8), 0..37);
        // 3 samples in batches of 8: one batch, so shard 0 of 2 is empty.
        assert!(Shard::new(0, 2)
            .unwrap()
            .nonempty_samples(3, 8, "samples")
            .unwrap_err()
            .contains("fewer than 2 shards"));
    }

    #[test]
    fn parses_i_of_n_and_refuses_the_rest() {
        assert_eq!("3/8".parse::<Shard>(), Ok(Shard { index: 3, count: 8 }));
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard::WHOLE));
        for bad in ["8/8", "1/0", "3", "a/2", "-1/2", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard::new(2, 5).unwrap().to_string(), "2/5");
    }
}
