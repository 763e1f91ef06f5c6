//! `tcc sample`: generate with a plan (cache, and priors if given).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Tensor;
use tcc_calib::PriorSet;
use tcc_exec::{Captions, Hooks, Inputs, NoHooks};
use tcc_metrics::{DataRange, ErrorStats};
use tcc_model::AnyModel;
use tcc_plan::Plan;

use tcc_fs::OutputKind;

use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::limits::{check_count, check_output, Memory, MAX_BATCH, MAX_SAMPLES};
use crate::npz::{NpzWriter, SampleShard, SAMPLE_SHARD_FORMAT};
use crate::output::{to_nhwc_u8, write_latents};
use crate::runtime::{
    load_captions, load_model, pipeline_dir, run_range, sample_inputs, ModelArgs,
};
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
the seed's stream whatever the batch size (drawn batch by batch). Outputs
are checked before sampling (their folders must exist; --out DIR is created
in an existing folder) and written atomically; a run that would not fit in
memory is refused with the estimate. Without --class, sample i has
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

/// The largest side of a `--grid` PNG, in pixels (image viewers and
/// decoders give up well before PNG's own limit).
const MAX_GRID_SIDE: usize = 1 << 16;

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let shard = args.shard.unwrap_or(tcc_core::Shard::WHOLE);
    let range = check_outputs(&args, shard)?;
    let rt = Runtime::from_args(&args.model.runtime)?;
    let plan = args.model.load_plan(&args.file, None, io.err)?;
    let run = Run::new(&args, &plan, shard, range);
    let priors = args.priors.as_deref().map(|p| load_priors(p, &plan));
    let priors = priors.transpose()?;
    let images = Images::plan(&args, &plan)?;
    crate::runtime::check_model_source(&plan, &args.model)?;
    let wants = Wants::of(&run, &images);
    let priors_bytes = priors.as_ref().map(|(_, bytes)| *bytes);
    memory(&run, &rt, wants.keep, priors_bytes, &images).check()?;

    let model = load_model(&plan, &args.model, &rt)?;
    let mut hooks = prior_hooks(priors.as_ref().map(|(set, _)| set), &rt)?;
    let captions = load_captions(&plan, &args.model, &rt)?;
    let decoder = images.decoder(&rt)?;
    let inputs = sample_inputs(&plan, args.seed, args.n, args.class, captions.as_ref(), &rt)?;
    let classes = &inputs.labels[run.range.clone()];
    let scorer = match wants.scorer {
        true => TestbedScorer::for_model(&plan.model.name, &rt.device)?,
        false => None,
    };
    let mut npz = run.create_npz(decoder.side)?;
    rt.announce(io.err)?;
    let mut realised = crate::realised::Realised::default();
    let (x, time) = crate::runtime::run_range(
        &model,
        &plan,
        &inputs,
        run.range.clone(),
        args.batch_size,
        hooks.as_mut(),
        "sampling",
        wants.keep,
        &mut |start, latents| match npz.as_mut() {
            Some(w) => decoder.write_npz_batch(w, latents, start),
            None => Ok(()),
        },
        plan.dynamic.is_some().then_some(&mut realised),
    )?;
    run.print_sampled(io, time)?;
    if let Some(d) = &plan.dynamic {
        writeln!(
            io.out,
            "dynamic policy {} (threshold {}), decided per batch:",
            d.policy, d.threshold
        )?;
        for line in realised.lines(&plan) {
            writeln!(io.out, "{line}")?;
        }
    }
    if let Some(w) = npz {
        run.finish_npz(io, w, classes, captions.as_ref())?;
    }
    let Some(x) = x else {
        return Ok(());
    };
    if let Some(scorer) = scorer {
        run.print_testbed_metrics(io, &scorer, &x, classes)?;
    }
    if args.vs_full {
        run.vs_full(io, &model, &inputs, &x, time)?;
    }
    let what = if captions.is_some() {
        "prompt"
    } else {
        "class"
    };
    run.write_kept(io, &images, &decoder, x, classes, what)
}

/// One sampling run: its arguments, plan, shard and this process's
/// samples.
struct Run<'a> {
    args: &'a Args,
    plan: &'a Plan,
    shard: tcc_core::Shard,
    range: Range<usize>,
}

/// What the run needs besides sampling, decided before any work.
struct Wants {
    /// The testbed's metrics (FD, accuracy) of the samples.
    scorer: bool,
    /// The latents of every sample, kept for what needs them all.
    keep: bool,
}

impl Wants {
    fn of(run: &Run, images: &Images) -> Wants {
        let (args, plan) = (run.args, run.plan);
        let scorer = run.shard.is_whole()
            && args.n >= 2
            && plan.weights.is_none()
            && args.model.random_weights.is_none()
            && images.testbed.is_some();
        let keep = args.out.is_some()
            || args.grid.is_some()
            || args.latents.is_some()
            || args.vs_full
            || scorer;
        Wants { scorer, keep }
    }
}

/// Hooks that apply `priors`, or none, on the runtime's device.
fn prior_hooks(priors: Option<&PriorSet>, rt: &Runtime) -> Result<Box<dyn Hooks>, CliError> {
    Ok(match priors {
        Some(set) => Box::new(set.hooks(&rt.device)?),
        None => Box::new(NoHooks),
    })
}

/// Checks the counts, the shard and every output before any work (no
/// folder is created but --out itself, in an existing folder); returns
/// this process's samples.
fn check_outputs(args: &Args, shard: tcc_core::Shard) -> Result<Range<usize>, CliError> {
    check_count("--n", args.n, MAX_SAMPLES)?;
    check_count("--batch-size", args.batch_size, MAX_BATCH)?;
    let range = shard
        .nonempty_samples(args.n, args.batch_size, "samples")
        .map_err(CliError::input)?;
    if !shard.is_whole() && (args.grid.is_some() || args.latents.is_some()) {
        return Err(CliError::input(
            "with --shard, write --npz (a partial file for `tcc merge`) or --out (PNGs named by sample index), not --grid or --latents",
        ));
    }
    if let Some(dir) = &args.out {
        check_output("--out", dir, OutputKind::Dir)?;
    }
    for (flag, path) in [
        ("--grid", &args.grid),
        ("--npz", &args.npz),
        ("--latents", &args.latents),
    ] {
        if let Some(path) = path {
            check_output(flag, path, OutputKind::File)?;
        }
    }
    Ok(range)
}

/// A priors file checked against `plan`, and its size in bytes.
fn load_priors(path: &Path, plan: &Plan) -> Result<(PriorSet, u64), CliError> {
    let set = PriorSet::load_for(path, plan).map_err(CliError::input)?;
    Ok((set, std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)))
}

/// How samples become images: pixel-space models sample them, a testbed's
/// latents (shapes160) decode without a VAE, other latent models need the
/// pipeline's VAE (its folder, config and weights file are checked
/// before sampling, so a missing one fails fast; its weights are read once
/// the model is loaded).
struct Images {
    testbed: Option<tcc_testbed::Testbed>,
    vae_files: Option<(PathBuf, tcc_vae::VaeFiles)>,
    /// Pixels a side.
    side: usize,
    grid: Option<tcc_data::Grid>,
}

impl Images {
    fn plan(args: &Args, plan: &Plan) -> Result<Images, CliError> {
        let writes_images = args.out.is_some() || args.grid.is_some() || args.npz.is_some();
        let testbed = tcc_testbed::Testbed::from_name(&plan.model.name);
        let needs_vae = writes_images && plan.model.in_channels != 3 && testbed.is_none();
        let vae_files = if needs_vae {
            let dir = pipeline_dir(plan, &args.model).map(|d| d.join("vae")).ok_or_else(|| {
                CliError::input(format!(
                    "model `{}` samples {}-channel latents: writing images needs a VAE: make the weights a diffusers pipeline directory with vae/, or pass --pipeline DIR",
                    plan.model.name, plan.model.in_channels
                ))
            })?;
            let files = tcc_vae::VaeDecoder::inspect(&dir).map_err(CliError::input)?;
            Some((dir, files))
        } else {
            None
        };
        let side = plan.model.input_size
            * match (&vae_files, testbed) {
                (Some((_, files)), _) => files.config.upscale(),
                (None, Some(tcc_testbed::Testbed::Shapes160)) => 2,
                _ => 1,
            };
        let pixart = plan.model.family == tcc_core::ModelFamily::Pixart;
        let prompts = if pixart {
            args.model.prompts()?.len()
        } else {
            0
        };
        let grid = args.grid.as_ref().map(|_| {
            let nrow = if pixart {
                prompts.max(1).min(args.n)
            } else if args.class.is_none() {
                plan.model.num_classes.min(args.n)
            } else {
                args.n.min(10)
            };
            tcc_data::Grid {
                nrow,
                pad: 2,
                scale: 4,
            }
        });
        if let Some(g) = &grid {
            let (w, h) = g.pixels(args.n, side, side);
            if w.max(h) > MAX_GRID_SIDE {
                return Err(CliError::input(format!(
                    "--grid: {} samples make a {w} x {h} pixel grid, more than {MAX_GRID_SIDE} pixels a side: write --out or --npz for this many",
                    args.n
                )));
            }
        }
        Ok(Images {
            testbed,
            vae_files,
            side,
            grid,
        })
    }

    /// The decoder, with the VAE's weights loaded on the runtime's device.
    fn decoder(&self, rt: &Runtime) -> Result<Decoder, CliError> {
        let vae = match &self.vae_files {
            Some((dir, _)) => Some(
                tcc_vae::VaeDecoder::load(dir, rt.vae_dtype(), &rt.device)
                    .map_err(CliError::input)?,
            ),
            None => None,
        };
        Ok(Decoder {
            vae,
            testbed: self.testbed,
            side: self.side,
        })
    }
}

/// What sampling holds at its peak (every sample's latents if `keep`).
fn memory(
    run: &Run,
    rt: &Runtime,
    keep: bool,
    priors_bytes: Option<u64>,
    images: &Images,
) -> Memory {
    let (args, plan, n) = (run.args, run.plan, run.range.len());
    let mut memory = Memory::new();
    memory
        .model(plan, &args.model, rt.dtype)
        .batch(plan, args.batch_size);
    if keep {
        // The batches' latents, their concatenation, and a host copy.
        memory.latents("final latents", plan, n, 3);
    }
    if args.vs_full {
        memory.latents("full computation's latents", plan, n, 2);
    }
    if let Some(bytes) = priors_bytes {
        // The file, its values in f64, the folded matrices.
        memory.add("priors", 4 * bytes as u128);
    }
    if let Some((_, files)) = &images.vae_files {
        // Its weights file is read whole, then converted.
        memory.add("the VAE", 2 * files.weights_bytes as u128);
    }
    let side = images.side;
    let pixels = |n: usize| n as u128 * 3 * (side * side) as u128;
    if args.out.is_some() || args.grid.is_some() {
        memory.add("images", 2 * 4 * pixels(n));
    }
    if args.npz.is_some() {
        // Written batch by batch: one batch's images and their uint8 copy.
        memory.add(
            "one batch of the .npz",
            (2 * 4 + 1) * pixels(args.batch_size.min(n)),
        );
    }
    if let Some(g) = &images.grid {
        let (w, h) = g.pixels(args.n, side, side);
        memory.add("the grid", 2 * 3 * (w * h) as u128);
    }
    memory
}

/// Turns final latents into images in [-1, 1], `[len, 3, side, side]`.
struct Decoder {
    vae: Option<tcc_vae::VaeDecoder>,
    testbed: Option<tcc_testbed::Testbed>,
    side: usize,
}

impl Decoder {
    /// Images of samples `start..start + len` (`x` holds `len`), refused
    /// if not finite; `bar` follows a VAE's progress.
    fn decode(
        &self,
        x: &Tensor,
        start: usize,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<Vec<f32>, CliError> {
        let len = x.dim(0).map_err(|e| CliError::Failure(e.to_string()))?;
        let imgs = match &self.vae {
            None => match self.testbed {
                Some(tb) => tb.to_images(&flat(x)?, len).map_err(CliError::input)?.0,
                None => flat(x)?,
            },
            Some(vae) => {
                let img = vae
                    .decode_with_progress(x, |done, _| {
                        if let Some(bar) = bar {
                            bar.set_position(done as u64)
                        }
                    })
                    .map_err(|e| CliError::Failure(e.to_string()))?;
                flat(&img)?
            }
        };
        check_finite(&imgs, self.side, start)?;
        Ok(imgs)
    }

    /// Every kept sample's images, behind a progress bar when a VAE decodes.
    fn decode_all(&self, x: &Tensor, start: usize) -> Result<Vec<f32>, CliError> {
        let n = x.dim(0).map_err(|e| CliError::Failure(e.to_string()))?;
        let bar = self
            .vae
            .as_ref()
            .map(|_| crate::runtime::progress("decoding", n as u64));
        let imgs = self.decode(x, start, bar.as_ref())?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(imgs)
    }

    /// Appends the images of one batch to the `.npz`.
    fn write_npz_batch(
        &self,
        w: &mut NpzWriter,
        latents: &Tensor,
        start: usize,
    ) -> Result<(), CliError> {
        let side = self.side;
        let imgs = self.decode(latents, start, None)?;
        let len = imgs.len() / (3 * side * side);
        w.write_images(&to_nhwc_u8(&imgs, len, side, side))
    }
}

impl<'a> Run<'a> {
    fn new(args: &'a Args, plan: &'a Plan, shard: tcc_core::Shard, range: Range<usize>) -> Self {
        Run {
            args,
            plan,
            shard,
            range,
        }
    }

    /// The `.npz` writer of --npz, for images `side` pixels a side.
    fn create_npz(&self, side: usize) -> Result<Option<NpzWriter>, CliError> {
        match &self.args.npz {
            Some(path) => Ok(Some(NpzWriter::create(path, self.range.len(), side)?)),
            None => Ok(None),
        }
    }

    fn print_sampled(&self, io: &mut Io, time: Duration) -> Result<(), CliError> {
        let (args, plan, range) = (self.args, self.plan, &self.range);
        let n = range.len();
        writeln!(
            io.out,
            "sampled {}{} x {} with {} in {:.2}s ({:.1} ms per sample-step)",
            n,
            if self.shard.is_whole() {
                String::new()
            } else {
                format!(
                    " (shard {}: samples {}..{} of {})",
                    self.shard, range.start, range.end, args.n
                )
            },
            plan.model.name,
            plan.source,
            time.as_secs_f64(),
            1e3 * time.as_secs_f64() / (n * plan.steps.len()) as f64
        )?;
        Ok(())
    }

    /// Finishes the `.npz` (a shard's with its metadata for `tcc merge`).
    fn finish_npz(
        &self,
        io: &mut Io,
        w: NpzWriter,
        classes: &[u32],
        captions: Option<&Captions>,
    ) -> Result<(), CliError> {
        let (args, plan, range) = (self.args, self.plan, &self.range);
        let path = args.npz.as_ref().expect("npz path");
        let meta = (!self.shard.is_whole())
            .then(|| -> Result<SampleShard, CliError> {
                Ok(SampleShard {
                    format: SAMPLE_SHARD_FORMAT.into(),
                    plan_hash: plan.hash(),
                    model: plan.model.name.clone(),
                    priors: args.priors.as_deref().map(sha256_file).transpose()?,
                    seed: args.seed,
                    n: args.n,
                    batch_size: args.batch_size,
                    class: args.class,
                    prompts: captions.map(|c| sha256_lines(&c.prompts)),
                    shard: self.shard,
                })
            })
            .transpose()?;
        let indices: Vec<u64> = (range.start as u64..range.end as u64).collect();
        w.finish(classes, meta.as_ref().map(|m| (&indices[..], m)))?;
        writeln!(io.out, "wrote {}", path.display())?;
        Ok(())
    }

    fn print_testbed_metrics(
        &self,
        io: &mut Io,
        scorer: &TestbedScorer,
        x: &Tensor,
        classes: &[u32],
    ) -> Result<(), CliError> {
        let (fd, acc) = scorer.fd_and_accuracy(x, classes)?;
        writeln!(
            io.out,
            "testbed metrics: class accuracy {acc:.3}, FD to real data {fd:.2} (n = {}; FD is biased upwards at small n, compare at equal n)",
            self.args.n
        )?;
        Ok(())
    }

    /// Runs full computation from the same noise and reports each sample's
    /// error against it, and the wall-time speedup over `time`.
    fn vs_full(
        &self,
        io: &mut Io,
        model: &AnyModel,
        inputs: &Inputs,
        x: &Tensor,
        time: Duration,
    ) -> Result<(), CliError> {
        let full = self.plan.all_compute();
        let (reference, full_time) = run_range(
            model,
            &full,
            inputs,
            self.range.clone(),
            self.args.batch_size,
            &mut NoHooks,
            "full",
            true,
            &mut |_, _| Ok(()),
            None,
        )?;
        let reference = reference.expect("kept");
        let mut err = ErrorStats::new(DataRange::Signed);
        let (a, b) = (flat(x)?, flat(&reference)?);
        err.add_batch(&a, &b, self.range.len())
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
        Ok(())
    }

    /// Writes what is made of the kept latents `x`: --latents, then the
    /// images of --out (one PNG per sample, named by index and `what`:
    /// class or prompt) and --grid.
    fn write_kept(
        &self,
        io: &mut Io,
        images: &Images,
        decoder: &Decoder,
        x: Tensor,
        classes: &[u32],
        what: &str,
    ) -> Result<(), CliError> {
        let args = self.args;
        if let Some(path) = &args.latents {
            write_latents(path, &flat(&x)?, x.dims(), classes)?;
            writeln!(io.out, "wrote {}", path.display())?;
        }
        if args.out.is_none() && args.grid.is_none() {
            return Ok(());
        }
        let start = self.range.start;
        let imgs = decoder.decode_all(&x, start)?;
        drop(x);
        let s = images.side;
        if let Some(dir) = &args.out {
            if !dir.is_dir() {
                std::fs::create_dir(dir)
                    .map_err(|e| CliError::Failure(format!("{}: {e}", dir.display())))?;
            }
            let per = 3 * s * s;
            for (i, c) in classes.iter().enumerate() {
                let path = dir.join(format!("{:06}_{what}{c}.png", start + i));
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
            writeln!(io.out, "wrote {} PNGs to {}", classes.len(), dir.display())?;
        }
        if let (Some(path), Some(g)) = (&args.grid, images.grid) {
            tcc_data::write_grid_png(path, &imgs, [args.n, 3, s, s], g)
                .map_err(|e| CliError::Failure(e.to_string()))?;
            writeln!(io.out, "wrote grid {}", path.display())?;
        }
        Ok(())
    }
}

/// Refuses images of samples `start..` with a non-finite value, naming the
/// first such sample: nothing is written from them.
fn check_finite(imgs: &[f32], side: usize, start: usize) -> Result<(), CliError> {
    match imgs.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(CliError::Failure(format!(
            "the decoded images are not finite (sample {}): nothing written",
            start + i / (3 * side * side)
        ))),
        None => Ok(()),
    }
}

fn flat(t: &Tensor) -> Result<Vec<f32>, CliError> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| CliError::Failure(e.to_string()))
}

/// SHA-256 of a file, hex.
pub(crate) fn sha256_file(path: &std::path::Path) -> Result<String, CliError> {
    use sha2::Digest;
    let bytes = tcc_fs::read_input(path, tcc_calib::MAX_PRIORS_BYTES)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
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
