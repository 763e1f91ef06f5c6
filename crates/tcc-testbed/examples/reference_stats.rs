//! Computes the reference feature statistics of real held-out images with
//! the embedded classifier and writes `assets/reference_stats.safetensors`;
//! then prints Fréchet distances that calibrate the scale: real vs real
//! (disjoint sets, several sizes) and clearly wrong distributions.
//!
//! `cargo run --release -p tcc-testbed --example reference_stats [-- --n N --out PATH]`
//!
//! The reference set is `Dataset::new(HELDOUT_SEED)` indices
//! `REFERENCE_START .. REFERENCE_START + N` (default N = 5000); the
//! classifier's accuracy set (indices below 10000) is not used.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tcc_data::{Dataset, CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use tcc_metrics::FeatureStats;
use tcc_testbed::{Classifier, FEATURE_DIM, HELDOUT_SEED, REFERENCE_START, TRAIN_SEED};

type Error = Box<dyn std::error::Error>;

const DEFAULT_N: usize = 5000;
const BATCH: usize = 500;

/// Feature statistics of `n` images produced batch by batch by `make(start, len)`.
fn stats_of(
    model: &Classifier,
    n: usize,
    mut make: impl FnMut(usize, usize) -> Vec<f32>,
) -> Result<FeatureStats, Error> {
    let mut stats = FeatureStats::new(FEATURE_DIM);
    for start in (0..n).step_by(BATCH) {
        let m = BATCH.min(n - start);
        let x = Tensor::from_vec(
            make(start, m),
            (m, CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
            &Device::Cpu,
        )?;
        model.accumulate_features(&mut stats, &x)?;
    }
    Ok(stats)
}

fn real(model: &Classifier, seed: u64, first: u64, n: usize) -> Result<FeatureStats, Error> {
    let data = Dataset::new(seed);
    stats_of(model, n, |s, m| data.batch(first + s as u64, m).0)
}

fn main() -> Result<(), Error> {
    let mut n = DEFAULT_N;
    let mut out = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/reference_stats.safetensors"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--n", Some(v)) => n = v.parse()?,
            ("--out", Some(v)) => out = v.into(),
            _ => return Err("usage: reference_stats [--n N] [--out PATH]".into()),
        }
    }
    let model = Classifier::load_embedded(&Device::Cpu)?;
    let reference = real(&model, HELDOUT_SEED, REFERENCE_START, n)?;
    let meta: BTreeMap<String, String> = [
        (
            "feature_network",
            "tcc-testbed classifier (128-d pooled features)".to_string(),
        ),
        ("classifier_sha256", Classifier::embedded_sha256()),
        ("data", "tcc-data shapes".to_string()),
        ("seed", HELDOUT_SEED.to_string()),
        ("start", REFERENCE_START.to_string()),
        ("n", n.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    reference.save(&out, &meta)?;
    println!(
        "wrote {} ({n} images of seed {HELDOUT_SEED} from index {REFERENCE_START})",
        out.display()
    );

    // Real vs real: disjoint held-out sets after the reference range, and the training split.
    let after = REFERENCE_START + n as u64;
    for m in [500, 1000, 5000] {
        let s = real(&model, HELDOUT_SEED, after, m)?;
        println!(
            "FD real (held-out, n={m:5}) vs reference: {:.4}",
            s.frechet_distance(&reference)?
        );
    }
    // The training split: images the classifier saw once, and never saw.
    for first in [0, 1_000_000] {
        let s = real(&model, TRAIN_SEED, first, 5000)?;
        println!(
            "FD real (train split from index {first}, n= 5000) vs reference: {:.4}",
            s.frechet_distance(&reference)?
        );
    }

    // Clearly wrong distributions, 500 images each.
    let data = Dataset::new(HELDOUT_SEED);
    let shuffled = stats_of(&model, 500, |s, m| {
        let mut x = data.batch(after + s as u64, m).0;
        for (i, img) in x.chunks_mut(IMAGE_LEN).enumerate() {
            shuffle_pixels(img, (s + i) as u64);
        }
        x
    })?;
    println!(
        "FD pixel-shuffled real (n=500) vs reference: {:.4}",
        shuffled.frechet_distance(&reference)?
    );
    let mut state = 1u64;
    let noise = stats_of(&model, 500, |_, m| {
        (0..m * IMAGE_LEN)
            .map(|_| 2.0 * uniform(&mut state) - 1.0)
            .collect()
    })?;
    println!(
        "FD uniform noise (n=500) vs reference: {:.4}",
        noise.frechet_distance(&reference)?
    );
    Ok(())
}

/// Permutes the pixel positions of one `[3, 32, 32]` image (the same
/// permutation for all channels, so colours survive and shapes do not).
fn shuffle_pixels(img: &mut [f32], seed: u64) {
    let hw = IMAGE_SIZE * IMAGE_SIZE;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut perm: Vec<usize> = (0..hw).collect();
    for i in (1..hw).rev() {
        let j = (uniform(&mut state) * (i + 1) as f32) as usize % (i + 1);
        perm.swap(i, j);
    }
    let src = img.to_vec();
    for c in 0..CHANNELS {
        for (p, &q) in perm.iter().enumerate() {
            img[c * hw + p] = src[c * hw + q];
        }
    }
}

/// xorshift64 uniform in [0, 1).
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 40) as f32 / (1u64 << 24) as f32
}
