use serde::{Deserialize, Serialize};

/// A sub-layer of a transformer block whose output is added to the residual
/// stream. A branch output is always taken *before* the adaLN gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branch {
    /// Self-attention.
    Attn,
    /// Cross-attention to the caption tokens (PixArt only; it has no gate).
    Cross,
    /// The feed-forward network.
    Mlp,
}

impl Branch {
    pub const ALL: [Branch; 3] = [Branch::Attn, Branch::Cross, Branch::Mlp];

    pub fn name(self) -> &'static str {
        match self {
            Branch::Attn => "attn",
            Branch::Cross => "cross",
            Branch::Mlp => "mlp",
        }
    }

    pub fn from_name(name: &str) -> Option<Branch> {
        Branch::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl std::fmt::Display for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Width of the sinusoidal timestep embedding that both DiT and PixArt-α
/// feed to their timestep MLP.
pub const TIMESTEP_FREQ_DIM: usize = 256;

/// Which kind of DiT a shape describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// Class-conditional DiT with adaLN-Zero (Peebles & Xie).
    Dit,
    /// Text-conditional PixArt-α with adaLN-single and cross-attention.
    Pixart,
}

/// The shape of a model: everything the plan compiler and the cost model
/// need, and nothing about weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Preset name (`tiny`, `dit-xl-2-256`, ...) or the path it was read from.
    pub name: String,
    pub family: ModelFamily,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Hidden size D.
    pub hidden: usize,
    pub heads: usize,
    /// Patch size p: tokens = (input_size / p)^2.
    pub patch: usize,
    /// Spatial size of the model input (latent side for latent models).
    pub input_size: usize,
    pub in_channels: usize,
    /// Output channels (2 x in_channels with learned sigma).
    pub out_channels: usize,
    /// MLP hidden size = mlp_ratio x D.
    pub mlp_ratio: f64,
    /// Number of classes (DiT); the null class id equals this number.
    pub num_classes: usize,
    /// Caption tokens attended by cross-attention (PixArt), 0 for DiT.
    pub caption_tokens: usize,
    /// Width of the caption embeddings before the caption projection (PixArt).
    pub caption_dim: usize,
}

impl ModelShape {
    /// Image tokens per sample.
    pub fn tokens(&self) -> usize {
        let side = self.input_size / self.patch;
        side * side
    }

    /// The branches of every block, in execution order.
    pub fn branches(&self) -> &'static [Branch] {
        match self.family {
            ModelFamily::Dit => &[Branch::Attn, Branch::Mlp],
            ModelFamily::Pixart => &[Branch::Attn, Branch::Cross, Branch::Mlp],
        }
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden as f64 * self.mlp_ratio).round() as usize
    }

    /// The most blocks a model may have.
    pub const MAX_DEPTH: usize = 1000;
    /// The widest a hidden size, MLP hidden size, channel count or caption
    /// width may be: 16x the widest released DiT, and small enough that
    /// the product of two sizes never overflows.
    pub const MAX_WIDTH: usize = 1 << 16;
    /// The largest (latent) input side.
    pub const MAX_INPUT_SIZE: usize = 1 << 13;
    pub const MAX_CLASSES: usize = 1 << 24;
    pub const MAX_CAPTION_TOKENS: usize = 1 << 16;

    /// Refuses sizes beyond the limits above (a config file can say
    /// anything; a model that large would ask for petabytes), naming the
    /// first one.
    pub fn check_limits(&self) -> Result<(), String> {
        let sizes = [
            ("depth", self.depth, Self::MAX_DEPTH),
            ("hidden size", self.hidden, Self::MAX_WIDTH),
            ("heads", self.heads, Self::MAX_WIDTH),
            ("MLP hidden size", self.mlp_hidden(), Self::MAX_WIDTH),
            ("patch size", self.patch, Self::MAX_INPUT_SIZE),
            ("input size", self.input_size, Self::MAX_INPUT_SIZE),
            ("input channels", self.in_channels, Self::MAX_WIDTH),
            ("output channels", self.out_channels, Self::MAX_WIDTH),
            ("classes", self.num_classes, Self::MAX_CLASSES),
            (
                "caption tokens",
                self.caption_tokens,
                Self::MAX_CAPTION_TOKENS,
            ),
            ("caption width", self.caption_dim, Self::MAX_WIDTH),
        ];
        for (what, v, max) in sizes {
            if v > max {
                return Err(format!("{what} {v} is more than the {max} tcc accepts"));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio >= 0.0) {
            return Err(format!("MLP ratio {} is not a size ratio", self.mlp_ratio));
        }
        Ok(())
    }

    /// The number of weights and biases of the model, counted from its
    /// layer sizes (position embeddings included): what loading it costs.
    pub fn parameter_count(&self) -> u128 {
        let (d, f) = (self.hidden as u128, self.mlp_hidden() as u128);
        let p2 = (self.patch * self.patch) as u128;
        let (cin, cout) = (self.in_channels as u128, self.out_channels as u128);
        let tokens = self.tokens() as u128;
        // Patch embedding, timestep MLP (256 -> D -> D), position embedding.
        let freq = TIMESTEP_FREQ_DIM as u128;
        let embed = cin * p2 * d + d + freq * d + d + d * d + d + tokens * d;
        let attn = 4 * (d * d + d);
        let mlp = d * f + f + f * d + d;
        let out = d * p2 * cout + p2 * cout;
        match self.family {
            ModelFamily::Dit => {
                let labels = (self.num_classes as u128 + 1) * d;
                let block = attn + mlp + d * 6 * d + 6 * d;
                embed + labels + self.depth as u128 * block + out + d * 2 * d + 2 * d
            }
            ModelFamily::Pixart => {
                let caption = self.caption_dim as u128 * d + d + d * d + d;
                let shared = d * 6 * d + 6 * d;
                let block = 2 * attn + mlp + 6 * d;
                embed + caption + shared + self.depth as u128 * block + out + 2 * d
            }
        }
    }

    /// The built-in presets, by name.
    pub fn preset(name: &str) -> Option<ModelShape> {
        let dit = |depth, hidden, heads, patch, input_size: usize| ModelShape {
            name: name.to_string(),
            family: ModelFamily::Dit,
            depth,
            hidden,
            heads,
            patch,
            input_size,
            in_channels: 4,
            out_channels: 8,
            mlp_ratio: 4.0,
            num_classes: 1000,
            caption_tokens: 0,
            caption_dim: 0,
        };
        let pixart = |input_size: usize| ModelShape {
            name: name.to_string(),
            family: ModelFamily::Pixart,
            depth: 28,
            hidden: 1152,
            heads: 16,
            patch: 2,
            input_size,
            in_channels: 4,
            out_channels: 8,
            mlp_ratio: 4.0,
            num_classes: 0,
            caption_tokens: 120,
            caption_dim: 4096,
        };
        Some(match name {
            // The embedded testbed model: pixel space, 32x32 RGB, 10 classes.
            "tiny" => ModelShape {
                in_channels: 3,
                out_channels: 3,
                num_classes: 10,
                ..dit(6, 128, 4, 2, 32)
            },
            // The second embedded testbed: 160 classes, 4x32x32 Haar latents
            // of grey 64x64 images, no learned sigma; hidden width 128 <= 160
            // classes, like the paper's regime of many class rows.
            "shapes160" => ModelShape {
                out_channels: 4,
                num_classes: 160,
                ..dit(12, 128, 4, 2, 32)
            },
            "dit-s-2-256" => dit(12, 384, 6, 2, 32),
            "dit-b-2-256" => dit(12, 768, 12, 2, 32),
            "dit-l-2-256" => dit(24, 1024, 16, 2, 32),
            "dit-xl-2-256" => dit(28, 1152, 16, 2, 32),
            "dit-xl-2-512" => dit(28, 1152, 16, 2, 64),
            "pixart-alpha-256" => pixart(32),
            "pixart-alpha-512" => pixart(64),
            _ => return None,
        })
    }

    /// Names accepted by [`ModelShape::preset`].
    pub const PRESETS: &'static [&'static str] = &[
        "tiny",
        "shapes160",
        "dit-s-2-256",
        "dit-b-2-256",
        "dit-l-2-256",
        "dit-xl-2-256",
        "dit-xl-2-512",
        "pixart-alpha-256",
        "pixart-alpha-512",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_with_whole_token_grid() {
        for name in ModelShape::PRESETS {
            let m = ModelShape::preset(name).expect(name);
            assert_eq!(m.input_size % m.patch, 0, "{name}");
            assert_eq!(m.hidden % m.heads, 0, "{name}");
        }
        assert_eq!(ModelShape::preset("dit-xl-2-256").unwrap().tokens(), 256);
        assert!(ModelShape::preset("nope").is_none());
    }

    #[test]
    fn branch_names_round_trip() {
        for b in Branch::ALL {
            assert_eq!(Branch::from_name(b.name()), Some(b));
        }
    }

    /// DiT-XL/2 has 675,129,632 parameters: the count DiT's `train.py`
    /// prints (`sum(p.numel() for p in model.parameters())`, the frozen
    /// position embedding included), the paper's "675M".
    #[test]
    fn parameter_count_matches_the_released_dit() {
        let xl = ModelShape::preset("dit-xl-2-256").unwrap();
        assert_eq!(xl.parameter_count(), 675_129_632);
    }

    #[test]
    fn limits_name_the_size_that_is_too_large() {
        for name in ModelShape::PRESETS {
            ModelShape::preset(name).unwrap().check_limits().unwrap();
        }
        let mut m = ModelShape::preset("tiny").unwrap();
        m.in_channels = usize::MAX;
        let e = m.check_limits().unwrap_err();
        assert!(e.contains("input channels"), "{e}");
        m.in_channels = 3;
        m.num_classes = usize::MAX;
        assert!(m.check_limits().unwrap_err().contains("classes"));
    }
}
