//! The embedded default model: the tiny DiT trained on the shapes
//! (`tools/train/train_tiny_dit.py`), in diffusers layout.

use candle_core::{DType, Device};
use tcc_model::Dit;

/// `assets/tiny-dit/config.json`.
pub static TINY_DIT_CONFIG: &str = include_str!("../assets/tiny-dit/config.json");
/// `assets/tiny-dit/diffusion_pytorch_model.safetensors` (EMA weights).
static TINY_DIT_WEIGHTS: &[u8] =
    include_bytes!("../assets/tiny-dit/diffusion_pytorch_model.safetensors");
/// `assets/tiny-dit/training.json`: what the training run did.
pub static TINY_DIT_TRAINING: &str = include_str!("../assets/tiny-dit/training.json");

/// The embedded tiny DiT, built from the bytes inside this binary, so it
/// loads from any working directory and wherever the binary is moved.
pub fn tiny_dit(dtype: DType, device: &Device) -> tcc_model::Result<Dit> {
    Dit::load_diffusers_bytes(
        "<embedded tiny-dit>",
        TINY_DIT_CONFIG,
        TINY_DIT_WEIGHTS,
        dtype,
        device,
    )
}
