//! The testbeds' classifiers, which double as their feature networks.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use sha2::{Digest, Sha256};
use tcc_metrics::FeatureStats;

use crate::error::{Result, TestbedError};
use crate::Testbed;

/// Dimension of the feature vector (the globally average-pooled output of
/// the last convolution), the same for every testbed.
pub const FEATURE_DIM: usize = 128;

/// Seed of the weight initialisation used for the shipped weights.
pub const CLASSIFIER_SEED: u64 = 0;

/// `(in_channels, out_channels, stride)` of the 3x3 convolutions (padding
/// 1), each followed by ReLU, and the input `[channels, side, side]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifierArch {
    pub input: [usize; 3],
    pub convs: &'static [(usize, usize, usize)],
    pub classes: usize,
}

impl ClassifierArch {
    /// `tiny`'s: RGB 32x32 -> 16 -> 8 -> 8 -> 4 pixels. Downsampling at
    /// once keeps training cheap on a CPU; the last layer's receptive field
    /// (23 pixels) spans most of a shape.
    pub const TINY: ClassifierArch = ClassifierArch {
        input: [3, 32, 32],
        convs: &[(3, 32, 2), (32, 64, 2), (64, 96, 1), (96, FEATURE_DIM, 2)],
        classes: 10,
    };
    /// `shapes160`'s, on the 4x32x32 Haar latents (each latent pixel is a
    /// 2x2 image block): 32 -> 16 -> 8 -> 8 -> 4; the last layer's receptive
    /// field (23 latent pixels, 46 image pixels) spans the large shapes.
    pub const SHAPES160: ClassifierArch = ClassifierArch {
        input: [4, 32, 32],
        convs: &[(4, 32, 2), (32, 64, 2), (64, 128, 1), (128, FEATURE_DIM, 2)],
        classes: 160,
    };
}

/// A small CNN over a testbed's model inputs (`tiny`: RGB images in
/// `[-1, 1]`; `shapes160`: Haar latents): 3x3 convolutions with ReLU
/// ([`ClassifierArch`]), global average pooling to a [`FEATURE_DIM`]-vector,
/// then a linear layer to the class logits.
///
/// Parameter names: `conv{i}.weight`, `conv{i}.bias`, `head.weight`,
/// `head.bias`.
#[derive(Clone, Debug)]
pub struct Classifier {
    arch: ClassifierArch,
    convs: Vec<Conv3x3>,
    head: Linear,
}

impl Classifier {
    /// Builds `testbed`'s network from `vb` (a file's tensors, or a
    /// [`VarMap`] for training).
    pub fn new(testbed: Testbed, vb: VarBuilder) -> Result<Self> {
        let arch = testbed.classifier_arch();
        let convs = arch
            .convs
            .iter()
            .enumerate()
            .map(|(i, &(cin, cout, stride))| {
                Conv3x3::new(cin, cout, stride, vb.pp(format!("conv{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let head = candle_nn::linear(FEATURE_DIM, arch.classes, vb.pp("head"))?;
        Ok(Self { arch, convs, head })
    }

    /// `testbed`'s weights embedded in the binary.
    pub fn load_embedded(testbed: Testbed, device: &Device) -> Result<Self> {
        let err = |e: candle_core::Error| TestbedError::File {
            path: format!("<embedded>/{}", testbed.classifier_asset()).into(),
            message: e.to_string(),
        };
        let vb = VarBuilder::from_slice_safetensors(testbed.classifier_bytes(), DType::F32, device)
            .map_err(err)?;
        Self::new(testbed, vb).map_err(|e| match e {
            TestbedError::Candle(e) => err(e),
            e => e,
        })
    }

    /// `testbed`'s network with weights from a safetensors file (as
    /// written by `train_classifier`).
    pub fn load(testbed: Testbed, path: &Path, device: &Device) -> Result<Self> {
        let err = |message: String| TestbedError::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
            .map_err(|e| err(e.to_string()))?;
        Self::new(testbed, vb).map_err(|e| err(e.to_string()))
    }

    /// SHA-256 (hex) of `testbed`'s embedded weights file: identifies the
    /// feature network in statistics computed with it.
    pub fn embedded_sha256(testbed: Testbed) -> String {
        format!("{:x}", Sha256::digest(testbed.classifier_bytes()))
    }

    /// The architecture of this network.
    pub fn arch(&self) -> &ClassifierArch {
        &self.arch
    }

    /// A fresh [`VarMap`] holding every parameter of `testbed`'s network,
    /// initialised from `seed` (candle's CPU generator cannot be seeded):
    /// conv and linear weights Kaiming-normal (std `sqrt(2 / fan_in)`),
    /// biases zero. Build the network over it with
    /// `Classifier::new(testbed, VarBuilder::from_varmap(..))`.
    pub fn seeded_varmap(testbed: Testbed, seed: u64, device: &Device) -> Result<VarMap> {
        let arch = testbed.classifier_arch();
        let mut rng = SplitMix64(seed);
        let varmap = VarMap::new();
        let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, &(cin, cout, _)) in arch.convs.iter().enumerate() {
            shapes.push((format!("conv{i}.weight"), vec![cout, cin, 3, 3]));
            shapes.push((format!("conv{i}.bias"), vec![cout]));
        }
        shapes.push(("head.weight".into(), vec![arch.classes, FEATURE_DIM]));
        shapes.push(("head.bias".into(), vec![arch.classes]));
        {
            let mut data = varmap.data().lock().expect("fresh VarMap lock");
            for (name, shape) in shapes {
                let len: usize = shape.iter().product();
                let values: Vec<f32> = if name.ends_with(".bias") {
                    vec![0.0; len]
                } else {
                    let fan_in: usize = shape[1..].iter().product();
                    let std = (2.0 / fan_in as f64).sqrt();
                    (0..len).map(|_| (rng.normal() * std) as f32).collect()
                };
                let t = Tensor::from_vec(values, shape, device)?;
                data.insert(name, candle_core::Var::from_tensor(&t)?);
            }
        }
        Ok(varmap)
    }

    /// Pooled features `[B, FEATURE_DIM]` of inputs `[B, C, H, W]` (the
    /// architecture's input shape).
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        check_images(images, &self.arch)?;
        // Channels-last, so each convolution is one matmul over patches.
        let mut x = images.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?;
        for conv in &self.convs {
            x = conv.forward(&x)?;
        }
        Ok(x.mean(2)?.mean(1)?)
    }

    /// Class logits `[B, classes]`.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let f = self.features(images)?;
        Ok(self.head.forward(&f)?)
    }

    /// Predicted class of each image.
    pub fn predict(&self, images: &Tensor) -> Result<Vec<usize>> {
        let idx = self.logits(images)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        Ok(idx.into_iter().map(|c| c as usize).collect())
    }

    /// Adds the features of `images` to `stats` (of dimension [`FEATURE_DIM`]).
    pub fn accumulate_features(&self, stats: &mut FeatureStats, images: &Tensor) -> Result<()> {
        let f = self.features(images)?.to_dtype(DType::F64)?;
        let rows = f.flatten_all()?.to_vec1::<f64>()?;
        stats.add_batch(&rows)?;
        Ok(())
    }
}

/// A 3x3 convolution with padding 1, stride 1 or 2, then ReLU, on
/// channels-last tensors `[B, H, W, C]`, written as im2col (one
/// `index_select` of pixel rows, with out-of-image taps reading an appended
/// zero pixel) and one matmul. Same result as `conv2d`, but its backward
/// pass is an `index_add` and matmuls, several times faster on the CPU than
/// candle's `conv2d` gradients (a direct `conv_transpose2d`). The weight is
/// stored in the usual `[out, in, 3, 3]` layout.
#[derive(Clone, Debug)]
struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Conv3x3 {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, 3, 3), "weight")?,
            bias: vb.get(cout, "bias")?,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (cout, ..) = self.weight.dims4()?;
        let s = self.stride;
        let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
        // Source pixel of each (output pixel, tap), taps (ky, kx) row-major.
        let zero = (h * w) as u32;
        let mut index = Vec::with_capacity(ho * wo * 9);
        for i in 0..ho {
            for j in 0..wo {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (r, q) = ((i * s + dy) as isize - 1, (j * s + dx) as isize - 1);
                        let inside = (0..h as isize).contains(&r) && (0..w as isize).contains(&q);
                        index.push(if inside {
                            (r as usize * w + q as usize) as u32
                        } else {
                            zero
                        });
                    }
                }
            }
        }
        let index = Tensor::from_vec(index, ho * wo * 9, x.device())?;
        let pixels = Tensor::cat(
            &[
                &x.reshape((b, h * w, c))?,
                &Tensor::zeros((b, 1, c), x.dtype(), x.device())?,
            ],
            1,
        )?;
        let patches = pixels.index_select(&index, 1)?;
        // [out, in, ky, kx] -> [ky, kx, in, out]: rows in the patches' order.
        let w2 = self.weight.permute((2, 3, 1, 0))?.reshape((9 * c, cout))?;
        let y = patches
            .reshape((b * ho * wo, 9 * c))?
            .matmul(&w2)?
            .broadcast_add(&self.bias)?
            .relu()?;
        Ok(y.reshape((b, ho, wo, cout))?)
    }
}

fn check_images(images: &Tensor, arch: &ClassifierArch) -> Result<()> {
    let dims = images.dims();
    let [c, h, w] = arch.input;
    if !(dims.len() == 4 && dims[1..] == arch.input) {
        return Err(TestbedError::Input {
            name: "classifier input".into(),
            message: format!("images have shape {dims:?}, expected [B, {c}, {h}, {w}]"),
        });
    }
    if !images.dtype().is_float() {
        return Err(TestbedError::Input {
            name: "classifier input".into(),
            message: format!(
                "images have dtype {:?}, expected a float type",
                images.dtype()
            ),
        });
    }
    Ok(())
}

/// splitmix64 with Box-Muller normals, for a reproducible initialisation.
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

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
