//! Diffusion samplers and classifier-free guidance on candle tensors.
//!
//! - [`Sampler`]: DDIM (eta = 0 and > 0) and ancestral DDPM with DiT's
//!   timestep respacing, and DPM-Solver++ 2M as diffusers runs it for
//!   PixArt-α. Coefficients come from the linear beta schedule
//!   ([`NoiseSchedule`]) in f64.
//! - [`guide`]: classifier-free guidance of a `[cond; uncond]` or
//!   `[uncond; cond]` batch, with DiT's "guide only the first N channels"
//!   rule and learned-sigma handling.
//! - [`NoiseRng`]: seeded, portable standard-normal noise.
//! - [`sample_loop`] / [`sample_trajectory`]: the plain sampling loop over a
//!   model closure, the reference an executor must reproduce.
//!
//! The model timestep of step `i` is [`SamplerSpec::timesteps`]`()[i]`, the
//! original (not respaced) value, as DiT's `_WrappedModel` feeds it.

mod guidance;
mod noise;
mod sample_loop;
mod sampler;
mod schedule;

pub use guidance::guide;
pub use noise::NoiseRng;
pub use sample_loop::{sample_loop, sample_trajectory};
pub use sampler::{Coefficients, FixedVariance, Sampler};
pub use schedule::{DpmStep, NoiseSchedule, RespacedStep};

use tcc_core::{SamplerKind, SamplerSpec};

/// Errors from building or stepping a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("invalid sampler settings: {0}")]
    InvalidSpec(String),
    #[error("step {step} is out of range: the sampler has {steps} steps")]
    StepOutOfRange { step: usize, steps: usize },
    #[error("dpm-solver++ steps must run in order: got step {step}, expected step {expected} (or step 0 to restart)")]
    OutOfOrder { step: usize, expected: usize },
    #[error("step {step} adds noise (ddpm, or ddim with eta > 0) but no noise was given")]
    MissingNoise { step: usize },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, SamplerError>;

/// Check that `spec` describes a sampler that can run: at least one step, no
/// more steps than distinct train timesteps, finite guidance, a finite
/// non-negative eta (DDIM only), and betas with 0 < start <= end < 1.
pub fn validate_spec(spec: &SamplerSpec) -> Result<()> {
    let bad = |m: String| Err(SamplerError::InvalidSpec(m));
    let t = spec.train_timesteps;
    if spec.steps == 0 {
        return bad("steps must be at least 1".into());
    }
    if t == 0 {
        return bad("train_timesteps must be at least 1".into());
    }
    // DPM-Solver++ spaces n + 1 points over T - 1 intervals.
    let max_steps = match spec.kind {
        SamplerKind::DpmSolverPp => t - 1,
        _ => t,
    };
    if spec.steps > max_steps {
        return bad(format!(
            "{} steps exceed the {max_steps} distinct timesteps {} can use with {t} train timesteps",
            spec.steps,
            spec.kind.as_str()
        ));
    }
    if !spec.guidance_scale.is_finite() {
        return bad(format!(
            "guidance scale must be finite, got {}",
            spec.guidance_scale
        ));
    }
    if !spec.eta.is_finite() || spec.eta < 0.0 {
        return bad(format!("eta must be finite and >= 0, got {}", spec.eta));
    }
    if spec.eta != 0.0 && spec.kind != SamplerKind::Ddim {
        return bad(format!(
            "eta applies to ddim only, got eta {} for {}",
            spec.eta,
            spec.kind.as_str()
        ));
    }
    let (b0, b1) = (spec.beta_start, spec.beta_end);
    if !(b0 > 0.0 && b0 <= b1 && b1 < 1.0) {
        return bad(format!(
            "betas must satisfy 0 < beta_start <= beta_end < 1, got {b0} and {b1}"
        ));
    }
    if spec.guided_channels == Some(0) {
        return bad(
            "guided_channels must be at least 1 (or unset to guide every latent channel)".into(),
        );
    }
    Ok(())
}
