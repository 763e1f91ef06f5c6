//! Loading PixArt-α's weights from files, in the diffusers or the original
//! layout (the tensors of both are named by [`PixArt::build`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::layers::pos_embed_scaled;
use crate::load::{self, Raw, Source, WeightsLayout};

use super::{PixArt, PixArtConfig};

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
            return load::build_checked(raw, WeightsLayout::Original, dtype, device, |w| {
                PixArt::build(cfg, w)
            });
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
                    got.check_same_sizes(
                        &config,
                        want,
                        &[(
                            "caption channels",
                            got.caption_channels,
                            want.caption_channels,
                        )],
                    )?;
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
        load::build_checked(raw, WeightsLayout::Diffusers, dtype, device, |w| {
            PixArt::build(&cfg, w)
        })
    }
}
