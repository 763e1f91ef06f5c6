//! `Polynomial::fit` (TeaCache's rescale fit) against numpy.polyfit on the
//! fixture written by tools/golden/teacache_polyfit.py. Tolerances: fitted
//! values within 1e-9 relative to the largest |y| (both solve the same
//! well-scaled least-squares problem in f64, numpy by SVD, tcc by QR), and
//! coefficients within 1e-10 relative to the largest coefficient (measured:
//! 1e-13 at worst, for degree 4; they inherit the Vandermonde matrix's
//! conditioning).

use serde::Deserialize;
use tcc_core::{FitError, Polynomial};

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    x: Vec<f64>,
    y: Vec<f64>,
    fits: Vec<Fit>,
}

#[derive(Deserialize)]
struct Fit {
    degree: usize,
    coeffs: Vec<f64>,
    fitted: Vec<f64>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/polyfit.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn fits_match_numpy_polyfit() {
    let fx = fixture();
    let mut checked = 0;
    for case in &fx.cases {
        let ymax = case.y.iter().fold(0f64, |m, v| m.max(v.abs()));
        for want in &case.fits {
            let got = Polynomial::fit(&case.x, &case.y, want.degree).unwrap();
            let what = format!("{} degree {}", case.name, want.degree);
            assert_eq!(got.coeffs().len(), want.degree + 1, "{what}");
            for (x, f) in case.x.iter().zip(&want.fitted) {
                assert!(
                    (got.eval(*x) - f).abs() <= 1e-9 * ymax,
                    "{what}: at {x}: {} vs {f}",
                    got.eval(*x)
                );
            }
            let cmax = want.coeffs.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (g, w) in got.coeffs().iter().zip(&want.coeffs) {
                assert!(
                    (g - w).abs() <= 1e-10 * cmax,
                    "{what}: {:?} vs {:?}",
                    got.coeffs(),
                    want.coeffs
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn an_exact_cubic_is_recovered() {
    let fx = fixture();
    let case = fx.cases.iter().find(|c| c.name == "exact-cubic").unwrap();
    let got = Polynomial::fit(&case.x, &case.y, 3).unwrap();
    // y was rounded to 9 decimals in the fixture.
    for (g, w) in got.coeffs().iter().zip([2.0, -1.0, 0.5, 0.01]) {
        assert!((g - w).abs() < 1e-6, "{:?}", got.coeffs());
    }
}

#[test]
fn fits_that_are_not_unique_or_not_finite_are_refused() {
    let fx = fixture();
    let case = fx.cases.iter().find(|c| c.name == "three-points").unwrap();
    assert_eq!(
        Polynomial::fit(&case.x, &case.y, 3),
        Err(FitError::Underdetermined {
            degree: 3,
            distinct: 3
        })
    );
    assert!(Polynomial::fit(&case.x, &case.y, 2).is_ok());
    assert_eq!(
        Polynomial::fit(&[0.1, f64::NAN], &[0.0, 1.0], 1),
        Err(FitError::NotFinite(1))
    );
    assert_eq!(
        Polynomial::fit(&[0.1], &[0.0, 1.0], 0),
        Err(FitError::Lengths(1, 2))
    );
    assert_eq!(
        Polynomial::fit(&[0.1; 9], &[0.0; 9], 8),
        Err(FitError::Degree(8))
    );
}
