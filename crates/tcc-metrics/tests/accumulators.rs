//! Shards merge to the one-pass result; statistics files round-trip and bad
//! files give errors naming the file.

use std::collections::BTreeMap;

use tcc_metrics::{
    cosine, rel_l2, BranchDistances, DataRange, ErrorStats, FeatureStats, MetricsError,
};

/// Deterministic pseudo-random values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[test]
fn feature_stats_shards_merge_to_one_pass() {
    let d = 7;
    let x = values(1, 53 * d);
    let mut one = FeatureStats::new(d);
    one.add_batch(&x).unwrap();
    // Three shards of different sizes, one of them row by row.
    let mut a = FeatureStats::new(d);
    a.add_batch(&x[..10 * d]).unwrap();
    let mut b = FeatureStats::new(d);
    for row in x[10 * d..40 * d].chunks(d) {
        b.add(row).unwrap();
    }
    let mut c = FeatureStats::new(d);
    c.add_batch(&x[40 * d..]).unwrap();
    a.merge(&b).unwrap();
    a.merge(&c).unwrap();
    assert_eq!(a.n(), 53);
    // Equal up to f64 summation order.
    assert!(close(a.sum(), one.sum(), 1e-13));
    assert!(close(a.sum_outer(), one.sum_outer(), 1e-13));
    assert!(close(
        &a.covariance().unwrap(),
        &one.covariance().unwrap(),
        1e-12
    ));

    // Covariance against a two-pass computation.
    let mean: Vec<f64> = (0..d)
        .map(|j| x.chunks(d).map(|r| r[j]).sum::<f64>() / 53.0)
        .collect();
    let cov = one.covariance().unwrap();
    for i in 0..d {
        for j in 0..d {
            let v: f64 = x
                .chunks(d)
                .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                .sum::<f64>()
                / 52.0;
            assert!((cov[i * d + j] - v).abs() < 1e-12);
        }
    }
    // Self-distance is ~0.
    assert!(one.frechet_distance(&one).unwrap().abs() < 1e-9);
}

#[test]
fn feature_stats_errors() {
    let mut s = FeatureStats::new(3);
    assert!(matches!(
        s.add(&[1.0f32, 2.0]),
        Err(MetricsError::Length { .. })
    ));
    assert!(s.add_batch(&[1.0f32; 4]).is_err());
    assert!(s.add(&[1.0, f64::NAN, 0.0]).is_err());
    assert_eq!(s.n(), 0, "failed adds leave the statistics untouched");
    s.add(&[1.0f32, 2.0, 3.0]).unwrap();
    assert!(matches!(
        s.covariance(),
        Err(MetricsError::TooFewSamples {
            needed: 2,
            have: 1,
            ..
        })
    ));
    assert!(s.merge(&FeatureStats::new(4)).is_err());
    assert!(FeatureStats::from_parts(1, vec![0.0; 2], vec![0.0; 3]).is_err());
}

#[test]
fn feature_stats_file_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref.safetensors");
    let mut s = FeatureStats::new(5);
    s.add_batch(&values(2, 40)).unwrap();
    let meta = BTreeMap::from([("network".to_string(), "test".to_string())]);
    s.save(&path, &meta).unwrap();
    let (back, back_meta) = FeatureStats::load(&path).unwrap();
    assert_eq!(back, s, "bit-exact round trip");
    assert_eq!(back_meta, meta);
    // No temporary files left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // JSON (serde) round trip, and validation on deserialisation. Not
    // bit-exact: serde_json's default float parser may be off by one ulp
    // (the safetensors file is the exact format).
    let json = serde_json::to_string(&s).unwrap();
    let back: FeatureStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back.n(), s.n());
    assert!(close(back.sum_outer(), s.sum_outer(), 1e-15));
    assert!(serde_json::from_str::<FeatureStats>(r#"{"n":1,"sum":[0.0],"sum_outer":[]}"#).is_err());

    // Truncated file.
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("truncated.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() - 9]).unwrap();
    let err = FeatureStats::load(&bad).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");
    // Missing file.
    let err = FeatureStats::load(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    // A safetensors file of another kind.
    let other = dir.path().join("other.safetensors");
    let t =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
    std::fs::write(&other, safetensors::serialize([("w", t)], None).unwrap()).unwrap();
    let err = FeatureStats::load(&other).unwrap_err().to_string();
    assert!(
        err.contains("other.safetensors") && err.contains("format"),
        "{err}"
    );
}

#[test]
fn error_stats_batch_and_merge() {
    let (a, b) = (values(3, 4 * 12), values(4, 4 * 12));
    let mut one = ErrorStats::new(DataRange::Signed);
    one.add_batch(&a, &b, 4).unwrap();
    assert_eq!(one.rel_l2.n(), 4);
    let mut s1 = ErrorStats::new(DataRange::Signed);
    s1.add_batch(&a[..12], &b[..12], 1).unwrap();
    let mut s2 = ErrorStats::new(DataRange::Signed);
    s2.add_batch(&a[12..], &b[12..], 3).unwrap();
    s1.merge(&s2).unwrap();
    assert!((s1.rel_l2.mean() - one.rel_l2.mean()).abs() < 1e-14);
    assert!((s1.psnr.std() - one.psnr.std()).abs() < 1e-12);
    let per_sample: Vec<f64> = a
        .chunks(12)
        .zip(b.chunks(12))
        .map(|(x, y)| rel_l2(x, y).unwrap())
        .collect();
    let mean = per_sample.iter().sum::<f64>() / 4.0;
    assert!((one.rel_l2.mean() - mean).abs() < 1e-14);
    assert!(one.add_batch(&a, &b, 5).is_err());
    assert!(one.merge(&ErrorStats::new(DataRange::Unit)).is_err());
}

#[test]
fn branch_distances_key_merge_and_values() {
    let len = 6;
    let cached: Vec<f32> = values(5, 3 * len).iter().map(|&v| v as f32).collect();
    let reference: Vec<f32> = values(6, 3 * len).iter().map(|&v| v as f32).collect();
    let mut one = BranchDistances::new();
    one.add_samples(3, "attn", 2, &cached, &reference, 3)
        .unwrap();
    one.add_samples(3, "mlp", 2, &reference, &reference, 3)
        .unwrap();
    one.add(5, "attn", 0, &cached[..len], &reference[..len])
        .unwrap();

    let e = one.get(3, "attn", 2).unwrap();
    assert_eq!(e.n(), 3);
    let rel: Vec<f64> = cached
        .chunks(len)
        .zip(reference.chunks(len))
        .map(|(c, r)| rel_l2(c, r).unwrap())
        .collect();
    assert!((e.rel_l2.mean() - rel.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    let cos0 = cosine(&cached[..len], &reference[..len]).unwrap();
    assert!((one.get(5, "attn", 0).unwrap().cosine.mean() - cos0).abs() < 1e-12);
    let pooled = rel_l2(&cached, &reference).unwrap();
    assert!((e.pooled_rel_l2() - pooled).abs() < 1e-12);
    let same = one.get(3, "mlp", 2).unwrap();
    assert_eq!(same.rel_l2.mean(), 0.0);
    assert!((same.cosine.mean() - 1.0).abs() < 1e-12);
    assert!(one.get(3, "attn", 1).is_none());

    // Shards: the same additions split over two accumulators.
    let mut a = BranchDistances::new();
    a.add_samples(3, "attn", 2, &cached[..len], &reference[..len], 1)
        .unwrap();
    a.add(5, "attn", 0, &cached[..len], &reference[..len])
        .unwrap();
    let mut b = BranchDistances::new();
    b.add_samples(3, "attn", 2, &cached[len..], &reference[len..], 2)
        .unwrap();
    b.add_samples(3, "mlp", 2, &reference, &reference, 3)
        .unwrap();
    a.merge(&b);
    let keys: Vec<_> = a
        .iter()
        .map(|(k, _)| (k.step, k.branch.clone(), k.layer))
        .collect();
    assert_eq!(
        keys,
        vec![
            (3, "attn".into(), 2),
            (3, "mlp".into(), 2),
            (5, "attn".into(), 0)
        ]
    );
    for ((_, x), (_, y)) in a.iter().zip(one.iter()) {
        assert_eq!(x.n(), y.n());
        assert!((x.rel_l2.mean() - y.rel_l2.mean()).abs() < 1e-14);
        assert!((x.pooled_rel_l2() - y.pooled_rel_l2()).abs() < 1e-14);
    }
    let steps = a.per_step();
    assert_eq!(steps[&3].n(), 6);
    assert_eq!(steps[&5].n(), 1);

    // JSON round trip keeps every entry (values to serde_json's float parsing).
    let json = serde_json::to_string(&a).unwrap();
    let back: BranchDistances = serde_json::from_str(&json).unwrap();
    assert_eq!(back.iter().count(), 3);
    for ((kx, x), (ky, y)) in back.iter().zip(a.iter()) {
        assert_eq!(kx, ky);
        assert_eq!(x.n(), y.n());
        assert!((x.pooled_rel_l2() - y.pooled_rel_l2()).abs() < 1e-14);
    }

    // Bad input.
    assert!(a.add(0, "attn", 0, &cached[..3], &reference[..4]).is_err());
    assert!(a.add(0, "attn", 0, &cached[..3], &[0.0f32; 3]).is_err());
    assert!(a.add_samples(0, "attn", 0, &cached, &reference, 4).is_err());
}
