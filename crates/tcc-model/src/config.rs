//! DiT hyper-parameters: presets, conversion from [`ModelShape`] and from
//! the diffusers `config.json` of `DiTTransformer2DModel` (read by
//! [`TransformerConfig`]); the checks and the `config.json` reading that
//! PixArt-α's config shares.

use std::path::Path;

use tcc_core::{ConfigError, ModelFamily, ModelShape, TransformerConfig, TIMESTEP_FREQ_DIM};

use crate::error::{Error, Result};

/// Numerical details in which the diffusers port of DiT differs from the
/// original code. Both read the same weights; the outputs differ noticeably.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Numerics {
    /// eps of the LayerNorm before the MLP (original 1e-6; diffusers
    /// `norm_eps`, default 1e-5). The attention and final LayerNorms use 1e-6
    /// in both.
    pub mlp_norm_eps: f64,
    /// The timestep frequencies are `exp(-ln(10000) k / (128 - shift))`:
    /// original DiT 0, diffusers' `CombinedTimestepLabelEmbeddings` 1.
    pub freq_shift: f64,
}

impl Numerics {
    /// The original DiT code (facebookresearch/DiT `models.py`).
    pub const ORIGINAL: Numerics = Numerics {
        mlp_norm_eps: 1e-6,
        freq_shift: 0.0,
    };

    /// diffusers' `DiTTransformer2DModel` with the given `norm_eps`.
    pub fn diffusers(norm_eps: f64) -> Numerics {
        Numerics {
            mlp_norm_eps: norm_eps,
            freq_shift: 1.0,
        }
    }
}

/// The hyper-parameters of a class-conditional DiT (adaLN-Zero).
#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Hidden size D.
    pub hidden: usize,
    pub heads: usize,
    /// Patch size p.
    pub patch: usize,
    /// Side of the (latent) input; tokens = (input_size / p)^2.
    pub input_size: usize,
    pub in_channels: usize,
    /// 2 x in_channels with learned sigma, else in_channels.
    pub out_channels: usize,
    /// Hidden width of the MLP (mlp_ratio x D).
    pub mlp_hidden: usize,
    /// Number of classes; the null (unconditional) class id equals it.
    pub num_classes: usize,
    pub numerics: Numerics,
}

/// The methods DiT's and PixArt-α's configs share, over the sizes both
/// have (the fields `depth`, `hidden`, `heads`, `patch`, `input_size`,
/// `in_channels`, `out_channels`, `mlp_hidden`).
macro_rules! shared_sizes {
    ($config:ty) => {
        impl $config {
            /// Whether the model predicts a variance too (out = 2 x in
            /// channels).
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

            /// The sizes both families have: (name in checks, name in
            /// messages about a config file, value).
            fn shared_sizes(&self) -> [(&'static str, &'static str, usize); 8] {
                [
                    ("depth", "depth", self.depth),
                    ("hidden", "hidden size", self.hidden),
                    ("heads", "heads", self.heads),
                    ("patch", "patch", self.patch),
                    ("input_size", "input size", self.input_size),
                    ("in_channels", "in channels", self.in_channels),
                    ("out_channels", "out channels", self.out_channels),
                    ("mlp_hidden", "MLP width", self.mlp_hidden),
                ]
            }

            /// Checks that the shared sizes and the family's `own` (name,
            /// value) are positive and bounded and fit together.
            fn check_sizes_with(&self, own: &[(&str, usize)]) -> std::result::Result<(), String> {
                let shared = self.shared_sizes();
                let mut sizes: Vec<(&str, usize)> =
                    shared.iter().map(|&(n, _, v)| (n, v)).collect();
                sizes.extend_from_slice(own);
                let (hidden, heads) = (self.hidden, self.heads);
                $crate::config::check_sizes(&sizes, hidden, heads, self.input_size, self.patch)
            }

            /// Refuses a config file (`self`, read from `file`) whose sizes
            /// differ from those of the requested `want`; `own`: the
            /// family's other sizes, (name, found, requested).
            pub(crate) fn check_same_sizes(
                &self,
                file: &std::path::Path,
                want: &Self,
                own: &[(&str, usize, usize)],
            ) -> $crate::error::Result<()> {
                let shared = self.shared_sizes().into_iter().zip(want.shared_sizes());
                let fields = shared.map(|((_, n, g), (_, _, w))| (n, g, w));
                for (name, g, w) in fields.chain(own.iter().copied()) {
                    if g != w {
                        return Err($crate::error::Error::Config(format!(
                            "{}: {name} is {g}, but the requested model has {w}",
                            file.display()
                        )));
                    }
                }
                Ok(())
            }
        }
    };
}
pub(crate) use shared_sizes;

shared_sizes!(DitConfig);

/// The DiT model sizes of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DitSize {
    S,
    B,
    L,
    XL,
}

impl DitSize {
    /// (depth, hidden, heads)
    fn dims(self) -> (usize, usize, usize) {
        match self {
            DitSize::S => (12, 384, 6),
            DitSize::B => (12, 768, 12),
            DitSize::L => (24, 1024, 16),
            DitSize::XL => (28, 1152, 16),
        }
    }

    fn parse(s: &str) -> Option<DitSize> {
        Some(match s {
            "s" => DitSize::S,
            "b" => DitSize::B,
            "l" => DitSize::L,
            "xl" => DitSize::XL,
            _ => return None,
        })
    }
}

impl DitConfig {
    /// A paper configuration: `size`, patch 2, 4 or 8, image resolution 256
    /// or 512 (latent side = resolution / 8), 4 latent channels, learned
    /// sigma, 1000 classes, original numerics.
    pub fn preset(size: DitSize, patch: usize, resolution: usize) -> Result<DitConfig> {
        if ![2, 4, 8].contains(&patch) || ![256, 512].contains(&resolution) {
            return Err(Error::Config(format!(
                "no DiT preset with patch {patch} at {resolution} px (patch 2/4/8, 256/512 px)"
            )));
        }
        let (depth, hidden, heads) = size.dims();
        Ok(DitConfig {
            depth,
            hidden,
            heads,
            patch,
            input_size: resolution / 8,
            in_channels: 4,
            out_channels: 8,
            mlp_hidden: 4 * hidden,
            num_classes: 1000,
            numerics: Numerics::ORIGINAL,
        })
    }

    /// A preset by name: `dit-xl-2-256`, `DiT-B/4-512`, `dit-s-8` (256 px
    /// when the resolution is left out). Case-insensitive.
    pub fn preset_by_name(name: &str) -> Result<DitConfig> {
        let bad = || {
            Error::Config(format!(
                "unknown DiT preset `{name}` (e.g. dit-xl-2-256, DiT-B/4-512)"
            ))
        };
        let lower = name.to_ascii_lowercase().replace('/', "-");
        let rest = lower.strip_prefix("dit-").ok_or_else(bad)?;
        let mut parts = rest.split('-');
        let size = parts.next().and_then(DitSize::parse).ok_or_else(bad)?;
        let patch = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let resolution = match parts.next() {
            None => 256,
            Some(r) => r.parse().map_err(|_| bad())?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        DitConfig::preset(size, patch, resolution)
    }

    /// The DiT described by a model shape (original numerics).
    pub fn from_shape(shape: &ModelShape) -> Result<DitConfig> {
        if shape.family != ModelFamily::Dit {
            return Err(Error::Config(format!(
                "model `{}` is a {:?} model, not a DiT",
                shape.name, shape.family
            )));
        }
        let cfg = DitConfig {
            depth: shape.depth,
            hidden: shape.hidden,
            heads: shape.heads,
            patch: shape.patch,
            input_size: shape.input_size,
            in_channels: shape.in_channels,
            out_channels: shape.out_channels,
            mlp_hidden: shape.mlp_hidden(),
            num_classes: shape.num_classes,
            numerics: Numerics::ORIGINAL,
        };
        cfg.validate()
            .map_err(|e| Error::Config(format!("model `{}`: {e}", shape.name)))?;
        Ok(cfg)
    }

    /// The model shape of this config, named `name`.
    pub fn to_shape(&self, name: &str) -> ModelShape {
        ModelShape {
            name: name.to_string(),
            family: ModelFamily::Dit,
            depth: self.depth,
            hidden: self.hidden,
            heads: self.heads,
            patch: self.patch,
            input_size: self.input_size,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            mlp_ratio: self.mlp_hidden as f64 / self.hidden as f64,
            num_classes: self.num_classes,
            caption_tokens: 0,
            caption_dim: 0,
        }
    }

    /// The null (unconditional) class id.
    pub fn null_class(&self) -> usize {
        self.num_classes
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.check_sizes_with(&[])?;
        if self.num_classes > ModelShape::MAX_CLASSES {
            return Err(format!(
                "num_classes {} is more than the {} tcc accepts",
                self.num_classes,
                ModelShape::MAX_CLASSES
            ));
        }
        check_positive("norm eps", self.numerics.mlp_norm_eps)?;
        let half = (TIMESTEP_FREQ_DIM / 2) as f64;
        if !(self.numerics.freq_shift.is_finite() && self.numerics.freq_shift < half) {
            return Err(format!(
                "timestep frequency shift {} is out of range",
                self.numerics.freq_shift
            ));
        }
        Ok(())
    }

    /// Reads the `config.json` of a diffusers `DiTTransformer2DModel` (also
    /// the older `Transformer2DModel` export of the DiT checkpoints), with
    /// diffusers numerics.
    pub fn from_diffusers_config(path: &Path) -> Result<DitConfig> {
        read_diffusers_config(path, ModelFamily::Dit, DitConfig::from_transformer)
    }

    /// The config of a diffusers `config.json` given as text; `path` names
    /// it in messages.
    pub fn from_diffusers_json(text: &str, path: &Path) -> Result<DitConfig> {
        parse_diffusers_json(text, path, ModelFamily::Dit, DitConfig::from_transformer)
    }

    /// The DiT of a diffusers config, with diffusers numerics.
    fn from_transformer(t: TransformerConfig) -> std::result::Result<DitConfig, String> {
        let cfg = DitConfig {
            depth: t.depth,
            hidden: t.hidden,
            heads: t.heads,
            patch: t.patch,
            input_size: t.input_size,
            in_channels: t.in_channels,
            out_channels: t.out_channels,
            mlp_hidden: t.mlp_hidden,
            num_classes: t.num_classes,
            numerics: Numerics::diffusers(t.norm_eps),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Checks that the `positive` sizes are, that `hidden` splits into `heads`
/// and into the 4 quarters of the 2-D sin-cos position embedding, and that
/// `patch` divides `input_size`.
pub(crate) fn check_sizes(
    positive: &[(&str, usize)],
    hidden: usize,
    heads: usize,
    input_size: usize,
    patch: usize,
) -> std::result::Result<(), String> {
    for &(name, v) in positive {
        if v == 0 {
            return Err(format!("{name} must be positive"));
        }
        let max = match name {
            "depth" => ModelShape::MAX_DEPTH,
            "input_size" | "patch" => ModelShape::MAX_INPUT_SIZE,
            "caption_tokens" => ModelShape::MAX_CAPTION_TOKENS,
            _ => ModelShape::MAX_WIDTH,
        };
        if v > max {
            return Err(format!("{name} {v} is more than the {max} tcc accepts"));
        }
    }
    if !hidden.is_multiple_of(heads) {
        return Err(format!("hidden {hidden} is not divisible by heads {heads}"));
    }
    if !hidden.is_multiple_of(4) {
        return Err(format!("hidden {hidden} is not divisible by 4"));
    }
    if !input_size.is_multiple_of(patch) {
        return Err(format!(
            "input size {input_size} is not divisible by patch {patch}"
        ));
    }
    Ok(())
}

/// Checks that `v` is positive and finite; `what` names it.
pub(crate) fn check_positive(what: &str, v: f64) -> std::result::Result<(), String> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{what} {v} must be positive"))
    }
}

/// The most bytes of a `config.json` or weights index read (real ones
/// have a few kB).
pub(crate) const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads a diffusers `config.json` of a `family` model and converts it (see
/// [`parse_diffusers_json`]).
pub(crate) fn read_diffusers_config<C>(
    path: &Path,
    family: ModelFamily,
    into_config: impl FnOnce(TransformerConfig) -> std::result::Result<C, String>,
) -> Result<C> {
    let text = tcc_fs::read_input_text(path, MAX_JSON_BYTES).map_err(|e| Error::io(path, e))?;
    parse_diffusers_json(&text, path, family, into_config)
}

/// Reads the text of a diffusers `config.json` of a `family` model and
/// converts it with `into_config`. Errors name `path`, and the line and
/// column of bad JSON.
pub(crate) fn parse_diffusers_json<C>(
    text: &str,
    path: &Path,
    family: ModelFamily,
    into_config: impl FnOnce(TransformerConfig) -> std::result::Result<C, String>,
) -> Result<C> {
    let at = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    match TransformerConfig::from_json(text, Some(family)) {
        Ok(t) => into_config(t).map_err(at),
        Err(ConfigError::Json(e)) => {
            Err(at(format!("line {}, column {}: {e}", e.line(), e.column())))
        }
        Err(ConfigError::Invalid(msg)) => Err(at(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_cover_paper_sizes() {
        let xl = DitConfig::preset_by_name("DiT-XL/2").unwrap();
        assert_eq!(
            (xl.depth, xl.hidden, xl.heads, xl.patch, xl.input_size),
            (28, 1152, 16, 2, 32)
        );
        assert_eq!(xl.tokens(), 256);
        assert!(xl.learn_sigma());
        let b = DitConfig::preset_by_name("dit-b-4-512").unwrap();
        assert_eq!(
            (b.depth, b.hidden, b.heads, b.patch, b.input_size),
            (12, 768, 12, 4, 64)
        );
        for size in [DitSize::S, DitSize::B, DitSize::L, DitSize::XL] {
            for patch in [2, 4, 8] {
                for res in [256, 512] {
                    let c = DitConfig::preset(size, patch, res).unwrap();
                    c.validate().unwrap();
                    assert_eq!(c.mlp_hidden, 4 * c.hidden);
                }
            }
        }
        for bad in [
            "dit-xl-3",
            "dit-m-2",
            "xl-2",
            "dit-xl-2-300",
            "dit-xl-2-256-1",
        ] {
            assert!(DitConfig::preset_by_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shape_round_trip() {
        for name in ModelShape::PRESETS {
            let shape = ModelShape::preset(name).unwrap();
            match DitConfig::from_shape(&shape) {
                Ok(cfg) => assert_eq!(cfg.to_shape(name), shape),
                Err(e) => {
                    assert_eq!(shape.family, ModelFamily::Pixart);
                    assert!(e.to_string().contains("not a DiT"), "{e}");
                }
            }
        }
        let xl = ModelShape::preset("dit-xl-2-256").unwrap();
        assert_eq!(
            DitConfig::from_shape(&xl).unwrap(),
            DitConfig::preset(DitSize::XL, 2, 256).unwrap()
        );
    }

    /// Sizes a config file may hold but no model can have are refused
    /// before anything is allocated, and never overflow.
    #[test]
    fn absurd_config_sizes_are_refused() {
        let p = Path::new("config.json");
        let base = r#""_class_name": "DiTTransformer2DModel", "num_layers": 2,
            "sample_size": 8, "patch_size": 2, "norm_type": "ada_norm_zero""#;
        let sizes = |classes: &str, cin: &str, cout: &str, heads: &str, dim: &str| {
            format!(
                r#"{{{base}, "num_embeds_ada_norm": {classes}, "in_channels": {cin}, "out_channels": {cout}, "num_attention_heads": {heads}, "attention_head_dim": {dim}}}"#
            )
        };
        assert!(DitConfig::from_diffusers_json(&sizes("10", "4", "8", "2", "8"), p).is_ok());
        for (text, needle) in [
            (
                sizes("18446744073709551615", "4", "8", "2", "8"),
                "num_classes",
            ),
            (
                sizes("10", "1000000000000000", "8", "2", "8"),
                "in_channels 1000000000000000 is more than",
            ),
            (
                sizes("10", "4", "1000000000", "2", "8"),
                "out_channels 1000000000 is more than",
            ),
            (
                sizes("10", "4", "8", "4294967296", "4294967296"),
                "overflows",
            ),
        ] {
            let e = DitConfig::from_diffusers_json(&text, p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
