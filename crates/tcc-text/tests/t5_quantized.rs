//! The GGUF-quantized T5 encoder (`quantize_encoder`, `TextPrecision::Quantized`)
//! against independent references.
//!
//! Reference: `tools/golden/t5_quantized.py`, which quantizes the tiny
//! fixture T5's linear weights with numpy from the GGUF block definitions
//! (`q8_0`, `q4_0`) and runs transformers 5.24's float32 `T5EncoderModel` on
//! the dequantized weights, each quantized layer's input rows rounded to
//! `q8_0` blocks as ggml's block dot product does, with the inputs of
//! `t5_expected.safetensors`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use tcc_text::{quantize_encoder, EmbeddingCache, Quant, TextEncoder, TextError, TextPrecision};

use common::{expected, fixtures};

/// Dequantized weights: numpy and candle both compute `q * f16(d)` in f32
/// from the same `round(x * (1 / d))`, so they must agree exactly.
const TOL_WEIGHTS: f32 = 0.0;
/// Encoder output vs the reference, max abs over real tokens, on outputs of
/// RMS 1.0: the same tolerance as the float32 golden test (only summation
/// order differs). Quantization itself moves this tiny random model's output
/// by 0.28 (q8_0) and 2.3 (q4_0), so a wrong layout, scale or activation
/// rounding cannot hide under it.
const TOL_OUTPUT: f32 = 1e-4;

/// A copy of the fixture's `text_encoder/` (quantizing writes into it).
fn encoder_copy(dir: &Path) -> PathBuf {
    let src = fixtures().join("tiny-pipeline/text_encoder");
    let te = dir.join("text_encoder");
    std::fs::create_dir_all(&te).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), te.join(f)).unwrap();
    }
    te
}

fn tokenizer_dir() -> PathBuf {
    fixtures().join("tiny-pipeline/tokenizer")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("t5_quantized_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Max abs difference over the real tokens' rows.
fn max_abs_real(got: &Tensor, want: &Tensor, mask: &[Vec<f32>]) -> f32 {
    common::max_abs_real_impl(got, want, mask, false)
}

#[test]
fn quantized_weights_match_the_gguf_block_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let te = encoder_copy(dir.path());
    let reference = reference();
    let source =
        candle_core::safetensors::load(te.join("model.safetensors"), &Device::Cpu).unwrap();
    for quant in Quant::ALL {
        let out = te.join(quant.file_name());
        let report = quantize_encoder(&te, quant, &out, |_, _| {}).unwrap();
        assert_eq!(
            report.quantized, 14,
            "2 layers x (q, k, v, o, wi_0, wi_1, wo)"
        );
        assert_eq!(report.kept_f32, source.len() - 14);
        assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());

        let mut file = std::fs::File::open(&out).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let stored = content.metadata["tcc.quantization"].to_string().unwrap();
        assert_eq!(stored, quant.as_str());
        let mut linear = 0;
        for (name, want) in &source {
            let got = content
                .tensor(&mut file, name, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let deq = got.dequantize(&Device::Cpu).unwrap();
            let key = format!("{}.{name}", quant.as_str());
            let (want, tol) = match reference.get(&key) {
                Some(t) => {
                    linear += 1;
                    assert_eq!(got.dtype(), quant.ggml(), "{name}");
                    (t, TOL_WEIGHTS)
                }
                // Not quantized: stored exactly.
                None => (want, 0.0),
            };
            let diff = (&deq - want).unwrap().abs().unwrap().max_all().unwrap();
            let diff: f32 = diff.to_scalar().unwrap();
            assert!(diff <= tol, "{key}: max abs {diff} > {tol}");
        }
        assert_eq!(linear, 14);
    }
}

#[test]
fn quantized_encoder_matches_transformers_on_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let te = encoder_copy(dir.path());
    let reference = reference();
    let inp = expected();
    for quant in Quant::ALL {
        quantize_encoder(&te, quant, &te.join(quant.file_name()), |_, _| {}).unwrap();
        let mut enc = TextEncoder::load(&te, &tokenizer_dir(), quant, &Device::Cpu).unwrap();
        assert_eq!(enc.precision(), TextPrecision::Quantized(quant));
        let (emb, mask) = enc.encode(&inp.prompts, inp.max_tokens).unwrap();
        assert_eq!(emb.dtype(), DType::F32);
        assert_eq!(mask.to_vec2::<f32>().unwrap(), inp.mask);
        let want = &reference[&format!("{}.embeddings", quant.as_str())];
        let err = max_abs_real(&emb, want, &inp.mask);
        // And how far the weight quantization itself moves the output: the
        // test would not notice a broken quantizer if this were small.
        let moved = max_abs_real(want, &inp.embeddings, &inp.mask);
        eprintln!(
            "{}: max abs {err:.2e} vs the reference; quantizing moved the output by {moved:.4}",
            quant.as_str()
        );
        assert!(
            err <= TOL_OUTPUT,
            "{}: max abs {err} > {TOL_OUTPUT}",
            quant.as_str()
        );
        assert!(moved > 0.1, "{}: {moved}", quant.as_str());
        // Deterministic.
        let (again, _) = enc.encode(&inp.prompts, inp.max_tokens).unwrap();
        assert_eq!(max_abs_real(&again, &emb, &inp.mask), 0.0);
    }
}

#[test]
fn quantized_embeddings_have_their_own_cache_entries() {
    let dir = tempfile::tempdir().unwrap();
    let te = encoder_copy(dir.path());
    let inp = expected();
    quantize_encoder(
        &te,
        Quant::Q8_0,
        &te.join(Quant::Q8_0.file_name()),
        |_, _| {},
    )
    .unwrap();
    let cache = EmbeddingCache::open(dir.path().join("cache")).unwrap();
    let mut q8 = TextEncoder::load(&te, &tokenizer_dir(), Quant::Q8_0, &Device::Cpu).unwrap();
    let mut f32 = TextEncoder::load(&te, &tokenizer_dir(), DType::F32, &Device::Cpu).unwrap();
    assert_ne!(q8.identity(), f32.identity());
    let (a, _) = q8
        .encode_cached(&cache, &inp.prompts, inp.max_tokens)
        .unwrap();
    let (b, _) = f32
        .encode_cached(&cache, &inp.prompts, inp.max_tokens)
        .unwrap();
    assert_eq!(q8.prompts_encoded(), 3);
    assert_eq!(
        f32.prompts_encoded(),
        3,
        "the f32 encoder must not read q8_0 entries"
    );
    assert!(max_abs_real(&a, &b, &inp.mask) > 0.0);
    let (c, _) = q8
        .encode_cached(&cache, &inp.prompts, inp.max_tokens)
        .unwrap();
    assert_eq!(q8.prompts_encoded(), 3, "second call is all hits");
    assert_eq!(max_abs_real(&c, &a, &inp.mask), 0.0);
}

#[test]
fn missing_or_mislabelled_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let te = encoder_copy(dir.path());
    let e = TextEncoder::load(&te, &tokenizer_dir(), Quant::Q8_0, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TextError::MissingQuantized { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("model.q8_0.gguf") && msg.contains("tcc quantize-t5"),
        "{msg}"
    );

    // A q4_0 file under the q8_0 name.
    quantize_encoder(
        &te,
        Quant::Q4_0,
        &te.join(Quant::Q8_0.file_name()),
        |_, _| {},
    )
    .unwrap();
    let e = TextEncoder::load(&te, &tokenizer_dir(), Quant::Q8_0, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("q4_0") && msg.contains("model.q8_0.gguf"),
        "{msg}"
    );

    // Not a GGUF file at all.
    std::fs::write(te.join(Quant::Q4_0.file_name()), b"not gguf").unwrap();
    let e = TextEncoder::load(&te, &tokenizer_dir(), Quant::Q4_0, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("model.q4_0.gguf"), "{e}");
}

/// Writes a random one-layer T5 encoder whose width (40) does not split into
/// blocks of 32.
fn odd_width_encoder(dir: &Path) -> PathBuf {
    let te = dir.join("odd");
    std::fs::create_dir_all(&te).unwrap();
    let config = serde_json::json!({
        "model_type": "t5", "vocab_size": 94, "d_model": 40, "d_kv": 8, "d_ff": 64,
        "num_layers": 1, "num_heads": 5, "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu"
    });
    std::fs::write(te.join("config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, &dev).unwrap();
    let p = "encoder.block.0.layer";
    let mut t = std::collections::HashMap::new();
    t.insert("shared.weight".to_string(), r(&[94, 40]));
    for n in ["q", "k", "v", "o"] {
        t.insert(format!("{p}.0.SelfAttention.{n}.weight"), r(&[40, 40]));
    }
    t.insert(
        format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
        r(&[8, 5]),
    );
    t.insert(format!("{p}.0.layer_norm.weight"), r(&[40]));
    t.insert(format!("{p}.1.DenseReluDense.wi_0.weight"), r(&[64, 40]));
    t.insert(format!("{p}.1.DenseReluDense.wi_1.weight"), r(&[64, 40]));
    t.insert(format!("{p}.1.DenseReluDense.wo.weight"), r(&[40, 64]));
    t.insert(format!("{p}.1.layer_norm.weight"), r(&[40]));
    t.insert("encoder.final_layer_norm.weight".to_string(), r(&[40]));
    candle_core::safetensors::save(&t, te.join("model.safetensors")).unwrap();
    te
}

#[test]
fn unquantizable_width_fails_naming_the_tensor_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let te = odd_width_encoder(dir.path());
    // The synthetic checkpoint itself is a valid T5 encoder.
    TextEncoder::load(&te, &tokenizer_dir(), DType::F32, &Device::Cpu).unwrap();
    let out = te.join(Quant::Q8_0.file_name());
    let e = quantize_encoder(&te, Quant::Q8_0, &out, |_, _| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("SelfAttention") && msg.contains("blocks of 32"),
        "{msg}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(&te)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only config.json and model.safetensors: {left:?}"
    );
}

#[test]
fn a_checkpoint_without_encoder_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let te = encoder_copy(dir.path());
    let dev = Device::Cpu;
    let mut t = std::collections::HashMap::new();
    t.insert(
        "shared.weight".to_string(),
        Tensor::zeros((94, 32), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&t, te.join("model.safetensors")).unwrap();
    let e = quantize_encoder(&te, Quant::Q8_0, &te.join("x.gguf"), |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("no encoder.block"), "{e}");
}
