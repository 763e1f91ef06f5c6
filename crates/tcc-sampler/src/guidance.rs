//! Classifier-free guidance.

use candle_core::Tensor;
use tcc_core::{CfgOrder, SamplerSpec};

use crate::{Result, SamplerError};

/// Combine the model output of a CFG batch into the guided output for the
/// `B` samples.
///
/// `model_out` is `[2B, C_out, ...]`, its halves in `spec.cfg_order`. The
/// first `N` channels are guided, `uncond + g * (cond - uncond)`, where `N` is
/// `spec.guided_channels` or else `latent_channels` (all epsilon channels);
/// the remaining channels (epsilon channels beyond `N`, and a learned-sigma
/// model's variance channels) are the conditional half's. This is DiT's
/// `forward_with_cfg` followed by its loop keeping the first (conditional)
/// half: DiT duplicates the guided channels to both halves, steps all `2B`
/// samples and feeds the first half again at the next step, so only the
/// conditional half's trajectory survives.
///
/// Returns `[B, C_out, ...]`. Step the `B` samples with it and build the next
/// model input as `[x; x]`. Without CFG (`guidance_scale == 1`) the batch is
/// not doubled and `model_out` is returned unchanged.
pub fn guide(model_out: &Tensor, spec: &SamplerSpec, latent_channels: usize) -> Result<Tensor> {
    if !spec.uses_cfg() {
        return Ok(model_out.clone());
    }
    if !spec.guidance_scale.is_finite() {
        return Err(SamplerError::InvalidSpec(format!(
            "guidance scale must be finite, got {}",
            spec.guidance_scale
        )));
    }
    let dims = model_out.dims();
    if dims.len() < 2 || dims[0] % 2 == 1 {
        return Err(SamplerError::Shape(format!(
            "CFG model output {dims:?}: expected [2B, C, ...] with an even batch"
        )));
    }
    let c_out = dims[1];
    let n = spec.guided_channels.unwrap_or(latent_channels);
    if latent_channels > c_out || n == 0 || n > c_out {
        return Err(SamplerError::Shape(format!(
            "CFG model output {dims:?}: cannot guide {n} channels of {c_out} ({latent_channels} latent channels)"
        )));
    }
    let b = dims[0] / 2;
    let (cond, uncond) = match spec.cfg_order {
        CfgOrder::CondFirst => (model_out.narrow(0, 0, b)?, model_out.narrow(0, b, b)?),
        CfgOrder::UncondFirst => (model_out.narrow(0, b, b)?, model_out.narrow(0, 0, b)?),
    };
    let cond_g = cond.narrow(1, 0, n)?;
    let uncond_g = uncond.narrow(1, 0, n)?;
    let guided = (&uncond_g + (cond_g - &uncond_g)?.affine(spec.guidance_scale, 0.0)?)?;
    if n == c_out {
        return Ok(guided);
    }
    Ok(Tensor::cat(&[&guided, &cond.narrow(1, n, c_out - n)?], 1)?)
}
