//! A procedural, class-conditional image data set: ten shape classes drawn
//! at 32x32 RGB with random position, size, rotation and colours, rendered
//! anti-aliased (4x4 supersampling). Deterministic: sample `i` of
//! `Dataset::new(seed)` depends only on `(seed, i)`; nothing is downloaded.
//!
//! Images are `[3, 32, 32]` (channel, row, column) f32 in `[-1, 1]`, the
//! range diffusion models work in. The class of sample `i` is `i % 10`, so
//! every run of ten consecutive indices holds each class once.
//!
//! [`Shapes160`] is the second testbed's data set: 160 classes (20 shapes x
//! size band x polarity x background) of grey 64x64 images, used in the
//! latent form of [`haar_fold`] (4 x 32 x 32).
//!
//! [`write_grid_png`] writes a batch as one PNG grid. See `docs/testbed.md`.

mod grid;
mod latent;
mod rng;
mod shapes;
mod shapes160;

use std::path::PathBuf;

pub use grid::{grid_image, to_u8, write_grid_png, Grid};
pub use latent::{haar_fold, haar_unfold};
pub use shapes::{CLASS_NAMES, NUM_CLASSES, NUM_SHAPES, SHAPE_NAMES};
pub use shapes160::{ClassFactors, Shapes160};

use rng::Rng;
use shapes::{coverage, rotation_range, Placement};

/// Seed of the testbeds' training split (the DiTs and the classifiers train
/// on `Dataset::new(TRAIN_SEED)` / `Shapes160::new(TRAIN_SEED)`).
pub const TRAIN_SEED: u64 = 0;
/// Seed of the held-out split (classifier accuracy, reference statistics).
pub const HELDOUT_SEED: u64 = 1;

/// Image side in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Values in one image, `CHANNELS * IMAGE_SIZE * IMAGE_SIZE`.
pub const IMAGE_LEN: usize = CHANNELS * IMAGE_SIZE * IMAGE_SIZE;

/// Smallest and largest shape radius in pixels.
const RADIUS: (f32, f32) = (8.0, 13.5);
/// Smallest luma difference between shape and background colours (in [0, 1]).
const MIN_CONTRAST: f32 = 0.3;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The data set of one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dataset {
    seed: u64,
}

impl Dataset {
    /// The data set of `seed`; different seeds give independent data sets.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// Seed of this data set.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Class of sample `index`: `index % 10`.
    pub fn class_of(index: u64) -> usize {
        (index % NUM_CLASSES as u64) as usize
    }

    /// Sample `index`: the image (`[3, 32, 32]`, values in `[-1, 1]`) and
    /// its class.
    pub fn sample(&self, index: u64) -> (Vec<f32>, usize) {
        let class = Self::class_of(index);
        (render(class, &mut Rng::new(self.seed, index)), class)
    }

    /// Samples `start .. start + n`, images back to back (`[n, 3, 32, 32]`).
    pub fn batch(&self, start: u64, n: usize) -> (Vec<f32>, Vec<usize>) {
        let mut images = Vec::with_capacity(n * IMAGE_LEN);
        let mut classes = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let (img, c) = self.sample(start + i);
            images.extend_from_slice(&img);
            classes.push(c);
        }
        (images, classes)
    }
}

/// sRGB-ish luma of a colour in [0, 1].
fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Draws one image of `class` from the random stream.
fn render(class: usize, rng: &mut Rng) -> Vec<f32> {
    let radius = rng.range(RADIUS.0, RADIUS.1);
    let margin = radius + 1.0;
    let size = IMAGE_SIZE as f32;
    let placement = Placement {
        cx: rng.range(margin, size - margin),
        cy: rng.range(margin, size - margin),
        radius,
        angle: rng.range(-1.0, 1.0) * rotation_range(class),
    };
    let (fg, bg) = colours(rng);
    let cov = coverage(class, &placement, IMAGE_SIZE);
    let mut img = vec![0.0; IMAGE_LEN];
    for (ch, plane) in img.chunks_exact_mut(IMAGE_SIZE * IMAGE_SIZE).enumerate() {
        for (v, &a) in plane.iter_mut().zip(&cov) {
            let x = bg[ch] + (fg[ch] - bg[ch]) * a;
            *v = 2.0 * x - 1.0;
        }
    }
    img
}

/// Shape and background colours with at least [`MIN_CONTRAST`] luma
/// difference (rejection sampling; the fallback is practically never used).
fn colours(rng: &mut Rng) -> ([f32; 3], [f32; 3]) {
    let draw = |rng: &mut Rng| [rng.unit(), rng.unit(), rng.unit()];
    for _ in 0..64 {
        let (fg, bg) = (draw(rng), draw(rng));
        if (luma(fg) - luma(bg)).abs() >= MIN_CONTRAST {
            return (fg, bg);
        }
    }
    let fg = draw(rng);
    let bg = if luma(fg) > 0.5 { [0.0; 3] } else { [1.0; 3] };
    (fg, bg)
}
