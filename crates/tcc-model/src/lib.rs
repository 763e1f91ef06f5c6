//! Diffusion Transformers on candle.
