//! The tensors a checkpoint must hold are what the model's constructor asks
//! for (`expected_tensors` records them): they must agree with the real
//! checkpoints of both layouts (the fixtures written by `tools/golden/`
//! from diffusers and the original code), with the parameter counts of
//! `ModelShape`, and a checkpoint that differs is refused naming what
//! differs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{dit_tiny_cfg, fixtures, load_tensors};
use tcc_core::ModelShape;
use tcc_model::{Dit, DitConfig, PixArt, PixArtConfig, WeightsLayout};

type Shapes = BTreeMap<String, Vec<usize>>;

fn shapes_of(tensors: &HashMap<String, Tensor>) -> Shapes {
    tensors
        .iter()
        // The original layouts' fixed position embedding is a buffer,
        // checked against the computed one, not a weight.
        .filter(|(n, _)| n.as_str() != "pos_embed")
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect()
}

fn recorded(v: Vec<(String, Vec<usize>)>) -> Shapes {
    let n = v.len();
    let map: Shapes = v.into_iter().collect();
    assert_eq!(map.len(), n, "a tensor is asked for twice");
    map
}

fn dit_diffusers_cfg() -> DitConfig {
    DitConfig::from_diffusers_config(&fixtures("dit_tiny").join("diffusers/config.json")).unwrap()
}

fn pixart_cfg() -> PixArtConfig {
    PixArtConfig::from_diffusers_config(&fixtures("pixart_tiny").join("model/config.json")).unwrap()
}

fn dit_checkpoint(layout: WeightsLayout) -> HashMap<String, Tensor> {
    let dir = fixtures("dit_tiny");
    match layout {
        WeightsLayout::Original => load_tensors(&dir.join("original.safetensors")),
        WeightsLayout::Diffusers => {
            load_tensors(&dir.join("diffusers/diffusion_pytorch_model.safetensors"))
        }
    }
}

fn pixart_checkpoint(layout: WeightsLayout) -> HashMap<String, Tensor> {
    let dir = fixtures("pixart_tiny");
    match layout {
        WeightsLayout::Original => {
            candle_core::pickle::read_all_with_key(dir.join("original.pth"), Some("state_dict"))
                .unwrap()
                .into_iter()
                .collect()
        }
        WeightsLayout::Diffusers => {
            load_tensors(&dir.join("model/diffusion_pytorch_model.safetensors"))
        }
    }
}

const LAYOUTS: [WeightsLayout; 2] = [WeightsLayout::Original, WeightsLayout::Diffusers];

#[test]
fn recorded_tensors_are_those_of_real_checkpoints() {
    for layout in LAYOUTS {
        let cfg = match layout {
            WeightsLayout::Original => dit_tiny_cfg(),
            WeightsLayout::Diffusers => dit_diffusers_cfg(),
        };
        let want = shapes_of(&dit_checkpoint(layout));
        let got = recorded(Dit::expected_tensors(&cfg, layout).unwrap());
        assert_eq!(got, want, "DiT, {layout:?}");

        let want = shapes_of(&pixart_checkpoint(layout));
        let got = recorded(PixArt::expected_tensors(&pixart_cfg(), layout).unwrap());
        assert_eq!(got, want, "PixArt-α, {layout:?}");
    }
}

/// Recording a full-size model allocates nothing (it runs in
/// milliseconds) and counts what `ModelShape::parameter_count` counts from
/// the layer sizes, the fixed position embedding aside.
#[test]
fn recorded_full_size_models_match_the_parameter_counts() {
    let count = |v: Vec<(String, Vec<usize>)>| -> u128 {
        v.iter()
            .map(|(_, s)| s.iter().product::<usize>() as u128)
            .sum()
    };
    let shape = ModelShape::preset("dit-xl-2-256").unwrap();
    let cfg = DitConfig::from_shape(&shape).unwrap();
    let pos = (shape.tokens() * shape.hidden) as u128;
    let original = count(Dit::expected_tensors(&cfg, WeightsLayout::Original).unwrap());
    assert_eq!(original + pos, shape.parameter_count());
    // diffusers keeps a copy of the class and timestep embedder per block.
    let embedder = (256 * 1152 + 1152 + 1152 * 1152 + 1152 + 1001 * 1152) as u128;
    let diffusers = count(Dit::expected_tensors(&cfg, WeightsLayout::Diffusers).unwrap());
    assert_eq!(diffusers, original + 27 * embedder);

    let shape = ModelShape::preset("pixart-alpha-256").unwrap();
    let cfg = PixArtConfig::from_shape(&shape).unwrap();
    let pos = (shape.tokens() * shape.hidden) as u128;
    let diffusers = count(PixArt::expected_tensors(&cfg, WeightsLayout::Diffusers).unwrap());
    assert_eq!(diffusers + pos, shape.parameter_count());
    // The original checkpoint adds its learned null caption.
    let original = count(PixArt::expected_tensors(&cfg, WeightsLayout::Original).unwrap());
    assert_eq!(original, diffusers + 120 * 4096);
}

/// Writes `tensors` to `dir/name` and returns the path.
fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let file = dir.join(name);
    candle_core::safetensors::save(tensors, &file).unwrap();
    file
}

/// `tensors` with one expected tensor removed and one foreign tensor added:
/// (the edited tensors, the missing name, the extra name).
fn one_missing_one_extra(
    mut tensors: HashMap<String, Tensor>,
    expected: &[(String, Vec<usize>)],
) -> (HashMap<String, Tensor>, String, String) {
    let missing = expected[expected.len() / 2].0.clone();
    let t = tensors.remove(&missing).unwrap();
    let extra = format!("{missing}.unknown");
    tensors.insert(extra.clone(), t);
    (tensors, missing, extra)
}

#[test]
fn a_missing_and_an_extra_tensor_are_both_named() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |msg: String, file: &Path, missing: &str, extra: &str| {
        assert!(
            msg.contains(&format!("`{missing}`: missing")),
            "{missing}: {msg}"
        );
        assert!(
            msg.contains(&format!("`{extra}` is unexpected")),
            "{extra}: {msg}"
        );
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    };
    for layout in LAYOUTS {
        let name = format!("dit-{layout:?}.safetensors");
        let cfg = dit_tiny_cfg();
        let expected = Dit::expected_tensors(&cfg, layout).unwrap();
        let (t, missing, extra) = one_missing_one_extra(dit_checkpoint(layout), &expected);
        let file = save(tmp.path(), &name, &t);
        let msg = Dit::load(&file, Some(&cfg), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        check(msg, &file, &missing, &extra);

        let name = format!("pixart-{layout:?}.safetensors");
        let cfg = pixart_cfg();
        let expected = PixArt::expected_tensors(&cfg, layout).unwrap();
        let (t, missing, extra) = one_missing_one_extra(pixart_checkpoint(layout), &expected);
        let file = save(tmp.path(), &name, &t);
        let msg = PixArt::load_with_config(&file, Some(&cfg), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        check(msg, &file, &missing, &extra);
    }
}
