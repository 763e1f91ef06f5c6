//! `tcc eval`: full vs cache vs cache + one-shot priors vs cache + TCC
//! priors, on seeds held out from calibration.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tcc_calib::{
    blended_error, choose, fit_candidates, Centered, Moments, PriorHooks, PriorSet, Site,
};
use tcc_core::{CalibMethod, CalibMode, CalibrationSpec, PriorKind, Selection, Shard};
use tcc_eval::{accumulate, held_out, plot_deviation, Report, Scorer, SeedSet, Series, Variant};
use tcc_exec::NoHooks;
use tcc_metrics::Summary;
use tcc_plan::{Action, Plan, PlanHash};

use tcc_fs::OutputKind;

use crate::calibrate::{calibration_memory, check_validation, fit_priors};
use crate::common::beside_cwd;
use crate::device::{Runtime, PRIOR_DTYPE};
use crate::error::{CliError, Io};
use crate::limits::{check_count, check_output, Memory, MAX_BATCH, MAX_SAMPLES};
use crate::runtime::{load_model, progress, Captions, Inputs, ModelArgs};
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

/// One schedule of the evaluation: its plan and the variants it adds.
struct Entry {
    plan: Plan,
    hash: PlanHash,
    /// `stem:` when several schedules are compared, else empty.
    prefix: String,
    /// (variant label, priors) of its calibrated variants.
    calibrated: Vec<(String, PriorSet)>,
    /// The label of its plain-cache variant (shared by schedules with the
    /// same cache plan).
    cache: String,
}

/// The plan without prior marks: schedules that differ only in
/// calibration share one plain-cache variant.
fn cache_actions(plan: &Plan) -> Vec<Vec<Vec<Action>>> {
    plan.steps
        .iter()
        .map(|s| {
            s.actions
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|a| match *a {
                            Action::Reuse { from, .. } => Action::Reuse { from, prior: false },
                            other => other,
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The most seed sets one evaluation takes.
const MAX_SEED_SETS: usize = 10_000;

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
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
    let (flag, out) = match args.shard {
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
    check_output(flag, &out, OutputKind::File)?;
    let shard = args.shard.unwrap_or(Shard::WHOLE);
    let range = shard
        .nonempty_samples(args.n, args.batch_size, "samples")
        .map_err(CliError::input)?;
    if args.files.len() > 1 && (args.priors.is_some() || args.one_shot_priors.is_some()) {
        return Err(CliError::input(
            "--priors / --one-shot-priors apply to one schedule: evaluate several schedules with priors fitted here",
        ));
    }
    let rt = Runtime::from_args(&args.model.runtime)?;
    let mut plans = Vec::new();
    for file in &args.files {
        let plan = args.model.load_plan(file, args.steps, io.err)?;
        if let Some(first) = plans.first() {
            let first: &Plan = first;
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
        check_validation(&plan)?;
        plans.push(plan);
    }
    let several = plans.len() > 1;

    // Evaluation seeds must be held out from the samples priors will be
    // fitted and validated on: checked before any work.
    let fits_here = args.priors.is_none() || (!args.no_one_shot && args.one_shot_priors.is_none());
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
            calibration_memory(plan, args.batch_size, tcc_core::Shard::WHOLE, &mut fit);
            memory.add("fitting priors", fit.total());
        }
    }
    held_out(&args.seeds, &planned_seeds).map_err(CliError::input)?;
    // Given priors files (one schedule only, checked above) are read and
    // checked against the plan before the model loads.
    let mut given: Vec<(CalibMode, PriorSet)> = Vec::new();
    let mut priors_files: Vec<(CalibMode, String)> = Vec::new();
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
            let set = load_priors(path, plan, &plan.hash(), mode)?;
            given.push((mode, set));
            if args.shard.is_some() {
                priors_files.push((mode, crate::sample::sha256_file(path)?));
            }
        }
    }
    // Every seed set's inputs, and the final latents of full computation
    // and of every variant (cache, one-shot, tcc per schedule).
    let variants = 1 + 3 * plans.len();
    memory.batch(&plans[0], args.batch_size).latents(
        "the evaluated latents",
        &plans[0],
        range.len(),
        (args.seeds.len() * (variants + 1)) as u128,
    );
    crate::runtime::check_model_source(&plans[0], &args.model)?;
    memory.check()?;
    let model = load_model(&plans[0], &args.model, &rt)?;
    let captions = Captions::for_plan(&plans[0], &args.model, &rt)?;

    // Labels: the file stem (made unique) when several schedules are compared.
    let mut entries: Vec<Entry> = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let prefix = if several {
            let stem = args.files[i]
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{i}"));
            let taken = entries.iter().any(|e| e.prefix == format!("{stem}:"));
            if taken {
                format!("{stem}#{i}:")
            } else {
                format!("{stem}:")
            }
        } else {
            String::new()
        };
        let hash = plan.hash();
        let cache = entries
            .iter()
            .find(|e| cache_actions(&e.plan) == cache_actions(&plan))
            .map(|e| e.cache.clone())
            .unwrap_or_else(|| format!("{prefix}cache"));
        entries.push(Entry {
            plan,
            hash,
            prefix,
            calibrated: Vec::new(),
            cache,
        });
    }

    // The priors: given files (checked against the plan) or fitted here.
    // The device is announced once the inputs are checked, or before the
    // first fit.
    let mut announced = false;
    for e in entries.iter_mut() {
        let plan = &e.plan;
        if plan.calibration.method != CalibMethod::Tcc {
            continue;
        }
        // The variants are labelled `one-shot` (the mode's name) and `tcc`.
        let mut wanted = vec![("tcc", CalibMode::Consistent)];
        if !args.no_one_shot {
            wanted.insert(0, (CalibMode::OneShot.as_str(), CalibMode::OneShot));
        }
        let sets: Vec<Option<PriorSet>> = wanted
            .iter()
            .map(|(_, mode)| {
                let i = given.iter().position(|(m, _)| m == mode)?;
                Some(given.remove(i).1)
            })
            .collect();
        for ((label, mode), set) in wanted.into_iter().zip(sets) {
            let label = format!("{}{label}", e.prefix);
            let set = match set {
                Some(set) => set,
                None => {
                    if !announced {
                        rt.announce(io.err)?;
                        announced = true;
                    }
                    // With --json, stdout holds only the JSON.
                    let log: &mut dyn std::io::Write = if args.json { io.err } else { io.out };
                    writeln!(
                        log,
                        "fitting {label} priors ({} samples, seed {}, {})",
                        plan.calibration.samples,
                        plan.calibration.seed,
                        protocol(&plan.calibration)
                    )?;
                    fit_priors(
                        &model,
                        captions.as_ref(),
                        plan,
                        e.hash,
                        mode,
                        args.batch_size,
                        &rt,
                        &label,
                        tcc_core::Shard::WHOLE,
                        &mut tcc_calib::Local,
                    )?
                    .0
                }
            };
            e.calibrated.push((label, set));
        }
    }
    let mut calib_seeds: Vec<(String, u64)> = Vec::new();
    for (l, s) in entries.iter().flat_map(|e| &e.calibrated) {
        calib_seeds.push((format!("the {l} priors"), s.meta.seed));
        if let Some((_, seed)) = s.meta.validation {
            calib_seeds.push((format!("the validation samples of the {l} priors"), seed));
        }
    }
    held_out(&args.seeds, &calib_seeds).map_err(CliError::input)?;
    if !announced {
        rt.announce(io.err)?;
    }

    let oracle = if args.no_oracle {
        false
    } else {
        args.oracle || entries[0].plan.model.hidden <= 512
    };
    let mut variants = Vec::new();
    let mut tests: Vec<(String, String)> = Vec::new();
    for e in &entries {
        if !variants.iter().any(|v: &Variant| v.name == e.cache) {
            variants.push(Variant {
                name: e.cache.clone(),
                plan: &e.plan,
                hooks: Box::new(NoHooks),
                oracle: false,
            });
        }
        for (label, set) in &e.calibrated {
            variants.push(Variant {
                name: label.clone(),
                plan: &e.plan,
                hooks: Box::new(
                    PriorHooks::from_set(set, PRIOR_DTYPE, &rt.device)
                        .map_err(|e| CliError::Failure(e.to_string()))?,
                ),
                oracle,
            });
        }
        let tcc = format!("{}tcc", e.prefix);
        if !e.calibrated.is_empty() {
            if !args.no_one_shot {
                tests.push((tcc.clone(), format!("{}one-shot", e.prefix)));
            }
            tests.push((tcc.clone(), e.cache.clone()));
        }
    }
    // Several schedules: each one's tcc against the first calibrated one's.
    let calibrated_prefixes: Vec<&str> = entries
        .iter()
        .filter(|e| !e.calibrated.is_empty())
        .map(|e| e.prefix.as_str())
        .collect();
    for p in calibrated_prefixes.iter().skip(1) {
        tests.push((format!("{p}tcc"), format!("{}tcc", calibrated_prefixes[0])));
    }

    let first = &entries[0].plan;
    let full = first.all_compute();
    let mut sets = Vec::new();
    for &seed in &args.seeds {
        let inputs = Inputs::new(first, seed, args.n, None, captions.as_ref(), &rt)?;
        let mut batches = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let len = args.batch_size.min(range.end - start);
            batches.push(inputs.batch(first, start, len)?);
            start += len;
        }
        sets.push(SeedSet {
            seed,
            batches,
            conditions: inputs.conditions()[range.clone()].to_vec(),
            labels: inputs.labels[range.clone()].to_vec(),
        });
    }
    let scorer = if args.model.random_weights.is_none() {
        TestbedScorer::for_model(&first.model.name, &rt.device)?
    } else {
        None
    };
    let total = (args.seeds.len() * range.len() * first.steps.len() * (variants.len() + 1)) as u64;
    let bar = progress("evaluating", total);
    let sums = accumulate(
        &model,
        &full,
        &mut variants,
        &sets,
        scorer.as_ref().map(|s| s as &dyn Scorer),
        &mut |p| bar.inc(p.samples as u64),
    )?;
    bar.finish_and_clear();
    let context = ReportContext {
        sources: args.files.iter().map(|f| f.display().to_string()).collect(),
        schedules: entries
            .iter()
            .map(|e| (e.plan.source.clone(), e.hash.to_string()))
            .collect(),
        model: first.model.name.clone(),
        steps: first.steps.len(),
        seeds: args.seeds.clone(),
        tests,
        priors: entries
            .iter()
            .flat_map(|e| {
                e.calibrated
                    .iter()
                    .map(|(l, s)| PriorsInfo::of(l, s, &e.plan.calibration))
            })
            .collect(),
    };
    let mut terms = Vec::new();
    for (label, set) in entries.iter().flat_map(|e| &e.calibrated) {
        let i = sums.names.iter().position(|n| n == label);
        terms.push(prior_terms(i.map(|i| &sums.moments[i - 1]), set)?);
    }
    if args.shard.is_some() {
        return crate::eval_partial::write_shard(
            io,
            &out,
            crate::eval_partial::ShardRun {
                context,
                n: args.n,
                batch_size: args.batch_size,
                shard,
                samples: range,
                priors: priors_files,
            },
            sums,
            terms,
        );
    }
    let report = sums
        .report(
            scorer.as_ref().map(|s| s.reference()),
            &context.test_pairs(),
        )
        .map_err(|e| CliError::Failure(e.to_string()))?;
    print_report(io, &context, &report, &terms, &plot, args.json).map(|_| ())
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
    pub fn test_pairs(&self) -> Vec<(&str, &str)> {
        self.tests
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }
}

/// One calibrated variant's priors, as the report describes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PriorsInfo {
    pub variant: String,
    pub mode: CalibMode,
    pub select: Selection,
    pub prior: PriorKind,
    pub alpha: f64,
    pub sites: usize,
    pub sites_with_prior: usize,
    pub samples: usize,
    pub seed: u64,
    pub validation: Option<(usize, u64)>,
    /// The plan's calibration settings: which priors the oracle tries.
    pub calibration: CalibrationSpec,
}

impl PriorsInfo {
    fn of(variant: &str, set: &PriorSet, calibration: &CalibrationSpec) -> PriorsInfo {
        PriorsInfo {
            variant: variant.to_string(),
            mode: set.meta.mode,
            select: set.meta.select,
            prior: set.meta.prior,
            alpha: set.meta.alpha,
            sites: set.sites().len(),
            sites_with_prior: set.priors.len(),
            samples: set.meta.samples,
            seed: set.meta.seed,
            validation: set.meta.validation,
            calibration: calibration.clone(),
        }
    }
}

/// Per calibrated site with oracle moments: the error terms of the
/// variant's prior on them ([`Moments::error_terms`], sums over samples,
/// so shards add them up) and the site's blend: `[e0, e1, e2, alpha]`.
pub(crate) type PriorTerms = BTreeMap<Site, [f64; 4]>;

fn prior_terms(
    moments: Option<&BTreeMap<Site, Moments>>,
    set: &PriorSet,
) -> Result<PriorTerms, CliError> {
    let fail = |e: tcc_calib::CalibError| CliError::Failure(e.to_string());
    let mut terms = BTreeMap::new();
    for (site, m) in moments.into_iter().flatten() {
        let t = match set.priors.get(site) {
            Some(p) => {
                let (e0, e1, e2) = m.error_terms(&p.fold(1.0)).map_err(fail)?;
                [e0, e1, e2, set.alpha(site)]
            }
            None => [m.error_identity(), 0.0, 0.0, 0.0],
        };
        terms.insert(*site, t);
    }
    Ok(terms)
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
    let oracles = oracle_rows(report, &context.priors, terms)?;
    write_plot(plot, &context.schedules[0].0, report)?;
    let doc = report_json(context, report, &oracles, plot);
    if json {
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failure(e.to_string()))?;
        writeln!(io.out, "{text}")?;
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

/// One calibrated step of one variant: the relative distance of its
/// branch outputs to full computation's (every token, both CFG halves),
/// reused as they are, with the variant's priors, and with the oracle: the
/// best prior of the variant's kind(s) fitted on these samples themselves.
#[derive(Clone, Debug, serde::Serialize)]
struct OracleRow {
    variant: String,
    step: usize,
    before: f64,
    used: f64,
    oracle: f64,
}

fn oracle_rows(
    report: &Report,
    priors: &[PriorsInfo],
    terms: &[PriorTerms],
) -> Result<Vec<OracleRow>, CliError> {
    let fail = |e: tcc_calib::CalibError| CliError::Failure(e.to_string());
    let mut rows = Vec::new();
    for (info, terms) in priors.iter().zip(terms) {
        let label = &info.variant;
        let Some(v) = report.variants.iter().find(|v| &v.name == label) else {
            continue;
        };
        if v.moments.is_empty() {
            continue;
        }
        // The oracle tries the variant's kinds, every ridge and its blends
        // (and 1), on every token of both halves.
        let mut spec = info.calibration.clone();
        spec.candidates = spec.kinds();
        spec.select = Selection::Validated;
        let mut alphas = info.calibration.alpha_grid();
        if !alphas.contains(&1.0) {
            alphas.push(1.0);
        }
        spec.alphas = alphas;
        let mut per_step: BTreeMap<usize, (f64, f64, f64, f64)> = BTreeMap::new();
        for (site, m) in &v.moments {
            let before = m.error_identity();
            let used = match terms.get(site) {
                Some(&[e0, e1, e2, alpha]) => blended_error((e0, e1, e2), alpha),
                None => before,
            };
            let centered = Centered::from_moments(m).map_err(fail)?;
            let candidates = fit_candidates(&centered, &spec).map_err(fail)?;
            let best = choose(&candidates, &spec, Some(m)).map_err(fail)?;
            let e = per_step.entry(site.step).or_default();
            e.0 += before;
            e.1 += used;
            e.2 += best.val_after.unwrap_or(before);
            e.3 += m.norm_a();
        }
        for (step, (before, used, oracle, norm)) in per_step {
            let rel = |x: f64| if norm > 0.0 { (x / norm).sqrt() } else { 0.0 };
            rows.push(OracleRow {
                variant: label.clone(),
                step,
                before: rel(before),
                used: rel(used),
                oracle: rel(oracle),
            });
        }
    }
    Ok(rows)
}

fn load_priors(
    path: &Path,
    plan: &Plan,
    hash: &PlanHash,
    mode: CalibMode,
) -> Result<PriorSet, CliError> {
    let set = PriorSet::load(path).map_err(CliError::input)?;
    set.check_binding(hash, &plan.model.name)
        .and_then(|()| set.check_plan(plan))
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
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
