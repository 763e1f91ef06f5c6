//! `guide` and `Sampler::step` on the recorded model outputs of a tiny
//! diffusers DiT (`tests/fixtures/sampling`, written by
//! `tools/golden/sampling_run.py` with DiT's own sample.py loop in torch
//! float32). No model is run here: each step takes the recorded raw output of
//! the doubled batch, so the check isolates CFG and the DDIM update.
//! Tolerance: 1e-4 max abs, per step (the run's float32-vs-float64 floor is
//! recorded in runs.json and is far below it).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use tcc_core::SamplerSpec;
use tcc_sampler::{guide, Sampler};

const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sampling")
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
        .to_scalar()
        .unwrap()
}

#[test]
fn ddim_cfg_steps_reproduce_dits_doubled_loop() {
    let dir = fixture_dir();
    let path = dir.join("expected.safetensors");
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let get = |k: &str| {
        t.get(k)
            .unwrap_or_else(|| panic!("{}: no tensor `{k}`", path.display()))
            .to_dtype(DType::F32)
            .unwrap()
    };
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs.json")).unwrap()).unwrap();
    let run = &meta["runs"]["ddim_cfg"];
    let spec: SamplerSpec = serde_json::from_value(run["spec"].clone()).unwrap();
    let timesteps: Vec<u32> = serde_json::from_value(run["timesteps"].clone()).unwrap();

    let mut sampler = Sampler::new(&spec).unwrap();
    assert_eq!(sampler.timesteps(), timesteps.as_slice());
    for i in 0..sampler.steps() {
        let raw = get(&format!("ddim_cfg.model_out{i}"));
        let guided = guide(&raw, &spec, 4).unwrap();
        let d = max_abs_diff(&guided, &get(&format!("ddim_cfg.guided{i}")));
        assert!(d <= TOL, "step {i}: guided output differs by {d:e}");
        // Step from the reference's own x, so errors do not accumulate.
        let reference_x = if i == 0 {
            get("x_T")
        } else {
            get(&format!("ddim_cfg.x{i}"))
        };
        let next = sampler.step(i, &reference_x, &guided, None).unwrap();
        let want = get(&format!("ddim_cfg.x{}", i + 1));
        let d = max_abs_diff(&next, &want);
        assert!(d <= TOL, "step {i}: x differs by {d:e}");
    }
}
