//! `tcc bench`: the measured wall-time speedup of a schedule's plan over
//! full computation, next to the cost model's prediction, on this machine's
//! device.

use std::path::PathBuf;
use std::time::Instant;

use tcc_exec::{NoHooks, SampleBatch, Trajectory};
use tcc_model::BlockModel;
use tcc_plan::{Plan, PlanCost};

use crate::device::Runtime;
use crate::error::{CliError, Io};
use crate::runtime::{load_captions, load_model, sample_inputs, ModelArgs};

const EXAMPLES: &str = "\
Examples:
  tcc bench schedules/fora3.sched
  tcc bench schedules/dit-xl2-fora3.sched --random-weights 0 --steps 6
  tcc bench schedules/dit-xl2-fora3.sched --random-weights 0 --device cuda --dtype bf16 --batch-size 8 --json

Full computation and the plan run alternately --rounds times from the same
noise (so load from other processes hits both alike), after a warm-up of two
steps of each; the report gives medians and their ratio, measured in one
run. Priors are not applied: this times the cache alone. Large models
whose weights you do not have run with --random-weights (PixArt-α then gets
random caption embeddings, no T5).";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The schedule (.sched) to time.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Samples per model batch (the model batch is twice that with CFG).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Time with this many sampling steps instead of the schedule's.
    #[arg(long)]
    steps: Option<u64>,
    /// Timed runs of each (full computation and the plan).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// At most this many samples per batch and timed rounds: a benchmark is
/// seconds to minutes, not a sampling run.
const MAX_BATCH: usize = 4096;
const MAX_ROUNDS: usize = 1000;

pub fn run(args: Args, io: &mut Io) -> Result<(), CliError> {
    if args.batch_size == 0 || args.batch_size > MAX_BATCH {
        return Err(CliError::input(format!(
            "--batch-size must be in 1..={MAX_BATCH}"
        )));
    }
    if args.rounds == 0 || args.rounds > MAX_ROUNDS {
        return Err(CliError::input(format!(
            "--rounds must be in 1..={MAX_ROUNDS}"
        )));
    }
    let rt = Runtime::from_args(&args.model.runtime)?;
    let mut plan = args.model.load_plan(&args.file, args.steps, io.err)?;
    crate::runtime::check_model_source(&plan, &args.model)?;
    let mut memory = crate::limits::Memory::new();
    memory
        .model(&plan, &args.model, rt.dtype)
        .batch(&plan, args.batch_size)
        .check()?;
    // Timing the cache alone: priors are a separate cost.
    plan.calibration.method = tcc_core::CalibMethod::None;
    for s in &mut plan.steps {
        for a in s.actions.iter_mut().flatten() {
            *a = a.without_prior();
        }
    }
    let full = plan.all_compute();
    let model = load_model(&plan, &args.model, &rt)?;
    let captions = load_captions(&plan, &args.model, &rt)?;
    let inputs = sample_inputs(&plan, 0, args.batch_size, None, captions.as_ref(), &rt)?;
    let batch = inputs.batch(&plan, 0, args.batch_size)?;
    rt.announce(io.err)?;
    let t = time(&model, &plan, &full, &batch, args.rounds, &rt)?;

    let m = &plan.model;
    let nsteps = plan.steps.len();
    let predicted = PlanCost::of(&plan).speedup();
    let measured = t.full_s / t.plan_s;
    let step_flop = 2.0 * PlanCost::of(&full).total as f64 / nsteps as f64;
    let model_batch = args.batch_size * if plan.sampler.uses_cfg() { 2 } else { 1 };
    // The cost model counts one generated sample (both CFG halves).
    let gflops = |ms: f64| step_flop * args.batch_size as f64 / (ms * 1e6);
    if args.json {
        let doc = serde_json::json!({
            "schedule": plan.source,
            "model": m.name,
            "device": rt.describe(),
            "batch_size": args.batch_size,
            "model_batch": model_batch,
            "steps": nsteps,
            "rounds": args.rounds,
            "full_step_ms": t.full_step_ms,
            "reuse_step_ms": t.reuse_step_ms,
            "full_run_s": t.full_s,
            "plan_run_s": t.plan_s,
            "full_s_per_step": t.full_s / nsteps as f64,
            "plan_s_per_step": t.plan_s / nsteps as f64,
            "full_step_gflops": gflops(t.full_step_ms),
            "measured_speedup": measured,
            "predicted_speedup": predicted,
            "measured_over_predicted": measured / predicted,
        });
        crate::output::print_json(io.out, &doc)?;
        return Ok(());
    }
    writeln!(
        io.out,
        "{} on {} ({} blocks, D={}, {} tokens, model batch {model_batch}) on {}: {nsteps} steps, {} rounds",
        plan.source,
        m.name,
        m.depth,
        m.hidden,
        m.tokens(),
        rt.describe(),
        args.rounds
    )?;
    writeln!(
        io.out,
        "full step:   {:8.1} ms  ({:.2} ms per block, {:.1} GFLOP/s)",
        t.full_step_ms,
        t.full_step_ms / m.depth as f64,
        gflops(t.full_step_ms)
    )?;
    match t.reuse_step_ms {
        Some(r) => writeln!(
            io.out,
            "reuse step:  {r:8.1} ms  ({:.2} ms per block)",
            r / m.depth as f64
        )?,
        None => writeln!(io.out, "reuse step:         - (the plan reuses nothing)")?,
    }
    writeln!(
        io.out,
        "full run:    {:8.3} s  ({:.4} s per step, median)",
        t.full_s,
        t.full_s / nsteps as f64
    )?;
    writeln!(
        io.out,
        "plan run:    {:8.3} s  ({:.4} s per step, median)",
        t.plan_s,
        t.plan_s / nsteps as f64
    )?;
    writeln!(
        io.out,
        "speedup: measured {measured:.2}x, predicted {predicted:.2}x ({:.0}% of predicted)",
        100.0 * measured / predicted
    )?;
    Ok(())
}

/// Medians over the timed rounds.
struct Timing {
    full_s: f64,
    plan_s: f64,
    /// A step of full computation.
    full_step_ms: f64,
    /// A step of the plan that reuses something, if any.
    reuse_step_ms: Option<f64>,
}

fn time<M: BlockModel>(
    model: &M,
    plan: &Plan,
    full: &Plan,
    batch: &SampleBatch,
    rounds: usize,
    rt: &Runtime,
) -> Result<Timing, CliError> {
    let fail = CliError::from;
    // Warm-up: the first steps load kernels and fill allocator pools.
    for p in [full, plan] {
        let mut traj = Trajectory::new(model, p, batch).map_err(fail)?;
        while !traj.is_done() && traj.next_step() < 2 {
            traj.step(&mut NoHooks).map_err(fail)?;
        }
    }
    rt.synchronize()?;
    let (mut full_s, mut plan_s) = (Vec::new(), Vec::new());
    let (mut full_step, mut reuse_step) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (p, runs) in [(full, &mut full_s), (plan, &mut plan_s)] {
            let mut traj = Trajectory::new(model, p, batch).map_err(fail)?;
            let start = Instant::now();
            while !traj.is_done() {
                let s = traj.next_step();
                let t0 = Instant::now();
                traj.step(&mut NoHooks).map_err(fail)?;
                rt.synchronize()?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if std::ptr::eq(p, full) {
                    full_step.push(ms);
                } else if !p.steps[s].is_full() {
                    reuse_step.push(ms);
                }
            }
            runs.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(Timing {
        full_s: median(&mut full_s),
        plan_s: median(&mut plan_s),
        full_step_ms: median(&mut full_step),
        reuse_step_ms: (!reuse_step.is_empty()).then(|| median(&mut reuse_step)),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
