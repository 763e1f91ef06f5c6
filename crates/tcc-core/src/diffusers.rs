//! The `config.json` of a diffusers transformer, read in one place for the
//! plan (its [`ModelShape`]) and the model (the numbers it computes with):
//! `DiTTransformer2DModel`, `PixArtTransformer2DModel`, or the generic
//! `Transformer2DModel` that older exports of either name.
//!
//! A key that is absent takes the default of the class's `__init__` in
//! diffusers 0.42 (the generic class: `norm_eps` 1e-5, `out_channels` =
//! `in_channels`, and no number of classes), so a config reads as diffusers
//! reads it.

use serde::Deserialize;

use crate::{ModelFamily, ModelShape};

/// Caption tokens of PixArt-α's T5 encoder (the pipeline's
/// `max_sequence_length`; the transformer's config does not hold it).
pub const PIXART_CAPTION_TOKENS: usize = 120;

/// What a diffusers transformer config says, with diffusers' defaults
/// applied and the settings no tcc model computes refused.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    pub family: ModelFamily,
    pub depth: usize,
    pub hidden: usize,
    pub heads: usize,
    pub patch: usize,
    /// `sample_size`: the side of the latent input.
    pub input_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// The MLP's hidden width (4 x hidden in both classes).
    pub mlp_hidden: usize,
    /// `num_embeds_ada_norm` of a DiT (0 for PixArt-α).
    pub num_classes: usize,
    /// Width of the caption embeddings (PixArt-α; 0 for DiT).
    pub caption_channels: usize,
    /// Nominal caption tokens (PixArt-α: [`PIXART_CAPTION_TOKENS`]; DiT: 0).
    pub caption_tokens: usize,
    /// eps of the LayerNorms diffusers makes configurable.
    pub norm_eps: f64,
    /// PixArt-α's position-embedding interpolation scale (DiT: 1).
    pub interpolation_scale: f64,
    /// PixArt-α's resolution / aspect-ratio micro-conditions.
    pub use_additional_conditions: bool,
}

/// Why a `config.json` could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// Not JSON, or a key of the wrong type (serde_json's error has the
    /// line and column).
    Json(serde_json::Error),
    /// A config tcc cannot use.
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Json(e) => write!(f, "invalid JSON: {e}"),
            ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The keys of a config that matter here.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_attention_heads: Option<usize>,
    attention_head_dim: Option<usize>,
    in_channels: Option<usize>,
    out_channels: Option<usize>,
    num_layers: Option<usize>,
    sample_size: Option<usize>,
    patch_size: Option<usize>,
    activation_fn: Option<String>,
    num_embeds_ada_norm: Option<usize>,
    norm_type: Option<String>,
    norm_elementwise_affine: Option<bool>,
    norm_eps: Option<f64>,
    attention_bias: Option<bool>,
    cross_attention_dim: Option<usize>,
    interpolation_scale: Option<f64>,
    use_additional_conditions: Option<bool>,
    caption_channels: Option<usize>,
    attention_type: Option<String>,
    only_cross_attention: Option<bool>,
    double_self_attention: Option<bool>,
}

const GENERIC: &str = "Transformer2DModel";

fn class_of(family: ModelFamily) -> &'static str {
    match family {
        ModelFamily::Dit => "DiTTransformer2DModel",
        ModelFamily::Pixart => "PixArtTransformer2DModel",
    }
}

fn norm_of(family: ModelFamily) -> &'static str {
    match family {
        ModelFamily::Dit => "ada_norm_zero",
        ModelFamily::Pixart => "ada_norm_single",
    }
}

impl TransformerConfig {
    /// Reads the text of a `config.json`. `expect` is the family the caller
    /// loads (a config naming another is refused); `None` takes the family
    /// the config names through `_class_name` or `norm_type`.
    pub fn from_json(
        text: &str,
        expect: Option<ModelFamily>,
    ) -> Result<TransformerConfig, ConfigError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(ConfigError::Json)?;
        if !value.is_object() {
            return Err(ConfigError::Invalid("expected a JSON object".into()));
        }
        let raw: Raw = serde_json::from_str(text).map_err(ConfigError::Json)?;
        raw.resolve(expect).map_err(ConfigError::Invalid)
    }

    /// The model shape of this config, named `name`.
    pub fn shape(&self, name: &str) -> ModelShape {
        ModelShape {
            name: name.to_string(),
            family: self.family,
            depth: self.depth,
            hidden: self.hidden,
            heads: self.heads,
            patch: self.patch,
            input_size: self.input_size,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            mlp_ratio: self.mlp_hidden as f64 / self.hidden as f64,
            num_classes: self.num_classes,
            caption_tokens: self.caption_tokens,
            caption_dim: self.caption_channels,
        }
    }
}

impl Raw {
    /// The family the config names, if it names one.
    fn named_family(&self) -> Result<Option<ModelFamily>, String> {
        let by_norm = match self.norm_type.as_deref() {
            None => None,
            Some("ada_norm_zero") => Some(ModelFamily::Dit),
            Some("ada_norm_single") => Some(ModelFamily::Pixart),
            Some(v) => {
                return Err(format!(
                    "norm_type is `{v}`; only `ada_norm_zero` (DiT) and `ada_norm_single` (PixArt-α) are supported"
                ))
            }
        };
        let by_class = match self.class_name.as_deref() {
            None | Some(GENERIC) => None,
            Some("DiTTransformer2DModel") => Some(ModelFamily::Dit),
            Some("PixArtTransformer2DModel") => Some(ModelFamily::Pixart),
            Some(c) => {
                return Err(format!(
                    "unsupported model class `{c}`: expected DiTTransformer2DModel or PixArtTransformer2DModel"
                ))
            }
        };
        match (by_class, by_norm) {
            (Some(c), Some(n)) if c != n => Err(format!(
                "norm_type is `{}`; {} has `{}`",
                norm_of(n),
                class_of(c),
                norm_of(c)
            )),
            (Some(f), _) | (None, Some(f)) => Ok(Some(f)),
            // Old generic exports of DiT leave norm_type out and switch to
            // adaLN-Zero because num_embeds_ada_norm and patch_size are set.
            (None, None) if self.class_name.is_some() => Ok(Some(ModelFamily::Dit)),
            (None, None) => Ok(None),
        }
    }

    fn resolve(self, expect: Option<ModelFamily>) -> Result<TransformerConfig, String> {
        let generic = self.class_name.as_deref() == Some(GENERIC);
        let family = match (self.named_family()?, expect) {
            (Some(got), Some(want)) if got != want => {
                return Err(match &self.class_name {
                    Some(c) if c != GENERIC => {
                        format!("_class_name is `{c}`, expected {}", class_of(want))
                    }
                    _ => format!(
                        "norm_type is `{}`; only `{}` is supported",
                        norm_of(got),
                        norm_of(want)
                    ),
                });
            }
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) => {
                return Err(
                    "the config names no model class (`_class_name`) or norm type: expected DiTTransformer2DModel or PixArtTransformer2DModel"
                        .into(),
                )
            }
        };
        if generic && family == ModelFamily::Pixart && self.norm_type.is_none() {
            return Err("norm_type is missing; PixArt-α has `ada_norm_single`".into());
        }
        expect_value(
            "activation_fn",
            self.activation_fn.as_deref(),
            "gelu-approximate",
        )?;
        expect_value("attention_type", self.attention_type.as_deref(), "default")?;
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
        let positive = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(format!("`{key}` must be a positive integer, found 0")),
            v => Ok(v.unwrap_or(default)),
        };
        let heads = positive("num_attention_heads", self.num_attention_heads, 16)?;
        let head_dim = positive("attention_head_dim", self.attention_head_dim, 72)?;
        let hidden = heads
            .checked_mul(head_dim)
            .ok_or("num_attention_heads x attention_head_dim overflows")?;
        // Neither class takes `ff_inner_dim` (diffusers ignores the key).
        let mlp_hidden = hidden.saturating_mul(4);
        let in_channels = positive("in_channels", self.in_channels, 4)?;
        let patch = positive("patch_size", self.patch_size, 2)?;
        let input_size = positive(
            "sample_size",
            self.sample_size,
            match family {
                ModelFamily::Dit => 32,
                ModelFamily::Pixart => 128,
            },
        )?;
        if !input_size.is_multiple_of(patch) {
            return Err(format!(
                "sample_size {input_size} is not a multiple of patch_size {patch}"
            ));
        }
        let out_channels = positive(
            "out_channels",
            self.out_channels,
            match family {
                ModelFamily::Pixart if !generic => 8,
                _ => in_channels,
            },
        )?;
        let depth = positive("num_layers", self.num_layers, 28)?;
        let mut cfg = TransformerConfig {
            family,
            depth,
            hidden,
            heads,
            patch,
            input_size,
            in_channels,
            out_channels,
            mlp_hidden,
            num_classes: 0,
            caption_channels: 0,
            caption_tokens: 0,
            norm_eps: 0.0,
            interpolation_scale: 1.0,
            use_additional_conditions: false,
        };
        match family {
            ModelFamily::Dit => {
                if self.cross_attention_dim.is_some() {
                    return Err("cross_attention_dim is set: not a class-conditional DiT".into());
                }
                cfg.num_classes = match (self.num_embeds_ada_norm, generic) {
                    (Some(n), _) => n,
                    (None, false) => 1000,
                    (None, true) => {
                        return Err("num_embeds_ada_norm is missing (the number of classes)".into())
                    }
                };
                cfg.norm_eps = self.norm_eps.unwrap_or(1e-5);
            }
            ModelFamily::Pixart => {
                let cross = self.cross_attention_dim.unwrap_or(1152);
                if cross != hidden {
                    return Err(format!(
                        "cross_attention_dim {cross} differs from the hidden size {hidden}"
                    ));
                }
                cfg.caption_channels = self.caption_channels.ok_or(
                    "caption_channels is missing: a model without a caption projection is not supported",
                )?;
                cfg.caption_tokens = PIXART_CAPTION_TOKENS;
                cfg.interpolation_scale = self
                    .interpolation_scale
                    .unwrap_or((input_size / 64).max(1) as f64);
                cfg.norm_eps = self.norm_eps.unwrap_or(if generic { 1e-5 } else { 1e-6 });
                cfg.use_additional_conditions =
                    self.use_additional_conditions.unwrap_or(input_size == 128);
            }
        }
        Ok(cfg)
    }
}

/// Refuses a string key `name` set to anything but `want` (absent is fine).
fn expect_value(name: &str, got: Option<&str>, want: &str) -> Result<(), String> {
    match got {
        Some(v) if v != want => Err(format!("{name} is `{v}`; only `{want}` is supported")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, expect: Option<ModelFamily>) -> Result<TransformerConfig, String> {
        TransformerConfig::from_json(text, expect).map_err(|e| e.to_string())
    }

    /// Defaults of diffusers 0.42's `__init__` (DiTTransformer2DModel:
    /// out_channels None -> in_channels, num_embeds_ada_norm 1000;
    /// PixArtTransformer2DModel: out_channels 8, sample_size 128).
    #[test]
    fn absent_keys_take_the_class_defaults() {
        let dit = read(r#"{"_class_name": "DiTTransformer2DModel"}"#, None).unwrap();
        assert_eq!(dit.family, ModelFamily::Dit);
        assert_eq!(
            (
                dit.depth,
                dit.hidden,
                dit.heads,
                dit.input_size,
                dit.out_channels
            ),
            (28, 1152, 16, 32, 4)
        );
        assert_eq!(
            (dit.num_classes, dit.norm_eps, dit.mlp_hidden),
            (1000, 1e-5, 4608)
        );
        let e = read(r#"{"_class_name": "Transformer2DModel"}"#, None).unwrap_err();
        assert!(e.contains("num_embeds_ada_norm is missing"), "{e}");

        let px = read(
            r#"{"_class_name": "PixArtTransformer2DModel", "caption_channels": 4096}"#,
            None,
        )
        .unwrap();
        assert_eq!(px.family, ModelFamily::Pixart);
        assert_eq!(
            (px.input_size, px.out_channels, px.caption_tokens),
            (128, 8, 120)
        );
        assert_eq!((px.interpolation_scale, px.norm_eps), (2.0, 1e-6));
        assert!(px.use_additional_conditions);
        let shape = px.shape("p");
        assert_eq!((shape.caption_dim, shape.mlp_ratio), (4096, 4.0));
    }

    #[test]
    fn the_family_must_be_named_and_agree() {
        let e = read("{}", None).unwrap_err();
        assert!(e.contains("names no model class"), "{e}");
        let px = read(r#"{"caption_channels": 8}"#, Some(ModelFamily::Pixart)).unwrap();
        assert_eq!(px.family, ModelFamily::Pixart);
        let e = read(
            r#"{"_class_name": "DiTTransformer2DModel"}"#,
            Some(ModelFamily::Pixart),
        )
        .unwrap_err();
        assert!(e.contains("_class_name is `DiTTransformer2DModel`"), "{e}");
        let e = read(
            r#"{"norm_type": "ada_norm_zero"}"#,
            Some(ModelFamily::Pixart),
        )
        .unwrap_err();
        assert!(e.contains("norm_type is `ada_norm_zero`"), "{e}");
        let e = read(r#"{"_class_name": "UNet2DModel"}"#, None).unwrap_err();
        assert!(e.contains("unsupported model class `UNet2DModel`"), "{e}");
        let e = read(
            r#"{"_class_name": "Transformer2DModel", "norm_type": "ada_norm_single", "caption_channels": 8}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (e.family, e.norm_eps, e.out_channels),
            (ModelFamily::Pixart, 1e-5, 4)
        );
    }

    #[test]
    fn bad_values_are_refused_before_use() {
        for (text, needle) in [
            (
                r#"{"_class_name": "DiTTransformer2DModel", "patch_size": 0}"#,
                "`patch_size` must be a positive integer",
            ),
            (
                r#"{"_class_name": "DiTTransformer2DModel", "sample_size": 9}"#,
                "not a multiple of patch_size 2",
            ),
            (
                r#"{"_class_name": "DiTTransformer2DModel", "num_attention_heads": 4294967296, "attention_head_dim": 4294967296}"#,
                "overflows",
            ),
            (
                r#"{"_class_name": "DiTTransformer2DModel", "num_layers": -1}"#,
                "invalid JSON",
            ),
            (
                r#"{"_class_name": "DiTTransformer2DModel", "cross_attention_dim": 8}"#,
                "not a class-conditional DiT",
            ),
            (
                r#"{"_class_name": "DiTTransformer2DModel", "activation_fn": "gelu"}"#,
                "activation_fn is `gelu`",
            ),
            ("[1]", "expected a JSON object"),
            ("{", "invalid JSON"),
        ] {
            let e = read(text, None).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
