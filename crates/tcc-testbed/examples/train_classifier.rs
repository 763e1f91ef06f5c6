//! Trains a testbed's classifier / feature network on its data set and
//! writes its embedded asset (`assets/classifier.safetensors` for `tiny`,
//! `assets/shapes160/classifier.safetensors` for `shapes160`) atomically.
//!
//! `cargo run --release -p tcc-testbed --example train_classifier [-- --testbed tiny|shapes160 --steps N --out PATH]`
//!
//! Deterministic: seeded initialisation ([`Classifier::seeded_varmap`]),
//! batches `[step * B, (step + 1) * B)` of the training seed's data drawn
//! on the fly (every image is new), AdamW on the CPU. Fails, writing
//! nothing, unless the held-out accuracy on the first 2000 inputs of the
//! held-out seed reaches 95%.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tcc_testbed::{Classifier, Testbed, CLASSIFIER_SEED, HELDOUT_SEED, TRAIN_SEED};

type Error = Box<dyn std::error::Error>;

const BATCH: usize = 128;
const PEAK_LR: f64 = 2e-3;
const WARMUP: usize = 100;
const HELDOUT_N: usize = 2000;
const MIN_ACCURACY: f64 = 0.95;

/// Steps of the shipped classifiers.
fn default_steps(testbed: Testbed) -> usize {
    match testbed {
        Testbed::Tiny => 1200,
        Testbed::Shapes160 => 3000,
    }
}

fn inputs(
    testbed: Testbed,
    seed: u64,
    start: u64,
    n: usize,
    device: &Device,
) -> Result<(Tensor, Vec<usize>), Error> {
    let (x, y) = testbed.real_batch(seed, start, n);
    let [c, h, w] = testbed.input_shape();
    Ok((Tensor::from_vec(x, (n, c, h, w), device)?, y))
}

fn accuracy(model: &Classifier, testbed: Testbed, n: usize, device: &Device) -> Result<f64, Error> {
    let mut correct = 0;
    for start in (0..n).step_by(500) {
        let m = 500.min(n - start);
        let (x, labels) = inputs(testbed, HELDOUT_SEED, start as u64, m, device)?;
        let pred = model.predict(&x)?;
        correct += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok(correct as f64 / n as f64)
}

/// Linear warm-up, then cosine decay to zero.
fn learning_rate(step: usize, steps: usize) -> f64 {
    if step < WARMUP {
        PEAK_LR * (step + 1) as f64 / WARMUP as f64
    } else {
        let t = (step - WARMUP) as f64 / (steps - WARMUP).max(1) as f64;
        PEAK_LR * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

fn main() -> Result<(), Error> {
    let usage = "usage: train_classifier [--testbed tiny|shapes160] [--steps N] [--out PATH]";
    let (mut testbed, mut steps, mut out) = (Testbed::Tiny, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--testbed", Some(v)) => {
                testbed = Testbed::from_name(&v).ok_or(format!("unknown testbed `{v}`; {usage}"))?
            }
            ("--steps", Some(v)) => steps = Some(v.parse()?),
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            _ => return Err(usage.into()),
        }
    }
    let steps = steps.unwrap_or(default_steps(testbed));
    let out = out.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(testbed.classifier_asset())
    });
    let device = Device::Cpu;
    let varmap = Classifier::seeded_varmap(testbed, CLASSIFIER_SEED, &device)?;
    let model = Classifier::new(
        testbed,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let params = ParamsAdamW {
        lr: PEAK_LR,
        weight_decay: 1e-4,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;

    let t0 = Instant::now();
    let mut loss_sum = 0.0;
    for step in 0..steps {
        opt.set_learning_rate(learning_rate(step, steps));
        let (x, y) = inputs(testbed, TRAIN_SEED, (step * BATCH) as u64, BATCH, &device)?;
        let y = Tensor::new(y.into_iter().map(|c| c as u32).collect::<Vec<_>>(), &device)?;
        let loss = candle_nn::loss::cross_entropy(&model.logits(&x)?, &y)?;
        opt.backward_step(&loss)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        if (step + 1) % 100 == 0 {
            println!(
                "step {:5}  loss {:.6}  lr {:.2e}  {:.0} s",
                step + 1,
                loss_sum / 100.0,
                learning_rate(step, steps),
                t0.elapsed().as_secs_f64()
            );
            loss_sum = 0.0;
        }
        if (step + 1) % 500 == 0 && step + 1 < steps {
            let acc = accuracy(&model, testbed, 1000, &device)?;
            println!("  held-out accuracy (first 1000): {:.2}%", 100.0 * acc);
        }
    }
    let train_s = t0.elapsed().as_secs_f64();
    let acc = accuracy(&model, testbed, HELDOUT_N, &device)?;
    println!(
        "trained {steps} steps x {BATCH} images in {train_s:.0} s; held-out accuracy {:.2}% ({HELDOUT_N} images of seed {HELDOUT_SEED})",
        100.0 * acc
    );
    if acc < MIN_ACCURACY {
        return Err(format!(
            "held-out accuracy {acc:.4} < {MIN_ACCURACY}; not writing {}",
            out.display()
        )
        .into());
    }

    let vars = varmap.data().lock().map_err(|_| "poisoned VarMap")?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut blobs = Vec::new();
    for name in &names {
        let t = vars[*name].as_tensor();
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        blobs.push((name.as_str(), t.dims().to_vec(), bytes));
    }
    let views = blobs
        .iter()
        .map(|(n, s, b)| Ok((*n, TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let meta: HashMap<String, String> = [
        ("format", "tcc-classifier/1".to_string()),
        ("testbed", testbed.name().to_string()),
        (
            "strides",
            model
                .arch()
                .convs
                .iter()
                .map(|c| c.2.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("train_seed", TRAIN_SEED.to_string()),
        ("init_seed", CLASSIFIER_SEED.to_string()),
        ("steps", steps.to_string()),
        ("batch", BATCH.to_string()),
        ("heldout_accuracy", format!("{acc:.4}")),
        (
            "heldout",
            format!("seed {HELDOUT_SEED}, indices 0..{HELDOUT_N}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors::serialize(views, Some(meta))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(&out)?;
    println!("wrote {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}
