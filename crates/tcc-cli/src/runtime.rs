//! What the commands that run a model share: loading the model a plan
//! names, building seeded batches of (noise, condition), and running plans.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use tcc_core::ModelFamily;
use tcc_exec::{Captions, Hooks, Inputs, Trajectory};
use tcc_model::{AnyModel, Dit, DitConfig, PixArt, PixArtConfig};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

use crate::device::{Runtime, RuntimeArgs};
use crate::error::CliError;
use crate::hub::Need;

/// Options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Take the model from SOURCE instead of the schedule's [model]
    /// location: a diffusers pipeline or transformer folder, a checkpoint
    /// file (replaces only the weights), or hf:ORG/NAME[@REVISION],
    /// downloaded into the Hugging Face cache (HF_HOME, HF_ENDPOINT,
    /// HF_TOKEN). See docs/pixart.md.
    #[arg(long = "model", value_name = "SOURCE")]
    pub source: Option<String>,
    /// Run with seeded random weights instead of the schedule's weights
    /// (for timing runs of large models whose weights you do not have).
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
    /// Text-conditional models (PixArt-α): a prompt; repeat for several.
    /// Sample i gets prompt i mod (number of prompts).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// Text-conditional models: a file with one prompt per line (blank lines
    /// are skipped); added after the --prompt ones.
    #[arg(long = "prompts", value_name = "FILE")]
    pub prompts_file: Option<PathBuf>,
    /// Where caption embeddings are cached between runs (default:
    /// $XDG_CACHE_HOME/tcc/embeddings or ~/.cache/tcc/embeddings).
    #[arg(long, value_name = "DIR")]
    pub embeddings_cache: Option<PathBuf>,
    /// Precision of the T5 text encoder: bf16 (T5-XXL ~9.5 GB), f32
    /// (~19 GB), or q8_0 / q4_0 (~5 / ~2.7 GB; the GGUF file that
    /// `tcc quantize-t5` writes into text_encoder/). Embeddings are f32
    /// either way.
    #[arg(long, value_name = "DTYPE", default_value = "bf16", value_parser = ["bf16", "f32", "q8_0", "q4_0"])]
    pub text_dtype: String,
    /// A diffusers pipeline folder to take text_encoder/, tokenizer/ and
    /// vae/ from (default: the folder of the model's weights). Needed when
    /// the weights are a single checkpoint file, such as PixArt's `.pth`.
    #[arg(long, value_name = "DIR")]
    pub pipeline: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl ModelArgs {
    /// What of an `hf:` repository the run reads: configs only for random
    /// weights, else the pipeline.
    pub fn need(&self) -> Need {
        if self.random_weights.is_some() {
            Need::Config
        } else {
            Need::Pipeline
        }
    }

    /// The prompts of `--prompt` and then `--prompts FILE` (one per line,
    /// blank lines skipped).
    pub fn prompts(&self) -> Result<Vec<String>, CliError> {
        let mut prompts = self.prompt.clone();
        if let Some(path) = &self.prompts_file {
            let text = tcc_fs::read_input_text(path, MAX_PROMPTS_BYTES)
                .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
            prompts.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
            if prompts.is_empty() {
                return Err(CliError::input(format!(
                    "{}: no prompts in the file",
                    path.display()
                )));
            }
        }
        Ok(prompts)
    }

    /// The schedule `file`'s plan, with `--model` and `steps` applied.
    pub fn load_plan(
        &self,
        file: &Path,
        steps: Option<u64>,
        err: &mut dyn std::io::Write,
    ) -> Result<Plan, CliError> {
        crate::common::load_plan_with(file, self.source.as_deref(), steps, self.need(), err)
    }

    /// [`ModelArgs::load_plan`] with `edit` applied to the parsed schedule
    /// before it is compiled.
    pub fn load_plan_edited(
        &self,
        file: &Path,
        steps: Option<u64>,
        err: &mut dyn std::io::Write,
        edit: &mut dyn FnMut(&mut tcc_schedule::Schedule) -> Result<(), CliError>,
    ) -> Result<Plan, CliError> {
        crate::common::load_plan_edited(file, self.source.as_deref(), steps, self.need(), err, edit)
    }
}

/// The most bytes of a `--prompts` file (COCO's 30k captions take 2 MB).
const MAX_PROMPTS_BYTES: u64 = 1 << 30;

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failure(e.to_string())
}

/// The model a plan names: the schedule's `weights`, the embedded testbed
/// model for `tiny` / `shapes160`, or random weights when asked for; on
/// the runtime's device, in its dtype.
pub fn load_model(plan: &Plan, args: &ModelArgs, rt: &Runtime) -> Result<AnyModel, CliError> {
    match plan.model.family {
        ModelFamily::Dit => load_dit(plan, args, rt).map(AnyModel::Dit),
        ModelFamily::Pixart => {
            let cfg = PixArtConfig::from_shape(&plan.model).map_err(CliError::input)?;
            if let Some(seed) = args.random_weights {
                return PixArt::random(&cfg, seed, rt.dtype, &rt.device)
                    .map(AnyModel::PixArt)
                    .map_err(fail);
            }
            match &plan.weights {
                Some(path) => {
                    PixArt::load_with_config(Path::new(path), Some(&cfg), rt.dtype, &rt.device)
                        .map(AnyModel::PixArt)
                        .map_err(CliError::input)
                }
                None => Err(no_weights(plan)),
            }
        }
    }
}

/// What [`load_model`] would refuse before reading any weights: no
/// weights at all, a testbed this build has no trained weights for, weights
/// paths that are missing or not regular files. Cheap: commands call it
/// before the memory check, so that a run without a model says so first.
pub fn check_model_source(plan: &Plan, args: &ModelArgs) -> Result<(), CliError> {
    if args.random_weights.is_some() {
        return Ok(());
    }
    match &plan.weights {
        Some(path) => tcc_model::weight_files(Path::new(path))
            .map(drop)
            .map_err(CliError::input),
        None => match tcc_testbed::Testbed::from_name(&plan.model.name) {
            Some(testbed) if plan.model.family == ModelFamily::Dit => {
                tcc_testbed::check_embedded(testbed)
                    .map_err(|e| CliError::input(format!("{}: {e}", plan.source)))
            }
            _ => Err(no_weights(plan)),
        },
    }
}

fn no_weights(plan: &Plan) -> CliError {
    CliError::input(format!(
        "{}: model `{}` has no weights: add `weights = \"PATH\"` to its [model] section, or pass --random-weights SEED for a timing run",
        plan.source, plan.model.name
    ))
}

fn load_dit(plan: &Plan, args: &ModelArgs, rt: &Runtime) -> Result<Dit, CliError> {
    let cfg = DitConfig::from_shape(&plan.model).map_err(CliError::input)?;
    if let Some(seed) = args.random_weights {
        return Dit::random(&cfg, seed, rt.dtype, &rt.device).map_err(fail);
    }
    match &plan.weights {
        Some(path) => {
            Dit::load(Path::new(path), Some(&cfg), rt.dtype, &rt.device).map_err(CliError::input)
        }
        None => {
            let Some(testbed) = tcc_testbed::Testbed::from_name(&plan.model.name) else {
                return Err(no_weights(plan));
            };
            let model = tcc_testbed::embedded_dit(testbed, rt.dtype, &rt.device).map_err(|e| {
                match e {
                    // Not trained yet: the user has to act (exit 2), as for missing weights.
                    tcc_testbed::TestbedError::NotTrained { .. } => {
                        CliError::input(format!("{}: {e}", plan.source))
                    }
                    e => CliError::Failure(format!("the embedded testbed model: {e}")),
                }
            })?;
            let got = model.config();
            let same = (got.depth, got.hidden, got.heads, got.patch, got.input_size)
                == (cfg.depth, cfg.hidden, cfg.heads, cfg.patch, cfg.input_size)
                && (got.in_channels, got.out_channels, got.num_classes)
                    == (cfg.in_channels, cfg.out_channels, cfg.num_classes);
            if !same {
                return Err(CliError::Failure(format!(
                    "the embedded testbed model does not have the `{}` preset's shape",
                    plan.model.name
                )));
            }
            Ok(model)
        }
    }
}

/// The diffusers pipeline directory to take the text encoder and VAE from:
/// `--pipeline`, else the folder holding `transformer/` that the plan's
/// weights live in, if any.
pub fn pipeline_dir(plan: &Plan, args: &ModelArgs) -> Option<PathBuf> {
    if let Some(dir) = &args.pipeline {
        return Some(dir.clone());
    }
    let w = PathBuf::from(plan.weights.as_ref()?);
    [w.clone(), w.parent()?.to_path_buf()]
        .into_iter()
        .find(|d| d.join("transformer").is_dir())
}

/// The captions of `args` for `plan`: `None` for class-conditional
/// models. Prompts are encoded by the pipeline's T5 (cached on disk);
/// with `--random-weights` and no prompts, seeded random embeddings
/// stand in (timing runs). Embeddings are f32, on the runtime's device.
pub fn load_captions(
    plan: &Plan,
    args: &ModelArgs,
    rt: &Runtime,
) -> Result<Option<Captions>, CliError> {
    let m = &plan.model;
    if m.family != ModelFamily::Pixart {
        if !args.prompt.is_empty() || args.prompts_file.is_some() {
            return Err(CliError::input(format!(
                "model `{}` is class-conditional: --prompt / --prompts apply to text-conditional models (PixArt-α)",
                m.name
            )));
        }
        return Ok(None);
    }
    let prompts = args.prompts()?;
    let (l, c) = (m.caption_tokens, m.caption_dim);
    if prompts.is_empty() {
        if let Some(seed) = args.random_weights {
            let dev = &rt.device;
            let emb = NoiseRng::new(seed ^ 0xc4)
                .randn((1, l, c), dev)
                .map_err(fail)?;
            let ones = Tensor::ones((1, l), DType::F32, dev).map_err(fail)?;
            return Ok(Some(Captions {
                prompts: vec!["<random embedding>".into()],
                null_emb: emb.zeros_like().map_err(fail)?,
                null_mask: ones.clone(),
                emb,
                mask: ones,
            }));
        }
        return Err(CliError::input(format!(
            "model `{}` is text-conditional: give --prompt TEXT or --prompts FILE",
            m.name
        )));
    }
    let dir = pipeline_dir(plan, args).ok_or_else(|| {
        CliError::input(format!(
            "{}: encoding prompts needs a diffusers pipeline directory with text_encoder/ and tokenizer/: make it the model's weights or pass --pipeline DIR",
            plan.source
        ))
    })?;
    let mut encoder = tcc_text::TextEncoder::load(
        &dir.join("text_encoder"),
        &dir.join("tokenizer"),
        args.text_dtype
            .parse::<tcc_text::TextPrecision>()
            .map_err(CliError::input)?,
        &rt.device,
    )
    .map_err(CliError::input)?;
    if encoder.d_model() != c {
        return Err(CliError::input(format!(
            "{}: the text encoder gives {}-wide embeddings, the transformer expects {c}",
            dir.display(),
            encoder.d_model()
        )));
    }
    let cache_dir = match &args.embeddings_cache {
        Some(d) => d.clone(),
        None => default_cache_dir(),
    };
    let cache = tcc_text::EmbeddingCache::open(cache_dir).map_err(fail)?;
    let (emb, mask) = encoder.encode_cached(&cache, &prompts, l).map_err(fail)?;
    let (null_emb, null_mask) = encoder
        .encode_cached(&cache, &[String::new()], l)
        .map_err(fail)?;
    Ok(Some(Captions {
        prompts,
        emb,
        mask: mask.to_dtype(DType::F32).map_err(fail)?,
        null_emb,
        null_mask: null_mask.to_dtype(DType::F32).map_err(fail)?,
    }))
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tcc").join("embeddings")
}

/// `n` samples of `seed`: all of `class` or cycling through the classes,
/// or cycling through the prompts of `captions`; on the runtime's device.
pub fn sample_inputs<'a>(
    plan: &Plan,
    seed: u64,
    n: usize,
    class: Option<usize>,
    captions: Option<&'a Captions>,
    rt: &Runtime,
) -> Result<Inputs<'a>, CliError> {
    let m = &plan.model;
    match (captions, class) {
        (Some(_), Some(_)) => Err(CliError::input(format!(
            "--class applies to class-conditional models; `{}` takes prompts",
            m.name
        ))),
        (None, Some(c)) if c >= m.num_classes => Err(CliError::input(format!(
            "--class {c} is out of range: model `{}` has classes 0..{}",
            m.name,
            m.num_classes.saturating_sub(1)
        ))),
        (None, Some(c)) => Ok(Inputs::new(
            plan,
            seed,
            vec![c as u32; n],
            captions,
            &rt.device,
        )),
        (_, None) => Ok(Inputs::cycling(plan, seed, n, captions, &rt.device)),
    }
}

/// Run `plan` over samples `range` in batches of the whole run's (the
/// first starts at `range.start`: a shard's batches are the single run's),
/// calling `each(start, latents)` after every batch. Returns the final
/// latents of the range if `keep` (else `None`: memory holds one batch)
/// and the wall time spent in the model (not in `each`). With `realised`,
/// records what a dynamic plan decided for each batch.
#[allow(clippy::too_many_arguments)]
pub fn run_range(
    model: &AnyModel,
    plan: &Plan,
    inputs: &Inputs,
    range: std::ops::Range<usize>,
    batch_size: usize,
    hooks: &mut dyn Hooks,
    label: &str,
    keep: bool,
    each: &mut dyn FnMut(usize, &Tensor) -> Result<(), CliError>,
    mut realised: Option<&mut crate::realised::Realised>,
) -> Result<(Option<Tensor>, Duration), CliError> {
    let bar = progress(label, (range.len() * plan.steps.len()) as u64);
    let mut outs = Vec::new();
    let started = std::time::Instant::now();
    let mut outside = Duration::ZERO;
    for batch in inputs.batches(plan, range, batch_size) {
        let (start, b) = batch?;
        let len = b.noise.dim(0).map_err(fail)?;
        let mut traj = Trajectory::new(model, plan, &b)?;
        while !traj.is_done() {
            traj.step(hooks)?;
            bar.inc(len as u64);
        }
        if let Some(r) = realised.as_deref_mut() {
            r.batches.push((start, len, traj.reuse_steps()));
        }
        let t = std::time::Instant::now();
        each(start, traj.latents())?;
        outside += t.elapsed();
        if keep {
            outs.push(traj.latents().clone());
        }
    }
    // GPU kernels run asynchronously: wait for them before reading the clock.
    inputs.device().synchronize().map_err(fail)?;
    let elapsed = started.elapsed().saturating_sub(outside);
    bar.finish_and_clear();
    let x = if keep {
        Some(Tensor::cat(&outs, 0).map_err(|e| CliError::Failure(e.to_string()))?)
    } else {
        None
    };
    Ok((x, elapsed))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} sample-steps  {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
