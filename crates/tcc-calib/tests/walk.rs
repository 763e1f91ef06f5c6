//! The calibration walk on a random-weight tiny DiT: the invariants SPEC
//! states for TCC, checked end to end through the executor.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tcc_calib::{calibrate, CalibBatch, Calibration, Prior, PriorHooks, PriorMeta, PriorSet};
use tcc_core::CalibMode;
use tcc_exec::{Hooks, NoHooks, SampleBatch, Trajectory};
use tcc_model::{Dit, DitConfig};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

/// FORA N=3 over 6 DDIM steps; priors at the two reuses of the first
/// segment (step 2 chains on step 1's corrected cache entry).
const FORA: &str = r#"
[model]
name = "tiny"

[sampler]
kind = "ddim"
steps = 6
guidance = 1.5

[[cache]]
refresh = "every 3"

[calibration]
method = "tcc"
steps = "1, 2"
alpha = 0.5
samples = 6
seed = 0
"#;

fn plan(text: &str) -> Plan {
    let s = tcc_schedule::parse("walk.sched", text).expect("parses");
    tcc_plan::compile(&s, Path::new("")).expect("compiles")
}

fn model(plan: &Plan) -> Dit {
    let cfg = DitConfig::from_shape(&plan.model).unwrap();
    Dit::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap()
}

fn batch(plan: &Plan, seed: u64, classes: &[u32]) -> SampleBatch {
    let m = &plan.model;
    let dev = Device::Cpu;
    let n = classes.len();
    SampleBatch {
        noise: NoiseRng::new(seed)
            .randn((n, m.in_channels, m.input_size, m.input_size), &dev)
            .unwrap(),
        cond: Tensor::new(classes, &dev).unwrap(),
        uncond: Some(Tensor::full(m.num_classes as u32, n, &dev).unwrap()),
        cond_mask: None,
        uncond_mask: None,
        seed,
    }
}

/// Two batches, 6 samples over classes 0..3 (two rows per class pool).
fn batches(plan: &Plan) -> Vec<CalibBatch> {
    [(0u64, [0u32, 1, 2]), (1, [0, 1, 2])]
        .into_iter()
        .map(|(seed, classes)| CalibBatch {
            batch: batch(plan, seed, &classes),
            conditions: classes.iter().map(|&c| c as u64).collect(),
        })
        .collect()
}

fn run(model: &Dit, plan: &Plan, mode: CalibMode) -> Calibration {
    calibrate(model, plan, &batches(plan), mode, DType::F32, &mut |_| {}).unwrap()
}

fn sample(model: &Dit, plan: &Plan, hooks: &mut dyn Hooks) -> Vec<u32> {
    let b = batch(plan, 42, &[3, 7]);
    let x = Trajectory::new(model, plan, &b)
        .unwrap()
        .run(hooks)
        .unwrap();
    x.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn the_first_prior_is_shared_by_both_modes_and_later_ones_differ() {
    let p = plan(FORA);
    let m = model(&p);
    let consistent = run(&m, &p, CalibMode::Consistent);
    let one_shot = run(&m, &p, CalibMode::OneShot);
    assert_eq!(consistent.priors.len(), 2 * 2 * p.model.depth);
    let (mut same_first, mut differ_later) = (0, 0);
    for (site, prior) in &consistent.priors {
        let other = &one_shot.priors[site];
        match site.0 {
            1 => {
                assert_eq!(prior, other, "step 1 prior differs at {site:?}");
                same_first += 1;
            }
            2 => differ_later += usize::from(prior != other),
            s => panic!("unexpected calibrated step {s}"),
        }
    }
    assert_eq!(same_first, 2 * p.model.depth);
    assert!(
        differ_later > 0,
        "step 2's priors must see step 1's correction"
    );
}

#[test]
fn calibration_is_deterministic() {
    let p = plan(FORA);
    let m = model(&p);
    let a = run(&m, &p, CalibMode::Consistent);
    let b = run(&m, &p, CalibMode::Consistent);
    assert_eq!(a.priors, b.priors);
    assert_eq!(
        a.steps.iter().map(|s| s.rel_after).collect::<Vec<_>>(),
        b.steps.iter().map(|s| s.rel_after).collect::<Vec<_>>()
    );
}

#[test]
fn priors_blended_with_alpha_at_most_one_never_increase_the_pooled_distance() {
    let p = plan(FORA);
    let m = model(&p);
    for mode in [CalibMode::Consistent, CalibMode::OneShot] {
        let c = run(&m, &p, mode);
        assert_eq!(c.steps.len(), 2);
        for s in &c.steps {
            assert!(s.rel_before > 0.0, "{s:?}");
            assert!(s.rel_after <= s.rel_before, "{mode:?}: {s:?}");
        }
    }
}

#[test]
fn alpha_zero_and_identity_priors_leave_samples_bit_identical() {
    let p = plan(FORA);
    let m = model(&p);
    let plain = sample(&m, &p, &mut NoHooks);
    let fitted = run(&m, &p, CalibMode::Consistent);
    let set = |alpha: f64, priors| PriorSet {
        meta: PriorMeta {
            plan_hash: p.hash().to_string(),
            model: p.model.name.clone(),
            alpha,
            mode: CalibMode::Consistent,
            prior: p.calibration.prior,
            samples: 6,
            seed: 0,
            tool_version: "test".into(),
        },
        priors,
    };
    let zero = set(0.0, fitted.priors.clone());
    let mut hooks = PriorHooks::from_set(&zero, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(sample(&m, &p, &mut hooks), plain, "alpha = 0");

    let identity = fitted
        .priors
        .keys()
        .map(|&site| (site, Prior::identity(p.model.hidden)))
        .collect();
    let mut hooks = PriorHooks::from_set(&set(1.0, identity), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(sample(&m, &p, &mut hooks), plain, "identity priors");

    // The fitted priors themselves do change the samples.
    let mut hooks =
        PriorHooks::from_set(&set(0.5, fitted.priors), DType::F32, &Device::Cpu).unwrap();
    assert_ne!(sample(&m, &p, &mut hooks), plain);
}

#[test]
fn a_schedule_without_calibrated_steps_is_an_error() {
    let p = plan(&FORA.replace("method = \"tcc\"", "method = \"none\""));
    let m = model(&p);
    let e = calibrate(
        &m,
        &p,
        &batches(&p),
        CalibMode::Consistent,
        DType::F32,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no calibrated steps"), "{e}");
}
