//! Computes a testbed's reference feature statistics of real held-out
//! inputs with its embedded classifier and writes its embedded asset
//! (`Testbed::reference_asset`); then prints Fréchet distances that
//! calibrate the scale: real vs real (disjoint sets, several sizes) and
//! clearly wrong distributions.
//!
//! `cargo run --release -p tcc-testbed --example reference_stats [-- --testbed tiny|shapes160 --n N --out PATH]`
//!
//! The reference set is the held-out seed's indices
//! `REFERENCE_START .. REFERENCE_START + N` (default N = 5000); the
//! classifier's accuracy set (indices below 10000) is not used.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tcc_metrics::FeatureStats;
use tcc_testbed::{Classifier, Testbed, FEATURE_DIM, HELDOUT_SEED, REFERENCE_START, TRAIN_SEED};

type Error = Box<dyn std::error::Error>;

const DEFAULT_N: usize = 5000;
const BATCH: usize = 500;

/// Feature statistics of `n` inputs produced batch by batch by `make(start, len)`.
fn stats_of(
    model: &Classifier,
    n: usize,
    mut make: impl FnMut(usize, usize) -> Vec<f32>,
) -> Result<FeatureStats, Error> {
    let [c, h, w] = model.arch().input;
    let mut stats = FeatureStats::new(FEATURE_DIM);
    for start in (0..n).step_by(BATCH) {
        let m = BATCH.min(n - start);
        let x = Tensor::from_vec(make(start, m), (m, c, h, w), &Device::Cpu)?;
        model.accumulate_features(&mut stats, &x)?;
    }
    Ok(stats)
}

fn real(
    model: &Classifier,
    testbed: Testbed,
    seed: u64,
    first: u64,
    n: usize,
) -> Result<FeatureStats, Error> {
    stats_of(model, n, |s, m| {
        testbed.real_batch(seed, first + s as u64, m).0
    })
}

fn main() -> Result<(), Error> {
    let usage = "usage: reference_stats [--testbed tiny|shapes160] [--n N] [--out PATH]";
    let (mut testbed, mut n, mut out) = (Testbed::Tiny, DEFAULT_N, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--testbed", Some(v)) => {
                testbed = Testbed::from_name(&v).ok_or(format!("unknown testbed `{v}`; {usage}"))?
            }
            ("--n", Some(v)) => n = v.parse()?,
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            _ => return Err(usage.into()),
        }
    }
    let out = out.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(testbed.reference_asset())
    });
    let model = Classifier::load_embedded(testbed, &Device::Cpu)?;
    let reference = real(&model, testbed, HELDOUT_SEED, REFERENCE_START, n)?;
    let data = match testbed {
        Testbed::Tiny => "tcc-data shapes",
        Testbed::Shapes160 => "tcc-data shapes160 (haar2x2 latents)",
    };
    let meta: BTreeMap<String, String> = [
        (
            "feature_network",
            "tcc-testbed classifier (128-d pooled features)".to_string(),
        ),
        ("classifier_sha256", Classifier::embedded_sha256(testbed)),
        ("testbed", testbed.name().to_string()),
        ("data", data.to_string()),
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
        let s = real(&model, testbed, HELDOUT_SEED, after, m)?;
        println!(
            "FD real (held-out, n={m:5}) vs reference: {:.4}",
            s.frechet_distance(&reference)?
        );
    }
    // The training split: images the classifier saw once, and never saw.
    for first in [0, 1_000_000] {
        let s = real(&model, testbed, TRAIN_SEED, first, 5000)?;
        println!(
            "FD real (train split from index {first}, n= 5000) vs reference: {:.4}",
            s.frechet_distance(&reference)?
        );
    }

    // Clearly wrong distributions, 500 inputs each.
    let [c, h, w] = testbed.input_shape();
    let shuffled = stats_of(&model, 500, |s, m| {
        let mut x = testbed.real_batch(HELDOUT_SEED, after + s as u64, m).0;
        for (i, img) in x.chunks_mut(c * h * w).enumerate() {
            shuffle_pixels(img, c, h * w, (s + i) as u64);
        }
        x
    })?;
    println!(
        "FD pixel-shuffled real (n=500) vs reference: {:.4}",
        shuffled.frechet_distance(&reference)?
    );
    let mut state = 1u64;
    let noise = stats_of(&model, 500, |_, m| {
        (0..m * c * h * w)
            .map(|_| 2.0 * uniform(&mut state) - 1.0)
            .collect()
    })?;
    println!(
        "FD uniform noise (n=500) vs reference: {:.4}",
        noise.frechet_distance(&reference)?
    );
    Ok(())
}

/// Permutes the pixel positions of one `[c, h, w]` input (the same
/// permutation for all channels, so colours survive and shapes do not).
fn shuffle_pixels(img: &mut [f32], c: usize, hw: usize, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut perm: Vec<usize> = (0..hw).collect();
    for i in (1..hw).rev() {
        let j = (uniform(&mut state) * (i + 1) as f32) as usize % (i + 1);
        perm.swap(i, j);
    }
    let src = img.to_vec();
    for ch in 0..c {
        for (p, &q) in perm.iter().enumerate() {
            img[ch * hw + p] = src[ch * hw + q];
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
