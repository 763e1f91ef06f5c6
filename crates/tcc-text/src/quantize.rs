//! Writing a T5 encoder's safetensors weights as a block-quantized GGUF file
//! that candle-transformers' `quantized_t5` reads.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_transformers::models::quantized_t5;

use crate::encoder::{identity, load_quantized, parse_config, weight_files, META_QUANT};
use crate::precision::Quant;
use crate::{Result, TextError};

/// GGUF metadata key with the source weights' identity (see `TextEncoder::identity`).
const META_SOURCE: &str = "tcc.source_identity";

/// The weights of T5's linear layers: the only tensors that are quantized.
/// Embeddings, the relative position bias and the layer norms stay f32
/// (candle dequantizes embeddings on load anyway).
const LINEAR_SUFFIXES: &[&str] = &[
    ".q.weight",
    ".k.weight",
    ".v.weight",
    ".o.weight",
    ".wi.weight",
    ".wi_0.weight",
    ".wi_1.weight",
    ".wo.weight",
];

/// What [`quantize_encoder`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub path: PathBuf,
    /// Linear weights quantized.
    pub quantized: usize,
    /// Tensors kept in f32 (embeddings, position bias, layer norms).
    pub kept_f32: usize,
    /// Parameters written.
    pub parameters: usize,
    /// Size of the written file.
    pub bytes: u64,
}

/// Which name a source tensor gets in the GGUF file, or `None` to leave it
/// out (decoder and LM-head weights of full T5 checkpoints). The token
/// embedding is always written as `shared.weight`.
fn target_name(name: &str, has_shared: bool) -> Option<String> {
    match name {
        "shared.weight" => Some(name.into()),
        "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight" if !has_shared => {
            Some("shared.weight".into())
        }
        "encoder.embed_tokens.weight" => None,
        _ if name.starts_with("encoder.") => Some(name.into()),
        _ => None,
    }
}

fn is_linear(name: &str, rank: usize) -> bool {
    rank == 2 && LINEAR_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Quantizes the T5 encoder in `dir_text_encoder` (a diffusers
/// `text_encoder/` folder: `config.json` and `model.safetensors` or shards)
/// into the GGUF file `out`: the linear layers' weights as `quant` blocks
/// along their input dimension, everything else f32. Source weights may be
/// f32, f16 or bf16.
///
/// The file is written to a temporary file beside `out`, loaded back as an
/// encoder (so a file that does not load is never left behind), then
/// renamed into place. `progress(done, total)` is called after each tensor.
pub fn quantize_encoder(
    dir_text_encoder: &Path,
    quant: Quant,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let config_path = dir_text_encoder.join("config.json");
    let config_bytes = crate::encoder::read(&config_path)?;
    let (_, config_json) = parse_config(&config_path, &config_bytes)?;
    let files = weight_files(dir_text_encoder)?;
    let weights_err = |source| TextError::Weights {
        path: files[0].clone(),
        source,
    };
    // SAFETY: read-only memory maps of files nobody should modify meanwhile.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(weights_err)?;
    let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort_unstable();
    let has_shared = names.iter().any(|n| n == "shared.weight");
    let chosen: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| target_name(n, has_shared).map(|t| (n.clone(), t)))
        .collect();
    let bad = |message: String| TextError::Quantize {
        path: dir_text_encoder.to_path_buf(),
        message,
    };
    if !chosen.iter().any(|(_, t)| t == "shared.weight") {
        return Err(bad(
            "no token embedding (shared.weight or encoder.embed_tokens.weight)".into(),
        ));
    }
    if !chosen.iter().any(|(n, _)| n.starts_with("encoder.block.")) {
        return Err(bad("no encoder.block.* tensors".into()));
    }

    let block = quant.ggml().block_size();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(chosen.len());
    let (mut quantized, mut kept_f32, mut parameters) = (0, 0, 0);
    for (i, (src, dst)) in chosen.iter().enumerate() {
        let t = st
            .load(src, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(weights_err)?;
        parameters += t.elem_count();
        let linear = is_linear(src, t.rank());
        let q = if linear {
            let cols = t.dims()[1];
            if cols % block != 0 {
                return Err(bad(format!(
                    "tensor {src} {:?}: its rows of {cols} values do not split into {} blocks of {block}; \
                     pick another quantization",
                    t.dims(),
                    quant.as_str()
                )));
            }
            quantized += 1;
            QTensor::quantize(&t, quant.ggml())
        } else {
            kept_f32 += 1;
            QTensor::quantize(&t, GgmlDType::F32)
        }
        .map_err(|e| bad(format!("tensor {src}: {e}")))?;
        tensors.push((dst.clone(), q));
        progress(i + 1, chosen.len());
    }

    let source = identity(&config_bytes, &[], &files)?;
    let quant_value = gguf_file::Value::String(quant.as_str().into());
    let source_value = gguf_file::Value::String(source);
    let arch = gguf_file::Value::String("t5".into());
    let metadata = [
        ("general.architecture", &arch),
        (META_QUANT, &quant_value),
        (META_SOURCE, &source_value),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();

    let write = |e: &dyn std::fmt::Display| TextError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    let mut file = tcc_fs::AtomicFile::create(out).map_err(|e| write(&e))?;
    let tmp_path = file.temp_path().to_path_buf();
    {
        let mut w = std::io::BufWriter::new(file.file());
        gguf_file::write(&mut w, &metadata, &refs).map_err(|e| write(&e))?;
        std::io::Write::flush(&mut w).map_err(|e| write(&e))?;
    }
    drop(refs);
    drop(tensors);
    // Load it back the way `TextEncoder::load` will.
    let check: Result<quantized_t5::T5EncoderModel> =
        load_quantized(&tmp_path, quant, &config_path, config_json, &Device::Cpu);
    check.map_err(|e| {
        bad(format!(
            "the written file does not load as a T5 encoder: {e}"
        ))
    })?;
    file.commit().map_err(|e| write(&e))?;
    let bytes = std::fs::metadata(out).map_err(|e| write(&e))?.len();
    Ok(QuantizeReport {
        path: out.to_path_buf(),
        quantized,
        kept_f32,
        parameters,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_linears() {
        assert_eq!(
            target_name("shared.weight", true).as_deref(),
            Some("shared.weight")
        );
        assert_eq!(target_name("encoder.embed_tokens.weight", true), None);
        assert_eq!(
            target_name("encoder.embed_tokens.weight", false).as_deref(),
            Some("shared.weight")
        );
        assert_eq!(
            target_name("decoder.block.0.layer.0.SelfAttention.q.weight", true),
            None
        );
        assert_eq!(target_name("lm_head.weight", true), None);
        assert!(is_linear(
            "encoder.block.3.layer.1.DenseReluDense.wi_0.weight",
            2
        ));
        assert!(is_linear(
            "encoder.block.0.layer.0.SelfAttention.o.weight",
            2
        ));
        assert!(!is_linear(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            2
        ));
        assert!(!is_linear("encoder.block.0.layer.0.layer_norm.weight", 1));
    }
}
