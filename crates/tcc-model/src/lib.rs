//! Diffusion Transformers on candle, exposed block by block and branch by
//! branch (see [`BlockModel`]). Nothing here knows about caching.

mod parts;

pub use parts::{BlockModel, Conditioning, Modulation};
