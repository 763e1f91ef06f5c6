//! Fixtures and comparisons shared by the integration tests.

// Each test binary uses only some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tcc_model::{DitConfig, Numerics};

/// `tests/fixtures/{name}`.
pub fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The tensors of a safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The shape of the tiny DiT fixture (`dit_tiny`), as a caller would name
/// it (original numerics).
pub fn dit_tiny_cfg() -> DitConfig {
    DitConfig {
        depth: 2,
        hidden: 32,
        heads: 2,
        patch: 2,
        input_size: 8,
        in_channels: 4,
        out_channels: 8,
        mlp_hidden: 128,
        num_classes: 10,
        numerics: Numerics::ORIGINAL,
    }
}

/// Max abs difference, compared in f32; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    max_abs(&d)
}

/// Largest absolute value (f32 tensors).
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
