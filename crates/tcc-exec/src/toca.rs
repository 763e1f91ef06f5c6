//! ToCa's token-wise compute: which tokens of a partly computed branch are
//! fresh, and how their outputs are merged into the cache entry.
//!
//! Scores are small (`rows x T`) and computed on the host; the branch runs
//! on the gathered fresh rows wherever the model lives.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use tcc_core::{TocaSpec, TokenScore};
use tcc_model::{BlockModel, Conditioning, Modulation};

use crate::{ExecError, Result};

/// What a trajectory remembers for choosing tokens: per (block, branch
/// index) how many steps ago each token's row was last computed, and per
/// block the attention its tokens received at its last scored full
/// attention.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenState {
    stale: HashMap<(usize, usize), Vec<u32>>,
    received: HashMap<usize, Vec<f32>>,
}

impl TokenState {
    /// A full compute of the cell: every row is fresh.
    pub(crate) fn computed(&mut self, key: (usize, usize)) {
        if let Some(v) = self.stale.get_mut(&key) {
            v.iter_mut().for_each(|x| *x = 0);
        }
    }

    /// A reuse of the cell: every row ages by one step.
    pub(crate) fn reused(&mut self, key: (usize, usize), len: usize) {
        let v = self.stale.entry(key).or_insert_with(|| vec![0; len]);
        v.iter_mut().for_each(|x| *x = x.saturating_add(1));
    }

    /// A partial compute: `fresh[row]` (token indices) reset, the rest age.
    fn partial(&mut self, key: (usize, usize), tokens: usize, fresh: &[Vec<usize>]) {
        let v = self
            .stale
            .entry(key)
            .or_insert_with(|| vec![0; fresh.len() * tokens]);
        v.iter_mut().for_each(|x| *x = x.saturating_add(1));
        for (row, idx) in fresh.iter().enumerate() {
            for &i in idx {
                v[row * tokens + i] = 0;
            }
        }
    }

    pub(crate) fn set_received(&mut self, block: usize, received: &Tensor) -> Result<()> {
        let v = received
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.received.insert(block, v);
        Ok(())
    }
}

/// Where a partial compute happens, for seeding and error messages.
pub(crate) struct PartialCell {
    pub step: usize,
    pub block: usize,
    pub branch_index: usize,
    pub fresh: usize,
}

/// Chooses the fresh tokens of a partial cell (one index list per model
/// batch row, ascending) and updates the staleness counters.
pub(crate) fn choose(
    state: &mut TokenState,
    spec: &TocaSpec,
    cell: &PartialCell,
    rows: usize,
    side: usize,
    cfg_halves: bool,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let t = side * side;
    let base: Vec<f32> = match spec.score {
        TokenScore::Attention => {
            let received = state.received.get(&cell.block).ok_or_else(|| {
                ExecError::Input(format!(
                    "step {}, block {}: ToCa's attention score needs the block's attention, and the model does not report it (use score = \"random\")",
                    cell.step, cell.block
                ))
            })?;
            if received.len() != rows * t {
                return Err(ExecError::Input(format!(
                    "block {}: the attention received covers {} values, expected {rows} x {t}",
                    cell.block,
                    received.len()
                )));
            }
            let mut v = received.clone();
            v.chunks_exact_mut(t).for_each(l2_normalize);
            v
        }
        TokenScore::Random => {
            let samples = if cfg_halves { rows / 2 } else { rows };
            let mut rng = SplitMix64(mix(&[
                seed,
                spec.seed,
                cell.step as u64,
                cell.block as u64,
                cell.branch_index as u64,
            ]));
            let one: Vec<f32> = (0..samples * t).map(|_| rng.unit()).collect();
            (0..rows)
                .flat_map(|r| one[(r % samples.max(1)) * t..][..t].iter().copied())
                .collect()
        }
    };
    let key = (cell.block, cell.branch_index);
    let stale = state.stale.get(&key);
    let mut fresh = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut score = base[r * t..(r + 1) * t].to_vec();
        if let Some(stale) = stale {
            add_staleness(&mut score, &stale[r * t..(r + 1) * t], spec);
        }
        spread_bonus(&mut score, side, spec.spread_bonus);
        fresh.push(top_k(&score, cell.fresh));
    }
    state.partial(key, t, &fresh);
    Ok(fresh)
}

/// Scales `v` to unit L2 norm (left as is when it is all zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// `score += w * stale / interval` (ToCa's cache-frequency term).
pub fn add_staleness(score: &mut [f32], stale: &[u32], spec: &TocaSpec) {
    let k = (spec.fresh_weight / spec.interval) as f32;
    for (s, &n) in score.iter_mut().zip(stale) {
        *s += k * n as f32;
    }
}

/// In every 2x2 patch of the `side x side` token grid (row-major tokens;
/// patches at an odd edge are smaller), the highest-scoring token (the
/// first in row-major order on ties) gets `bonus * its score` added.
pub fn spread_bonus(score: &mut [f32], side: usize, bonus: f64) {
    if bonus == 0.0 {
        return;
    }
    for y0 in (0..side).step_by(2) {
        for x0 in (0..side).step_by(2) {
            let mut best: Option<usize> = None;
            for y in y0..(y0 + 2).min(side) {
                for x in x0..(x0 + 2).min(side) {
                    let i = y * side + x;
                    if best.is_none_or(|b| score[i] > score[b]) {
                        best = Some(i);
                    }
                }
            }
            if let Some(b) = best {
                score[b] += (bonus as f32) * score[b];
            }
        }
    }
}

/// The indices of the `k` highest scores, in ascending index order; ties
/// go to the lower index, NaN ranks lowest.
pub fn top_k(score: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    let key = |i: usize| {
        if score[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            score[i]
        }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let mut picked: Vec<usize> = order.into_iter().take(k).collect();
    picked.sort_unstable();
    picked
}

/// Rows `idx[r]` of sample `r` of `x` `[rows, T, D]`, as `[rows, k, D]`
/// (every row picks the same number `k`).
pub fn gather_rows(x: &Tensor, idx: &[Vec<usize>]) -> Result<Tensor> {
    let (rows, t, d) = x.dims3()?;
    let k = idx.first().map_or(0, Vec::len);
    let flat: Vec<u32> = idx
        .iter()
        .enumerate()
        .flat_map(|(r, v)| v.iter().map(move |&i| (r * t + i) as u32))
        .collect();
    let index = Tensor::from_vec(flat, rows * k, x.device())?;
    Ok(x.reshape((rows * t, d))?
        .index_select(&index, 0)?
        .reshape((rows, k, d))?)
}

/// `cached` `[rows, T, D]` with the rows `idx[r]` of sample `r` replaced
/// by the rows of `fresh` `[rows, k, D]`, in order; every other value is
/// copied unchanged (one gather from `[fresh; cached]`, so no arithmetic
/// touches any value).
pub fn merge_rows(cached: &Tensor, fresh: &Tensor, idx: &[Vec<usize>]) -> Result<Tensor> {
    let (rows, t, d) = cached.dims3()?;
    let k = idx.first().map_or(0, Vec::len);
    let n_fresh = rows * k;
    let mut source: Vec<u32> = (0..rows * t).map(|i| (n_fresh + i) as u32).collect();
    for (r, v) in idx.iter().enumerate() {
        for (j, &i) in v.iter().enumerate() {
            source[r * t + i] = (r * k + j) as u32;
        }
    }
    let index = Tensor::from_vec(source, rows * t, cached.device())?;
    let both = Tensor::cat(
        &[
            &fresh.to_dtype(cached.dtype())?.reshape((n_fresh, d))?,
            &cached.reshape((rows * t, d))?,
        ],
        0,
    )?;
    Ok(both.index_select(&index, 0)?.reshape((rows, t, d))?)
}

/// The complement of `fresh` in `0..tokens`, per row: the stale tokens of
/// a partial compute (ascending). Every row must have as many fresh tokens
/// (a partial cell computes the same count in every row), so that the
/// stale rows gather into one `[rows, T - k, D]` tensor.
pub fn stale_tokens(fresh: &[Vec<usize>], tokens: usize) -> Result<Vec<Vec<usize>>> {
    let k = fresh.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(fresh.len());
    for (r, f) in fresh.iter().enumerate() {
        if f.len() != k || f.iter().any(|&i| i >= tokens) || f.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ExecError::Input(format!(
                "row {r} of a partial compute has {} fresh tokens (ascending, below {tokens}), row 0 has {k}",
                f.len()
            )));
        }
        let mut stale = Vec::with_capacity(tokens - k);
        let mut next = f.iter().peekable();
        for i in 0..tokens {
            if next.peek() == Some(&&i) {
                next.next();
            } else {
                stale.push(i);
            }
        }
        out.push(stale);
    }
    Ok(out)
}

/// The stale (reused) rows of a partial compute's output `x`
/// (`[rows, T, D]`), as `[rows, T - k, D]` in token order: what TCC pools
/// its statistics over. Values are copied, not computed.
pub fn stale_rows(x: &Tensor, fresh: &[Vec<usize>]) -> Result<Tensor> {
    let (rows, t, _) = x.dims3()?;
    if fresh.len() != rows {
        return Err(ExecError::Input(format!(
            "{} rows of fresh tokens for an output of {rows} rows",
            fresh.len()
        )));
    }
    gather_rows(x, &stale_tokens(fresh, t)?)
}

/// `corrected` (`[rows, T, D]`, a correction of the partial compute's
/// output `out`) with the rows `fresh` put back as `out` has them, bit for
/// bit: a TCC prior corrects the stale tokens only.
pub fn keep_fresh(corrected: &Tensor, out: &Tensor, fresh: &[Vec<usize>]) -> Result<Tensor> {
    if fresh.iter().all(Vec::is_empty) {
        return Ok(corrected.clone());
    }
    merge_rows(corrected, &gather_rows(out, fresh)?, fresh)
}

/// ToCa's token-wise compute of `branch` of `block`: the branch on the
/// fresh rows `idx` of the residual stream `h` only (self-attention then
/// attends within them), merged into the cached output `cached`.
#[allow(clippy::too_many_arguments)]
pub fn partial_branch<M: BlockModel + ?Sized>(
    model: &M,
    block: usize,
    branch: tcc_core::Branch,
    h: &Tensor,
    m: &Modulation,
    c: &Conditioning,
    cached: &Tensor,
    idx: &[Vec<usize>],
) -> Result<Tensor> {
    let x = gather_rows(h, idx)?;
    let out = model.branch(block, branch, &x, m, c)?;
    merge_rows(cached, &out, idx)
}

fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243F_6A88_85A3_08D3u64, |acc, &p| {
        SplitMix64(acc ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next()
    })
}

/// SplitMix64, for the `random` score (deterministic on every platform).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn spec(score: TokenScore) -> TocaSpec {
        TocaSpec {
            score,
            fresh_weight: 0.25,
            spread_bonus: 0.6,
            interval: 2.0,
            seed: 0,
        }
    }

    #[test]
    fn top_k_takes_the_highest_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9, 0.2], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[1.0, 1.0, 1.0, 1.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[f32::NAN, 0.0, -1.0], 1), vec![1]);
        assert_eq!(top_k(&[3.0, 2.0], 0), Vec::<usize>::new());
        assert_eq!(top_k(&[3.0, 2.0], 5), vec![0, 1]);
    }

    #[test]
    fn spread_bonus_lifts_the_best_of_each_2x2_patch() {
        // 4x4 grid, row-major; patches {0,1,4,5}, {2,3,6,7}, ...
        let mut s: Vec<f32> = (0..16).map(|i| i as f32).collect();
        spread_bonus(&mut s, 4, 0.5);
        let expect: Vec<f32> = (0..16)
            .map(|i| {
                let x = i as f32;
                if [5, 7, 13, 15].contains(&i) {
                    1.5 * x
                } else {
                    x
                }
            })
            .collect();
        assert_eq!(s, expect);
        // Ties go to the first token of the patch; odd edges make 1-wide patches.
        let mut t = vec![1.0f32; 9];
        spread_bonus(&mut t, 3, 1.0);
        assert_eq!(t, vec![2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0, 1.0, 2.0]);
        // The bonus can move a token into the top k.
        let mut u = vec![0.5f32, 0.0, 0.6, 0.0, 0.0, 0.0, 0.59, 0.0, 0.0];
        assert_eq!(top_k(&u, 1), vec![2]);
        spread_bonus(&mut u, 3, 0.6);
        assert_eq!(top_k(&u, 2), vec![2, 6]);
    }

    #[test]
    fn staleness_and_normalisation() {
        let mut v = vec![3.0f32, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0f32; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
        let mut s = vec![0.0f32, 0.0, 0.0];
        add_staleness(&mut s, &[0, 1, 4], &spec(TokenScore::Attention));
        assert_eq!(s, vec![0.0, 0.125, 0.5]);
    }

    /// A stale token overtakes a slightly more attended one; chosen tokens
    /// reset their counters, the others age.
    #[test]
    fn choose_combines_attention_and_staleness() {
        let mut state = TokenState::default();
        // One row, 2x2 grid: received attention favours token 0 a little.
        state
            .set_received(
                0,
                &Tensor::new(&[[1.0f32, 0.9, 0.2, 0.2]], &Device::Cpu).unwrap(),
            )
            .unwrap();
        let mut sp = spec(TokenScore::Attention);
        sp.spread_bonus = 0.0;
        let cell = |step| PartialCell {
            step,
            block: 0,
            branch_index: 1,
            fresh: 1,
        };
        let first = choose(&mut state, &sp, &cell(1), 1, 2, false, 0).unwrap();
        assert_eq!(first, vec![vec![0]]);
        assert_eq!(state.stale[&(0, 1)], vec![0, 1, 1, 1]);
        // Token 1: 0.9/n + 0.125 beats token 0's 1.0/n (n = |received| = 1.38).
        let second = choose(&mut state, &sp, &cell(2), 1, 2, false, 0).unwrap();
        assert_eq!(second, vec![vec![1]]);
        assert_eq!(state.stale[&(0, 1)], vec![1, 0, 2, 2]);
        state.computed((0, 1));
        assert_eq!(state.stale[&(0, 1)], vec![0; 4]);
    }

    #[test]
    fn random_score_is_seeded_and_shared_by_the_cfg_halves() {
        let sp = spec(TokenScore::Random);
        let cell = PartialCell {
            step: 3,
            block: 1,
            branch_index: 0,
            fresh: 5,
        };
        let pick = |seed| choose(&mut TokenState::default(), &sp, &cell, 4, 4, true, seed).unwrap();
        let a = pick(7);
        assert_eq!(a, pick(7));
        assert_ne!(a, pick(8));
        assert_eq!(a[0], a[2]);
        assert_eq!(a[1], a[3]);
        assert!(a.iter().all(|v| v.len() == 5));
        // Without the attention of the block, the attention score is refused.
        let err = choose(
            &mut TokenState::default(),
            &spec(TokenScore::Attention),
            &cell,
            4,
            4,
            true,
            0,
        );
        assert!(err.is_err());
    }

    #[test]
    fn stale_rows_are_the_complement_and_keep_fresh_puts_fresh_rows_back() {
        let fresh = vec![vec![1, 3], vec![0, 2]];
        assert_eq!(
            stale_tokens(&fresh, 4).unwrap(),
            vec![vec![0, 2], vec![1, 3]]
        );
        assert_eq!(
            stale_tokens(&[vec![], vec![]], 2).unwrap(),
            vec![vec![0, 1]; 2]
        );
        // Rows with different counts, unsorted or out-of-range indices.
        for bad in [
            vec![vec![1], vec![0, 2]],
            vec![vec![2, 1], vec![0, 1]],
            vec![vec![4], vec![0]],
        ] {
            assert!(stale_tokens(&bad, 4).is_err(), "{bad:?}");
        }
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 3))
            .unwrap();
        let s = stale_rows(&x, &fresh).unwrap().to_vec3::<f32>().unwrap();
        let xv = x.to_vec3::<f32>().unwrap();
        assert_eq!(
            s,
            vec![
                vec![xv[0][0].clone(), xv[0][2].clone()],
                vec![xv[1][1].clone(), xv[1][3].clone()]
            ]
        );
        assert_eq!(
            stale_rows(&x, &[vec![], vec![]])
                .unwrap()
                .to_vec3::<f32>()
                .unwrap(),
            xv
        );
        assert!(stale_rows(&x, &[vec![]]).is_err());
        let corrected = (&x * 10.0).unwrap();
        let kept = keep_fresh(&corrected, &x, &fresh)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let cv = corrected.to_vec3::<f32>().unwrap();
        for r in 0..2 {
            for i in 0..4 {
                let want = if fresh[r].contains(&i) {
                    &xv[r][i]
                } else {
                    &cv[r][i]
                };
                assert_eq!(&kept[r][i], want, "row {r} token {i}");
            }
        }
    }

    #[test]
    fn gather_and_merge_move_rows_only() {
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 4, 3))
            .unwrap();
        let idx = vec![vec![1, 3], vec![0, 2]];
        let g = gather_rows(&x, &idx).unwrap();
        assert_eq!(
            g.to_vec3::<f32>().unwrap(),
            vec![
                vec![vec![3.0, 4.0, 5.0], vec![9.0, 10.0, 11.0]],
                vec![vec![12.0, 13.0, 14.0], vec![18.0, 19.0, 20.0]],
            ]
        );
        let fresh = (g.neg().unwrap() - 1.0).unwrap();
        let merged = merge_rows(&x, &fresh, &idx)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let x = x.to_vec3::<f32>().unwrap();
        for (r, rows) in merged.iter().enumerate() {
            for (i, row) in rows.iter().enumerate() {
                let want: Vec<f32> = if idx[r].contains(&i) {
                    x[r][i].iter().map(|v| -v - 1.0).collect()
                } else {
                    x[r][i].clone()
                };
                assert_eq!(*row, want, "row {r} token {i}");
            }
        }
    }
}
