//! Decoded images as bytes.

use candle_core::{DType, Tensor};

use crate::{Result, VaeError};

/// A batch of 8-bit RGB images, `n x height x width x 3` bytes back to back
/// (NHWC: the layout of PNG rows and of the ADM evaluator's `arr_0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbBatch {
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl RgbBatch {
    /// Image `k`'s `height x width x 3` bytes (row-major RGB, as
    /// `image::RgbImage::from_raw` takes them); `None` past the end.
    pub fn image(&self, k: usize) -> Option<&[u8]> {
        let len = self.height * self.width * 3;
        self.data.get(k * len..(k + 1) * len)
    }
}

/// Turns decoded images `[n, 3, h, w]` with values in `[-1, 1]` into bytes,
/// with `tcc_data::to_u8`'s mapping (`clamp(127.5 x + 128, 0, 255)`
/// truncated, as DiT's `sample.py` and the ADM sample files).
pub fn to_u8_nhwc(images: &Tensor) -> Result<RgbBatch> {
    let (n, height, width) = match images.dims() {
        &[n, 3, h, w] => (n, h, w),
        dims => {
            return Err(VaeError::Invalid(format!(
                "images of shape {dims:?}, expected [n, 3, h, w]"
            )))
        }
    };
    let data = images
        .to_dtype(DType::F32)?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(tcc_data::to_u8)
        .collect();
    Ok(RgbBatch {
        n,
        height,
        width,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nhwc_layout_and_mapping() {
        // Image 0: R = -1, G = 0, B = 1 everywhere; image 1: R varies along x.
        let mut v = vec![0f32; 2 * 3 * 2 * 3];
        let at = |k: usize, c: usize, y: usize, x: usize| ((k * 3 + c) * 2 + y) * 3 + x;
        for y in 0..2 {
            for x in 0..3 {
                v[at(0, 0, y, x)] = -1.0;
                v[at(0, 2, y, x)] = 1.0;
                v[at(1, 0, y, x)] = [-2.0, 0.5, 2.0][x];
            }
        }
        let t = Tensor::from_vec(v, (2, 3, 2, 3), &Device::Cpu).unwrap();
        let rgb = to_u8_nhwc(&t).unwrap();
        assert_eq!(
            (rgb.n, rgb.height, rgb.width, rgb.data.len()),
            (2, 2, 3, 36)
        );
        assert_eq!(rgb.image(0).unwrap(), [0, 128, 255].repeat(6).as_slice());
        let img1 = rgb.image(1).unwrap();
        assert_eq!(&img1[..9], &[0, 128, 128, 191, 128, 128, 255, 128, 128]);
        assert_eq!(&img1[9..18], &img1[..9]);
        assert!(rgb.image(2).is_none());
        assert!(
            to_u8_nhwc(&Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err()
        );
    }
}
