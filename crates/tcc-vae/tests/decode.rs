//! The decoder against diffusers on a tiny random `AutoencoderKL`.
//!
//! Reference: `tools/golden/vae_decoder.py` (diffusers 0.42.1, torch 2.15)
//! writes `tests/fixtures/tiny-vae/` (diffusers layout, encoder included)
//! and `tests/fixtures/vae_expected.safetensors`: `latents` [2, 4, 8, 8],
//! `decoded` = `vae.decode(latents / vae.config.scaling_factor).sample` and
//! `images` = `decoded.clamp(-1, 1)`, [2, 3, 64, 64].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tcc_vae::{VaeDecoder, VaeError, CONFIG_FILE, WEIGHTS_FILE};

/// f32 on both sides; the differences are summation order only (~1e-6 seen).
const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> VaeDecoder {
    VaeDecoder::load(&fixtures().join("tiny-vae"), DType::F32, &Device::Cpu).unwrap()
}

fn expected() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("vae_expected.safetensors"), &Device::Cpu)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn matches_diffusers() {
    let vae = tiny();
    let exp = expected();
    let latents = &exp["latents"];
    let raw = vae.decode_unclamped(latents).unwrap();
    let d = max_abs_diff(&raw, &exp["decoded"]);
    eprintln!("unclamped decode vs diffusers: max abs diff {d}");
    assert!(d < TOL, "unclamped decode: max abs diff {d} vs diffusers");
    let images = vae.decode(latents).unwrap();
    assert_eq!(images.dims(), &[2, 3, 64, 64]);
    assert_eq!(images.dtype(), DType::F32);
    let d = max_abs_diff(&images, &exp["images"]);
    assert!(d < TOL, "decode: max abs diff {d} vs diffusers");
    let v = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    // The fixture has values outside [-1, 1]: the clamp is exercised.
    assert!(v.contains(&1.0) && v.contains(&-1.0));
}

#[test]
fn batch_sizes_agree_and_progress_is_reported() {
    let exp = expected();
    let latents = &exp["latents"];
    let mut calls = Vec::new();
    let one = tiny()
        .decode_with_progress(latents, |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls, [(1, 2), (2, 2)]);
    let vae = tiny().with_batch_size(2).unwrap();
    assert_eq!(vae.batch_size(), 2);
    let mut calls = Vec::new();
    let two = vae
        .decode_with_progress(latents, |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls, [(2, 2)]);
    // A batch larger than the input, and a batch that does not divide it.
    let three = tiny().with_batch_size(3).unwrap();
    let five = Tensor::cat(&[latents, latents, &latents.narrow(0, 0, 1).unwrap()], 0).unwrap();
    let out5 = three.decode(&five).unwrap();
    assert_eq!(out5.dims(), &[5, 3, 64, 64]);
    // Identical, not merely close: every op is per-sample on CPU.
    let d = max_abs_diff(&one, &two);
    assert_eq!(d, 0.0, "batch 1 vs 2");
    // five = [l0, l1, l0, l1, l0] in batches [0, 3) and [3, 5).
    let d = max_abs_diff(&out5.narrow(0, 2, 2).unwrap(), &one);
    assert_eq!(d, 0.0, "batch 3 vs 1");
    let d = max_abs_diff(
        &out5.narrow(0, 4, 1).unwrap(),
        &one.narrow(0, 0, 1).unwrap(),
    );
    assert_eq!(d, 0.0, "batch 3 (last, partial) vs 1");
    assert!(tiny().with_batch_size(0).is_err());
}

#[test]
fn rejects_bad_latents() {
    let vae = tiny();
    for shape in [vec![1, 3, 8, 8], vec![4, 8, 8], vec![1, 4, 0, 8]] {
        let t = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let e = vae.decode(&t).unwrap_err();
        assert!(matches!(e, VaeError::Invalid(_)), "{shape:?}: {e}");
    }
    let empty = Tensor::zeros((0, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.decode(&empty).unwrap().dims(), &[0, 3, 64, 64]);
}

/// A copy of the tiny VAE in a temporary directory, for breaking it.
fn copy_tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [CONFIG_FILE, WEIGHTS_FILE] {
        std::fs::copy(fixtures().join("tiny-vae").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    VaeDecoder::load(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_files_are_named() {
    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");

    let dir = copy_tiny();
    std::fs::remove_file(dir.path().join(WEIGHTS_FILE)).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains(WEIGHTS_FILE) && e.contains("not found"), "{e}");

    let e = load_err(&dir.path().join("nope"));
    assert!(e.contains("nope"), "{e}");

    let dir = copy_tiny();
    std::fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains(WEIGHTS_FILE) && e.contains("safetensors"), "{e}");
}

/// Rewrites the tiny VAE's weights with `edit` applied to the tensor map.
fn with_weights(
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let dir = copy_tiny();
    let path = dir.path().join(WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    dir
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let name = "decoder.up_blocks.1.resnets.0.conv1.weight";
    let dir = with_weights(|t| {
        t.remove(name).unwrap();
    });
    let err = VaeDecoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, VaeError::MissingTensor { name: n, path } if n == name && path.ends_with(WEIGHTS_FILE)),
        "{err}"
    );
    assert!(err.to_string().contains(name) && err.to_string().contains(WEIGHTS_FILE));

    let name = "decoder.mid_block.attentions.0.to_q.weight";
    let dir = with_weights(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((32, 16), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = VaeDecoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains(name), "{err}");
    assert!(matches!(err, VaeError::TensorShape { .. }), "{err}");

    // Encoder weights are not needed.
    let dir = with_weights(|t| {
        t.retain(|k, _| !k.starts_with("encoder.") && !k.starts_with("quant_conv."))
    });
    let vae = VaeDecoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let exp = expected();
    let d = max_abs_diff(&vae.decode(&exp["latents"]).unwrap(), &exp["images"]);
    assert!(d < TOL, "decoder-only weights: {d}");
}

#[test]
fn images_to_bytes() {
    let exp = expected();
    let images = tiny().decode(&exp["latents"]).unwrap();
    let rgb = tcc_vae::to_u8_nhwc(&images).unwrap();
    assert_eq!((rgb.n, rgb.height, rgb.width), (2, 64, 64));
    assert_eq!(rgb.data.len(), 2 * 64 * 64 * 3);
    // Pixel (y 5, x 7) of image 1, channel 2.
    let v = images
        .get(1)
        .unwrap()
        .get(2)
        .unwrap()
        .get(5)
        .unwrap()
        .get(7)
        .unwrap();
    let v = v.to_scalar::<f32>().unwrap();
    assert_eq!(
        rgb.image(1).unwrap()[(5 * 64 + 7) * 3 + 2],
        tcc_data::to_u8(v)
    );
}
