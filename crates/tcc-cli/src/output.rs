//! Files that sampling writes: PNG images and grids, the ADM evaluator's
//! `.npz` (uint8 NHWC under `arr_0`), and the latents as safetensors. Every file is written to a
//! temporary file in its directory and renamed into place.

use std::path::Path;

use crate::error::CliError;

/// `value` as pretty JSON on a line of `out` (the `--json` reports).
pub fn print_json(
    out: &mut dyn std::io::Write,
    value: &impl serde::Serialize,
) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failure(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

fn fail(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Failure(format!("{}: {e}", path.display()))
}

/// Images `[n, 3, h, w]` in `[-1, 1]` as uint8 NHWC, DiT's `sample.py`
/// conversion.
pub fn to_nhwc_u8(images: &[f32], n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * h * w * 3);
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    out.push(tcc_data::to_u8(images[((i * 3 + c) * h + y) * w + x]));
                }
            }
        }
    }
    out
}

/// Write final latents `dims` (f32, row-major) as safetensors: `latents`
/// and the `labels` (u32, one per sample).
pub fn write_latents(
    path: &Path,
    latents: &[f32],
    dims: &[usize],
    labels: &[u32],
) -> Result<(), CliError> {
    use safetensors::tensor::{Dtype, TensorView};
    let x: Vec<u8> = latents.iter().flat_map(|v| v.to_le_bytes()).collect();
    let l: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = [
        ("latents", TensorView::new(Dtype::F32, dims.to_vec(), &x)),
        (
            "labels",
            TensorView::new(Dtype::U32, vec![labels.len()], &l),
        ),
    ];
    let mut tensors = Vec::new();
    for (name, view) in views {
        tensors.push((name, view.map_err(|e| fail(path, e))?));
    }
    let bytes = tcc_fs::safetensors_bytes(tensors, None).map_err(|e| fail(path, e))?;
    tcc_fs::write_atomically(path, &bytes).map_err(|e| fail(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhwc_conversion_interleaves_channels() {
        // One 1x2 image: R = [-1, 1], G = [0, 0], B = [1, -1].
        let img = [-1.0, 1.0, 0.0, 0.0, 1.0, -1.0];
        assert_eq!(to_nhwc_u8(&img, 1, 1, 2), vec![0, 128, 255, 255, 128, 0]);
    }
}
