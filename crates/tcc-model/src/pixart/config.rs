//! PixArt-α's hyper-parameters: from a model shape or from a diffusers
//! `config.json` (read by [`TransformerConfig`]).

use std::path::Path;

use tcc_core::{ModelFamily, ModelShape, TransformerConfig};

use crate::config::{check_positive, parse_diffusers_json, read_diffusers_config, shared_sizes};
use crate::error::{Error, Result};

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

shared_sizes!(PixArtConfig);

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
        self.check_sizes_with(&[
            ("caption_channels", self.caption_channels),
            ("caption_tokens", self.caption_tokens),
        ])?;
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
