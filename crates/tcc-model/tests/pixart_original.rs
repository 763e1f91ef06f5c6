//! PixArt-α from the ORIGINAL checkpoint layout (the `.pth` files of
//! PixArt-alpha/PixArt-alpha).
//!
//! Reference: `tools/golden/pixart_original.py` rewrites the tiny diffusers
//! fixture (`tests/fixtures/pixart_tiny/model/`, see `pixart_golden.rs`) in
//! the original layout, by the inverse of diffusers'
//! `convert_pixart_alpha_to_diffusers.py` (q, k, v fused into `attn.qkv`,
//! k, v into `cross_attn.kv_linear`, renamed), adds the fixed `pos_embed`
//! buffer (from diffusers' own `PatchEmbed`) and a seeded null caption
//! `y_embedder.y_embedding`, and saves it nested under `state_dict` as
//! `original.pth`. Same weights, so the same forward as diffusers.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{load_tensors, max_abs_diff};
use tcc_model::{BlockModel, PixArt, PixArtConfig};

fn fixtures() -> PathBuf {
    common::fixtures("pixart_tiny")
}

fn original() -> PathBuf {
    fixtures().join("original.pth")
}

/// The fixture's shape, as the caller (the schedule's preset) would name
/// it; taken from the diffusers copy's config.json, which
/// `pixart_golden.rs` checks field by field.
fn cfg() -> PixArtConfig {
    PixArtConfig::from_diffusers_config(&fixtures().join("model/config.json")).unwrap()
}

fn load(path: &Path, cfg: Option<&PixArtConfig>) -> tcc_model::Result<PixArt> {
    PixArt::load_with_config(path, cfg, DType::F32, &Device::Cpu)
}

fn forward(m: &PixArt, g: &HashMap<String, Tensor>) -> Tensor {
    m.forward(&g["x"], &g["t"], &g["caption"], Some(&g["mask"]))
        .unwrap()
}

/// The original checkpoint's tensors (un-nested).
fn original_tensors() -> HashMap<String, Tensor> {
    candle_core::pickle::read_all_with_key(original(), Some("state_dict"))
        .unwrap()
        .into_iter()
        .collect()
}

/// `tensors` saved as an original-layout safetensors file in a temp dir.
fn saved(tensors: &HashMap<String, Tensor>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("original.safetensors");
    candle_core::safetensors::save(tensors, &file).unwrap();
    (dir, file)
}

#[test]
fn original_checkpoint_matches_the_diffusers_layout() {
    let g = load_tensors(&fixtures().join("golden.safetensors"));
    let orig = load(&original(), Some(&cfg())).unwrap();
    let diff = PixArt::load(&fixtures().join("model"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(orig.config(), diff.config());
    let out = forward(&orig, &g);
    let want = forward(&diff, &g);
    assert_eq!(out.dims(), [2, 8, 8, 8]);
    let err = max_abs_diff(&out, &want);
    let err_ref = max_abs_diff(&out, &g["out"]);
    eprintln!(
        "original layout vs diffusers layout: {err:.3e}; vs diffusers' forward: {err_ref:.3e}"
    );
    assert!(err < 1e-5, "{err}");
    assert!(err_ref < 1e-4, "{err_ref}");

    // The null caption is kept as stored; diffusers weights have none.
    let null = orig.null_caption().expect("original checkpoints carry one");
    assert_eq!(null.dims(), [120, 24]);
    let stored = &original_tensors()["y_embedder.y_embedding"];
    assert_eq!(max_abs_diff(null, stored), 0.0);
    assert!(diff.null_caption().is_none());

    // The diffusers directory with a matching config given loads too.
    let with_cfg = load(&fixtures().join("model"), Some(&cfg())).unwrap();
    assert_eq!(max_abs_diff(&forward(&with_cfg, &g), &want), 0.0);

    // Un-nested, as safetensors, without `pos_embed`: the same model.
    let mut t = original_tensors();
    t.remove("pos_embed");
    let (_dir, file) = saved(&t);
    let m = load(&file, Some(&cfg())).unwrap();
    assert!(max_abs_diff(&forward(&m, &g), &want) < 1e-5);
}

#[test]
fn original_checkpoint_errors_name_the_problem() {
    // No config: the original layout carries none.
    let msg = load(&original(), None).unwrap_err().to_string();
    assert!(msg.contains("no config"), "{msg}");
    assert!(PixArt::load(&original(), DType::F32, &Device::Cpu).is_err());

    // A missing tensor is named, with the file.
    let name = "blocks.1.cross_attn.kv_linear.weight";
    let mut t = original_tensors();
    t.remove(name);
    let (_dir, file) = saved(&t);
    let msg = load(&file, Some(&cfg())).unwrap_err().to_string();
    assert!(msg.contains(&format!("`{name}`: missing")), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");

    // A mis-shaped fused tensor, by name.
    let name = "blocks.0.attn.qkv.bias";
    let mut t = original_tensors();
    t.insert(
        name.into(),
        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
    );
    let (_dir, file) = saved(&t);
    let msg = load(&file, Some(&cfg())).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("`{name}`: has shape [64], expected [96]")),
        "{msg}"
    );

    // A deeper model than asked for: block 2 is unexpected.
    let shallow = PixArtConfig { depth: 1, ..cfg() };
    let msg = load(&original(), Some(&shallow)).unwrap_err().to_string();
    assert!(msg.contains("`blocks.1."), "{msg}");
    assert!(msg.contains("unexpected"), "{msg}");

    // The stored position embedding catches a wrong interpolation scale.
    let wrong = PixArtConfig {
        interpolation_scale: 1.0,
        ..cfg()
    };
    let msg = load(&original(), Some(&wrong)).unwrap_err().to_string();
    assert!(msg.contains("`pos_embed`"), "{msg}");
    assert!(msg.contains("interpolation scale 1"), "{msg}");

    // A diffusers directory that disagrees with the requested shape.
    let wide = PixArtConfig {
        caption_channels: 48,
        ..cfg()
    };
    let msg = load(&fixtures().join("model"), Some(&wide))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("caption channels is 24"), "{msg}");
}
