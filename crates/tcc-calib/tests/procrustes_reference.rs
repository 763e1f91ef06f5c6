//! The prior fit against numpy/scipy (`tools/golden/procrustes.py`, which
//! uses `scipy.linalg.orthogonal_procrustes`).

use tcc_calib::{fit, PairStats, Side};
use tcc_core::{Pooling, PriorKind};

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    #[serde(rename = "A")]
    a: Vec<Vec<f64>>,
    #[serde(rename = "B")]
    b: Vec<Vec<f64>>,
    loss_before: f64,
    fits: std::collections::BTreeMap<String, RefFit>,
}

#[derive(serde::Deserialize)]
struct RefFit {
    #[serde(rename = "R")]
    r: Vec<Vec<f64>>,
    s: f64,
    mu_a: Vec<f64>,
    loss: f64,
}

fn stats(case: &Case) -> PairStats {
    let d = case.a[0].len();
    let mut st = PairStats::new(d);
    for (i, (a, b)) in case.a.iter().zip(&case.b).enumerate() {
        let a: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        st.add(Side::Reference, i as u64, &a).unwrap();
        st.add(Side::Accelerated, i as u64, &b).unwrap();
    }
    st
}

/// Statistics are accumulated from f32 vectors, so values agree with the
/// f64 reference to about f32 precision: tolerance 1e-5 relative.
const REL_TOL: f64 = 1e-5;
/// Orthogonality of R is checked to 1e-5 (ISSUE: "R orthogonal to 1e-5").
const ORTHO_TOL: f64 = 1e-5;

fn close(x: f64, y: f64, tol: f64) -> bool {
    (x - y).abs() <= tol * (1.0 + y.abs())
}

#[test]
fn fits_match_scipy() {
    let text = include_str!("fixtures/procrustes.json");
    let fixture: Fixture = serde_json::from_str(text).unwrap();
    for case in &fixture.cases {
        let st = stats(case);
        let d = case.a[0].len();
        let full_rank = case.a.len() > d;
        for (kind_name, kind) in [
            ("procrustes", PriorKind::Procrustes),
            ("scale-shift", PriorKind::ScaleShift),
            ("shift", PriorKind::Shift),
        ] {
            let want = &case.fits[kind_name];
            let got = fit(&st, kind, Pooling::Tokens).unwrap();
            let ctx = format!("{} {kind_name}", case.name);
            assert!(
                close(got.loss_before, case.loss_before, REL_TOL),
                "{ctx}: loss before"
            );
            assert!(
                close(got.loss_after, want.loss, REL_TOL),
                "{ctx}: loss {} vs scipy {}",
                got.loss_after,
                want.loss
            );
            assert!(
                close(got.prior.s, want.s, REL_TOL),
                "{ctx}: s {} vs {}",
                got.prior.s,
                want.s
            );
            for j in 0..d {
                assert!(
                    close(got.prior.mu_a[j], want.mu_a[j], REL_TOL),
                    "{ctx}: muA[{j}]"
                );
            }
            let r = &got.prior.r;
            for i in 0..d {
                for j in 0..d {
                    let dot: f64 = (0..d).map(|k| r[k * d + i] * r[k * d + j]).sum();
                    let id = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (dot - id).abs() < ORTHO_TOL,
                        "{ctx}: R^T R[{i},{j}] = {dot}"
                    );
                    // With fewer rows than dimensions the rotation is not
                    // unique: only the loss and scale are comparable.
                    if full_rank {
                        assert!(
                            (r[i * d + j] - want.r[i][j]).abs() < 1e-4,
                            "{ctx}: R[{i},{j}] {} vs {}",
                            r[i * d + j],
                            want.r[i][j]
                        );
                    }
                }
            }
        }
    }
}
