//! The decoder-relevant part of a diffusers `AutoencoderKL` `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::{Result, VaeError};

/// The latent scaling factor of the SD VAE (sd-vae-ft-ema, the VAE of DiT and
/// PixArt-α); also diffusers' default when `config.json` has none.
pub const DEFAULT_SCALING_FACTOR: f64 = 0.18215;

/// What the decoder needs from `config.json`. Absent fields take diffusers'
/// `AutoencoderKL` defaults (`block_out_channels` (64,), `layers_per_block`
/// 1, `latent_channels` 4, `norm_num_groups` 32, 3 in/out channels,
/// `scaling_factor` 0.18215, no `shift_factor`, `use_post_quant_conv` true).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Sampler latents are divided by this before decoding.
    pub scaling_factor: f64,
    /// Added after the division when present (SD3/Flux-style VAEs; `null`
    /// for the SD VAE), as diffusers' pipelines do.
    pub shift_factor: Option<f64>,
    pub use_post_quant_conv: bool,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
    block_out_channels: Option<Vec<usize>>,
    layers_per_block: Option<usize>,
    latent_channels: Option<usize>,
    norm_num_groups: Option<usize>,
    scaling_factor: Option<f64>,
    shift_factor: Option<f64>,
    use_post_quant_conv: Option<bool>,
    mid_block_add_attention: Option<bool>,
    up_block_types: Option<Vec<String>>,
    act_fn: Option<String>,
}

impl VaeConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = match tcc_fs::read_input_text(path, 1 << 20) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaeError::MissingFile {
                    path: path.to_path_buf(),
                    what: "a diffusers AutoencoderKL directory needs config.json",
                })
            }
            Err(e) => {
                return Err(VaeError::Io {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses a config given as text; `source` only names it in errors.
    /// The most channels of any layer a config may declare.
    pub const MAX_CHANNELS: usize = 1 << 16;
    /// The most up blocks (each but the last doubles the side).
    pub const MAX_BLOCKS: usize = 8;
    /// The most layers per block.
    pub const MAX_LAYERS: usize = 64;

    pub fn parse(json: &str, source: &Path) -> Result<Self> {
        let bad = |message: String| VaeError::Config {
            path: source.to_path_buf(),
            message,
        };
        let raw: Raw = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if let Some(class) = &raw.class_name {
            if class != "AutoencoderKL" {
                return Err(bad(format!(
                    "_class_name is {class:?}; only \"AutoencoderKL\" is supported"
                )));
            }
        }
        let config = VaeConfig {
            in_channels: raw.in_channels.unwrap_or(3),
            out_channels: raw.out_channels.unwrap_or(3),
            block_out_channels: raw.block_out_channels.unwrap_or_else(|| vec![64]),
            layers_per_block: raw.layers_per_block.unwrap_or(1),
            latent_channels: raw.latent_channels.unwrap_or(4),
            norm_num_groups: raw.norm_num_groups.unwrap_or(32),
            scaling_factor: raw.scaling_factor.unwrap_or(DEFAULT_SCALING_FACTOR),
            shift_factor: raw.shift_factor,
            use_post_quant_conv: raw.use_post_quant_conv.unwrap_or(true),
        };
        if config.block_out_channels.is_empty() || config.block_out_channels.contains(&0) {
            return Err(bad(format!(
                "block_out_channels {:?} must be non-empty and positive",
                config.block_out_channels
            )));
        }
        // Bounds on what a file may declare, far beyond any released VAE
        // (SD's: 4 blocks of at most 512 channels, 2 layers each), so that
        // sizes never overflow and a hostile config asks for no petabytes.
        let widths = [
            ("out_channels", config.out_channels),
            ("latent_channels", config.latent_channels),
        ]
        .into_iter()
        .chain(
            config
                .block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", c)),
        );
        for (what, v) in widths {
            if v > Self::MAX_CHANNELS {
                return Err(bad(format!(
                    "{what} {v} is more than the {} tcc accepts",
                    Self::MAX_CHANNELS
                )));
            }
        }
        if config.block_out_channels.len() > Self::MAX_BLOCKS
            || config.layers_per_block > Self::MAX_LAYERS
        {
            return Err(bad(format!(
                "{} blocks of {} layers: tcc accepts at most {} blocks of {}",
                config.block_out_channels.len(),
                config.layers_per_block,
                Self::MAX_BLOCKS,
                Self::MAX_LAYERS
            )));
        }
        if config.out_channels == 0 || config.latent_channels == 0 {
            return Err(bad(
                "out_channels and latent_channels must be positive".into()
            ));
        }
        let groups = config.norm_num_groups;
        if groups == 0 || config.block_out_channels.iter().any(|c| c % groups != 0) {
            return Err(bad(format!(
                "norm_num_groups {groups} must divide every block_out_channels entry {:?}",
                config.block_out_channels
            )));
        }
        if !(config.scaling_factor.is_finite() && config.scaling_factor > 0.0) {
            return Err(bad(format!(
                "scaling_factor {} must be positive",
                config.scaling_factor
            )));
        }
        if config.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err(bad("shift_factor must be finite".into()));
        }
        if let Some(types) = &raw.up_block_types {
            if types.len() != config.block_out_channels.len() {
                return Err(bad(format!(
                    "{} up_block_types for {} block_out_channels",
                    types.len(),
                    config.block_out_channels.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != "UpDecoderBlock2D") {
                return Err(bad(format!(
                    "up block type {t:?} is not supported (only UpDecoderBlock2D)"
                )));
            }
        }
        if let Some(act) = &raw.act_fn {
            if act != "silu" {
                return Err(bad(format!("act_fn {act:?} is not supported (only silu)")));
            }
        }
        if raw.mid_block_add_attention == Some(false) {
            return Err(bad(
                "mid_block_add_attention false is not supported (the decoder's mid block has attention)"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// Spatial upscaling from latents to pixels: 2 per up block but the last
    /// (8 for the SD VAE).
    pub fn upscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VaeConfig> {
        VaeConfig::parse(json, Path::new("config.json"))
    }

    #[test]
    fn sd_vae_config() {
        // stabilityai/sd-vae-ft-ema's config.json (diffusers 0.4 era).
        let c = parse(
            r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2",
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
              "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D",
              "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
        )
        .unwrap();
        assert_eq!(c.block_out_channels, [128, 256, 512, 512]);
        assert_eq!(c.layers_per_block, 2);
        assert_eq!(c.scaling_factor, DEFAULT_SCALING_FACTOR);
        assert_eq!(c.shift_factor, None);
        assert!(c.use_post_quant_conv);
        assert_eq!(c.upscale(), 8);
    }

    #[test]
    fn explicit_scaling_and_shift() {
        let c =
            parse(r#"{"scaling_factor": 0.5, "shift_factor": 0.25, "block_out_channels": [32]}"#)
                .unwrap();
        assert_eq!(c.scaling_factor, 0.5);
        assert_eq!(c.shift_factor, Some(0.25));
        assert_eq!(c.upscale(), 1);
        let c = parse(r#"{"shift_factor": null, "block_out_channels": [32]}"#).unwrap();
        assert_eq!(c.shift_factor, None);
    }

    #[test]
    fn rejects_unsupported() {
        for (json, needle) in [
            (r#"{"_class_name": "AutoencoderTiny"}"#, "AutoencoderTiny"),
            (r#"{"norm_num_groups": 5}"#, "norm_num_groups"),
            (r#"{"scaling_factor": 0}"#, "scaling_factor"),
            (r#"{"block_out_channels": []}"#, "block_out_channels"),
            (r#"{"act_fn": "gelu"}"#, "gelu"),
            (
                r#"{"mid_block_add_attention": false}"#,
                "mid_block_add_attention",
            ),
            (r#"{"up_block_types": ["UpBlock2D"]}"#, "UpBlock2D"),
            (
                r#"{"block_out_channels": [32, 32], "up_block_types": ["UpDecoderBlock2D"]}"#,
                "up_block_types",
            ),
            ("{not json", "config.json"),
            // Sizes no VAE has: 70 blocks once overflowed `upscale`.
            (
                r#"{"block_out_channels": [32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32]}"#,
                "70 blocks",
            ),
            (r#"{"layers_per_block": 100000}"#, "100000 layers"),
            (
                r#"{"block_out_channels": [4294967296]}"#,
                "block_out_channels 4294967296 is more than",
            ),
            (
                r#"{"latent_channels": 100000000000}"#,
                "latent_channels 100000000000 is more than",
            ),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("config.json"),
                "{json}: {e}"
            );
        }
    }
}
