//! Writes images of the 160-class data set as safetensors for the PyTorch
//! training script (`tools/train/train_tiny_dit.py`): `images` u8
//! `[N, 1, 64, 64]` (`tcc_data::to_u8` of the `[-1, 1]` values), `labels`
//! i64 `[N]`, metadata naming the data set, seed, first index and the
//! latent map the trainer applies (`haar2x2`, `tcc_data::haar_fold`), and
//! `check_latents` f32 `[min(N, 16), 4, 32, 32]`: this crate's fold of the
//! first images as the trainer reads them (`u8 / 127.5 - 1`), which the
//! trainer's own fold must reproduce.
//!
//! ```text
//! export_shapes160 OUT N [--seed S] [--start I] [--threads T]
//! ```
//!
//! Default seed: `tcc_data::TRAIN_SEED`. Rendering is split over T threads
//! (default: all cores); the output does not depend on T. The file is
//! written to a temporary name beside OUT and renamed.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::{Dtype, TensorView};
use tcc_data::{haar_fold, to_u8, Shapes160, TRAIN_SEED};

type Error = Box<dyn std::error::Error>;

/// Bound on N: 2^22 images are 17 GB of u8 pixels.
const MAX_N: usize = 1 << 22;

fn usage() -> Error {
    "usage: export_shapes160 OUT N [--seed S] [--start I] [--threads T]".into()
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or_else(usage)?);
    let n: usize = args.next().ok_or_else(usage)?.parse()?;
    if n == 0 || n > MAX_N {
        return Err(format!("N = {n}: expected 1 to {MAX_N}").into());
    }
    let (mut seed, mut start) = (TRAIN_SEED, 0u64);
    let mut threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match flag.as_str() {
            "--seed" => seed = value.parse()?,
            "--start" => start = value.parse()?,
            "--threads" => threads = value.parse::<usize>()?.max(1),
            _ => return Err(usage()),
        }
    }
    let t0 = std::time::Instant::now();
    let data = Shapes160::new(seed);
    let len = Shapes160::IMAGE_LEN;
    let mut pixels = vec![0u8; n * len];
    let mut labels = vec![0u8; n * 8];
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (k, (px, lb)) in pixels
            .chunks_mut(per * len)
            .zip(labels.chunks_mut(per * 8))
            .enumerate()
        {
            s.spawn(move || {
                for (j, (img, label)) in px.chunks_mut(len).zip(lb.chunks_mut(8)).enumerate() {
                    let (x, c) = data.sample(start + (k * per + j) as u64);
                    img.iter_mut().zip(&x).for_each(|(p, &v)| *p = to_u8(v));
                    label.copy_from_slice(&(c as i64).to_le_bytes());
                }
            });
        }
    });
    let side = Shapes160::SIZE;
    let k = n.min(16);
    let first: Vec<f32> = pixels[..k * len]
        .iter()
        .map(|&p| p as f32 / 127.5 - 1.0)
        .collect();
    let check: Vec<u8> = haar_fold(&first, [k, 1, side, side])?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let [lc, lh, lw] = Shapes160::LATENT_SHAPE;
    let tensors = vec![
        (
            "check_latents",
            TensorView::new(Dtype::F32, vec![k, lc, lh, lw], &check)?,
        ),
        (
            "images",
            TensorView::new(Dtype::U8, vec![n, 1, side, side], &pixels)?,
        ),
        ("labels", TensorView::new(Dtype::I64, vec![n], &labels)?),
    ];
    let meta: HashMap<String, String> = [
        ("data", "tcc-data shapes160".to_string()),
        ("seed", seed.to_string()),
        ("start", start.to_string()),
        ("classes", Shapes160::CLASSES.to_string()),
        ("latent", "haar2x2".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", out.display()))?;
    safetensors::tensor::serialize_to_file(tensors, Some(meta), tmp.path())?;
    tmp.persist(&out)
        .map_err(|e| format!("{}: {}", out.display(), e.error))?;
    println!(
        "wrote {n} images of seed {seed} from index {start} to {} in {:.1} s ({threads} threads)",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
