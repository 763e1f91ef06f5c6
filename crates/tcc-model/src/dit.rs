//! DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"):
//! class-conditional, adaLN-Zero blocks with two branches, `attn` and `mlp`.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::silu;
use tcc_core::Branch;

use crate::config::DitConfig;
use crate::error::{Error, Result};
use crate::layers::{self, pos_embed_2d, AttnMlp, Linear, PatchEmbed};
use crate::load::WeightsLayout;
use crate::ops;
use crate::parts::{check_branch_output, nth_block, BlockModel, Conditioning, Modulation};
use crate::weights::{self, Init, Weights};
use tcc_core::TIMESTEP_FREQ_DIM;

/// eps of the LayerNorm before attention and of the final LayerNorm (both
/// the original code and diffusers).
const NORM_EPS: f64 = 1e-6;

/// Random adaLN projections (zero at the start of training) are drawn at
/// this gain, so every gate is small but non-zero.
const ADALN_GAIN: f64 = 0.3;

#[derive(Clone, Debug)]
struct Block {
    ada: Linear,
    layers: AttnMlp,
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

/// DiT's conditioning embedder: `c = MLP(freq(t)) + table[y]`.
#[derive(Clone, Debug)]
struct Embedder {
    t_mlp0: Linear,
    t_mlp2: Linear,
    /// `[num_classes + 1, D]`; the last row is the null class.
    y_table: Tensor,
}

impl Embedder {
    /// The embedder of `w`.
    fn new(w: &Weights, cfg: &DitConfig) -> Result<Embedder> {
        let d = cfg.hidden;
        Ok(Embedder {
            t_mlp0: w.linear(
                ("t_embedder.mlp.0", "timestep_embedder.linear_1"),
                d,
                TIMESTEP_FREQ_DIM,
            )?,
            t_mlp2: w.linear(("t_embedder.mlp.2", "timestep_embedder.linear_2"), d, d)?,
            y_table: w.tensor(
                (
                    "y_embedder.embedding_table.weight",
                    "class_embedder.embedding_table.weight",
                ),
                &[cfg.num_classes + 1, d],
                Init::Normal(1.0),
            )?,
        })
    }

    /// DiT's one embedder, and per-block ones where they differ: diffusers
    /// stores a copy in every block (under `norm1.emb`) and lets them
    /// differ. Identical copies become the one embedder; distinct ones are
    /// kept per block (block 0's also conditions the final layer, as in
    /// diffusers).
    fn load_all(w: &Weights, cfg: &DitConfig) -> Result<(Embedder, Vec<Embedder>)> {
        if w.layout() == WeightsLayout::Original {
            return Ok((Embedder::new(w, cfg)?, Vec::new()));
        }
        let all = (0..cfg.depth)
            .map(|i| Embedder::new(&w.block(i).pp(("", "norm1.emb")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let mut distinct = false;
        if !w.recording() {
            for e in &all[1..] {
                distinct |= !e.same_as(&all[0])?;
            }
        }
        let first = all[0].clone();
        Ok((first, if distinct { all } else { Vec::new() }))
    }

    /// Whether both hold the same values.
    fn same_as(&self, other: &Embedder) -> Result<bool> {
        let pairs = [
            (&self.t_mlp0.w, &other.t_mlp0.w),
            (&self.t_mlp0.b, &other.t_mlp0.b),
            (&self.t_mlp2.w, &other.t_mlp2.w),
            (&self.t_mlp2.b, &other.t_mlp2.b),
            (&self.y_table, &other.y_table),
        ];
        for (a, b) in pairs {
            let diff = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            if diff != 0.0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn forward(&self, freq: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
        let t_emb = self.t_mlp2.forward(&silu(&self.t_mlp0.forward(freq)?)?)?;
        t_emb + self.y_table.index_select(ids, 0)?
    }
}

impl Dit {
    /// A DiT with seeded random weights, for benchmarks and tests. Weights
    /// are N(0, 1/fan_in), biases N(0, 0.02^2), class embeddings N(0, 1); the
    /// adaLN projections (zero at the start of training) are
    /// N(0, 0.3^2/fan_in), so every gate is small but non-zero and every
    /// branch matters. Same seed, same weights.
    pub fn random(cfg: &DitConfig, seed: u64, dtype: DType, device: &Device) -> Result<Dit> {
        weights::random(WeightsLayout::Original, seed, dtype, device, |w| {
            Dit::build(cfg, w)
        })
    }

    /// The names and shapes of the tensors a `layout` checkpoint of `cfg`
    /// holds (the original layout's optional `pos_embed` buffer aside), in
    /// the order the model takes them.
    pub fn expected_tensors(
        cfg: &DitConfig,
        layout: WeightsLayout,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        weights::shapes(layout, |w| Dit::build(cfg, w))
    }

    /// Builds the model from the tensors of `w`: the one place DiT's tensors
    /// are named, in both layouts (see [`weights`]).
    pub(crate) fn build(cfg: &DitConfig, w: &Weights) -> Result<Dit> {
        cfg.validate().map_err(Error::Config)?;
        let d = cfg.hidden;
        let side = cfg.input_size / cfg.patch;
        let patch_embed = PatchEmbed::new(
            w,
            d,
            cfg.in_channels,
            cfg.patch,
            cfg.input_size,
            pos_embed_2d(d, side),
        )?;
        let (embedder, block_embedders) = Embedder::load_all(w, cfg)?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = w.block(i);
                Ok(Block {
                    ada: b.linear_of(
                        ("adaLN_modulation.1", "norm1.linear"),
                        &[6 * d, d],
                        ADALN_GAIN,
                    )?,
                    layers: AttnMlp::new(&b, d, cfg.mlp_hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ada = w.linear_of(
            ("final_layer.adaLN_modulation.1", "proj_out_1"),
            &[2 * d, d],
            ADALN_GAIN,
        )?;
        let p = cfg.patch;
        let final_linear = w.linear(
            ("final_layer.linear", "proj_out_2"),
            p * p * cfg.out_channels,
            d,
        )?;
        let t_freqs = layers::timestep_freqs(cfg.numerics.freq_shift, w.device())?;
        Ok(Dit {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            device: w.device().clone(),
            patch_embed,
            t_freqs,
            embedder,
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

    fn modulated_input(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
    ) -> candle_core::Result<Tensor> {
        self.block(block)?;
        ops::layer_norm_modulate(x, &m.shift_msa, &m.scale_msa, NORM_EPS)
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
                let h = self.modulated_input(block, x, m)?;
                blk.layers.attention(self.cfg.heads, &h)
            }
            Branch::Mlp => {
                let eps = self.cfg.numerics.mlp_norm_eps;
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                blk.layers.mlp(&h)
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
        let h = self.modulated_input(block, x, m)?;
        let (out, received) = blk.layers.attention_received(self.cfg.heads, &h)?;
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
                .layers
                .fc1
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
