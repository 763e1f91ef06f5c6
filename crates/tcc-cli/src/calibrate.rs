//! `tcc calibrate`: fit the TCC priors of a schedule's calibrated steps.

use std::path::PathBuf;

use tcc_calib::{calibrate, CalibBatch, Calibration, PriorMeta, PriorSet, Progress};
use tcc_core::{CalibMethod, CalibMode};
use tcc_model::AnyModel;
use tcc_plan::Plan;

use crate::common::{beside_cwd, CliError, Io};
use crate::device::{Runtime, PRIOR_DTYPE};
use crate::runtime::{load_model, progress, Captions, Inputs, ModelArgs};

const EXAMPLES: &str = "\
Examples:
  tcc calibrate schedules/fora3.sched
  tcc calibrate schedules/fora3.sched --mode one-shot --out fora3.oneshot.safetensors
  tcc calibrate schedules/fora3.sched --samples 256 --seed 7

The walk goes once over the plan: reference trajectories first, then the
accelerated trajectories of all calibration samples side by side; before each
calibrated step its reused outputs are pooled, its priors fitted and (in
`consistent` mode) applied from that step on. The priors file is bound to the
plan's hash: `tcc sample --priors` refuses it for any other plan.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule (.sched); its [calibration] section says which steps,
    /// alpha, prior kind, pooling, samples and seed.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Where to write the priors (default: FILE's name with
    /// `.priors.safetensors`, in the current directory).
    #[arg(long, value_name = "PRIORS")]
    out: Option<PathBuf>,
    /// Override the schedule's mode: `consistent` (each step fitted on the
    /// trajectory the earlier priors shifted) or `one-shot` (ablation).
    #[arg(long, value_parser = ["consistent", "one-shot"])]
    mode: Option<String>,
    /// Override the number of calibration samples.
    #[arg(long)]
    samples: Option<usize>,
    /// Override the calibration seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Samples per model batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let rt = Runtime::from_args(&args.model.runtime)?;
    let mut plan = args.model.load_plan(&args.file, None, io.err)?;
    if plan.calibration.method != CalibMethod::Tcc {
        return Err(CliError::input(format!(
            "{}: the schedule does not ask for calibration: set `[calibration] method = \"tcc\"` and its `steps`",
            args.file.display()
        )));
    }
    // Overrides are part of what the priors were fitted with, but not of the
    // plan the priors apply to: the hash is taken before them.
    let plan_hash = plan.hash().to_string();
    let mode = match args.mode.as_deref() {
        Some("one-shot") => CalibMode::OneShot,
        Some(_) => CalibMode::Consistent,
        None => plan.calibration.mode,
    };
    if let Some(n) = args.samples {
        plan.calibration.samples = n;
    }
    if let Some(s) = args.seed {
        plan.calibration.seed = s;
    }
    let (n, seed) = (plan.calibration.samples, plan.calibration.seed);
    if n == 0 || args.batch_size == 0 {
        return Err(CliError::input(
            "the number of samples and the batch size must be at least 1",
        ));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| beside_cwd(&args.file, "priors.safetensors"));
    let model = load_model(&plan, &args.model, &rt)?;
    let captions = Captions::for_plan(&plan, &args.model, &rt)?;
    rt.announce(io.err)?;
    writeln!(
        io.out,
        "calibrating {} ({} mode, {} prior, alpha {}) on {n} samples, seed {seed}",
        plan.source,
        name(&mode),
        name(&plan.calibration.prior),
        plan.calibration.alpha
    )?;
    let (set, result, time) = fit_priors(
        &model,
        captions.as_ref(),
        &plan,
        plan_hash,
        mode,
        args.batch_size,
        &rt,
    )?;

    writeln!(
        io.out,
        "\nstep  sites  rows  rel. distance to reference (pooled rows)"
    )?;
    writeln!(io.out, "                   before prior   after prior")?;
    for s in &result.steps {
        writeln!(
            io.out,
            "{:>4}  {:>5}  {:>4}  {:>12.4}   {:>11.4}",
            s.step, s.sites, s.rows, s.rel_before, s.rel_after
        )?;
    }
    let c = &result.cost;
    let branches = plan.branches().len() as f64;
    let blocks = |x: u64| x as f64 / branches;
    writeln!(
        io.out,
        "\ncost in block evaluations (one block = its {} branches, one batch):",
        plan.branches().len()
    )?;
    writeln!(
        io.out,
        "  reference trajectories    {:>10.0}",
        blocks(c.reference)
    )?;
    writeln!(
        io.out,
        "  accelerated trajectories  {:>10.0}",
        blocks(c.accelerated)
    )?;
    writeln!(
        io.out,
        "  total (this walk)         {:>10.0}",
        blocks(c.reference + c.accelerated)
    )?;
    writeln!(
        io.out,
        "  bound: 1 ref + 1 acc per batch {:>5.0}",
        blocks(c.one_pass_bound)
    )?;
    writeln!(
        io.out,
        "  re-run from the refresh step   {:>5.0}",
        blocks(c.rerun_from_refresh)
    )?;
    writeln!(
        io.out,
        "  re-run from step 0             {:>5.0}",
        blocks(c.rerun_from_start)
    )?;

    set.save(&out)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let walk = time.total - time.fitting;
    writeln!(
        io.out,
        "\nwrote {} priors to {} in {:.1}s: walk {walk:.1}s ({:.1} samples/s), fitting {:.1}s",
        set.priors.len(),
        out.display(),
        time.total,
        n as f64 / walk,
        time.fitting
    )?;
    Ok(())
}

/// Fits the priors of `plan`'s calibrated steps in `mode`, on
/// `plan.calibration.samples` samples drawn from `plan.calibration.seed`
/// (classes cycling), and binds them to `plan_hash`, running on `rt`.
/// Returns the set, the walk's report and its wall time.
pub(crate) fn fit_priors(
    model: &AnyModel,
    captions: Option<&Captions>,
    plan: &Plan,
    plan_hash: String,
    mode: CalibMode,
    batch_size: usize,
    rt: &Runtime,
) -> Result<(PriorSet, Calibration, CalibTime), CliError> {
    let (n, seed) = (plan.calibration.samples, plan.calibration.seed);
    let inputs = Inputs::new(plan, seed, n, None, captions, rt)?;
    let conditions = inputs.conditions();
    let mut batches = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        batches.push(CalibBatch {
            batch: inputs.batch(plan, start, len)?,
            conditions: conditions[start..start + len].to_vec(),
        });
        start += len;
    }
    let nb = batches.len() as u64;
    let sites = tcc_calib::calibrated_sites(plan).len() as u64;
    // The progress bar's label: the mode, as `tcc eval` names the variants.
    let label = match mode {
        CalibMode::OneShot => "one-shot",
        CalibMode::Consistent => "tcc",
    };
    let bar = progress(label, nb + nb * sites);
    let started = std::time::Instant::now();
    // A step's priors are fitted between the last batch reaching it and
    // its `Fitted` event (reaching it reads the device's sums: synchronised).
    let mut reached = started;
    let mut fitting = 0.0;
    let result = calibrate(model, plan, &batches, mode, PRIOR_DTYPE, &mut |p| {
        if let Progress::Fitted { step } = p {
            fitting += reached.elapsed().as_secs_f64();
            bar.set_message(format!("step {step} fitted"));
        } else {
            bar.inc(1);
            reached = std::time::Instant::now();
        }
    })
    .map_err(|e| CliError::Failure(e.to_string()))?;
    bar.finish_and_clear();
    let time = CalibTime {
        total: started.elapsed().as_secs_f64(),
        fitting,
    };
    let set = PriorSet {
        meta: PriorMeta {
            plan_hash,
            model: plan.model.name.clone(),
            alpha: plan.calibration.alpha,
            mode,
            prior: plan.calibration.prior,
            samples: n,
            seed,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        priors: result.priors.clone(),
    };
    Ok((set, result, time))
}

/// Wall time of a calibration, seconds: in all, and fitting the priors
/// (the rest is the walk: running the model and summing statistics).
pub(crate) struct CalibTime {
    pub total: f64,
    pub fitting: f64,
}

pub(crate) fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
