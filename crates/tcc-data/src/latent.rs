//! The latent form of the second testbed: an orthonormal 2x2 Haar transform
//! that folds each 2x2 pixel block of a channel into 4 channels at half the
//! side, so a grey 64x64 image becomes a 4x32x32 "latent", the shape of
//! DiT-XL/2-256's VAE latents.

use crate::DataError;

/// Folds images `[n, c, h, w]` (h, w even) into `[n, 4c, h/2, w/2]`. For
/// each 2x2 block `a b / c d` of input channel `k`, output channels
/// `4k .. 4k + 4` hold
///
/// ```text
/// (a + b + c + d) / 2   average (low-pass)
/// (a + b - c - d) / 2   top minus bottom
/// (a - b + c - d) / 2   left minus right
/// (a - b - c + d) / 2   diagonal
/// ```
///
/// The 4x4 matrix is symmetric and orthogonal, so the map is its own
/// inverse per block ([`haar_unfold`]) and keeps Euclidean norms: i.i.d.
/// Gaussian noise on the latent is i.i.d. Gaussian noise on the image.
pub fn haar_fold(images: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, DataError> {
    let [n, c, h, w] = shape;
    check(images.len(), shape, "haar_fold")?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(DataError::Invalid(format!(
            "haar_fold: images of shape {shape:?} do not have an even side"
        )));
    }
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![0.0; images.len()];
    for s in 0..n {
        for k in 0..c {
            let src = &images[(s * c + k) * h * w..][..h * w];
            let dst = &mut out[(s * c + k) * h * w..][..h * w];
            for i in 0..ho {
                for j in 0..wo {
                    let a = src[2 * i * w + 2 * j];
                    let b = src[2 * i * w + 2 * j + 1];
                    let cc = src[(2 * i + 1) * w + 2 * j];
                    let d = src[(2 * i + 1) * w + 2 * j + 1];
                    let q = i * wo + j;
                    for (m, v) in butterfly(a, b, cc, d).into_iter().enumerate() {
                        dst[m * ho * wo + q] = v;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The inverse of [`haar_fold`]: latents `[n, 4c, h, w]` to images
/// `[n, c, 2h, 2w]`.
pub fn haar_unfold(latents: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, DataError> {
    let [n, c4, h, w] = shape;
    check(latents.len(), shape, "haar_unfold")?;
    if c4 % 4 != 0 {
        return Err(DataError::Invalid(format!(
            "haar_unfold: latents of shape {shape:?} do not have a multiple of 4 channels"
        )));
    }
    let wi = 2 * w;
    let mut out = vec![0.0; latents.len()];
    for s in 0..n {
        for k in 0..c4 / 4 {
            let src = &latents[(s * c4 + 4 * k) * h * w..][..4 * h * w];
            let dst = &mut out[(s * c4 + 4 * k) * h * w..][..4 * h * w];
            for i in 0..h {
                for j in 0..w {
                    let q = i * w + j;
                    let v = [0, 1, 2, 3].map(|m| src[m * h * w + q]);
                    let [a, b, cc, d] = butterfly(v[0], v[1], v[2], v[3]);
                    dst[2 * i * wi + 2 * j] = a;
                    dst[2 * i * wi + 2 * j + 1] = b;
                    dst[(2 * i + 1) * wi + 2 * j] = cc;
                    dst[(2 * i + 1) * wi + 2 * j + 1] = d;
                }
            }
        }
    }
    Ok(out)
}

/// The symmetric orthogonal 4x4 Haar matrix applied to one block.
fn butterfly(a: f32, b: f32, c: f32, d: f32) -> [f32; 4] {
    [
        0.5 * ((a + b) + (c + d)),
        0.5 * ((a + b) - (c + d)),
        0.5 * ((a - b) + (c - d)),
        0.5 * ((a - b) - (c - d)),
    ]
}

fn check(len: usize, shape: [usize; 4], what: &str) -> Result<(), DataError> {
    let want = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if want != Some(len) {
        return Err(DataError::Invalid(format!(
            "{what}: {len} values do not make a tensor of shape {shape:?}"
        )));
    }
    Ok(())
}
