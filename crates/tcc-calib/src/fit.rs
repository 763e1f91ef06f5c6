//! Fitting one prior: orthogonal Procrustes with an isotropic scale (the
//! paper's), its two simpler ablations, and the richer families with the
//! same folded run-time form (`affine`, `diagonal`, `lowrank`).

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};
use tcc_core::{Pooling, PriorKind};

use crate::{CalibError, Moments, PairStats, Rows};

/// A fitted prior for one (step, branch, layer):
/// `corr = muA + s * (B - muB) @ R`, blended with `alpha` at run time.
/// For the similarity families R is orthogonal (or the identity); for
/// `affine`, `diagonal` and `lowrank` it is the fitted linear map W and
/// `s = 1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub kind: PriorKind,
    pub dim: usize,
    /// `D x D`, row-major: orthogonal for `procrustes`, the identity for
    /// `shift` and `scale-shift`, the fitted map W for the other families.
    pub r: Vec<f64>,
    pub s: f64,
    /// `rows x D` with rows = 1 (`tokens` pooling: one vector for every
    /// token) or T (`conditions` pooling: one per token position).
    pub mu_a: Vec<f64>,
    pub mu_b: Vec<f64>,
}

/// A prior folded with its blend weight: `out = B @ m + c`, where
/// `m = (1 - alpha) I + alpha s R` and `c = alpha (muA - s muB R)`.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedPrior {
    pub dim: usize,
    /// `D x D`, row-major.
    pub m: Vec<f64>,
    /// `rows x D`, row-major (rows = 1 or T, as `mu_a`).
    pub c: Vec<f64>,
}

/// The outcome of a fit, with the loss it minimised before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    pub prior: Prior,
    /// Paired rows the prior was fitted on.
    pub rows: usize,
    /// `sum_i ||a_i - b_i||^2` over the fitted rows: no prior.
    pub loss_before: f64,
    /// `sum_i ||a_i - corr(b_i)||^2` with the fitted prior at alpha = 1.
    pub loss_after: f64,
}

impl Prior {
    /// The prior that changes nothing (`R = I`, `s = 1`, `muA = muB = 0`).
    pub fn identity(dim: usize) -> Prior {
        Prior {
            kind: PriorKind::Shift,
            dim,
            r: identity(dim),
            s: 1.0,
            mu_a: vec![0.0; dim],
            mu_b: vec![0.0; dim],
        }
    }

    /// Number of mean rows (1 under `tokens` pooling, T under `conditions`).
    pub fn mean_rows(&self) -> usize {
        self.mu_a.len() / self.dim.max(1)
    }

    /// Why the prior's sizes do not fit together, if they do not: `R` must
    /// be `D x D` with `D > 0`, the means `rows x D` with `rows > 0`. Priors
    /// built in code are not checked otherwise (files are, as they load).
    pub fn shape_error(&self) -> Option<String> {
        let d = self.dim;
        let ok = d > 0
            && d.checked_mul(d) == Some(self.r.len())
            && !self.mu_a.is_empty()
            && self.mu_a.len().is_multiple_of(d)
            && self.mu_b.len() == self.mu_a.len();
        (!ok).then(|| {
            format!(
                "a prior of width {d} needs R of {d} x {d} values and means of rows x {d} (rows > 0); it has R of {} values, muA of {}, muB of {}",
                self.r.len(),
                self.mu_a.len(),
                self.mu_b.len()
            )
        })
    }

    /// Fold `alpha` into one matrix and one bias (SPEC: a prior then costs
    /// one `D x D` GEMM plus a bias at run time).
    pub fn fold(&self, alpha: f64) -> FoldedPrior {
        let d = self.dim;
        let mut m = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                m[i * d + j] = alpha * self.s * self.r[i * d + j];
            }
            m[i * d + i] += 1.0 - alpha;
        }
        let rows = self.mean_rows();
        let mut c = vec![0.0; rows * d];
        for row in 0..rows {
            let mu_b = &self.mu_b[row * d..(row + 1) * d];
            let mu_a = &self.mu_a[row * d..(row + 1) * d];
            for j in 0..d {
                let mut acc = 0.0;
                for (k, &b) in mu_b.iter().enumerate() {
                    acc += b * self.r[k * d + j];
                }
                c[row * d + j] = alpha * (mu_a[j] - self.s * acc);
            }
        }
        FoldedPrior { dim: d, m, c }
    }

    /// `corr(b)` for one row vector at mean row `mu_row`, at alpha = 1.
    pub fn correct_row(&self, b: &[f64], mu_row: usize) -> Vec<f64> {
        let d = self.dim;
        let mu_a = &self.mu_a[mu_row * d..(mu_row + 1) * d];
        let mu_b = &self.mu_b[mu_row * d..(mu_row + 1) * d];
        (0..d)
            .map(|j| {
                let mut acc = 0.0;
                for k in 0..d {
                    acc += (b[k] - mu_b[k]) * self.r[k * d + j];
                }
                mu_a[j] + self.s * acc
            })
            .collect()
    }
}

fn identity(d: usize) -> Vec<f64> {
    let mut r = vec![0.0; d * d];
    for i in 0..d {
        r[i * d + i] = 1.0;
    }
    r
}

/// Centred paired statistics: everything a fit needs, from pooled rows
/// ([`Centered::from_pair_stats`]) or from second moments
/// ([`Centered::from_moments`]).
#[derive(Clone, Debug)]
pub struct Centered {
    /// Number of rows.
    pub n: usize,
    pub dim: usize,
    pub mu_a: Vec<f64>,
    pub mu_b: Vec<f64>,
    /// `Bcᵀ Bc` and `Bcᵀ Ac` (`D x D`).
    pub cbb: Mat<f64>,
    pub cba: Mat<f64>,
    /// `||Bc||²`.
    pub bc2: f64,
    /// Under `conditions` pooling: the row means of `a` and of `b`, which
    /// the prior keeps per token position.
    pub row_means: Option<(Vec<f64>, Vec<f64>)>,
}

impl Centered {
    /// From pooled rows: the rows are centred first, exactly.
    pub fn from_pair_stats(stats: &PairStats, pooling: Pooling) -> Result<Centered, CalibError> {
        let d = stats.dim();
        let Rows { keys, a, b } = stats.rows()?;
        let n = keys.len();
        if n == 0 {
            return Err(CalibError::Empty("no paired rows to fit a prior on".into()));
        }
        if pooling == Pooling::Conditions && keys.iter().enumerate().any(|(i, &k)| k != i as u64) {
            return Err(CalibError::Shape(
                "`conditions` pooling needs one row per token position 0..T".into(),
            ));
        }
        let mean = |x: &[f64]| -> Vec<f64> {
            let mut mu = vec![0.0; d];
            for row in x.chunks(d) {
                for (m, v) in mu.iter_mut().zip(row) {
                    *m += v;
                }
            }
            mu.iter_mut().for_each(|m| *m /= n as f64);
            mu
        };
        let (mu_a, mu_b) = (mean(&a), mean(&b));
        let ac = Mat::<f64>::from_fn(n, d, |i, j| a[i * d + j] - mu_a[j]);
        let bc = Mat::<f64>::from_fn(n, d, |i, j| b[i * d + j] - mu_b[j]);
        Ok(Centered {
            n,
            dim: d,
            cbb: bc.transpose() * &bc,
            cba: bc.transpose() * &ac,
            bc2: bc.squared_norm_l2(),
            row_means: (pooling == Pooling::Conditions).then(|| (a.clone(), b.clone())),
            mu_a,
            mu_b,
        })
    }

    /// From second moments: `Cbb = Σbᵀb - n μbᵀμb`, `Cba = Σbᵀa - n μbᵀμa`.
    pub fn from_moments(m: &Moments) -> Result<Centered, CalibError> {
        let d = m.dim();
        let crate::moments::Sums {
            n,
            sum_a,
            sum_b,
            bb,
            ba,
        } = m.sums();
        if n == 0.0 {
            return Err(CalibError::Empty("no paired rows to fit a prior on".into()));
        }
        let mu_a: Vec<f64> = sum_a.iter().map(|x| x / n).collect();
        let mu_b: Vec<f64> = sum_b.iter().map(|x| x / n).collect();
        let cbb = Mat::<f64>::from_fn(d, d, |j, k| bb[j * d + k] - n * mu_b[j] * mu_b[k]);
        let cba = Mat::<f64>::from_fn(d, d, |j, k| ba[j * d + k] - n * mu_b[j] * mu_a[k]);
        let bc2 = (0..d).map(|j| cbb[(j, j)]).sum::<f64>().max(0.0);
        Ok(Centered {
            n: n as usize,
            dim: d,
            mu_a,
            mu_b,
            cbb,
            cba,
            bc2,
            row_means: None,
        })
    }
}

/// Hyperparameters of the families that have them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Ridge strength `γ` of `affine` / `lowrank`: the penalty
    /// `μ ||W - I||²` has `μ = γ tr(Bcᵀ Bc) / D`, so `γ` is relative to the
    /// mean eigenvalue of `Bcᵀ Bc` and does not depend on the number of rows.
    pub ridge: f64,
    /// Rank of `lowrank` (capped at D).
    pub rank: usize,
}

impl Default for Hyper {
    fn default() -> Hyper {
        Hyper {
            ridge: 0.01,
            rank: tcc_core::DEFAULT_RANK,
        }
    }
}

/// Fit a prior of `kind` on paired statistics (pooled rows).
///
/// With rows `a_i`, `b_i` (row means of the pooled contributions):
/// `muA, muB` are their means, `Ac, Bc` the centred rows,
/// `U S V^T = svd(Bc^T Ac)`, `R = U V^T`, `s = tr(S) / ||Bc||^2`
/// (`procrustes`); `R = I`, `s = <Ac, Bc> / ||Bc||^2` (`scale-shift`);
/// `R = I`, `s = 1` (`shift`); the other families as in [`fit_centered`].
/// Under `conditions` pooling the rows are token positions `0..T` and the
/// means are kept per token.
pub fn fit(stats: &PairStats, kind: PriorKind, pooling: Pooling) -> Result<Fit, CalibError> {
    fit_with(stats, kind, pooling, Hyper::default())
}

/// [`fit`] with explicit hyperparameters.
pub fn fit_with(
    stats: &PairStats,
    kind: PriorKind,
    pooling: Pooling,
    hyper: Hyper,
) -> Result<Fit, CalibError> {
    let centered = Centered::from_pair_stats(stats, pooling)?;
    let prior = fit_centered(&centered, kind, hyper)?;
    let (loss_after, loss_before, _) = residual(stats, &prior, pooling, 1.0)?;
    Ok(Fit {
        prior,
        rows: centered.n,
        loss_before,
        loss_after,
    })
}

/// Fit a prior of `kind` on centred statistics. Every family is
/// `corr = muA + (B - muB) W` with `W = s R` (`r` and `s` of the [`Prior`]):
///
/// - `shift`: `W = I`; `scale-shift`: `W = s I`, `s = tr(Cba) / ||Bc||²`;
/// - `procrustes`: `W = s R`, `R = U Vᵀ` from `svd(Cba)` (completed toward
///   the identity where the rows do not determine it), `s = tr(S) / ||Bc||²`;
/// - `affine`: ridge least squares toward the identity,
///   `W = (Cbb + μI)⁻¹ (Cba + μI)` (see [`Hyper::ridge`]);
/// - `diagonal`: per channel `w_j = Cba_jj / Cbb_jj` (1 where `Cbb_jj = 0`);
/// - `lowrank`: `W = I + Δ P_r`, where `Δ = (Cbb + μI)⁻¹ (Cba - Cbb)` is the
///   ridge regression of the residual `Ac - Bc` on `Bc` and `P_r` projects
///   on the top-`r` eigenvectors of `Δᵀ Cbb Δ` (reduced-rank regression:
///   for `μ = 0` the best rank-`r` `Δ`).
///
/// Non-similarity families store `W` in `r` with `s = 1`.
pub fn fit_centered(c: &Centered, kind: PriorKind, hyper: Hyper) -> Result<Prior, CalibError> {
    let d = c.dim;
    if c.row_means.is_some() && !kind.is_similarity() {
        return Err(CalibError::Shape(format!(
            "prior `{kind}` cannot keep per-token means (`conditions` pooling)"
        )));
    }
    let to_vec = |m: &Mat<f64>| -> Vec<f64> {
        let mut v = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                v[i * d + j] = m[(i, j)];
            }
        }
        v
    };
    let mu = hyper.ridge * c.bc2 / d.max(1) as f64;
    let (r, s) = match kind {
        PriorKind::Shift => (identity(d), 1.0),
        _ if c.bc2 == 0.0 => {
            // All accelerated rows are equal: no direction to scale or
            // rotate; fall back to the mean shift.
            (identity(d), 1.0)
        }
        PriorKind::ScaleShift => {
            let dot: f64 = (0..d).map(|j| c.cba[(j, j)]).sum();
            (identity(d), dot / c.bc2)
        }
        PriorKind::Procrustes => {
            let svd = c
                .cba
                .svd()
                .map_err(|e| CalibError::Numerics(format!("SVD did not converge: {e:?}")))?;
            let sv: Vec<f64> = (0..d).map(|i| svd.S()[i]).collect();
            let trace_s: f64 = sv.iter().sum();
            let rot = complete_rotation(svd.U(), svd.V(), &sv)?;
            (to_vec(&rot), trace_s / c.bc2)
        }
        PriorKind::Diagonal => {
            let mut w = identity(d);
            for j in 0..d {
                if c.cbb[(j, j)] > 0.0 {
                    w[j * d + j] = c.cba[(j, j)] / c.cbb[(j, j)];
                }
            }
            (w, 1.0)
        }
        PriorKind::Affine => {
            let delta = ridge_residual(c, mu)?;
            let mut w = to_vec(&delta);
            for j in 0..d {
                w[j * d + j] += 1.0;
            }
            (w, 1.0)
        }
        PriorKind::Lowrank => {
            let delta = ridge_residual(c, mu)?;
            let rank = hyper.rank.min(d);
            let fitted = delta.transpose() * &c.cbb * &delta;
            let eig = fitted
                .self_adjoint_eigen(faer::Side::Lower)
                .map_err(|e| CalibError::Numerics(format!("eigendecomposition failed: {e:?}")))?;
            // faer sorts eigenvalues in ascending order: the top r are last.
            let vecs = eig.U();
            let top = vecs.subcols(d - rank, rank);
            let truncated = &delta * top * top.transpose();
            let mut w = to_vec(&truncated);
            for j in 0..d {
                w[j * d + j] += 1.0;
            }
            (w, 1.0)
        }
    };
    if !s.is_finite() || r.iter().any(|x| !x.is_finite()) {
        return Err(CalibError::NonFinite(format!(
            "the fitted `{kind}` prior is not finite"
        )));
    }
    let (mu_a, mu_b) = match &c.row_means {
        None => (c.mu_a.clone(), c.mu_b.clone()),
        Some((a, b)) => (a.clone(), b.clone()),
    };
    Ok(Prior {
        kind,
        dim: d,
        r,
        s,
        mu_a,
        mu_b,
    })
}

/// `Δ = (Cbb + μI)⁻¹ (Cba - Cbb)`: the ridge regression of the residual
/// `Ac - Bc` on `Bc`, so that `W = I + Δ` is the ridge fit toward `I`.
fn ridge_residual(c: &Centered, mu: f64) -> Result<Mat<f64>, CalibError> {
    let d = c.dim;
    let lhs = Mat::<f64>::from_fn(d, d, |i, j| c.cbb[(i, j)] + if i == j { mu } else { 0.0 });
    let rhs = Mat::<f64>::from_fn(d, d, |i, j| c.cba[(i, j)] - c.cbb[(i, j)]);
    let llt = lhs.llt(faer::Side::Lower).map_err(|_| {
        CalibError::Numerics(
            "the accelerated rows do not span their space (Bᵀ B is singular): use a ridge > 0"
                .into(),
        )
    })?;
    Ok(llt.solve(rhs.as_ref()))
}

/// `R = U V^T` where the cross-covariance determines it, and the rotation
/// closest to the identity where it does not.
///
/// With fewer rows than dimensions (the usual case: 1000 classes against
/// D = 1152 for DiT-XL/2, 10 against 128 for the testbed) `Bc^T Ac` has a
/// null space of dimension `D - rank`, and the SVD's singular vectors there
/// are arbitrary: `U V^T` would rotate directions no calibration row ever
/// moved along, which corrupts every token at sampling time. Every
/// completion has the same calibration loss; we pick the one that maximises
/// `tr(R)` (equivalently minimises `||R - I||_F`): on the complements,
/// `R_null = U_n Q V_n^T` with `Q = W P^T` from `svd(V_n^T U_n) = P S W^T`.
fn complete_rotation(
    u: MatRef<'_, f64>,
    v: MatRef<'_, f64>,
    sv: &[f64],
) -> Result<Mat<f64>, CalibError> {
    let d = sv.len();
    let max = sv.iter().cloned().fold(0.0, f64::max);
    let tol = max * 1e-9;
    let rank = sv.iter().filter(|&&x| x > tol).count();
    let (ur, vr) = (u.subcols(0, rank), v.subcols(0, rank));
    let mut rot = ur * vr.transpose();
    if rank < d {
        let (un, vn) = (u.subcols(rank, d - rank), v.subcols(rank, d - rank));
        let c = vn.transpose() * un;
        let inner = c
            .svd()
            .map_err(|e| CalibError::Numerics(format!("SVD did not converge: {e:?}")))?;
        let q = inner.V() * inner.U().transpose();
        rot += un * q * vn.transpose();
    }
    Ok(rot)
}

/// The residual of a prior blended with `alpha` on the paired rows of
/// `stats`: `(sum_i ||a_i - out(b_i)||^2, sum_i ||a_i - b_i||^2,
/// sum_i ||a_i||^2)` with `out(b) = (1 - alpha) b + alpha corr(b)`.
pub fn residual(
    stats: &PairStats,
    prior: &Prior,
    pooling: Pooling,
    alpha: f64,
) -> Result<(f64, f64, f64), CalibError> {
    let d = stats.dim();
    let Rows { keys, a, b } = stats.rows()?;
    let (mut after, mut before, mut norm) = (0.0, 0.0, 0.0);
    for i in 0..keys.len() {
        let (ai, bi) = (&a[i * d..(i + 1) * d], &b[i * d..(i + 1) * d]);
        // Per-token means (`conditions` pooling): row i is token i.
        let mu_row = if pooling == Pooling::Conditions && prior.mean_rows() > 1 {
            i
        } else {
            0
        };
        let corr = prior.correct_row(bi, mu_row);
        let out: Vec<f64> = bi
            .iter()
            .zip(&corr)
            .map(|(b, c)| (1.0 - alpha) * b + alpha * c)
            .collect();
        after += sq_dist(ai, &out);
        before += sq_dist(ai, bi);
        norm += ai.iter().map(|x| x * x).sum::<f64>();
    }
    Ok((after, before, norm))
}

fn sq_dist(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Side;

    /// A small deterministic generator (the fit must not depend on `rand`).
    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn rotated_stats(n: usize, d: usize, scale: f32, seed: u64) -> PairStats {
        // b is a, rotated by a fixed 2-D rotation in the first plane, scaled
        // and shifted, plus noise: the fit should undo most of it.
        let mut g = seed;
        let (c, s) = (0.8f32, 0.6f32);
        let mut st = PairStats::new(d);
        for i in 0..n {
            let a: Vec<f32> = (0..d).map(|_| lcg(&mut g)).collect();
            let mut b: Vec<f32> = a.iter().map(|x| x * scale + 0.3).collect();
            let (x, y) = (b[0], b[1]);
            b[0] = c * x - s * y;
            b[1] = s * x + c * y;
            for v in b.iter_mut() {
                *v += 0.01 * lcg(&mut g);
            }
            st.add(Side::Reference, i as u64, &a).unwrap();
            st.add(Side::Accelerated, i as u64, &b).unwrap();
        }
        st
    }

    #[test]
    fn procrustes_rotation_is_orthogonal_and_reduces_the_loss() {
        let st = rotated_stats(40, 6, 1.3, 7);
        for kind in [
            PriorKind::Shift,
            PriorKind::ScaleShift,
            PriorKind::Procrustes,
        ] {
            let fit = fit(&st, kind, Pooling::Tokens).unwrap();
            assert!(fit.loss_after <= fit.loss_before, "{kind:?}: {fit:?}");
            let d = fit.prior.dim;
            let r = &fit.prior.r;
            for i in 0..d {
                for j in 0..d {
                    let dot: f64 = (0..d).map(|k| r[k * d + i] * r[k * d + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-10, "R^T R [{i},{j}] = {dot}");
                }
            }
        }
        let p = fit(&st, PriorKind::Procrustes, Pooling::Tokens).unwrap();
        let ss = fit(&st, PriorKind::ScaleShift, Pooling::Tokens).unwrap();
        assert!(p.loss_after <= ss.loss_after);
        // The data were scaled by 1.3: the fitted scale undoes it.
        assert!((p.prior.s - 1.0 / 1.3).abs() < 0.02, "s = {}", p.prior.s);
        assert!(p.loss_after < 0.05 * p.loss_before);
    }

    fn is_orthogonal(r: &[f64], d: usize, tol: f64) -> bool {
        (0..d).all(|i| {
            (0..d).all(|j| {
                let dot: f64 = (0..d).map(|k| r[k * d + i] * r[k * d + j]).sum();
                (dot - if i == j { 1.0 } else { 0.0 }).abs() < tol
            })
        })
    }

    #[test]
    fn fewer_rows_than_dimensions_leave_unseen_directions_alone() {
        // 5 rows in 12 dimensions: Bc^T Ac has rank <= 4. Rows live in the
        // first 6 coordinates; the other 6 are never seen, and R must act as
        // the identity on them (not an arbitrary SVD completion).
        let (n, d, seen) = (5, 12, 6);
        let mut g = 11;
        let mut st = PairStats::new(d);
        for i in 0..n {
            let mut a = vec![0.0f32; d];
            for v in a.iter_mut().take(seen) {
                *v = lcg(&mut g);
            }
            let mut b = a.clone();
            let (x, y) = (b[0], b[1]);
            b[0] = 0.8 * x - 0.6 * y;
            b[1] = 0.6 * x + 0.8 * y;
            st.add(Side::Reference, i as u64, &a).unwrap();
            st.add(Side::Accelerated, i as u64, &b).unwrap();
        }
        let f = fit(&st, PriorKind::Procrustes, Pooling::Tokens).unwrap();
        let r = &f.prior.r;
        assert!(is_orthogonal(r, d, 1e-10));
        for i in seen..d {
            for j in 0..d {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (r[i * d + j] - want).abs() < 1e-10,
                    "R[{i},{j}] = {}",
                    r[i * d + j]
                );
                assert!(
                    (r[j * d + i] - want).abs() < 1e-10,
                    "R[{j},{i}] = {}",
                    r[j * d + i]
                );
            }
        }
        // The rotation in the seen plane is undone exactly.
        assert!(f.loss_after < 1e-12 * f.loss_before, "{f:?}");
    }

    #[test]
    fn already_aligned_rows_give_the_identity_even_when_rank_deficient() {
        let (n, d) = (4, 9);
        let mut g = 5;
        let mut st = PairStats::new(d);
        for i in 0..n {
            let a: Vec<f32> = (0..d).map(|_| lcg(&mut g)).collect();
            st.add(Side::Reference, i as u64, &a).unwrap();
            st.add(Side::Accelerated, i as u64, &a).unwrap();
        }
        let f = fit(&st, PriorKind::Procrustes, Pooling::Tokens).unwrap();
        assert!((f.prior.s - 1.0).abs() < 1e-12, "s = {}", f.prior.s);
        for (k, (x, y)) in f.prior.r.iter().zip(identity(d)).enumerate() {
            assert!((x - y).abs() < 1e-10, "R[{k}] = {x}");
        }
    }

    #[test]
    fn folded_prior_equals_the_unfolded_blend() {
        let st = rotated_stats(30, 5, 0.7, 3);
        let fit = fit(&st, PriorKind::Procrustes, Pooling::Tokens).unwrap();
        let alpha = 1.75;
        let f = fit.prior.fold(alpha);
        let b: Vec<f64> = (0..5).map(|i| i as f64 * 0.3 - 0.5).collect();
        let corr = fit.prior.correct_row(&b, 0);
        for j in 0..5 {
            let unfolded = (1.0 - alpha) * b[j] + alpha * corr[j];
            let folded: f64 = (0..5).map(|k| b[k] * f.m[k * 5 + j]).sum::<f64>() + f.c[j];
            assert!((unfolded - folded).abs() < 1e-12);
        }
    }

    #[test]
    fn identity_prior_folds_to_identity() {
        let f = Prior::identity(3).fold(0.6);
        assert_eq!(f.m, identity(3));
        assert!(f.c.iter().all(|&c| c == 0.0));
    }

    #[test]
    fn empty_statistics_are_an_error() {
        assert!(matches!(
            fit(&PairStats::new(4), PriorKind::Procrustes, Pooling::Tokens),
            Err(CalibError::Empty(_))
        ));
    }
}
