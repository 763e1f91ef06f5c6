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

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::silu;
use tcc_core::{
    Branch, ModelFamily, ModelShape, TransformerConfig, TIMESTEP_FREQ_DIM,
};

use crate::config::{check_positive, check_sizes, parse_diffusers_json, read_diffusers_config};
use crate::error::{Error, Result};
use crate::attention::attend;
use crate::layers::{
    self, fan_in_std, gelu_mlp, pos_embed_scaled, push_linear, Linear, PatchEmbed, Shapes,
    Weights,
};
use crate::load::{self, Raw, Source, WeightsLayout};
use crate::ops;
use crate::parts::{check_branch_output, nth_block, BlockModel, Conditioning, Modulation};

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
        check_sizes(
            &[
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
            ],
            self.hidden,
            self.heads,
            self.input_size,
            self.patch,
        )?;
        check_positive("norm eps", self.norm_eps)?;
        check_positive("interpolation scale", self.interpolation_scale)
    }

    /// Reads the `config.json` of a diffusers `PixArtTransformer2DModel`
    /// (also the older `Transformer2DModel` export with
    /// `norm_type = "ada_norm_single"`).
    pub fn from_diffusers_config(path: &Path) -> Result<PixArtConfig> {
        read_diffusers_config(path, ModelFamily::Pixart, PixArtConfig::from_transformer)
    }

    /// The config of a diffusers `config.json` given as text; `path` names
    /// it in messages.
    pub fn from_diffusers_json(text: &str, path: &Path) -> Result<PixArtConfig> {
        parse_diffusers_json(
            text,
            path,
            ModelFamily::Pixart,
            PixArtConfig::from_transformer,
        )
    }

    /// The PixArt-α of a diffusers config.
    fn from_transformer(t: TransformerConfig) -> std::result::Result<PixArtConfig, String> {
        let cfg = PixArtConfig {
            depth: t.depth,
            hidden: t.hidden,
            heads: t.heads,
            patch: t.patch,
            input_size: t.input_size,
            in_channels: t.in_channels,
            out_channels: t.out_channels,
            mlp_hidden: t.mlp_hidden,
            caption_channels: t.caption_channels,
            caption_tokens: t.caption_tokens,
            interpolation_scale: t.interpolation_scale,
            norm_eps: t.norm_eps,
            use_additional_conditions: t.use_additional_conditions,
        };
        cfg.validate()?;
        Ok(cfg)
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

/// The names (diffusers layout) and shapes of the tensors of `cfg`.
pub(crate) fn diffusers_shapes(cfg: &PixArtConfig) -> Shapes {
    let d = cfg.hidden;
    let m = cfg.mlp_hidden;
    let p = cfg.patch;
    let mut v = Shapes::new();
    let mut lin = |name: &str, out: usize, inp: usize| push_linear(&mut v, name, out, inp);
    lin(
        "adaln_single.emb.timestep_embedder.linear_1",
        d,
        TIMESTEP_FREQ_DIM,
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

/// The learned null caption of an original checkpoint.
const NULL_CAPTION: &str = "y_embedder.y_embedding";

/// Linear layers renamed one to one, original name -> diffusers name.
const ORIGINAL_LINEARS: [(&str, &str); 7] = [
    ("x_embedder.proj", "pos_embed.proj"),
    (
        "t_embedder.mlp.0",
        "adaln_single.emb.timestep_embedder.linear_1",
    ),
    (
        "t_embedder.mlp.2",
        "adaln_single.emb.timestep_embedder.linear_2",
    ),
    ("t_block.1", "adaln_single.linear"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("final_layer.linear", "proj_out"),
];

/// Per-block linear layers renamed one to one (under `blocks.{i}` /
/// `transformer_blocks.{i}`).
const ORIGINAL_BLOCK_LINEARS: [(&str, &str); 5] = [
    ("attn.proj", "attn1.to_out.0"),
    ("cross_attn.q_linear", "attn2.to_q"),
    ("cross_attn.proj", "attn2.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
];

/// The names (original PixArt-α layout) and shapes of the tensors of
/// `cfg`, the fixed `pos_embed` buffer aside.
fn original_shapes(cfg: &PixArtConfig) -> Shapes {
    let d = cfg.hidden;
    let m = cfg.mlp_hidden;
    let p = cfg.patch;
    let mut v = Shapes::new();
    let mut lin = |name: &str, out: usize, inp: usize| push_linear(&mut v, name, out, inp);
    lin("t_embedder.mlp.0", d, TIMESTEP_FREQ_DIM);
    lin("t_embedder.mlp.2", d, d);
    lin("t_block.1", 6 * d, d);
    lin("y_embedder.y_proj.fc1", d, cfg.caption_channels);
    lin("y_embedder.y_proj.fc2", d, d);
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        lin(&format!("{b}.attn.qkv"), 3 * d, d);
        lin(&format!("{b}.attn.proj"), d, d);
        lin(&format!("{b}.cross_attn.q_linear"), d, d);
        lin(&format!("{b}.cross_attn.kv_linear"), 2 * d, d);
        lin(&format!("{b}.cross_attn.proj"), d, d);
        lin(&format!("{b}.mlp.fc1"), m, d);
        lin(&format!("{b}.mlp.fc2"), d, m);
    }
    lin("final_layer.linear", p * p * cfg.out_channels, d);
    for i in 0..cfg.depth {
        v.push((format!("blocks.{i}.scale_shift_table"), vec![6, d]));
    }
    v.push(("final_layer.scale_shift_table".into(), vec![2, d]));
    v.push((
        "x_embedder.proj.weight".into(),
        vec![d, cfg.in_channels, p, p],
    ));
    v.push(("x_embedder.proj.bias".into(), vec![d]));
    v.push((
        NULL_CAPTION.into(),
        vec![cfg.caption_tokens, cfg.caption_channels],
    ));
    v
}

/// Renames validated original-layout tensors (null caption removed) to the
/// diffusers names, splitting the fused self-attention `qkv` in thirds
/// (q, k, v) and the cross-attention `kv_linear` in halves (k, v), as
/// diffusers' `convert_pixart_alpha_to_diffusers.py` does.
fn original_to_diffusers(
    mut t: HashMap<String, Tensor>,
    cfg: &PixArtConfig,
) -> Result<HashMap<String, Tensor>> {
    let d = cfg.hidden;
    let mut out = HashMap::new();
    let take = |t: &mut HashMap<String, Tensor>, name: &str| t.remove(name).expect("validated");
    let mut renames: Vec<(String, String)> = ORIGINAL_LINEARS
        .iter()
        .map(|(o, n)| (o.to_string(), n.to_string()))
        .collect();
    for i in 0..cfg.depth {
        for (o, n) in ORIGINAL_BLOCK_LINEARS {
            renames.push((
                format!("blocks.{i}.{o}"),
                format!("transformer_blocks.{i}.{n}"),
            ));
        }
    }
    for (o, n) in &renames {
        for kind in ["weight", "bias"] {
            out.insert(format!("{n}.{kind}"), take(&mut t, &format!("{o}.{kind}")));
        }
    }
    for i in 0..cfg.depth {
        let (o, n) = (format!("blocks.{i}"), format!("transformer_blocks.{i}"));
        for kind in ["weight", "bias"] {
            let qkv = take(&mut t, &format!("{o}.attn.qkv.{kind}"));
            for (k, part) in ["to_q", "to_k", "to_v"].into_iter().enumerate() {
                out.insert(
                    format!("{n}.attn1.{part}.{kind}"),
                    qkv.narrow(0, k * d, d)?.contiguous()?,
                );
            }
            let kv = take(&mut t, &format!("{o}.cross_attn.kv_linear.{kind}"));
            for (k, part) in ["to_k", "to_v"].into_iter().enumerate() {
                out.insert(
                    format!("{n}.attn2.{part}.{kind}"),
                    kv.narrow(0, k * d, d)?.contiguous()?,
                );
            }
        }
        out.insert(
            format!("{n}.scale_shift_table"),
            take(&mut t, &format!("{o}.scale_shift_table")),
        );
    }
    out.insert(
        "scale_shift_table".into(),
        take(&mut t, "final_layer.scale_shift_table"),
    );
    debug_assert!(t.is_empty(), "unmapped: {:?}", t.keys());
    Ok(out)
}

/// Checks an original checkpoint's fixed `pos_embed` buffer against the
/// embedding `cfg` computes (interpolation scale included), then drops it.
/// Tolerance 2e-3: the buffer may be stored in f16.
fn check_original_pos_embed(raw: &mut Raw, cfg: &PixArtConfig) -> Result<()> {
    let side = cfg.input_size / cfg.patch;
    let expected = pos_embed_scaled(cfg.hidden, side, side, cfg.interpolation_scale);
    let what = format!(
        "the 2-D sin-cos embedding of interpolation scale {} (wrong resolution preset?)",
        cfg.interpolation_scale
    );
    load::check_pos_embed_buffer(raw, side, cfg.hidden, expected, 2e-3, &what)
}

/// Checks the config of a diffusers directory against the requested one.
fn check_same_shape(file: &Path, got: &PixArtConfig, want: &PixArtConfig) -> Result<()> {
    let fields = [
        ("depth", got.depth, want.depth),
        ("hidden size", got.hidden, want.hidden),
        ("heads", got.heads, want.heads),
        ("patch", got.patch, want.patch),
        ("input size", got.input_size, want.input_size),
        ("in channels", got.in_channels, want.in_channels),
        ("out channels", got.out_channels, want.out_channels),
        ("MLP width", got.mlp_hidden, want.mlp_hidden),
        (
            "caption channels",
            got.caption_channels,
            want.caption_channels,
        ),
    ];
    load::check_fields(file, &fields)
}

impl PixArt {
    /// A PixArt-α with seeded random weights, for benchmarks and tests.
    /// Weights are N(0, 1/fan_in), biases N(0, 0.02^2), the scale-shift
    /// tables N(0, 1/D) (diffusers' initialisation); adaLN-single's shared
    /// projection is N(0, 0.3^2/fan_in), so every gate is small but
    /// non-zero. Same seed, same weights.
    pub fn random(cfg: &PixArtConfig, seed: u64, dtype: DType, device: &Device) -> Result<PixArt> {
        cfg.validate().map_err(Error::Config)?;
        let table_std = 1.0 / (cfg.hidden as f64).sqrt();
        let tensors = layers::random_tensors(&diffusers_shapes(cfg), seed, |name, shape| {
            if name.ends_with(".bias") {
                0.02
            } else if name.ends_with("scale_shift_table") {
                table_std
            } else if name == "adaln_single.linear.weight" {
                fan_in_std(shape, 0.3)
            } else {
                fan_in_std(shape, 1.0)
            }
        })?;
        PixArt::build(cfg, tensors, dtype, device)
    }

    /// Loads a diffusers `PixArtTransformer2DModel` from `path`, cast to
    /// `dtype` on `device`: a model directory (`config.json` and
    /// `diffusion_pytorch_model.safetensors`, or shards with their
    /// `.index.json`), a pipeline directory (its `transformer/` is used), or
    /// one weights file with the `config.json` beside it. Same as
    /// [`PixArt::load_with_config`] without a config, so original-layout
    /// checkpoints (which carry none) are refused.
    ///
    /// Every tensor is checked: missing, unexpected, mis-shaped and
    /// non-finite tensors are errors naming the tensor and the file.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<PixArt> {
        PixArt::load_with_config(path, None, dtype, device)
    }

    /// Loads PixArt-α weights from `path`, cast to `dtype` on `device`, in
    /// either layout (told apart by the tensor names):
    ///
    /// - diffusers (`PixArtTransformer2DModel`), as for [`PixArt::load`]:
    ///   the `config.json` of the directory (or beside a lone file) is used,
    ///   and `cfg`, when given, must agree with it; a lone file without a
    ///   `config.json` takes `cfg`;
    /// - the original PixArt-α checkpoint (`PixArt-XL-2-256x256.pth`, ...):
    ///   a PyTorch `.pth` (or safetensors) state dict, maybe nested under
    ///   `state_dict` (or `ema`, `model`, `module`), with the names of the
    ///   original repository (`x_embedder.proj`, `blocks.{i}.attn.qkv`,
    ///   `blocks.{i}.cross_attn.kv_linear`, ...). It has no config: `cfg` is
    ///   required. Its fixed `pos_embed` buffer, when present, must match
    ///   the embedding `cfg` computes (so a wrong interpolation scale is
    ///   caught); its learned null caption `y_embedder.y_embedding` is kept
    ///   ([`PixArt::null_caption`]).
    ///
    /// Every tensor is checked: missing, unexpected, mis-shaped and
    /// non-finite tensors are errors naming the tensor (as the file names
    /// it) and the file.
    pub fn load_with_config(
        path: &Path,
        cfg: Option<&PixArtConfig>,
        dtype: DType,
        device: &Device,
    ) -> Result<PixArt> {
        let src = load::resolve(path)?;
        let mut raw = load::read_source(path, &src)?;
        if raw.layout()? == WeightsLayout::Original {
            let cfg = cfg.ok_or_else(|| {
                Error::format(
                    path,
                    "an original PixArt-α checkpoint has no config: name the model shape",
                )
            })?;
            cfg.validate()
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            check_original_pos_embed(&mut raw, cfg)?;
            load::validate(&raw, &original_shapes(cfg), &[])?;
            let mut tensors: HashMap<String, Tensor> =
                raw.tensors.into_iter().map(|(n, (t, _))| (n, t)).collect();
            let null = tensors
                .remove(NULL_CAPTION)
                .expect("validated")
                .to_dtype(dtype)?
                .to_device(device)?;
            let tensors = original_to_diffusers(tensors, cfg)?;
            let mut model = PixArt::build(cfg, tensors, dtype, device)?;
            model.null_caption = Some(null);
            return Ok(model);
        }
        let config: Option<PathBuf> = match &src {
            Source::Diffusers { config, .. } => Some(config.clone()),
            Source::File(f) => f
                .parent()
                .map(|d| d.join("config.json"))
                .filter(|c| c.is_file()),
        };
        let cfg = match (config, cfg) {
            (Some(config), want) => {
                let got = PixArtConfig::from_diffusers_config(&config)?;
                if let Some(want) = want {
                    check_same_shape(&config, &got, want)?;
                }
                got
            }
            (None, Some(want)) => want.clone(),
            (None, None) => {
                return Err(Error::format(
                    path,
                    "PixArt-α weights need the diffusers config.json beside them, \
                     or the model shape from the caller",
                ))
            }
        };
        load::validate(&raw, &diffusers_shapes(&cfg), &[])?;
        let tensors = raw.tensors.into_iter().map(|(n, (t, _))| (n, t)).collect();
        PixArt::build(&cfg, tensors, dtype, device)
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

    /// Builds the model from diffusers-layout tensors (already validated),
    /// casting them to `dtype` on `device`.
    fn build(
        cfg: &PixArtConfig,
        t: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<PixArt> {
        cfg.validate().map_err(Error::Config)?;
        let mut w = Weights::new(t, dtype, device)?;
        // Fused projections: the rows of q, k, v (or k, v) stacked.
        let fused = |w: &mut Weights, names: &[String]| -> Result<Linear> {
            let parts = names
                .iter()
                .map(|n| w.linear(n))
                .collect::<Result<Vec<_>>>()?;
            let ws: Vec<&Tensor> = parts.iter().map(|l| &l.w).collect();
            let bs: Vec<&Tensor> = parts.iter().map(|l| &l.b).collect();
            Ok(Linear {
                w: Tensor::cat(&ws, 0)?,
                b: Tensor::cat(&bs, 0)?,
            })
        };
        let side = cfg.input_size / cfg.patch;
        let patch_embed = PatchEmbed::new(
            &mut w,
            "pos_embed.proj",
            cfg.in_channels,
            cfg.patch,
            cfg.input_size,
            pos_embed_scaled(cfg.hidden, side, side, cfg.interpolation_scale),
        )?;
        let t_mlp1 = w.linear("adaln_single.emb.timestep_embedder.linear_1")?;
        let t_mlp2 = w.linear("adaln_single.emb.timestep_embedder.linear_2")?;
        let t_block = w.linear("adaln_single.linear")?;
        let caption1 = w.linear("caption_projection.linear_1")?;
        let caption2 = w.linear("caption_projection.linear_2")?;
        let proj_out = w.linear("proj_out")?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = format!("transformer_blocks.{i}");
                let names = |attn: &str, parts: &[&str]| -> Vec<String> {
                    parts.iter().map(|p| format!("{b}.{attn}.{p}")).collect()
                };
                Ok(Block {
                    table: w.take(&format!("{b}.scale_shift_table"))?,
                    qkv: fused(&mut w, &names("attn1", &["to_q", "to_k", "to_v"]))?,
                    proj: w.linear(&format!("{b}.attn1.to_out.0"))?,
                    cross_q: w.linear(&format!("{b}.attn2.to_q"))?,
                    cross_kv: fused(&mut w, &names("attn2", &["to_k", "to_v"]))?,
                    cross_proj: w.linear(&format!("{b}.attn2.to_out.0"))?,
                    fc1: w.linear(&format!("{b}.ff.net.0.proj"))?,
                    fc2: w.linear(&format!("{b}.ff.net.2"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_table = w.take("scale_shift_table")?;
        let t_freqs = layers::timestep_freqs(0.0, device)?;
        Ok(PixArt {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
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
            null_caption: None,
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
                layers::self_attention(&blk.qkv, &blk.proj, self.cfg.heads, &h)
            }
            Branch::Cross => {
                let Some((ctx, mask)) = &cond.context else {
                    candle_core::bail!("PixArt-α cross-attention needs the caption context")
                };
                self.cross_attention(blk, x, ctx, mask.as_ref())
            }
            Branch::Mlp => {
                let h = ops::layer_norm_modulate(x, &m.shift_mlp, &m.scale_mlp, eps)?;
                gelu_mlp(&blk.fc1, &blk.fc2, &h)
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

#[cfg(test)]
mod tests {
    use super::*;

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
