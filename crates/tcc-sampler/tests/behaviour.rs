//! Determinism, guidance layout and error handling (no reference numbers
//! needed: every expectation follows from the definitions).

use candle_core::{Device, Tensor};
use tcc_core::{CfgOrder, SamplerKind, SamplerSpec};
use tcc_sampler::{guide, sample_loop, NoiseRng, Sampler, SamplerError};

fn spec(kind: SamplerKind, steps: usize) -> SamplerSpec {
    SamplerSpec {
        kind,
        steps,
        guidance_scale: 1.0,
        ..Default::default()
    }
}

/// A smooth stand-in model: eps = 0.9 x + 0.01 t / 1000, variance channels
/// 0.5 tanh(x). Output [B', 2C, H, W].
fn model(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let b = x.dim(0)?;
    let shift = t.affine(0.01 / 1000.0, 0.0)?.reshape((b, 1, 1, 1))?;
    let eps = x.affine(0.9, 0.0)?.broadcast_add(&shift)?;
    let v = x.tanh()?.affine(0.5, 0.0)?;
    Tensor::cat(&[&eps, &v], 1)
}

fn x_t(seed: u64) -> Tensor {
    NoiseRng::new(seed)
        .randn((2, 4, 3, 3), &Device::Cpu)
        .unwrap()
}

fn run(spec: &SamplerSpec, seed: u64) -> Vec<f32> {
    let mut rng = NoiseRng::new(seed);
    sample_loop(spec, &x_t(1), model, |d| rng.randn(d, &Device::Cpu))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn same_seed_same_samples_for_every_sampler() {
    let ddim_eta = SamplerSpec {
        eta: 0.7,
        ..spec(SamplerKind::Ddim, 8)
    };
    for s in [
        spec(SamplerKind::Ddpm, 8),
        ddim_eta.clone(),
        spec(SamplerKind::DpmSolverPp, 8),
    ] {
        let a = run(&s, 5);
        assert_eq!(
            a,
            run(&s, 5),
            "{:?}: same seed must give bit-identical samples",
            s.kind
        );
        assert!(a.iter().all(|v| v.is_finite()));
    }
    // The seed reaches the samples of stochastic samplers.
    assert_ne!(
        run(&spec(SamplerKind::Ddpm, 8), 5),
        run(&spec(SamplerKind::Ddpm, 8), 6)
    );
    assert_ne!(run(&ddim_eta, 5), run(&ddim_eta, 6));
}

#[test]
fn deterministic_samplers_draw_no_noise() {
    for s in [
        spec(SamplerKind::Ddim, 10),
        spec(SamplerKind::DpmSolverPp, 10),
    ] {
        let sampler = Sampler::new(&s).unwrap();
        assert!((0..10).all(|i| !sampler.needs_noise(i)), "{:?}", s.kind);
        let out =
            |_: &[usize]| -> candle_core::Result<Tensor> { panic!("{:?} asked for noise", s.kind) };
        let a = sample_loop(&s, &x_t(1), model, out).unwrap();
        let b = sample_loop(&s, &x_t(1), model, out).unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{:?}: eta = 0 must be deterministic", s.kind);
    }
    // DDPM and DDIM with eta > 0 add noise at every step but the last.
    let ddpm = Sampler::new(&spec(SamplerKind::Ddpm, 4)).unwrap();
    assert_eq!(
        (0..4).map(|i| ddpm.needs_noise(i)).collect::<Vec<_>>(),
        [true, true, true, false]
    );
}

#[test]
fn guide_combines_halves_in_either_order() {
    // Rows: cond = 1 + channel, uncond = 10 + channel; 2 latent + 2 variance channels.
    let half = |base: f32| {
        Tensor::from_vec(
            (0..4).map(|c| base + c as f32).collect::<Vec<_>>(),
            (1, 4, 1, 1),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (cond, uncond) = (half(1.0), half(10.0));
    let g = 2.0;
    let mut s = SamplerSpec {
        guidance_scale: g,
        ..Default::default()
    };
    let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expect_all: Vec<f32> = (0..4)
        .map(|c| {
            let (cv, uv) = (1.0 + c as f32, 10.0 + c as f32);
            if c < 2 {
                uv + g as f32 * (cv - uv)
            } else {
                cv // variance channels: the cond half's
            }
        })
        .collect();
    for order in [CfgOrder::CondFirst, CfgOrder::UncondFirst] {
        s.cfg_order = order;
        let batch = match order {
            CfgOrder::CondFirst => Tensor::cat(&[&cond, &uncond], 0),
            CfgOrder::UncondFirst => Tensor::cat(&[&uncond, &cond], 0),
        }
        .unwrap();
        assert_eq!(
            values(guide(&batch, &s, 2).unwrap()),
            expect_all,
            "{order:?}"
        );
        // DiT's rule: guide only the first channel, keep the cond half's others.
        s.guided_channels = Some(1);
        let got = values(guide(&batch, &s, 2).unwrap());
        assert_eq!(
            got,
            [expect_all[0], 2.0, 3.0, 4.0],
            "{order:?}, 1 guided channel"
        );
        s.guided_channels = None;
    }
    // No CFG: the output passes through untouched.
    let plain = spec(SamplerKind::Ddim, 4);
    assert_eq!(
        values(guide(&cond, &plain, 2).unwrap()),
        values(cond.clone())
    );
}

#[test]
fn invalid_specs_are_clear_errors() {
    let cases: Vec<(SamplerSpec, &str)> = vec![
        (spec(SamplerKind::Ddim, 0), "at least 1"),
        (spec(SamplerKind::Ddim, 1001), "exceed"),
        (spec(SamplerKind::Ddpm, 1001), "exceed"),
        (spec(SamplerKind::DpmSolverPp, 1000), "exceed"),
        (
            SamplerSpec {
                guidance_scale: f64::NAN,
                ..Default::default()
            },
            "finite",
        ),
        (
            SamplerSpec {
                guidance_scale: f64::INFINITY,
                ..Default::default()
            },
            "finite",
        ),
        (
            SamplerSpec {
                eta: -0.1,
                ..Default::default()
            },
            "eta",
        ),
        (
            SamplerSpec {
                eta: 0.5,
                ..spec(SamplerKind::Ddpm, 10)
            },
            "ddim only",
        ),
        (
            SamplerSpec {
                eta: 3.0,
                ..spec(SamplerKind::Ddim, 10)
            },
            "too large",
        ),
        (
            SamplerSpec {
                beta_start: 0.0,
                ..Default::default()
            },
            "beta",
        ),
        (
            SamplerSpec {
                beta_end: f64::NAN,
                ..Default::default()
            },
            "beta",
        ),
        (
            SamplerSpec {
                guided_channels: Some(0),
                ..Default::default()
            },
            "guided_channels",
        ),
        (
            SamplerSpec {
                train_timesteps: 0,
                ..Default::default()
            },
            "train_timesteps",
        ),
    ];
    for (s, needle) in cases {
        match Sampler::new(&s) {
            Err(e @ SamplerError::InvalidSpec(_)) => {
                assert!(
                    e.to_string().contains(needle),
                    "{s:?}: error `{e}` lacks `{needle}`"
                )
            }
            other => panic!("{s:?}: expected an InvalidSpec error, got {other:?}"),
        }
    }
    // The largest valid step counts work.
    assert_eq!(
        Sampler::new(&spec(SamplerKind::Ddim, 1000))
            .unwrap()
            .steps(),
        1000
    );
    assert_eq!(
        Sampler::new(&spec(SamplerKind::DpmSolverPp, 999))
            .unwrap()
            .steps(),
        999
    );
}

#[test]
fn misuse_of_step_and_guide_is_an_error_not_a_panic() {
    let dev = Device::Cpu;
    let x = x_t(1);
    let out = model(&x, &Tensor::full(999f32, 2, &dev).unwrap()).unwrap();

    let mut ddpm = Sampler::new(&spec(SamplerKind::Ddpm, 4)).unwrap();
    assert!(matches!(
        ddpm.step(0, &x, &out, None),
        Err(SamplerError::MissingNoise { step: 0 })
    ));
    assert!(matches!(
        ddpm.step(4, &x, &out, None),
        Err(SamplerError::StepOutOfRange { step: 4, steps: 4 })
    ));
    let small_noise = Tensor::zeros((1, 4, 3, 3), candle_core::DType::F32, &dev).unwrap();
    assert!(matches!(
        ddpm.step(0, &x, &out, Some(&small_noise)),
        Err(SamplerError::Shape(_))
    ));

    let mut dpm = Sampler::new(&spec(SamplerKind::DpmSolverPp, 4)).unwrap();
    assert!(matches!(
        dpm.step(2, &x, &out, None),
        Err(SamplerError::OutOfOrder {
            step: 2,
            expected: 0
        })
    ));
    let x1 = dpm.step(0, &x, &out, None).unwrap();
    assert!(matches!(
        dpm.step(2, &x1, &out, None),
        Err(SamplerError::OutOfOrder {
            step: 2,
            expected: 1
        })
    ));
    dpm.step(1, &x1, &out, None).unwrap();
    // Step 0 restarts, as does reset().
    dpm.step(0, &x, &out, None).unwrap();
    dpm.reset();
    assert!(matches!(
        dpm.step(1, &x, &out, None),
        Err(SamplerError::OutOfOrder {
            step: 1,
            expected: 0
        })
    ));

    // Model outputs that fit neither C nor 2C channels, or another batch.
    let mut ddim = Sampler::new(&spec(SamplerKind::Ddim, 4)).unwrap();
    let three = out.narrow(1, 0, 3).unwrap();
    let e = ddim.step(0, &x, &three, None).unwrap_err();
    assert!(
        matches!(e, SamplerError::Shape(_)) && e.to_string().contains("model output"),
        "{e}"
    );
    let one_sample = out.narrow(0, 0, 1).unwrap();
    assert!(matches!(
        ddim.step(0, &x, &one_sample, None),
        Err(SamplerError::Shape(_))
    ));

    // Guidance: odd batch, too many guided channels, more latent than output channels.
    let cfg = SamplerSpec::default();
    assert!(matches!(
        guide(&out.narrow(0, 0, 1).unwrap(), &cfg, 4),
        Err(SamplerError::Shape(_))
    ));
    let nine = SamplerSpec {
        guided_channels: Some(9),
        ..Default::default()
    };
    assert!(matches!(guide(&out, &nine, 4), Err(SamplerError::Shape(_))));
    assert!(matches!(guide(&out, &cfg, 9), Err(SamplerError::Shape(_))));
    let nan = SamplerSpec {
        guidance_scale: f64::NAN,
        ..Default::default()
    };
    assert!(matches!(
        guide(&out, &nan, 4),
        Err(SamplerError::InvalidSpec(_))
    ));
}

#[test]
fn the_last_step_of_ddim_and_dpm_returns_the_x0_prediction() {
    // With alpha_bar_prev = 1 (DDIM) and sigma = 0 (DPM-Solver++), the last
    // step lands on x0 = (x - sqrt(1 - abar) eps) / sqrt(abar).
    let x = x_t(3);
    let eps = x_t(4);
    for kind in [SamplerKind::Ddim, SamplerKind::DpmSolverPp] {
        let mut s = Sampler::new(&spec(kind, 1)).unwrap();
        let t = s.timesteps()[0] as usize;
        let abar = tcc_sampler::NoiseSchedule::linear(&spec(kind, 1)).alphas_cumprod[t];
        let got = s.step(0, &x, &eps, None).unwrap();
        let want =
            ((&x - eps.affine((1.0 - abar).sqrt(), 0.0).unwrap()).unwrap() / abar.sqrt()).unwrap();
        let max_abs = |t: Tensor| {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let scale = max_abs(want.clone());
        let diff = max_abs((got - want).unwrap());
        // f32 rounding of values up to ~|x| / sqrt(abar) (about 400 at t = 999).
        assert!(
            diff <= 1e-6 * scale.max(1.0),
            "{kind:?}: {diff:e} (scale {scale})"
        );
    }
}
