//! What the commands that run a model share: loading the model a plan
//! names, building seeded batches of (noise, condition), and running plans.

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use tcc_exec::{Hooks, SampleBatch, Trajectory};
use tcc_model::{Dit, DitConfig};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

use crate::common::CliError;

/// Options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Run with seeded random weights instead of the schedule's weights
    /// (for timing runs of large models whose weights you do not have).
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
}

/// The model a plan names: the schedule's `weights`, the embedded testbed
/// model for `tiny`, or random weights when asked for.
pub fn load_model(plan: &Plan, args: &ModelArgs) -> Result<Dit, CliError> {
    let device = Device::Cpu;
    let cfg = DitConfig::from_shape(&plan.model).map_err(CliError::input)?;
    if let Some(seed) = args.random_weights {
        return Dit::random(&cfg, seed, DType::F32, &device)
            .map_err(|e| CliError::Failure(e.to_string()));
    }
    match &plan.weights {
        Some(path) => Dit::load(Path::new(path), Some(&cfg), DType::F32, &device).map_err(CliError::input),
        None if plan.model.name == "tiny" => {
            let model = tcc_testbed::tiny_dit(DType::F32, &device)
                .map_err(|e| CliError::Failure(format!("the embedded testbed model: {e}")))?;
            let got = model.config();
            let same = (got.depth, got.hidden, got.heads, got.patch, got.input_size)
                == (cfg.depth, cfg.hidden, cfg.heads, cfg.patch, cfg.input_size)
                && (got.in_channels, got.out_channels, got.num_classes)
                    == (cfg.in_channels, cfg.out_channels, cfg.num_classes);
            if !same {
                return Err(CliError::Failure(
                    "the embedded testbed model does not have the `tiny` preset's shape".into(),
                ));
            }
            Ok(model)
        }
        None => Err(CliError::input(format!(
            "{}: model `{}` has no weights: add `weights = \"PATH\"` to its [model] section, or pass --random-weights SEED for a timing run",
            plan.source, plan.model.name
        ))),
    }
}

/// The inputs of a sampling run: initial noise and class of every sample.
pub struct Inputs {
    /// `[n, C, H, W]`, drawn in sample order from one stream of `seed`, so
    /// a sample's noise does not depend on the batch size.
    pub noise: Tensor,
    pub classes: Vec<u32>,
    pub seed: u64,
}

impl Inputs {
    /// `n` samples of `seed`, all of `class` or cycling through the classes.
    pub fn new(plan: &Plan, seed: u64, n: usize, class: Option<usize>) -> Result<Inputs, CliError> {
        let m = &plan.model;
        let k = m.num_classes;
        let classes = match class {
            Some(c) if c >= k => {
                return Err(CliError::input(format!(
                    "--class {c} is out of range: model `{}` has classes 0..{}",
                    m.name,
                    k - 1
                )))
            }
            Some(c) => vec![c as u32; n],
            None => (0..n).map(|i| (i % k) as u32).collect(),
        };
        let noise = NoiseRng::new(seed)
            .randn((n, m.in_channels, m.input_size, m.input_size), &Device::Cpu)
            .map_err(|e| CliError::Failure(e.to_string()))?;
        Ok(Inputs {
            noise,
            classes,
            seed,
        })
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Samples `start..start+len` as one executor batch.
    pub fn batch(&self, plan: &Plan, start: usize, len: usize) -> Result<SampleBatch, CliError> {
        let fail = |e: candle_core::Error| CliError::Failure(e.to_string());
        let dev = Device::Cpu;
        Ok(SampleBatch {
            noise: self.noise.narrow(0, start, len).map_err(fail)?,
            cond: Tensor::new(&self.classes[start..start + len], &dev).map_err(fail)?,
            uncond: Some(Tensor::full(plan.model.num_classes as u32, len, &dev).map_err(fail)?),
            cond_mask: None,
            uncond_mask: None,
            // The sampler's own noise (DDPM, DDIM eta > 0): one stream per batch.
            seed: self.seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(start as u64 + 1),
        })
    }
}

/// Run `plan` over all `n` samples in batches, with a progress bar; returns
/// the final latents `[n, C, H, W]` and the wall time spent in the model.
pub fn run_plan(
    model: &Dit,
    plan: &Plan,
    inputs: &Inputs,
    batch_size: usize,
    hooks: &mut dyn Hooks,
    label: &str,
) -> Result<(Tensor, Duration), CliError> {
    let n = inputs.len();
    let bar = progress(label, (n * plan.steps.len()) as u64);
    let mut outs = Vec::new();
    let started = std::time::Instant::now();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let b = inputs.batch(plan, start, len)?;
        let mut traj =
            Trajectory::new(model, plan, &b).map_err(|e| CliError::Failure(e.to_string()))?;
        while !traj.is_done() {
            traj.step(hooks)
                .map_err(|e| CliError::Failure(e.to_string()))?;
            bar.inc(len as u64);
        }
        outs.push(traj.latents().clone());
        start += len;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let x = Tensor::cat(&outs, 0).map_err(|e| CliError::Failure(e.to_string()))?;
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
