use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::quantized_t5;
use candle_transformers::models::t5::{Config, T5EncoderModel};
use sha2::{Digest, Sha256};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::cache::EmbeddingCache;
use crate::precision::{Quant, TextPrecision};
use crate::{Result, TextError};

/// PixArt-α's caption length: diffusers' `PixArtAlphaPipeline` pads and
/// truncates captions to 120 tokens.
pub const PIXART_MAX_TOKENS: usize = 120;

/// Bytes read from each end of a weights file for the encoder's identity.
const IDENTITY_SAMPLE: u64 = 1 << 20;

/// One tokenised prompt: `ids` padded to `max_tokens`, of which the first
/// `len` are real tokens (the closing `</s>` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub len: usize,
}

/// candle-transformers' dense or GGUF-quantized T5 encoder.
enum Model {
    Dense(T5EncoderModel),
    Quantized(quantized_t5::T5EncoderModel),
}

impl Model {
    fn forward(&mut self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Dense(m) => m.forward(ids),
            Model::Quantized(m) => m.forward(ids),
        }
    }
}

/// The T5 encoder and tokenizer of a PixArt-α pipeline.
pub struct TextEncoder {
    model: Model,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    config: Config,
    pad_id: u32,
    precision: TextPrecision,
    device: Device,
    identity: String,
    prompts_encoded: u64,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("d_model", &self.config.d_model)
            .field("num_layers", &self.config.num_layers)
            .field("vocab_size", &self.config.vocab_size)
            .field("precision", &self.precision)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The most bytes of a config, index or tokenizer file (T5's
/// tokenizer.json has 2.4 MB).
const MAX_JSON_BYTES: u64 = 1 << 28;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    tcc_fs::read_input(path, MAX_JSON_BYTES).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn require(path: &Path, what: &'static str) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(TextError::Missing {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Parses a transformers `T5Config` JSON into candle's `Config`, filling in
/// transformers' defaults for the fields candle requires but recent
/// transformers versions may leave out, and forcing the encoder-only shape.
/// Also returns the completed JSON, from which the quantized model's config
/// (same fields, private in candle) is read.
pub(crate) fn parse_config(path: &Path, bytes: &[u8]) -> Result<(Config, serde_json::Value)> {
    let bad = |message: String| TextError::Config {
        path: path.to_path_buf(),
        message,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    if let Some(kind) = obj.get("model_type").and_then(|v| v.as_str()) {
        if kind != "t5" && kind != "mt5" {
            return Err(bad(format!("model_type is {kind:?}, expected \"t5\"")));
        }
    }
    let defaults = [
        ("dropout_rate", serde_json::json!(0.1)),
        ("layer_norm_epsilon", serde_json::json!(1e-6)),
        ("initializer_factor", serde_json::json!(1.0)),
        ("feed_forward_proj", serde_json::json!("relu")),
        ("is_encoder_decoder", serde_json::json!(true)),
        ("pad_token_id", serde_json::json!(0)),
        ("eos_token_id", serde_json::json!(1)),
    ];
    for (key, default) in defaults {
        if obj.get(key).is_none_or(|v| v.is_null()) {
            obj.insert(key.to_string(), default);
        }
    }
    // Encoder only: no cross-attention layers, no key/value cache.
    obj.insert("is_decoder".into(), serde_json::json!(false));
    obj.insert("use_cache".into(), serde_json::json!(false));
    let config: Config = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    for (name, v) in [
        ("vocab_size", config.vocab_size),
        ("d_model", config.d_model),
        ("d_kv", config.d_kv),
        ("d_ff", config.d_ff),
        ("num_layers", config.num_layers),
        ("num_heads", config.num_heads),
        (
            "relative_attention_num_buckets",
            config.relative_attention_num_buckets,
        ),
    ] {
        if v == 0 {
            return Err(bad(format!("{name} is 0")));
        }
    }
    Ok((config, value))
}

/// The safetensors files of a `text_encoder/` folder: `model.safetensors`,
/// or the shards `model.safetensors.index.json` lists.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        regular(&single)?;
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(TextError::Missing {
            what: "T5 weights (model.safetensors or model.safetensors.index.json)",
            path: single,
        });
    }
    let bad = |message: String| TextError::Config {
        path: index.clone(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(&read(&index)?).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad("a weight_map value is not a string".into()))?;
        if !names.contains(&file) {
            names.push(file);
        }
    }
    if names.is_empty() {
        return Err(bad("empty weight_map".into()));
    }
    names.sort_unstable();
    let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    for f in &files {
        require(f, "T5 weights shard")?;
        regular(f)?;
    }
    Ok(files)
}

/// Refuses a weights file that is not a regular file (a FIFO would block,
/// a device never end) before it is mapped or read.
pub(crate) fn regular(path: &Path) -> Result<()> {
    tcc_fs::check_input_file(path)
        .map(drop)
        .map_err(|source| TextError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A hex sha256 over what identifies an encoder cheaply: config.json,
/// tokenizer.json and, per weights file, its name, length and first and last
/// MiB (hashing 19 GB of T5-XXL at every start would take minutes).
pub(crate) fn identity(config: &[u8], tokenizer: &[u8], weights: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"tcc-text/t5-encoder/v1");
    field(config);
    field(tokenizer);
    for path in weights {
        let io = |source| TextError::Io {
            path: path.clone(),
            source,
        };
        let mut f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        field(name.unwrap_or_default().as_bytes());
        field(&len.to_le_bytes());
        let mut buf = Vec::new();
        f.by_ref()
            .take(IDENTITY_SAMPLE)
            .read_to_end(&mut buf)
            .map_err(io)?;
        field(&buf);
        if len > IDENTITY_SAMPLE {
            buf.clear();
            f.seek(SeekFrom::Start(
                len.saturating_sub(IDENTITY_SAMPLE).max(IDENTITY_SAMPLE),
            ))
            .map_err(io)?;
            f.read_to_end(&mut buf).map_err(io)?;
            field(&buf);
        }
    }
    // sha2's digests print as lowercase hex.
    Ok(format!("{:x}", h.finalize()))
}

impl TextEncoder {
    /// Loads the T5 encoder from a diffusers pipeline's `text_encoder/`
    /// folder and the tokenizer from its `tokenizer/tokenizer.json`.
    ///
    /// `precision` is how the weights are held:
    /// - `DType::F32` or `DType::BF16` (T5-XXL's encoder is ~19 GB in f32,
    ///   ~9.5 GB in bf16): the safetensors weights are memory-mapped and
    ///   converted on load; activations run in that dtype;
    /// - [`Quant::Q8_0`] / [`Quant::Q4_0`] (~5 / ~2.7 GB): the GGUF file
    ///   `text_encoder/model.q8_0.gguf` (or `model.q4_0.gguf`) written once by
    ///   [`quantize_encoder`](crate::quantize_encoder) (`tcc quantize-t5`);
    ///   activations run in f32.
    ///
    /// Outputs are f32 either way.
    pub fn load(
        dir_text_encoder: &Path,
        dir_tokenizer: &Path,
        precision: impl Into<TextPrecision>,
        device: &Device,
    ) -> Result<Self> {
        let precision = precision.into();
        if let TextPrecision::Dense(dtype) = precision {
            if !matches!(dtype, DType::F32 | DType::BF16) {
                return Err(TextError::UnsupportedDType(dtype));
            }
        }
        require(dir_text_encoder, "text encoder directory")?;
        require(dir_tokenizer, "tokenizer directory")?;
        let config_path = dir_text_encoder.join("config.json");
        require(&config_path, "T5 config")?;
        let config_bytes = read(&config_path)?;
        let (config, config_json) = parse_config(&config_path, &config_bytes)?;
        let weights = match precision {
            TextPrecision::Dense(_) => weight_files(dir_text_encoder)?,
            TextPrecision::Quantized(quant) => {
                let path = dir_text_encoder.join(quant.file_name());
                if !path.exists() {
                    return Err(TextError::MissingQuantized {
                        path,
                        quant: quant.as_str(),
                        dir: dir_text_encoder.to_path_buf(),
                    });
                }
                vec![path]
            }
        };

        let tokenizer_path = dir_tokenizer.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(TextError::MissingTokenizerJson {
                dir: dir_tokenizer.to_path_buf(),
            });
        }
        let tokenizer_bytes = read(&tokenizer_path)?;
        let mut tokenizer =
            Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| TextError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        // Padding is done here, to the length each call asks for.
        tokenizer.with_padding(None);
        let pad_id = tokenizer
            .token_to_id("<pad>")
            .unwrap_or(config.pad_token_id as u32);

        let identity = identity(&config_bytes, &tokenizer_bytes, &weights)?;
        let model = match precision {
            TextPrecision::Dense(dtype) => {
                // SAFETY: the files are memory-mapped read-only; as with every
                // mmap-based loader, they must not be modified while loaded.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, dtype, device) }
                    .map_err(|source| TextError::Weights {
                        path: weights[0].clone(),
                        source,
                    })?;
                let model =
                    T5EncoderModel::load(vb, &config).map_err(|source| TextError::Weights {
                        path: dir_text_encoder.to_path_buf(),
                        source,
                    })?;
                Model::Dense(model)
            }
            TextPrecision::Quantized(quant) => Model::Quantized(load_quantized(
                &weights[0],
                quant,
                &config_path,
                config_json,
                device,
            )?),
        };
        Ok(Self {
            model,
            tokenizer,
            tokenizer_path,
            config,
            pad_id,
            precision,
            device: device.clone(),
            identity,
            prompts_encoded: 0,
        })
    }

    /// The embedding width (4096 for T5-XXL).
    pub fn d_model(&self) -> usize {
        self.config.d_model
    }

    /// How the weights are held (dense dtype or quantization).
    pub fn precision(&self) -> TextPrecision {
        self.precision
    }

    /// Where the encoder runs and its outputs live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The padding token's id (`<pad>`, 0 for T5).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// A hex sha256 identifying this encoder (config.json, tokenizer.json,
    /// the weights files' names, lengths and first/last MiB): the cache key's
    /// first part.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How many prompts have gone through the T5 forward so far (cache hits
    /// do not count).
    pub fn prompts_encoded(&self) -> u64 {
        self.prompts_encoded
    }

    /// Tokenises like diffusers' PixArt pipeline: special tokens added
    /// (`</s>` at the end), truncated to `max_tokens` (keeping `</s>`),
    /// padded with `<pad>` to `max_tokens`.
    pub fn tokenize(&mut self, prompts: &[String], max_tokens: usize) -> Result<Vec<Tokens>> {
        if max_tokens == 0 {
            return Err(TextError::InvalidArgument(
                "max_tokens must be at least 1".into(),
            ));
        }
        let tok_err = |message: String| TextError::Tokenizer {
            path: self.tokenizer_path.clone(),
            message,
        };
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err(e.to_string()))?;
        let mut out = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            let enc = self
                .tokenizer
                .encode(prompt.as_str(), true)
                .map_err(|e| tok_err(format!("prompt {i}: {e}")))?;
            let mut ids = enc.get_ids().to_vec();
            ids.truncate(max_tokens);
            if let Some(&id) = ids
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(TextError::TokenOutOfVocab {
                    id,
                    prompt: i,
                    vocab_size: self.config.vocab_size,
                });
            }
            let len = ids.len();
            ids.resize(max_tokens, self.pad_id);
            out.push(Tokens { ids, len });
        }
        Ok(out)
    }

    /// Encodes `prompts` into `(embeddings [n, max_tokens, d_model] f32,
    /// mask [n, max_tokens] f32)`, the mask 1.0 for real tokens (`</s>`
    /// included) and 0.0 for padding. Padding rows of the embeddings are
    /// zero (see the crate docs). Use [`PIXART_MAX_TOKENS`] for PixArt.
    pub fn encode(&mut self, prompts: &[String], max_tokens: usize) -> Result<(Tensor, Tensor)> {
        let tokens = self.tokenize(prompts, max_tokens)?;
        let rows = self.encode_tokens(&tokens, max_tokens)?;
        self.assemble(rows, &tokens, max_tokens)
    }

    /// Like [`encode`](Self::encode), reading hits from `cache` and encoding
    /// (then storing) only the misses. Unreadable or mismatched entries count
    /// as misses and are overwritten.
    pub fn encode_cached(
        &mut self,
        cache: &EmbeddingCache,
        prompts: &[String],
        max_tokens: usize,
    ) -> Result<(Tensor, Tensor)> {
        let tokens = self.tokenize(prompts, max_tokens)?;
        let keys: Vec<String> = prompts
            .iter()
            .map(|p| EmbeddingCache::key(&self.identity, self.precision, max_tokens, p))
            .collect();
        let mut rows: Vec<Option<Tensor>> = Vec::with_capacity(prompts.len());
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = cache.get(key, max_tokens, self.config.d_model, &self.device);
            // The stored mask must be the one the tokenizer gives now.
            let hit = hit.and_then(|(emb, mask)| {
                let m = mask.to_vec1::<f32>().ok()?;
                let real = m.iter().take_while(|&&v| v == 1.0).count();
                (real == tokens[i].len && m[real..].iter().all(|&v| v == 0.0)).then_some(emb)
            });
            if hit.is_none() {
                misses.push(i);
            }
            rows.push(hit);
        }
        if !misses.is_empty() {
            let miss_tokens: Vec<Tokens> = misses.iter().map(|&i| tokens[i].clone()).collect();
            let encoded = self.encode_tokens(&miss_tokens, max_tokens)?;
            for ((&i, emb), t) in misses.iter().zip(encoded).zip(&miss_tokens) {
                let mask = mask_row(t, max_tokens, &self.device)?;
                cache.put(&keys[i], &emb, &mask, &prompts[i])?;
                rows[i] = Some(emb);
            }
        }
        let rows = rows.into_iter().map(|r| r.expect("filled")).collect();
        self.assemble(rows, &tokens, max_tokens)
    }

    /// Runs T5 on each prompt's real tokens (prompts of equal length in one
    /// batch) and returns one `[max_tokens, d_model]` f32 row per prompt,
    /// zero past the real tokens.
    fn encode_tokens(&mut self, tokens: &[Tokens], max_tokens: usize) -> Result<Vec<Tensor>> {
        let d = self.config.d_model;
        let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, t) in tokens.iter().enumerate() {
            by_len.entry(t.len).or_default().push(i);
        }
        let mut rows: Vec<Option<Tensor>> = vec![None; tokens.len()];
        for (len, members) in by_len {
            let n = members.len();
            let out = if len == 0 {
                Tensor::zeros((n, max_tokens, d), DType::F32, &self.device)?
            } else {
                let ids: Vec<u32> = members
                    .iter()
                    .flat_map(|&i| tokens[i].ids[..len].iter().copied())
                    .collect();
                let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
                let out = self.model.forward(&ids)?.to_dtype(DType::F32)?;
                self.prompts_encoded += n as u64;
                if len < max_tokens {
                    let pad = Tensor::zeros((n, max_tokens - len, d), DType::F32, &self.device)?;
                    Tensor::cat(&[&out, &pad], 1)?
                } else {
                    out
                }
            };
            for (j, &i) in members.iter().enumerate() {
                rows[i] = Some(out.get(j)?);
            }
        }
        Ok(rows.into_iter().map(|r| r.expect("filled")).collect())
    }

    fn assemble(
        &self,
        rows: Vec<Tensor>,
        tokens: &[Tokens],
        max_tokens: usize,
    ) -> Result<(Tensor, Tensor)> {
        let n = tokens.len();
        if n == 0 {
            return Ok((
                Tensor::zeros(
                    (0, max_tokens, self.config.d_model),
                    DType::F32,
                    &self.device,
                )?,
                Tensor::zeros((0, max_tokens), DType::F32, &self.device)?,
            ));
        }
        let emb = Tensor::stack(&rows, 0)?;
        let mask: Vec<f32> = tokens
            .iter()
            .flat_map(|t| (0..max_tokens).map(move |k| if k < t.len { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, max_tokens), &self.device)?;
        Ok((emb, mask))
    }
}

/// GGUF metadata key naming the quantization (`q8_0`, ...): written by the
/// quantizer, checked by the reader.
pub(crate) const META_QUANT: &str = "tcc.quantization";

/// Reads a GGUF T5 encoder written by [`quantize_encoder`](crate::quantize_encoder)
/// (or any GGUF with the same tensor names), checking that the file says it
/// holds `quant` when it says anything.
pub(crate) fn load_quantized(
    path: &Path,
    quant: Quant,
    config_path: &Path,
    config_json: serde_json::Value,
    device: &Device,
) -> Result<quantized_t5::T5EncoderModel> {
    let weights_err = |source| TextError::Weights {
        path: path.to_path_buf(),
        source,
    };
    regular(path)?;
    let mut file = File::open(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut file).map_err(weights_err)?;
    if let Some(v) = content.metadata.get(META_QUANT) {
        let stored = v.to_string().map_err(weights_err)?;
        if stored.as_str() != quant.as_str() {
            return Err(TextError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "the file holds {stored} weights, not {}: its name and contents disagree",
                    quant.as_str()
                ),
            });
        }
    }
    drop(file);
    let config: quantized_t5::Config =
        serde_json::from_value(config_json).map_err(|e| TextError::Config {
            path: config_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let vb = quantized_t5::VarBuilder::from_gguf(path, device).map_err(weights_err)?;
    quantized_t5::T5EncoderModel::load(vb, &config).map_err(weights_err)
}

fn mask_row(t: &Tokens, max_tokens: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..max_tokens)
        .map(|k| if k < t.len { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(m, max_tokens, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_fill_missing_fields() {
        let json = br#"{"vocab_size": 10, "d_model": 8, "d_kv": 2, "d_ff": 16,
            "num_layers": 1, "num_heads": 4, "relative_attention_num_buckets": 8,
            "feed_forward_proj": "gated-gelu", "is_decoder": true}"#;
        let (c, _) = parse_config(Path::new("config.json"), json).unwrap();
        assert!(!c.is_decoder);
        assert!(c.feed_forward_proj.gated);
        assert_eq!(c.pad_token_id, 0);
    }

    #[test]
    fn config_errors_name_the_file() {
        let e = parse_config(Path::new("/x/config.json"), br#"{"d_model": 8}"#).unwrap_err();
        assert!(e.to_string().contains("/x/config.json"), "{e}");
        let e =
            parse_config(Path::new("/x/config.json"), br#"{"model_type": "bert"}"#).unwrap_err();
        assert!(e.to_string().contains("bert"), "{e}");
    }
}
