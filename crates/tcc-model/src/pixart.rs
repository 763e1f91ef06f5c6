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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use serde::Deserialize;
use tcc_core::{Branch, ModelFamily, ModelShape};

use crate::config::FREQ_EMBED_DIM;
use crate::error::{Error, Result};
use crate::load::{self, Source};
use crate::ops;
use crate::parts::{BlockModel, Conditioning, Modulation};

/// eps of the final LayerNorm (`norm_out`), fixed in diffusers.
const FINAL_NORM_EPS: f64 = 1e-6;

/// The additive attention bias of a masked caption token: diffusers turns
/// the key mask into `(1 - mask) * -10000` (not -inf: a caption whose every
/// token is masked then attends uniformly instead of giving NaN). In f32,
/// `exp(-10000 + s)` is exactly 0, so masked tokens contribute nothing.
const MASK_BIAS: f64 = -10000.0;

/// The hyper-parameters of a PixArt-α transformer (adaLN-single).
#[derive(Clone, Debug, PartialEq)]
pub struct PixArtConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Hidden size D.
    pub hidden: usize,
    pub heads: usize,
    /// Patch size p.
    pub patch: usize,
    /// Side of the latent input; tokens = (input_size / p)^2.
    pub input_size: usize,
    pub in_channels: usize,
    /// 2 x in_channels with learned sigma (epsilon = the first
    /// `in_channels`), else in_channels.
    pub out_channels: usize,
    /// Hidden width of the MLP (4 D in PixArt-α).
    pub mlp_hidden: usize,
    /// Width of the caption embeddings (T5-XXL: 4096).
    pub caption_channels: usize,
    /// Caption tokens per prompt (T5 max length 120). The model accepts any
    /// number; this is the nominal one, for the model shape and costs.
    pub caption_tokens: usize,
    /// The position embedding is computed at positions
    /// `k / (grid / base_size) / interpolation_scale`, base_size = the grid
    /// side: diffusers' conversion uses 0.5 at 256 px, 1 at 512, 2 at 1024.
    pub interpolation_scale: f64,
    /// eps of the two LayerNorms of a block (diffusers `norm_eps`, 1e-6).
    pub norm_eps: f64,
    /// The resolution and aspect-ratio micro-conditions of the 1024 px
    /// model. Not supported: [`PixArtConfig::validate`] refuses `true`.
    pub use_additional_conditions: bool,
}

impl PixArtConfig {
    /// The PixArt-α described by a model shape (`pixart-alpha-256`,
    /// `pixart-alpha-512`). The interpolation scale is resolution / 512, as
    /// diffusers' conversion of the released checkpoints sets it.
    pub fn from_shape(shape: &ModelShape) -> Result<PixArtConfig> {
        if shape.family != ModelFamily::Pixart {
            return Err(Error::Config(format!(
                "model `{}` is a {:?} model, not PixArt-α",
                shape.name, shape.family
            )));
        }
        let resolution = shape.input_size * 8;
        let cfg = PixArtConfig {
            depth: shape.depth,
            hidden: shape.hidden,
            heads: shape.heads,
            patch: shape.patch,
            input_size: shape.input_size,
            in_channels: shape.in_channels,
            out_channels: shape.out_channels,
            mlp_hidden: shape.mlp_hidden(),
            caption_channels: shape.caption_dim,
            caption_tokens: shape.caption_tokens,
            interpolation_scale: resolution as f64 / 512.0,
            norm_eps: 1e-6,
            // diffusers switches them on for sample_size 128 (1024 px).
            use_additional_conditions: shape.input_size == 128,
        };
        cfg.validate()
            .map_err(|e| Error::Config(format!("model `{}`: {e}", shape.name)))?;
        Ok(cfg)
    }

    /// The model shape of this config, named `name`.
    pub fn to_shape(&self, name: &str) -> ModelShape {
        ModelShape {
            name: name.to_string(),
            family: ModelFamily::Pixart,
            depth: self.depth,
            hidden: self.hidden,
            heads: self.heads,
            patch: self.patch,
            input_size: self.input_size,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            mlp_ratio: self.mlp_hidden as f64 / self.hidden as f64,
            num_classes: 0,
            caption_tokens: self.caption_tokens,
            caption_dim: self.caption_channels,
        }
    }

    /// Whether the model predicts a variance too (out = 2 x in channels).
    pub fn learn_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }

    /// Image tokens per sample.
    pub fn tokens(&self) -> usize {
        let side = self.input_size / self.patch;
        side * side
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Checks that the sizes fit together and that the configuration is one
    /// this implementation computes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.use_additional_conditions {
            return Err(
                "use_additional_conditions = true (the resolution / aspect-ratio \
                 micro-conditions of the 1024 px PixArt-α) is not supported"
                    .into(),
            );
        }
        let positive = [
            ("depth", self.depth),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("patch", self.patch),
            ("input_size", self.input_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("mlp_hidden", self.mlp_hidden),
            ("caption_channels", self.caption_channels),
            ("caption_tokens", self.caption_tokens),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(format!(
                "hidden {} is not divisible by heads {}",
                self.hidden, self.heads
            ));
        }
        if !self.hidden.is_multiple_of(4) {
            return Err(format!("hidden {} is not divisible by 4", self.hidden));
        }
        if !self.input_size.is_multiple_of(self.patch) {
            return Err(format!(
                "input size {} is not divisible by patch {}",
                self.input_size, self.patch
            ));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(format!("norm eps {} must be positive", self.norm_eps));
        }
        let s = self.interpolation_scale;
        if !(s > 0.0 && s.is_finite()) {
            return Err(format!("interpolation scale {s} must be positive"));
        }
        Ok(())
    }

    /// Reads the `config.json` of a diffusers `PixArtTransformer2DModel`
    /// (also the older `Transformer2DModel` export with
    /// `norm_type = "ada_norm_single"`).
    pub fn from_diffusers_config(path: &Path) -> Result<PixArtConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        PixArtConfig::from_diffusers_json(&text, path)
    }

    /// The config of a diffusers `config.json` given as text; `path` names
    /// it in messages.
    pub fn from_diffusers_json(text: &str, path: &Path) -> Result<PixArtConfig> {
        let raw: DiffusersConfig = serde_json::from_str(text).map_err(|e| {
            Error::Config(format!(
                "{}: line {}, column {}: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        raw.into_config()
            .map_err(|msg| Error::Config(format!("{}: {msg}", path.display())))
    }
}

/// The fields of a diffusers PixArt `config.json` that matter here.
#[derive(Deserialize)]
struct DiffusersConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_attention_heads: Option<usize>,
    attention_head_dim: Option<usize>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
    num_layers: Option<usize>,
    cross_attention_dim: Option<usize>,
    attention_bias: Option<bool>,
    sample_size: Option<usize>,
    patch_size: Option<usize>,
    activation_fn: Option<String>,
    norm_type: Option<String>,
    norm_elementwise_affine: Option<bool>,
    norm_eps: Option<f64>,
    interpolation_scale: Option<f64>,
    use_additional_conditions: Option<bool>,
    caption_channels: Option<usize>,
    attention_type: Option<String>,
    only_cross_attention: Option<bool>,
    double_self_attention: Option<bool>,
}

impl DiffusersConfig {
    fn into_config(self) -> std::result::Result<PixArtConfig, String> {
        // Defaults of `PixArtTransformer2DModel.__init__`; the generic
        // `Transformer2DModel` has norm_eps 1e-5 and no norm_type default.
        let generic = match self.class_name.as_deref() {
            None | Some("PixArtTransformer2DModel") => false,
            Some("Transformer2DModel") => true,
            Some(c) => {
                return Err(format!(
                    "_class_name is `{c}`, expected PixArtTransformer2DModel"
                ))
            }
        };
        match self.norm_type.as_deref() {
            Some("ada_norm_single") => {}
            None if !generic => {}
            None => return Err("norm_type is missing; PixArt-α has `ada_norm_single`".into()),
            Some(v) => {
                return Err(format!(
                    "norm_type is `{v}`; only `ada_norm_single` (PixArt-α) is supported"
                ))
            }
        }
        let expect = |name: &str, got: Option<&str>, want: &str| match got {
            Some(v) if v != want => Err(format!("{name} is `{v}`; only `{want}` is supported")),
            _ => Ok(()),
        };
        expect(
            "activation_fn",
            self.activation_fn.as_deref(),
            "gelu-approximate",
        )?;
        expect("attention_type", self.attention_type.as_deref(), "default")?;
        if self.norm_elementwise_affine == Some(true) {
            return Err("norm_elementwise_affine = true is not supported".into());
        }
        if self.attention_bias == Some(false) {
            return Err("attention_bias = false is not supported".into());
        }
        if self.only_cross_attention == Some(true) || self.double_self_attention == Some(true) {
            return Err(
                "only_cross_attention / double_self_attention = true is not supported".into(),
            );
        }
        let heads = self.num_attention_heads.unwrap_or(16);
        let hidden = heads * self.attention_head_dim.unwrap_or(72);
        let cross = self.cross_attention_dim.unwrap_or(1152);
        if cross != hidden {
            return Err(format!(
                "cross_attention_dim {cross} differs from the hidden size {hidden}"
            ));
        }
        let caption_channels = self.caption_channels.ok_or(
            "caption_channels is missing: a model without a caption projection is not supported",
        )?;
        let sample_size = self.sample_size.unwrap_or(128);
        let in_channels = self.in_channels.unwrap_or(4);
        let cfg = PixArtConfig {
            depth: self.num_layers.unwrap_or(28),
            hidden,
            heads,
            patch: self.patch_size.unwrap_or(2),
            input_size: sample_size,
            in_channels,
            out_channels: self.out_channels.unwrap_or(in_channels),
            mlp_hidden: 4 * hidden,
            caption_channels,
            caption_tokens: 120,
            interpolation_scale: self
                .interpolation_scale
                .unwrap_or((sample_size / 64).max(1) as f64),
            norm_eps: self.norm_eps.unwrap_or(if generic { 1e-5 } else { 1e-6 }),
            use_additional_conditions: self.use_additional_conditions.unwrap_or(sample_size == 128),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

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
    /// `[6, D]`, added to the shared timestep vector.
    table: Tensor,
    /// Self-attention q, k, v fused: `[3D, D]`.
    qkv: Linear,
    proj: Linear,
    /// Cross-attention query (from the image tokens).
    cross_q: Linear,
    /// Cross-attention k, v fused (from the caption tokens): `[2D, D]`.
    cross_kv: Linear,
    cross_proj: Linear,
    fc1: Linear,
    fc2: Linear,
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
    /// The patch-embedding convolution as a matmul: `[D, C p p]`.
    x_embed: Linear,
    /// Fixed 2-D sin-cos position embedding `[1, T, D]`.
    pos_embed: Tensor,
    /// Timestep frequencies `[FREQ_EMBED_DIM / 2]`, f32.
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
}

/// The 2-D sin-cos position embedding of diffusers' `PatchEmbed`, `[T, D]`
/// row-major: token `n = i * side + j`; the first half of the channels
/// encodes the column, the second the row, each as `[sin(pos w_k),
/// cos(pos w_k)]`, `w_k = 10000^(-k / (D/4))`, at positions
/// `k / (side / base_size) / interpolation_scale` (computed in f32, as
/// diffusers does; the sines in f64).
pub(crate) fn pos_embed_scaled(
    hidden: usize,
    side: usize,
    base_size: usize,
    interpolation_scale: f64,
) -> Vec<f64> {
    let quarter = hidden / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let step = (side as f64 / base_size as f64) as f32;
    let scale = interpolation_scale as f32;
    let pos = |k: usize| ((k as f32 / step) / scale) as f64;
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

/// The timestep frequencies `exp(-ln(10000) k / half)`, computed in f32
/// step by step as PyTorch does (diffusers `Timesteps`, shift 0).
fn timestep_freqs() -> Vec<f32> {
    let half = FREQ_EMBED_DIM / 2;
    let neg_log = -(10000f64.ln()) as f32;
    (0..half)
        .map(|k| ((neg_log * k as f32) / half as f32).exp())
        .collect()
}

/// The names (diffusers layout) and shapes of the tensors of `cfg`.
pub(crate) fn diffusers_shapes(cfg: &PixArtConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.hidden;
    let m = cfg.mlp_hidden;
    let p = cfg.patch;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut lin = |name: &str, out: usize, inp: usize| {
        v.push((format!("{name}.weight"), vec![out, inp]));
        v.push((format!("{name}.bias"), vec![out]));
    };
    lin(
        "adaln_single.emb.timestep_embedder.linear_1",
        d,
        FREQ_EMBED_DIM,
    );
    lin("adaln_single.emb.timestep_embedder.linear_2", d, d);
    lin("adaln_single.linear", 6 * d, d);
    lin("caption_projection.linear_1", d, cfg.caption_channels);
    lin("caption_projection.linear_2", d, d);
    for i in 0..cfg.depth {
        let b = format!("transformer_blocks.{i}");
        for attn in ["attn1", "attn2"] {
            for q in ["to_q", "to_k", "to_v", "to_out.0"] {
                lin(&format!("{b}.{attn}.{q}"), d, d);
            }
        }
        lin(&format!("{b}.ff.net.0.proj"), m, d);
        lin(&format!("{b}.ff.net.2"), d, m);
    }
    lin("proj_out", p * p * cfg.out_channels, d);
    for i in 0..cfg.depth {
        v.push((
            format!("transformer_blocks.{i}.scale_shift_table"),
            vec![6, d],
        ));
    }
    v.push(("scale_shift_table".into(), vec![2, d]));
    v.push((
        "pos_embed.proj.weight".into(),
        vec![d, cfg.in_channels, p, p],
    ));
    v.push(("pos_embed.proj.bias".into(), vec![d]));
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

fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::silu(x)
}

/// Multi-head attention: `q` `[B, H, Tq, hd]`, `k`, `v` `[B, H, Tk, hd]`,
/// `bias` `[B, 1, 1, Tk]` f32 added to the scores. Softmax in f32.
/// Returns `[B, Tq, H hd]`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let dtype = q.dtype();
    let q = (q * (hd as f64).powf(-0.5))?;
    let mut scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, tq, h * hd))
}

impl PixArt {
    /// A PixArt-α with seeded random weights, for benchmarks and tests.
    /// Weights are N(0, 1/fan_in), biases N(0, 0.02^2), the scale-shift
    /// tables N(0, 1/D) (diffusers' initialisation); adaLN-single's shared
    /// projection is N(0, 0.3^2/fan_in), so every gate is small but
    /// non-zero. Same seed, same weights.
    pub fn random(cfg: &PixArtConfig, seed: u64, dtype: DType, device: &Device) -> Result<PixArt> {
        cfg.validate().map_err(Error::Config)?;
        let d = cfg.hidden as f64;
        let shapes = diffusers_shapes(cfg);
        let tensors: Vec<(String, Tensor)> = shapes
            .par_iter()
            .enumerate()
            .map(|(idx, (name, shape))| {
                let mut rng = SplitMix64(seed ^ (idx as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                rng.next_u64();
                let n: usize = shape.iter().product();
                let std = if name.ends_with(".bias") {
                    0.02
                } else if name.ends_with("scale_shift_table") {
                    1.0 / d.sqrt()
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    let gain = if name == "adaln_single.linear.weight" {
                        0.3
                    } else {
                        1.0
                    };
                    gain / (fan_in as f64).sqrt()
                };
                let t = Tensor::from_vec(rng.normals(n, std), shape.as_slice(), &Device::Cpu)?;
                Ok((name.clone(), t))
            })
            .collect::<candle_core::Result<_>>()?;
        PixArt::build(cfg, tensors.into_iter().collect(), dtype, device)
    }

    /// Loads a diffusers `PixArtTransformer2DModel` from `path`, cast to
    /// `dtype` on `device`: a model directory (`config.json` and
    /// `diffusion_pytorch_model.safetensors`, or shards with their
    /// `.index.json`), a pipeline directory (its `transformer/` is used), or
    /// one weights file with the `config.json` beside it.
    ///
    /// Every tensor is checked: missing, unexpected, mis-shaped and
    /// non-finite tensors are errors naming the tensor and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<PixArt> {
        let src = load::resolve(path)?;
        let config: PathBuf = match &src {
            Source::Diffusers { config, .. } => config.clone(),
            Source::File(f) => f
                .parent()
                .map(|d| d.join("config.json"))
                .filter(|c| c.is_file())
                .ok_or_else(|| {
                    Error::format(
                        f,
                        "PixArt-α weights need the diffusers config.json beside them \
                         (the original PixArt-α checkpoint layout is not supported)",
                    )
                })?,
        };
        let cfg = PixArtConfig::from_diffusers_config(&config)?;
        let raw = load::read_source(path, &src)?;
        load::validate(&raw, &diffusers_shapes(&cfg), &[])?;
        let tensors = raw.tensors.into_iter().map(|(n, (t, _))| (n, t)).collect();
        PixArt::build(&cfg, tensors, dtype, device)
    }

    /// Builds the model from diffusers-layout tensors (already validated),
    /// casting them to `dtype` on `device`.
    fn build(
        cfg: &PixArtConfig,
        mut t: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<PixArt> {
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
        let lin = |t: &mut HashMap<String, Tensor>, name: &str| -> Result<Linear> {
            Ok(Linear {
                w: take(t, &format!("{name}.weight"))?,
                b: take(t, &format!("{name}.bias"))?,
            })
        };
        // Fused projections: the rows of q, k, v (or k, v) stacked.
        let fused = |t: &mut HashMap<String, Tensor>, names: &[String]| -> Result<Linear> {
            let parts = names
                .iter()
                .map(|n| lin(t, n))
                .collect::<Result<Vec<_>>>()?;
            let w: Vec<&Tensor> = parts.iter().map(|l| &l.w).collect();
            let b: Vec<&Tensor> = parts.iter().map(|l| &l.b).collect();
            Ok(Linear {
                w: Tensor::cat(&w, 0)?,
                b: Tensor::cat(&b, 0)?,
            })
        };
        let d = cfg.hidden;
        let mut x_embed = lin(&mut t, "pos_embed.proj")?;
        x_embed.w = x_embed
            .w
            .reshape((d, cfg.in_channels * cfg.patch * cfg.patch))?;
        let t_mlp1 = lin(&mut t, "adaln_single.emb.timestep_embedder.linear_1")?;
        let t_mlp2 = lin(&mut t, "adaln_single.emb.timestep_embedder.linear_2")?;
        let t_block = lin(&mut t, "adaln_single.linear")?;
        let caption1 = lin(&mut t, "caption_projection.linear_1")?;
        let caption2 = lin(&mut t, "caption_projection.linear_2")?;
        let proj_out = lin(&mut t, "proj_out")?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = format!("transformer_blocks.{i}");
                let names = |attn: &str, parts: &[&str]| -> Vec<String> {
                    parts.iter().map(|p| format!("{b}.{attn}.{p}")).collect()
                };
                Ok(Block {
                    table: take(&mut t, &format!("{b}.scale_shift_table"))?,
                    qkv: fused(&mut t, &names("attn1", &["to_q", "to_k", "to_v"]))?,
                    proj: lin(&mut t, &format!("{b}.attn1.to_out.0"))?,
                    cross_q: lin(&mut t, &format!("{b}.attn2.to_q"))?,
                    cross_kv: fused(&mut t, &names("attn2", &["to_k", "to_v"]))?,
                    cross_proj: lin(&mut t, &format!("{b}.attn2.to_out.0"))?,
                    fc1: lin(&mut t, &format!("{b}.ff.net.0.proj"))?,
                    fc2: lin(&mut t, &format!("{b}.ff.net.2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_table = take(&mut t, "scale_shift_table")?;
        let side = cfg.input_size / cfg.patch;
        let pos: Vec<f32> = pos_embed_scaled(d, side, side, cfg.interpolation_scale)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let pos_embed = Tensor::from_vec(pos, (1, side * side, d), device)?.to_dtype(dtype)?;
        let t_freqs = Tensor::from_vec(timestep_freqs(), FREQ_EMBED_DIM / 2, device)?;
        Ok(PixArt {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            x_embed,
            pos_embed,
            t_freqs,
            t_mlp1,
            t_mlp2,
            t_block,
            caption1,
            caption2,
            blocks,
            final_table,
            proj_out,
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
        match self.blocks.get(block) {
            Some(b) => Ok(b),
            None => candle_core::bail!(
                "block {block} out of range (the PixArt-α has {} blocks)",
                self.blocks.len()
            ),
        }
    }

    /// Self-attention of the (already modulated) tokens `h` `[B, T, D]`.
    fn self_attention(&self, blk: &Block, h: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let heads = self.cfg.heads;
        let hd = d / heads;
        let qkv = blk
            .qkv
            .forward(h)?
            .reshape((b, t, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let out = attend(&qkv.get(0)?, &qkv.get(1)?, &qkv.get(2)?, None)?;
        blk.proj.forward(&out)
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
        let (b, c, h, w) = x.dims4()?;
        if c != cfg.in_channels || h != cfg.input_size || w != cfg.input_size {
            candle_core::bail!(
                "PixArt-α input is {:?}, expected [B, {}, {}, {}]",
                x.dims(),
                cfg.in_channels,
                cfg.input_size,
                cfg.input_size
            );
        }
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
        let t_emb = self.t_mlp2.forward(&silu(&self.t_mlp1.forward(&freq)?)?)?;

        let caption = cond.to_device(&self.device)?.to_dtype(self.dtype)?;
        let context = self.caption2.forward(&ops::bias_gelu(
            &self.caption1.matmul(&caption)?,
            &self.caption1.b,
        )?)?;
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
        cond: &Conditioning,
    ) -> candle_core::Result<Tensor> {
        let blk = self.block(block)?;
        let eps = self.cfg.norm_eps;
        match branch {
            Branch::Attn => {
                let h = ops::layer_norm_modulate(x, &m.shift_msa, &m.scale_msa, eps)?;
                self.self_attention(blk, &h)
            }
            Branch::Cross => {
                let Some((ctx, mask)) = &cond.context else {
                    candle_core::bail!("PixArt-α cross-attention needs the caption context")
                };
                self.cross_attention(blk, x, ctx, mask.as_ref())
            }
            Branch::Mlp => {
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                blk.fc2
                    .forward(&ops::bias_gelu(&blk.fc1.matmul(&h)?, &blk.fc1.b)?)
            }
        }
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
        if out.dims() != x.dims() {
            candle_core::bail!(
                "{branch} branch output is {:?}, the residual stream {:?}",
                out.dims(),
                x.dims()
            );
        }
        match branch {
            Branch::Attn => ops::gated_add(x, out, &m.gate_msa),
            Branch::Mlp => ops::gated_add(x, out, &m.gate_mlp),
            Branch::Cross => x + out,
        }
    }

    fn finish(&self, x: &Tensor, cond: &Conditioning) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let st = self
            .final_table
            .unsqueeze(0)?
            .broadcast_add(&cond.c.unsqueeze(1)?)?;
        let shift = st.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let scale = st.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
        let h = ops::layer_norm_modulate(x, &shift, &scale, FINAL_NORM_EPS)?;
        let h = self.proj_out.forward(&h)?;
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
    fn pos_embed_scales_positions() {
        // Scale 1, base = grid: DiT's embedding at integer positions.
        let a = pos_embed_scaled(16, 4, 4, 1.0);
        let b = crate::pos_embed_2d(16, 4);
        assert_eq!(a, b);
        // Scale 0.5 (PixArt-α 256 px): token (i, j) sits at (2i, 2j).
        let half = pos_embed_scaled(16, 4, 4, 0.5);
        let big = crate::pos_embed_2d(16, 8);
        let (i, j) = (1, 3);
        assert_eq!(
            &half[(i * 4 + j) * 16..(i * 4 + j + 1) * 16],
            &big[(2 * i * 8 + 2 * j) * 16..(2 * i * 8 + 2 * j + 1) * 16]
        );
    }

    #[test]
    fn presets_and_config_errors() {
        let s256 = ModelShape::preset("pixart-alpha-256").unwrap();
        let c = PixArtConfig::from_shape(&s256).unwrap();
        assert_eq!(
            (c.depth, c.hidden, c.heads, c.tokens()),
            (28, 1152, 16, 256)
        );
        assert_eq!(c.interpolation_scale, 0.5);
        assert_eq!((c.caption_channels, c.caption_tokens), (4096, 120));
        assert_eq!(c.to_shape("pixart-alpha-256"), s256);
        let s512 = ModelShape::preset("pixart-alpha-512").unwrap();
        assert_eq!(
            PixArtConfig::from_shape(&s512).unwrap().interpolation_scale,
            1.0
        );
        let dit = ModelShape::preset("dit-xl-2-256").unwrap();
        assert!(PixArtConfig::from_shape(&dit)
            .unwrap_err()
            .to_string()
            .contains("not PixArt"));
        let s1024 = ModelShape {
            input_size: 128,
            ..s256
        };
        let e = PixArtConfig::from_shape(&s1024).unwrap_err().to_string();
        assert!(e.contains("use_additional_conditions"), "{e}");

        let p = Path::new("config.json");
        let base = r#""caption_channels": 24, "num_layers": 2, "num_attention_heads": 2,
            "attention_head_dim": 16, "sample_size": 8"#;
        let json = |extra: &str| format!("{{{base}, {extra}}}");
        let ok =
            PixArtConfig::from_diffusers_json(&json(r#""cross_attention_dim": 32"#), p).unwrap();
        assert_eq!((ok.hidden, ok.depth, ok.tokens()), (32, 2, 16));
        assert_eq!(ok.interpolation_scale, 1.0);
        assert!(!ok.use_additional_conditions);
        for (extra, want) in [
            (
                r#""use_additional_conditions": true"#,
                "use_additional_conditions",
            ),
            (r#""norm_type": "ada_norm_zero""#, "norm_type"),
            (r#""_class_name": "DiTTransformer2DModel""#, "_class_name"),
            (r#""cross_attention_dim": 64"#, "cross_attention_dim"),
        ] {
            let text = if extra.contains("cross_attention_dim") {
                json(extra)
            } else {
                json(&format!(r#"{extra}, "cross_attention_dim": 32"#))
            };
            let e = PixArtConfig::from_diffusers_json(&text, p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
        // The default sample size (128) switches the micro-conditions on.
        let e = PixArtConfig::from_diffusers_json(r#"{"caption_channels": 4096}"#, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_additional_conditions"), "{e}");
    }
}
