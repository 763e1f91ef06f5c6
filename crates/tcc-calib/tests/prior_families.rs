//! The prior families fitted from second moments, against numpy/scipy
//! (`tools/golden/prior_families.py`: stacked least squares for the ridge
//! fits, `scipy.stats.linregress` per channel, an SVD of the fitted values
//! for reduced-rank regression), and the paper's Procrustes prior fitted
//! from moments against `scipy.linalg.orthogonal_procrustes`
//! (`tools/golden/procrustes.py`).

use tcc_calib::{blended_error, fit_centered, Centered, Hyper, Moments};
use tcc_core::PriorKind;

#[derive(serde::Deserialize)]
struct Fixture<C> {
    cases: Vec<C>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    #[serde(rename = "A")]
    a: Vec<Vec<f64>>,
    #[serde(rename = "B")]
    b: Vec<Vec<f64>>,
    loss_before: f64,
    fits: Vec<RefFit>,
}

#[derive(serde::Deserialize)]
struct RefFit {
    kind: String,
    ridge: f64,
    rank: usize,
    #[serde(rename = "W")]
    w: Vec<Vec<f64>>,
    mu_a: Vec<f64>,
    mu_b: Vec<f64>,
    loss: f64,
}

/// The rows are exact f64 on both sides; tcc solves the normal equations
/// (Cholesky of `Bcᵀ Bc + μI`) where numpy solves the stacked system by
/// SVD, so W agrees to rounding amplified by the conditioning of
/// `Bcᵀ Bc`: 1e-7 (relative to 1 + |w|) covers it with room.
const W_TOL: f64 = 1e-7;
/// Losses are sums of squares: 1e-8 relative.
const LOSS_TOL: f64 = 1e-8;

fn moments(a: &[Vec<f64>], b: &[Vec<f64>]) -> Moments {
    let d = a[0].len();
    let mut m = Moments::new(d);
    let flat = |x: &[Vec<f64>]| x.iter().flatten().copied().collect::<Vec<f64>>();
    m.add_host_rows(&flat(a), &flat(b)).unwrap();
    m
}

fn close(x: f64, y: f64, tol: f64) -> bool {
    (x - y).abs() <= tol * (1.0 + y.abs())
}

#[test]
fn affine_diagonal_and_lowrank_match_numpy() {
    let fixture: Fixture<Case> =
        serde_json::from_str(include_str!("fixtures/prior_families.json")).unwrap();
    for case in &fixture.cases {
        let d = case.a[0].len();
        let m = moments(&case.a, &case.b);
        assert!(close(m.error_identity(), case.loss_before, LOSS_TOL));
        let centered = Centered::from_moments(&m).unwrap();
        for want in &case.fits {
            let kind = PriorKind::from_name(&want.kind).unwrap();
            let ctx = format!(
                "{} {} ridge {} rank {}",
                case.name, want.kind, want.ridge, want.rank
            );
            let prior = fit_centered(
                &centered,
                kind,
                Hyper {
                    ridge: want.ridge,
                    rank: want.rank,
                },
            )
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(prior.s, 1.0, "{ctx}");
            for i in 0..d {
                assert!(close(prior.mu_a[i], want.mu_a[i], W_TOL), "{ctx}: muA[{i}]");
                assert!(close(prior.mu_b[i], want.mu_b[i], W_TOL), "{ctx}: muB[{i}]");
                for j in 0..d {
                    assert!(
                        close(prior.r[i * d + j], want.w[i][j], W_TOL),
                        "{ctx}: W[{i},{j}] {} vs {}",
                        prior.r[i * d + j],
                        want.w[i][j]
                    );
                }
            }
            let loss = blended_error(m.error_terms(&prior.fold(1.0)).unwrap(), 1.0);
            assert!(
                close(loss, want.loss, LOSS_TOL),
                "{ctx}: loss {loss} vs {}",
                want.loss
            );
            // Every family at least matches the plain reuse on the rows it
            // was fitted on when the fit is determined.
            if case.a.len() > d && want.ridge == 0.0 {
                assert!(loss <= case.loss_before, "{ctx}");
            }
        }
    }
}

#[test]
fn lowrank_of_full_rank_is_affine_and_rank_orders_the_loss() {
    let fixture: Fixture<Case> =
        serde_json::from_str(include_str!("fixtures/prior_families.json")).unwrap();
    let case = &fixture.cases[0];
    let d = case.a[0].len();
    let m = moments(&case.a, &case.b);
    let c = Centered::from_moments(&m).unwrap();
    let loss = |kind, ridge, rank| {
        let p = fit_centered(&c, kind, Hyper { ridge, rank }).unwrap();
        blended_error(m.error_terms(&p.fold(1.0)).unwrap(), 1.0)
    };
    let affine = loss(PriorKind::Affine, 0.0, 0);
    let full = loss(PriorKind::Lowrank, 0.0, d);
    assert!(close(full, affine, 1e-9), "{full} vs {affine}");
    let mut last = f64::INFINITY;
    for r in 1..=d {
        let l = loss(PriorKind::Lowrank, 0.0, r);
        assert!(l <= last * (1.0 + 1e-12), "rank {r}: {l} > {last}");
        last = l;
    }
}

#[derive(serde::Deserialize)]
struct ProcrustesCase {
    name: String,
    #[serde(rename = "A")]
    a: Vec<Vec<f64>>,
    #[serde(rename = "B")]
    b: Vec<Vec<f64>>,
    fits: std::collections::BTreeMap<String, ProcrustesFit>,
}

#[derive(serde::Deserialize)]
struct ProcrustesFit {
    s: f64,
    loss: f64,
}

#[test]
fn procrustes_from_moments_matches_scipy() {
    let fixture: Fixture<ProcrustesCase> =
        serde_json::from_str(include_str!("fixtures/procrustes.json")).unwrap();
    for case in &fixture.cases {
        let m = moments(&case.a, &case.b);
        let c = Centered::from_moments(&m).unwrap();
        for (name, want) in &case.fits {
            let kind = PriorKind::from_name(name).unwrap();
            let p = fit_centered(&c, kind, Hyper::default()).unwrap();
            let loss = blended_error(m.error_terms(&p.fold(1.0)).unwrap(), 1.0);
            // Centring from sums loses a little to cancellation: 1e-9.
            assert!(
                close(p.s, want.s, 1e-9),
                "{} {name}: s {} vs {}",
                case.name,
                p.s,
                want.s
            );
            assert!(
                close(loss, want.loss, 1e-8),
                "{} {name}: loss {loss} vs {}",
                case.name,
                want.loss
            );
        }
    }
}
