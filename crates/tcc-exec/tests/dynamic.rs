//! Dynamic plans (a run-time policy consulted after block 0, first-block
//! cache, or before it, TeaCache) against full computation, the static
//! Δ-DiT plan of the same decisions, and hand-written first-block-cache and
//! TeaCache loops on tiny random DiTs. Exactness is bit for bit; the
//! decision indicators are checked against f64 hand computations from the
//! block-0 residuals / modulated inputs (relative tolerance 1e-4: the
//! executor reduces in f32).

use candle_core::{Device, Tensor};
use tcc_core::{
    CalibrationSpec, CfgOrder, DynamicPolicy, DynamicSpec, ModelFamily, ModelShape, Polynomial,
    ProbePoint, SamplerKind, SamplerSpec,
};
use tcc_exec::{Decide, Decision, NoHooks, Probe, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Dit};
use tcc_plan::{Action, Plan, StepPlan};
use tcc_sampler::{guide, Sampler};

mod common;
use common::bits;

const DEPTH: usize = 4;

fn shape() -> ModelShape {
    ModelShape {
        name: "test".into(),
        family: ModelFamily::Dit,
        depth: DEPTH,
        hidden: 16,
        heads: 2,
        patch: 2,
        input_size: 8,
        in_channels: 4,
        out_channels: 4,
        mlp_ratio: 4.0,
        num_classes: 3,
        caption_tokens: 0,
        caption_dim: 0,
    }
}

fn model(seed: u64) -> Dit {
    common::model(&shape(), seed)
}

fn sampler(steps: usize) -> SamplerSpec {
    SamplerSpec {
        kind: SamplerKind::Ddim,
        steps,
        guidance_scale: 2.0,
        eta: 0.0,
        cfg_order: CfgOrder::CondFirst,
        ..SamplerSpec::default()
    }
}

fn spec(threshold: f64, warmup: usize, cutoff: usize, max_reuse: Option<usize>) -> DynamicSpec {
    DynamicSpec {
        policy: DynamicPolicy::FirstBlock,
        threshold,
        warmup,
        cutoff,
        max_reuse,
        rescale: None,
    }
}

fn tea(
    threshold: f64,
    warmup: usize,
    cutoff: usize,
    max_reuse: Option<usize>,
    rescale: Option<&[f64]>,
) -> DynamicSpec {
    DynamicSpec {
        policy: DynamicPolicy::TeaCache,
        rescale: rescale.map(|c| Polynomial::new(c).unwrap()),
        ..spec(threshold, warmup, cutoff, max_reuse)
    }
}

/// The full-computation table of `steps` steps with `dynamic` attached.
fn dynamic_plan(steps: usize, dynamic: Option<DynamicSpec>) -> Plan {
    plan_for(shape(), sampler(steps), dynamic)
}

/// The full-computation table of `model` under `sampler`, with `dynamic`.
fn plan_for(model: ModelShape, sampler: SamplerSpec, dynamic: Option<DynamicSpec>) -> Plan {
    let nb = model.branches().len();
    let depth = model.depth;
    let steps = sampler
        .timesteps()
        .into_iter()
        .enumerate()
        .map(|(step, timestep)| StepPlan {
            step,
            timestep,
            actions: vec![vec![Action::Compute; nb]; depth],
        })
        .collect();
    Plan {
        source: "test".into(),
        weights: None,
        model,
        sampler,
        calibration: CalibrationSpec::default(),
        steps,
        toca: None,
        dynamic,
    }
}

fn batch(n: usize, seed: u64) -> SampleBatch {
    common::batch(&shape(), n, seed)
}

/// Runs a plan; returns the latents, the steps that computed the policy's
/// blocks and the indicators.
fn run<M: BlockModel>(m: &M, p: &Plan, b: &SampleBatch) -> (Tensor, Vec<usize>, Vec<Option<f64>>) {
    let mut tr = Trajectory::new(m, p, b).unwrap();
    while !tr.is_done() {
        tr.step(&mut NoHooks).unwrap();
    }
    let computed = tr
        .decisions()
        .iter()
        .filter(|d| d.computed)
        .map(|d| d.step)
        .collect();
    let ind = tr.decisions().iter().map(|d| d.indicator).collect();
    (tr.latents().clone(), computed, ind)
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every branch of `range`'s blocks, computed in order from `h`: the
/// hand loops' "compute" steps.
fn blocks(
    m: &Dit,
    range: std::ops::Range<usize>,
    mut h: Tensor,
    c: &tcc_model::Conditioning,
) -> Tensor {
    for block in range {
        let md = m.modulation(block, c).unwrap();
        for &br in m.branches() {
            let out = m.branch(block, br, &h, &md, c).unwrap();
            h = m.add_branch(br, &h, &md, &out).unwrap();
        }
    }
    h
}

/// First-block cache written out with the model's parts: the indicator in
/// f64 from the f32 residuals, the bounds as the docs state them.
fn hand_fbcache(
    m: &Dit,
    steps: usize,
    s: &DynamicSpec,
    b: &SampleBatch,
) -> (Tensor, Vec<usize>, Vec<Option<f64>>) {
    let spec = sampler(steps);
    let mut smp = Sampler::new(&spec).unwrap();
    let c_in = Tensor::cat(&[&b.cond, b.uncond.as_ref().unwrap()], 0).unwrap();
    let mut x = b.noise.clone();
    let mut prev: Option<Vec<f32>> = None;
    let mut delta: Option<Tensor> = None;
    let mut run = 0;
    let (mut computed, mut indicators) = (Vec::new(), Vec::new());
    for (i, &t) in spec.timesteps().iter().enumerate() {
        let x_in = Tensor::cat(&[&x, &x], 0).unwrap();
        let tt = Tensor::full(t as f32, x_in.dim(0).unwrap(), &Device::Cpu).unwrap();
        let (mut h, c) = m.embed(&x_in, &tt, &c_in, None).unwrap();
        let h0 = h.clone();
        let md = m.modulation(0, &c).unwrap();
        for &br in m.branches() {
            let out = m.branch(0, br, &h, &md, &c).unwrap();
            h = m.add_branch(br, &h, &md, &out).unwrap();
        }
        let r = f32s(&(&h - &h0).unwrap());
        let ind = prev.as_ref().map(|p| {
            let num: f64 = r.iter().zip(p).map(|(a, b)| (a - b).abs() as f64).sum();
            let den: f64 = p.iter().map(|b| b.abs() as f64).sum();
            num / den
        });
        indicators.push(ind);
        let allowed = i >= s.warmup.max(1)
            && i + s.cutoff < steps
            && s.max_reuse.is_none_or(|k| run < k)
            && delta.is_some();
        if allowed && ind.is_some_and(|v| v < s.threshold) {
            run += 1;
            h = (&h + delta.as_ref().unwrap()).unwrap();
        } else {
            run = 0;
            computed.push(i);
            prev = Some(r);
            let entering = h.clone();
            h = blocks(m, 1..DEPTH, h, &c);
            delta = Some((&h - &entering).unwrap());
        }
        let out = m.finish(&h, &c).unwrap();
        x = smp
            .step(i, &x, &guide(&out, &spec, 4).unwrap(), None)
            .unwrap();
    }
    (x, computed, indicators)
}

#[test]
fn threshold_zero_is_full_computation_bit_for_bit() {
    let m = model(1);
    let b = batch(2, 7);
    let p = dynamic_plan(8, Some(spec(0.0, 0, 0, None)));
    let (got, computed, _) = run(&m, &p, &b);
    let (full, none, _) = run(&m, &p.all_compute(), &b);
    assert!(none.is_empty(), "a static plan records no decisions");
    assert_eq!(computed, (0..8).collect::<Vec<_>>());
    assert_eq!(bits(&got), bits(&full));
}

#[test]
fn infinite_threshold_reuses_as_much_as_the_bounds_allow() {
    let m = model(2);
    let b = batch(2, 8);
    let s = spec(f64::INFINITY, 2, 1, Some(3));
    let p = dynamic_plan(10, Some(s));
    let (got, computed, _) = run(&m, &p, &b);
    // Warm-up 0, 1; runs of 3 reuses broken at 5; cut-off 9.
    assert_eq!(computed, vec![0, 1, 5, 9]);

    // The static plan of the same decisions: blocks 1..4 delta-reused from
    // the latest computed step, written out here, not by `Plan::realised`.
    let mut fixed = dynamic_plan(10, None);
    for (step, from) in [(2, 1), (3, 1), (4, 1), (6, 5), (7, 5), (8, 5)] {
        for row in &mut fixed.steps[step].actions[1..] {
            row.fill(Action::ReuseDelta {
                start: 1,
                end: DEPTH,
                from,
            });
        }
    }
    assert_eq!(p.realised(&[2, 3, 4, 6, 7, 8]), fixed);
    let (want, _, _) = run(&m, &fixed, &b);
    assert_eq!(bits(&got), bits(&want));

    let (hand, hand_computed, _) = hand_fbcache(&m, 10, &s, &b);
    assert_eq!(hand_computed, computed);
    assert_eq!(bits(&got), bits(&hand));
}

#[test]
fn indicator_and_decisions_match_a_hand_computation() {
    let m = model(3);
    let b = batch(3, 9);
    // First the indicators with every allowed step reusing, then a
    // threshold between them so the run mixes computes and reuses.
    let (_, _, ind) = run(
        &m,
        &dynamic_plan(12, Some(spec(f64::INFINITY, 1, 0, None))),
        &b,
    );
    let mut seen: Vec<f64> = ind.iter().flatten().copied().collect();
    seen.sort_by(f64::total_cmp);
    let threshold = seen[seen.len() / 2];
    let s = spec(threshold, 1, 1, Some(2));
    let (got, computed, ind) = run(&m, &dynamic_plan(12, Some(s)), &b);
    let (hand, hand_computed, hand_ind) = hand_fbcache(&m, 12, &s, &b);
    assert_eq!(ind.len(), 12);
    assert_eq!(ind[0], None);
    for (step, (a, h)) in ind.iter().zip(&hand_ind).enumerate() {
        let (a, h) = (a.unwrap_or(-1.0), h.unwrap_or(-1.0));
        assert!((a - h).abs() <= 1e-4 * h.abs(), "step {step}: {a} vs {h}");
        if step > 0 {
            assert!(h.abs() > 0.0 && h.is_finite(), "step {step}: {h}");
        }
    }
    assert_eq!(computed, hand_computed);
    assert!(computed.len() > 2 && computed.len() < 11, "{computed:?}");
    assert_eq!(bits(&got), bits(&hand));
}

#[test]
fn same_seed_same_bytes_and_clones_continue_alike() {
    let m = model(4);
    let b = batch(2, 10);
    let p = dynamic_plan(10, Some(spec(0.3, 1, 1, None)));
    let (a, ca, _) = run(&m, &p, &b);
    let (b2, cb, _) = run(&m, &p, &b);
    assert_eq!(bits(&a), bits(&b2));
    assert_eq!(ca, cb);

    let mut tr = Trajectory::new(&m, &p, &b).unwrap();
    for _ in 0..5 {
        tr.step(&mut NoHooks).unwrap();
    }
    let copy = tr.clone();
    let x1 = tr.run(&mut NoHooks).unwrap();
    let x2 = copy.run(&mut NoHooks).unwrap();
    assert_eq!(bits(&x1), bits(&x2));
    assert_eq!(bits(&x1), bits(&a));
}

/// A scripted policy: reuse at the listed steps.
#[derive(Clone)]
struct Script(Vec<usize>);

impl Decide for Script {
    fn probe_point(&self) -> ProbePoint {
        ProbePoint::AfterFirstBlock
    }
    fn decide(&mut self, probe: &Probe<'_>) -> tcc_exec::Result<Decision> {
        Ok(Decision {
            reuse: self.0.contains(&probe.step),
            indicator: None,
        })
    }
    fn boxed_clone(&self) -> Box<dyn Decide> {
        Box::new(self.clone())
    }
}

#[test]
fn the_bounds_hold_whatever_the_policy_answers() {
    let m = model(5);
    let b = batch(1, 11);
    let p = dynamic_plan(8, Some(spec(0.1, 2, 2, Some(1))));
    let mut tr = Trajectory::new(&m, &p, &b)
        .unwrap()
        .with_policy(Box::new(Script((0..8).collect())))
        .unwrap();
    while !tr.is_done() {
        tr.step(&mut NoHooks).unwrap();
    }
    // Warm-up 2, at most one reuse in a row, cut-off 2 (steps 6, 7).
    assert_eq!(tr.reuse_steps(), vec![2, 4]);
    let static_plan = dynamic_plan(8, None);
    assert!(Trajectory::new(&m, &static_plan, &b)
        .unwrap()
        .with_policy(Box::new(Script(vec![])))
        .is_err());
}

#[test]
fn a_policy_must_probe_where_the_plans_does() {
    let m = model(5);
    let b = batch(1, 11);
    let p = dynamic_plan(6, Some(tea(0.1, 1, 0, None, None)));
    let err = Trajectory::new(&m, &p, &b)
        .unwrap()
        .with_policy(Box::new(Script(vec![])))
        .err()
        .expect("a first-block probe on a TeaCache plan is refused");
    assert!(err.to_string().contains("teacache"), "{err}");
}

/// TeaCache written out with the model's parts, in the reference code's
/// order: the indicator in f64 from the f32 modulated inputs, rescaled in
/// f64, accumulated, compared, reset at computed steps; the bounds as the
/// docs state them; a reuse adds the residual of every block.
fn hand_teacache(
    m: &Dit,
    steps: usize,
    s: &DynamicSpec,
    b: &SampleBatch,
) -> (Tensor, Vec<usize>, Vec<Option<f64>>) {
    let spec = sampler(steps);
    let mut smp = Sampler::new(&spec).unwrap();
    let c_in = Tensor::cat(&[&b.cond, b.uncond.as_ref().unwrap()], 0).unwrap();
    let mut x = b.noise.clone();
    let mut prev: Option<Vec<f32>> = None;
    let mut delta: Option<Tensor> = None;
    let (mut run, mut acc) = (0, 0.0f64);
    let (mut computed, mut indicators) = (Vec::new(), Vec::new());
    let rescale = |c: f64| match &s.rescale {
        // numpy.polyval written as a sum of powers, not Horner's rule.
        Some(p) => {
            let n = p.coeffs().len();
            p.coeffs()
                .iter()
                .enumerate()
                .map(|(i, k)| k * c.powi((n - 1 - i) as i32))
                .sum()
        }
        None => c,
    };
    for (i, &t) in spec.timesteps().iter().enumerate() {
        let x_in = Tensor::cat(&[&x, &x], 0).unwrap();
        let tt = Tensor::full(t as f32, x_in.dim(0).unwrap(), &Device::Cpu).unwrap();
        let (mut h, c) = m.embed(&x_in, &tt, &c_in, None).unwrap();
        let md = m.modulation(0, &c).unwrap();
        let sig = f32s(&m.modulated_input(0, &h, &md).unwrap());
        let ind = prev.as_ref().map(|p| {
            let num: f64 = sig.iter().zip(p).map(|(a, b)| (a - b).abs() as f64).sum();
            let den: f64 = p.iter().map(|b| b.abs() as f64).sum();
            acc += rescale(num / den);
            acc
        });
        indicators.push(ind);
        prev = Some(sig);
        let allowed = i >= s.warmup.max(1)
            && i + s.cutoff < steps
            && s.max_reuse.is_none_or(|k| run < k)
            && delta.is_some();
        if allowed && ind.is_some_and(|v| v < s.threshold) {
            run += 1;
            h = (&h + delta.as_ref().unwrap()).unwrap();
        } else {
            run = 0;
            acc = 0.0;
            computed.push(i);
            let entering = h.clone();
            h = blocks(m, 0..DEPTH, h, &c);
            delta = Some((&h - &entering).unwrap());
        }
        let out = m.finish(&h, &c).unwrap();
        x = smp
            .step(i, &x, &guide(&out, &spec, 4).unwrap(), None)
            .unwrap();
    }
    (x, computed, indicators)
}

#[test]
fn teacache_threshold_zero_is_full_computation_bit_for_bit() {
    let m = model(6);
    let b = batch(2, 12);
    let p = dynamic_plan(8, Some(tea(0.0, 1, 0, None, Some(&[3.0, 0.5, 0.1]))));
    let (got, computed, ind) = run(&m, &p, &b);
    let (full, _, _) = run(&m, &p.all_compute(), &b);
    assert_eq!(computed, (0..8).collect::<Vec<_>>());
    assert!(
        ind[1..].iter().all(|x| x.is_some_and(|x| x > 0.0)),
        "{ind:?}"
    );
    assert_eq!(bits(&got), bits(&full));
}

#[test]
fn teacache_infinite_threshold_reuses_every_block_as_the_bounds_allow() {
    let m = model(7);
    let b = batch(2, 13);
    let s = tea(f64::INFINITY, 2, 1, Some(3), None);
    let p = dynamic_plan(10, Some(s));
    let (got, computed, _) = run(&m, &p, &b);
    let most = s.most_reuses(10);
    assert_eq!(most, vec![2, 3, 4, 6, 7, 8]);
    let want: Vec<usize> = (0..10).filter(|i| !most.contains(i)).collect();
    assert_eq!(computed, want);

    // The static plan of the same decisions: every block delta-reused
    // from the latest computed step, written out here.
    let mut fixed = dynamic_plan(10, None);
    for (step, from) in [(2, 1), (3, 1), (4, 1), (6, 5), (7, 5), (8, 5)] {
        for row in &mut fixed.steps[step].actions {
            row.fill(Action::ReuseDelta {
                start: 0,
                end: DEPTH,
                from,
            });
        }
    }
    assert_eq!(p.realised(&most), fixed);
    let (want, _, _) = run(&m, &fixed, &b);
    assert_eq!(bits(&got), bits(&want));

    let (hand, hand_computed, _) = hand_teacache(&m, 10, &s, &b);
    assert_eq!(hand_computed, computed);
    assert_eq!(bits(&got), bits(&hand));
}

#[test]
fn teacache_indicator_and_accumulator_match_a_hand_computation() {
    let m = model(8);
    let b = batch(3, 14);
    let rescale: &[f64] = &[-4.0, 3.0, 0.02];
    // The rescaled changes with every allowed step reusing (the
    // accumulator then only grows), then a threshold among them so that
    // the run mixes computes and reuses and the accumulator resets.
    let (_, _, ind) = run(
        &m,
        &dynamic_plan(12, Some(tea(f64::INFINITY, 1, 0, None, Some(rescale)))),
        &b,
    );
    let acc: Vec<f64> = ind.iter().flatten().copied().collect();
    assert!(acc.windows(2).all(|w| w[1] > w[0]), "{acc:?}");
    let threshold = (acc[1] + acc[2]) / 2.0;
    let s = tea(threshold, 1, 1, Some(3), Some(rescale));
    let (got, computed, ind) = run(&m, &dynamic_plan(12, Some(s)), &b);
    let (hand, hand_computed, hand_ind) = hand_teacache(&m, 12, &s, &b);
    assert_eq!(ind.len(), 12);
    assert_eq!(ind[0], None);
    for (step, (a, h)) in ind.iter().zip(&hand_ind).enumerate() {
        let (a, h) = (a.unwrap_or(-1.0), h.unwrap_or(-1.0));
        assert!((a - h).abs() <= 1e-4 * h.abs(), "step {step}: {a} vs {h}");
        if step > 0 {
            assert!(h > 0.0 && h.is_finite(), "step {step}: {h}");
        }
    }
    assert_eq!(computed, hand_computed);
    assert!(computed.len() > 3 && computed.len() < 11, "{computed:?}");
    // Some reuse step follows another: the accumulator carried over.
    let reuse: Vec<usize> = (0..12).filter(|i| !computed.contains(i)).collect();
    assert!(reuse.windows(2).any(|w| w[1] == w[0] + 1), "{reuse:?}");
    assert_eq!(bits(&got), bits(&hand));
}

#[test]
fn teacache_same_seed_same_bytes_and_clones_continue_alike() {
    let m = model(9);
    let b = batch(2, 15);
    let p = dynamic_plan(10, Some(tea(0.5, 1, 1, None, None)));
    let (a, ca, _) = run(&m, &p, &b);
    let (b2, cb, _) = run(&m, &p, &b);
    assert_eq!(bits(&a), bits(&b2));
    assert_eq!(ca, cb);
    assert!(ca.len() < 10, "{ca:?}");

    let mut tr = Trajectory::new(&m, &p, &b).unwrap();
    for _ in 0..4 {
        tr.step(&mut NoHooks).unwrap();
    }
    let copy = tr.clone();
    let x1 = tr.run(&mut NoHooks).unwrap();
    let x2 = copy.run(&mut NoHooks).unwrap();
    assert_eq!(bits(&x1), bits(&x2));
    assert_eq!(bits(&x1), bits(&a));
}

/// PixArt-α (adaLN-single: the modulated input uses the shared timestep
/// vectors plus the block's table; three branches, cross-attention to
/// captions): TeaCache at threshold 0 is full computation, at threshold
/// inf it is the static plan of its decisions, bit for bit.
#[test]
fn teacache_on_pixart_probes_its_adaln_single_modulated_input() {
    let sh = ModelShape {
        name: "test-pixart".into(),
        family: ModelFamily::Pixart,
        depth: 3,
        hidden: 32,
        heads: 2,
        patch: 2,
        input_size: 8,
        in_channels: 4,
        out_channels: 8,
        mlp_ratio: 4.0,
        num_classes: 0,
        caption_tokens: 5,
        caption_dim: 6,
    };
    let cfg = tcc_model::PixArtConfig::from_shape(&sh).unwrap();
    let m = tcc_model::PixArt::random(&cfg, 4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let rng = |seed, shape: &[usize]| {
        tcc_sampler::NoiseRng::new(seed)
            .randn(shape, &Device::Cpu)
            .unwrap()
    };
    let b = SampleBatch {
        noise: rng(1, &[2, 4, 8, 8]),
        cond: rng(2, &[2, 5, 6]),
        uncond: Some(rng(3, &[2, 5, 6])),
        cond_mask: None,
        uncond_mask: None,
        seed: 4,
    };
    let smp = SamplerSpec {
        kind: SamplerKind::DpmSolverPp,
        steps: 8,
        guidance_scale: 4.5,
        cfg_order: CfgOrder::UncondFirst,
        ..SamplerSpec::default()
    };
    let zero = plan_for(sh.clone(), smp.clone(), Some(tea(0.0, 1, 0, None, None)));
    let (got, computed, ind) = run(&m, &zero, &b);
    let (full, _, _) = run(&m, &zero.all_compute(), &b);
    assert_eq!(computed.len(), 8);
    assert!(
        ind[1..].iter().all(|x| x.is_some_and(|x| x > 0.0)),
        "{ind:?}"
    );
    assert_eq!(bits(&got), bits(&full));

    let s = tea(f64::INFINITY, 2, 1, Some(2), None);
    let inf = plan_for(sh, smp, Some(s));
    let (got, computed, _) = run(&m, &inf, &b);
    let reuse = s.most_reuses(8);
    assert_eq!(reuse, vec![2, 3, 5, 6]);
    assert_eq!(computed, vec![0, 1, 4, 7]);
    let (want, _, _) = run(&m, &inf.realised(&reuse), &b);
    assert_eq!(bits(&got), bits(&want));
    assert_ne!(bits(&got), bits(&full));
}

/// The fit data of `tcc teacache-fit`: the input changes are the indicators
/// a TeaCache run reports before rescaling, the output changes match an
/// f64 hand computation from the plain sampling loop's model outputs
/// (relative tolerance 1e-4: the executor reduces in f32).
#[test]
fn teacache_changes_are_the_indicator_and_the_model_outputs_change() {
    let m = model(10);
    let b = batch(2, 16);
    let p = dynamic_plan(7, Some(spec(0.08, 2, 1, Some(2))));
    let changes = tcc_exec::teacache_changes(&m, &p, &b).unwrap();
    assert_eq!(
        changes.iter().map(|c| c.step).collect::<Vec<_>>(),
        (1..7).collect::<Vec<_>>()
    );

    let (_, computed, ind) = run(&m, &dynamic_plan(7, Some(tea(0.0, 1, 0, None, None))), &b);
    assert_eq!(computed.len(), 7);
    for c in &changes {
        assert_eq!(Some(c.input), ind[c.step]);
    }

    let spec = sampler(7);
    let mut smp = Sampler::new(&spec).unwrap();
    let c_in = Tensor::cat(&[&b.cond, b.uncond.as_ref().unwrap()], 0).unwrap();
    let mut x = b.noise.clone();
    let mut prev: Option<Vec<f32>> = None;
    for (i, &t) in spec.timesteps().iter().enumerate() {
        let x_in = Tensor::cat(&[&x, &x], 0).unwrap();
        let tt = Tensor::full(t as f32, 4, &Device::Cpu).unwrap();
        let out = m.forward(&x_in, &tt, &c_in, None).unwrap();
        let o = f32s(&out);
        if let Some(p) = &prev {
            let num: f64 = o.iter().zip(p).map(|(a, b)| (a - b).abs() as f64).sum();
            let den: f64 = p.iter().map(|b| b.abs() as f64).sum();
            let want = num / den;
            let got = changes[i - 1].output;
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "step {i}: {got} vs {want}"
            );
            assert!(want > 0.0);
        }
        prev = Some(o);
        x = smp
            .step(i, &x, &guide(&out, &spec, 4).unwrap(), None)
            .unwrap();
    }
}
