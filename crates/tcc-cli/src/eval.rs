//! `tcc eval`: full vs cache vs cache + one-shot priors vs cache + TCC
//! priors, on seeds held out from calibration.

use std::path::{Path, PathBuf};

use tcc_calib::{PriorHooks, PriorSet};
use tcc_core::{CalibMethod, CalibMode};
use tcc_eval::{evaluate, held_out, plot_deviation, Report, Scorer, SeedSet, Series, Variant};
use tcc_exec::NoHooks;
use tcc_metrics::Summary;
use tcc_plan::Plan;

use crate::calibrate::{fit_priors, name};
use crate::common::{beside_cwd, CliError, Io};
use crate::device::{Runtime, PRIOR_DTYPE};
use crate::runtime::{load_model, progress, Captions, Inputs, ModelArgs};
use crate::scoring::TestbedScorer;

const EXAMPLES: &str = "\
Examples:
  tcc eval schedules/fora3.sched
  tcc eval schedules/fora3.sched --priors fora3.priors.safetensors --json > eval.json
  tcc eval schedules/fora3.sched --seeds 11,12,13,14,15 --n 200 --plot dev.png
  tcc eval schedules/fora3.sched --steps 25

Without --priors / --one-shot-priors, eval fits them first with the
schedule's [calibration] settings (like `tcc calibrate`). Evaluation seeds
must differ from the calibration seed. Priors are tied to the plan they were
fitted for: with --steps the plan changes, a priors file for the original
plan is refused, and priors are fitted anew for the new plan.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule (.sched) to evaluate.
    #[arg(value_name = "FILE")]
    file: PathBuf,
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
    /// Where to write the per-step deviation plot (default: FILE's name with
    /// `.eval.png`, in the current directory).
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    if args.n == 0 || args.batch_size == 0 {
        return Err(CliError::input("--n and --batch-size must be at least 1"));
    }
    if args.seeds.is_empty() {
        return Err(CliError::input("--seeds needs at least one seed"));
    }
    if args.steps == Some(0) {
        return Err(CliError::input("--steps must be at least 1"));
    }
    let rt = Runtime::from_args(&args.model.runtime)?;
    let plan = args.model.load_plan(&args.file, args.steps, io.err)?;
    let hash = plan.hash().to_string();
    let model = load_model(&plan, &args.model, &rt)?;
    let captions = Captions::for_plan(&plan, &args.model, &rt)?;

    // The priors: given files (checked against this plan) or fitted here.
    // The device is announced once the inputs are checked, or before the
    // first fit.
    let mut announced = false;
    let mut calibrated: Vec<(String, PriorSet)> = Vec::new();
    if plan.calibration.method == CalibMethod::Tcc {
        // Check the given files before spending time fitting the others.
        let wanted = [
            ("one-shot", &args.one_shot_priors, CalibMode::OneShot),
            ("tcc", &args.priors, CalibMode::Consistent),
        ];
        let mut given = Vec::new();
        for (_, path, mode) in &wanted {
            given.push(match path {
                Some(path) => Some(load_priors(path, &plan, &hash, *mode)?),
                None => None,
            });
        }
        for ((label, _, mode), set) in wanted.into_iter().zip(given) {
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
                        "fitting {label} priors ({} samples, seed {}, alpha {})",
                        plan.calibration.samples, plan.calibration.seed, plan.calibration.alpha
                    )?;
                    fit_priors(
                        &model,
                        captions.as_ref(),
                        &plan,
                        hash.clone(),
                        mode,
                        args.batch_size,
                        &rt,
                    )?
                    .0
                }
            };
            calibrated.push((label.to_string(), set));
        }
    } else if args.priors.is_some() || args.one_shot_priors.is_some() {
        return Err(CliError::input(format!(
            "{}: the schedule has no calibrated steps, so priors cannot apply to it",
            args.file.display()
        )));
    }
    let calib_seeds: Vec<(String, u64)> = calibrated
        .iter()
        .map(|(l, s)| (format!("the {l} priors"), s.meta.seed))
        .collect();
    held_out(&args.seeds, &calib_seeds).map_err(CliError::input)?;
    if !announced {
        rt.announce(io.err)?;
    }

    let mut variants = vec![Variant {
        name: "cache".into(),
        plan: &plan,
        hooks: Box::new(NoHooks),
    }];
    for (label, set) in &calibrated {
        variants.push(Variant {
            name: label.clone(),
            plan: &plan,
            hooks: Box::new(
                PriorHooks::from_set(set, PRIOR_DTYPE, &rt.device)
                    .map_err(|e| CliError::Failure(e.to_string()))?,
            ),
        });
    }
    let full = plan.all_compute();
    let mut sets = Vec::new();
    for &seed in &args.seeds {
        let inputs = Inputs::new(&plan, seed, args.n, None, captions.as_ref(), &rt)?;
        let mut batches = Vec::new();
        let mut start = 0;
        while start < args.n {
            let len = args.batch_size.min(args.n - start);
            batches.push(inputs.batch(&plan, start, len)?);
            start += len;
        }
        sets.push(SeedSet {
            seed,
            batches,
            conditions: inputs.conditions(),
            labels: inputs.labels.clone(),
        });
    }
    let scorer = if plan.model.name == "tiny" && args.model.random_weights.is_none() {
        Some(TestbedScorer::new(&rt.device)?)
    } else {
        None
    };
    let tests: Vec<(&str, &str)> = if calibrated.is_empty() {
        Vec::new()
    } else {
        vec![("tcc", "one-shot"), ("tcc", "cache")]
    };
    let total = (args.seeds.len() * args.n * plan.steps.len() * (variants.len() + 1)) as u64;
    let bar = progress("evaluating", total);
    let report = evaluate(
        &model,
        &full,
        &mut variants,
        &sets,
        scorer.as_ref().map(|s| s as &dyn Scorer),
        &tests,
        &mut |p| bar.inc(p.samples as u64),
    )
    .map_err(|e| CliError::Failure(e.to_string()))?;
    bar.finish_and_clear();

    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| beside_cwd(&args.file, "eval.png"));
    write_plot(&plot, &plan, &report)?;

    if args.json {
        let doc = serde_json::json!({
            "schedule": plan.source,
            "plan_hash": hash,
            "model": plan.model.name,
            "steps": plan.steps.len(),
            "seeds": args.seeds,
            "priors": calibrated.iter().map(|(l, s)| serde_json::json!({
                "variant": l,
                "mode": name(&s.meta.mode),
                "alpha": s.meta.alpha,
                "samples": s.meta.samples,
                "seed": s.meta.seed,
            })).collect::<Vec<_>>(),
            "plot": plot.display().to_string(),
            "report": report,
        });
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::Failure(e.to_string()))?;
        writeln!(io.out, "{text}")?;
    } else {
        print_tables(io, &plan, &args, &report, &calibrated, &plot)?;
    }
    Ok(())
}

fn load_priors(
    path: &Path,
    plan: &Plan,
    hash: &str,
    mode: CalibMode,
) -> Result<PriorSet, CliError> {
    let set = PriorSet::load(path).map_err(CliError::input)?;
    set.check_binding(hash, &plan.model.name)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    if set.meta.mode != mode {
        return Err(CliError::input(format!(
            "{}: these are {} priors, but the option expects {} priors",
            path.display(),
            name(&set.meta.mode),
            name(&mode)
        )));
    }
    Ok(set)
}

const COLORS: [[u8; 3]; 4] = [[214, 39, 40], [255, 127, 14], [44, 160, 44], [31, 119, 180]];

fn write_plot(path: &Path, plan: &Plan, report: &Report) -> Result<(), CliError> {
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
        &format!("{}: deviation from the reference trajectory", plan.source),
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
    plan: &Plan,
    args: &Args,
    report: &Report,
    calibrated: &[(String, PriorSet)],
    plot: &Path,
) -> Result<(), CliError> {
    let out = &mut io.out;
    writeln!(
        out,
        "\n{} on {}: {} seed sets x {} samples (seeds {}), {} steps",
        plan.source,
        plan.model.name,
        args.seeds.len(),
        report.samples_per_set,
        args.seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        plan.steps.len()
    )?;
    for (label, set) in calibrated {
        writeln!(
            out,
            "  {label} priors: {} mode, alpha {}, fitted on {} samples of seed {} (held out from evaluation)",
            name(&set.meta.mode),
            set.meta.alpha,
            set.meta.samples,
            set.meta.seed
        )?;
    }
    writeln!(out, "mean ± std over seed sets:\n")?;
    writeln!(
        out,
        "{:<9} {:>17} {:>17} {:>19} {:>17} {:>15}",
        "variant", "FD", "class accuracy", "rel. L2 vs full", "PSNR vs full", "speedup"
    )?;
    for v in &report.variants {
        writeln!(
            out,
            "{:<9} {:>17} {:>17} {:>19} {:>17} {:>15}",
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
            writeln!(
                out,
                "  {} vs {}: median difference {:+.4}, {} closer in {:.1}% of samples, p = {:.3e}",
                t.a,
                t.b,
                t.median_difference,
                t.a,
                100.0 * t.a_better,
                t.test.p_value
            )?;
        }
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
    for k in 0..plan.steps.len() {
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
