//! `tcc eval`: full vs cache vs cache + one-shot priors vs cache + TCC
//! priors, on seeds held out from calibration.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tcc_calib::{CalibSamples, PriorSet};
use tcc_core::{CalibMethod, CalibMode, Selection, Shard};
use tcc_eval::{
    accumulate, calibration_seeds, held_out, lineup, oracle_rows, plot_deviation, prior_terms,
    Entry, EvalSums, OracleRow, PriorTerms, PriorsInfo, Report, Scorer, SeedSet, Series,
};
use tcc_exec::{Captions, Inputs};
use tcc_metrics::Summary;
use tcc_model::AnyModel;
use tcc_plan::Plan;

use tcc_fs::OutputKind;

use crate::calibrate::{calibration_memory, fit_priors};
use crate::common::beside_cwd;
use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::limits::{check_count, check_output, Memory, MAX_BATCH, MAX_SAMPLES};
use crate::runtime::{load_captions, load_model, progress, ModelArgs};
use crate::scoring::TestbedScorer;

const EXAMPLES: &str = "\
Examples:
  tcc eval schedules/fora3.sched
  tcc eval schedules/fora3.sched --priors fora3.priors.safetensors --json > eval.json
  tcc eval schedules/fora3.sched --seeds 11,12,13,14,15 --n 200 --plot dev.png
  tcc eval schedules/fora3.sched --steps 25
  tcc eval schedules/fora3.sched schedules/fora3-validated.sched --no-one-shot

Without --priors / --one-shot-priors, eval fits them first with the
schedule's [calibration] settings (like `tcc calibrate`). Evaluation seeds
must differ from the calibration seed. Priors are tied to the plan they were
fitted for: with --steps the plan changes, a priors file for the original
plan is refused, and priors are fitted anew for the new plan. With several
schedules (same model, weights and sampler), full computation runs once and
each schedule's cache and priors are measured on the same samples, with
paired tests against the first schedule's priors.

Across machines (docs/scale.md): `--shard I/N` evaluates shard I of each
seed set's samples (the same noise and classes as the whole run) with the
given --priors / --one-shot-priors and writes its sums to a partial file
(default: FILE's name with `.eval-I-of-N.safetensors`); `tcc merge` adds
the shards up and prints the whole run's report.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule(s) to evaluate. With several (same model and sampler),
    /// full computation runs once and every schedule's cache and priors
    /// are compared on the same samples.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// TCC priors (consistent mode) from `tcc calibrate`; fitted here if absent.
    #[arg(long, value_name = "PRIORS")]
    priors: Option<PathBuf>,
    /// One-shot priors (`tcc calibrate --mode one-shot`); fitted here if absent.
    #[arg(long, value_name = "PRIORS")]
    one_shot_priors: Option<PathBuf>,
    /// Seed sets to evaluate on, comma-separated (at least 5 for error bars).
    #[arg(long, value_delimiter = ',', default_values_t = [101u64, 102, 103, 104, 105])]
    seeds: Vec<u64>,
    /// Samples per seed set (classes cycle).
    #[arg(long, short = 'n', default_value_t = 100)]
    n: usize,
    /// Samples per model batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Evaluate with this many sampling steps instead of the schedule's.
    #[arg(long)]
    steps: Option<u64>,
    /// Skip the one-shot variant (halves the fitting and the evaluation of
    /// priors).
    #[arg(long)]
    no_one_shot: bool,
    /// Measure the oracle bound: at every calibrated step, the best prior
    /// of the variant's kind(s) fitted on the evaluated samples themselves.
    /// On by default for branch widths up to 512 (it keeps two D x D
    /// matrices per calibrated site).
    #[arg(long, overrides_with = "no_oracle")]
    oracle: bool,
    /// Do not measure the oracle bound.
    #[arg(long)]
    no_oracle: bool,
    /// Where to write the per-step deviation plot (default: the first
    /// FILE's name with `.eval.png`, in the current directory).
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Evaluate only shard I of N (I from 0) of each seed set's samples and
    /// write the sums to a partial file for `tcc merge` (the priors must be
    /// given: a shard does not fit them).
    #[arg(long, value_name = "I/N", conflicts_with_all = ["plot", "json"])]
    shard: Option<Shard>,
    /// With --shard: where to write the partial file.
    #[arg(long, value_name = "FILE", requires = "shard")]
    out: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

/// The most seed sets one evaluation takes.
const MAX_SEED_SETS: usize = 10_000;

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    let out = Outputs::check(&args)?;
    let rt = Runtime::from_args(&args.model.runtime)?;
    let plans = load_plans(&args, io)?;
    let memory = check_fits(&args, &plans, &rt, &out)?;
    let given = given_priors(&args, &plans)?;
    crate::runtime::check_model_source(&plans[0], &args.model)?;
    memory.check()?;
    let model = load_model(&plans[0], &args.model, &rt)?;
    let captions = load_captions(&plans[0], &args.model, &rt)?;
    let mut entries = Entry::label(plans, &args.files);
    let announced = attach_priors(
        &args,
        io,
        &rt,
        &model,
        captions.as_ref(),
        &mut entries,
        given.sets,
    )?;
    held_out(&args.seeds, &calibration_seeds(&entries)).map_err(CliError::input)?;
    if !announced {
        rt.announce(io.err)?;
    }
    let m = measure(&args, &rt, &model, captions.as_ref(), &entries, &out)?;
    let context = ReportContext::new(&args, &entries, m.tests);
    let terms = prior_terms(&entries, &m.sums)?;
    if let Some(shard) = args.shard {
        let run = crate::eval_partial::ShardRun {
            context,
            n: args.n,
            batch_size: args.batch_size,
            shard,
            samples: out.range,
            priors: given.files,
        };
        return crate::eval_partial::write_shard(io, &out.path, run, m.sums, terms);
    }
    let report = m
        .sums
        .report(
            m.scorer.as_ref().map(|s| s.reference()),
            &context.test_pairs(),
        )
        .map_err(|e| CliError::Failure(e.to_string()))?;
    print_report(io, &context, &report, &terms, &out.plot, args.json).map(|_| ())
}

/// Where the evaluation writes (checked before any work) and which
/// samples of every seed set it evaluates.
struct Outputs {
    /// The partial file (with --shard), else the plot.
    path: PathBuf,
    plot: PathBuf,
    range: Range<usize>,
}

impl Outputs {
    fn check(args: &Args) -> Result<Outputs, CliError> {
        check_count("--n", args.n, MAX_SAMPLES)?;
        check_count("--batch-size", args.batch_size, MAX_BATCH)?;
        if args.seeds.is_empty() {
            return Err(CliError::input("--seeds needs at least one seed"));
        }
        check_count(
            "--seeds (number of seed sets)",
            args.seeds.len(),
            MAX_SEED_SETS,
        )?;
        let plot = args
            .plot
            .clone()
            .unwrap_or_else(|| beside_cwd(&args.files[0], "eval.png"));
        let (flag, path) = match args.shard {
            Some(shard) => (
                "the partial file",
                args.out.clone().unwrap_or_else(|| {
                    beside_cwd(
                        &args.files[0],
                        &format!("eval-{}-of-{}.safetensors", shard.index, shard.count),
                    )
                }),
            ),
            None if args.plot.is_some() => ("--plot", plot.clone()),
            None => ("the plot", plot.clone()),
        };
        let flag = if args.out.is_some() { "--out" } else { flag };
        check_output(flag, &path, OutputKind::File)?;
        let range = args
            .shard
            .unwrap_or(Shard::WHOLE)
            .nonempty_samples(args.n, args.batch_size, "samples")
            .map_err(CliError::input)?;
        if args.files.len() > 1 && (args.priors.is_some() || args.one_shot_priors.is_some()) {
            return Err(CliError::input(
                "--priors / --one-shot-priors apply to one schedule: evaluate several schedules with priors fitted here",
            ));
        }
        Ok(Outputs { path, plot, range })
    }
}

/// The plans of every schedule: same model, weights and sampler, each
/// with calibration settings that can be validated.
fn load_plans(args: &Args, io: &mut Io) -> Result<Vec<Plan>, CliError> {
    let mut plans: Vec<Plan> = Vec::new();
    for file in &args.files {
        let plan = args.model.load_plan(file, args.steps, io.err)?;
        if let Some(first) = plans.first() {
            if plan.model != first.model
                || plan.sampler != first.sampler
                || plan.weights != first.weights
            {
                return Err(CliError::input(format!(
                    "{}: evaluated side by side, schedules must have the same model, weights and sampler as {}",
                    plan.source, first.source
                )));
            }
        }
        tcc_calib::check_validation(&plan)?;
        plans.push(plan);
    }
    Ok(plans)
}

/// Whether priors of `args` are fitted here (not all given as files).
fn fits_here(args: &Args) -> bool {
    args.priors.is_none() || (!args.no_one_shot && args.one_shot_priors.is_none())
}

/// Refuses fitting in a shard and evaluation seeds that priors fitted here
/// would be fitted or validated on, before any work; returns the memory
/// the evaluation needs: the model, those fits, and the evaluated samples.
fn check_fits(
    args: &Args,
    plans: &[Plan],
    rt: &Runtime,
    out: &Outputs,
) -> Result<Memory, CliError> {
    let fits_here = fits_here(args);
    if args.shard.is_some() && fits_here {
        if let Some(plan) = plans
            .iter()
            .find(|p| p.calibration.method == CalibMethod::Tcc)
        {
            return Err(CliError::input(format!(
                "{}: a shard (--shard) evaluates given priors and does not fit them: run `tcc calibrate` first (or `tcc calibrate --mode one-shot --shard I/N` and `tcc merge`), then pass --priors{} to every shard",
                plan.source,
                if args.no_one_shot {
                    ""
                } else {
                    " and --one-shot-priors (or --no-one-shot)"
                }
            )));
        }
    }
    let several = plans.len() > 1;
    let mut planned_seeds: Vec<(String, u64)> = Vec::new();
    let mut memory = Memory::new();
    memory.model(&plans[0], &args.model, rt.dtype);
    for (i, plan) in plans.iter().enumerate() {
        let c = &plan.calibration;
        if c.method == CalibMethod::Tcc && fits_here {
            let prefix = match (several, args.files[i].file_stem()) {
                (true, Some(stem)) => format!("{}:", stem.to_string_lossy()),
                _ => String::new(),
            };
            planned_seeds.push((format!("the {prefix}priors"), c.seed));
            if c.validation_samples() > 0 {
                planned_seeds.push((
                    format!("the validation samples of the {prefix}priors"),
                    c.validation_seed(),
                ));
            }
            let mut fit = Memory::new();
            calibration_memory(plan, args.batch_size, Shard::WHOLE, &mut fit);
            memory.add("fitting priors", fit.total());
        }
    }
    held_out(&args.seeds, &planned_seeds).map_err(CliError::input)?;
    // Every seed set's inputs, and the final latents of full computation
    // and of every variant (cache, one-shot, tcc per schedule).
    let variants = 1 + 3 * plans.len();
    memory.batch(&plans[0], args.batch_size).latents(
        "the evaluated latents",
        &plans[0],
        out.range.len(),
        (args.seeds.len() * (variants + 1)) as u128,
    );
    Ok(memory)
}

/// The priors files given (one schedule only), read and checked against
/// its plan before the model loads.
struct GivenPriors {
    sets: Vec<(CalibMode, PriorSet)>,
    /// With --shard: the SHA-256 of each file, by mode.
    files: Vec<(CalibMode, String)>,
}

fn given_priors(args: &Args, plans: &[Plan]) -> Result<GivenPriors, CliError> {
    let mut given = GivenPriors {
        sets: Vec::new(),
        files: Vec::new(),
    };
    let one_shot = if args.no_one_shot {
        &None
    } else {
        &args.one_shot_priors
    };
    for (path, mode) in [
        (one_shot, CalibMode::OneShot),
        (&args.priors, CalibMode::Consistent),
    ] {
        if let Some(path) = path {
            let plan = &plans[0];
            if plan.calibration.method != CalibMethod::Tcc {
                return Err(CliError::input(format!(
                    "{}: the schedule has no calibrated steps, so priors cannot apply to it",
                    plan.source
                )));
            }
            given.sets.push((mode, load_priors(path, plan, mode)?));
            if args.shard.is_some() {
                given.files.push((mode, crate::sample::sha256_file(path)?));
            }
        }
    }
    Ok(given)
}

/// Gives every calibrated schedule its priors: the given files, or fitted
/// here. The device is announced before the first fit; returns whether it
/// was.
fn attach_priors(
    args: &Args,
    io: &mut Io,
    rt: &Runtime,
    model: &AnyModel,
    captions: Option<&Captions>,
    entries: &mut [Entry],
    mut given: Vec<(CalibMode, PriorSet)>,
) -> Result<bool, CliError> {
    let mut announced = false;
    for e in entries.iter_mut() {
        if e.plan.calibration.method != CalibMethod::Tcc {
            continue;
        }
        for (label, mode) in e.wanted(args.no_one_shot) {
            let set = match given.iter().position(|(m, _)| *m == mode) {
                Some(i) => given.remove(i).1,
                None => {
                    if !announced {
                        rt.announce(io.err)?;
                        announced = true;
                    }
                    // With --json, stdout holds only the JSON.
                    let log: &mut dyn std::io::Write = if args.json { io.err } else { io.out };
                    let plan = &e.plan;
                    writeln!(
                        log,
                        "fitting {label} priors ({} samples, seed {}, {})",
                        plan.calibration.samples,
                        plan.calibration.seed,
                        protocol(&plan.calibration)
                    )?;
                    let samples = CalibSamples::for_shard(
                        plan,
                        Shard::WHOLE,
                        args.batch_size,
                        captions,
                        &rt.device,
                    )?;
                    let mut local = tcc_calib::Local;
                    fit_priors(model, plan, e.hash, mode, &samples, &label, &mut local)?.0
                }
            };
            e.calibrated.push((label, set));
        }
    }
    Ok(announced)
}

/// What [`measure`] measured: the sums, the pairs of the paired tests and
/// the testbed's scorer (if any).
struct Measured {
    sums: EvalSums,
    tests: Vec<(String, String)>,
    scorer: Option<TestbedScorer>,
}

/// Runs full computation and every variant of `entries` on every seed
/// set's samples `out.range`.
fn measure(
    args: &Args,
    rt: &Runtime,
    model: &AnyModel,
    captions: Option<&Captions>,
    entries: &[Entry],
    out: &Outputs,
) -> Result<Measured, CliError> {
    let oracle = if args.no_oracle {
        false
    } else {
        args.oracle || entries[0].plan.model.hidden <= 512
    };
    let tcc_eval::Lineup {
        mut variants,
        tests,
    } = lineup(entries, args.no_one_shot, oracle, &rt.device)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let first = &entries[0].plan;
    let full = first.all_compute();
    let mut sets = Vec::new();
    for &seed in &args.seeds {
        let inputs = Inputs::cycling(first, seed, args.n, captions, &rt.device);
        sets.push(SeedSet::new(
            first,
            &inputs,
            out.range.clone(),
            args.batch_size,
        )?);
    }
    let scorer = if args.model.random_weights.is_none() {
        TestbedScorer::for_model(&first.model.name, &rt.device)?
    } else {
        None
    };
    let total =
        (args.seeds.len() * out.range.len() * first.steps.len() * (variants.len() + 1)) as u64;
    let bar = progress("evaluating", total);
    let sums = accumulate(
        model,
        &full,
        &mut variants,
        &sets,
        scorer.as_ref().map(|s| s as &dyn Scorer),
        &mut |p| bar.inc(p.samples as u64),
    )?;
    bar.finish_and_clear();
    Ok(Measured {
        sums,
        tests,
        scorer,
    })
}

/// What the report says besides the measurements: the same for `tcc eval`
/// and for `tcc merge` of its shards' partial files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReportContext {
    /// The schedule files as given.
    pub sources: Vec<String>,
    /// Each schedule's plan source and hash.
    pub schedules: Vec<(String, String)>,
    pub model: String,
    pub steps: usize,
    pub seeds: Vec<u64>,
    /// The pairs of variants compared by paired tests.
    pub tests: Vec<(String, String)>,
    pub priors: Vec<PriorsInfo>,
}

impl ReportContext {
    fn new(args: &Args, entries: &[Entry], tests: Vec<(String, String)>) -> ReportContext {
        let first = &entries[0].plan;
        ReportContext {
            sources: args.files.iter().map(|f| f.display().to_string()).collect(),
            schedules: entries
                .iter()
                .map(|e| (e.plan.source.clone(), e.hash.to_string()))
                .collect(),
            model: first.model.name.clone(),
            steps: first.steps.len(),
            seeds: args.seeds.clone(),
            tests,
            priors: PriorsInfo::of_entries(entries),
        }
    }

    pub fn test_pairs(&self) -> Vec<(&str, &str)> {
        self.tests
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }
}

/// Prints the report (tables, or JSON with `json`), writes the plot and
/// returns the JSON document.
pub(crate) fn print_report(
    io: &mut Io,
    context: &ReportContext,
    report: &Report,
    terms: &[PriorTerms],
    plot: &Path,
    json: bool,
) -> Result<serde_json::Value, CliError> {
    let oracles = oracle_rows(report, &context.priors, terms)
        .map_err(|e| CliError::Failure(e.to_string()))?;
    write_plot(plot, &context.schedules[0].0, report)?;
    let doc = report_json(context, report, &oracles, plot);
    if json {
        crate::output::print_json(io.out, &doc)?;
    } else {
        print_tables(io, context, report, &oracles, plot)?;
    }
    Ok(doc)
}

/// The document `--json` prints.
fn report_json(
    context: &ReportContext,
    report: &Report,
    oracles: &[OracleRow],
    plot: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "schedules": context.schedules.iter().map(|(source, hash)| serde_json::json!({
            "schedule": source,
            "plan_hash": hash,
        })).collect::<Vec<_>>(),
        "schedule": context.schedules[0].0,
        "plan_hash": context.schedules[0].1,
        "model": context.model,
        "steps": context.steps,
        "seeds": context.seeds,
        "priors": context.priors.iter().map(|p| serde_json::json!({
            "variant": p.variant,
            "mode": p.mode.as_str(),
            "select": p.select.as_str(),
            "alpha": p.alpha,
            "sites": p.sites,
            "sites_with_prior": p.sites_with_prior,
            "samples": p.samples,
            "seed": p.seed,
            "validation": p.validation,
        })).collect::<Vec<_>>(),
        "oracle": oracles,
        "plot": plot.display().to_string(),
        "report": report,
    })
}

/// How a schedule's priors are chosen, in words.
fn protocol(c: &tcc_core::CalibrationSpec) -> String {
    match c.select {
        Selection::Fixed => format!("{} prior, alpha {}", c.prior, c.alpha),
        Selection::Validated => format!(
            "validated among {}",
            c.kinds()
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("/")
        ),
    }
}

/// A priors file for `plan`, of `mode`.
fn load_priors(path: &Path, plan: &Plan, mode: CalibMode) -> Result<PriorSet, CliError> {
    let set = PriorSet::load_for(path, plan).map_err(CliError::input)?;
    if set.meta.mode != mode {
        return Err(CliError::input(format!(
            "{}: these are {} priors, but the option expects {} priors",
            path.display(),
            set.meta.mode,
            mode
        )));
    }
    Ok(set)
}

const COLORS: [[u8; 3]; 4] = [[214, 39, 40], [255, 127, 14], [44, 160, 44], [31, 119, 180]];

fn write_plot(path: &Path, source: &str, report: &Report) -> Result<(), CliError> {
    let series: Vec<Series> = report
        .variants
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, v)| Series {
            name: v.name.clone(),
            color: COLORS[i % COLORS.len()],
            values: v.steps.iter().map(|s| Some(s.latent_rel_l2)).collect(),
        })
        .collect();
    plot_deviation(
        path,
        &format!("{source}: deviation from the reference trajectory"),
        "relative L2 of the latents vs full computation, after each step",
        &series,
    )
    .map_err(|e| CliError::Failure(e.to_string()))
}

fn fmt(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) if s.n() >= 2 => format!("{:.digits$} ± {:.digits$}", s.mean(), s.std()),
        Some(s) => format!("{:.digits$}", s.mean()),
        None => "-".into(),
    }
}

fn print_tables(
    io: &mut Io,
    context: &ReportContext,
    report: &Report,
    oracles: &[OracleRow],
    plot: &Path,
) -> Result<(), CliError> {
    let out = &mut io.out;
    writeln!(
        out,
        "\n{} on {}: {} seed sets x {} samples (seeds {}), {} steps",
        context.sources.join(", "),
        context.model,
        context.seeds.len(),
        report.samples_per_set,
        context
            .seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        context.steps
    )?;
    for p in &context.priors {
        let how = match p.select {
            Selection::Fixed => format!("{} prior, alpha {}", p.prior, p.alpha),
            Selection::Validated => format!(
                "validated: a prior at {} of {} sites",
                p.sites_with_prior, p.sites
            ),
        };
        let validation = match p.validation {
            Some((n, seed)) => format!(", validated on {n} samples of seed {seed}"),
            None => String::new(),
        };
        writeln!(
            out,
            "  {} priors: {} mode, {how}, fitted on {} samples of seed {}{validation} (held out from evaluation)",
            p.variant,
            p.mode,
            p.samples,
            p.seed
        )?;
    }
    writeln!(out, "mean ± std over seed sets:\n")?;
    let w = report
        .variants
        .iter()
        .map(|v| v.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    writeln!(
        out,
        "{:<w$} {:>17} {:>17} {:>19} {:>17} {:>15}",
        "variant", "FD", "class accuracy", "rel. L2 vs full", "PSNR vs full", "speedup"
    )?;
    for v in &report.variants {
        writeln!(
            out,
            "{:<w$} {:>17} {:>17} {:>19} {:>17} {:>15}",
            v.name,
            fmt(v.over_sets(|s| s.fd), 2),
            fmt(v.over_sets(|s| s.accuracy), 3),
            fmt(v.over_sets(|s| s.rel_l2), 4),
            fmt(v.over_sets(|s| s.psnr), 2),
            fmt(v.over_sets(|s| Some(s.speedup)), 2),
        )?;
    }
    print_decisions(out, report, w, context.steps)?;
    if !report.tests.is_empty() {
        writeln!(
            out,
            "\npaired Wilcoxon signed-rank tests on per-sample rel. L2 vs full ({} pairs):",
            report.variants[0].sets.len() * report.samples_per_set
        )?;
        for t in &report.tests {
            match &t.test {
                Some(w) => writeln!(
                    out,
                    "  {} vs {}: median difference {:+.4}, {} closer in {:.1}% of samples, p = {:.3e}",
                    t.a,
                    t.b,
                    t.median_difference,
                    t.a,
                    100.0 * t.a_better,
                    w.p_value
                )?,
                None => writeln!(out, "  {} vs {}: identical on every sample", t.a, t.b)?,
            }
        }
    }
    if !oracles.is_empty() {
        writeln!(
            out,
            "\nbranch outputs at calibrated steps, every token of both CFG halves: rel. distance to full computation's\n(reused as is, with the variant's priors, and with the oracle: the best prior of its kind(s) fitted on these samples)"
        )?;
        writeln!(
            out,
            "{:<w$} {:>4} {:>9} {:>9} {:>9} {:>9}",
            "variant", "step", "reused", "priors", "oracle", "reached"
        )?;
        for r in oracles {
            let reached = if r.before > r.oracle {
                format!(
                    "{:.0}%",
                    100.0 * (r.before - r.used) / (r.before - r.oracle)
                )
            } else {
                "-".to_string()
            };
            writeln!(
                out,
                "{:<w$} {:>4} {:>9.4} {:>9.4} {:>9.4} {:>9}",
                r.variant, r.step, r.before, r.used, r.oracle, reached
            )?;
        }
        writeln!(
            out,
            "(reached: the share of the oracle's improvement over reuse that the priors achieve)"
        )?;
    }
    writeln!(
        out,
        "\nper step: latent rel. L2 vs the reference trajectory; at reuse steps, the branch outputs used vs computed\n(per sample / pooled rows as in `tcc calibrate`)"
    )?;
    let vs: Vec<_> = report.variants.iter().skip(1).collect();
    write!(out, "step")?;
    for v in &vs {
        write!(out, "  {:>30}", v.name)?;
    }
    writeln!(out)?;
    for k in 0..context.steps {
        write!(out, "{k:>4}")?;
        for v in &vs {
            let s = &v.steps[k];
            let branch = match (s.branch_rel_l2, s.pooled_rel) {
                (Some(b), Some(p)) => format!("{b:.3}/{p:.3}"),
                _ => String::new(),
            };
            write!(out, "  {:>17.4} {:>12}", s.latent_rel_l2, branch)?;
        }
        writeln!(out)?;
    }
    writeln!(out, "\nwrote {}", plot.display())?;
    Ok(())
}

/// What the dynamic variants (run-time policies) decided: steps computed
/// per sample and the realised speedup, then per step the share of samples
/// that computed it. Nothing for static plans.
fn print_decisions(
    out: &mut dyn std::io::Write,
    report: &Report,
    w: usize,
    steps: usize,
) -> Result<(), CliError> {
    let decided: Vec<_> = report
        .variants
        .iter()
        .filter_map(|v| v.decisions.as_ref().map(|d| (v, d)))
        .collect();
    if decided.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nrun-time decisions (a batch decides together): steps computed per sample and the realised speedup\n(full computation's MACs over the MACs that ran), mean ± std over seed sets, and over all samples"
    )?;
    writeln!(
        out,
        "{:<w$} {:>17} {:>17} {:>14} {:>10}",
        "variant", "computed steps", "realised speedup", "all: computed", "speedup"
    )?;
    for (v, d) in &decided {
        writeln!(
            out,
            "{:<w$} {:>17} {:>17} {:>14.2} {:>10.2}",
            v.name,
            fmt(v.over_sets(|s| s.computed_steps), 2),
            fmt(v.over_sets(|s| s.realised_speedup), 2),
            d.computed_steps,
            d.realised_speedup
        )?;
    }
    writeln!(out, "\nsteps computed, % of samples:")?;
    write!(out, "{:<w$}", "step")?;
    for k in 0..steps {
        write!(out, " {k:>3}")?;
    }
    writeln!(out)?;
    for (v, d) in &decided {
        write!(out, "{:<w$}", v.name)?;
        for s in d.shares() {
            write!(out, " {:>3.0}", 100.0 * s)?;
        }
        writeln!(out)?;
    }
    Ok(())
}
