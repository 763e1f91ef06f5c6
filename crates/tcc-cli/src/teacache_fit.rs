//! `tcc teacache-fit`: TeaCache's rescale polynomial for a model, fitted
//! on full-computation runs (what every TeaCache user has to do per model).

use std::path::PathBuf;

use tcc_core::{Polynomial, MAX_RESCALE_COEFFS};
use tcc_exec::{teacache_changes, StepChange};

use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::limits::{check_count, MAX_BATCH, MAX_SAMPLES};
use crate::runtime::{load_captions, load_model, progress, sample_inputs, ModelArgs};

const EXAMPLES: &str = "\
Examples:
  tcc teacache-fit schedules/teacache.sched --n 16
  tcc teacache-fit schedules/dit-xl2-teacache.sched --model DiT-XL-2-256x256.pt --n 64 --degree 4
  tcc teacache-fit schedules/teacache.sched --n 16 --json > fit.json

Samples --n samples with full computation under the schedule's model and
sampler (its cache rules or policy are ignored) and records, for every
step after the first and every batch, the relative L1 change of block 0's
modulated input since the previous step (x: TeaCache's indicator, over the
whole model batch) and of the model output (y). The least-squares
polynomial y = p(x) of --degree (numpy.polyfit's, highest power first) is
the `rescale` of a `[dynamic]` TeaCache policy: paste the printed line into
the schedule. Decisions are made per batch: fit with the --batch-size you
will sample with.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule (.sched) whose model and sampler to fit for.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Number of samples.
    #[arg(long, short = 'n', default_value_t = 16)]
    n: usize,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per model batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Degree of the polynomial (TeaCache's published fits: 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(0..MAX_RESCALE_COEFFS as i64))]
    degree: u8,
    /// Print the pairs and the fit as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    check_count("--n", args.n, MAX_SAMPLES)?;
    check_count("--batch-size", args.batch_size, MAX_BATCH)?;
    let rt = Runtime::from_args(&args.model.runtime)?;
    let plan = args.model.load_plan(&args.file, None, io.err)?;
    crate::runtime::check_model_source(&plan, &args.model)?;
    let degree = args.degree as usize;
    let steps = plan.steps.len();
    let batches = args.n.div_ceil(args.batch_size);
    // Each batch gives steps - 1 pairs; a unique fit needs degree + 1.
    if batches * steps.saturating_sub(1) <= degree {
        return Err(CliError::input(format!(
            "a degree-{degree} fit needs more than {degree} (input, output) pairs; {batches} batch(es) of {steps} steps give {}: raise --n or lower --batch-size / --degree",
            batches * steps.saturating_sub(1)
        )));
    }
    crate::limits::Memory::new()
        .model(&plan, &args.model, rt.dtype)
        .batch(&plan, args.batch_size.min(args.n))
        .check()?;

    let model = load_model(&plan, &args.model, &rt)?;
    let captions = load_captions(&plan, &args.model, &rt)?;
    let inputs = sample_inputs(&plan, args.seed, args.n, None, captions.as_ref(), &rt)?;
    rt.announce(io.err)?;
    let bar = progress("full runs", (args.n * steps) as u64);
    let mut pairs: Vec<(usize, StepChange)> = Vec::new();
    for batch in inputs.batches(&plan, 0..args.n, args.batch_size) {
        let (start, b) = batch?;
        let len = b
            .noise
            .dim(0)
            .map_err(|e| CliError::Failure(e.to_string()))?;
        for c in teacache_changes(&model, &plan, &b)? {
            if !(c.input.is_finite() && c.output.is_finite()) {
                return Err(CliError::Failure(format!(
                    "samples {start}..{}: step {}: the changes are not finite (input {}, output {})",
                    start + len,
                    c.step,
                    c.input,
                    c.output
                )));
            }
            pairs.push((start, c));
        }
        bar.inc((len * steps) as u64);
    }
    bar.finish_and_clear();

    let x: Vec<f64> = pairs.iter().map(|(_, c)| c.input).collect();
    let y: Vec<f64> = pairs.iter().map(|(_, c)| c.output).collect();
    let fit = Polynomial::fit(&x, &y, degree).map_err(|e| {
        CliError::input(format!(
            "no {degree}-degree fit of the measured changes: {e}"
        ))
    })?;
    let ss = |v: &mut dyn Iterator<Item = f64>| v.map(|t| t * t).sum::<f64>().sqrt();
    let rel_residual = ss(&mut x.iter().zip(&y).map(|(a, b)| fit.eval(*a) - b))
        / ss(&mut y.iter().copied()).max(f64::MIN_POSITIVE);
    let coeffs: Vec<String> = fit.coeffs().iter().map(|c| format!("{c:?}")).collect();
    let line = format!("rescale = [{}]", coeffs.join(", "));

    if args.json {
        let doc = serde_json::json!({
            "schedule": plan.source,
            "model": plan.model.name,
            "sampler": plan.sampler.kind.as_str(),
            "steps": steps,
            "samples": args.n,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "degree": degree,
            "pairs": pairs.iter().map(|(start, c)| serde_json::json!({
                "batch_start": start,
                "step": c.step,
                "input_change": c.input,
                "output_change": c.output,
            })).collect::<Vec<_>>(),
            "rescale": fit.coeffs(),
            "rel_residual": rel_residual,
        });
        crate::output::print_json(io.out, &doc)?;
        return Ok(());
    }
    writeln!(
        io.out,
        "teacache-fit {}: {} ({}, {steps} steps), {} samples in {batches} batch(es) of up to {}, seed {}, full computation",
        plan.source,
        plan.model.name,
        plan.sampler.kind.as_str(),
        args.n,
        args.batch_size,
        args.seed
    )?;
    writeln!(
        io.out,
        "step  input change  output change  fitted   (mean over the batches; relative L1 change since the step before)"
    )?;
    for step in 1..steps {
        let at: Vec<&StepChange> = pairs
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.step == step)
            .collect();
        let mean = |f: &dyn Fn(&StepChange) -> f64| {
            at.iter().map(|c| f(c)).sum::<f64>() / at.len().max(1) as f64
        };
        writeln!(
            io.out,
            "{step:>4}  {:>12.6}  {:>13.6}  {:>9.6}",
            mean(&|c| c.input),
            mean(&|c| c.output),
            mean(&|c| fit.eval(c.input))
        )?;
    }
    writeln!(
        io.out,
        "degree-{degree} least-squares fit of the output change on the input change over {} pairs (numpy.polyfit order, highest power first): relative residual {rel_residual:.4}",
        pairs.len()
    )?;
    writeln!(io.out, "{line}")?;
    Ok(())
}
