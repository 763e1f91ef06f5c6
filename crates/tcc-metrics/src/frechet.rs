//! Fréchet distance between two Gaussians (the FID formula).

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::error::{check_len, MetricsError, Result};

/// Fréchet distance between N(mu1, s1) and N(mu2, s2):
///
/// `||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^{1/2})`.
///
/// `s1` and `s2` are `d x d` covariance matrices, row-major (they should be
/// symmetric positive semi-definite; only their lower triangles are read by
/// the eigendecompositions). Rank-deficient covariances (fewer samples than
/// dimensions) are fine.
///
/// The result matches the pytorch-fid / ADM evaluator formula, which takes
/// the trace of `scipy.linalg.sqrtm(s1 @ s2)`, without forming the
/// non-symmetric product: see [`trace_sqrt_product`].
pub fn frechet_distance(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64]) -> Result<f64> {
    let d = mu1.len();
    check_len("frechet_distance: mean 2", d, mu2.len())?;
    check_len("frechet_distance: covariance 1", d * d, s1.len())?;
    check_len("frechet_distance: covariance 2", d * d, s2.len())?;
    for (what, v) in [
        ("frechet_distance: mean 1", mu1),
        ("frechet_distance: mean 2", mu2),
        ("frechet_distance: covariance 1", s1),
        ("frechet_distance: covariance 2", s2),
    ] {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(MetricsError::NonFinite { what });
        }
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let cross = trace_sqrt_product(s1, s2, d)?;
    Ok(mean_term + trace(s1) + trace(s2) - 2.0 * cross)
}

/// `tr((s1 s2)^{1/2})` for symmetric positive semi-definite `d x d`
/// matrices (row-major), through two symmetric eigendecompositions.
///
/// Why this equals the trace of scipy's `sqrtm(s1 @ s2)`: let
/// `r = s1^{1/2}` (symmetric, from the eigendecomposition of `s1`). For any
/// square `A`, `B` the products `AB` and `BA` have the same eigenvalues;
/// with `A = r` and `B = r s2` this gives
/// `eig(s1 s2) = eig(r r s2) = eig(r s2 r)`. The matrix `m = r s2 r` is
/// symmetric PSD, so these eigenvalues `λ_i` are real and non-negative. The
/// principal square root of `s1 s2` has eigenvalues `sqrt(λ_i)`, so its
/// trace is `Σ sqrt(λ_i)`, which is what we return. Rounding can make tiny
/// eigenvalues of `s1` or `m` negative; they are clamped to zero (they are
/// zero in exact arithmetic), where scipy would instead return a slightly
/// complex result whose real part pytorch-fid keeps.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize) -> Result<f64> {
    check_len("trace_sqrt_product: matrix 1", d * d, s1.len())?;
    check_len("trace_sqrt_product: matrix 2", d * d, s2.len())?;
    let s1 = MatRef::from_row_major_slice(s1, d, d);
    let s2 = MatRef::from_row_major_slice(s2, d, d);

    let (w1, v1) = sym_eigh(s1, "covariance 1")?;
    // r = V diag(sqrt(max(w, 0))) V^T
    let mut v_scaled = v1.clone();
    for (j, &w) in w1.iter().enumerate() {
        let s = w.max(0.0).sqrt();
        v_scaled.col_mut(j).iter_mut().for_each(|x| *x *= s);
    }
    let mut r = Mat::<f64>::zeros(d, d);
    matmul(
        r.as_mut(),
        Accum::Replace,
        &v_scaled,
        v1.transpose(),
        1.0,
        Par::Seq,
    );
    let mut rs2 = Mat::<f64>::zeros(d, d);
    matmul(rs2.as_mut(), Accum::Replace, &r, s2, 1.0, Par::Seq);
    let mut m = Mat::<f64>::zeros(d, d);
    matmul(m.as_mut(), Accum::Replace, &rs2, &r, 1.0, Par::Seq);
    // Symmetrise away the rounding asymmetry before the second eigh.
    let m = Mat::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));

    let w = sym_eigvals(m.as_ref(), "r s2 r")?;
    Ok(w.iter().map(|&x| x.max(0.0).sqrt()).sum())
}

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric
/// matrix. Sequential, so the result does not depend on the thread count.
fn sym_eigh(a: MatRef<'_, f64>, what: &'static str) -> Result<(Vec<f64>, Mat<f64>)> {
    let n = a.nrows();
    let mut s = Diag::<f64>::zeros(n);
    let mut u = Mat::<f64>::zeros(n, n);
    run_evd(a, &mut s, Some(&mut u), what)?;
    Ok((s.column_vector().iter().copied().collect(), u))
}

/// Eigenvalues (ascending) of a symmetric matrix.
fn sym_eigvals(a: MatRef<'_, f64>, what: &'static str) -> Result<Vec<f64>> {
    let n = a.nrows();
    let mut s = Diag::<f64>::zeros(n);
    run_evd(a, &mut s, None, what)?;
    Ok(s.column_vector().iter().copied().collect())
}

fn run_evd(
    a: MatRef<'_, f64>,
    s: &mut Diag<f64>,
    u: Option<&mut Mat<f64>>,
    what: &'static str,
) -> Result<()> {
    let n = a.nrows();
    let compute = if u.is_some() {
        ComputeEigenvectors::Yes
    } else {
        ComputeEigenvectors::No
    };
    let mut buf = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        compute,
        Par::Seq,
        Default::default(),
    ));
    evd::self_adjoint_evd(
        a,
        s.as_mut(),
        u.map(|u| u.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| MetricsError::Eigen { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_case_has_closed_form() {
        // Diagonal covariances: tr sqrt(s1 s2) = Σ sqrt(a_i b_i).
        let s1 = [4.0, 0.0, 0.0, 9.0];
        let s2 = [1.0, 0.0, 0.0, 16.0];
        let fd = frechet_distance(&[0.0, 1.0], &s1, &[3.0, 1.0], &s2).unwrap();
        let expected = 9.0 + 13.0 + 17.0 - 2.0 * (2.0 + 12.0);
        assert!((fd - expected).abs() < 1e-12, "{fd} vs {expected}");
    }

    #[test]
    fn rejects_mismatched_and_non_finite_input() {
        let s = [1.0, 0.0, 0.0, 1.0];
        assert!(matches!(
            frechet_distance(&[0.0, 0.0], &s, &[0.0], &s),
            Err(MetricsError::Length { .. })
        ));
        assert!(matches!(
            frechet_distance(&[0.0, f64::NAN], &s, &[0.0, 0.0], &s),
            Err(MetricsError::NonFinite { .. })
        ));
    }
}
