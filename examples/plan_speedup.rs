//! Measured wall-time speedup of a plan over full computation, next to the
//! cost model's prediction, on a model with random weights.
//!
//! ```sh
//! cargo run --release --example plan_speedup -- [SCHEDULE] [--steps N] [--rounds R]
//! ```
//!
//! Default: `schedules/fora3.sched`'s cache rules on a DiT-XL/2-shaped model
//! (`--model dit-xl-2-256`), batch 1 with CFG (model batch 2), 256 tokens.
//! `--model pixart-alpha-256` times PixArt-α instead (random caption
//! embeddings, 120 tokens; no T5).
//! Full and cached runs alternate `--rounds` times so that load from other
//! processes hits both alike; the report gives medians and their ratio,
//! measured in one run. Also prints ms per block and GFLOP/s for a full step
//! and for a reuse step.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tcc_core::ModelFamily;
use tcc_exec::{NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Dit, DitConfig, PixArt, PixArtConfig};
use tcc_plan::{Plan, PlanCost};
use tcc_sampler::NoiseRng;

/// The same allocator as the `tcc` binary, so timings match what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut schedule = "schedules/fora3.sched".to_string();
    let mut model_name = "dit-xl-2-256".to_string();
    let mut steps: Option<usize> = Some(6);
    let mut rounds = 3;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model_name = args.next().ok_or("--model NAME")?,
            "--steps" => steps = Some(args.next().ok_or("--steps N")?.parse()?),
            "--all-steps" => steps = None,
            "--rounds" => rounds = args.next().ok_or("--rounds R")?.parse()?,
            other => schedule = other.to_string(),
        }
    }
    let text = std::fs::read_to_string(&schedule)?;
    // Swap the model (and shorten the sampler) before compiling, so the plan
    // and its cost model describe exactly what is run.
    let mut text = text.replace("name = \"tiny\"", &format!("name = \"{model_name}\""));
    if let Some(n) = steps {
        text = replace_steps(&text, n);
    }
    let parsed = tcc_schedule::parse(&schedule, &text).map_err(|d| d.render(&schedule, &text))?;
    let mut plan =
        tcc_plan::compile(&parsed, Path::new(".")).map_err(|d| d.render(&schedule, &text))?;
    // Timing the cache alone: priors are a separate cost.
    plan.calibration.method = tcc_core::CalibMethod::None;
    for s in &mut plan.steps {
        for a in s.actions.iter_mut().flatten() {
            if let tcc_plan::Action::Reuse { prior, .. } = a {
                *prior = false;
            }
        }
    }
    let full = plan.all_compute();
    let m = &plan.model;
    let dev = Device::Cpu;
    let noise = NoiseRng::new(0).randn((1, m.in_channels, m.input_size, m.input_size), &dev)?;
    match m.family {
        ModelFamily::Dit => {
            let model = Dit::random(&DitConfig::from_shape(m)?, 0, DType::F32, &dev)?;
            let batch = SampleBatch {
                noise,
                cond: Tensor::new(&[1u32], &dev)?,
                uncond: Some(Tensor::new(&[m.num_classes as u32], &dev)?),
                cond_mask: None,
                uncond_mask: None,
                seed: 0,
            };
            report(&model, &schedule, &plan, &full, &batch, rounds)
        }
        ModelFamily::Pixart => {
            let model = PixArt::random(&PixArtConfig::from_shape(m)?, 0, DType::F32, &dev)?;
            // Random caption embeddings stand in for T5's (timing only).
            let caption = NoiseRng::new(1).randn((1, m.caption_tokens, m.caption_dim), &dev)?;
            let batch = SampleBatch {
                noise,
                uncond: Some(caption.zeros_like()?),
                cond_mask: None,
                uncond_mask: None,
                cond: caption,
                seed: 0,
            };
            report(&model, &schedule, &plan, &full, &batch, rounds)
        }
    }
}

fn report<M: BlockModel>(
    model: &M,
    schedule: &str,
    plan: &Plan,
    full: &Plan,
    batch: &SampleBatch,
    rounds: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let m = &plan.model;
    println!(
        "{} on {} ({} blocks, D={}, {} tokens, model batch {}), {} steps, {} rounds",
        schedule,
        m.name,
        m.depth,
        m.hidden,
        m.tokens(),
        if plan.sampler.uses_cfg() { 2 } else { 1 },
        plan.steps.len(),
        rounds
    );
    let mut full_times = Vec::new();
    let mut plan_times = Vec::new();
    let mut full_step_ms = Vec::new();
    let mut reuse_step_ms = Vec::new();
    for _ in 0..rounds {
        for (p, times) in [(full, &mut full_times), (plan, &mut plan_times)] {
            let mut traj = Trajectory::new(model, p, batch)?;
            let start = Instant::now();
            while !traj.is_done() {
                let s = traj.next_step();
                let t0 = Instant::now();
                traj.step(&mut NoHooks)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if std::ptr::eq(p, full) {
                    full_step_ms.push(ms);
                } else if !p.steps[s].is_full() {
                    reuse_step_ms.push(ms);
                }
            }
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let (tf, tp) = (median(&mut full_times), median(&mut plan_times));
    let cost = PlanCost::of(plan);
    let predicted = cost.speedup();
    let measured = tf / tp;
    let full_cost = PlanCost::of(full);
    let step_macs = full_cost.total as f64 / full.steps.len() as f64;
    let f_ms = median(&mut full_step_ms);
    let r_ms = median(&mut reuse_step_ms);
    println!(
        "full step:   {f_ms:8.1} ms  ({:.1} ms per block, {:.1} GFLOP/s)",
        f_ms / m.depth as f64,
        2.0 * step_macs / (f_ms * 1e6)
    );
    println!(
        "reuse step:  {r_ms:8.1} ms  ({:.1} ms per block)",
        r_ms / m.depth as f64
    );
    println!("full run:    {tf:8.2} s (median)");
    println!("plan run:    {tp:8.2} s (median)");
    println!(
        "speedup: measured {measured:.2}x, predicted {predicted:.2}x ({:.0}% of predicted)",
        100.0 * measured / predicted
    );
    Ok(())
}

fn replace_steps(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("steps = ") && !l.contains('"') {
                format!("steps = {n}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
