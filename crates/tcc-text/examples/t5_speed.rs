//! T5 encoder speed and weight size by precision (f32, bf16, q8_0, q4_0) on
//! layers shaped like PixArt-α's T5 v1.1 XXL (d_model 4096, 64 heads of 64,
//! gated-GELU d_ff 10240, vocab 32128), with seeded random weights.
//!
//! ```sh
//! cargo run --release -p tcc-text --example t5_speed -- [LAYERS] [TOKENS] [ROUNDS]
//! ```
//!
//! Builds a `text_encoder/` folder with LAYERS (default 2) such layers in a
//! temporary directory (~0.8 GB of f32 per layer), quantizes it with
//! `quantize_encoder`, then times `TextEncoder::encode` of one caption of
//! TOKENS real tokens (default 120, PixArt's maximum) per precision, best of
//! ROUNDS (default 2). Per-layer figures exclude the embedding lookup; the
//! 24-layer column multiplies them out (an extrapolation, not a run of the
//! real model). Output deviations are relative RMS against f32 on random
//! weights: they size the arithmetic, not text quality.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

use candle_core::{DType, Device, Tensor};
use tcc_text::{quantize_encoder, Quant, TextEncoder, TextPrecision};

const D_MODEL: usize = 4096;
const HEADS: usize = 64;
const D_KV: usize = 64;
const D_FF: usize = 10240;
const VOCAB: usize = 32128;
const XXL_LAYERS: usize = 24;

fn write_encoder(dir: &Path, layers: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "model_type": "t5", "vocab_size": VOCAB, "d_model": D_MODEL, "d_kv": D_KV,
        "d_ff": D_FF, "num_layers": layers, "num_heads": HEADS,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6
    });
    std::fs::write(dir.join("config.json"), config.to_string())?;
    let dev = Device::Cpu;
    let inner = HEADS * D_KV;
    let lin = |out: usize, inp: usize| {
        Tensor::randn(0f32, (1.0 / (inp as f64).sqrt()) as f32, (out, inp), &dev)
    };
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "shared.weight".into(),
        Tensor::randn(0f32, 1.0, (VOCAB, D_MODEL), &dev)?,
    );
    for l in 0..layers {
        let p = format!("encoder.block.{l}.layer");
        for (n, (o, i)) in [
            ("q", (inner, D_MODEL)),
            ("k", (inner, D_MODEL)),
            ("v", (inner, D_MODEL)),
            ("o", (D_MODEL, inner)),
        ] {
            t.insert(format!("{p}.0.SelfAttention.{n}.weight"), lin(o, i)?);
        }
        if l == 0 {
            t.insert(
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                Tensor::randn(0f32, 0.5, (32, HEADS), &dev)?,
            );
        }
        t.insert(
            format!("{p}.1.DenseReluDense.wi_0.weight"),
            lin(D_FF, D_MODEL)?,
        );
        t.insert(
            format!("{p}.1.DenseReluDense.wi_1.weight"),
            lin(D_FF, D_MODEL)?,
        );
        t.insert(
            format!("{p}.1.DenseReluDense.wo.weight"),
            lin(D_MODEL, D_FF)?,
        );
        for ln in ["0", "1"] {
            t.insert(
                format!("{p}.{ln}.layer_norm.weight"),
                Tensor::ones(D_MODEL, DType::F32, &dev)?,
            );
        }
    }
    t.insert(
        "encoder.final_layer_norm.weight".into(),
        Tensor::ones(D_MODEL, DType::F32, &dev)?,
    );
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    Ok(())
}

fn rel_rms(a: &Tensor, b: &Tensor) -> Result<f32> {
    let num = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok((num / den).sqrt())
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<std::result::Result<_, _>>()?;
    let layers = args.first().copied().unwrap_or(2);
    let tokens = args.get(1).copied().unwrap_or(120);
    let rounds = args.get(2).copied().unwrap_or(2).max(1);
    let tmp = tempfile::tempdir()?;
    let te = tmp.path().join("text_encoder");
    let t0 = Instant::now();
    write_encoder(&te, layers)?;
    eprintln!(
        "wrote {layers} random XXL-shaped layers in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    for quant in Quant::ALL {
        let t0 = Instant::now();
        let r = quantize_encoder(&te, quant, &te.join(quant.file_name()), |_, _| {})?;
        eprintln!(
            "quantized to {} in {:.1}s ({} MB)",
            quant.as_str(),
            t0.elapsed().as_secs_f64(),
            r.bytes / 1_000_000
        );
    }
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-pipeline/tokenizer");
    // Words the fixture tokenizer knows, one token each; the real tokenizer
    // differs, but only the token count matters for timing.
    let prompt = vec!["a photo of a cat sitting on a red chair ".repeat(tokens)];

    let lin_params = 4 * HEADS * D_KV * D_MODEL + 3 * D_MODEL * D_FF;
    println!(
        "T5 v1.1 XXL-shaped encoder layers, random weights, 1 caption x {tokens} tokens, best of {rounds}, {} threads",
        candle_core::utils::get_num_threads()
    );
    println!("| precision | linear weights / layer | x24 layers | ms / layer | x24 layers (s) | rel. RMS vs f32 |");
    println!("|---|---|---|---|---|---|");
    let mut reference: Option<Tensor> = None;
    let precisions: [TextPrecision; 4] = [
        DType::F32.into(),
        DType::BF16.into(),
        Quant::Q8_0.into(),
        Quant::Q4_0.into(),
    ];
    for p in precisions {
        let mut enc = TextEncoder::load(&te, &tok, p, &Device::Cpu)?;
        let mut best = f64::INFINITY;
        let mut out = None;
        for _ in 0..rounds {
            let t0 = Instant::now();
            let (emb, mask) = enc.encode(&prompt, tokens)?;
            best = best.min(t0.elapsed().as_secs_f64());
            assert_eq!(mask.sum_all()?.to_scalar::<f32>()? as usize, tokens);
            out = Some(emb);
        }
        let out = out.expect("at least one round");
        let bytes_per_weight = match p {
            TextPrecision::Dense(DType::BF16) => 2.0,
            TextPrecision::Quantized(Quant::Q8_0) => 34.0 / 32.0,
            TextPrecision::Quantized(Quant::Q4_0) => 18.0 / 32.0,
            _ => 4.0,
        };
        let gb = lin_params as f64 * bytes_per_weight / 1e9;
        let per_layer = best * 1e3 / layers as f64;
        let dev = match &reference {
            None => "-".to_string(),
            Some(r) => format!("{:.4}", rel_rms(&out, r)?),
        };
        println!(
            "| {p} | {gb:.2} GB | {:.1} GB | {per_layer:.0} | {:.1} | {dev} |",
            gb * XXL_LAYERS as f64,
            per_layer * XXL_LAYERS as f64 / 1e3
        );
        if reference.is_none() {
            reference = Some(out);
        }
    }
    Ok(())
}
