//! Seeded inputs of a run: the initial noise and the condition of every
//! sample, drawn batch by batch so that a sample's noise does not depend
//! on the batching (or on the shard that runs it).

use candle_core::{Device, Tensor};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

use crate::{Result, SampleBatch};

/// Caption embeddings of a text-conditional run's prompts, and of the
/// empty (null) prompt that classifier-free guidance pairs them with.
pub struct Captions {
    pub prompts: Vec<String>,
    /// `[P, L, C]` and `[P, L]` (1 = token, 0 = padding).
    pub emb: Tensor,
    pub mask: Tensor,
    /// `[1, L, C]` and `[1, L]`.
    pub null_emb: Tensor,
    pub null_mask: Tensor,
}

/// The inputs of a sampling run: initial noise and the condition of every
/// sample. The noise is drawn batch by batch ([`Inputs::batch`]), never
/// all at once.
pub struct Inputs<'a> {
    /// Class id (class-conditional models) or prompt index (text) of every
    /// sample.
    pub labels: Vec<u32>,
    pub captions: Option<&'a Captions>,
    pub seed: u64,
    /// `[C, H, W]` of one sample's noise.
    sample_dims: [usize; 3],
    device: Device,
}

impl<'a> Inputs<'a> {
    /// Samples of `seed` with the given `labels` (class ids, or indices
    /// into the prompts of `captions`), on `device`.
    pub fn new(
        plan: &Plan,
        seed: u64,
        labels: Vec<u32>,
        captions: Option<&'a Captions>,
        device: &Device,
    ) -> Inputs<'a> {
        let m = &plan.model;
        Inputs {
            labels,
            captions,
            seed,
            sample_dims: [m.in_channels, m.input_size, m.input_size],
            device: device.clone(),
        }
    }

    /// `n` samples of `seed` whose conditions cycle through the classes,
    /// or through the prompts of `captions`.
    pub fn cycling(
        plan: &Plan,
        seed: u64,
        n: usize,
        captions: Option<&'a Captions>,
        device: &Device,
    ) -> Inputs<'a> {
        let cycle = match captions {
            Some(c) => c.prompts.len(),
            None => plan.model.num_classes.max(1),
        };
        let labels = (0..n).map(|i| (i % cycle) as u32).collect();
        Inputs::new(plan, seed, labels, captions, device)
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The device the batches are made on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The row key of every sample for calibration: its class or prompt.
    pub fn conditions(&self) -> Vec<u64> {
        self.labels.iter().map(|&c| c as u64).collect()
    }

    /// Samples `range` in executor batches of at most `batch_size`, the
    /// first starting at `range.start` (a shard's batches are the single
    /// run's): `(start, batch)` in order.
    pub fn batches<'s>(
        &'s self,
        plan: &'s Plan,
        range: std::ops::Range<usize>,
        batch_size: usize,
    ) -> impl Iterator<Item = Result<(usize, SampleBatch)>> + 's {
        let end = range.end;
        range.step_by(batch_size.max(1)).map(move |start| {
            let len = batch_size.min(end - start);
            self.batch(plan, start, len).map(|b| (start, b))
        })
    }

    /// Samples `start..start+len` as one executor batch.
    pub fn batch(&self, plan: &Plan, start: usize, len: usize) -> Result<SampleBatch> {
        let dev = &self.device;
        let labels = &self.labels[start..start + len];
        // Sample i's noise is values i*CHW.. of the seed's stream, as if
        // all samples were drawn in one call, whatever the batches (drawn
        // on the host, so it is the same on every device).
        let [c, h, w] = self.sample_dims;
        let per = c * h * w;
        let mut values = vec![0f32; len * per];
        NoiseRng::new(self.seed).fill_at((start * per) as u64, &mut values);
        let noise = Tensor::from_vec(values, (len, c, h, w), dev)?;
        // The sampler's own noise (DDPM, DDIM eta > 0): one stream per batch.
        let seed = self.seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(start as u64 + 1);
        Ok(match self.captions {
            None => SampleBatch {
                noise,
                cond: Tensor::new(labels, dev)?,
                uncond: Some(Tensor::full(plan.model.num_classes as u32, len, dev)?),
                cond_mask: None,
                uncond_mask: None,
                seed,
            },
            Some(c) => {
                let idx = Tensor::new(labels, dev)?;
                let rep = |t: &Tensor| -> Result<Tensor> {
                    let dims: Vec<usize> = std::iter::once(len)
                        .chain(t.dims()[1..].iter().copied())
                        .collect();
                    Ok(t.broadcast_as(dims)?.contiguous()?)
                };
                SampleBatch {
                    noise,
                    cond: c.emb.index_select(&idx, 0)?,
                    cond_mask: Some(c.mask.index_select(&idx, 0)?),
                    uncond: Some(rep(&c.null_emb)?),
                    uncond_mask: Some(rep(&c.null_mask)?),
                    seed,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Noise is drawn batch by batch (never for all samples at once), and
    /// every batching gives each sample the values one draw of all
    /// samples would: the seed's stream in sample order.
    #[test]
    fn noise_drawn_per_batch_is_the_noise_of_one_draw() {
        let s = tcc_schedule::parse("t.sched", "[model]\nname = \"tiny\"\n").unwrap();
        let plan = tcc_plan::compile(&s, std::path::Path::new("")).unwrap();
        let m = &plan.model;
        let n = 5;
        let whole = NoiseRng::new(7)
            .randn((n, m.in_channels, m.input_size, m.input_size), &Device::Cpu)
            .unwrap();
        let inputs = Inputs::cycling(&plan, 7, n, None, &Device::Cpu);
        for sizes in [&[5][..], &[2, 3], &[1, 1, 3], &[3, 2]] {
            let mut start = 0;
            for &len in sizes {
                let batch = inputs.batch(&plan, start, len).unwrap();
                let want = whole.narrow(0, start, len).unwrap();
                assert_eq!(bits(&batch.noise), bits(&want), "{sizes:?} at {start}");
                start += len;
            }
        }
    }

    /// Labels cycle through the classes, or through the prompts.
    #[test]
    fn cycling_labels_follow_the_classes() {
        let s = tcc_schedule::parse("t.sched", "[model]\nname = \"tiny\"\n").unwrap();
        let plan = tcc_plan::compile(&s, std::path::Path::new("")).unwrap();
        let k = plan.model.num_classes;
        let inputs = Inputs::cycling(&plan, 0, k + 2, None, &Device::Cpu);
        assert_eq!(inputs.labels[k], 0);
        assert_eq!(inputs.labels[k + 1], 1);
        assert_eq!(inputs.conditions()[k - 1], (k - 1) as u64);
    }
}
