//! Diffusion Transformers on candle, exposed block by block and branch by
//! branch (see [`BlockModel`]). Nothing here knows about caching.
//!
//! [`Dit`] is the class-conditional DiT of Peebles & Xie: built from random
//! weights ([`Dit::random`]) or loaded from the original or the diffusers
//! checkpoint layout ([`Dit::load`]). [`PixArt`] is PixArt-α's transformer;
//! [`AnyModel`] holds either.

mod any;
pub mod attention;
mod config;
mod dit;
mod error;
mod layers;
mod load;
pub mod ops;
mod parts;
mod pixart;
mod vmath;
mod weights;

pub use any::AnyModel;
pub use config::{DitConfig, DitSize, Numerics};
pub use dit::Dit;
pub use error::{Error, Result};
pub use layers::pos_embed_2d;
pub use load::{convert_checkpoint, detect_layout, weight_files, ConvertReport, WeightsLayout};
pub use parts::{BlockModel, Conditioning, Modulation};
pub use pixart::{PixArt, PixArtConfig};
