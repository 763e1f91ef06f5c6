//! The plain sampling loop: no cache, no executor.

use candle_core::Tensor;
use tcc_core::SamplerSpec;

use crate::{guide, Result, Sampler};

/// Sample from `x_t` (`[B, C, ...]`, f32 or the model's dtype) with the model
/// closure `model_fn(x_in, t)` and return the final latents.
///
/// At every step `x_in` is `[x; x]` when the spec uses CFG (the closure lays
/// out its conditions in `spec.cfg_order`) and `x` otherwise; `t` is an f32
/// tensor `[batch of x_in]` holding the step's original timestep. The
/// closure's output goes through [`guide`] with `C` latent channels.
/// `noise_fn(dims)` is called with `x`'s dims only at steps that add noise,
/// in step order (e.g. `|d| rng.randn(d, &device)` with a [`NoiseRng`](crate::NoiseRng)).
pub fn sample_loop<M, N>(
    spec: &SamplerSpec,
    x_t: &Tensor,
    model_fn: M,
    noise_fn: N,
) -> Result<Tensor>
where
    M: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    N: FnMut(&[usize]) -> candle_core::Result<Tensor>,
{
    let mut last = x_t.clone();
    run(spec, x_t, model_fn, noise_fn, |x| last = x.clone())?;
    Ok(last)
}

/// [`sample_loop`], returning `x_T` and the latents after every step
/// (`steps + 1` tensors).
pub fn sample_trajectory<M, N>(
    spec: &SamplerSpec,
    x_t: &Tensor,
    model_fn: M,
    noise_fn: N,
) -> Result<Vec<Tensor>>
where
    M: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    N: FnMut(&[usize]) -> candle_core::Result<Tensor>,
{
    let mut all = vec![x_t.clone()];
    run(spec, x_t, model_fn, noise_fn, |x| all.push(x.clone()))?;
    Ok(all)
}

fn run<M, N, O>(
    spec: &SamplerSpec,
    x_t: &Tensor,
    mut model_fn: M,
    mut noise_fn: N,
    mut on_step: O,
) -> Result<()>
where
    M: FnMut(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    N: FnMut(&[usize]) -> candle_core::Result<Tensor>,
    O: FnMut(&Tensor),
{
    let mut sampler = Sampler::new(spec)?;
    let channels = x_t.dim(1)?;
    let mut x = x_t.clone();
    for i in 0..sampler.steps() {
        let x_in = if spec.uses_cfg() {
            Tensor::cat(&[&x, &x], 0)?
        } else {
            x.clone()
        };
        let t = Tensor::full(sampler.timesteps()[i] as f32, x_in.dim(0)?, x.device())?;
        let out = model_fn(&x_in, &t)?;
        let guided = guide(&out, spec, channels)?;
        let noise = if sampler.needs_noise(i) {
            Some(noise_fn(x.dims())?)
        } else {
            None
        };
        x = sampler.step(i, &x, &guided, noise.as_ref())?;
        on_step(&x);
    }
    Ok(())
}
