use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::precision::TextPrecision;
use crate::{Result, TextError};

/// The most bytes of one cache entry read (PixArt-α's: 120 x 4096 f32,
/// about 2 MB).
const MAX_ENTRY_BYTES: u64 = 1 << 28;

/// A directory of caption embeddings: one `<key>.safetensors` per (encoder
/// identity, dtype, max_tokens, prompt), holding `embedding`
/// `[max_tokens, d_model]` f32 and `mask` `[max_tokens]` f32, with the prompt
/// in the metadata. Entries are written to a temporary file in the same
/// directory and renamed into place, so readers never see a partial file and
/// concurrent writers of the same entry are harmless.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    /// Opens (creating it if needed) the cache directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| TextError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hex sha256 key of one entry: each field length-prefixed, so no
    /// two different tuples share a key.
    /// Dense precisions use candle's dtype names (`f32`, `bf16`), quantized
    /// ones their GGUF names (`q8_0`, ...).
    pub fn key(
        identity: &str,
        precision: impl Into<TextPrecision>,
        max_tokens: usize,
        prompt: &str,
    ) -> String {
        let mut h = Sha256::new();
        for field in [
            "tcc-text/embedding/v1".as_bytes(),
            identity.as_bytes(),
            precision.into().as_str().as_bytes(),
            &(max_tokens as u64).to_le_bytes(),
            prompt.as_bytes(),
        ] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field);
        }
        format!("{:x}", h.finalize())
    }

    /// The file an entry lives in.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// Reads an entry: `Some((embedding [max_tokens, d_model], mask
    /// [max_tokens]))`, both f32 on `device`, or `None` when it is absent,
    /// unreadable or of another shape.
    pub fn get(
        &self,
        key: &str,
        max_tokens: usize,
        d_model: usize,
        device: &Device,
    ) -> Option<(Tensor, Tensor)> {
        // An entry is two small tensors; anything else is not one of ours.
        let bytes = tcc_fs::read_input(&self.path(key), MAX_ENTRY_BYTES).ok()?;
        let mut map = candle_core::safetensors::load_buffer(&bytes, device).ok()?;
        let emb = map.remove("embedding")?;
        let mask = map.remove("mask")?;
        let ok = emb.dtype() == DType::F32
            && mask.dtype() == DType::F32
            && emb.dims() == [max_tokens, d_model]
            && mask.dims() == [max_tokens];
        ok.then_some((emb, mask))
    }

    /// Writes an entry atomically (temporary file in the cache directory,
    /// then rename).
    pub fn put(&self, key: &str, embedding: &Tensor, mask: &Tensor, prompt: &str) -> Result<()> {
        let path = self.path(key);
        let err = |message: String| TextError::Cache {
            path: path.clone(),
            message,
        };
        let embedding = embedding.to_dtype(DType::F32)?.contiguous()?;
        let mask = mask.to_dtype(DType::F32)?.contiguous()?;
        let metadata = BTreeMap::from([("prompt".to_string(), prompt.to_string())]);
        let bytes =
            tcc_fs::safetensors_bytes([("embedding", &embedding), ("mask", &mask)], Some(metadata))
                .map_err(err)?;
        tcc_fs::write_atomically(&path, &bytes).map_err(|e| err(format!("writing: {e}")))?;
        Ok(())
    }
}
