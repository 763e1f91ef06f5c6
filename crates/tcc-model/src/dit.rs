//! DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"):
//! class-conditional, adaLN-Zero blocks with two branches, `attn` and `mlp`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use tcc_core::Branch;

use crate::config::{DitConfig, FREQ_EMBED_DIM};
use crate::error::{Error, Result};
use crate::ops;
use crate::parts::{BlockModel, Conditioning, Modulation};

/// eps of the LayerNorm before attention and of the final LayerNorm (both
/// the original code and diffusers).
const NORM_EPS: f64 = 1e-6;

/// A linear layer `y = x W^T + b`, `W` `[out, in]`.
#[derive(Clone, Debug)]
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// `x W^T` without the bias.
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (k, lead) = match dims.split_last() {
            Some((k, lead)) => (*k, lead),
            None => candle_core::bail!("linear: scalar input"),
        };
        let rows: usize = lead.iter().product();
        let y = x.reshape((rows, k))?.matmul(&self.w.t()?)?;
        let mut out = lead.to_vec();
        out.push(self.w.dim(0)?);
        y.reshape(out)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::bias_add(&self.matmul(x)?, &self.b)
    }
}

#[derive(Clone, Debug)]
struct Block {
    ada: Linear,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// A DiT with its weights, on one device, in one dtype.
///
/// Inputs of any float dtype and on any device are moved to the model's
/// device and cast to its dtype; [`BlockModel::finish`] returns f32 whatever
/// the dtype, so samplers run in f32. Tokens, modulation and branch outputs
/// are in the model's dtype.
#[derive(Clone, Debug)]
pub struct Dit {
    cfg: DitConfig,
    dtype: DType,
    device: Device,
    /// The patch-embedding convolution as a matmul: `[D, C p p]`.
    x_embed: Linear,
    /// Fixed 2-D sin-cos position embedding `[1, T, D]`.
    pos_embed: Tensor,
    /// Timestep frequencies `[FREQ_EMBED_DIM / 2]`, f32.
    t_freqs: Tensor,
    /// The timestep/class embedder (DiT has one; for diffusers weights with
    /// distinct per-block copies, block 0's, which the final layer uses).
    embedder: Embedder,
    /// Per-block embedders, when the weights hold distinct copies (diffusers
    /// keeps one in every block and allows them to differ); empty otherwise.
    block_embedders: Vec<Embedder>,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
}

/// Name prefix (under `blocks.{i}.`) of a block's own embedder, for
/// diffusers weights whose per-block embedder copies differ.
pub(crate) const BLOCK_EMBEDDER: &str = "embedder";

/// DiT's conditioning embedder: `c = MLP(freq(t)) + table[y]`.
#[derive(Clone, Debug)]
struct Embedder {
    t_mlp0: Linear,
    t_mlp2: Linear,
    /// `[num_classes + 1, D]`; the last row is the null class.
    y_table: Tensor,
}

impl Embedder {
    fn forward(&self, freq: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
        let t_emb = self.t_mlp2.forward(&silu(&self.t_mlp0.forward(freq)?)?)?;
        t_emb + self.y_table.index_select(ids, 0)?
    }
}

/// The 2-D sin-cos position embedding of DiT (and MAE), `[T, D]` row-major,
/// computed in f64. Token `n = i * side + j` (row i, column j); the first half
/// of the channels encodes the column j, the second half the row i; each half
/// is `[sin(pos w_k), cos(pos w_k)]` with `w_k = 10000^(-k / (D/4))`.
pub fn pos_embed_2d(hidden: usize, side: usize) -> Vec<f64> {
    let quarter = hidden / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(side * side * hidden);
    for i in 0..side {
        for j in 0..side {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin()));
                out.extend(omega.iter().map(|w| (pos * w).cos()));
            }
        }
    }
    out
}

/// The timestep frequencies `exp(-ln(10000) k / (half - shift))`, computed
/// in f32 step by step as PyTorch does, so that `t * freq` rounds the same.
fn timestep_freqs(shift: f64) -> Vec<f32> {
    let half = FREQ_EMBED_DIM / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let denom = (half as f64 - shift) as f32;
    (0..half)
        .map(|k| ((neg_log * k as f32) / denom).exp())
        .collect()
}

/// The names and shapes of the original-layout tensors of `cfg` (the layout
/// [`Dit`] is built from), without the optional `pos_embed` buffer.
pub(crate) fn original_shapes(cfg: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden;
    let m = cfg.mlp_hidden;
    let p = cfg.patch;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut lin = |name: &str, out: usize, inp: usize| {
        v.push((format!("{name}.weight"), vec![out, inp]));
        v.push((format!("{name}.bias"), vec![out]));
    };
    lin("t_embedder.mlp.0", d, FREQ_EMBED_DIM);
    lin("t_embedder.mlp.2", d, d);
    for i in 0..cfg.depth {
        lin(&format!("blocks.{i}.attn.qkv"), 3 * d, d);
        lin(&format!("blocks.{i}.attn.proj"), d, d);
        lin(&format!("blocks.{i}.mlp.fc1"), m, d);
        lin(&format!("blocks.{i}.mlp.fc2"), d, m);
        lin(&format!("blocks.{i}.adaLN_modulation.1"), 6 * d, d);
    }
    lin("final_layer.adaLN_modulation.1", 2 * d, d);
    lin("final_layer.linear", p * p * cfg.out_channels, d);
    v.push((
        "x_embedder.proj.weight".into(),
        vec![d, cfg.in_channels, p, p],
    ));
    v.push(("x_embedder.proj.bias".into(), vec![d]));
    v.push((
        "y_embedder.embedding_table.weight".into(),
        vec![cfg.num_classes + 1, d],
    ));
    v
}

/// SplitMix64: a small, fast, seedable generator (deterministic across
/// platforms and candle versions, unlike `Tensor::randn`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// `n` samples of N(0, std^2) (Box-Muller).
    fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let r = (-2.0 * self.uniform().ln()).sqrt() * std;
            let a = std::f64::consts::TAU * self.uniform();
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

impl Dit {
    /// A DiT with seeded random weights, for benchmarks and tests. Weights
    /// are N(0, 1/fan_in), biases N(0, 0.02^2), class embeddings N(0, 1); the
    /// adaLN projections (zero at the start of training) are
    /// N(0, 0.3^2/fan_in), so every gate is small but non-zero and every
    /// branch matters. Same seed, same weights.
    pub fn random(cfg: &DitConfig, seed: u64, dtype: DType, device: &Device) -> Result<Dit> {
        cfg.validate().map_err(Error::Config)?;
        let shapes = original_shapes(cfg);
        let tensors: Vec<(String, Tensor)> = shapes
            .par_iter()
            .enumerate()
            .map(|(idx, (name, shape))| {
                let mut rng = SplitMix64(seed ^ (idx as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                rng.next_u64();
                let n: usize = shape.iter().product();
                let std = if name.ends_with(".bias") {
                    0.02
                } else if name.starts_with("y_embedder") {
                    1.0
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    let gain = if name.contains("adaLN") { 0.3 } else { 1.0 };
                    gain / (fan_in as f64).sqrt()
                };
                let t = Tensor::from_vec(rng.normals(n, std), shape.as_slice(), &Device::Cpu)?;
                Ok((name.clone(), t))
            })
            .collect::<candle_core::Result<_>>()?;
        Dit::build(cfg, tensors.into_iter().collect(), dtype, device)
    }

    /// Builds the model from original-layout tensors (already validated by
    /// [`Dit::load`]), casting them to `dtype` on `device`.
    pub(crate) fn build(
        cfg: &DitConfig,
        mut t: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Dit> {
        cfg.validate().map_err(Error::Config)?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Config(format!(
                "unsupported model dtype {dtype:?} (f32, f16, bf16)"
            )));
        }
        let take = |t: &mut HashMap<String, Tensor>, name: &str| -> Result<Tensor> {
            let v = t
                .remove(name)
                .ok_or_else(|| Error::Config(format!("internal: tensor `{name}` missing")))?;
            Ok(v.to_dtype(dtype)?.to_device(device)?)
        };
        let mut lin = |name: &str| -> Result<Linear> {
            Ok(Linear {
                w: take(&mut t, &format!("{name}.weight"))?,
                b: take(&mut t, &format!("{name}.bias"))?,
            })
        };
        let d = cfg.hidden;
        let mut x_embed = lin("x_embedder.proj")?;
        x_embed.w = x_embed
            .w
            .reshape((d, cfg.in_channels * cfg.patch * cfg.patch))?;
        let t_mlp0 = lin("t_embedder.mlp.0")?;
        let t_mlp2 = lin("t_embedder.mlp.2")?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Ok(Block {
                    ada: lin(&format!("blocks.{i}.adaLN_modulation.1"))?,
                    qkv: lin(&format!("blocks.{i}.attn.qkv"))?,
                    proj: lin(&format!("blocks.{i}.attn.proj"))?,
                    fc1: lin(&format!("blocks.{i}.mlp.fc1"))?,
                    fc2: lin(&format!("blocks.{i}.mlp.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ada = lin("final_layer.adaLN_modulation.1")?;
        let final_linear = lin("final_layer.linear")?;
        let y_table = take(&mut t, "y_embedder.embedding_table.weight")?;
        let mut block_embedders = Vec::new();
        if t.contains_key(&format!(
            "blocks.0.{BLOCK_EMBEDDER}.t_embedder.mlp.0.weight"
        )) {
            for i in 0..cfg.depth {
                let e = format!("blocks.{i}.{BLOCK_EMBEDDER}");
                let mut lin = |name: &str| -> Result<Linear> {
                    Ok(Linear {
                        w: take(&mut t, &format!("{e}.{name}.weight"))?,
                        b: take(&mut t, &format!("{e}.{name}.bias"))?,
                    })
                };
                let (t_mlp0, t_mlp2) = (lin("t_embedder.mlp.0")?, lin("t_embedder.mlp.2")?);
                block_embedders.push(Embedder {
                    t_mlp0,
                    t_mlp2,
                    y_table: take(&mut t, &format!("{e}.y_embedder.embedding_table.weight"))?,
                });
            }
        }
        let side = cfg.input_size / cfg.patch;
        let pos: Vec<f32> = pos_embed_2d(d, side)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let pos_embed = Tensor::from_vec(pos, (1, side * side, d), device)?.to_dtype(dtype)?;
        let freqs = timestep_freqs(cfg.numerics.freq_shift);
        let t_freqs = Tensor::from_vec(freqs, FREQ_EMBED_DIM / 2, device)?;
        Ok(Dit {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            x_embed,
            pos_embed,
            t_freqs,
            embedder: Embedder {
                t_mlp0,
                t_mlp2,
                y_table,
            },
            block_embedders,
            blocks,
            final_ada,
            final_linear,
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn block(&self, block: usize) -> candle_core::Result<&Block> {
        match self.blocks.get(block) {
            Some(b) => Ok(b),
            None => candle_core::bail!(
                "block {block} out of range (the DiT has {} blocks)",
                self.blocks.len()
            ),
        }
    }

    /// Multi-head self-attention of the (already modulated) tokens `h`.
    fn attention(&self, blk: &Block, h: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let heads = self.cfg.heads;
        let hd = d / heads;
        let qkv = blk
            .qkv
            .forward(h)?
            .reshape((b, t, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = (qkv.get(0)? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?)?;
        // Softmax in f32: a half-precision sum over 256+ keys loses digits.
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        blk.proj.forward(&out)
    }
}

fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::silu(x)
}

impl BlockModel for Dit {
    fn depth(&self) -> usize {
        self.cfg.depth
    }

    fn branches(&self) -> &'static [Branch] {
        &[Branch::Attn, Branch::Mlp]
    }

    /// `x` `[B, C, H, W]` (H = W = input size), `t` `[B]` timesteps, `cond`
    /// `[B]` class ids (u32 or i64; `num_classes` is the null class).
    fn embed(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        _cond_mask: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Conditioning)> {
        let cfg = &self.cfg;
        let (b, c, h, w) = x.dims4()?;
        if c != cfg.in_channels || h != cfg.input_size || w != cfg.input_size {
            candle_core::bail!(
                "DiT input is {:?}, expected [B, {}, {}, {}]",
                x.dims(),
                cfg.in_channels,
                cfg.input_size,
                cfg.input_size
            );
        }
        if t.dims() != [b] || cond.dims() != [b] {
            candle_core::bail!(
                "DiT timesteps {:?} and class ids {:?} must both be [{b}]",
                t.dims(),
                cond.dims()
            );
        }
        let p = cfg.patch;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        let tokens = self
            .x_embed
            .forward(&patches)?
            .broadcast_add(&self.pos_embed)?;

        let args = t
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&self.t_freqs.unsqueeze(0)?)?;
        let freq = Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(self.dtype)?;

        let ids = match cond.dtype() {
            DType::U32 => cond.clone(),
            DType::I64 | DType::U8 => cond.to_dtype(DType::U32)?,
            dt => candle_core::bail!("DiT class ids must be integers, got {dt:?}"),
        };
        if cond.dtype() == DType::I64 {
            if let Some(bad) = cond.to_vec1::<i64>()?.into_iter().find(|&v| v < 0) {
                candle_core::bail!("class id {bad} is negative");
            }
        }
        if let Some(bad) = ids
            .to_vec1::<u32>()?
            .into_iter()
            .find(|&v| v as usize > cfg.num_classes)
        {
            candle_core::bail!(
                "class id {bad} out of range 0..={} ({} is the null class)",
                cfg.num_classes,
                cfg.num_classes
            );
        }
        let ids = ids.to_device(&self.device)?;
        let c = self.embedder.forward(&freq, &ids)?;
        let per_block = if self.block_embedders.is_empty() {
            None
        } else {
            Some(
                self.block_embedders
                    .iter()
                    .map(|e| e.forward(&freq, &ids))
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )
        };
        Ok((
            tokens,
            Conditioning {
                c,
                per_block,
                context: None,
            },
        ))
    }

    fn modulation(&self, block: usize, cond: &Conditioning) -> candle_core::Result<Modulation> {
        let blk = self.block(block)?;
        let c = match &cond.per_block {
            Some(cs) => cs.get(block).ok_or_else(|| {
                candle_core::Error::Msg(format!("no conditioning for block {block}"))
            })?,
            None => &cond.c,
        };
        let m = blk.ada.forward(&silu(c)?)?;
        let d = self.cfg.hidden;
        let part = |i: usize| m.narrow(1, i * d, d)?.contiguous();
        Ok(Modulation {
            shift_msa: part(0)?,
            scale_msa: part(1)?,
            gate_msa: part(2)?,
            shift_mlp: part(3)?,
            scale_mlp: part(4)?,
            gate_mlp: part(5)?,
        })
    }

    fn branch(
        &self,
        block: usize,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        _cond: &Conditioning,
    ) -> candle_core::Result<Tensor> {
        let blk = self.block(block)?;
        match branch {
            Branch::Attn => {
                let h = ops::layer_norm_modulate(x, &m.shift_msa, &m.scale_msa, NORM_EPS)?;
                self.attention(blk, &h)
            }
            Branch::Mlp => {
                let eps = self.cfg.numerics.mlp_norm_eps;
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                blk.fc2
                    .forward(&ops::bias_gelu(&blk.fc1.matmul(&h)?, &blk.fc1.b)?)
            }
            Branch::Cross => candle_core::bail!("DiT has no cross-attention branch"),
        }
    }

    fn add_branch(
        &self,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        out: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let gate = match branch {
            Branch::Attn => &m.gate_msa,
            Branch::Mlp => &m.gate_mlp,
            Branch::Cross => candle_core::bail!("DiT has no cross-attention branch"),
        };
        if out.dims() != x.dims() {
            candle_core::bail!(
                "{branch} branch output is {:?}, the residual stream {:?}",
                out.dims(),
                x.dims()
            );
        }
        ops::gated_add(x, out, gate)
    }

    fn finish(&self, x: &Tensor, cond: &Conditioning) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, d) = x.dims3()?;
        let m = self.final_ada.forward(&silu(&cond.c)?)?;
        let shift = m.narrow(1, 0, d)?.contiguous()?;
        let scale = m.narrow(1, d, d)?.contiguous()?;
        let h = ops::layer_norm_modulate(x, &shift, &scale, NORM_EPS)?;
        let h = self.final_linear.forward(&h)?;
        let (p, c) = (cfg.patch, cfg.out_channels);
        let side = cfg.input_size / p;
        if t != side * side {
            candle_core::bail!("finish: {t} tokens, expected {}", side * side);
        }
        h.reshape((b, side, side, p, p, c))?
            .permute((0, 5, 1, 3, 2, 4))?
            .reshape((b, c, side * p, side * p))?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_embed_layout() {
        // D = 8: quarter = 2, omega = [1, 1/100].
        let pe = pos_embed_2d(8, 3);
        let tok = |i: usize, j: usize| &pe[(i * 3 + j) * 8..(i * 3 + j + 1) * 8];
        let (i, j) = (2.0f64, 1.0f64);
        let want = [
            j.sin(),
            (j / 100.0).sin(),
            j.cos(),
            (j / 100.0).cos(),
            i.sin(),
            (i / 100.0).sin(),
            i.cos(),
            (i / 100.0).cos(),
        ];
        for (a, b) in tok(2, 1).iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
    }

    #[test]
    fn random_is_deterministic_and_seed_dependent() {
        let cfg = DitConfig {
            depth: 1,
            hidden: 16,
            heads: 2,
            patch: 2,
            input_size: 4,
            in_channels: 3,
            out_channels: 6,
            mlp_hidden: 64,
            num_classes: 5,
            numerics: crate::Numerics::ORIGINAL,
        };
        let w = |seed| {
            let m = Dit::random(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
            m.blocks[0]
                .qkv
                .w
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(7), w(7));
        assert_ne!(w(7), w(8));
        let gate_w = Dit::random(&cfg, 7, DType::F32, &Device::Cpu)
            .unwrap()
            .blocks[0]
            .ada
            .w
            .clone();
        let rms = gate_w
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((rms - 0.3 / 4.0).abs() < 0.02, "{rms}");
    }
}
