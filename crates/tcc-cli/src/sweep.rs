//! `tcc sweep`: one setting of a schedule at several values, each measured
//! against full computation on the same samples (tcc-eval's `sweep`).

use std::path::PathBuf;

use tcc_eval::{held_out, parse_values, Point, Scorer, SeedSet, SweepParam};
use tcc_exec::Inputs;

use crate::common::spelled;
use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::limits::{check_count, Memory, MAX_BATCH, MAX_SAMPLES};
use crate::runtime::{load_captions, load_model, progress, ModelArgs};
use crate::scoring::TestbedScorer;

const EXAMPLES: &str = "\
Examples:
  tcc sweep schedules/fbcache.sched --param threshold --values 0,0.04,0.08,0.12,0.2,inf
  tcc sweep schedules/toca3.sched --param fresh-ratio --values 0,0.05,0.1,0.2,0.4,1 --n 50
  tcc sweep schedules/fora3.sched --param refresh --values 1.5,2,2.5,3,4 --json > sweep.json

Parameters: `threshold` sets the [dynamic] policy's threshold (>= 0, or
inf: reuse whenever the bounds allow); `fresh-ratio` the fresh-ratio of
every `partial` rule (ToCa, in [0, 1]); `refresh` N of every `every N`
step selector of the [[cache]] rules (FORA's refresh interval, >= 1).

Full computation runs once per batch and every value's plan beside it, from
the same noise and classes. The schedule's [calibration] is ignored: a
sweep measures the cache policy itself, without priors. MAC speedup is the cost model's for
static plans and, for run-time policies, the realised one (full
computation's MACs over the MACs the decisions ran).";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule whose setting is swept.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The setting to vary.
    #[arg(long, value_parser = spelled(SweepParam::ALL))]
    param: SweepParam,
    /// Its values, comma-separated (`inf` for an infinite threshold); at
    /// most 32.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    values: Vec<String>,
    /// Seed sets, comma-separated (several for error bars).
    #[arg(long, value_delimiter = ',', default_values_t = [101u64, 102, 103, 104, 105])]
    seeds: Vec<u64>,
    /// Samples per seed set (classes cycle).
    #[arg(long, short = 'n', default_value_t = 100)]
    n: usize,
    /// Samples per model batch (a run-time policy decides per batch).
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Sweep with this many sampling steps instead of the schedule's.
    #[arg(long)]
    steps: Option<u64>,
    /// Print the results as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// The most seed sets one sweep takes.
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
    held_out(&args.seeds, &[]).map_err(CliError::input)?;
    let values = parse_values(args.param, &args.values).map_err(CliError::input)?;
    let rt = Runtime::from_args(&args.model.runtime)?;
    let mut points = Vec::with_capacity(values.len());
    for &value in &values {
        let plan = args
            .model
            .load_plan_edited(&args.file, args.steps, io.err, &mut |s| {
                args.param
                    .apply(s, value)
                    .map_err(|e| CliError::input(format!("{} {e}", args.file.display())))
            })?;
        points.push(Point { value, plan });
    }
    let first = &points[0].plan;
    let scored = args.model.random_weights.is_none()
        && tcc_testbed::Testbed::from_name(&first.model.name).is_some();
    if scored && args.n < 2 {
        return Err(CliError::input(format!(
            "--n {}: FD against the testbed's data needs at least 2 samples per seed set",
            args.n
        )));
    }
    let mut memory = Memory::new();
    memory
        .model(first, &args.model, rt.dtype)
        .batches(first, args.batch_size, values.len() + 1)
        .latents(
            "the final latents",
            first,
            args.n,
            (args.seeds.len() * (values.len() + 1)) as u128,
        );
    crate::runtime::check_model_source(first, &args.model)?;
    memory.check()?;
    let model = load_model(first, &args.model, &rt)?;
    let captions = load_captions(first, &args.model, &rt)?;
    rt.announce(io.err)?;
    let mut sets = Vec::with_capacity(args.seeds.len());
    for &seed in &args.seeds {
        let inputs = Inputs::cycling(first, seed, args.n, captions.as_ref(), &rt.device);
        sets.push(SeedSet::new(first, &inputs, 0..args.n, args.batch_size)?);
    }
    let scorer = if scored {
        TestbedScorer::for_model(&first.model.name, &rt.device)?
    } else {
        None
    };
    let total = (args.seeds.len() * args.n * first.steps.len() * (values.len() + 1)) as u64;
    let bar = progress("sweeping", total);
    let result = tcc_eval::sweep(
        &model,
        args.param,
        &points,
        &sets,
        scorer.as_ref().map(|s| s as &dyn Scorer),
        &mut |p| bar.inc(p.samples as u64),
    )?;
    bar.finish_and_clear();
    if args.json {
        crate::output::print_json(io.out, &result)?;
    } else {
        write!(io.out, "{}", result.table())?;
    }
    Ok(())
}
