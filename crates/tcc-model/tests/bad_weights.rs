//! Bad weights and bad inputs give clear errors (naming the tensor and the
//! file), never a panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{dit_tiny_cfg as tiny_cfg, load_tensors};
use tcc_model::{convert_checkpoint, BlockModel, Dit, DitConfig};

fn fixtures() -> PathBuf {
    common::fixtures("dit_tiny")
}

fn original() -> HashMap<String, Tensor> {
    load_tensors(&fixtures().join("original.safetensors"))
}

/// Writes `tensors` to `dir/name` and returns the load error message.
fn load_err(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> String {
    let file = dir.join(name);
    candle_core::safetensors::save(tensors, &file).unwrap();
    let err = Dit::load(&file, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(name), "message does not name the file: {msg}");
    msg
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = original();
    t.insert(
        "blocks.1.mlp.fc1.weight".into(),
        Tensor::zeros((127, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = load_err(tmp.path(), "shape.safetensors", &t);
    assert!(msg.contains("`blocks.1.mlp.fc1.weight`"), "{msg}");
    assert!(
        msg.contains("[127, 32]") && msg.contains("[128, 32]"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = original();
    t.remove("blocks.0.attn.proj.bias");
    let msg = load_err(tmp.path(), "missing.safetensors", &t);
    assert!(msg.contains("`blocks.0.attn.proj.bias`: missing"), "{msg}");
}

#[test]
fn extra_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = original();
    let extra = t["blocks.1.attn.qkv.weight"].clone();
    t.insert("blocks.2.attn.qkv.weight".into(), extra);
    let msg = load_err(tmp.path(), "extra.safetensors", &t);
    assert!(
        msg.contains("`blocks.2.attn.qkv.weight`: unexpected"),
        "{msg}"
    );
    // A model with fewer blocks than the file: the surplus block is unexpected.
    let cfg = DitConfig {
        depth: 1,
        ..tiny_cfg()
    };
    let file = fixtures().join("original.safetensors");
    let msg = Dit::load(&file, Some(&cfg), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("blocks.1.") && msg.contains("unexpected"),
        "{msg}"
    );
}

#[test]
fn non_finite_values_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (bad, file) in [
        (f32::NAN, "nan.safetensors"),
        (f32::INFINITY, "inf.safetensors"),
    ] {
        let mut t = original();
        let name = "t_embedder.mlp.2.weight";
        let mut v = t[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[37] = bad;
        t.insert(
            name.into(),
            Tensor::from_vec(v, (32, 32), &Device::Cpu).unwrap(),
        );
        let msg = load_err(tmp.path(), file, &t);
        assert!(msg.contains("`t_embedder.mlp.2.weight`"), "{msg}");
        assert!(
            msg.contains("non-finite") && msg.contains("index 37"),
            "{msg}"
        );
    }
}

#[test]
fn wrong_pos_embed_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = original();
    let pe = (&t["pos_embed"] * 1.01).unwrap();
    t.insert("pos_embed".into(), pe);
    let msg = load_err(tmp.path(), "pos.safetensors", &t);
    assert!(
        msg.contains("`pos_embed`") && msg.contains("sin-cos"),
        "{msg}"
    );
}

#[test]
fn integer_tensor_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = original();
    let name = "final_layer.linear.bias";
    t.insert(
        name.into(),
        Tensor::zeros(32, DType::I64, &Device::Cpu).unwrap(),
    );
    let msg = load_err(tmp.path(), "int.safetensors", &t);
    assert!(
        msg.contains(&format!("`{name}`")) && msg.contains("I64"),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for src in ["original.safetensors", "original.pt"] {
        let bytes = std::fs::read(fixtures().join(src)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 10, 6] {
            let file = tmp.path().join(format!("cut{cut}-{src}"));
            std::fs::write(&file, &bytes[..cut]).unwrap();
            let err = Dit::load(&file, Some(&tiny_cfg()), DType::F32, &Device::Cpu).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("cut{cut}-{src}")), "{msg}");
            assert!(msg.contains("truncated or corrupt"), "{msg}");
        }
    }
    let bytes = std::fs::read(fixtures().join("original.pt")).unwrap();
    let file = tmp.path().join("cut.pt");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("out.safetensors");
    let msg = convert_checkpoint(&file, &out).unwrap_err().to_string();
    assert!(
        msg.contains("cut.pt") && msg.contains("truncated or corrupt"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// A byte flipped inside a tensor's zip entry keeps the archive readable:
/// only the entry's CRC-32 tells.
#[test]
fn a_damaged_zip_entry_is_refused_not_converted() {
    let mut bytes = std::fs::read(fixtures().join("original.pt")).unwrap();
    let (start, len) = {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        let mut best = (0u64, 0u64);
        for i in 0..zip.len() {
            let e = zip.by_index(i).unwrap();
            if e.name().contains("/data/") && e.size() > best.1 {
                best = (e.data_start(), e.size());
            }
        }
        best
    };
    assert!(len > 0, "the fixture has tensor entries");
    bytes[(start + len / 2) as usize] ^= 0x40;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("damaged.pt");
    std::fs::write(&file, &bytes).unwrap();
    let out = tmp.path().join("out.safetensors");
    let msg = convert_checkpoint(&file, &out).unwrap_err().to_string();
    assert!(
        msg.contains("damaged.pt") && msg.contains("CRC-32"),
        "{msg}"
    );
    assert!(!out.exists());
    let msg = Dit::load(&file, Some(&tiny_cfg()), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("CRC-32"), "{msg}");
}

#[test]
fn nonexistent_and_foreign_paths() {
    let missing = Path::new("/nonexistent/dit-xl-2.pt");
    let msg = Dit::load(missing, Some(&tiny_cfg()), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/nonexistent/dit-xl-2.pt"), "{msg}");

    let tmp = tempfile::tempdir().unwrap();
    // A directory that is neither a diffusers model nor a pipeline.
    let msg = Dit::load(tmp.path(), Some(&tiny_cfg()), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");
    // A safetensors file of something else.
    let other = HashMap::from([(
        "encoder.weight".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    )]);
    let msg = load_err(tmp.path(), "other.safetensors", &other);
    assert!(msg.contains("not a DiT checkpoint"), "{msg}");
    // Not a weights file at all.
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"hello world, not weights").unwrap();
    let msg = Dit::load(&junk, Some(&tiny_cfg()), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("junk.bin"), "{msg}");
    // Original-layout weights carry no config: a shape must be named.
    let msg = Dit::load(
        &fixtures().join("original.pt"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("original.pt") && msg.contains("heads"),
        "{msg}"
    );
    // convert refuses what is not an original-layout .pt.
    let out = tmp.path().join("x.safetensors");
    assert!(convert_checkpoint(&fixtures().join("original.safetensors"), &out).is_err());
    assert!(!out.exists());
}

#[test]
fn diffusers_directory_errors() {
    let src = fixtures().join("diffusers");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();

    // No weights next to config.json.
    let msg = Dit::load(&dir, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    // Blocks whose embedder copies differ: diffusers conditions each block
    // with its own copy, and so does tcc (numbers checked against diffusers
    // in tcc-exec's golden sampling-run test). Only block 1 changes here.
    let mut t = load_tensors(&src.join("diffusion_pytorch_model.safetensors"));
    let name = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.bias";
    let changed = (&t[name] + 0.5).unwrap();
    t.insert(name.into(), changed);
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    candle_core::safetensors::save(&t, &weights).unwrap();
    let per_block = Dit::load(&dir, None, DType::F32, &Device::Cpu).unwrap();
    let shared = Dit::load(&src, None, DType::F32, &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    let ts = Tensor::new(&[500f32], &dev).unwrap();
    let y = Tensor::new(&[3u32], &dev).unwrap();
    let modulation = |m: &Dit, block: usize| -> Vec<f32> {
        let (_, c) = m.embed(&x, &ts, &y, None).unwrap();
        let mo = m.modulation(block, &c).unwrap();
        mo.gate_msa.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(modulation(&per_block, 0), modulation(&shared, 0));
    assert_ne!(modulation(&per_block, 1), modulation(&shared, 1));

    // config.json disagreeing with the requested shape.
    std::fs::copy(src.join("diffusion_pytorch_model.safetensors"), &weights).unwrap();
    let cfg = DitConfig {
        heads: 4,
        ..tiny_cfg()
    };
    let msg = Dit::load(&dir, Some(&cfg), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("heads is 2"),
        "{msg}"
    );

    // A malformed config.json names line and column.
    std::fs::write(dir.join("config.json"), "{\n  \"num_layers\": two\n}").unwrap();
    let msg = Dit::load(&dir, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config.json: line 2, column"), "{msg}");

    // An unsupported variant.
    let text = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("gelu-approximate", "geglu");
    std::fs::write(dir.join("config.json"), text).unwrap();
    let msg = Dit::load(&dir, None, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("activation_fn"), "{msg}");
}

#[test]
fn bad_inputs_are_errors() {
    let model = Dit::random(&tiny_cfg(), 1, DType::F32, &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 4, 8, 8), DType::F32, &dev).unwrap();
    let t = Tensor::new(&[10f32, 20.0], &dev).unwrap();
    let y = Tensor::new(&[1u32, 10], &dev).unwrap();
    assert!(model.forward(&x, &t, &y, None).is_ok());
    let bad_class = Tensor::new(&[1u32, 11], &dev).unwrap();
    let msg = model
        .forward(&x, &t, &bad_class, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("class id 11"), "{msg}");
    let negative = Tensor::new(&[-1i64, 3], &dev).unwrap();
    assert!(model.forward(&x, &t, &negative, None).is_err());
    let float_ids = Tensor::new(&[1f32, 3.0], &dev).unwrap();
    assert!(model.forward(&x, &t, &float_ids, None).is_err());
    let wrong_size = Tensor::zeros((2, 4, 16, 16), DType::F32, &dev).unwrap();
    let msg = model
        .forward(&wrong_size, &t, &y, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[B, 4, 8, 8]"), "{msg}");
    let short_t = Tensor::new(&[10f32], &dev).unwrap();
    assert!(model.forward(&x, &short_t, &y, None).is_err());
    let (h, c) = model.embed(&x, &t, &y, None).unwrap();
    assert!(model.modulation(2, &c).is_err());
    let m = model.modulation(0, &c).unwrap();
    let wrong_out = h.narrow(1, 0, 3).unwrap();
    assert!(model
        .add_branch(tcc_core::Branch::Attn, &h, &m, &wrong_out)
        .is_err());
}
