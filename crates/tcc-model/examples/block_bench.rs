//! Time one DiT-XL/2-shaped block (random weights) on batch 2 x 256 tokens:
//! ms per block and GFLOP/s for the full block and for each part.
//!
//! `cargo run --release -p tcc-model --example block_bench [-- --iters N --dtype f32|f16|bf16]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tcc_core::Branch;
use tcc_model::{BlockModel, Dit, DitConfig, DitSize};

const BATCH: usize = 2;

fn time<F: FnMut() -> candle_core::Result<Tensor>>(
    iters: usize,
    mut f: F,
) -> candle_core::Result<(f64, f64)> {
    for _ in 0..2 {
        f()?;
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let out = f()?;
        // Touch the result so nothing lazy escapes the timing.
        out.dims();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
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
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10}",
        "part", "median ms", "best ms", "GFLOP", "GFLOP/s"
    );
    let report = |name: &str, (med, best): (f64, f64), flop: f64| {
        println!(
            "{name:<12} {med:>10.2} {best:>10.2} {:>10.2} {:>10.1}",
            flop / 1e9,
            flop / 1e9 / (med / 1e3)
        );
    };
    let mod_t = time(iters, || Ok(model.modulation(0, &c)?.gate_mlp))?;
    report("modulation", mod_t, flop_mod);
    let attn_t = time(iters, || model.branch(0, Branch::Attn, &h, &m, &c))?;
    report("attn", attn_t, flop_attn);
    let mlp_t = time(iters, || model.branch(0, Branch::Mlp, &h, &m, &c))?;
    report("mlp", mlp_t, flop_mlp);
    let full_t = time(iters, || {
        let m = model.modulation(0, &c)?;
        let a = model.branch(0, Branch::Attn, &h, &m, &c)?;
        let h = model.add_branch(Branch::Attn, &h, &m, &a)?;
        let f = model.branch(0, Branch::Mlp, &h, &m, &c)?;
        model.add_branch(Branch::Mlp, &h, &m, &f)
    })?;
    report("full block", full_t, flop_mod + flop_attn + flop_mlp);
    println!(
        "=> {} blocks: ~{:.2} s per CFG forward (batch {BATCH}) from the median",
        full.depth,
        full.depth as f64 * full_t.0 / 1e3
    );

    // Reference kernels: one MLP-sized matmul, and the GELU of the MLP.
    let a = Tensor::randn(0f32, 1.0, (BATCH * cfg.tokens(), cfg.hidden), &dev)?.to_dtype(dtype)?;
    let w = Tensor::randn(0f32, 1.0, (cfg.mlp_hidden, cfg.hidden), &dev)?.to_dtype(dtype)?;
    let mm = time(iters, || a.matmul(&w.t()?))?;
    report("matmul fc1", mm, 2.0 * b * tok * d * mh);
    let g =
        Tensor::randn(0f32, 1.0, (BATCH, cfg.tokens(), cfg.mlp_hidden), &dev)?.to_dtype(dtype)?;
    let fast = time(iters, || tcc_model::ops::gelu(&g))?;
    let slow = time(iters, || g.gelu())?;
    println!(
        "gelu [{BATCH}, {}, {}]: fast op {:.2} ms, Tensor::gelu {:.2} ms",
        cfg.tokens(),
        cfg.mlp_hidden,
        fast.0,
        slow.0
    );
    Ok(())
}
