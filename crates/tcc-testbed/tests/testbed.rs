//! Checks of the shipped classifier weights and reference statistics.

use candle_core::{Device, Tensor};
use tcc_data::{Dataset, CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use tcc_metrics::FeatureStats;
use tcc_testbed::{
    reference_stats, reference_stats_with_metadata, stats_from_bytes, Classifier, Testbed,
    TestbedError, FEATURE_DIM, HELDOUT_SEED, REFERENCE_START,
};

const TINY: Testbed = Testbed::Tiny;

fn images(x: Vec<f32>, n: usize) -> Tensor {
    Tensor::from_vec(x, (n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), &Device::Cpu).unwrap()
}

fn feature_stats(model: &Classifier, x: Vec<f32>, n: usize) -> FeatureStats {
    let mut stats = FeatureStats::new(FEATURE_DIM);
    for (i, chunk) in x.chunks(100 * IMAGE_LEN).enumerate() {
        let m = chunk.len() / IMAGE_LEN;
        assert!(i * 100 + m <= n);
        model
            .accumulate_features(&mut stats, &images(chunk.to_vec(), m))
            .unwrap();
    }
    stats
}

/// The shipped weights classify real held-out images (never trained on)
/// with at least 95% accuracy, the bar the testbed promises.
#[test]
fn embedded_classifier_is_accurate_on_heldout_images() {
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    let (x, labels) = Dataset::new(HELDOUT_SEED).batch(0, 200);
    let pred = model.predict(&images(x, 200)).unwrap();
    let correct = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert!(correct >= 190, "{correct}/200 correct, expected >= 95%");
}

#[test]
fn shapes_of_features_and_logits() {
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    let x = images(Dataset::new(HELDOUT_SEED).batch(0, 3).0, 3);
    let f = model.features(&x).unwrap();
    assert_eq!(f.dims(), [3, FEATURE_DIM]);
    // Means of ReLU outputs: finite, non-negative and not all zero.
    let v = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|a| a.is_finite() && *a >= 0.0));
    assert!(v.iter().any(|a| *a > 0.0));
    assert_eq!(model.logits(&x).unwrap().dims(), [3, 10]);
    assert_eq!(model.predict(&x).unwrap().len(), 3);
}

/// An image's features do not depend on the rest of its batch.
#[test]
fn features_are_per_image() {
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    let (x, _) = Dataset::new(HELDOUT_SEED).batch(0, 4);
    let all = model.features(&images(x.clone(), 4)).unwrap();
    let third = model
        .features(&images(x[2 * IMAGE_LEN..3 * IMAGE_LEN].to_vec(), 1))
        .unwrap();
    let a = all.get(2).unwrap().to_vec1::<f32>().unwrap();
    let b = third.get(0).unwrap().to_vec1::<f32>().unwrap();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()), "{p} vs {q}");
    }
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 3, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model.features(&x).unwrap_err();
    assert!(matches!(err, TestbedError::Input { .. }), "{err}");
    assert!(err.to_string().contains("[2, 3, 28, 28]"), "{err}");
}

#[test]
fn load_reports_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let err = Classifier::load(TINY, &missing, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err = Classifier::load(TINY, &garbage, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("garbage.safetensors"), "{err}");
}

/// The embedded statistics were computed with the embedded classifier, over
/// the documented images.
#[test]
fn reference_stats_match_the_embedded_classifier() {
    let (stats, meta) = reference_stats_with_metadata(TINY).unwrap();
    assert_eq!(stats.dim(), FEATURE_DIM);
    assert_eq!(stats.n(), 5000);
    assert_eq!(meta["classifier_sha256"], Classifier::embedded_sha256(TINY));
    assert_eq!(meta["seed"], HELDOUT_SEED.to_string());
    assert_eq!(meta["start"], REFERENCE_START.to_string());
}

/// Fresh real images (disjoint from the reference set) are close to the
/// reference statistics; images without shapes are far from them.
#[test]
fn frechet_distance_separates_real_from_wrong_images() {
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    let reference = reference_stats(TINY).unwrap();
    let n = 500;
    let (x, _) = Dataset::new(HELDOUT_SEED).batch(REFERENCE_START + 20_000, n);
    let real = feature_stats(&model, x.clone(), n)
        .frechet_distance(&reference)
        .unwrap();

    // Sorting each channel's pixels keeps every image's colour histogram
    // but destroys its shape.
    let sorted: Vec<f32> = x
        .chunks(IMAGE_SIZE * IMAGE_SIZE)
        .flat_map(|plane| {
            let mut p = plane.to_vec();
            p.sort_by(|a, b| a.total_cmp(b));
            p
        })
        .collect();
    let wrong = feature_stats(&model, sorted, n)
        .frechet_distance(&reference)
        .unwrap();
    assert!(
        real * 10.0 < wrong,
        "FD real {real:.3} should be far below FD of pixel-sorted images {wrong:.3}"
    );
}

#[test]
fn bad_statistics_bytes_are_a_clear_error() {
    let err = stats_from_bytes(b"garbage", "stats.safetensors").unwrap_err();
    assert!(err.to_string().contains("stats.safetensors"), "{err}");
}

/// The forward pass against an independent PyTorch float64 implementation
/// (`tools/classifier_reference.py`) on the shipped weights; tolerance
/// 1e-4 relative to the largest magnitude (f32 accumulation error).
#[test]
fn forward_matches_pytorch_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/classifier_reference.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let sha = header.metadata().as_ref().unwrap()["weights_sha256"].clone();
    assert_eq!(
        sha,
        Classifier::embedded_sha256(TINY),
        "fixture is for other weights: rerun tools/classifier_reference.py"
    );
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let model = Classifier::load_embedded(TINY, &Device::Cpu).unwrap();
    for (name, got) in [
        ("features", model.features(&t["images"]).unwrap()),
        ("logits", model.logits(&t["images"]).unwrap()),
    ] {
        assert_eq!(got.dims(), t[name].dims(), "{name}");
        let want = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * scale, "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn embedded_tiny_dit_is_the_shipped_diffusers_directory() {
    use tcc_model::BlockModel;
    let dev = candle_core::Device::Cpu;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-dit");
    let embedded = tcc_testbed::tiny_dit(candle_core::DType::F32, &dev).unwrap();
    let from_dir = tcc_model::Dit::load(&dir, None, candle_core::DType::F32, &dev).unwrap();
    let x = fixed_latents(&dev);
    let t = candle_core::Tensor::new(&[500f32, 20.0], &dev).unwrap();
    let y = candle_core::Tensor::new(&[3u32, 10], &dev).unwrap();
    let a = embedded.forward(&x, &t, &y, None).unwrap();
    let b = from_dir.forward(&x, &t, &y, None).unwrap();
    let (a, b) = (
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(a, b);
    let training: serde_json::Value = serde_json::from_str(tcc_testbed::TINY_DIT_TRAINING).unwrap();
    assert!(training["steps"].as_u64().unwrap() > 0);
}

/// Deterministic input latents `[2, 3, 32, 32]` without a sampler crate.
fn fixed_latents(dev: &candle_core::Device) -> candle_core::Tensor {
    let v: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    candle_core::Tensor::from_vec(v, (2, 3, 32, 32), dev).unwrap()
}
