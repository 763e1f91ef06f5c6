//! Files that sampling writes: PNG images and grids, the ADM evaluator's
//! `.npz` (uint8 NHWC under `arr_0`), and the latents as safetensors. Every file is written to a
//! temporary file in its directory and renamed into place.

use std::io::Write;
use std::path::Path;

use crate::common::CliError;

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

/// A `.npy` (format 1.0) of a uint8 array of `shape`.
fn npy_u8(data: &[u8], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Write an `.npz` with `arr_0` = images (uint8 NHWC) and `arr_1` = labels
/// (uint8... as the ADM evaluator reads only `arr_0`, labels are optional).
pub fn write_npz(
    path: &Path,
    nhwc: &[u8],
    shape: [usize; 4],
    labels: Option<&[u32]>,
) -> Result<(), CliError> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("arr_0.npy", opts)
            .map_err(|e| fail(path, e))?;
        zip.write_all(&npy_u8(nhwc, &shape))
            .map_err(|e| fail(path, e))?;
        if let Some(labels) = labels {
            if labels.iter().all(|&l| l < 256) {
                let l: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
                zip.start_file("arr_1.npy", opts)
                    .map_err(|e| fail(path, e))?;
                zip.write_all(&npy_u8(&l, &[l.len()]))
                    .map_err(|e| fail(path, e))?;
            }
        }
        zip.finish().map_err(|e| fail(path, e))?;
    }
    tcc_fs::write_atomically(path, &buf.into_inner()).map_err(|e| fail(path, e))
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
    fn npy_header_is_aligned_and_describes_the_array() {
        let npy = npy_u8(&[1, 2, 3, 4, 5, 6], &[1, 2, 1, 3]);
        let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&npy[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (1, 2, 1, 3)"), "{header}");
        assert_eq!(&npy[10 + hlen..], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn nhwc_conversion_interleaves_channels() {
        // One 1x2 image: R = [-1, 1], G = [0, 0], B = [1, -1].
        let img = [-1.0, 1.0, 0.0, 0.0, 1.0, -1.0];
        assert_eq!(to_nhwc_u8(&img, 1, 1, 2), vec![0, 128, 255, 255, 128, 0]);
    }
}
