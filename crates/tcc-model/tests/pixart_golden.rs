//! PixArt-α forward pass against diffusers.
//!
//! Reference: `tools/golden/pixart_model.py` (diffusers 0.42.1
//! `PixArtTransformer2DModel`, adaLN-single, no additional conditions,
//! interpolation scale 0.5 as in the 256 px checkpoint) writes a tiny random
//! model (2 blocks, 2 heads x 16, patch 2, 8x8x4 latents, 8 output channels,
//! 24-wide captions of 5 tokens) into `tests/fixtures/pixart_tiny/model/`,
//! and into `golden.safetensors` the inputs (latents, timesteps, caption
//! embeddings, a caption mask with two padding tokens), diffusers' float32
//! output `out`, the same forward in float64 `out_f64` (the float32
//! reference is 1.2e-6 from it), and intermediate values.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{load_tensors, max_abs, max_abs_diff};
use tcc_core::Branch;
use tcc_model::{BlockModel, PixArt, PixArtConfig};

/// Max abs error allowed in f32 against diffusers' f32 forward (outputs up
/// to |4.2|).
const TOL_F32: f32 = 1e-4;

fn fixtures() -> PathBuf {
    common::fixtures("pixart_tiny")
}

fn golden() -> HashMap<String, Tensor> {
    load_tensors(&fixtures().join("golden.safetensors"))
}

fn model() -> PixArt {
    PixArt::load(&fixtures().join("model"), DType::F32, &Device::Cpu).unwrap()
}

fn forward(m: &PixArt, g: &HashMap<String, Tensor>, caption: &Tensor) -> Tensor {
    m.forward(&g["x"], &g["t"], caption, Some(&g["mask"]))
        .unwrap()
}

#[test]
fn config_is_read_from_the_fixture() {
    let cfg = model().config().clone();
    assert_eq!(
        cfg,
        PixArtConfig {
            depth: 2,
            hidden: 32,
            heads: 2,
            patch: 2,
            input_size: 8,
            in_channels: 4,
            out_channels: 8,
            mlp_hidden: 128,
            caption_channels: 24,
            caption_tokens: 120,
            interpolation_scale: 0.5,
            norm_eps: 1e-6,
            use_additional_conditions: false,
        }
    );
    assert!(cfg.learn_sigma());
    assert_eq!(
        model().branches(),
        tcc_core::ModelShape::preset("pixart-alpha-256")
            .unwrap()
            .branches()
    );
}

#[test]
fn forward_matches_diffusers() {
    let g = golden();
    let m = model();
    let out = forward(&m, &g, &g["caption"]);
    assert_eq!(out.dims(), [2, 8, 8, 8]);
    assert_eq!(out.dtype(), DType::F32);
    let err = max_abs_diff(&out, &g["out"]);
    let err64 = max_abs_diff(&out, &g["out_f64"]);
    eprintln!("PixArt-α vs diffusers: max abs {err:.3e} (f32 reference), {err64:.3e} (f64)");
    assert!(err < TOL_F32, "max abs error {err} vs diffusers");
    assert!(err64 < TOL_F32, "max abs error {err64} vs the f64 forward");

    // The parts, against the intermediate values of the diffusers forward.
    let (tokens, cond) = m
        .embed(&g["x"], &g["t"], &g["caption"], Some(&g["mask"]))
        .unwrap();
    assert!(max_abs_diff(&tokens, &g["embed"]) < 1e-5);
    assert!(max_abs_diff(&cond.c, &g["temb"]) < 1e-5);
    assert!(cond.per_block.is_none());
    let (context, mask) = cond.context.as_ref().unwrap();
    assert!(max_abs_diff(context, &g["context"]) < 1e-5);
    assert_eq!(
        mask.as_ref().unwrap().to_vec2::<f32>().unwrap(),
        g["mask"].to_vec2::<f32>().unwrap()
    );
    // Block 1's modulation: its scale-shift table plus the shared 6 D vector,
    // in diffusers' order.
    let weights = load_tensors(&fixtures().join("model/diffusion_pytorch_model.safetensors"));
    let table = &weights["transformer_blocks.1.scale_shift_table"];
    let t6 = g["t6"].reshape((2, 6, 32)).unwrap();
    let want = t6.broadcast_add(&table.unsqueeze(0).unwrap()).unwrap();
    let md = m.modulation(1, &cond).unwrap();
    let parts = [
        &md.shift_msa,
        &md.scale_msa,
        &md.gate_msa,
        &md.shift_mlp,
        &md.scale_mlp,
        &md.gate_mlp,
    ];
    for (i, p) in parts.into_iter().enumerate() {
        let w = want.narrow(1, i, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(p, &w) < 1e-5, "modulation part {i}");
    }
}

#[test]
fn masked_caption_tokens_are_masked() {
    let g = golden();
    let m = model();
    let base = forward(&m, &g, &g["caption"]);
    // Sample 0's tokens 3 and 4 are padding (mask 0): changing them changes
    // nothing, bit for bit.
    let shift = |tok: usize| -> Tensor {
        let mut v = g["caption"].to_vec3::<f32>().unwrap();
        for e in v[0][tok].iter_mut() {
            *e += 7.0;
        }
        Tensor::new(v, &Device::Cpu).unwrap()
    };
    assert_eq!(max_abs_diff(&forward(&m, &g, &shift(4)), &base), 0.0);
    assert_eq!(max_abs_diff(&forward(&m, &g, &shift(3)), &base), 0.0);
    // An attended token does change sample 0 (and only sample 0).
    let changed = forward(&m, &g, &shift(1));
    let d0 = max_abs_diff(&changed.get(0).unwrap(), &base.get(0).unwrap());
    let d1 = max_abs_diff(&changed.get(1).unwrap(), &base.get(1).unwrap());
    assert!(d0 > 1e-3, "{d0}");
    assert_eq!(d1, 0.0);
    // Without the mask the padding is attended: sample 0 differs, sample 1
    // (no padding) does not.
    let unmasked = m.forward(&g["x"], &g["t"], &g["caption"], None).unwrap();
    assert!(max_abs_diff(&unmasked.get(0).unwrap(), &base.get(0).unwrap()) > 1e-3);
    assert!(max_abs_diff(&unmasked.get(1).unwrap(), &base.get(1).unwrap()) < 1e-6);
    // A u8 mask works like the f32 one.
    let mask_u8 = g["mask"].to_dtype(DType::U8).unwrap();
    let out_u8 = m
        .forward(&g["x"], &g["t"], &g["caption"], Some(&mask_u8))
        .unwrap();
    assert_eq!(max_abs_diff(&out_u8, &base), 0.0);
    // A mask of the wrong shape is refused.
    let bad = g["mask"].narrow(1, 0, 4).unwrap();
    assert!(m
        .forward(&g["x"], &g["t"], &g["caption"], Some(&bad))
        .is_err());
}

#[test]
fn cross_branch_has_no_gate() {
    let g = golden();
    let m = model();
    let (x, cond) = m
        .embed(&g["x"], &g["t"], &g["caption"], Some(&g["mask"]))
        .unwrap();
    let md = m.modulation(0, &cond).unwrap();
    let cross = m.branch(0, Branch::Cross, &x, &md, &cond).unwrap();
    assert_eq!(cross.dims(), x.dims());
    let added = m.add_branch(Branch::Cross, &x, &md, &cross).unwrap();
    assert_eq!(max_abs_diff(&added, &(&x + &cross).unwrap()), 0.0);
    // Zero gates silence attn and mlp, not cross.
    let zero = md.gate_msa.zeros_like().unwrap();
    let mut gated_off = md.clone();
    gated_off.gate_msa = zero.clone();
    gated_off.gate_mlp = zero;
    for b in [Branch::Attn, Branch::Mlp] {
        let out = m.branch(0, b, &x, &md, &cond).unwrap();
        let with_gate = m.add_branch(b, &x, &md, &out).unwrap();
        let gate = if b == Branch::Attn {
            &md.gate_msa
        } else {
            &md.gate_mlp
        };
        let want = (&x + out.broadcast_mul(&gate.unsqueeze(1).unwrap()).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&with_gate, &want), 0.0, "{b}");
        let off = m.add_branch(b, &x, &gated_off, &out).unwrap();
        assert_eq!(max_abs_diff(&off, &x), 0.0, "{b}");
    }
    let off = m.add_branch(Branch::Cross, &x, &gated_off, &cross).unwrap();
    assert_eq!(max_abs_diff(&off, &added), 0.0);
    // Cross-attention reads the raw residual stream: no modulation enters.
    let cross_off = m.branch(0, Branch::Cross, &x, &gated_off, &cond).unwrap();
    assert_eq!(max_abs_diff(&cross_off, &cross), 0.0);
    // The branch parts reproduce the plain forward pass.
    let mut h = x.clone();
    for block in 0..m.depth() {
        let md = m.modulation(block, &cond).unwrap();
        for &b in m.branches() {
            let out = m.branch(block, b, &h, &md, &cond).unwrap();
            h = m.add_branch(b, &h, &md, &out).unwrap();
        }
    }
    let out = m.finish(&h, &cond).unwrap();
    assert!(max_abs_diff(&out, &g["out"]) < TOL_F32);
}

/// A copy of the fixture model directory whose weights are `edit`ed.
fn edited_copy(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("model");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut w = load_tensors(&src.join("diffusion_pytorch_model.safetensors"));
    edit(&mut w);
    candle_core::safetensors::save(&w, dir.path().join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    PixArt::load(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_weights_name_the_tensor_and_the_file() {
    let name = "transformer_blocks.1.attn2.to_k.weight";
    let dir = edited_copy(|w| {
        w.remove(name);
    });
    let msg = load_err(dir.path());
    assert!(msg.contains(&format!("`{name}`: missing")), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");

    let dir = edited_copy(|w| {
        w.insert(
            "transformer_blocks.0.scale_shift_table".into(),
            Tensor::zeros((5, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains(
            "`transformer_blocks.0.scale_shift_table`: has shape [5, 32], expected [6, 32]"
        ),
        "{msg}"
    );
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    let dir = edited_copy(|w| {
        w.insert(
            "transformer_blocks.2.attn1.to_q.weight".into(),
            Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`transformer_blocks.2.attn1.to_q.weight`: unexpected"),
        "{msg}"
    );

    let dir = edited_copy(|w| {
        let v = Tensor::new(&[f32::NAN; 32], &Device::Cpu).unwrap();
        w.insert("proj_out.bias".into(), v);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`proj_out.bias`: holds a non-finite value"),
        "{msg}"
    );

    // A config asking for the 1024 px micro-conditions is refused by name.
    let dir = edited_copy(|_| {});
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"use_additional_conditions\": false",
        "\"use_additional_conditions\": true",
    );
    std::fs::write(&cfg, text).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("use_additional_conditions"), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn loads_a_pipeline_directory_and_a_lone_file() {
    let g = golden();
    let pipe = tempfile::tempdir().unwrap();
    let tdir = pipe.path().join("transformer");
    std::fs::create_dir(&tdir).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixtures().join("model").join(f), tdir.join(f)).unwrap();
    }
    let m = PixArt::load(pipe.path(), DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&forward(&m, &g, &g["caption"]), &g["out"]) < TOL_F32);
    let file = tdir.join("diffusion_pytorch_model.safetensors");
    let m = PixArt::load(&file, DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs_diff(&forward(&m, &g, &g["caption"]), &g["out"]) < TOL_F32);
}

#[test]
fn random_weights_are_deterministic_per_seed() {
    let cfg = model().config().clone();
    let g = golden();
    let run = |seed| {
        let m = PixArt::random(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
        forward(&m, &g, &g["caption"])
    };
    let a = run(7);
    assert_eq!(max_abs_diff(&a, &run(7)), 0.0);
    assert!(max_abs_diff(&a, &run(8)) > 1e-3);
    let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    // Every branch matters with random weights.
    let (x, cond) = PixArt::random(&cfg, 7, DType::F32, &Device::Cpu)
        .unwrap()
        .embed(&g["x"], &g["t"], &g["caption"], Some(&g["mask"]))
        .unwrap();
    let m = PixArt::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let md = m.modulation(0, &cond).unwrap();
    for b in [Branch::Attn, Branch::Cross, Branch::Mlp] {
        let out = m.branch(0, b, &x, &md, &cond).unwrap();
        let y = m.add_branch(b, &x, &md, &out).unwrap();
        assert!(max_abs_diff(&y, &x) > 1e-4, "{b}");
    }
}

/// f16 / bf16 against diffusers' f32 output, relative to the largest output
/// (|out| <= 4.24): measured 4.4e-3 (f16) and 4.3e-2 (bf16) max abs.
#[test]
fn half_precision_runs_close_to_f32() {
    let g = golden();
    let full = &g["out"];
    let scale = max_abs(full);
    for (dt, rel) in [(DType::F16, 2.5e-3f32), (DType::BF16, 2.5e-2)] {
        let m = PixArt::load(&fixtures().join("model"), dt, &Device::Cpu).unwrap();
        let out = forward(&m, &g, &g["caption"]);
        assert_eq!(out.dtype(), DType::F32);
        let err = max_abs_diff(&out, full);
        eprintln!("{dt:?}: max abs {err:.3e} vs the f32 reference");
        assert!(err < rel * scale, "{dt:?}: {err}");
    }
}
