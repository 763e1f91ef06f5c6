//! Writing batches of images as one PNG grid.

use std::io::Write;
use std::path::Path;

use image::{ImageEncoder, RgbImage};

use crate::DataError;

/// Maps a value in `[-1, 1]` to a byte: `clamp(127.5 x + 128, 0, 255)`
/// truncated, the convention of DiT's `sample.py` and the ADM evaluator's
/// sample files.
pub fn to_u8(x: f32) -> u8 {
    (127.5 * x + 128.0).clamp(0.0, 255.0) as u8
}

/// Layout of a grid: `nrow` images per row (torchvision's `make_grid`
/// convention), `pad` pixels of mid-grey between and around images, each
/// image pixel drawn as a `scale x scale` block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub nrow: usize,
    pub pad: usize,
    pub scale: usize,
}

impl Grid {
    /// `nrow` images per row, 2 pixels padding, no upscaling.
    pub fn new(nrow: usize) -> Self {
        Self {
            nrow,
            pad: 2,
            scale: 1,
        }
    }

    /// Width and height in pixels of the grid of `n` images of `h x w`
    /// (saturating: a grid that large is refused anyway).
    pub fn pixels(&self, n: usize, h: usize, w: usize) -> (usize, usize) {
        let cols = self.nrow.min(n).max(1);
        let rows = n.div_ceil(cols);
        let cell_w = w.saturating_mul(self.scale).saturating_add(self.pad);
        let cell_h = h.saturating_mul(self.scale).saturating_add(self.pad);
        (
            cols.saturating_mul(cell_w).saturating_add(self.pad),
            rows.saturating_mul(cell_h).saturating_add(self.pad),
        )
    }
}

/// Renders `images` (`[n, c, h, w]` back to back, values in `[-1, 1]`, `c`
/// 1 or 3) as a grid image.
pub fn grid_image(images: &[f32], shape: [usize; 4], grid: Grid) -> Result<RgbImage, DataError> {
    let [n, c, h, w] = shape;
    if !(c == 1 || c == 3) || n == 0 || h == 0 || w == 0 {
        return Err(DataError::Invalid(format!(
            "grid: image shape {shape:?} is not [n > 0, 1 or 3, h > 0, w > 0]"
        )));
    }
    if images.len() != n * c * h * w {
        return Err(DataError::Invalid(format!(
            "grid: {} values do not make images of shape {shape:?}",
            images.len()
        )));
    }
    if grid.nrow == 0 || grid.scale == 0 {
        return Err(DataError::Invalid(
            "grid: nrow and scale must be positive".into(),
        ));
    }
    let cols = grid.nrow.min(n);
    let (cell_w, cell_h) = (w * grid.scale + grid.pad, h * grid.scale + grid.pad);
    let (width, height) = grid.pixels(n, h, w);
    if width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(DataError::Invalid(format!(
            "grid: {width}x{height} pixels is too large"
        )));
    }
    let mut out = RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128, 128, 128]));
    for (k, img) in images.chunks_exact(c * h * w).enumerate() {
        let (x0, y0) = (
            grid.pad + (k % cols) * cell_w,
            grid.pad + (k / cols) * cell_h,
        );
        for y in 0..h * grid.scale {
            for x in 0..w * grid.scale {
                let idx = (y / grid.scale) * w + x / grid.scale;
                let px = |ch: usize| to_u8(img[(if c == 1 { 0 } else { ch }) * h * w + idx]);
                out.put_pixel(
                    (x0 + x) as u32,
                    (y0 + y) as u32,
                    image::Rgb([px(0), px(1), px(2)]),
                );
            }
        }
    }
    Ok(out)
}

/// Writes `images` (`[n, c, h, w]`, values in `[-1, 1]`) as a PNG grid with
/// `nrow` images per row; one-channel images as a greyscale PNG (a third of
/// the bytes). Atomic: the PNG is written to a temporary file in the same
/// directory and renamed over `path`.
pub fn write_grid_png(
    path: &Path,
    images: &[f32],
    shape: [usize; 4],
    grid: Grid,
) -> Result<(), DataError> {
    let img = grid_image(images, shape, grid)?;
    let err = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    let (pixels, colour) = if shape[1] == 1 {
        let grey = img.pixels().map(|p| p.0[0]).collect();
        (grey, image::ExtendedColorType::L8)
    } else {
        (img.into_raw(), image::ExtendedColorType::Rgb8)
    };
    let (width, height) = grid.pixels(shape[0], shape[2], shape[3]);
    let mut file = tcc_fs::AtomicFile::create(path).map_err(|e| err(e.to_string()))?;
    {
        let mut w = std::io::BufWriter::new(file.file());
        image::codecs::png::PngEncoder::new_with_quality(
            &mut w,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(&pixels, width as u32, height as u32, colour)
        .map_err(|e| err(e.to_string()))?;
        w.flush().map_err(|e| err(e.to_string()))?;
    }
    file.commit().map_err(|e| err(e.to_string()))?;
    Ok(())
}
