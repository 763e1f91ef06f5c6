//! The samplers against the fixtures of `tools/golden/samplers.py`.
//!
//! References (see the script's docstring):
//! - DDIM / DDPM timesteps and coefficients: a numpy float64 port of DiT's
//!   `respace.py` and `gaussian_diffusion.py` (diffusers' DDIM/DDPM timestep
//!   rules differ from DiT's), cross-checked in the script against diffusers'
//!   `DDIMScheduler` / `DDPMScheduler` in float64. Tolerance: 1e-9 relative.
//! - DPM-Solver++ timesteps and coefficients: diffusers'
//!   `DPMSolverMultistepScheduler` with PixArt-α's settings, which computes in
//!   float32. Tolerance: 1e-5 relative to max(|reference|, 1) (lambda crosses
//!   zero, where a pure relative error of a float32 value is meaningless).
//! - Sampling runs of a closed-form linear model: the same references, the
//!   first one DiT's `sample.py` CFG loop literally. Tolerance: 1e-4 max abs
//!   (our tensors are f32).
//! - `NoiseRng`: the script's port of it. Tolerance: 1e-6 abs (f64 libm
//!   differences before the f32 rounding).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use tcc_core::{CfgOrder, SamplerKind, SamplerSpec};
use tcc_sampler::{
    guide, sample_trajectory, Coefficients, FixedVariance, NoiseRng, NoiseSchedule, Sampler,
};

const REL_F64: f64 = 1e-9;
const REL_F32: f64 = 1e-5;
const ABS_TENSOR: f32 = 1e-4;

#[derive(Deserialize)]
struct Fixture {
    alphas_cumprod: Vec<f64>,
    timesteps_dit: Vec<Timesteps>,
    timesteps_dpm: Vec<Timesteps>,
    respaced: Vec<RespacedTable>,
    dpm: Vec<DpmTable>,
    noise: Vec<NoiseCase>,
    model: ModelWeights,
    runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Timesteps {
    n: usize,
    t: Vec<u32>,
}

#[derive(Deserialize)]
struct RespacedTable {
    steps: usize,
    eta: f64,
    rows: Vec<RespacedRow>,
}

#[derive(Deserialize)]
struct RespacedRow {
    timestep: u32,
    beta: Option<f64>,
    alpha_bar: Option<f64>,
    alpha_bar_prev: Option<f64>,
    sqrt_recip_alpha_bar: Option<f64>,
    sqrt_recipm1_alpha_bar: Option<f64>,
    posterior_mean_coef1: Option<f64>,
    posterior_mean_coef2: Option<f64>,
    posterior_log_variance_clipped: Option<f64>,
    fixed_large_log_variance: Option<f64>,
    ddim_sigma: Option<f64>,
}

#[derive(Deserialize)]
struct DpmTable {
    steps: usize,
    rows: Vec<DpmRow>,
}

#[derive(Deserialize)]
struct DpmRow {
    timestep: u32,
    sigma: f64,
    alpha_s: f64,
    sigma_s: f64,
    lambda_s: f64,
    alpha_t: f64,
    sigma_t: f64,
    /// None: +inf (after the last step).
    lambda_t: Option<f64>,
    h: Option<f64>,
    order: u8,
    r0: Option<f64>,
}

#[derive(Deserialize)]
struct NoiseCase {
    seed: u64,
    calls: Vec<NoiseCall>,
}

#[derive(Deserialize)]
struct NoiseCall {
    shape: Vec<usize>,
    values: Array,
}

#[derive(Deserialize)]
struct Array {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Array {
    fn tensor(&self) -> Tensor {
        let v: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, self.shape.as_slice(), &Device::Cpu).unwrap()
    }
}

#[derive(Deserialize)]
struct ModelWeights {
    w: Array,
    bias: Array,
    u: Array,
    labels: Vec<f64>,
}

#[derive(Deserialize)]
struct Run {
    name: String,
    reference: String,
    spec: SamplerSpec,
    c_out: usize,
    noise_seed: u64,
    clip_denoised: bool,
    fixed_variance: String,
    xs: Vec<Array>,
    #[serde(default)]
    guided_outputs: Vec<Array>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samplers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec(kind: SamplerKind, steps: usize, eta: f64) -> SamplerSpec {
    SamplerSpec {
        kind,
        steps,
        eta,
        guidance_scale: 1.0,
        ..Default::default()
    }
}

#[track_caller]
fn assert_rel(what: &str, got: f64, want: f64, rel: f64, floor: f64) {
    let scale = want.abs().max(floor);
    assert!(
        (got - want).abs() <= rel * scale,
        "{what}: got {got:e}, reference {want:e} (relative tolerance {rel:e})"
    );
}

/// A reference value that is None stands for an infinity (JSON has none).
#[track_caller]
fn assert_opt(what: &str, got: f64, want: Option<f64>, rel: f64, floor: f64) {
    match want {
        Some(w) => assert_rel(what, got, w, rel, floor),
        None => assert!(
            got.is_infinite(),
            "{what}: got {got}, reference is infinite"
        ),
    }
}

#[track_caller]
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let diff = (got.to_dtype(DType::F32).unwrap() - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= tol, "{what}: max abs difference {diff:e} > {tol:e}");
}

#[test]
fn linear_schedule_matches_numpy() {
    let f = fixture();
    let s = NoiseSchedule::linear(&SamplerSpec::default());
    assert_eq!(s.alphas_cumprod.len(), f.alphas_cumprod.len());
    for (t, (&got, &want)) in s.alphas_cumprod.iter().zip(&f.alphas_cumprod).enumerate() {
        assert_rel(&format!("alphas_cumprod[{t}]"), got, want, REL_F64, 0.0);
    }
}

#[test]
fn timesteps_match_dit_respacing_and_diffusers_dpm() {
    let f = fixture();
    for case in &f.timesteps_dit {
        for kind in [SamplerKind::Ddim, SamplerKind::Ddpm] {
            let s = spec(kind, case.n, 0.0);
            assert_eq!(
                s.timesteps(),
                case.t,
                "SamplerSpec::timesteps, DiT respacing, n = {}",
                case.n
            );
            assert_eq!(
                Sampler::new(&s).unwrap().timesteps(),
                case.t.as_slice(),
                "n = {}",
                case.n
            );
        }
    }
    for case in &f.timesteps_dpm {
        let s = spec(SamplerKind::DpmSolverPp, case.n, 0.0);
        assert_eq!(
            s.timesteps(),
            case.t,
            "SamplerSpec::timesteps, diffusers linspace, n = {}",
            case.n
        );
        assert_eq!(
            Sampler::new(&s).unwrap().timesteps(),
            case.t.as_slice(),
            "n = {}",
            case.n
        );
    }
    // The DiT cases include step counts where rounding half to even matters.
    assert!(f.timesteps_dit.iter().any(|c| c.n == 7) && f.timesteps_dpm.iter().any(|c| c.n == 6));
}

#[test]
fn respaced_coefficients_match_dit() {
    let f = fixture();
    for table in &f.respaced {
        for kind in [SamplerKind::Ddim, SamplerKind::Ddpm] {
            let eta = if kind == SamplerKind::Ddim {
                table.eta
            } else {
                0.0
            };
            let sampler = Sampler::new(&spec(kind, table.steps, eta)).unwrap();
            let Coefficients::Respaced(steps) = sampler.coefficients() else {
                panic!("{kind:?} must use respaced coefficients")
            };
            assert_eq!(steps.len(), table.rows.len());
            for (i, (s, r)) in steps.iter().zip(&table.rows).enumerate() {
                let at = |name: &str| format!("{kind:?} n={} step {i}: {name}", table.steps);
                assert_eq!(s.timestep, r.timestep, "{}", at("timestep"));
                assert_opt(&at("beta"), s.beta, r.beta, REL_F64, 0.0);
                assert_opt(&at("alpha_bar"), s.alpha_bar, r.alpha_bar, REL_F64, 0.0);
                assert_opt(
                    &at("alpha_bar_prev"),
                    s.alpha_bar_prev,
                    r.alpha_bar_prev,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("sqrt_recip"),
                    s.sqrt_recip_alpha_bar,
                    r.sqrt_recip_alpha_bar,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("sqrt_recipm1"),
                    s.sqrt_recipm1_alpha_bar,
                    r.sqrt_recipm1_alpha_bar,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("coef1"),
                    s.posterior_mean_coef1,
                    r.posterior_mean_coef1,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("coef2"),
                    s.posterior_mean_coef2,
                    r.posterior_mean_coef2,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("posterior_log_variance_clipped"),
                    s.posterior_log_variance_clipped,
                    r.posterior_log_variance_clipped,
                    REL_F64,
                    0.0,
                );
                assert_opt(
                    &at("fixed_large_log_variance"),
                    s.fixed_large_log_variance,
                    r.fixed_large_log_variance,
                    REL_F64,
                    0.0,
                );
                if kind == SamplerKind::Ddim {
                    // The reference's sigma is 0 exactly at the last step.
                    assert_opt(
                        &at("ddim_sigma"),
                        s.ddim_sigma,
                        r.ddim_sigma,
                        REL_F64,
                        1e-300,
                    );
                }
            }
        }
    }
}

#[test]
fn dpm_coefficients_match_diffusers() {
    let f = fixture();
    for table in &f.dpm {
        let sampler = Sampler::new(&spec(SamplerKind::DpmSolverPp, table.steps, 0.0)).unwrap();
        let Coefficients::DpmSolver(steps) = sampler.coefficients() else {
            panic!("dpm-solver++ must use DPM coefficients")
        };
        assert_eq!(steps.len(), table.rows.len());
        for (i, (s, r)) in steps.iter().zip(&table.rows).enumerate() {
            let at = |name: &str| format!("dpm n={} step {i}: {name}", table.steps);
            assert_eq!(s.timestep, r.timestep, "{}", at("timestep"));
            assert_eq!(s.order, r.order, "{}", at("solver order"));
            assert_rel(&at("sigma"), s.sigma, r.sigma, REL_F32, 1.0);
            assert_rel(&at("alpha_s"), s.alpha_s, r.alpha_s, REL_F32, 1.0);
            assert_rel(&at("sigma_s"), s.sigma_s, r.sigma_s, REL_F32, 1.0);
            assert_rel(&at("lambda_s"), s.lambda_s, r.lambda_s, REL_F32, 1.0);
            assert_rel(&at("alpha_t"), s.alpha_t, r.alpha_t, REL_F32, 1.0);
            assert_rel(&at("sigma_t"), s.sigma_t, r.sigma_t, REL_F32, 1.0);
            assert_opt(&at("lambda_t"), s.lambda_t, r.lambda_t, REL_F32, 1.0);
            assert_opt(&at("h"), s.h, r.h, REL_F32, 1.0);
            match (s.r0, r.r0) {
                (Some(got), Some(want)) => assert_rel(&at("r0"), got, want, REL_F32, 1.0),
                (got, want) => assert_eq!(got, want, "{}", at("r0")),
            }
        }
    }
}

#[test]
fn noise_rng_matches_the_numpy_port() {
    let f = fixture();
    for case in &f.noise {
        let mut rng = NoiseRng::new(case.seed);
        for (k, call) in case.calls.iter().enumerate() {
            let got = rng.randn(call.shape.as_slice(), &Device::Cpu).unwrap();
            assert_close(
                &format!("seed {} call {k}", case.seed),
                &got,
                &call.values.tensor(),
                1e-6,
            );
        }
    }
}

/// The closed-form model of the fixtures:
/// `(0.8 + 0.2 t / 1000) * W x + bias + y u`, per sample `y`.
struct LinearModel {
    w: Tensor,
    bias: Tensor,
    u: Tensor,
}

impl LinearModel {
    fn new(m: &ModelWeights, c_out: usize) -> Self {
        LinearModel {
            w: m.w.tensor().narrow(0, 0, c_out).unwrap(),
            bias: m.bias.tensor().narrow(0, 0, c_out).unwrap(),
            u: m.u.tensor().narrow(0, 0, c_out).unwrap(),
        }
    }

    fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let c_out = self.w.dim(0)?;
        let mixed = self.w.broadcast_matmul(&x.reshape((b, c, h * w))?)?;
        let a = t.affine(0.2 / 1000.0, 0.8)?.reshape((b, 1, 1))?;
        let shift = y
            .reshape((b, 1, 1))?
            .broadcast_mul(&self.u.reshape((1, c_out, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1))?)?;
        mixed
            .broadcast_mul(&a)?
            .broadcast_add(&shift)?
            .reshape((b, c_out, h, w))
    }
}

/// The label of every row of the model batch, in the spec's CFG order
/// (0 for the unconditional half).
fn batch_labels(labels: &[f64], spec: &SamplerSpec) -> Tensor {
    let cond: Vec<f32> = labels.iter().map(|&v| v as f32).collect();
    let zeros = vec![0f32; cond.len()];
    let rows = match (spec.uses_cfg(), spec.cfg_order) {
        (false, _) => cond,
        (true, CfgOrder::CondFirst) => [cond, zeros].concat(),
        (true, CfgOrder::UncondFirst) => [zeros, cond].concat(),
    };
    Tensor::new(rows, &Device::Cpu).unwrap()
}

#[test]
fn sampling_runs_match_references() {
    let f = fixture();
    for run in &f.runs {
        let model = LinearModel::new(&f.model, run.c_out);
        let y = batch_labels(&f.model.labels, &run.spec);
        let x_t = run.xs[0].tensor();
        let mut rng = NoiseRng::new(run.noise_seed);
        let fixed = match run.fixed_variance.as_str() {
            "large" => FixedVariance::Large,
            "small" => FixedVariance::Small,
            other => panic!("{}: unknown fixed variance {other}", run.name),
        };
        let xs = if run.clip_denoised || fixed == FixedVariance::Small {
            // Options outside SamplerSpec: step the sampler by hand.
            let mut sampler = Sampler::new(&run.spec)
                .unwrap()
                .with_clip_denoised(run.clip_denoised)
                .with_fixed_variance(fixed);
            assert!(
                !run.spec.uses_cfg(),
                "{}: the hand loop does no CFG",
                run.name
            );
            let mut xs = vec![x_t.clone()];
            for i in 0..sampler.steps() {
                let x = xs.last().unwrap();
                let t = Tensor::full(
                    sampler.timesteps()[i] as f32,
                    x.dim(0).unwrap(),
                    &Device::Cpu,
                )
                .unwrap();
                let out = model.forward(x, &t, &y).unwrap();
                let noise = sampler
                    .needs_noise(i)
                    .then(|| rng.randn(x.dims(), &Device::Cpu).unwrap());
                let next = sampler.step(i, x, &out, noise.as_ref()).unwrap();
                xs.push(next);
            }
            xs
        } else {
            sample_trajectory(
                &run.spec,
                &x_t,
                |x, t| model.forward(x, t, &y),
                |dims| rng.randn(dims, &Device::Cpu),
            )
            .unwrap()
        };
        assert_eq!(xs.len(), run.xs.len(), "{}", run.name);
        for (i, (got, want)) in xs.iter().zip(&run.xs).enumerate() {
            let what = format!("{} ({}): x after step {i}", run.name, run.reference);
            assert_close(&what, got, &want.tensor(), ABS_TENSOR);
        }
        // The guided model output of every step, on the reference's own x.
        for (i, want) in run.guided_outputs.iter().enumerate() {
            let x = run.xs[i].tensor();
            let t_val = Sampler::new(&run.spec).unwrap().timesteps()[i] as f32;
            let t = Tensor::full(t_val, 2 * x.dim(0).unwrap(), &Device::Cpu).unwrap();
            let out = model
                .forward(&Tensor::cat(&[&x, &x], 0).unwrap(), &t, &y)
                .unwrap();
            let got = guide(&out, &run.spec, x.dim(1).unwrap()).unwrap();
            assert_close(
                &format!("{}: guided output at step {i}", run.name),
                &got,
                &want.tensor(),
                ABS_TENSOR,
            );
        }
    }
    // Every sampler kind and variance mode is exercised.
    let names: Vec<&str> = f.runs.iter().map(|r| r.name.as_str()).collect();
    for needle in [
        "ddim10_cfg",
        "ddim7_eta",
        "clip",
        "ddpm10_learned",
        "fixed_large",
        "fixed_small",
        "dpm10_cfg",
        "dpm20",
    ] {
        assert!(
            names.iter().any(|n| n.contains(needle)),
            "no run named *{needle}*"
        );
    }
}
