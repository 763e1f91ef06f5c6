//! `tcc sample`: generate with a plan (cache, and priors if given).

use std::path::PathBuf;

use candle_core::Tensor;
use tcc_calib::{PriorHooks, PriorSet};
use tcc_exec::{Hooks, NoHooks};
use tcc_metrics::{DataRange, ErrorStats};

use crate::common::{CliError, Io};
use crate::device::{Runtime, PRIOR_DTYPE};
use crate::npz::{NpzWriter, SampleShard, SAMPLE_SHARD_FORMAT};
use crate::output::{to_nhwc_u8, write_latents};
use crate::runtime::{load_model, pipeline_dir, run_range, Captions, Inputs, ModelArgs};
use crate::scoring::TestbedScorer;

const EXAMPLES: &str = "\
Examples:
  tcc sample schedules/fora3.sched --grid out.png
  tcc sample schedules/fora3.sched --n 100 --class 3 --out samples/
  tcc sample schedules/fora3.sched --priors fora3.priors.safetensors --vs-full
  tcc sample schedules/full.sched --n 1000 --npz full.npz
  tcc sample schedules/full.sched --n 1000 --npz part3.npz --shard 3/8   (then: tcc merge --out full.npz part*.npz)
  tcc sample schedules/fora3.sched --device cuda --dtype bf16 --latents x.safetensors
  tcc sample pixart.sched --model hf:PixArt-alpha/PixArt-XL-2-256x256 --prompt \"a cat\" --grid out.png

The same --seed gives the same samples: sample i's noise is the i-th draw of
the seed's stream whatever the batch size. Without --class, sample i has
class i mod (number of classes). Schedules naming the `tiny` or `shapes160`
model without weights use the embedded testbed model. --model takes the model from a folder,
a checkpoint or a Hugging Face Hub repository instead of the schedule's
[model] section (docs/pixart.md).

--shard I/N samples only shard I (from 0) of N: contiguous whole batches of
--batch-size, the same samples, noise and classes as in the whole run; its
--npz is a partial file (with the samples' indices) that `tcc merge` joins
into the whole run's file, byte for byte (docs/scale.md). --npz is written
batch by batch: memory holds one batch of images.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule (.sched) to sample with.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of samples.
    #[arg(long, short = 'n', default_value_t = 16)]
    n: usize,
    /// Generate only this class (default: cycle through the classes).
    #[arg(long)]
    class: Option<usize>,
    /// Samples per model batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Apply the TCC priors of this file (from `tcc calibrate`).
    #[arg(long, value_name = "PRIORS")]
    priors: Option<PathBuf>,
    /// Write one PNG per sample into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write all samples as one PNG grid (one column per class when cycling
    /// through the classes).
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// Write the samples as an ADM-evaluator `.npz` (uint8 NHWC in `arr_0`,
    /// labels in `arr_1`).
    #[arg(long, value_name = "NPZ")]
    npz: Option<PathBuf>,
    /// Write the final latents (f32 `latents` [n, C, H, W], before any VAE)
    /// and the class or prompt index of each sample (`labels`) as
    /// safetensors.
    #[arg(long, value_name = "FILE")]
    latents: Option<PathBuf>,
    /// Also run full computation from the same noise and report each
    /// sample's error against it (relative L2, PSNR).
    #[arg(long)]
    vs_full: bool,
    /// Sample only shard I of N (I from 0): contiguous whole batches of the
    /// --n samples; --npz then writes a partial file for `tcc merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<tcc_core::Shard>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    if args.n == 0 || args.batch_size == 0 {
        return Err(CliError::input("--n and --batch-size must be at least 1"));
    }
    let rt = Runtime::from_args(&args.model.runtime)?;
    let plan = args.model.load_plan(&args.file, None, io.err)?;
    let model = load_model(&plan, &args.model, &rt)?;
    let mut hooks: Box<dyn Hooks> = match &args.priors {
        Some(path) => {
            let set = PriorSet::load(path).map_err(CliError::input)?;
            set.check_binding(&plan.hash().to_string(), &plan.model.name)
                .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
            Box::new(
                PriorHooks::from_set(&set, PRIOR_DTYPE, &rt.device)
                    .map_err(|e| CliError::Failure(e.to_string()))?,
            )
        }
        None => Box::new(NoHooks),
    };
    let captions = Captions::for_plan(&plan, &args.model, &rt)?;
    // Pixel-space models sample images; latent models need the pipeline's
    // VAE, checked before sampling so a missing one fails fast.
    let writes_images = args.out.is_some() || args.grid.is_some() || args.npz.is_some();
    // A testbed's latents (shapes160) decode without a VAE.
    let testbed = tcc_testbed::Testbed::from_name(&plan.model.name);
    let vae = if writes_images && plan.model.in_channels != 3 && testbed.is_none() {
        let dir = pipeline_dir(&plan, &args.model).map(|d| d.join("vae")).ok_or_else(|| {
            CliError::input(format!(
                "model `{}` samples {}-channel latents: writing images needs a VAE: make the weights a diffusers pipeline directory with vae/, or pass --pipeline DIR",
                plan.model.name, plan.model.in_channels
            ))
        })?;
        Some(tcc_vae::VaeDecoder::load(&dir, rt.vae_dtype(), &rt.device).map_err(CliError::input)?)
    } else {
        None
    };
    let inputs = Inputs::new(&plan, args.seed, args.n, args.class, captions.as_ref(), &rt)?;
    let shard = args.shard.unwrap_or(tcc_core::Shard::WHOLE);
    let range = shard
        .nonempty_samples(args.n, args.batch_size, "samples")
        .map_err(CliError::input)?;
    if !shard.is_whole() && (args.grid.is_some() || args.latents.is_some()) {
        return Err(CliError::input(
            "with --shard, write --npz (a partial file for `tcc merge`) or --out (PNGs named by sample index), not --grid or --latents",
        ));
    }
    let n = range.len();
    let classes = &inputs.labels[range.clone()];
    let scorer = if shard.is_whole()
        && args.n >= 2
        && plan.weights.is_none()
        && args.model.random_weights.is_none()
    {
        TestbedScorer::for_model(&plan.model.name, &rt.device)?
    } else {
        None
    };
    let decode = |x: &Tensor| -> Result<(Vec<f32>, usize), CliError> {
        let s = plan.model.input_size;
        let len = x.dim(0).map_err(|e| CliError::Failure(e.to_string()))?;
        Ok(match &vae {
            None => match testbed {
                Some(tb) => tb.to_images(&flat(x)?, len).map_err(CliError::input)?,
                None => (flat(x)?, s),
            },
            Some(vae) => {
                let img = vae
                    .decode(x)
                    .map_err(|e| CliError::Failure(e.to_string()))?;
                (flat(&img)?, s * vae.config().upscale())
            }
        })
    };
    // Started at the first batch, when the image size is known.
    let mut npz: Option<NpzWriter> = None;
    // The latents of every sample are kept only for what needs them all.
    let keep = args.out.is_some()
        || args.grid.is_some()
        || args.latents.is_some()
        || args.vs_full
        || scorer.is_some();
    rt.announce(io.err)?;
    let (x, time) = run_range(
        &model,
        &plan,
        &inputs,
        range.clone(),
        args.batch_size,
        hooks.as_mut(),
        "sampling",
        keep,
        &mut |_, latents| {
            if let Some(path) = &args.npz {
                let (imgs, s) = decode(latents)?;
                if npz.is_none() {
                    npz = Some(NpzWriter::create(path, n, s)?);
                }
                if let Some(w) = npz.as_mut() {
                    w.write_images(&to_nhwc_u8(&imgs, imgs.len() / (3 * s * s), s, s))?;
                }
            }
            Ok(())
        },
    )?;
    writeln!(
        io.out,
        "sampled {}{} x {} with {} in {:.2}s ({:.1} ms per sample-step)",
        n,
        if shard.is_whole() {
            String::new()
        } else {
            format!(
                " (shard {shard}: samples {}..{} of {})",
                range.start, range.end, args.n
            )
        },
        plan.model.name,
        plan.source,
        time.as_secs_f64(),
        1e3 * time.as_secs_f64() / (n * plan.steps.len()) as f64
    )?;
    if let Some(w) = npz {
        let path = args.npz.as_ref().expect("npz path");
        let meta = (!shard.is_whole())
            .then(|| -> Result<SampleShard, CliError> {
                Ok(SampleShard {
                    format: SAMPLE_SHARD_FORMAT.into(),
                    plan_hash: plan.hash().to_string(),
                    model: plan.model.name.clone(),
                    priors: args.priors.as_deref().map(sha256_file).transpose()?,
                    seed: args.seed,
                    n: args.n,
                    batch_size: args.batch_size,
                    class: args.class,
                    prompts: captions.as_ref().map(|c| sha256_lines(&c.prompts)),
                    shard,
                })
            })
            .transpose()?;
        let indices: Vec<u64> = (range.start as u64..range.end as u64).collect();
        w.finish(classes, meta.as_ref().map(|m| (&indices[..], m)))?;
        writeln!(io.out, "wrote {}", path.display())?;
    }
    let x = match x {
        Some(x) => x,
        None => return Ok(()),
    };

    if let Some(scorer) = scorer {
        let (fd, acc) = scorer.fd_and_accuracy(&x, classes)?;
        writeln!(
            io.out,
            "testbed metrics: class accuracy {acc:.3}, FD to real data {fd:.2} (n = {}; FD is biased upwards at small n, compare at equal n)",
            args.n
        )?;
    }

    if args.vs_full {
        let full = plan.all_compute();
        let (reference, full_time) = run_range(
            &model,
            &full,
            &inputs,
            range.clone(),
            args.batch_size,
            &mut NoHooks,
            "full",
            true,
            &mut |_, _| Ok(()),
        )?;
        let reference = reference.expect("kept");
        let mut err = ErrorStats::new(DataRange::Signed);
        let (a, b) = (flat(&x)?, flat(&reference)?);
        err.add_batch(&a, &b, n)
            .map_err(|e| CliError::Failure(e.to_string()))?;
        writeln!(
            io.out,
            "vs full computation: relative L2 {:.4} ± {:.4}, PSNR {:.2} ± {:.2} dB (n = {}); wall-time speedup {:.2}x",
            err.rel_l2.mean(),
            err.rel_l2.std(),
            err.psnr.mean(),
            err.psnr.std(),
            err.rel_l2.n(),
            full_time.as_secs_f64() / time.as_secs_f64()
        )?;
    }

    if let Some(path) = &args.latents {
        write_latents(path, &flat(&x)?, x.dims(), classes)?;
        writeln!(io.out, "wrote {}", path.display())?;
    }

    let decoded = std::cell::OnceCell::new();
    let images = || -> Result<(Vec<f32>, usize), CliError> {
        if let Some(d) = decoded.get() {
            return Ok(Clone::clone(d));
        }
        let out = decode(&x)?;
        let _ = decoded.set(out.clone());
        Ok(out)
    };
    let what = if captions.is_some() {
        "prompt"
    } else {
        "class"
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Failure(format!("{}: {e}", dir.display())))?;
        let (imgs, s) = images()?;
        let per = 3 * s * s;
        for (i, c) in classes.iter().enumerate() {
            let path = dir.join(format!("{:06}_{what}{c}.png", range.start + i));
            tcc_data::write_grid_png(
                &path,
                &imgs[i * per..(i + 1) * per],
                [1, 3, s, s],
                tcc_data::Grid {
                    nrow: 1,
                    pad: 0,
                    scale: 1,
                },
            )
            .map_err(|e| CliError::Failure(e.to_string()))?;
        }
        writeln!(io.out, "wrote {n} PNGs to {}", dir.display())?;
    }
    if let Some(path) = &args.grid {
        let (imgs, s) = images()?;
        let nrow = if let Some(c) = &captions {
            c.prompts.len().min(args.n)
        } else if args.class.is_none() {
            plan.model.num_classes.min(args.n)
        } else {
            args.n.min(10)
        };
        tcc_data::write_grid_png(
            path,
            &imgs,
            [args.n, 3, s, s],
            tcc_data::Grid {
                nrow,
                pad: 2,
                scale: 4,
            },
        )
        .map_err(|e| CliError::Failure(e.to_string()))?;
        writeln!(io.out, "wrote grid {}", path.display())?;
    }
    Ok(())
}

fn flat(t: &Tensor) -> Result<Vec<f32>, CliError> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| CliError::Failure(e.to_string()))
}

/// SHA-256 of a file, hex.
fn sha256_file(path: &std::path::Path) -> Result<String, CliError> {
    use sha2::Digest;
    let bytes =
        std::fs::read(path).map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}

/// SHA-256 of lines, each ended by a newline, hex.
fn sha256_lines(lines: &[String]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}
