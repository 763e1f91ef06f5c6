//! The testbeds' DiTs, in diffusers layout, embedded in the binary.

use candle_core::{DType, Device};
use tcc_model::Dit;

use crate::error::{Result, TestbedError};
use crate::Testbed;

/// `assets/tiny-dit/config.json`.
pub static TINY_DIT_CONFIG: &str = include_str!("../assets/tiny-dit/config.json");
/// `assets/tiny-dit/diffusion_pytorch_model.safetensors` (EMA weights).
static TINY_DIT_WEIGHTS: &[u8] =
    include_bytes!("../assets/tiny-dit/diffusion_pytorch_model.safetensors");
/// `assets/tiny-dit/training.json`: what the training run did.
pub static TINY_DIT_TRAINING: &str = include_str!("../assets/tiny-dit/training.json");

/// `assets/shapes160/dit/config.json`: the architecture that
/// `tools/train/shapes160_gpu.sh` trains (12 blocks, hidden 128, 160 classes,
/// 4x32x32 latents, patch 2).
pub static SHAPES160_DIT_CONFIG: &str = include_str!("../assets/shapes160/dit/config.json");

/// The shapes160 weights file, relative to the repository root. It is
/// embedded when it exists at build time (`build.rs`); until a GPU run has
/// trained it, the model reports [`TestbedError::NotTrained`].
pub const SHAPES160_WEIGHTS_PATH: &str =
    "crates/tcc-testbed/assets/shapes160/dit/diffusion_pytorch_model.safetensors";

/// How to train the shapes160 weights: the prepared GPU call.
pub const SHAPES160_TRAINING_COMMAND: &str =
    "tools/train/shapes160_prepare.sh here, then tools/train/shapes160_gpu.sh on a GPU machine, then tools/train/shapes160_install.py (docs/testbed.md, \"Training shapes160\")";

#[cfg(shapes160_weights)]
static SHAPES160_WEIGHTS: Option<&[u8]> = Some(include_bytes!(
    "../assets/shapes160/dit/diffusion_pytorch_model.safetensors"
));
#[cfg(not(shapes160_weights))]
static SHAPES160_WEIGHTS: Option<&[u8]> = None;

#[cfg(shapes160_weights)]
static SHAPES160_TRAINING: Option<&str> =
    Some(include_str!("../assets/shapes160/dit/training.json"));
#[cfg(not(shapes160_weights))]
static SHAPES160_TRAINING: Option<&str> = None;

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

/// `shapes160`'s `training.json`, when this build embeds trained weights.
pub fn shapes160_training() -> Option<&'static str> {
    SHAPES160_TRAINING
}

/// Whether this build embeds `testbed`'s DiT: [`TestbedError::NotTrained`]
/// if not, as [`embedded_dit`] would say, without building the model.
pub fn check_embedded(testbed: Testbed) -> Result<()> {
    match testbed {
        Testbed::Shapes160 if SHAPES160_WEIGHTS.is_none() => Err(TestbedError::NotTrained {
            model: testbed.name().into(),
            missing: SHAPES160_WEIGHTS_PATH.into(),
            how: SHAPES160_TRAINING_COMMAND.into(),
        }),
        _ => Ok(()),
    }
}

/// The embedded DiT of `testbed`. [`TestbedError::NotTrained`] when the
/// testbed's weights were not present at build time.
pub fn embedded_dit(testbed: Testbed, dtype: DType, device: &Device) -> Result<Dit> {
    let model = |e: tcc_model::Error| TestbedError::Model(e.to_string());
    match testbed {
        Testbed::Tiny => tiny_dit(dtype, device).map_err(model),
        Testbed::Shapes160 => {
            check_embedded(testbed)?;
            let weights = SHAPES160_WEIGHTS.unwrap_or_default();
            Dit::load_diffusers_bytes(
                "<embedded shapes160 dit>",
                SHAPES160_DIT_CONFIG,
                weights,
                dtype,
                device,
            )
            .map_err(model)
        }
    }
}
