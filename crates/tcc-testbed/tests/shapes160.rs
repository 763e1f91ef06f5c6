//! The shapes160 testbed: its classifier, reference statistics and model.

use candle_core::{DType, Device, Tensor};
use tcc_metrics::FeatureStats;
use tcc_testbed::{
    embedded_dit, reference_stats, reference_stats_with_metadata, Classifier, Testbed,
    TestbedError, FEATURE_DIM, HELDOUT_SEED, REFERENCE_START,
};

const TB: Testbed = Testbed::Shapes160;

fn inputs(x: Vec<f32>, n: usize) -> Tensor {
    Tensor::from_vec(x, (n, 4, 32, 32), &Device::Cpu).unwrap()
}

/// The shipped weights classify held-out latents of all 160 classes
/// (never trained on) with at least 95% accuracy.
#[test]
fn embedded_classifier_is_accurate_on_heldout_latents() {
    let model = Classifier::load_embedded(TB, &Device::Cpu).unwrap();
    let (x, labels) = TB.real_batch(HELDOUT_SEED, 0, 320);
    let pred = model.predict(&inputs(x, 320)).unwrap();
    let correct = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert!(correct >= 304, "{correct}/320 correct, expected >= 95%");
    assert_eq!(
        model.logits(&inputs(vec![0.0; 4096], 1)).unwrap().dims(),
        [1, 160]
    );
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let model = Classifier::load_embedded(TB, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.features(&x).unwrap_err();
    assert!(matches!(err, TestbedError::Input { .. }), "{err}");
    assert!(err.to_string().contains("expected [B, 4, 32, 32]"), "{err}");
}

#[test]
fn reference_stats_match_the_embedded_classifier() {
    let (stats, meta) = reference_stats_with_metadata(TB).unwrap();
    assert_eq!(stats.dim(), FEATURE_DIM);
    assert_eq!(stats.n(), 5000);
    assert_eq!(meta["classifier_sha256"], Classifier::embedded_sha256(TB));
    assert_ne!(
        meta["classifier_sha256"],
        Classifier::embedded_sha256(Testbed::Tiny)
    );
    assert_eq!(meta["testbed"], "shapes160");
    assert_eq!(meta["seed"], HELDOUT_SEED.to_string());
    assert_eq!(meta["start"], REFERENCE_START.to_string());
}

/// Fresh real latents are close to the reference statistics; latents whose
/// pixels were sorted per channel (same value histogram, no shapes) are far.
#[test]
fn frechet_distance_separates_real_from_wrong_latents() {
    let model = Classifier::load_embedded(TB, &Device::Cpu).unwrap();
    let reference = reference_stats(TB).unwrap();
    let n = 400;
    let (x, _) = TB.real_batch(HELDOUT_SEED, REFERENCE_START + 20_000, n);
    let fd = |x: Vec<f32>| {
        let mut stats = FeatureStats::new(FEATURE_DIM);
        model
            .accumulate_features(&mut stats, &inputs(x, n))
            .unwrap();
        stats.frechet_distance(&reference).unwrap()
    };
    let sorted: Vec<f32> = x
        .chunks(32 * 32)
        .flat_map(|plane| {
            let mut p = plane.to_vec();
            p.sort_by(f32::total_cmp);
            p
        })
        .collect();
    let (real, wrong) = (fd(x), fd(sorted));
    assert!(
        real * 10.0 < wrong,
        "FD real {real:.3} vs sorted {wrong:.3}"
    );
}

/// The forward pass against an independent PyTorch float64 implementation
/// (`tools/classifier_reference.py --testbed shapes160`) on the shipped
/// weights; tolerance 1e-4 relative to the largest magnitude.
#[test]
fn forward_matches_pytorch_reference() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/classifier_reference_shapes160.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let sha = header.metadata().as_ref().unwrap()["weights_sha256"].clone();
    assert_eq!(
        sha,
        Classifier::embedded_sha256(TB),
        "fixture is for other weights: rerun tools/classifier_reference.py --testbed shapes160"
    );
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let model = Classifier::load_embedded(TB, &Device::Cpu).unwrap();
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

/// Model outputs are unfolded into grey 64x64 images (the inverse of the
/// data set's fold), written to all three channels; classifier inputs are
/// clamped in image space.
#[test]
fn latents_unfold_into_the_data_sets_images() {
    let data = tcc_data::Shapes160::new(HELDOUT_SEED);
    let (latents, _) = TB.real_batch(HELDOUT_SEED, 7, 2);
    let (images, side) = TB.to_images(&latents, 2).unwrap();
    assert_eq!((images.len(), side), (2 * 3 * 64 * 64, 64));
    let want = data.batch(7, 2).0;
    for (s, grey) in want.chunks(4096).enumerate() {
        for ch in 0..3 {
            let got = &images[(s * 3 + ch) * 4096..][..4096];
            for (a, b) in got.iter().zip(grey) {
                assert!((a - b).abs() < 1e-6);
            }
        }
    }
    let err = TB.to_images(&latents[1..], 2).unwrap_err().to_string();
    assert!(err.contains("shapes160"), "{err}");
    assert!(Testbed::Tiny.to_images(&[0.0; 5], 1).is_err());
    assert_eq!(Testbed::from_name("shapes160"), Some(TB));
    assert_eq!(Testbed::from_name("tiny"), Some(Testbed::Tiny));
    assert_eq!(Testbed::from_name("dit-xl-2-256"), None);

    // Real latents are in range already; a latent whose image leaves [-1, 1]
    // is pulled back into it.
    let x = inputs(latents.clone(), 2);
    let same = TB.clamp_to_data_range(&x).unwrap();
    let diff = (same - &x).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    let loud = TB.clamp_to_data_range(&(x * 3.0).unwrap()).unwrap();
    let flat = loud.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (img, _) = TB.to_images(&flat, 2).unwrap();
    assert!(img.iter().all(|v| (-1.0 - 1e-5..=1.0 + 1e-5).contains(v)));
}

/// The committed config is the `shapes160` preset that schedules name.
#[test]
fn dit_config_is_the_preset() {
    let preset = tcc_core::ModelShape::preset("shapes160").unwrap();
    let cfg = tcc_model::DitConfig::from_shape(&preset).unwrap();
    let file: serde_json::Value = serde_json::from_str(tcc_testbed::SHAPES160_DIT_CONFIG).unwrap();
    let u = |k: &str| file[k].as_u64().unwrap() as usize;
    assert_eq!(u("num_layers"), cfg.depth);
    assert_eq!(
        u("num_attention_heads") * u("attention_head_dim"),
        cfg.hidden
    );
    assert_eq!(u("num_attention_heads"), cfg.heads);
    assert_eq!(u("patch_size"), cfg.patch);
    assert_eq!(u("sample_size"), cfg.input_size);
    assert_eq!((u("in_channels"), u("out_channels")), (4, 4));
    assert_eq!(u("num_embeds_ada_norm"), TB.classes());
    assert!(
        cfg.hidden <= TB.classes(),
        "class rows can span the hidden space"
    );
    assert!(cfg.depth >= 12);
}

/// Without trained weights in the tree the model is a clear error naming
/// the missing file and how to train it; with them, it is the committed
/// diffusers folder.
#[test]
fn embedded_dit_is_trained_or_says_how_to_train_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/shapes160/dit");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let dev = Device::Cpu;
    match embedded_dit(TB, DType::F32, &dev) {
        Err(e) => {
            assert!(
                !weights.exists(),
                "weights exist but were not embedded: {e}"
            );
            assert!(matches!(e, TestbedError::NotTrained { .. }), "{e}");
            let text = e.to_string();
            for part in [
                "shapes160",
                "assets/shapes160/dit/diffusion_pytorch_model.safetensors",
                "tools/train/shapes160_gpu.sh",
                "--random-weights",
            ] {
                assert!(text.contains(part), "`{part}` not in: {text}");
            }
            assert!(tcc_testbed::shapes160_training().is_none());
        }
        Ok(embedded) => {
            use tcc_model::BlockModel;
            let from_dir = tcc_model::Dit::load(&dir, None, DType::F32, &dev).unwrap();
            let x = Tensor::from_vec(
                (0..2 * 4096)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                    .collect(),
                (2, 4, 32, 32),
                &dev,
            )
            .unwrap();
            let t = Tensor::new(&[500f32, 20.0], &dev).unwrap();
            let y = Tensor::new(&[3u32, 160], &dev).unwrap();
            let a = embedded.forward(&x, &t, &y, None).unwrap();
            let b = from_dir.forward(&x, &t, &y, None).unwrap();
            assert_eq!(
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            let training: serde_json::Value =
                serde_json::from_str(tcc_testbed::shapes160_training().unwrap()).unwrap();
            assert!(training["steps"].as_u64().unwrap() > 0);
        }
    }
    // tiny is always embedded.
    assert!(embedded_dit(Testbed::Tiny, DType::F32, &dev).is_ok());
}
