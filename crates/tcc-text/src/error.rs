use std::path::PathBuf;

use candle_core::DType;

/// Everything that can go wrong loading the text encoder, encoding prompts
/// or using the embeddings cache. Messages name the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A required file or directory does not exist.
    #[error("{what} not found: {path}", path = path.display())]
    Missing { what: &'static str, path: PathBuf },

    /// The tokenizer directory has no `tokenizer.json` (PixArt's published
    /// folder ships only the SentencePiece `spiece.model`).
    #[error(
        "no tokenizer.json in {dir} (PixArt's published tokenizer folder may only have \
         spiece.model); write it once with: python3 -c \"import transformers; \
         transformers.T5TokenizerFast.from_pretrained('{dir}').save_pretrained('{dir}')\" \
         (needs: pip install transformers sentencepiece protobuf)",
        dir = dir.display()
    )]
    MissingTokenizerJson { dir: PathBuf },

    /// A quantized precision was asked for, but its GGUF file has not been
    /// written yet.
    #[error(
        "{path} not found: the {quant} text encoder is made once from the safetensors weights \
         with: tcc quantize-t5 {dir} --type {quant}",
        path = path.display(),
        dir = dir.display()
    )]
    MissingQuantized {
        path: PathBuf,
        quant: &'static str,
        dir: PathBuf,
    },

    /// A tensor cannot be quantized, or the checkpoint has nothing to
    /// quantize.
    #[error("quantizing {path}: {message}", path = path.display())]
    Quantize { path: PathBuf, message: String },

    /// Reading a file failed.
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An output could not be written (disk full, permissions, file size
    /// limit): not a problem with the input.
    #[error("{path}: cannot write: {message}", path = path.display())]
    Write { path: PathBuf, message: String },

    /// `config.json` (or the weights index) is not a usable T5 config.
    #[error("bad T5 config {path}: {message}", path = path.display())]
    Config { path: PathBuf, message: String },

    /// The safetensors weights do not fit the config (missing tensor, wrong
    /// shape, unreadable file).
    #[error("loading T5 weights from {path}: {source}", path = path.display())]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// `tokenizer.json` could not be read or used.
    #[error("tokenizer {path}: {message}", path = path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// The tokenizer produced an id the encoder has no embedding for.
    #[error(
        "token id {id} (prompt {prompt}) is outside the text encoder's vocabulary of {vocab_size}: \
         tokenizer.json and text_encoder/config.json do not belong together"
    )]
    TokenOutOfVocab {
        id: u32,
        prompt: usize,
        vocab_size: usize,
    },

    /// Only `F32` and `BF16` are supported dense (T5 overflows in `F16`).
    #[error(
        "unsupported dtype {0:?} for the T5 encoder: use F32 or BF16 (T5 overflows in F16), \
         or a quantized GGUF (q8_0, q4_0)"
    )]
    UnsupportedDType(DType),

    /// A bad argument (e.g. `max_tokens == 0`).
    #[error("{0}")]
    InvalidArgument(String),

    /// The embeddings cache could not be written.
    #[error("embedding cache {path}: {message}", path = path.display())]
    Cache { path: PathBuf, message: String },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
