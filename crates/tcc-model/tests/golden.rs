//! DiT forward pass against diffusers.
//!
//! Reference: `tools/golden/dit_model.py` (diffusers 0.42 `DiTTransformer2DModel`,
//! torch 2.15) writes a tiny random DiT in both weight layouts, inputs, and
//! the expected outputs into `tests/fixtures/dit_tiny/`:
//! - `out_diffusers`: the diffusers forward pass (diffusers numerics);
//! - `out_original`: the original DiT numerics (independent plain-torch
//!   forward, cross-checked in the script against diffusers with the two
//!   settings that differ patched);
//! - intermediate values of the diffusers forward for block 0.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{dit_tiny_cfg as tiny_cfg, load_tensors, max_abs, max_abs_diff};
use tcc_core::Branch;
use tcc_model::{
    convert_checkpoint, detect_layout, BlockModel, Dit, DitConfig, Numerics, WeightsLayout,
};

/// Max abs error allowed in f32 against the PyTorch reference.
const TOL_F32: f32 = 1e-4;
/// Max abs error in f16 / bf16 against the f32 reference, relative to the
/// largest reference output (|out| <= 4.7 here): f16 keeps 11 significant
/// bits, bf16 8 (measured: 1.5e-3 and 1.0e-2).
const TOL_F16_REL: f32 = 5e-3;
const TOL_BF16_REL: f32 = 2.5e-2;

fn fixtures() -> PathBuf {
    common::fixtures("dit_tiny")
}

fn golden() -> HashMap<String, Tensor> {
    load_tensors(&fixtures().join("golden.safetensors"))
}

fn run(model: &Dit, g: &HashMap<String, Tensor>) -> Tensor {
    let y = g["y"].to_dtype(DType::U32).unwrap();
    model.forward(&g["x"], &g["t"], &y, None).unwrap()
}

fn check_forward(path: &Path, cfg: Option<&DitConfig>, expected: &str) {
    let g = golden();
    let want = &g[expected];
    let model = Dit::load(path, cfg, DType::F32, &Device::Cpu).unwrap();
    let err = max_abs_diff(&run(&model, &g), want);
    assert!(
        err <= TOL_F32,
        "{}: f32 max abs error {err}",
        path.display()
    );
    for (dtype, rel) in [(DType::F16, TOL_F16_REL), (DType::BF16, TOL_BF16_REL)] {
        let model = Dit::load(path, cfg, dtype, &Device::Cpu).unwrap();
        let out = run(&model, &g);
        assert_eq!(out.dtype(), DType::F32);
        let err = max_abs_diff(&out, want);
        let tol = rel * max_abs(want);
        assert!(
            err <= tol,
            "{}: {dtype:?} max abs error {err} > {tol}",
            path.display()
        );
    }
}

#[test]
fn diffusers_layout_matches_diffusers() {
    let dir = fixtures().join("diffusers");
    assert_eq!(detect_layout(&dir).unwrap(), WeightsLayout::Diffusers);
    check_forward(&dir, Some(&tiny_cfg()), "out_diffusers");
    // The directory's config.json is enough.
    let model = Dit::load(&dir, None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().numerics, Numerics::diffusers(1e-5));
    assert!(max_abs_diff(&run(&model, &golden()), &golden()["out_diffusers"]) <= TOL_F32);
    // The weights file alone: the config.json beside it is used.
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let model = Dit::load(&file, None, DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&model, &golden()), &golden()["out_diffusers"]) <= TOL_F32);
}

#[test]
fn original_pt_nested_under_ema_matches_original_dit() {
    let pt = fixtures().join("original.pt");
    assert_eq!(detect_layout(&pt).unwrap(), WeightsLayout::Original);
    check_forward(&pt, Some(&tiny_cfg()), "out_original");
}

/// A top-level state dict (as the released checkpoints) and a training
/// checkpoint `{model, ema, opt, args}` whose `model` differs from `ema`:
/// the loader takes `ema`.
#[test]
fn plain_and_training_checkpoints_load_the_ema_weights() {
    let g = golden();
    for name in ["original_plain.pt", "original_train.pt"] {
        let path = fixtures().join(name);
        let model = Dit::load(&path, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap();
        let err = max_abs_diff(&run(&model, &g), &g["out_original"]);
        assert!(err <= TOL_F32, "{name}: {err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("train.safetensors");
    let report = convert_checkpoint(&fixtures().join("original_train.pt"), &out).unwrap();
    assert_eq!(report.nested_key.as_deref(), Some("ema"));
    let report = convert_checkpoint(&fixtures().join("original_plain.pt"), &out).unwrap();
    assert_eq!(report.nested_key, None);
}

#[test]
fn original_safetensors_matches_original_dit() {
    check_forward(
        &fixtures().join("original.safetensors"),
        Some(&tiny_cfg()),
        "out_original",
    );
}

#[test]
fn pipeline_and_sharded_directories_load() {
    let g = golden();
    let src = fixtures().join("diffusers");
    let tmp = tempfile::tempdir().unwrap();
    // A pipeline directory: the model lives in transformer/.
    let pipe = tmp.path().join("pipe");
    let tr = pipe.join("transformer");
    std::fs::create_dir_all(&tr).unwrap();
    std::fs::write(pipe.join("model_index.json"), "{}").unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(src.join(f), tr.join(f)).unwrap();
    }
    let model = Dit::load(&pipe, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&model, &g), &g["out_diffusers"]) <= TOL_F32);

    // A lone diffusers-layout file: the requested shape, diffusers numerics
    // with diffusers' default norm_eps (the fixture's too).
    let lone = tmp.path().join("lone.safetensors");
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), &lone).unwrap();
    let model = Dit::load(&lone, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&model, &g), &g["out_diffusers"]) <= TOL_F32);
    assert!(Dit::load(&lone, None, DType::F32, &Device::Cpu).is_err());

    // Two shards and an index.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(src.join("config.json"), sharded.join("config.json")).unwrap();
    let all = load_tensors(&src.join("diffusion_pytorch_model.safetensors"));
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in all {
        let i = usize::from(name.starts_with("transformer_blocks.1"));
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i].insert(name, t);
    }
    for (i, s) in shards.iter().enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        candle_core::safetensors::save(s, sharded.join(file)).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        sharded.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let model = Dit::load(&sharded, None, DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&model, &g), &g["out_diffusers"]) <= TOL_F32);
}

/// Block 0's parts against the diffusers sub-modules (forward hooks):
/// patch + position embedding, conditioning, the six modulation chunks, the
/// pre-gate attention output and the pre-gate MLP output.
#[test]
fn block_parts_match_diffusers_submodules() {
    let g = golden();
    let model = Dit::load(
        &fixtures().join("diffusers"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let y = g["y"].to_dtype(DType::U32).unwrap();
    let (h, c) = model.embed(&g["x"], &g["t"], &y, None).unwrap();
    assert!(max_abs_diff(&h, &g["embed"]) <= 1e-5);
    assert!(max_abs_diff(&c.c, &g["cond_diffusers"]) <= TOL_F32);
    let m = model.modulation(0, &c).unwrap();
    let chunks = [
        (&m.shift_msa, "shift_msa"),
        (&m.scale_msa, "scale_msa"),
        (&m.gate_msa, "gate_msa"),
        (&m.shift_mlp, "shift_mlp"),
        (&m.scale_mlp, "scale_mlp"),
        (&m.gate_mlp, "gate_mlp"),
    ];
    for (v, name) in chunks {
        let err = max_abs_diff(v, &g[&format!("mod0_diffusers.{name}")]);
        assert!(err <= TOL_F32, "{name}: {err}");
    }
    let attn = model.branch(0, Branch::Attn, &h, &m, &c).unwrap();
    assert!(max_abs_diff(&attn, &g["attn0_diffusers"]) <= TOL_F32);
    let h = model.add_branch(Branch::Attn, &h, &m, &attn).unwrap();
    let mlp = model.branch(0, Branch::Mlp, &h, &m, &c).unwrap();
    assert!(max_abs_diff(&mlp, &g["mlp0_diffusers"]) <= TOL_F32);
    // The original-numerics conditioning differs only in the timestep frequencies.
    let orig = Dit::load(
        &fixtures().join("original.pt"),
        Some(&tiny_cfg()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let (_, c) = orig.embed(&g["x"], &g["t"], &y, None).unwrap();
    assert!(max_abs_diff(&c.c, &g["cond_original"]) <= TOL_F32);
    assert!(max_abs_diff(&c.c, &g["cond_diffusers"]) > 1e-3);
    // DiT has no cross-attention branch.
    assert!(model.branch(0, Branch::Cross, &h, &m, &c).is_err());
}

/// The plain forward pass equals a hand-written loop over the parts, bit for
/// bit, for loaded and random weights, in f32 and bf16.
#[test]
fn forward_is_bit_identical_to_a_loop_over_parts() {
    let g = golden();
    let y = g["y"].to_dtype(DType::U32).unwrap();
    let loaded = Dit::load(
        &fixtures().join("original.pt"),
        Some(&tiny_cfg()),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let random = Dit::random(&tiny_cfg(), 5, DType::BF16, &Device::Cpu).unwrap();
    for model in [loaded, random] {
        let (mut h, c) = model.embed(&g["x"], &g["t"], &y, None).unwrap();
        for block in 0..model.depth() {
            let m = model.modulation(block, &c).unwrap();
            let a = model.branch(block, Branch::Attn, &h, &m, &c).unwrap();
            h = (&h + a.broadcast_mul(&m.gate_msa.unsqueeze(1).unwrap()).unwrap()).unwrap();
            let f = model.branch(block, Branch::Mlp, &h, &m, &c).unwrap();
            h = (&h + f.broadcast_mul(&m.gate_mlp.unsqueeze(1).unwrap()).unwrap()).unwrap();
        }
        let manual = model
            .finish(&h, &c)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let plain = run(&model, &g)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(manual, plain);
    }
}

#[test]
fn every_input_matters() {
    // Guard against a fixture where something trivially vanishes: the null
    // class, the timestep and every block change the output.
    let g = golden();
    let model = Dit::load(
        &fixtures().join("diffusers"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let base = run(&model, &g);
    let y = g["y"].to_dtype(DType::U32).unwrap();
    let y2 = Tensor::new(&[3u32, 3, 0, 9], &Device::Cpu).unwrap();
    let t2 = Tensor::new(&[999f32, 500.0, 18.0, 0.0], &Device::Cpu).unwrap();
    assert!(max_abs_diff(&base, &model.forward(&g["x"], &g["t"], &y2, None).unwrap()) > 1e-2);
    assert!(max_abs_diff(&base, &model.forward(&g["x"], &t2, &y, None).unwrap()) > 1e-4);
    let (h, c) = model.embed(&g["x"], &g["t"], &y, None).unwrap();
    for block in 0..model.depth() {
        let m = model.modulation(block, &c).unwrap();
        for b in model.branches() {
            let out = model.branch(block, *b, &h, &m, &c).unwrap();
            let gated = (model.add_branch(*b, &h, &m, &out).unwrap() - &h).unwrap();
            assert!(max_abs(&gated) > 1e-2, "block {block} {b}");
        }
    }
}

#[test]
fn convert_pt_to_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dit.safetensors");
    let report = convert_checkpoint(&fixtures().join("original.pt"), &out).unwrap();
    assert_eq!(report.nested_key.as_deref(), Some("ema"));
    let converted = load_tensors(&out);
    let reference = load_tensors(&fixtures().join("original.safetensors"));
    assert_eq!(report.tensors, reference.len());
    assert_eq!(converted.len(), reference.len());
    for (name, t) in &reference {
        let c = &converted[name];
        assert_eq!(c.dims(), t.dims(), "{name}");
        assert_eq!(max_abs_diff(c, t), 0.0, "{name}");
    }
    let params: usize = reference.values().map(|t| t.elem_count()).sum();
    assert_eq!(report.parameters, params);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("dit.safetensors")]);
    // The converted file loads and runs.
    let g = golden();
    let model = Dit::load(&out, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&run(&model, &g), &g["out_original"]) <= TOL_F32);
}
