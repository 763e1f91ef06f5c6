//! What the walk tests on the micro DiT share: the schedule's plan, a
//! random model and two seeded calibration batches.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tcc_calib::CalibBatch;
use tcc_exec::SampleBatch;
use tcc_model::{Dit, DitConfig};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

/// The workspace root, against which the schedule's model path resolves.
pub fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The plan of schedule `text`, named `file` in diagnostics.
pub fn plan_of(file: &str, text: &str) -> Plan {
    let s = tcc_schedule::parse(file, text).expect("parses");
    tcc_plan::compile(&s, &workspace()).expect("compiles")
}

pub fn model(plan: &Plan) -> Dit {
    let cfg = DitConfig::from_shape(&plan.model).unwrap();
    Dit::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap()
}

pub fn batch(plan: &Plan, seed: u64, classes: &[u32]) -> SampleBatch {
    let m = &plan.model;
    let dev = Device::Cpu;
    let n = classes.len();
    SampleBatch {
        noise: NoiseRng::new(seed)
            .randn((n, m.in_channels, m.input_size, m.input_size), &dev)
            .unwrap(),
        cond: Tensor::new(classes, &dev).unwrap(),
        uncond: Some(Tensor::full(m.num_classes as u32, n, &dev).unwrap()),
        cond_mask: None,
        uncond_mask: None,
        seed,
    }
}

/// Two batches, 6 samples over classes 0..3 (two rows per class pool).
pub fn batches(plan: &Plan) -> Vec<CalibBatch> {
    [(0u64, [0u32, 1, 2]), (1, [0, 1, 2])]
        .into_iter()
        .map(|(seed, classes)| CalibBatch {
            batch: batch(plan, seed, &classes),
            conditions: classes.iter().map(|&c| c as u64).collect(),
        })
        .collect()
}
