//! Time one DiT-XL/2-shaped block (random weights) on batch 2 x 256 tokens:
//! ms per block and GFLOP/s for the full block and for each part.
//!
//! `cargo run --release -p tcc-model --example block_bench [-- --iters N --dtype f32|f16|bf16]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tcc_core::Branch;
use tcc_model::{attention, ops, BlockModel, Dit, DitConfig, DitSize};

const BATCH: usize = 2;

/// A timed case: its name, the work, and its floating-point operations.
type Case<'a> = (
    &'a str,
    Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>,
    f64,
);

/// Times the cases round-robin (so that load from other processes on a
/// shared machine hits them alike): (median ms, best ms) per case.
fn time_interleaved(cases: &[Case], iters: usize) -> candle_core::Result<Vec<(f64, f64)>> {
    for (_, f, _) in cases {
        f()?;
    }
    let mut ms = vec![Vec::with_capacity(iters); cases.len()];
    for _ in 0..iters {
        for ((_, f, _), ms) in cases.iter().zip(&mut ms) {
            let start = Instant::now();
            f()?;
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0])
        })
        .collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut iters = 20;
    let mut dtype = DType::F32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().ok_or("--iters needs a value")?.parse()?,
            "--dtype" => {
                dtype = match args.next().as_deref() {
                    Some("f32") => DType::F32,
                    Some("f16") => DType::F16,
                    Some("bf16") => DType::BF16,
                    _ => return Err("--dtype is f32, f16 or bf16".into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let iters = iters.max(1);
    let full = DitConfig::preset(DitSize::XL, 2, 256)?;
    let cfg = DitConfig {
        depth: 1,
        ..full.clone()
    };
    let dev = Device::Cpu;
    let model = Dit::random(&cfg, 0, dtype, &dev)?;
    let s = cfg.input_size;
    let x = Tensor::randn(0f32, 1.0, (BATCH, cfg.in_channels, s, s), &dev)?;
    let t = Tensor::new(&[500f32, 500.0], &dev)?;
    let y = Tensor::new(&[207u32, 1000], &dev)?;
    let (h, c) = model.embed(&x, &t, &y, None)?;
    let m = model.modulation(0, &c)?;

    let (b, tok, d, mh) = (
        BATCH as f64,
        cfg.tokens() as f64,
        cfg.hidden as f64,
        cfg.mlp_hidden as f64,
    );
    let hd = cfg.head_dim() as f64;
    let heads = cfg.heads as f64;
    let flop_mod = 2.0 * b * d * 6.0 * d;
    let flop_attn = 2.0 * b * tok * d * 4.0 * d + 2.0 * 2.0 * b * heads * tok * tok * hd;
    let flop_mlp = 2.0 * 2.0 * b * tok * d * mh;

    println!(
        "DiT-XL/2 block ({dtype:?}), batch {BATCH} x {} tokens, D {}, {} heads, {iters} iterations, {} rayon threads",
        cfg.tokens(),
        cfg.hidden,
        cfg.heads,
        rayon::current_num_threads()
    );
    let a = Tensor::randn(0f32, 1.0, (BATCH * cfg.tokens(), cfg.hidden), &dev)?.to_dtype(dtype)?;
    let w = Tensor::randn(0f32, 1.0, (cfg.mlp_hidden, cfg.hidden), &dev)?.to_dtype(dtype)?;
    let g =
        Tensor::randn(0f32, 1.0, (BATCH, cfg.tokens(), cfg.mlp_hidden), &dev)?.to_dtype(dtype)?;
    let bias = Tensor::randn(0f32, 1.0, cfg.mlp_hidden, &dev)?.to_dtype(dtype)?;
    // The packed qkv projection's output, as the attention core reads it.
    let qkv =
        Tensor::randn(0f32, 1.0, (BATCH, cfg.tokens(), 3 * cfg.hidden), &dev)?.to_dtype(dtype)?;
    let flop_core = 2.0 * 2.0 * b * heads * tok * tok * hd;
    let cases: Vec<Case> = vec![
        (
            "modulation",
            Box::new(|| Ok(model.modulation(0, &c)?.gate_mlp)),
            flop_mod,
        ),
        (
            "attn",
            Box::new(|| model.branch(0, Branch::Attn, &h, &m, &c)),
            flop_attn,
        ),
        (
            "mlp",
            Box::new(|| model.branch(0, Branch::Mlp, &h, &m, &c)),
            flop_mlp,
        ),
        (
            "full block",
            Box::new(|| {
                let m = model.modulation(0, &c)?;
                let a = model.branch(0, Branch::Attn, &h, &m, &c)?;
                let h = model.add_branch(Branch::Attn, &h, &m, &a)?;
                let f = model.branch(0, Branch::Mlp, &h, &m, &c)?;
                model.add_branch(Branch::Mlp, &h, &m, &f)
            }),
            flop_mod + flop_attn + flop_mlp,
        ),
        // Reference kernels: one fc1-sized matmul, and the MLP's GELU both ways.
        (
            "matmul fc1",
            Box::new(|| a.matmul(&w.t()?)),
            2.0 * b * tok * d * mh,
        ),
        ("gelu (op)", Box::new(|| ops::gelu(&g)), 0.0),
        ("gelu (candle)", Box::new(|| g.gelu()), 0.0),
        // The fused kernels against the composed candle ops they replace.
        (
            "attn core fused",
            Box::new(|| attention::packed_self_attention(&qkv, cfg.heads)),
            flop_core,
        ),
        (
            "attn core comp.",
            Box::new(|| attention::packed_self_attention_composed(&qkv, cfg.heads)),
            flop_core,
        ),
        (
            "fc1+gelu fused",
            Box::new(|| ops::linear(&a, &w, &bias, true)),
            2.0 * b * tok * d * mh,
        ),
        (
            "fc1+gelu comp.",
            Box::new(|| ops::linear_composed(&a, &w, &bias, true)),
            2.0 * b * tok * d * mh,
        ),
    ];
    let times = time_interleaved(&cases, iters)?;
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>10}",
        "part", "median ms", "best ms", "GFLOP", "GFLOP/s"
    );
    for ((name, _, flop), (med, best)) in cases.iter().zip(&times) {
        let rate = if *flop > 0.0 {
            format!("{:.1}", flop / 1e9 / (med / 1e3))
        } else {
            "-".into()
        };
        println!(
            "{name:<14} {med:>10.2} {best:>10.2} {:>8.2} {rate:>10}",
            flop / 1e9
        );
    }
    println!(
        "=> {} blocks: ~{:.2} s per CFG forward (batch {BATCH}) from the median",
        full.depth,
        full.depth as f64 * times[3].0 / 1e3
    );
    Ok(())
}
