//! DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"):
//! class-conditional, adaLN-Zero blocks with two branches, `attn` and `mlp`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::silu;
use tcc_core::Branch;

use crate::config::DitConfig;
use crate::error::{Error, Result};
use crate::layers::{
    self, fan_in_std, gelu_mlp, pos_embed_2d, push_linear, Linear, PatchEmbed, Shapes, Weights,
};
use crate::ops;
use crate::parts::{check_branch_output, nth_block, BlockModel, Conditioning, Modulation};
use tcc_core::TIMESTEP_FREQ_DIM;

/// eps of the LayerNorm before attention and of the final LayerNorm (both
/// the original code and diffusers).
const NORM_EPS: f64 = 1e-6;

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
    /// The patch embedding with the fixed 2-D sin-cos position embedding.
    patch_embed: PatchEmbed,
    /// Timestep frequencies `[TIMESTEP_FREQ_DIM / 2]`, f32.
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

/// The names and shapes of the original-layout tensors of `cfg` (the layout
/// [`Dit`] is built from), without the optional `pos_embed` buffer.
pub(crate) fn original_shapes(cfg: &DitConfig) -> Shapes {
    let d = cfg.hidden;
    let m = cfg.mlp_hidden;
    let p = cfg.patch;
    let mut v = Shapes::new();
    let mut lin = |name: &str, out: usize, inp: usize| push_linear(&mut v, name, out, inp);
    lin("t_embedder.mlp.0", d, TIMESTEP_FREQ_DIM);
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

impl Dit {
    /// A DiT with seeded random weights, for benchmarks and tests. Weights
    /// are N(0, 1/fan_in), biases N(0, 0.02^2), class embeddings N(0, 1); the
    /// adaLN projections (zero at the start of training) are
    /// N(0, 0.3^2/fan_in), so every gate is small but non-zero and every
    /// branch matters. Same seed, same weights.
    pub fn random(cfg: &DitConfig, seed: u64, dtype: DType, device: &Device) -> Result<Dit> {
        cfg.validate().map_err(Error::Config)?;
        let tensors = layers::random_tensors(&original_shapes(cfg), seed, |name, shape| {
            if name.ends_with(".bias") {
                0.02
            } else if name.starts_with("y_embedder") {
                1.0
            } else {
                fan_in_std(shape, if name.contains("adaLN") { 0.3 } else { 1.0 })
            }
        })?;
        Dit::build(cfg, tensors, dtype, device)
    }

    /// Builds the model from original-layout tensors (already validated by
    /// [`Dit::load`]), casting them to `dtype` on `device`.
    pub(crate) fn build(
        cfg: &DitConfig,
        t: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Dit> {
        cfg.validate().map_err(Error::Config)?;
        let mut w = Weights::new(t, dtype, device)?;
        let side = cfg.input_size / cfg.patch;
        let patch_embed = PatchEmbed::new(
            &mut w,
            "x_embedder.proj",
            cfg.in_channels,
            cfg.patch,
            cfg.input_size,
            pos_embed_2d(cfg.hidden, side),
        )?;
        let t_mlp0 = w.linear("t_embedder.mlp.0")?;
        let t_mlp2 = w.linear("t_embedder.mlp.2")?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Ok(Block {
                    ada: w.linear(&format!("blocks.{i}.adaLN_modulation.1"))?,
                    qkv: w.linear(&format!("blocks.{i}.attn.qkv"))?,
                    proj: w.linear(&format!("blocks.{i}.attn.proj"))?,
                    fc1: w.linear(&format!("blocks.{i}.mlp.fc1"))?,
                    fc2: w.linear(&format!("blocks.{i}.mlp.fc2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ada = w.linear("final_layer.adaLN_modulation.1")?;
        let final_linear = w.linear("final_layer.linear")?;
        let y_table = w.take("y_embedder.embedding_table.weight")?;
        let mut block_embedders = Vec::new();
        if w.contains(&format!(
            "blocks.0.{BLOCK_EMBEDDER}.t_embedder.mlp.0.weight"
        )) {
            for i in 0..cfg.depth {
                let e = format!("blocks.{i}.{BLOCK_EMBEDDER}");
                block_embedders.push(Embedder {
                    t_mlp0: w.linear(&format!("{e}.t_embedder.mlp.0"))?,
                    t_mlp2: w.linear(&format!("{e}.t_embedder.mlp.2"))?,
                    y_table: w.take(&format!("{e}.y_embedder.embedding_table.weight"))?,
                });
            }
        }
        let t_freqs = layers::timestep_freqs(cfg.numerics.freq_shift, device)?;
        Ok(Dit {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            patch_embed,
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
        nth_block(&self.blocks, block, "DiT")
    }
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
        let b = self.patch_embed.check_input("DiT", x)?;
        if t.dims() != [b] || cond.dims() != [b] {
            candle_core::bail!(
                "DiT timesteps {:?} and class ids {:?} must both be [{b}]",
                t.dims(),
                cond.dims()
            );
        }
        let tokens = self.patch_embed.forward(x)?;
        let freq = layers::timestep_embedding(t, &self.t_freqs, self.dtype)?;

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
        Modulation::from_chunks(part)
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
                layers::self_attention(&blk.qkv, &blk.proj, self.cfg.heads, &h)
            }
            Branch::Mlp => {
                let eps = self.cfg.numerics.mlp_norm_eps;
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                gelu_mlp(&blk.fc1, &blk.fc2, &h)
            }
            Branch::Cross => candle_core::bail!("DiT has no cross-attention branch"),
        }
    }

    fn attention_received(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
        _cond: &Conditioning,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let blk = self.block(block)?;
        let h = ops::layer_norm_modulate(x, &m.shift_msa, &m.scale_msa, NORM_EPS)?;
        let (out, received) =
            layers::self_attention_received(&blk.qkv, &blk.proj, self.cfg.heads, &h)?;
        Ok((out, Some(received)))
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
        check_branch_output(branch, x, out)?;
        ops::gated_add(x, out, gate)
    }

    fn finish(&self, x: &Tensor, cond: &Conditioning) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (_, _, d) = x.dims3()?;
        let m = self.final_ada.forward(&silu(&cond.c)?)?;
        let shift = m.narrow(1, 0, d)?.contiguous()?;
        let scale = m.narrow(1, d, d)?.contiguous()?;
        let h = ops::layer_norm_modulate(x, &shift, &scale, NORM_EPS)?;
        let h = self.final_linear.forward(&h)?;
        layers::unpatchify(&h, cfg.input_size / cfg.patch, cfg.patch, cfg.out_channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
