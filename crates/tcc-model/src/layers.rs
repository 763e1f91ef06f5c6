//! The pieces DiT and PixArt-α share: the linear layer, the patch embedding,
//! the self-attention and MLP of a block, timestep and position embeddings,
//! seeded random weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use crate::attention;
use crate::error::Result;
use crate::ops;
use crate::weights::{Init, Names, Param, Weights};
use tcc_core::TIMESTEP_FREQ_DIM;

/// A linear layer `y = x W^T + b`, `W` `[out, in]`.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

impl Linear {
    /// `x W^T + b` over the last dim of `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::linear(x, &self.w, &self.b, false)
    }
}

/// `fc2(gelu_tanh(fc1(x)))`, the bias and GELU of `fc1` fused.
pub(crate) fn gelu_mlp(fc1: &Linear, fc2: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    fc2.forward(&ops::linear(x, &fc1.w, &fc1.b, true)?)
}

/// The patch embedding's convolution, in DiT and PixArt-α alike. Its
/// weight tells the checkpoint layouts apart.
pub(crate) const PATCH_EMBED: Names = ("x_embedder.proj", "pos_embed.proj");

/// The patch embedding: the `p x p` stride-`p` convolution as a matmul, plus
/// the fixed position embedding.
#[derive(Clone, Debug)]
pub(crate) struct PatchEmbed {
    /// `[D, C p p]`.
    proj: Linear,
    /// `[1, T, D]`.
    pos: Tensor,
    patch: usize,
    in_channels: usize,
    input_size: usize,
}

impl PatchEmbed {
    /// The convolution [`PATCH_EMBED`] (`[D, C, p, p]`) of `weights` and the
    /// position embedding `pos` (`[T, D]` row-major, as [`pos_embed_2d`]
    /// makes it).
    pub(crate) fn new(
        weights: &Weights,
        hidden: usize,
        in_channels: usize,
        patch: usize,
        input_size: usize,
        pos: Vec<f64>,
    ) -> Result<PatchEmbed> {
        let d = hidden;
        let mut proj = weights.linear_of(PATCH_EMBED, &[d, in_channels, patch, patch], 1.0)?;
        proj.w = proj.w.reshape((d, in_channels * patch * patch))?;
        let tokens = pos.len() / d;
        let pos: Vec<f32> = pos.into_iter().map(|v| v as f32).collect();
        let pos =
            Tensor::from_vec(pos, (1, tokens, d), weights.device())?.to_dtype(weights.dtype())?;
        Ok(PatchEmbed {
            proj,
            pos,
            patch,
            in_channels,
            input_size,
        })
    }

    /// Checks that `x` is `[B, C, H, W]` with the model's channels and size
    /// and returns B; `model` names the model in messages.
    pub(crate) fn check_input(&self, model: &str, x: &Tensor) -> candle_core::Result<usize> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.in_channels || h != self.input_size || w != self.input_size {
            candle_core::bail!(
                "{model} input is {:?}, expected [B, {}, {}, {}]",
                x.dims(),
                self.in_channels,
                self.input_size,
                self.input_size
            );
        }
        Ok(b)
    }

    /// `x` `[B, C, H, W]` (checked, any float dtype and device) -> tokens
    /// `[B, T, D]` in the model's dtype, on its device.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .to_device(self.pos.device())?
            .to_dtype(self.pos.dtype())?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * p * p))?;
        self.proj.forward(&patches)?.broadcast_add(&self.pos)
    }
}

/// The output tokens `h` `[B, T, p p C]` as an image `[B, C, side p, side p]`
/// in f32.
pub(crate) fn unpatchify(
    h: &Tensor,
    side: usize,
    p: usize,
    c: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = h.dims3()?;
    if t != side * side {
        candle_core::bail!("finish: {t} tokens, expected {}", side * side);
    }
    h.reshape((b, side, side, p, p, c))?
        .permute((0, 5, 1, 3, 2, 4))?
        .reshape((b, c, side * p, side * p))?
        .to_dtype(DType::F32)
}

/// The 2-D sin-cos position embedding of DiT (and MAE), `[T, D]` row-major,
/// computed in f64. Token `n = i * side + j` (row i, column j); the first half
/// of the channels encodes the column j, the second half the row i; each half
/// is `[sin(pos w_k), cos(pos w_k)]` with `w_k = 10000^(-k / (D/4))`.
pub fn pos_embed_2d(hidden: usize, side: usize) -> Vec<f64> {
    sincos_2d(hidden, side, |k| k as f64)
}

/// The 2-D sin-cos position embedding of diffusers' `PatchEmbed`: that of
/// [`pos_embed_2d`] at positions `k / (side / base_size) /
/// interpolation_scale` (computed in f32, as diffusers does; the sines in
/// f64).
pub(crate) fn pos_embed_scaled(
    hidden: usize,
    side: usize,
    base_size: usize,
    interpolation_scale: f64,
) -> Vec<f64> {
    let step = (side as f64 / base_size as f64) as f32;
    let scale = interpolation_scale as f32;
    sincos_2d(hidden, side, |k| ((k as f32 / step) / scale) as f64)
}

/// [`pos_embed_2d`] with grid index `k` at position `pos(k)`.
fn sincos_2d(hidden: usize, side: usize, pos: impl Fn(usize) -> f64) -> Vec<f64> {
    let quarter = hidden / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(side * side * hidden);
    for i in 0..side {
        for j in 0..side {
            for p in [pos(j), pos(i)] {
                out.extend(omega.iter().map(|w| (p * w).sin()));
                out.extend(omega.iter().map(|w| (p * w).cos()));
            }
        }
    }
    out
}

/// The timestep frequencies `exp(-ln(10000) k / (half - shift))`
/// `[TIMESTEP_FREQ_DIM / 2]`, computed in f32 step by step as PyTorch does, so
/// that `t * freq` rounds the same.
pub(crate) fn timestep_freqs(shift: f64, device: &Device) -> candle_core::Result<Tensor> {
    let half = TIMESTEP_FREQ_DIM / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let denom = (half as f64 - shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((neg_log * k as f32) / denom).exp())
        .collect();
    Tensor::from_vec(freqs, half, device)
}

/// The sinusoidal timestep embedding `[cos(t f), sin(t f)]` `[B,
/// TIMESTEP_FREQ_DIM]` of the timesteps `t` `[B]`, computed in f32 and cast to
/// `dtype`; `freqs` from [`timestep_freqs`].
pub(crate) fn timestep_embedding(
    t: &Tensor,
    freqs: &Tensor,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let args = t
        .to_device(freqs.device())?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(dtype)
}

/// The self-attention and MLP of a DiT / PixArt-α block (both models name
/// them alike).
#[derive(Clone, Debug)]
pub(crate) struct AttnMlp {
    /// q, k, v fused: `[3D, D]`.
    qkv: Linear,
    proj: Linear,
    pub(crate) fc1: Linear,
    fc2: Linear,
}

impl AttnMlp {
    /// The layers of the block `w`, of width `hidden`, MLP width `mlp`.
    pub(crate) fn new(w: &Weights, hidden: usize, mlp: usize) -> Result<AttnMlp> {
        let d = hidden;
        Ok(AttnMlp {
            qkv: w.fused_linear(
                "attn.qkv",
                &["attn1.to_q", "attn1.to_k", "attn1.to_v"],
                d,
                d,
            )?,
            proj: w.linear(("attn.proj", "attn1.to_out.0"), d, d)?,
            fc1: w.linear(("mlp.fc1", "ff.net.0.proj"), mlp, d)?,
            fc2: w.linear(("mlp.fc2", "ff.net.2"), d, mlp)?,
        })
    }

    /// Multi-head self-attention of `h` `[B, T, D]`: the fused projection
    /// `qkv`, then `proj`.
    pub(crate) fn attention(&self, heads: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        let out = attention::packed_self_attention(&self.qkv.forward(h)?, heads)?;
        self.proj.forward(&out)
    }

    /// [`AttnMlp::attention`] and the attention each token receives `[B, T]`.
    pub(crate) fn attention_received(
        &self,
        heads: usize,
        h: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        self_attention_received(&self.qkv, &self.proj, heads, h)
    }

    /// `fc2(gelu_tanh(fc1(h)))`.
    pub(crate) fn mlp(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        gelu_mlp(&self.fc1, &self.fc2, h)
    }
}

/// [`self_attention`] and the attention each token receives `[B, T]`
/// (see [`attention::packed_self_attention_received`]).
pub(crate) fn self_attention_received(
    qkv: &Linear,
    proj: &Linear,
    heads: usize,
    h: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (out, received) = attention::packed_self_attention_received(&qkv.forward(h)?, heads)?;
    Ok((proj.forward(&out)?, received))
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

/// Seeded random f32 tensors on the CPU, one per entry of `params`, drawn
/// as its [`Init`] says. Each tensor has its own stream (seed and index),
/// so the same seed gives the same weights however they are scheduled.
pub(crate) fn random_tensors(
    params: &[Param],
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    params
        .par_iter()
        .enumerate()
        .map(|(idx, p)| {
            let mut rng = SplitMix64(seed ^ (idx as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            rng.next_u64();
            let n: usize = p.shape.iter().product();
            let std = match p.init {
                Init::Normal(std) => std,
                Init::FanIn(gain) => {
                    let fan_in: usize = p.shape[1..].iter().product();
                    gain / (fan_in as f64).sqrt()
                }
            };
            Ok((
                p.name.clone(),
                Tensor::from_vec(rng.normals(n, std), p.shape.as_slice(), &Device::Cpu)?,
            ))
        })
        .collect()
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
    fn pos_embed_scales_positions() {
        // Scale 1, base = grid: DiT's embedding at integer positions.
        let a = pos_embed_scaled(16, 4, 4, 1.0);
        let b = pos_embed_2d(16, 4);
        assert_eq!(a, b);
        // Scale 0.5 (PixArt-α 256 px): token (i, j) sits at (2i, 2j).
        let half = pos_embed_scaled(16, 4, 4, 0.5);
        let big = pos_embed_2d(16, 8);
        let (i, j) = (1, 3);
        assert_eq!(
            &half[(i * 4 + j) * 16..(i * 4 + j + 1) * 16],
            &big[(2 * i * 8 + 2 * j) * 16..(2 * i * 8 + 2 * j + 1) * 16]
        );
    }
}
