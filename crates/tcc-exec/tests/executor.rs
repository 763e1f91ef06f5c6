//! The executor against hand-written loops on tiny random DiTs.
//!
//! Exactness claims here are bit-for-bit (`to_vec` equality), not within a
//! tolerance: the executor must call the same model parts in the same order
//! as the loops it replaces.

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use tcc_core::{CalibrationSpec, CfgOrder, ModelShape, SamplerKind, SamplerSpec};
use tcc_exec::{CacheLayout, ErrorKind, ExecError, NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Dit};
use tcc_plan::{Action, Plan, StepPlan};
use tcc_sampler::{guide, sample_loop, NoiseRng, Sampler};

mod common;
use common::{bits, model};

fn shape(
    depth: usize,
    hidden: usize,
    input_size: usize,
    classes: usize,
    learn_sigma: bool,
) -> ModelShape {
    ModelShape {
        name: "test".into(),
        family: tcc_core::ModelFamily::Dit,
        depth,
        hidden,
        heads: 2,
        patch: 2,
        input_size,
        in_channels: 4,
        out_channels: if learn_sigma { 8 } else { 4 },
        mlp_ratio: 4.0,
        num_classes: classes,
        caption_tokens: 0,
        caption_dim: 0,
    }
}

/// A plan whose cell (step, block, branch) is computed iff `compute` says so,
/// each reuse reading the latest earlier compute.
fn plan(
    shape: &ModelShape,
    sampler: SamplerSpec,
    compute: impl Fn(usize, usize, usize) -> bool,
) -> Plan {
    let ts = sampler.timesteps();
    let nb = shape.branches().len();
    let mut last = vec![vec![None; nb]; shape.depth];
    let steps = (0..sampler.steps)
        .map(|s| StepPlan {
            step: s,
            timestep: ts[s],
            actions: (0..shape.depth)
                .map(|b| {
                    (0..nb)
                        .map(|i| {
                            if s == 0 || compute(s, b, i) {
                                last[b][i] = Some(s);
                                Action::Compute
                            } else {
                                Action::Reuse {
                                    from: last[b][i].unwrap(),
                                    prior: false,
                                }
                            }
                        })
                        .collect()
                })
                .collect(),
        })
        .collect();
    Plan {
        source: "test".into(),
        weights: None,
        model: shape.clone(),
        sampler,
        calibration: CalibrationSpec::default(),
        toca: None,
        steps,
        dynamic: None,
    }
}

/// The shared batch, with a batch seed of its own (not the noise seed).
fn batch(shape: &ModelShape, n: usize, seed: u64) -> SampleBatch {
    SampleBatch {
        seed: seed ^ 0x5eed,
        ..common::batch(shape, n, seed)
    }
}

fn cond_in(spec: &SamplerSpec, b: &SampleBatch) -> Tensor {
    if !spec.uses_cfg() {
        return b.cond.clone();
    }
    let u = b.uncond.as_ref().unwrap();
    match spec.cfg_order {
        CfgOrder::CondFirst => Tensor::cat(&[&b.cond, u], 0).unwrap(),
        CfgOrder::UncondFirst => Tensor::cat(&[u, &b.cond], 0).unwrap(),
    }
}

fn sampler_spec(
    kind: SamplerKind,
    steps: usize,
    guidance: f64,
    eta: f64,
    order: CfgOrder,
) -> SamplerSpec {
    SamplerSpec {
        kind,
        steps,
        guidance_scale: guidance,
        eta,
        cfg_order: order,
        guided_channels: None,
        ..SamplerSpec::default()
    }
}

fn run_plan<M: BlockModel>(m: &M, p: &Plan, b: &SampleBatch) -> Tensor {
    Trajectory::new(m, p, b).unwrap().run(&mut NoHooks).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The all-compute plan is the plain sampler, bit for bit.
    #[test]
    fn all_compute_plan_is_the_plain_sampling_loop(
        depth in 1usize..4,
        hidden in prop::sample::select(vec![16usize, 32]),
        input_size in prop::sample::select(vec![4usize, 8]),
        learn_sigma in any::<bool>(),
        kind in prop::sample::select(vec![SamplerKind::Ddim, SamplerKind::Ddpm, SamplerKind::DpmSolverPp]),
        eta in prop::sample::select(vec![0.0, 0.7]),
        guidance in prop::sample::select(vec![1.0, 1.5, 4.0]),
        order in prop::sample::select(vec![CfgOrder::CondFirst, CfgOrder::UncondFirst]),
        steps in 2usize..7,
        seed in 0u64..1000,
    ) {
        let sh = shape(depth, hidden, input_size, 3, learn_sigma);
        let m = model(&sh, seed);
        let eta = if kind == SamplerKind::Ddim { eta } else { 0.0 };
        let spec = sampler_spec(kind, steps, guidance, eta, order);
        let p = plan(&sh, spec.clone(), |_, _, _| true);
        let b = batch(&sh, 2, seed);
        let got = run_plan(&m, &p, &b);

        let c = cond_in(&spec, &b);
        let mut rng = NoiseRng::new(b.seed);
        let want = sample_loop(
            &spec,
            &b.noise,
            |x, t| m.forward(x, t, &c, None),
            |d| rng.randn(d, &Device::Cpu),
        ).unwrap();
        prop_assert_eq!(bits(&got), bits(&want));
    }
}

/// FORA by hand: at refresh steps compute every branch and keep it, at the
/// other steps reuse the kept outputs.
fn fora_by_hand(
    m: &Dit,
    spec: &SamplerSpec,
    b: &SampleBatch,
    refresh: &dyn Fn(usize) -> bool,
) -> Tensor {
    let mut sampler = Sampler::new(spec).unwrap();
    let mut rng = NoiseRng::new(b.seed);
    let c_in = cond_in(spec, b);
    let mut x = b.noise.clone();
    let mut kept: Vec<Vec<Option<Tensor>>> = vec![vec![None; 2]; m.depth()];
    for (i, &t) in spec.timesteps().iter().enumerate() {
        let x_in = if spec.uses_cfg() {
            Tensor::cat(&[&x, &x], 0).unwrap()
        } else {
            x.clone()
        };
        let tt = Tensor::full(t as f32, x_in.dim(0).unwrap(), &Device::Cpu).unwrap();
        let (mut h, c) = m.embed(&x_in, &tt, &c_in, None).unwrap();
        for (block, kept) in kept.iter_mut().enumerate() {
            let md = m.modulation(block, &c).unwrap();
            for (bi, &br) in m.branches().iter().enumerate() {
                if refresh(i) {
                    kept[bi] = Some(m.branch(block, br, &h, &md, &c).unwrap());
                }
                let out = kept[bi].clone().unwrap();
                h = m.add_branch(br, &h, &md, &out).unwrap();
            }
        }
        let out = m.finish(&h, &c).unwrap();
        let g = guide(&out, spec, 4).unwrap();
        let noise = sampler
            .needs_noise(i)
            .then(|| rng.randn(x.dims(), &Device::Cpu).unwrap());
        x = sampler.step(i, &x, &g, noise.as_ref()).unwrap();
    }
    x
}

#[test]
fn fora_plan_is_the_hand_written_fora_loop_and_differs_from_full() {
    let sh = shape(3, 32, 8, 4, true);
    let m = model(&sh, 11);
    for (n, spec) in [
        (
            3.0,
            sampler_spec(SamplerKind::Ddim, 10, 1.5, 0.0, CfgOrder::CondFirst),
        ),
        (
            2.5,
            sampler_spec(SamplerKind::DpmSolverPp, 9, 4.5, 0.0, CfgOrder::UncondFirst),
        ),
        (
            2.0,
            sampler_spec(SamplerKind::Ddpm, 6, 1.0, 0.0, CfgOrder::CondFirst),
        ),
    ] {
        // Refresh offsets round(k * N), as FORA with a fractional N.
        let refresh_steps: Vec<usize> = (0..spec.steps)
            .map(|k| (k as f64 * n).round() as usize)
            .take_while(|&s| s < spec.steps)
            .collect();
        let refresh = |s: usize| refresh_steps.contains(&s);
        let p = plan(&sh, spec.clone(), |s, _, _| refresh(s));
        let b = batch(&sh, 3, 5);
        let got = run_plan(&m, &p, &b);
        assert_eq!(
            bits(&got),
            bits(&fora_by_hand(&m, &spec, &b, &refresh)),
            "N = {n}"
        );

        let full = run_plan(&m, &plan(&sh, spec.clone(), |_, _, _| true), &b);
        let diff = (&got - &full)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff > 1e-4,
            "N = {n}: a reusing plan gave the full result (max diff {diff})"
        );
    }
}

#[test]
fn reuse_delta_adds_the_cached_residual_of_the_range() {
    // Blocks 1..3 of 4 are skipped at odd steps; their residual delta is the
    // one computed at the step before.
    let sh = shape(4, 16, 4, 3, false);
    let m = model(&sh, 3);
    let spec = sampler_spec(SamplerKind::Ddim, 6, 2.0, 0.0, CfgOrder::CondFirst);
    let mut p = plan(&sh, spec.clone(), |_, _, _| true);
    for s in (1..6).step_by(2) {
        for block in 1..3 {
            for a in p.steps[s].actions[block].iter_mut() {
                *a = Action::ReuseDelta {
                    start: 1,
                    end: 3,
                    from: s - 1,
                };
            }
        }
    }
    let b = batch(&sh, 2, 9);
    let got = run_plan(&m, &p, &b);

    let mut sampler = Sampler::new(&spec).unwrap();
    let c_in = cond_in(&spec, &b);
    let mut x = b.noise.clone();
    let mut delta: Option<Tensor> = None;
    for (i, &t) in spec.timesteps().iter().enumerate() {
        let x_in = Tensor::cat(&[&x, &x], 0).unwrap();
        let tt = Tensor::full(t as f32, x_in.dim(0).unwrap(), &Device::Cpu).unwrap();
        let (mut h, c) = m.embed(&x_in, &tt, &c_in, None).unwrap();
        let mut entering = None;
        for block in 0..4 {
            if i % 2 == 1 && (1..3).contains(&block) {
                if block == 1 {
                    h = (&h + delta.as_ref().unwrap()).unwrap();
                }
                continue;
            }
            if block == 1 {
                entering = Some(h.clone());
            }
            let md = m.modulation(block, &c).unwrap();
            for &br in m.branches() {
                let out = m.branch(block, br, &h, &md, &c).unwrap();
                h = m.add_branch(br, &h, &md, &out).unwrap();
            }
            if block == 2 {
                delta = Some((&h - entering.as_ref().unwrap()).unwrap());
            }
        }
        let out = m.finish(&h, &c).unwrap();
        x = sampler
            .step(i, &x, &guide(&out, &spec, 4).unwrap(), None)
            .unwrap();
    }
    assert_eq!(bits(&got), bits(&x));
}

#[test]
fn cache_holds_only_what_the_plan_reads_later() {
    let sh = shape(3, 16, 4, 3, false);
    let m = model(&sh, 1);
    let spec = sampler_spec(SamplerKind::Ddim, 9, 1.5, 0.0, CfgOrder::CondFirst);
    // FORA N = 3, but the last segment (steps 6..9) reuses only block 0.
    let p = plan(&sh, spec, |s, b, _| s % 3 == 0 || (s >= 6 && b > 0));
    let layout = CacheLayout::new(&p);
    assert_eq!(layout.peak_entries(), 3 * 2);
    assert_eq!(
        layout.store[6].len(),
        2,
        "only block 0's two branches are kept at step 6"
    );
    let b = batch(&sh, 1, 2);
    let mut traj = Trajectory::new(&m, &p, &b).unwrap();
    let mut held = Vec::new();
    while !traj.is_done() {
        traj.step(&mut NoHooks).unwrap();
        held.push(traj.cached_entries());
    }
    // After steps 0, 1 the cache is full; after step 2 (last reader) empty.
    assert_eq!(held, vec![6, 6, 0, 6, 6, 0, 2, 2, 0]);
}

#[test]
fn a_plan_for_another_model_is_refused() {
    let sh = shape(2, 16, 4, 3, false);
    let m = model(&shape(3, 16, 4, 3, false), 0);
    let p = plan(
        &sh,
        sampler_spec(SamplerKind::Ddim, 3, 1.0, 0.0, CfgOrder::CondFirst),
        |_, _, _| true,
    );
    let err = Trajectory::new(&m, &p, &batch(&sh, 1, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("2 blocks") && err.contains("3 blocks"),
        "{err}"
    );
}

/// Replaces every branch output of one step by a huge but finite value, as
/// a priors file with values near f32's maximum would.
struct Blow(usize);

impl tcc_exec::Hooks for Blow {
    fn branch_output(
        &mut self,
        site: &tcc_exec::BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        Ok((site.step == self.0).then(|| (out.zeros_like().unwrap() + 3e38).unwrap()))
    }
}

/// Non-finite latents stop the run at the step that made them, whatever
/// made them: a guidance scale out of f32's range, or hooks.
#[test]
fn diverging_latents_are_an_error_naming_the_step() {
    let sh = shape(2, 16, 4, 3, false);
    let m = model(&sh, 0);
    let p = plan(
        &sh,
        sampler_spec(SamplerKind::Ddim, 4, 1e300, 0.0, CfgOrder::CondFirst),
        |_, _, _| true,
    );
    let err = Trajectory::new(&m, &p, &batch(&sh, 2, 0))
        .unwrap()
        .run(&mut NoHooks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not finite after step 0 (of steps 0 to 3)") && err.contains("NaN"),
        "{err}"
    );

    let p = plan(
        &sh,
        sampler_spec(SamplerKind::Ddim, 4, 1.5, 0.0, CfgOrder::CondFirst),
        |s, _, _| s != 2,
    );
    let mut traj = Trajectory::new(&m, &p, &batch(&sh, 2, 0)).unwrap();
    let mut hooks = Blow(2);
    traj.step(&mut hooks).unwrap();
    traj.step(&mut hooks).unwrap();
    let err = traj.step(&mut hooks).unwrap_err().to_string();
    assert!(err.contains("after step 2"), "{err}");
}

/// Two spellings of FORA N = 3 compile to one plan and sample identically.
#[test]
fn schedules_that_compile_to_one_plan_sample_identically() {
    let compile = |text: &str| {
        let s = tcc_schedule::parse("test.sched", text).unwrap();
        tcc_plan::compile(&s, std::path::Path::new(".")).unwrap()
    };
    let head = "[model]\nname = \"tiny\"\n\n[sampler]\nkind = \"ddim\"\nsteps = 7\nguidance = 1.5\n\n[[cache]]\n";
    let every = compile(&format!("{head}refresh = \"every 3\"\n"));
    let mask = compile(&format!("{head}mask = \"1001001\"\n"));
    assert_eq!(every, mask);

    let sh = every.model.clone();
    let m = model(&sh, 4);
    let b = batch(&sh, 2, 8);
    assert_eq!(
        bits(&run_plan(&m, &every, &b)),
        bits(&run_plan(&m, &mask, &b))
    );
    let full = compile(head.trim_end_matches("[[cache]]\n"));
    assert_ne!(
        bits(&run_plan(&m, &every, &b)),
        bits(&run_plan(&m, &full, &b))
    );
}

/// A tiny random PixArt-α (3 branches per block, cross-attention to
/// `tokens` caption tokens of width 6).
fn pixart(tokens: usize) -> (ModelShape, tcc_model::PixArt) {
    let sh = ModelShape {
        name: "test-pixart".into(),
        family: tcc_core::ModelFamily::Pixart,
        depth: 2,
        hidden: 32,
        heads: 2,
        patch: 2,
        input_size: 8,
        in_channels: 4,
        out_channels: 8,
        mlp_ratio: 4.0,
        num_classes: 0,
        caption_tokens: tokens,
        caption_dim: 6,
    };
    let cfg = tcc_model::PixArtConfig::from_shape(&sh).unwrap();
    let m = tcc_model::PixArt::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    (sh, m)
}

/// Captions of 2 samples: sample 0 has 3 real tokens, sample 1 has 5; the
/// null caption has 1. `junk` changes every padding position (and nothing
/// else), so runs that honour the masks must not see it.
fn captioned_batch(sh: &ModelShape, junk: f64) -> SampleBatch {
    let dev = Device::Cpu;
    let l = sh.caption_tokens;
    let mask = |lens: &[usize]| {
        let v: Vec<f32> = lens
            .iter()
            .flat_map(|&n| (0..l).map(move |i| if i < n { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_vec(v, (lens.len(), l), &dev).unwrap()
    };
    let (cm, um) = (mask(&[3, 5]), mask(&[1, 1]));
    let with_junk = |seed: u64, m: &Tensor| {
        let e = NoiseRng::new(seed)
            .randn((2, l, sh.caption_dim), &dev)
            .unwrap();
        let pad = (1.0 - m).unwrap().unsqueeze(2).unwrap();
        e.broadcast_add(&(pad * junk).unwrap()).unwrap()
    };
    SampleBatch {
        noise: NoiseRng::new(5).randn((2, 4, 8, 8), &dev).unwrap(),
        cond: with_junk(6, &cm),
        uncond: Some(with_junk(7, &um)),
        cond_mask: Some(cm),
        uncond_mask: Some(um),
        seed: 9,
    }
}

#[test]
fn caption_masks_reach_cross_attention_in_both_cfg_halves() {
    let (sh, m) = pixart(8);
    for order in [CfgOrder::UncondFirst, CfgOrder::CondFirst] {
        let spec = sampler_spec(SamplerKind::DpmSolverPp, 6, 4.5, 0.0, order);
        // FORA N=2 over all three branches, cross included.
        let p = plan(&sh, spec.clone(), |s, _, _| s % 2 == 0);
        let clean = captioned_batch(&sh, 0.0);
        let junk = captioned_batch(&sh, 3.0);
        // Padding is invisible when the masks are passed ...
        assert_eq!(
            bits(&run_plan(&m, &p, &clean)),
            bits(&run_plan(&m, &p, &junk))
        );
        // ... and visible without them, so the assertion above can fail.
        let unmasked = |b: &SampleBatch| SampleBatch {
            cond_mask: None,
            uncond_mask: None,
            ..b.clone()
        };
        assert_ne!(
            bits(&run_plan(&m, &p, &unmasked(&clean))),
            bits(&run_plan(&m, &p, &unmasked(&junk)))
        );
        // The all-compute plan with masks is the model's own masked forward
        // pass inside the plain sampling loop.
        let full = plan(&sh, spec.clone(), |_, _, _| true);
        let c_in = cond_in(&spec, &junk);
        let mask_in = match order {
            CfgOrder::CondFirst => Tensor::cat(
                &[
                    junk.cond_mask.as_ref().unwrap(),
                    junk.uncond_mask.as_ref().unwrap(),
                ],
                0,
            ),
            CfgOrder::UncondFirst => Tensor::cat(
                &[
                    junk.uncond_mask.as_ref().unwrap(),
                    junk.cond_mask.as_ref().unwrap(),
                ],
                0,
            ),
        }
        .unwrap();
        let mut rng = NoiseRng::new(junk.seed);
        let by_hand = sample_loop(
            &spec,
            &junk.noise,
            |x, t| m.forward(x, t, &c_in, Some(&mask_in)),
            |d| rng.randn(d, &Device::Cpu),
        )
        .unwrap();
        assert_eq!(bits(&run_plan(&m, &full, &junk)), bits(&by_hand));
    }
}

#[test]
fn cfg_with_one_mask_is_refused() {
    let (sh, m) = pixart(4);
    let spec = sampler_spec(SamplerKind::Ddim, 3, 4.5, 0.0, CfgOrder::UncondFirst);
    let p = plan(&sh, spec, |_, _, _| true);
    let b = SampleBatch {
        uncond_mask: None,
        ..captioned_batch(&sh, 0.0)
    };
    let err = Trajectory::new(&m, &p, &b).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Input);
    assert!(err.to_string().contains("key mask"), "{err}");
}

/// A missing null condition is the caller's mistake, not a numerical
/// failure; a hook's error comes back as the hook's.
#[test]
fn errors_tell_input_from_hooks_and_numerics() {
    let sh = shape(2, 16, 4, 3, false);
    let m = model(&sh, 0);
    let p = plan(
        &sh,
        sampler_spec(SamplerKind::Ddim, 4, 1.5, 0.0, CfgOrder::CondFirst),
        |_, _, _| true,
    );
    let b = SampleBatch {
        uncond: None,
        ..batch(&sh, 2, 0)
    };
    let err = Trajectory::new(&m, &p, &b).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Input);
    assert!(err.to_string().contains("no null condition"), "{err}");

    struct Fails;
    impl tcc_exec::Hooks for Fails {
        fn branch_output(
            &mut self,
            _: &tcc_exec::BranchSite,
            _: &Tensor,
        ) -> tcc_exec::Result<Option<Tensor>> {
            Err(ExecError::Input("the hook's own message".into()))
        }
    }
    let err = Trajectory::new(&m, &p, &batch(&sh, 2, 0))
        .unwrap()
        .run(&mut Fails)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Hook);
    assert_eq!(err.to_string(), "the hook's own message");

    let big = plan(
        &sh,
        sampler_spec(SamplerKind::Ddim, 4, 1e300, 0.0, CfgOrder::CondFirst),
        |_, _, _| true,
    );
    let err = Trajectory::new(&m, &big, &batch(&sh, 2, 0))
        .unwrap()
        .run(&mut NoHooks)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Numerics);
}
