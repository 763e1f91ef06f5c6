//! The vocabulary shared by every tcc layer.
//!
//! This crate holds plain settings types only: what a branch is, the shape of
//! a model (enough for the cost model) and the diffusers `config.json` it is
//! read from, the sampler settings and the calibration settings. It knows
//! nothing about the `.sched` syntax and nothing about tensors, so every
//! other crate may depend on it.

#[macro_use]
mod spelling;
mod calibration;
mod diffusers;
mod dynamic;
pub mod json_float;
mod model;
mod sampler;
mod shard;
mod toca;

pub use calibration::{
    CalibMethod, CalibMode, CalibrationSpec, CfgHalf, Pooling, PriorKind, Selection,
    DEFAULT_ALPHAS, DEFAULT_RANK, DEFAULT_RIDGE, DEFAULT_VALIDATION_SAMPLES,
};
pub use diffusers::{ConfigError, TransformerConfig, PIXART_CAPTION_TOKENS};
pub use dynamic::{
    DynamicPolicy, DynamicSpec, FitError, Polynomial, ProbePoint, DEFAULT_DYNAMIC_WARMUP,
    MAX_RESCALE_COEFFS,
};
pub use model::{Branch, ModelFamily, ModelShape, TIMESTEP_FREQ_DIM};
pub use sampler::{CfgOrder, SamplerKind, SamplerSpec};
pub use shard::{in_shard_order, Shard, MAX_SHARDS};
pub use spelling::UnknownName;
pub use toca::{
    fresh_tokens, RatioSchedule, TocaSpec, TokenScore, DEFAULT_FRESH_WEIGHT, DEFAULT_SPREAD_BONUS,
};
