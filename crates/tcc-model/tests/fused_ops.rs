//! The fused CPU kernels against PyTorch.
//!
//! Reference: `tools/golden/fused_ops.py` (torch 2.15) writes
//! `tests/fixtures/fused_ops/golden.safetensors`: packed-qkv self-attention
//! by `scaled_dot_product_attention` and `linear` (+ tanh GELU), computed in
//! f64 from f32 inputs. Tolerance: 1e-5 max abs error in f32, for the fused
//! kernels and for the composed candle forms they replace.

mod common;

use candle_core::{DType, Tensor};
use common::{load_tensors, max_abs_diff};
use tcc_model::{attention, ops};

const TOL: f32 = 1e-5;

#[test]
fn packed_self_attention_matches_torch_sdpa() {
    let g = load_tensors(&common::fixtures("fused_ops").join("golden.safetensors"));
    let mut cases = 0;
    while let Some(qkv) = g.get(&format!("attn.{cases}.qkv")) {
        let want = &g[&format!("attn.{cases}.out")];
        let heads = g[&format!("attn.{cases}.heads")].to_vec1::<i64>().unwrap()[0] as usize;
        let fused = attention::packed_self_attention(qkv, heads).unwrap();
        let composed = attention::packed_self_attention_composed(qkv, heads).unwrap();
        assert_eq!(fused.dtype(), DType::F32);
        for (name, got) in [("fused", &fused), ("composed", &composed)] {
            let err = max_abs_diff(got, want);
            assert!(err <= TOL, "case {cases} {name}: max abs error {err}");
        }
        assert!(max_abs_diff(&fused, &composed) <= TOL);
        cases += 1;
    }
    assert_eq!(cases, 3, "fixture cases");
}

#[test]
fn linear_and_linear_gelu_match_torch() {
    let g = load_tensors(&common::fixtures("fused_ops").join("golden.safetensors"));
    let (x, w, b) = (&g["linear.x"], &g["linear.w"], &g["linear.b"]);
    for (gelu, key) in [(false, "linear.out"), (true, "linear.out_gelu")] {
        let want = &g[key];
        for (name, got) in [
            ("fused", ops::linear(x, w, b, gelu).unwrap()),
            ("composed", ops::linear_composed(x, w, b, gelu).unwrap()),
        ] {
            let err = max_abs_diff(&got, want);
            assert!(err <= TOL, "{key} {name}: max abs error {err}");
        }
    }
    // A flat input is a single row.
    let row: Tensor = x.get(0).unwrap().get(0).unwrap();
    let got = ops::linear(&row, w, b, false).unwrap();
    let want = g["linear.out"].get(0).unwrap().get(0).unwrap();
    assert!(max_abs_diff(&got, &want) <= TOL);
}
