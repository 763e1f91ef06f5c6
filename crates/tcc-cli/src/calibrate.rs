//! `tcc calibrate`: fit the TCC priors of a schedule's calibrated steps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tcc_calib::{CalibSamples, Calibration, Local, PriorSet, Progress, Reduce, StatsFile};
use tcc_core::{CalibMethod, CalibMode, Selection, Shard};
use tcc_model::AnyModel;
use tcc_plan::{Plan, PlanHash};

use tcc_fs::OutputKind;

use crate::common::{beside_cwd, spelled};
use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::limits::{check_count, check_output, latent_values, Memory, MAX_BATCH, MAX_SAMPLES};
use crate::runtime::{load_captions, load_model, progress, ModelArgs};

const EXAMPLES: &str = "\
Examples:
  tcc calibrate schedules/fora3.sched
  tcc calibrate schedules/fora3.sched --mode one-shot --out fora3.oneshot.safetensors
  tcc calibrate schedules/fora3.sched --samples 256 --seed 7
  tcc calibrate schedules/fora3-validated.sched
  tcc calibrate schedules/fora3.sched --select validated --validation-samples 64

The walk goes once over the plan: the reference (full computation) and the
accelerated trajectory of every calibration sample advance side by side;
at each calibrated step the reused outputs are paired with the reference's,
the step's priors fitted and (in `consistent` mode) applied from that step
on. Validation samples (their own seed) walk alongside: they measure every
step's priors, and with `select = validated` choose them (per site the
closest candidate, or none; a step or a whole set that does not bring them
closer to full computation is dropped).
The priors file is bound to the plan's hash: `tcc sample --priors` refuses it
for any other plan.

Across machines (docs/scale.md): `--mode one-shot --shard I/N` walks shard I
(from 0) of N of the calibration and validation samples (contiguous whole
batches) and writes its statistics (f64 sums, bound to the plan and the
shard; default FILE's name with `.stats-I-of-N.safetensors`); `tcc merge`
adds them up and fits the priors. Consistent mode needs every shard's
statistics at every calibrated step: build with `--features mpi` and run
`mpirun -n N tcc calibrate ...` (every rank walks its shard, the ranks add
up their statistics before each step's fit; rank 0 writes the priors).";

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
    #[arg(long, value_parser = spelled(CalibMode::ALL))]
    mode: Option<CalibMode>,
    /// Override the number of calibration samples.
    #[arg(long)]
    samples: Option<usize>,
    /// Override the calibration seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override how priors are chosen: `fixed` (the paper's protocol: every
    /// calibrated site gets the schedule's prior and alpha) or `validated`
    /// (per site the closest candidate on the validation samples, or none).
    #[arg(long, value_parser = spelled(Selection::ALL))]
    select: Option<Selection>,
    /// Override the number of validation samples (0: none).
    #[arg(long)]
    validation_samples: Option<usize>,
    /// Samples per model batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Walk only shard I of N (I from 0) of the samples and write its
    /// statistics for `tcc merge` (one-shot mode; fixed selection).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    // Under `mpirun -n N` (feature `mpi`), rank r walks shard r/N and the
    // ranks add up their statistics at every calibrated step; rank 0
    // prints and writes the priors.
    #[cfg(feature = "mpi")]
    if let Some(m) = crate::mpi::Mpi::join()? {
        if args.shard.is_some() {
            return Err(CliError::input(
                "--shard is for separate processes: under MPI every rank takes its shard by itself",
            ));
        }
        let shard = Shard::new(m.rank(), m.size()).map_err(CliError::input)?;
        let mut reduce = tcc_calib::Gathered(m.gather());
        if shard.index == 0 {
            return run_as(args, io, shard, &mut reduce);
        }
        let mut sink = std::io::sink();
        let mut quiet = Io {
            out: &mut sink,
            err: &mut *io.err,
        };
        return run_as(args, &mut quiet, shard, &mut reduce);
    }
    run_as(args, io, Shard::WHOLE, &mut Local)
}

/// `tcc calibrate` as `shard` of the processes that `reduce` joins.
fn run_as(args: Args, io: &mut Io, shard: Shard, reduce: &mut dyn Reduce) -> Result<(), CliError> {
    let rt = Runtime::from_args(&args.model.runtime)?;
    let mut plan = args.model.load_plan(&args.file, None, io.err)?;
    if let Some(d) = &plan.dynamic {
        return Err(CliError::input(format!(
            "{}: TCC calibration of a dynamic policy (`{}`) is not supported yet: its reuse steps are decided while sampling",
            args.file.display(),
            d.policy
        )));
    }
    if plan.calibration.method != CalibMethod::Tcc {
        return Err(CliError::input(format!(
            "{}: the schedule does not ask for calibration: set `[calibration] method = \"tcc\"` and its `steps`",
            args.file.display()
        )));
    }
    // Overrides are part of what the priors were fitted with, but not of the
    // plan the priors apply to: the hash is taken before them.
    let plan_hash = plan.hash();
    let mode = args.mode.unwrap_or(plan.calibration.mode);
    if let Some(n) = args.samples {
        check_count("--samples", n, MAX_SAMPLES)?;
        plan.calibration.samples = n;
    }
    if let Some(s) = args.seed {
        plan.calibration.seed = s;
    }
    if let Some(s) = args.select {
        plan.calibration.select = s;
    }
    if let Some(n) = args.validation_samples {
        if n > MAX_SAMPLES {
            return Err(CliError::input(format!(
                "--validation-samples {n} is out of range: expected 0 to {MAX_SAMPLES}"
            )));
        }
        plan.calibration.validation_samples = Some(n);
    }
    check_count("--batch-size", args.batch_size, MAX_BATCH)?;
    tcc_calib::check_validation(&plan)?;
    if let Some(shard) = args.shard {
        return run_shard(&args, io, &plan, plan_hash, mode, shard);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| beside_cwd(&args.file, "priors.safetensors"));
    let flag = if args.out.is_some() {
        "--out"
    } else {
        "the priors file"
    };
    check_output(flag, &out, OutputKind::File)?;
    crate::runtime::check_model_source(&plan, &args.model)?;
    let mut memory = Memory::new();
    memory.model(&plan, &args.model, rt.dtype);
    calibration_memory(&plan, args.batch_size, shard, &mut memory);
    memory.check()?;
    let model = load_model(&plan, &args.model, &rt)?;
    let captions = load_captions(&plan, &args.model, &rt)?;
    rt.announce(io.err)?;
    let cal = &plan.calibration;
    writeln!(
        io.out,
        "calibrating {} ({} mode, {}) on {} samples, seed {}{}",
        plan.source,
        mode,
        match cal.select {
            Selection::Fixed => format!("{} prior, alpha {}", cal.prior, cal.alpha),
            Selection::Validated => format!(
                "validated among {}",
                cal.kinds()
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
        },
        cal.samples,
        cal.seed,
        match cal.validation_samples() {
            0 => String::new(),
            n => format!("; {n} validation samples, seed {}", cal.validation_seed()),
        }
    )?;
    if shard.count > 1 {
        writeln!(
            io.out,
            "across {} MPI processes: rank r walks shard r/{} of the samples, the ranks add up their statistics before every calibrated step's fit",
            shard.count, shard.count
        )?;
    }
    let samples =
        CalibSamples::for_shard(&plan, shard, args.batch_size, captions.as_ref(), &rt.device)?;
    let (set, result, time) = fit_priors(
        &model,
        &plan,
        plan_hash,
        mode,
        &samples,
        "calibrating",
        reduce,
    )?;
    print_report(io, &plan, &result)?;
    if shard.index != 0 {
        return Ok(());
    }
    set.save(&out)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let walk = time.total - time.fitting;
    writeln!(
        io.out,
        "\nwrote {} priors ({} calibrated sites) to {} in {:.1}s: walk {walk:.1}s ({:.1} samples/s, validation included), fitting and choosing {:.1}s",
        set.priors.len(),
        set.sites().len(),
        out.display(),
        time.total,
        (plan.calibration.samples + plan.calibration.validation_samples()) as f64 / walk,
        time.fitting
    )?;
    Ok(())
}

/// `tcc calibrate --shard I/N`: the one-shot statistics of one shard.
fn run_shard(
    args: &Args,
    io: &mut Io,
    plan: &Plan,
    plan_hash: PlanHash,
    mode: CalibMode,
    shard: Shard,
) -> Result<(), CliError> {
    if mode != CalibMode::OneShot {
        return Err(CliError::input(format!(
            "{}: --shard needs --mode one-shot: consistent mode fits each step on the trajectory the earlier priors shifted, so every shard needs every shard's statistics at every calibrated step; run it across processes with MPI instead (a build with --features mpi, then `mpirun -n N tcc calibrate ...`; docs/scale.md)",
            args.file.display()
        )));
    }
    if plan.calibration.select == Selection::Validated {
        return Err(CliError::input(format!(
            "{}: --shard needs `select = \"fixed\"`: validated selection checks every step's priors on the validation latents as it walks (run it in one process or with MPI)",
            args.file.display()
        )));
    }
    let rt = Runtime::from_args(&args.model.runtime)?;
    let cal = &plan.calibration;
    let samples = shard
        .nonempty_samples(cal.samples, args.batch_size, "calibration samples")
        .map_err(CliError::input)?;
    let validation = shard.samples(cal.validation_samples(), args.batch_size);
    let out = args.out.clone().unwrap_or_else(|| {
        beside_cwd(
            &args.file,
            &format!("stats-{}-of-{}.safetensors", shard.index, shard.count),
        )
    });
    let flag = if args.out.is_some() {
        "--out"
    } else {
        "the statistics file"
    };
    check_output(flag, &out, OutputKind::File)?;
    crate::runtime::check_model_source(plan, &args.model)?;
    let mut memory = Memory::new();
    memory.model(plan, &args.model, rt.dtype);
    calibration_memory(plan, args.batch_size, shard, &mut memory);
    memory.check()?;
    let model = load_model(plan, &args.model, &rt)?;
    let captions = load_captions(plan, &args.model, &rt)?;
    rt.announce(io.err)?;
    writeln!(
        io.out,
        "gathering the one-shot statistics of shard {shard} of {}: calibration samples {}..{} of {} (seed {}), validation samples {}..{} of {}",
        plan.source,
        samples.start,
        samples.end,
        cal.samples,
        cal.seed,
        validation.start,
        validation.end,
        cal.validation_samples()
    )?;
    let batches =
        CalibSamples::for_shard(plan, shard, args.batch_size, captions.as_ref(), &rt.device)?;
    let bar = progress("gathering", batches.progress_len(plan));
    let started = std::time::Instant::now();
    let file = StatsFile::gather(
        &model,
        plan,
        plan_hash,
        mode,
        args.batch_size,
        shard,
        &batches,
        &mut |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    file.save(&out)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    writeln!(
        io.out,
        "wrote the statistics of {} calibrated steps to {} in {:.1}s; `tcc merge --out PRIORS` with every shard's file fits the priors",
        file.steps.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// What a calibration walk of `shard` holds at its peak ([`fit_priors`]):
/// every calibration and validation sample's pair of trajectories (latents
/// and the accelerated one's cache), one batch in flight, one step's
/// statistics and the priors fitted so far.
pub(crate) fn calibration_memory(
    plan: &Plan,
    batch_size: usize,
    shard: Shard,
    memory: &mut Memory,
) {
    let cal = &plan.calibration;
    let m = &plan.model;
    let samples = (shard.samples(cal.samples, batch_size).len()
        + shard.samples(cal.validation_samples(), batch_size).len()) as u128;
    let rows = if plan.sampler.uses_cfg() { 2 } else { 1 };
    let (t, d) = (m.tokens() as u128, m.hidden as u128);
    let cache = tcc_exec::CacheLayout::new(plan).peak_entries() as u128 * rows * t * d;
    let caption = rows * (m.caption_tokens * m.caption_dim) as u128;
    let per_sample = 4 * latent_values(plan) + cache + caption;
    memory
        .batch(plan, batch_size)
        .add("the calibration trajectories", 4 * samples * per_sample);
    let per_step = (m.depth * plan.branches().len()) as u128;
    let sites: u128 = tcc_calib::calibrated_sites(plan)
        .values()
        .map(|l| l.len() as u128)
        .sum();
    let stats = 3 + if cal.validation_samples() > 0 { 2 } else { 0 };
    memory
        .add("one step's statistics", 8 * per_step * stats * d * d)
        .add("the fitted priors", 8 * sites * 2 * d * d);
}

fn print_report(io: &mut Io, plan: &Plan, result: &Calibration) -> Result<(), CliError> {
    let out = &mut io.out;
    let has_val = result.steps.iter().any(|s| s.validation.is_some());
    writeln!(
        out,
        "\nrel. distance to the reference: on the fitted rows (calibration samples){}",
        if has_val {
            "; on the validation samples, every token (branch) and the latents after the step"
        } else {
            ""
        }
    )?;
    write!(out, "step  sites    rows   dim  common  fit before   after")?;
    if has_val {
        write!(
            out,
            "  branch before   after  removed  latent before    after  kept"
        )?;
    }
    writeln!(out)?;
    for s in &result.steps {
        write!(
            out,
            "{:>4}  {:>5}  {:>6}  {:>4}  {:>5.1}%  {:>10.4}  {:>6.4}",
            s.step,
            s.sites,
            s.rows,
            s.dim,
            100.0 * s.common_share,
            s.rel_before,
            s.rel_after
        )?;
        if let Some(v) = &s.validation {
            let removed = if v.branch_before > 0.0 {
                1.0 - (v.branch_after / v.branch_before).powi(2)
            } else {
                0.0
            };
            write!(
                out,
                "  {:>13.4}  {:>6.4}  {:>6.1}%  {:>13.5}  {:>7.5}  {}",
                v.branch_before,
                v.branch_after,
                100.0 * removed,
                v.latent_before,
                v.latent_after,
                if v.kept { "yes" } else { "no" }
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "(common: share of the per-token reuse error shared by all tokens of a sample, the most a per-sample shift can remove;\n removed: share of the squared branch error on the validation samples that the chosen priors remove)"
    )?;
    // What was chosen, step by step.
    writeln!(out, "\nchosen priors per step:")?;
    for s in &result.steps {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in result.choices.iter().filter(|c| c.site.step == s.step) {
            let label = match c.choice.kind {
                None => "none".to_string(),
                Some(k) => {
                    let mut l = format!("{k} alpha {}", c.choice.alpha);
                    if let Some(r) = c.choice.ridge {
                        l += &format!(" ridge {r}");
                    }
                    l
                }
            };
            *counts.entry(label).or_default() += 1;
        }
        let list: Vec<String> = counts
            .into_iter()
            .map(|(l, n)| format!("{l} x{n}"))
            .collect();
        writeln!(out, "{:>4}  {}", s.step, list.join(", "))?;
    }
    for s in &result.steps {
        if s.rows <= s.dim {
            writeln!(
                out,
                "warning: step {}: each fit saw {} rows for {} dimensions: it is under-determined (the rows fix it on at most a {}-dimensional subspace); pooling = \"none\" or \"samples\", or more conditions, give it more rows",
                s.step,
                s.rows,
                s.dim,
                s.rows.saturating_sub(1)
            )?;
        }
    }
    if let Some(f) = &result.final_check {
        writeln!(
            out,
            "\nend to end on {} validation samples (seed {}): mean rel. L2 to full computation {:.4} with the cache alone, {:.4} with the priors{}",
            f.samples,
            plan.calibration.validation_seed(),
            f.cache,
            f.calibrated,
            if f.kept { "" } else { ": not closer, so no priors are kept (sampling with this file equals the plain cache)" }
        )?;
        if f.kept && f.calibrated > f.cache {
            writeln!(
                out,
                "warning: the priors move the validation samples away from full computation; `select = \"validated\"` (or --select validated) keeps only priors that help"
            )?;
        }
    }
    let c = &result.cost;
    let branches = plan.branches().len() as f64;
    let blocks = |x: u64| x as f64 / branches;
    writeln!(
        out,
        "\ncost in block evaluations (one block = its {} branches, one batch):",
        plan.branches().len()
    )?;
    writeln!(
        out,
        "  reference trajectories    {:>10.0}",
        blocks(c.reference)
    )?;
    writeln!(
        out,
        "  accelerated trajectories  {:>10.0}",
        blocks(c.accelerated)
    )?;
    writeln!(
        out,
        "  total (this walk)         {:>10.0}",
        blocks(c.reference + c.accelerated)
    )?;
    writeln!(
        out,
        "  validation samples        {:>10.0}",
        blocks(c.validation)
    )?;
    writeln!(
        out,
        "  bound: 1 ref + 1 acc per batch {:>5.0}",
        blocks(c.one_pass_bound)
    )?;
    writeln!(
        out,
        "  re-run from the refresh step   {:>5.0}",
        blocks(c.rerun_from_refresh)
    )?;
    writeln!(
        out,
        "  re-run from step 0             {:>5.0}",
        blocks(c.rerun_from_start)
    )?;
    Ok(())
}

/// Fits the priors of `plan`'s calibrated steps in `mode` on `samples`
/// ([`PriorSet::fit`]) behind a progress bar named `label`, and binds them
/// to `plan_hash`. Returns the set, the walk's report and its wall time.
pub(crate) fn fit_priors(
    model: &AnyModel,
    plan: &Plan,
    plan_hash: PlanHash,
    mode: CalibMode,
    samples: &CalibSamples,
    label: &str,
    reduce: &mut dyn Reduce,
) -> Result<(PriorSet, Calibration, CalibTime), CliError> {
    let bar = progress(label, samples.progress_len(plan) + 1);
    let started = std::time::Instant::now();
    // A step's priors are fitted and chosen between the last batch reaching
    // it and its `Fitted` event (reaching it reads the device's sums:
    // synchronised).
    let mut reached = started;
    let mut fitting = 0.0;
    let (set, result) =
        PriorSet::fit(
            model,
            plan,
            plan_hash,
            mode,
            samples,
            reduce,
            &mut |p| match p {
                Progress::Fitted { step } => {
                    fitting += reached.elapsed().as_secs_f64();
                    bar.set_message(format!("step {step} fitted"));
                }
                _ => {
                    bar.inc(1);
                    reached = std::time::Instant::now();
                }
            },
        )?;
    bar.finish_and_clear();
    let time = CalibTime {
        total: started.elapsed().as_secs_f64(),
        fitting,
    };
    Ok((set, result, time))
}

/// Wall time of a calibration, seconds: in all, and fitting and choosing
/// the priors (the rest is the walk: running the model and summing
/// statistics, for the calibration and the validation samples).
pub(crate) struct CalibTime {
    pub total: f64,
    pub fitting: f64,
}
