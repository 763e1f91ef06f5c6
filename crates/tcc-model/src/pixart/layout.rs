//! PixArt-α's tensors: names and shapes in the diffusers and the original
//! layout, the conversion of an original checkpoint to diffusers names,
//! and loading either from files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tcc_core::TIMESTEP_FREQ_DIM;

use crate::error::{Error, Result};
use crate::layers::{pos_embed_scaled, push_linear, Shapes};
use crate::load::{self, Raw, Source, WeightsLayout};

use super::{PixArt, PixArtConfig};

/// The names (diffusers layout) and shapes of the tensors of `cfg`.
pub(super) fn diffusers_shapes(cfg: &PixArtConfig) -> Shapes {
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
}
