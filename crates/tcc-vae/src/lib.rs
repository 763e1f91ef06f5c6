//! Decoding latents of the latent DiT models into RGB images.
//!
//! DiT-XL/2 and PixArt-α both sample in the latent space of
//! `stabilityai/sd-vae-ft-ema` (4 latent channels, 8x spatial factor,
//! latents scaled by 0.18215). [`VaeDecoder`] loads the decoder half of a
//! diffusers `AutoencoderKL` directory (`config.json` +
//! `diffusion_pytorch_model.safetensors`: the layout of sd-vae-ft-ema and of
//! a pipeline's `vae/` folder) and turns the sampler's latents into images in
//! `[-1, 1]`, like the diffusers pipelines do: `vae.decode(latents /
//! scaling_factor).sample`, clamped. [`to_u8_nhwc`] turns those into bytes
//! for PNG or `.npz` output.
//!
//! The network is built from the public blocks of
//! `candle_transformers::models::stable_diffusion` (mid block, up-decoder
//! blocks), wired exactly as its `AutoEncoderKL` decoder: building the whole
//! `AutoEncoderKL` would also demand the encoder's weights, which decoding
//! never uses. Only `decoder.*` and `post_quant_conv.*` are read.
//!
//! The SD VAE decoder is heavy: about 13 s per 256x256 image on a 2-core
//! CPU, so decoding runs in batches of [`VaeDecoder::batch_size`] (1 by
//! default) and reports progress after each batch.
//!
//! ```no_run
//! # fn main() -> Result<(), tcc_vae::VaeError> {
//! use candle_core::{DType, Device, Tensor};
//! let vae = tcc_vae::VaeDecoder::load("sd-vae-ft-ema".as_ref(), DType::F32, &Device::Cpu)?;
//! let latents = Tensor::zeros((2, 4, 32, 32), DType::F32, &Device::Cpu)?;
//! let images = vae.decode_with_progress(&latents, |done, total| eprintln!("{done}/{total}"))?;
//! let rgb = tcc_vae::to_u8_nhwc(&images)?; // 2 x 256 x 256 x 3 bytes
//! # Ok(()) }
//! ```

mod config;
mod decoder;
mod rgb;

use std::path::PathBuf;

pub use config::{VaeConfig, DEFAULT_SCALING_FACTOR};
pub use decoder::{
    VaeDecoder, VaeFiles, CONFIG_FILE, MAX_WEIGHTS_BYTES, WEIGHTS_FILE, WEIGHTS_FILE_FP16,
};
pub use rgb::{to_u8_nhwc, RgbBatch};

/// Everything that can go wrong loading or running the VAE decoder.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A file the model directory must contain is not there.
    #[error("{}: not found ({what})", path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    /// A file exists but cannot be read.
    #[error("{}: cannot read: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// `config.json` is not valid JSON or describes a VAE this crate cannot build.
    #[error("{}: invalid VAE config: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The weights file is not a readable safetensors file.
    #[error("{}: cannot read as safetensors (truncated or corrupt?): {message}", path.display())]
    Weights { path: PathBuf, message: String },
    /// A tensor the decoder needs is not in the weights file.
    #[error("{}: tensor `{name}` is missing (does config.json match these weights?)", path.display())]
    MissingTensor { path: PathBuf, name: String },
    /// A tensor has another shape than the config implies.
    #[error("{}: tensor `{name}` has shape {found:?}, config.json implies {expected:?}", path.display())]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The input to `decode` or `to_u8_nhwc` has the wrong shape or a bad setting was given.
    #[error("{0}")]
    Invalid(String),
    /// An error inside candle while computing.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = VaeError> = std::result::Result<T, E>;
