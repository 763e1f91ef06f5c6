//! PixArt-α's text side: the T5 encoder and its tokenizer, turning captions
//! into the `[n, max_tokens, d_model]` embeddings and the `[n, max_tokens]`
//! attention mask that the PixArt transformer cross-attends to, plus an
//! on-disk cache of those embeddings.
//!
//! - [`TextEncoder::load`] reads a diffusers pipeline's `text_encoder/`
//!   (`config.json` + `model.safetensors`, or shards listed in
//!   `model.safetensors.index.json`) with candle-transformers' T5 encoder,
//!   and `tokenizer/tokenizer.json` with the `tokenizers` crate.
//! - [`quantize_encoder`] writes the encoder's linear layers as a GGUF file
//!   of `q8_0` or `q4_0` blocks (`text_encoder/model.q8_0.gguf`), which
//!   `TextEncoder::load` reads with candle-transformers' `quantized_t5` when
//!   asked for [`TextPrecision::Quantized`].
//! - [`TextEncoder::encode`] tokenises as diffusers' `PixArtAlphaPipeline`
//!   does (`padding="max_length", max_length=120, truncation=True,
//!   add_special_tokens=True`) and runs the encoder. The mask is `f32`,
//!   1.0 for real tokens (the closing `</s>` included) and 0.0 for padding.
//! - [`EmbeddingCache`] / [`TextEncoder::encode_cached`]: one safetensors
//!   file per (encoder, precision, max_tokens, prompt), written atomically.
//!
//! **Padding rows.** candle's `T5EncoderModel::forward` takes no attention
//! mask, so each prompt is encoded on its real tokens only (prompts of equal
//! length share a batch). With a mask, transformers' T5 gives padding keys a
//! weight of exactly zero and T5's relative position bias depends only on
//! `i - j`, so the real-token rows are the same values transformers computes
//! with `attention_mask` (golden test: max abs difference 1e-4 in f32). The
//! padding rows, which transformers fills with the outputs of padding
//! queries, are **zero** here. PixArt's cross-attention masks those keys out
//! (bias -10000 → weight exactly 0), so the image model's output does not
//! depend on them; any other consumer must apply the mask too.

mod cache;
mod encoder;
mod error;
mod precision;
mod quantize;

pub use cache::EmbeddingCache;
pub use encoder::{TextEncoder, Tokens, PIXART_MAX_TOKENS};
pub use error::TextError;
pub use precision::{Quant, TextPrecision};
pub use quantize::{quantize_encoder, QuantizeReport};

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TextError>;
