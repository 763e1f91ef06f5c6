//! The text encoder against PyTorch/transformers on a tiny random T5.
//!
//! Reference: `tools/golden/t5_encoder.py` (transformers 5.24
//! `T5EncoderModel(input_ids, attention_mask=mask).last_hidden_state` in
//! float32, tokenised with the same `tokenizer.json` through
//! `PreTrainedTokenizerFast(padding="max_length", max_length=16,
//! truncation=True, add_special_tokens=True)`, as diffusers' PixArt pipeline
//! calls them). The fixtures live in `tests/fixtures/`.

mod common;

use candle_core::{DType, Device, Tensor};
use tcc_text::{EmbeddingCache, TextEncoder, TextError};

use common::{expected, max_abs_real, max_abs_real_impl, pipeline};

/// f32: max abs difference to transformers' float32 output on real tokens.
/// (The float32 reference is itself within 4e-6 of float64.)
const TOL_F32: f32 = 1e-4;
/// bf16 weights and activations vs the float32 reference: at most this
/// multiple of transformers' own bf16 error, both as max abs and as RMS over
/// the real tokens (its bf16 run, `embeddings_bf16`, is 0.14 max abs and
/// ~2.3% relative RMS off its float32 one, on outputs of RMS 1.0 and max
/// 3.7; different rounding orders give different but equally sized errors).
/// A wrong mask or position bias is off by O(1).
const TOL_BF16_FACTOR: f32 = 2.0;

fn load(dtype: DType) -> TextEncoder {
    let (te, tok) = pipeline();
    TextEncoder::load(&te, &tok, dtype, &Device::Cpu).unwrap()
}

#[test]
fn token_ids_match_transformers() {
    let exp = expected();
    let mut enc = load(DType::F32);
    let tokens = enc.tokenize(&exp.prompts, exp.max_tokens).unwrap();
    for (i, t) in tokens.iter().enumerate() {
        let want: Vec<u32> = exp.ids[i].iter().map(|&v| v as u32).collect();
        assert_eq!(t.ids, want, "prompt {i}: {:?}", exp.prompts[i]);
        let real = exp.mask[i].iter().filter(|&&m| m == 1.0).count();
        assert_eq!(t.len, real, "prompt {i}");
    }
    // The fixture covers truncation (</s> kept last) and padding.
    assert_eq!(tokens[2].len, exp.max_tokens);
    assert_eq!(tokens[2].ids[exp.max_tokens - 1], 1);
    assert!(tokens[1].len < exp.max_tokens / 2);
}

#[test]
fn embeddings_match_transformers_f32() {
    let exp = expected();
    let mut enc = load(DType::F32);
    let (emb, mask) = enc.encode(&exp.prompts, exp.max_tokens).unwrap();
    assert_eq!(emb.dims(), [3, exp.max_tokens, 32]);
    assert_eq!(emb.dtype(), DType::F32);
    assert_eq!(mask.dtype(), DType::F32);
    assert_eq!(mask.to_vec2::<f32>().unwrap(), exp.mask);
    let err = max_abs_real(&emb, &exp.embeddings, &exp.mask);
    assert!(err < TOL_F32, "max abs {err} >= {TOL_F32}");
    eprintln!("f32: max abs {err}");
}

#[test]
fn embeddings_match_transformers_bf16() {
    let exp = expected();
    let mut enc = load(DType::BF16);
    let (emb, mask) = enc.encode(&exp.prompts, exp.max_tokens).unwrap();
    assert_eq!(emb.dtype(), DType::F32);
    assert_eq!(mask.to_vec2::<f32>().unwrap(), exp.mask);
    let err = max_abs_real(&emb, &exp.embeddings, &exp.mask);
    let torch_err = max_abs_real_impl(&exp.embeddings_bf16, &exp.embeddings, &exp.mask, false);
    assert!(
        err < TOL_BF16_FACTOR * torch_err,
        "max abs {err} >= {TOL_BF16_FACTOR} x transformers' bf16 error {torch_err}"
    );
    // Relative RMS error over the real tokens.
    let m = Tensor::new(exp.mask.clone(), &Device::Cpu)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    let rms = |t: &Tensor| {
        let sq = t
            .broadcast_mul(&m)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        sq.to_scalar::<f32>().unwrap().sqrt()
    };
    let rel = rms(&(&emb - &exp.embeddings).unwrap()) / rms(&exp.embeddings);
    let torch_rel = rms(&(&exp.embeddings_bf16 - &exp.embeddings).unwrap()) / rms(&exp.embeddings);
    assert!(
        rel < TOL_BF16_FACTOR * torch_rel,
        "relative RMS error {rel} >= {TOL_BF16_FACTOR} x transformers' {torch_rel}"
    );
    eprintln!("bf16: max abs {err} (transformers: {torch_err}), relative RMS {rel} ({torch_rel})");
}

#[test]
fn batching_does_not_change_a_prompt_and_is_deterministic() {
    let exp = expected();
    let mut enc = load(DType::F32);
    let (all, _) = enc.encode(&exp.prompts, exp.max_tokens).unwrap();
    let (again, _) = enc.encode(&exp.prompts, exp.max_tokens).unwrap();
    assert_eq!(
        all.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        again.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let (one, _) = enc.encode(&exp.prompts[1..2], exp.max_tokens).unwrap();
    let diff = (one.get(0).unwrap() - all.get(1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
    // Prompts of equal length share a batch (n > 1): same values as alone.
    let batch: Vec<String> = [0, 2, 0, 1, 2]
        .iter()
        .map(|&i| exp.prompts[i].clone())
        .collect();
    let (b, bm) = enc.encode(&batch, exp.max_tokens).unwrap();
    let bmask: Vec<Vec<f32>> = [0, 2, 0, 1, 2]
        .iter()
        .map(|&i| exp.mask[i].clone())
        .collect();
    assert_eq!(bm.to_vec2::<f32>().unwrap(), bmask);
    let want = Tensor::stack(&[0, 2, 0, 1, 2].map(|i| exp.embeddings.get(i).unwrap()), 0).unwrap();
    let err = max_abs_real(&b, &want, &bmask);
    assert!(err < TOL_F32, "batched: max abs {err}");
    // An empty prompt is just </s> (the unconditional caption); no prompts
    // gives empty tensors.
    let (e, m) = enc.encode(&[String::new()], 8).unwrap();
    assert_eq!(e.dims(), [1, 8, 32]);
    assert_eq!(
        m.to_vec2::<f32>().unwrap()[0],
        [1., 0., 0., 0., 0., 0., 0., 0.]
    );
    let (e, m) = enc.encode(&[], 8).unwrap();
    assert_eq!((e.dims(), m.dims()), (&[0, 8, 32][..], &[0, 8][..]));
    assert!(matches!(
        enc.encode(&exp.prompts, 0),
        Err(TextError::InvalidArgument(_))
    ));
}

#[test]
fn cache_hits_are_identical_and_skip_the_encoder() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::open(dir.path().join("emb")).unwrap();
    let mut enc = load(DType::F32);

    let (first, mask1) = enc
        .encode_cached(&cache, &exp.prompts[..2], exp.max_tokens)
        .unwrap();
    assert_eq!(enc.prompts_encoded(), 2);
    // All three: two hits, one miss.
    let (second, mask2) = enc
        .encode_cached(&cache, &exp.prompts, exp.max_tokens)
        .unwrap();
    assert_eq!(enc.prompts_encoded(), 3);
    // All hits now.
    let (third, mask3) = enc
        .encode_cached(&cache, &exp.prompts, exp.max_tokens)
        .unwrap();
    assert_eq!(enc.prompts_encoded(), 3);

    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&second), v(&third));
    assert_eq!(v(&mask2), v(&mask3));
    assert_eq!(v(&first), v(&second.narrow(0, 0, 2).unwrap()));
    assert_eq!(v(&mask1), v(&mask2.narrow(0, 0, 2).unwrap()));
    let err = max_abs_real(&third, &exp.embeddings, &exp.mask);
    assert!(err < TOL_F32, "{err}");

    // Three entries, no temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names
        .iter()
        .all(|n| n.ends_with(".safetensors") && !n.starts_with('.')));

    // The key depends on dtype, length and prompt; another dtype misses.
    let k = |d, n, p: &str| EmbeddingCache::key(enc.identity(), d, n, p);
    assert_ne!(k(DType::F32, 16, "a"), k(DType::BF16, 16, "a"));
    assert_ne!(k(DType::F32, 16, "a"), k(DType::F32, 17, "a"));
    assert_ne!(k(DType::F32, 16, "a"), k(DType::F32, 16, "b"));

    // A corrupt entry is a miss and gets rewritten.
    let key = EmbeddingCache::key(enc.identity(), DType::F32, exp.max_tokens, &exp.prompts[0]);
    std::fs::write(cache.path(&key), b"garbage").unwrap();
    let (fourth, _) = enc
        .encode_cached(&cache, &exp.prompts, exp.max_tokens)
        .unwrap();
    assert_eq!(enc.prompts_encoded(), 4);
    assert_eq!(v(&fourth), v(&third));
    assert!(cache.get(&key, exp.max_tokens, 32, &Device::Cpu).is_some());
}

#[test]
fn missing_files_are_errors_naming_the_path() {
    let (te, tok) = pipeline();
    let dir = tempfile::tempdir().unwrap();

    // A tokenizer folder with only spiece.model, like PixArt's on the Hub.
    let spm_only = dir.path().join("tokenizer");
    std::fs::create_dir_all(&spm_only).unwrap();
    std::fs::write(spm_only.join("spiece.model"), b"").unwrap();
    let e = TextEncoder::load(&te, &spm_only, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TextError::MissingTokenizerJson { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&spm_only.display().to_string()), "{msg}");
    assert!(msg.contains("T5TokenizerFast.from_pretrained"), "{msg}");

    let nowhere = dir.path().join("no-text-encoder");
    let e = TextEncoder::load(&nowhere, &tok, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains(&nowhere.display().to_string()),
        "{e}"
    );

    // A text_encoder folder with a config but no weights.
    let no_weights = dir.path().join("text_encoder");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::copy(te.join("config.json"), no_weights.join("config.json")).unwrap();
    let e = TextEncoder::load(&no_weights, &tok, DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert!(
        e.to_string().contains(&no_weights.display().to_string()),
        "{e}"
    );

    // ... nor a config.
    std::fs::remove_file(no_weights.join("config.json")).unwrap();
    let e = TextEncoder::load(&no_weights, &tok, DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");

    // A bad config names the file.
    std::fs::write(no_weights.join("config.json"), b"{\"d_model\": 4}").unwrap();
    let e = TextEncoder::load(&no_weights, &tok, DType::F32, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");

    // F16 is refused.
    let e = TextEncoder::load(&te, &tok, DType::F16, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TextError::UnsupportedDType(DType::F16)), "{e}");
}

#[test]
fn sharded_weights_load_through_the_index() {
    let (te, tok) = pipeline();
    let dir = tempfile::tempdir().unwrap();
    let sharded = dir.path().join("text_encoder");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(te.join("config.json"), sharded.join("config.json")).unwrap();
    // Two shards: split the tensors of the single file.
    let bytes = std::fs::read(te.join("model.safetensors")).unwrap();
    let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", s + 1);
        let part: std::collections::HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, sharded.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let exp = expected();
    let mut enc = TextEncoder::load(&sharded, &tok, DType::F32, &Device::Cpu).unwrap();
    let (emb, _) = enc.encode(&exp.prompts, exp.max_tokens).unwrap();
    let err = max_abs_real(&emb, &exp.embeddings, &exp.mask);
    assert!(err < TOL_F32, "{err}");

    // A shard listed in the index but absent is named.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = TextEncoder::load(&sharded, &tok, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}
