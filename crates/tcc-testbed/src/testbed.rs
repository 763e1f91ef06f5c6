//! Which embedded testbed: its data, classifier assets and model name.

use candle_core::{DType, Tensor};
use tcc_data::{Dataset, Shapes160};

use crate::classifier::ClassifierArch;
use crate::error::{Result, TestbedError};

/// An embedded testbed: a procedural data set, a classifier / feature
/// network trained on it, the real data's feature statistics, and a DiT
/// named in schedules by [`Testbed::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Testbed {
    /// 10 shape classes, RGB 32x32 in pixel space; the 6-block `tiny` DiT.
    Tiny,
    /// 160 classes (`tcc_data::Shapes160`), grey 64x64 images as 4x32x32
    /// Haar latents; the 12-block `shapes160` DiT.
    Shapes160,
}

impl Testbed {
    pub const ALL: [Testbed; 2] = [Testbed::Tiny, Testbed::Shapes160];

    /// The model name that selects this testbed in a schedule
    /// (`[model] name = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Testbed::Tiny => "tiny",
            Testbed::Shapes160 => "shapes160",
        }
    }

    /// The testbed whose model is called `name`.
    pub fn from_name(name: &str) -> Option<Testbed> {
        Testbed::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn classifier_arch(self) -> ClassifierArch {
        match self {
            Testbed::Tiny => ClassifierArch::TINY,
            Testbed::Shapes160 => ClassifierArch::SHAPES160,
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        self.classifier_arch().classes
    }

    /// Shape `[channels, side, side]` of one model input (and classifier
    /// input): an image for `tiny`, a Haar latent for `shapes160`.
    pub fn input_shape(self) -> [usize; 3] {
        self.classifier_arch().input
    }

    /// Real samples `start .. start + n` of the data set of `seed`, as
    /// model inputs (`[n, C, H, W]` back to back), and their classes.
    pub fn real_batch(self, seed: u64, start: u64, n: usize) -> (Vec<f32>, Vec<usize>) {
        match self {
            Testbed::Tiny => Dataset::new(seed).batch(start, n),
            Testbed::Shapes160 => Shapes160::new(seed).latent_batch(start, n),
        }
    }

    /// Model outputs `[n, C, H, W]` as RGB images `[n, 3, side, side]` in
    /// `[-1, 1]`-range values, and `side`: `tiny`'s are images already,
    /// `shapes160`'s latents are unfolded into grey 64x64 images, written
    /// to all three channels.
    pub fn to_images(self, values: &[f32], n: usize) -> Result<(Vec<f32>, usize)> {
        let [c, h, w] = self.input_shape();
        let err = |message: String| TestbedError::Input {
            name: format!("{} samples", self.name()),
            message,
        };
        if values.len() != n * c * h * w {
            return Err(err(format!(
                "{} values are not {n} model outputs [{c}, {h}, {w}]",
                values.len()
            )));
        }
        match self {
            Testbed::Tiny => Ok((values.to_vec(), h)),
            Testbed::Shapes160 => {
                let grey =
                    tcc_data::haar_unfold(values, [n, c, h, w]).map_err(|e| err(e.to_string()))?;
                let plane = 4 * h * w;
                let rgb = grey
                    .chunks_exact(plane)
                    .flat_map(|g| [g, g, g].concat())
                    .collect();
                Ok((rgb, 2 * h))
            }
        }
    }

    /// Model outputs `x` (`[n, C, H, W]`) as the classifier reads them: the
    /// images they stand for clamped to the data's range `[-1, 1]` (for
    /// `shapes160`: unfolded, clamped and folded again).
    pub fn clamp_to_data_range(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Testbed::Tiny => Ok(x.clamp(-1f32, 1f32)?),
            Testbed::Shapes160 => {
                let [c, h, w] = self.input_shape();
                let n = x.dim(0)?;
                if x.dims() != [n, c, h, w] {
                    return Err(TestbedError::Input {
                        name: "shapes160 samples".into(),
                        message: format!("shape {:?}, expected [n, {c}, {h}, {w}]", x.dims()),
                    });
                }
                let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let invalid = |e: tcc_data::DataError| TestbedError::Input {
                    name: "shapes160 samples".into(),
                    message: e.to_string(),
                };
                let mut img = tcc_data::haar_unfold(&v, [n, c, h, w]).map_err(invalid)?;
                img.iter_mut().for_each(|p| *p = p.clamp(-1.0, 1.0));
                let back = tcc_data::haar_fold(&img, [n, c / 4, 2 * h, 2 * w]).map_err(invalid)?;
                Ok(Tensor::from_vec(back, (n, c, h, w), x.device())?)
            }
        }
    }

    /// Path of the classifier's weights, relative to this crate's folder.
    pub fn classifier_asset(self) -> &'static str {
        match self {
            Testbed::Tiny => "assets/classifier.safetensors",
            Testbed::Shapes160 => "assets/shapes160/classifier.safetensors",
        }
    }

    pub(crate) fn classifier_bytes(self) -> &'static [u8] {
        match self {
            Testbed::Tiny => include_bytes!("../assets/classifier.safetensors"),
            Testbed::Shapes160 => include_bytes!("../assets/shapes160/classifier.safetensors"),
        }
    }

    /// Path of the reference feature statistics, relative to this crate's
    /// folder.
    pub fn reference_asset(self) -> &'static str {
        match self {
            Testbed::Tiny => "assets/reference_stats.safetensors",
            Testbed::Shapes160 => "assets/shapes160/reference_stats.safetensors",
        }
    }

    pub(crate) fn reference_bytes(self) -> &'static [u8] {
        match self {
            Testbed::Tiny => include_bytes!("../assets/reference_stats.safetensors"),
            Testbed::Shapes160 => include_bytes!("../assets/shapes160/reference_stats.safetensors"),
        }
    }
}
