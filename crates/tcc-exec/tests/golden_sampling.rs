//! Whole sampling runs of a tiny DiT against diffusers/PyTorch
//! (`tools/golden/sampling_run.py`, fixtures in `tests/fixtures/sampling/`):
//! the model loaded from the diffusers layout, driven by the executor over
//! the all-compute plan, must land on the reference's final latents.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use tcc_core::{CalibrationSpec, SamplerSpec};
use tcc_exec::{NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Dit};
use tcc_plan::{Action, Plan, StepPlan};

/// The reference runs' own float32-vs-float64 error is at most 3.6e-5
/// (runs.json); the task's bound for f32 is 1e-4 max abs.
const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sampling")
}

fn full_plan(model: &Dit, spec: SamplerSpec) -> Plan {
    let shape = model.config().to_shape("golden");
    let ts = spec.timesteps();
    let steps = (0..spec.steps)
        .map(|s| StepPlan {
            step: s,
            timestep: ts[s],
            actions: vec![vec![Action::Compute; model.branches().len()]; model.depth()],
        })
        .collect();
    Plan {
        source: "golden".into(),
        weights: None,
        model: shape,
        sampler: spec,
        calibration: CalibrationSpec::default(),
        toca: None,
        steps,
        dynamic: None,
    }
}

#[test]
fn executor_reproduces_diffusers_sampling_runs() {
    let dir = fixtures();
    let dev = Device::Cpu;
    let model = Dit::load(&dir.join("model"), None, DType::F32, &dev).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs.json")).unwrap()).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
    let x_t = &expected["x_T"];
    let labels: Vec<u32> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let null = meta["null_class"].as_u64().unwrap() as u32;
    for run in ["ddim_cfg", "dpm_cfg", "ddim"] {
        let spec: SamplerSpec = serde_json::from_value(meta["runs"][run]["spec"].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(spec.timesteps()).unwrap(),
            meta["runs"][run]["timesteps"],
            "{run}: timesteps"
        );
        let plan = full_plan(&model, spec.clone());
        let batch = SampleBatch {
            noise: x_t.clone(),
            cond: Tensor::new(labels.as_slice(), &dev).unwrap(),
            uncond: Some(Tensor::new(&[null, null], &dev).unwrap()),
            cond_mask: None,
            uncond_mask: None,
            seed: 0,
        };
        let got = Trajectory::new(&model, &plan, &batch)
            .unwrap()
            .run(&mut NoHooks)
            .unwrap();
        let want = &expected[&format!("{run}.x{}", spec.steps)];
        let err = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err <= TOL, "{run}: max abs error {err} > {TOL}");
    }
}
