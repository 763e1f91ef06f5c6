//! PixArt-α (Chen et al., "PixArt-α: Fast Training of Diffusion Transformer
//! for Photorealistic Text-to-Image Synthesis"): a DiT conditioned on text
//! through cross-attention, with adaLN-single, as diffusers'
//! `PixArtTransformer2DModel` computes it.
//!
//! Per block, three branches in order: `attn` (self-attention on the
//! modulated LayerNorm, gated), `cross` (cross-attention from the raw
//! residual stream to the projected caption tokens, no norm, no modulation,
//! no gate), `mlp` (GELU-tanh MLP on the modulated LayerNorm, gated). The
//! modulation of block i is `scale_shift_table_i + t_block(silu(t_emb))`,
//! with one timestep MLP and one `t_block` shared by all blocks.

//!
//! The model is split like DiT's: `config.rs` (hyper-parameters, from a
//! shape or a diffusers config), `layout.rs` (loading either checkpoint
//! layout from files) and this file (the model itself, whose constructor
//! names every tensor in both layouts).

mod config;
mod layout;

pub use config::PixArtConfig;

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::silu;
use tcc_core::Branch;

use crate::attention::attend;
use crate::error::{Error, Result};
use crate::layers::{self, gelu_mlp, pos_embed_scaled, AttnMlp, Linear, PatchEmbed};
use crate::load::WeightsLayout;
use crate::ops;
use crate::parts::{check_branch_output, nth_block, BlockModel, Conditioning, Modulation};
use crate::weights::{self, Init, Weights};
use tcc_core::TIMESTEP_FREQ_DIM;

/// eps of the final LayerNorm (`norm_out`), fixed in diffusers.
const FINAL_NORM_EPS: f64 = 1e-6;

/// The additive attention bias of a masked caption token: diffusers turns
/// the key mask into `(1 - mask) * -10000` (not -inf: a caption whose every
/// token is masked then attends uniformly instead of giving NaN). In f32,
/// `exp(-10000 + s)` is exactly 0, so masked tokens contribute nothing.
const MASK_BIAS: f64 = -10000.0;

/// Random adaLN-single projections are drawn at this gain, so every gate is
/// small but non-zero.
const ADALN_GAIN: f64 = 0.3;

#[derive(Clone, Debug)]
struct Block {
    /// `[6, D]`, added to the shared timestep vector.
    table: Tensor,
    /// Self-attention and MLP.
    layers: AttnMlp,
    /// Cross-attention query (from the image tokens).
    cross_q: Linear,
    /// Cross-attention k, v fused (from the caption tokens): `[2D, D]`.
    cross_kv: Linear,
    cross_proj: Linear,
}

/// A PixArt-α transformer with its weights, on one device, in one dtype.
///
/// Inputs of any float dtype and on any device are moved to the model's
/// device and cast to its dtype; [`BlockModel::finish`] returns f32 whatever
/// the dtype. Attention softmaxes run in f32.
#[derive(Clone, Debug)]
pub struct PixArt {
    cfg: PixArtConfig,
    dtype: DType,
    device: Device,
    /// The patch embedding with the fixed 2-D sin-cos position embedding.
    patch_embed: PatchEmbed,
    /// Timestep frequencies `[TIMESTEP_FREQ_DIM / 2]`, f32.
    t_freqs: Tensor,
    t_mlp1: Linear,
    t_mlp2: Linear,
    /// adaLN-single's shared projection to the 6 D modulation vector.
    t_block: Linear,
    caption1: Linear,
    caption2: Linear,
    blocks: Vec<Block>,
    /// `[2, D]`: shift, scale of the final layer, added to the embedded
    /// timestep.
    final_table: Tensor,
    proj_out: Linear,
    /// `y_embedder.y_embedding` of an original checkpoint.
    null_caption: Option<Tensor>,
}

impl PixArt {
    /// A PixArt-α with seeded random weights, for benchmarks and tests.
    /// Weights are N(0, 1/fan_in), biases N(0, 0.02^2), the scale-shift
    /// tables N(0, 1/D) (diffusers' initialisation); adaLN-single's shared
    /// projection is N(0, 0.3^2/fan_in), so every gate is small but
    /// non-zero. Same seed, same weights.
    pub fn random(cfg: &PixArtConfig, seed: u64, dtype: DType, device: &Device) -> Result<PixArt> {
        weights::random(WeightsLayout::Diffusers, seed, dtype, device, |w| {
            PixArt::build(cfg, w)
        })
    }

    /// The names and shapes of the tensors a `layout` checkpoint of `cfg`
    /// holds (the original layout's optional `pos_embed` buffer aside), in
    /// the order the model takes them.
    pub fn expected_tensors(
        cfg: &PixArtConfig,
        layout: WeightsLayout,
    ) -> Result<Vec<(String, Vec<usize>)>> {
        weights::shapes(layout, |w| PixArt::build(cfg, w))
    }

    /// The learned null caption embedding `[caption tokens, caption
    /// channels]` of an original checkpoint (`y_embedder.y_embedding`, in
    /// the model's dtype and device): the original sampling scripts feed it
    /// as the unconditional caption of classifier-free guidance. `None` for
    /// diffusers weights (diffusers drops it; its pipeline encodes an empty
    /// prompt instead) and random ones.
    pub fn null_caption(&self) -> Option<&Tensor> {
        self.null_caption.as_ref()
    }

    /// Builds the model from the tensors of `w`: the one place PixArt-α's
    /// tensors are named, in both layouts (see [`weights`]).
    fn build(cfg: &PixArtConfig, w: &Weights) -> Result<PixArt> {
        cfg.validate().map_err(Error::Config)?;
        let d = cfg.hidden;
        let side = cfg.input_size / cfg.patch;
        let patch_embed = PatchEmbed::new(
            w,
            d,
            cfg.in_channels,
            cfg.patch,
            cfg.input_size,
            pos_embed_scaled(d, side, side, cfg.interpolation_scale),
        )?;
        let t = w.pp(("t_embedder", "adaln_single.emb.timestep_embedder"));
        let t_mlp1 = t.linear(("mlp.0", "linear_1"), d, TIMESTEP_FREQ_DIM)?;
        let t_mlp2 = t.linear(("mlp.2", "linear_2"), d, d)?;
        let t_block = w.linear_of(
            ("t_block.1", "adaln_single.linear"),
            &[6 * d, d],
            ADALN_GAIN,
        )?;
        let caption = w.pp(("y_embedder.y_proj", "caption_projection"));
        let caption1 = caption.linear(("fc1", "linear_1"), d, cfg.caption_channels)?;
        let caption2 = caption.linear(("fc2", "linear_2"), d, d)?;
        // diffusers' initialisation of the scale-shift tables.
        let table = Init::Normal(1.0 / (d as f64).sqrt());
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = w.block(i);
                Ok(Block {
                    table: b.tensor(("scale_shift_table", "scale_shift_table"), &[6, d], table)?,
                    layers: AttnMlp::new(&b, d, cfg.mlp_hidden)?,
                    cross_q: b.linear(("cross_attn.q_linear", "attn2.to_q"), d, d)?,
                    cross_kv: b.fused_linear(
                        "cross_attn.kv_linear",
                        &["attn2.to_k", "attn2.to_v"],
                        d,
                        d,
                    )?,
                    cross_proj: b.linear(("cross_attn.proj", "attn2.to_out.0"), d, d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_table = w.tensor(
            ("final_layer.scale_shift_table", "scale_shift_table"),
            &[2, d],
            table,
        )?;
        let p = cfg.patch;
        let proj_out = w.linear(
            ("final_layer.linear", "proj_out"),
            p * p * cfg.out_channels,
            d,
        )?;
        // The original checkpoint's learned null caption; diffusers drops it.
        let null_caption = w.only_in(
            WeightsLayout::Original,
            "y_embedder.y_embedding",
            &[cfg.caption_tokens, cfg.caption_channels],
            Init::Normal(1.0),
        )?;
        let t_freqs = layers::timestep_freqs(0.0, w.device())?;
        Ok(PixArt {
            cfg: cfg.clone(),
            dtype: w.dtype(),
            device: w.device().clone(),
            patch_embed,
            t_freqs,
            t_mlp1,
            t_mlp2,
            t_block,
            caption1,
            caption2,
            blocks,
            final_table,
            proj_out,
            null_caption,
        })
    }

    pub fn config(&self) -> &PixArtConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn block(&self, block: usize) -> candle_core::Result<&Block> {
        nth_block(&self.blocks, block, "PixArt-α")
    }

    /// Cross-attention from `x` `[B, T, D]` to the caption tokens `ctx`
    /// `[B, L, D]`, masked keys (mask 0) biased by [`MASK_BIAS`].
    fn cross_attention(
        &self,
        blk: &Block,
        x: &Tensor,
        ctx: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let l = ctx.dim(1)?;
        let heads = self.cfg.heads;
        let hd = d / heads;
        let q = blk
            .cross_q
            .forward(x)?
            .reshape((b, t, heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let kv = blk
            .cross_kv
            .forward(ctx)?
            .reshape((b, l, 2, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let bias = match mask {
            Some(m) => {
                Some(((m.to_dtype(DType::F32)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, l))?)
            }
            None => None,
        };
        let out = attend(&q, &kv.get(0)?, &kv.get(1)?, bias.as_ref())?;
        blk.cross_proj.forward(&out)
    }
}

impl BlockModel for PixArt {
    fn depth(&self) -> usize {
        self.cfg.depth
    }

    fn branches(&self) -> &'static [Branch] {
        &[Branch::Attn, Branch::Cross, Branch::Mlp]
    }

    /// `x` `[B, C, H, W]` (H = W = input size), `t` `[B]` timesteps, `cond`
    /// the caption embeddings `[B, L, caption_channels]`, `cond_mask` their
    /// key mask `[B, L]` (1 = attend, 0 = padding; any numeric dtype).
    fn embed(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        cond_mask: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Conditioning)> {
        let cfg = &self.cfg;
        let b = self.patch_embed.check_input("PixArt-α", x)?;
        if t.dims() != [b] {
            candle_core::bail!("PixArt-α timesteps are {:?}, expected [{b}]", t.dims());
        }
        let (cb, l, cc) = match cond.dims3() {
            Ok(d) => d,
            Err(_) => candle_core::bail!(
                "PixArt-α caption embeddings are {:?}, expected [{b}, L, {}]",
                cond.dims(),
                cfg.caption_channels
            ),
        };
        if cb != b || cc != cfg.caption_channels || l == 0 {
            candle_core::bail!(
                "PixArt-α caption embeddings are {:?}, expected [{b}, L, {}] with L > 0",
                cond.dims(),
                cfg.caption_channels
            );
        }
        if !cond.dtype().is_float() {
            candle_core::bail!(
                "PixArt-α caption embeddings must be floats, got {:?}",
                cond.dtype()
            );
        }
        let mask = match cond_mask {
            Some(m) => {
                if m.dims() != [b, l] {
                    candle_core::bail!(
                        "PixArt-α caption mask is {:?}, expected [{b}, {l}]",
                        m.dims()
                    );
                }
                Some(m.to_device(&self.device)?.to_dtype(DType::F32)?)
            }
            None => None,
        };

        let tokens = self.patch_embed.forward(x)?;
        let freq = layers::timestep_embedding(t, &self.t_freqs, self.dtype)?;
        let t_emb = self.t_mlp2.forward(&silu(&self.t_mlp1.forward(&freq)?)?)?;

        let caption = cond.to_device(&self.device)?.to_dtype(self.dtype)?;
        let context = gelu_mlp(&self.caption1, &self.caption2, &caption)?;
        Ok((
            tokens,
            Conditioning {
                c: t_emb,
                per_block: None,
                context: Some((context, mask)),
            },
        ))
    }

    /// `scale_shift_table + t_block(silu(t_emb))`, split in six (shift_msa,
    /// scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
    fn modulation(&self, block: usize, cond: &Conditioning) -> candle_core::Result<Modulation> {
        let blk = self.block(block)?;
        let d = self.cfg.hidden;
        let b = cond.c.dim(0)?;
        let m = self
            .t_block
            .forward(&silu(&cond.c)?)?
            .reshape((b, 6, d))?
            .broadcast_add(&blk.table.unsqueeze(0)?)?;
        let part = |i: usize| m.narrow(1, i, 1)?.squeeze(1)?.contiguous();
        Modulation::from_chunks(part)
    }

    fn modulated_input(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
    ) -> candle_core::Result<Tensor> {
        self.block(block)?;
        ops::layer_norm_modulate(x, &m.shift_msa, &m.scale_msa, self.cfg.norm_eps)
    }

    fn branch(
        &self,
        block: usize,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        cond: &Conditioning,
    ) -> candle_core::Result<Tensor> {
        let blk = self.block(block)?;
        let eps = self.cfg.norm_eps;
        match branch {
            Branch::Attn => {
                let h = self.modulated_input(block, x, m)?;
                blk.layers.attention(self.cfg.heads, &h)
            }
            Branch::Cross => {
                let Some((ctx, mask)) = &cond.context else {
                    candle_core::bail!("PixArt-α cross-attention needs the caption context")
                };
                self.cross_attention(blk, x, ctx, mask.as_ref())
            }
            Branch::Mlp => {
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                blk.layers.mlp(&h)
            }
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

    /// `x + gate * out` for `attn` and `mlp`; `x + out` for `cross`, which
    /// PixArt-α does not gate.
    fn add_branch(
        &self,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        out: &Tensor,
    ) -> candle_core::Result<Tensor> {
        check_branch_output(branch, x, out)?;
        match branch {
            Branch::Attn => ops::gated_add(x, out, &m.gate_msa),
            Branch::Mlp => ops::gated_add(x, out, &m.gate_mlp),
            Branch::Cross => x + out,
        }
    }

    fn finish(&self, x: &Tensor, cond: &Conditioning) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        // The rank of `x` is checked before anything is computed.
        x.dims3()?;
        let st = self
            .final_table
            .unsqueeze(0)?
            .broadcast_add(&cond.c.unsqueeze(1)?)?;
        let shift = st.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let scale = st.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
        let h = ops::layer_norm_modulate(x, &shift, &scale, FINAL_NORM_EPS)?;
        let h = self.proj_out.forward(&h)?;
        layers::unpatchify(&h, cfg.input_size / cfg.patch, cfg.patch, cfg.out_channels)
    }
}
