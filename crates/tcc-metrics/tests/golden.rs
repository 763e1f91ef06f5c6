//! Checks against the numpy / scipy fixtures written by
//! `tools/golden/metrics.py` (run it from the repository root to refresh).

use serde_json::Value;
use tcc_metrics::{
    cosine, frechet_distance, psnr, rel_l2, wilcoxon_signed_rank, DataRange, ErrorStats,
    FeatureStats, WilcoxonMethod,
};

fn fixture(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn splitmix64(x: u64) -> u64 {
    let mut x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn small_ints(seed: u64, count: usize) -> Vec<f64> {
    (0..count as u64)
        .map(|i| ((splitmix64(seed * 1_000_003 + i) >> 33) % 129) as f64 - 64.0)
        .collect()
}

/// The fixture's feature rows, regenerated exactly as `features()` in
/// tools/golden/metrics.py does (all products and sums are exact in f64).
fn features(set: &Value, d: usize) -> Vec<f64> {
    let g = |k: &str| set[k].as_f64().unwrap();
    let (n, rank) = (g("n") as usize, g("rank") as usize);
    let z = small_ints(g("seed") as u64, n * rank);
    let a = small_ints(g("mix_seed") as u64, rank * d);
    let mut x = vec![0.0; n * d];
    for i in 0..n {
        for j in 0..d {
            let s: f64 = (0..rank)
                .map(|k| z[i * rank + k] / 64.0 * (a[k * d + j] / 64.0))
                .sum();
            x[i * d + j] = s * g("scale") + g("shift");
        }
    }
    x
}

fn stats_of(rows: &[f64], d: usize) -> FeatureStats {
    let mut s = FeatureStats::new(d);
    s.add_batch(rows).unwrap();
    s
}

/// Fréchet distance from FeatureStats vs pytorch-fid's formula with
/// scipy.linalg.sqrtm. Tolerance: 1e-6 relative to the distance. Where the
/// distance is ~0 (identical sets) the check is absolute, 1e-9 times
/// tr(S1) + tr(S2), the size of the terms that cancel.
#[test]
fn frechet_matches_scipy_sqrtm_formula() {
    for case in fixture("frechet") {
        let name = case["name"].as_str().unwrap();
        let d = case["dim"].as_u64().unwrap() as usize;
        let s1 = stats_of(&features(&case["set1"], d), d);
        let s2 = stats_of(&features(&case["set2"], d), d);
        let fd = s1.frechet_distance(&s2).unwrap();
        let expected = case["fd"].as_f64().unwrap();
        let scale: f64 = [&s1, &s2]
            .iter()
            .map(|s| {
                let c = s.covariance().unwrap();
                (0..d).map(|i| c[i * d + i]).sum::<f64>()
            })
            .sum();
        let err = (fd - expected).abs();
        if expected.abs() > 1e-6 * scale {
            assert!(
                err <= 1e-6 * expected.abs(),
                "{name}: {fd} vs scipy {expected}, relative error {}",
                err / expected.abs()
            );
        } else {
            assert!(err <= 1e-9 * scale, "{name}: {fd} vs scipy {expected}");
        }
    }
}

/// Mean and covariance against numpy's x.mean(0) and np.cov(x, rowvar=False)
/// to 1e-12 relative (plus 1e-12 absolute).
#[test]
fn mean_and_covariance_match_numpy() {
    let mut checked_cov = 0;
    for case in fixture("frechet") {
        let d = case["dim"].as_u64().unwrap() as usize;
        let s = stats_of(&features(&case["set1"], d), d);
        for (a, b) in s.mean().unwrap().iter().zip(floats(&case["mean1"])) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "mean {a} vs {b}");
        }
        if let Some(cov) = case.get("cov1") {
            checked_cov += 1;
            for (a, b) in s.covariance().unwrap().iter().zip(floats(cov)) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "cov {a} vs {b}");
            }
        }
    }
    assert!(checked_cov >= 2);
}

/// The same distance from the slice-level function with means/covariances
/// fed in directly (here: rank-deficient case, n < d).
#[test]
fn frechet_slice_api_agrees() {
    let case = fixture("frechet")
        .into_iter()
        .find(|c| c["name"] == "d64_rank_deficient")
        .unwrap();
    let s1 = stats_of(&features(&case["set1"], 64), 64);
    let s2 = stats_of(&features(&case["set2"], 64), 64);
    let fd = frechet_distance(
        &s1.mean().unwrap(),
        &s1.covariance().unwrap(),
        &s2.mean().unwrap(),
        &s2.covariance().unwrap(),
    )
    .unwrap();
    let expected = case["fd"].as_f64().unwrap();
    assert!((fd - expected).abs() <= 1e-6 * expected);
}

/// Two-sided p-value and statistic against scipy.stats.wilcoxon, to 1e-9
/// relative (exact p-values and statistics agree to rounding).
#[test]
fn wilcoxon_matches_scipy() {
    let cases = fixture("wilcoxon");
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let r = wilcoxon_signed_rank(&floats(&case["x"]), &floats(&case["y"])).unwrap();
        let method = match case["method"].as_str().unwrap() {
            "exact" => WilcoxonMethod::Exact,
            _ => WilcoxonMethod::Normal,
        };
        assert_eq!(r.method, method, "{name}");
        let (stat, p) = (
            case["statistic"].as_f64().unwrap(),
            case["pvalue"].as_f64().unwrap(),
        );
        assert!(
            (r.statistic - stat).abs() <= 1e-9 * stat.max(1.0),
            "{name}: statistic {} vs {stat}",
            r.statistic
        );
        assert!(
            (r.p_value - p).abs() <= 1e-9 * p,
            "{name}: p {} vs scipy {p}",
            r.p_value
        );
    }
}

/// Relative L2, PSNR and cosine against numpy, to 1e-12 relative.
#[test]
fn errors_match_numpy() {
    for case in fixture("errors") {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let range = if case["data_range"].as_f64().unwrap() == 1.0 {
            DataRange::Unit
        } else {
            DataRange::Signed
        };
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs();
        let want = |k: &str| case[k].as_f64().unwrap();
        assert!(close(rel_l2(&a, &b).unwrap(), want("rel_l2")), "{name}");
        assert!(close(psnr(&a, &b, range).unwrap(), want("psnr")), "{name}");
        assert!(close(cosine(&a, &b).unwrap(), want("cosine")), "{name}");
        let mut e = ErrorStats::new(range);
        e.add(&a, &b).unwrap();
        assert!(close(e.psnr.mean(), want("psnr")), "{name}");
    }
}
