//! The `shapes160` testbed model through the `tcc` binary: a clear exit-2
//! error while its weights are not trained, timing runs with random
//! weights, and images decoded from its Haar latents without a VAE.

use std::path::Path;

mod common;
use common::{assert_bad_input, assert_ok, tcc};

const WEIGHTS: &str = "crates/tcc-testbed/assets/shapes160/dit/diffusion_pytorch_model.safetensors";

/// Without trained weights every command that runs the model says which
/// file is missing and how to train it, exit status 2, and writes nothing.
#[test]
fn untrained_model_is_a_clear_error() {
    if Path::new(WEIGHTS).exists() {
        // Trained: the model samples, and the testbed scores it.
        let dir = tempfile::tempdir().unwrap();
        let grid = dir.path().join("grid.png");
        let out = tcc(&[
            "sample",
            "schedules/shapes160-full.sched",
            "--n",
            "2",
            "--grid",
            grid.to_str().unwrap(),
        ]);
        let stdout = assert_ok(&out);
        assert!(stdout.contains("testbed metrics"), "{stdout}");
        assert!(grid.exists());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.png");
    let priors = dir.path().join("p.safetensors");
    for args in [
        vec![
            "sample",
            "schedules/shapes160-full.sched",
            "--grid",
            grid.to_str().unwrap(),
        ],
        vec!["eval", "schedules/shapes160-fora3.sched", "--n", "2"],
        vec![
            "calibrate",
            "schedules/shapes160-fora2.sched",
            "--samples",
            "2",
            "--out",
            priors.to_str().unwrap(),
        ],
    ] {
        let stderr = assert_bad_input(&tcc(&args));
        for part in [
            args[1],
            "model `shapes160` has no trained weights",
            WEIGHTS,
            "tools/train/shapes160_gpu.sh",
            "--random-weights",
        ] {
            assert!(stderr.contains(part), "`{part}` not in: {stderr}");
        }
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// With random weights the model runs now, and its 4x32x32 latents are
/// written as 64x64 images (the inverse Haar map, no VAE needed).
#[test]
fn random_weights_sample_and_decode_latents() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.png");
    let out = tcc(&[
        "sample",
        "schedules/shapes160-fora3.sched",
        "--random-weights",
        "0",
        "--n",
        "2",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("sampled 2 x shapes160"), "{stdout}");
    assert!(
        !stdout.contains("testbed metrics"),
        "random weights are not scored: {stdout}"
    );
    let img = image::open(&grid).unwrap();
    // Two 64x64 samples side by side, each pixel drawn 4x4, 2 px padding.
    assert_eq!(
        (img.width(), img.height()),
        (2 * (4 * 64 + 2) + 2, 4 * 64 + 4)
    );
}
