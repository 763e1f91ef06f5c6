//! The samplers: one step at a time, on candle tensors.

use candle_core::Tensor;
use tcc_core::{SamplerKind, SamplerSpec};

use crate::schedule::{dpm_steps, respaced_steps, DpmStep, RespacedStep};
use crate::{validate_spec, Result, SamplerError};

/// The variance of DDPM steps for a model *without* learned sigma (a model
/// whose output has twice the latent channels always uses DiT's
/// `LEARNED_RANGE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FixedVariance {
    /// DiT's `FIXED_LARGE` (`beta_t`), what DiT's `create_diffusion` picks
    /// for `learn_sigma=False` unless `sigma_small` is set.
    #[default]
    Large,
    /// DiT's `FIXED_SMALL`: the posterior variance.
    Small,
}

/// The per-step coefficients a sampler uses, in sampling order.
#[derive(Clone, Copy, Debug)]
pub enum Coefficients<'a> {
    /// DDIM and DDPM (DiT's respaced diffusion).
    Respaced(&'a [RespacedStep]),
    DpmSolver(&'a [DpmStep]),
}

#[derive(Clone, Debug)]
enum Table {
    Respaced(Vec<RespacedStep>),
    Dpm(Vec<DpmStep>),
}

/// A sampler for one [`SamplerSpec`], stepped in sampling order.
///
/// Per step `i` the caller runs the model at `timesteps()[i]` (the original,
/// not the respaced, timestep value) on `x` (doubled for CFG), combines the
/// output with [`guide`](crate::guide), draws noise if
/// [`needs_noise`](Sampler::needs_noise) says so, and calls
/// [`step`](Sampler::step) to get `x` for step `i + 1`.
///
/// DDIM and DDPM follow DiT's `gaussian_diffusion.py` (`ddim_sample`,
/// `p_sample`) with `clip_denoised=False` unless
/// [`with_clip_denoised`](Sampler::with_clip_denoised) is set. DPM-Solver++
/// follows diffusers' `DPMSolverMultistepScheduler` with PixArt's settings;
/// it keeps the previous x0 prediction, so its steps must run in order from
/// step 0 (step 0 restarts it; [`reset`](Sampler::reset) does too). Clone a
/// sampler to snapshot it.
///
/// Coefficients are computed in f64 and applied as scalars in the tensors'
/// dtype.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: SamplerKind,
    eta: f64,
    timesteps: Vec<u32>,
    table: Table,
    clip_denoised: bool,
    fixed_variance: FixedVariance,
    /// DPM-Solver++: the x0 prediction of the previous step.
    prev_x0: Option<Tensor>,
    /// The step expected next.
    next: usize,
}

impl Sampler {
    pub fn new(spec: &SamplerSpec) -> Result<Self> {
        validate_spec(spec)?;
        let timesteps = spec.timesteps();
        if let Some(w) = timesteps.windows(2).find(|w| w[0] <= w[1]) {
            return Err(SamplerError::InvalidSpec(format!(
                "{} steps over {} train timesteps repeat timestep {}",
                spec.steps, spec.train_timesteps, w[1]
            )));
        }
        let table = match spec.kind {
            SamplerKind::Ddim | SamplerKind::Ddpm => {
                let steps = respaced_steps(spec, &timesteps);
                for (i, s) in steps.iter().enumerate() {
                    let dir = 1.0 - s.alpha_bar_prev - s.ddim_sigma * s.ddim_sigma;
                    if spec.kind == SamplerKind::Ddim && (dir.is_nan() || dir < 0.0) {
                        return Err(SamplerError::InvalidSpec(format!(
                            "eta {} is too large: 1 - alpha_bar_prev - sigma^2 = {dir} < 0 at step {i}",
                            spec.eta
                        )));
                    }
                }
                Table::Respaced(steps)
            }
            SamplerKind::DpmSolverPp => Table::Dpm(dpm_steps(spec, &timesteps)),
        };
        Ok(Sampler {
            kind: spec.kind,
            eta: spec.eta,
            timesteps,
            table,
            clip_denoised: false,
            fixed_variance: FixedVariance::default(),
            prev_x0: None,
            next: 0,
        })
    }

    /// Clip the x0 prediction to [-1, 1] (DiT's `clip_denoised`; DDIM and
    /// DDPM only). Off by default, as in DiT's sampling scripts.
    pub fn with_clip_denoised(mut self, clip: bool) -> Self {
        self.clip_denoised = clip;
        self
    }

    /// The DDPM variance for models without learned sigma.
    pub fn with_fixed_variance(mut self, v: FixedVariance) -> Self {
        self.fixed_variance = v;
        self
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The model timestep of every step, in sampling order.
    pub fn timesteps(&self) -> &[u32] {
        &self.timesteps
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn coefficients(&self) -> Coefficients<'_> {
        match &self.table {
            Table::Respaced(s) => Coefficients::Respaced(s),
            Table::Dpm(s) => Coefficients::DpmSolver(s),
        }
    }

    /// Whether step `i` adds noise, so the caller must pass some to
    /// [`step`](Sampler::step): DDPM and DDIM with eta > 0, at every step
    /// but the last.
    pub fn needs_noise(&self, i: usize) -> bool {
        let last = i + 1 >= self.timesteps.len();
        match self.kind {
            SamplerKind::Ddpm => !last,
            SamplerKind::Ddim => self.eta > 0.0 && !last,
            SamplerKind::DpmSolverPp => false,
        }
    }

    /// Forget the DPM-Solver++ history; the next step must be step 0.
    pub fn reset(&mut self) {
        self.prev_x0 = None;
        self.next = 0;
    }

    /// Advance `x` (`[B, C, ...]`, at step `i`'s timestep) by one step.
    ///
    /// `model_out` is the guided model output `[B, C_out, ...]`: `C_out = C`
    /// (epsilon) or `2C` (epsilon then DiT's learned-sigma values). `noise`
    /// (shaped like `x`) is required when [`needs_noise`](Sampler::needs_noise)
    /// and ignored otherwise. `model_out` and `noise` are converted to `x`'s
    /// dtype.
    pub fn step(
        &mut self,
        i: usize,
        x: &Tensor,
        model_out: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        if i >= n {
            return Err(SamplerError::StepOutOfRange { step: i, steps: n });
        }
        let (xd, od) = (x.dims(), model_out.dims());
        let c = *xd
            .get(1)
            .ok_or_else(|| SamplerError::Shape(format!("x {xd:?}: expected [B, C, ...]")))?;
        let same_rest = od.len() == xd.len() && od[0] == xd[0] && od[2..] == xd[2..];
        if !same_rest || (od[1] != c && od[1] != 2 * c) {
            return Err(SamplerError::Shape(format!(
                "model output {od:?} does not fit x {xd:?}: expected {c} or {} channels (learned sigma) and the same batch and spatial dims",
                2 * c
            )));
        }
        let out = model_out.to_dtype(x.dtype())?;
        let eps = out.narrow(1, 0, c)?;
        let noise = if self.needs_noise(i) {
            let z = noise.ok_or(SamplerError::MissingNoise { step: i })?;
            if z.dims() != xd {
                return Err(SamplerError::Shape(format!(
                    "noise {:?} does not match x {xd:?}",
                    z.dims()
                )));
            }
            Some(z.to_dtype(x.dtype())?)
        } else {
            None
        };
        let next = match &self.table {
            Table::Respaced(steps) => {
                let s = &steps[i];
                let scaled_x = x.affine(s.sqrt_recip_alpha_bar, 0.0)?;
                let x0 = (&scaled_x - eps.affine(s.sqrt_recipm1_alpha_bar, 0.0)?)?;
                let x0 = if self.clip_denoised {
                    x0.clamp(-1f32, 1f32)?
                } else {
                    x0
                };
                match self.kind {
                    SamplerKind::Ddim => {
                        // DiT re-derives eps from the (possibly clipped) x0.
                        let eps = ((scaled_x - &x0)? / s.sqrt_recipm1_alpha_bar)?;
                        let dir = (1.0 - s.alpha_bar_prev - s.ddim_sigma * s.ddim_sigma).sqrt();
                        let mean =
                            (x0.affine(s.alpha_bar_prev.sqrt(), 0.0)? + eps.affine(dir, 0.0)?)?;
                        match noise {
                            Some(z) => (mean + z.affine(s.ddim_sigma, 0.0)?)?,
                            None => mean,
                        }
                    }
                    _ => {
                        let mean = (x0.affine(s.posterior_mean_coef1, 0.0)?
                            + x.affine(s.posterior_mean_coef2, 0.0)?)?;
                        match noise {
                            None => mean,
                            Some(z) if out.dim(1)? == 2 * c => {
                                // LEARNED_RANGE: v in [-1, 1] interpolates the log
                                // variance between the posterior's and beta's.
                                let (lo, hi) = (s.posterior_log_variance_clipped, s.beta.ln());
                                let v = out.narrow(1, c, c)?;
                                let log_var = v.affine(0.5 * (hi - lo), 0.5 * (hi + lo))?;
                                (mean + (log_var.affine(0.5, 0.0)?.exp()? * z)?)?
                            }
                            Some(z) => {
                                let log_var = match self.fixed_variance {
                                    FixedVariance::Large => s.fixed_large_log_variance,
                                    FixedVariance::Small => s.posterior_log_variance_clipped,
                                };
                                (mean + z.affine((0.5 * log_var).exp(), 0.0)?)?
                            }
                        }
                    }
                }
            }
            Table::Dpm(steps) => {
                if i == 0 {
                    self.prev_x0 = None;
                } else if self.next != i {
                    return Err(SamplerError::OutOfOrder {
                        step: i,
                        expected: self.next,
                    });
                }
                let s = &steps[i];
                let x0 = ((x - eps.affine(s.sigma_s, 0.0)?)? / s.alpha_s)?;
                // x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) D0 [- 0.5 alpha_t (e^-h - 1) D1]
                let cd = -s.alpha_t * (-s.h).exp_m1();
                let mut next = (x.affine(s.sigma_t / s.sigma_s, 0.0)? + x0.affine(cd, 0.0)?)?;
                if let Some(r0) = s.r0 {
                    let prev = self.prev_x0.as_ref().ok_or(SamplerError::OutOfOrder {
                        step: i,
                        expected: 0,
                    })?;
                    let d1 = (&x0 - prev)?.affine(1.0 / r0, 0.0)?;
                    next = (next + d1.affine(0.5 * cd, 0.0)?)?;
                }
                self.prev_x0 = Some(x0);
                next
            }
        };
        self.next = i + 1;
        Ok(next)
    }
}
