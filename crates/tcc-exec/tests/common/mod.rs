//! Helpers shared by the executor's integration tests: random models,
//! seeded class-conditional batches, and tensors as bits for exact
//! comparisons.

use candle_core::{DType, Device, Tensor};
use tcc_core::ModelShape;
use tcc_exec::SampleBatch;
use tcc_model::{Dit, DitConfig};
use tcc_sampler::NoiseRng;

/// A DiT of `shape` with seeded random weights.
pub fn model(shape: &ModelShape, seed: u64) -> Dit {
    let cfg = DitConfig::from_shape(shape).unwrap();
    Dit::random(&cfg, seed, DType::F32, &Device::Cpu).unwrap()
}

/// `n` samples of seeded noise, classes cycling through the shape's
/// classes, the null class as the unconditional half; `seed` is also the
/// batch's seed.
pub fn batch(shape: &ModelShape, n: usize, seed: u64) -> SampleBatch {
    let dev = Device::Cpu;
    let noise = NoiseRng::new(seed)
        .randn(
            (n, shape.in_channels, shape.input_size, shape.input_size),
            &dev,
        )
        .unwrap();
    let labels: Vec<u32> = (0..n as u32)
        .map(|i| i % shape.num_classes as u32)
        .collect();
    SampleBatch {
        noise,
        cond: Tensor::new(labels, &dev).unwrap(),
        uncond: Some(Tensor::full(shape.num_classes as u32, n, &dev).unwrap()),
        cond_mask: None,
        uncond_mask: None,
        seed,
    }
}

/// The f32 values of `t` as bits, for bit-for-bit comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}
