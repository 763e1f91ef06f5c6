//! Fixture access shared by the tcc-text integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn pipeline() -> (PathBuf, PathBuf) {
    let p = fixtures().join("tiny-pipeline");
    (p.join("text_encoder"), p.join("tokenizer"))
}

pub struct Expected {
    pub prompts: Vec<String>,
    pub max_tokens: usize,
    pub ids: Vec<Vec<i64>>,
    pub mask: Vec<Vec<f32>>,
    pub embeddings: Tensor,
    pub embeddings_bf16: Tensor,
}

pub fn expected() -> Expected {
    let path = fixtures().join("t5_expected.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().as_ref().unwrap();
    let prompts: Vec<String> = serde_json::from_str(&meta["prompts"]).unwrap();
    let max_tokens: usize = meta["max_tokens"].parse().unwrap();
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    Expected {
        prompts,
        max_tokens,
        ids: map["input_ids"].to_vec2().unwrap(),
        mask: map["mask"].to_vec2().unwrap(),
        embeddings: map["embeddings"].clone(),
        embeddings_bf16: map["embeddings_bf16"].clone(),
    }
}

/// Max abs difference on the real-token rows; asserts `got`'s padding rows
/// are 0 (ours are; transformers' are not).
pub fn max_abs_real(got: &Tensor, want: &Tensor, mask: &[Vec<f32>]) -> f32 {
    max_abs_real_impl(got, want, mask, true)
}

pub fn max_abs_real_impl(got: &Tensor, want: &Tensor, mask: &[Vec<f32>], zero_pad: bool) -> f32 {
    let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
    let want: Vec<Vec<Vec<f32>>> = want.to_vec3().unwrap();
    let mut worst = 0f32;
    for (b, m) in mask.iter().enumerate() {
        for (k, &mk) in m.iter().enumerate() {
            for (g, w) in got[b][k].iter().zip(&want[b][k]) {
                if mk == 1.0 {
                    worst = worst.max((g - w).abs());
                } else if zero_pad {
                    assert_eq!(*g, 0.0, "padding row {b},{k} is not zero");
                }
            }
        }
    }
    worst
}
