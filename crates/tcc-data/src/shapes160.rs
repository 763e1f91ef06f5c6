//! The 160-class data set of the second testbed: 20 shapes x 2 size bands
//! x 2 polarities x 2 backgrounds, grey 64x64 images, and their latent form
//! (see [`crate::haar_fold`]).

use std::f32::consts::{PI, TAU};

use crate::rng::Rng;
use crate::shapes::{coverage, rotation_range, Placement, EXTENT, NUM_SHAPES, SHAPE_NAMES};

/// Stream constant of this data set's random streams (see `Rng::with_stream`):
/// `Shapes160::new(s)` and `Dataset::new(s)` draw unrelated samples.
const STREAM: u64 = 0x5EED_0160_DA7A_0002;

/// Radius bands (pixels) of small and large shapes: a gap of 26% between
/// them, so that size is a property of the class, not a matter of degree.
const SMALL: (f32, f32) = (10.0, 13.5);
const LARGE: (f32, f32) = (17.0, 24.0);
/// Grey levels in [0, 1]: background range of the dark and the light
/// polarity, and the least shape-to-background difference.
const DARK_BACKGROUND: (f32, f32) = (0.1, 0.35);
const LIGHT_BACKGROUND: (f32, f32) = (0.65, 0.9);
const CONTRAST: f32 = 0.4;
/// Amplitude and period range (pixels) of the striped background: a
/// sinusoid at a random angle and phase, so the shape keeps a contrast of
/// at least `CONTRAST - STRIPE_AMPLITUDE`.
const STRIPE_AMPLITUDE: f32 = 0.1;
const STRIPE_PERIOD: (f32, f32) = (5.0, 8.0);

/// What defines a class of [`Shapes160`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClassFactors {
    /// Shape id, `0..20` (see [`SHAPE_NAMES`]).
    pub shape: usize,
    /// Radius in `[17, 24)` pixels rather than `[10, 13.5)`.
    pub large: bool,
    /// A dark shape on a light background rather than light on dark.
    pub dark_on_light: bool,
    /// A sinusoidally striped background rather than a flat one.
    pub striped: bool,
}

impl ClassFactors {
    /// The class id: `shape * 8 + large * 4 + dark_on_light * 2 + striped`.
    pub fn class(&self) -> usize {
        self.shape * 8
            + 4 * self.large as usize
            + 2 * self.dark_on_light as usize
            + self.striped as usize
    }
}

/// The 160-class shapes data set of one seed: grey `[1, 64, 64]` images in
/// `[-1, 1]`. Sample `i` has class `i % 160` and depends only on
/// `(seed, i)`, like [`crate::Dataset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shapes160 {
    seed: u64,
}

impl Shapes160 {
    /// Number of classes.
    pub const CLASSES: usize = NUM_SHAPES * 8;
    /// Image side in pixels (one grey channel).
    pub const SIZE: usize = 64;
    /// Values in one image.
    pub const IMAGE_LEN: usize = Self::SIZE * Self::SIZE;
    /// Shape `[channels, side, side]` of one image's latent ([`crate::haar_fold`]).
    pub const LATENT_SHAPE: [usize; 3] = [4, Self::SIZE / 2, Self::SIZE / 2];

    /// The data set of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Class of sample `index`: `index % 160`.
    pub fn class_of(index: u64) -> usize {
        (index % Self::CLASSES as u64) as usize
    }

    /// The factors of `class` (`class < 160`).
    pub fn factors(class: usize) -> ClassFactors {
        assert!(class < Self::CLASSES, "class {class} of Shapes160");
        ClassFactors {
            shape: class / 8,
            large: class & 4 != 0,
            dark_on_light: class & 2 != 0,
            striped: class & 1 != 0,
        }
    }

    /// A readable name such as `star/large/dark-on-light/striped`.
    pub fn class_name(class: usize) -> String {
        let f = Self::factors(class);
        format!(
            "{}/{}/{}/{}",
            SHAPE_NAMES[f.shape],
            if f.large { "large" } else { "small" },
            if f.dark_on_light {
                "dark-on-light"
            } else {
                "light-on-dark"
            },
            if f.striped { "striped" } else { "flat" }
        )
    }

    /// Sample `index`: the image (`[1, 64, 64]`, values in `[-1, 1]`) and its class.
    pub fn sample(&self, index: u64) -> (Vec<f32>, usize) {
        let class = Self::class_of(index);
        let mut rng = Rng::with_stream(STREAM, self.seed, index);
        (render(Self::factors(class), &mut rng), class)
    }

    /// Samples `start .. start + n`, images back to back (`[n, 1, 64, 64]`).
    pub fn batch(&self, start: u64, n: usize) -> (Vec<f32>, Vec<usize>) {
        let mut images = Vec::with_capacity(n * Self::IMAGE_LEN);
        let mut classes = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let (img, c) = self.sample(start + i);
            images.extend_from_slice(&img);
            classes.push(c);
        }
        (images, classes)
    }

    /// Samples `start .. start + n` in latent form (`[n, 4, 32, 32]`).
    pub fn latent_batch(&self, start: u64, n: usize) -> (Vec<f32>, Vec<usize>) {
        let (images, classes) = self.batch(start, n);
        let latents = crate::haar_fold(&images, [n, 1, Self::SIZE, Self::SIZE])
            .expect("Shapes160 images have an even side");
        (latents, classes)
    }
}

/// Draws one image of the class `f` from the random stream.
fn render(f: ClassFactors, rng: &mut Rng) -> Vec<f32> {
    let size = Shapes160::SIZE as f32;
    let (lo, hi) = if f.large { LARGE } else { SMALL };
    let radius = rng.range(lo, hi);
    // Every shape stays whole inside the frame, one pixel from its edge.
    let margin = EXTENT * radius + 1.0;
    let placement = Placement {
        cx: rng.range(margin, size - margin),
        cy: rng.range(margin, size - margin),
        radius,
        angle: rng.range(-1.0, 1.0) * rotation_range(f.shape),
    };
    let bg = if f.dark_on_light {
        rng.range(LIGHT_BACKGROUND.0, LIGHT_BACKGROUND.1)
    } else {
        rng.range(DARK_BACKGROUND.0, DARK_BACKGROUND.1)
    };
    let fg = if f.dark_on_light {
        rng.range(0.0, bg - CONTRAST)
    } else {
        rng.range(bg + CONTRAST, 1.0)
    };
    // Drawn for every class, so the stream's layout does not depend on it.
    let period = rng.range(STRIPE_PERIOD.0, STRIPE_PERIOD.1);
    let (sin, cos) = rng.range(0.0, PI).sin_cos();
    let phase = rng.range(0.0, TAU);
    let amplitude = if f.striped { STRIPE_AMPLITUDE } else { 0.0 };

    let cov = coverage(f.shape, &placement, Shapes160::SIZE);
    let n = Shapes160::SIZE;
    let mut img = vec![0.0; Shapes160::IMAGE_LEN];
    for (p, (v, &a)) in img.iter_mut().zip(&cov).enumerate() {
        let (x, y) = ((p % n) as f32 + 0.5, (p / n) as f32 + 0.5);
        let back = bg + amplitude * (TAU * (x * cos + y * sin) / period + phase).sin();
        *v = 2.0 * (back + (fg - back) * a) - 1.0;
    }
    img
}
