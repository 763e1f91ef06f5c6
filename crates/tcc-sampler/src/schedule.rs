//! Noise schedule and per-step coefficients, all in f64.
//!
//! DDIM and DDPM follow DiT's `SpacedDiffusion` (itself from OpenAI's
//! guided-diffusion): the kept timesteps define new betas
//! `1 - abar[t_k] / abar[t_{k-1}]`, and every coefficient is recomputed from
//! those betas as `GaussianDiffusion.__init__` does. DPM-Solver++ follows
//! diffusers' `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint,
//! linspace spacing, `final_sigmas_type = "zero"`, `lower_order_final`).

use tcc_core::SamplerSpec;

/// `numpy.linspace(start, end, n)`: `i * step + start`, endpoint exact.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// The linear beta schedule of DiT and PixArt and its cumulative products.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    pub betas: Vec<f64>,
    /// `cumprod(1 - betas)`.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// The schedule of `spec` (its `train_timesteps`, `beta_start`,
    /// `beta_end`, taken as given: DiT's `1000 / T` scaling of the endpoints
    /// is the spec author's job).
    pub fn linear(spec: &SamplerSpec) -> Self {
        let betas = linspace(spec.beta_start, spec.beta_end, spec.train_timesteps);
        let alphas_cumprod = cumprod_one_minus(&betas);
        NoiseSchedule {
            betas,
            alphas_cumprod,
        }
    }
}

fn cumprod_one_minus(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// One step of DiT's respaced diffusion (DDIM and DDPM), named as in DiT's
/// `GaussianDiffusion`; "prev" is the next point in sampling order.
#[derive(Clone, Debug, PartialEq)]
pub struct RespacedStep {
    /// The original timestep the model is fed.
    pub timestep: u32,
    /// Respaced beta, `1 - abar[t] / abar[t_prev]`.
    pub beta: f64,
    pub alpha_bar: f64,
    /// 1 at the last step.
    pub alpha_bar_prev: f64,
    pub sqrt_recip_alpha_bar: f64,
    pub sqrt_recipm1_alpha_bar: f64,
    /// DDPM posterior mean `coef1 * x0 + coef2 * x_t`.
    pub posterior_mean_coef1: f64,
    pub posterior_mean_coef2: f64,
    /// DiT's `posterior_log_variance_clipped` (the lower end of the learned
    /// range, and the fixed-small log variance). At the last step DiT uses the
    /// next-to-last step's value; it is never used there (no noise is added).
    pub posterior_log_variance_clipped: f64,
    /// DiT's `FIXED_LARGE` log variance: `log(beta)`, except at the last step.
    pub fixed_large_log_variance: f64,
    /// DDIM's `eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)`.
    pub ddim_sigma: f64,
}

/// The respaced steps in sampling order. `timesteps` are in sampling order
/// (descending) and distinct.
pub(crate) fn respaced_steps(spec: &SamplerSpec, timesteps: &[u32]) -> Vec<RespacedStep> {
    let sched = NoiseSchedule::linear(spec);
    let n = timesteps.len();
    // Respaced index k = 0 is the least noisy kept timestep (DiT's order).
    let kept: Vec<u32> = timesteps.iter().rev().copied().collect();
    let mut last = 1.0;
    let betas: Vec<f64> = kept
        .iter()
        .map(|&t| {
            let ac = sched.alphas_cumprod[t as usize];
            let b = 1.0 - ac / last;
            last = ac;
            b
        })
        .collect();
    let ac = cumprod_one_minus(&betas);
    let ac_prev: Vec<f64> = (0..n)
        .map(|k| if k == 0 { 1.0 } else { ac[k - 1] })
        .collect();
    let post_var: Vec<f64> = (0..n)
        .map(|k| betas[k] * (1.0 - ac_prev[k]) / (1.0 - ac[k]))
        .collect();
    // DiT: log(append(posterior_variance[1], posterior_variance[1:])); with a
    // single step there is no [1], and the value is unused anyway.
    let first_var = if n > 1 { post_var[1] } else { post_var[0] };
    let mut steps: Vec<RespacedStep> = (0..n)
        .map(|k| {
            let ab = ac[k];
            let abp = ac_prev[k];
            let log_clipped = if k == 0 {
                first_var.ln()
            } else {
                post_var[k].ln()
            };
            RespacedStep {
                timestep: kept[k],
                beta: betas[k],
                alpha_bar: ab,
                alpha_bar_prev: abp,
                sqrt_recip_alpha_bar: (1.0 / ab).sqrt(),
                sqrt_recipm1_alpha_bar: (1.0 / ab - 1.0).sqrt(),
                posterior_mean_coef1: betas[k] * abp.sqrt() / (1.0 - ab),
                posterior_mean_coef2: (1.0 - abp) * (1.0 - betas[k]).sqrt() / (1.0 - ab),
                posterior_log_variance_clipped: log_clipped,
                fixed_large_log_variance: if k == 0 {
                    first_var.ln()
                } else {
                    betas[k].ln()
                },
                ddim_sigma: spec.eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt(),
            }
        })
        .collect();
    steps.reverse();
    steps
}

/// One DPM-Solver++ step from point `s` (the current timestep) to point `t`
/// (the next one; after the last step `sigma = 0`, so `alpha_t = 1`,
/// `sigma_t = 0`, `lambda_t = +inf`).
#[derive(Clone, Debug, PartialEq)]
pub struct DpmStep {
    pub timestep: u32,
    /// diffusers' `sigmas[i] = sqrt((1 - abar) / abar)` at `s`.
    pub sigma: f64,
    pub alpha_s: f64,
    pub sigma_s: f64,
    pub lambda_s: f64,
    pub alpha_t: f64,
    pub sigma_t: f64,
    pub lambda_t: f64,
    /// `lambda_t - lambda_s`.
    pub h: f64,
    /// 1 at the first and the last step, 2 otherwise.
    pub order: u8,
    /// `h_0 / h` with `h_0 = lambda_s - lambda_{s-1}`, for order 2.
    pub r0: Option<f64>,
}

/// (alpha_t, sigma_t, lambda) of diffusers' `_sigma_to_alpha_sigma_t`.
fn vp_point(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, alpha.ln() - sigma_t.ln())
}

pub(crate) fn dpm_steps(spec: &SamplerSpec, timesteps: &[u32]) -> Vec<DpmStep> {
    let sched = NoiseSchedule::linear(spec);
    let n = timesteps.len();
    // Integer timesteps, so diffusers' np.interp is a plain lookup.
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| {
            let ac = sched.alphas_cumprod[t as usize];
            ((1.0 - ac) / ac).sqrt()
        })
        .collect();
    sigmas.push(0.0);
    let points: Vec<(f64, f64, f64)> = sigmas.iter().map(|&s| vp_point(s)).collect();
    (0..n)
        .map(|i| {
            let (alpha_s, sigma_s, lambda_s) = points[i];
            let (alpha_t, sigma_t, lambda_t) = points[i + 1];
            let h = lambda_t - lambda_s;
            let second = i > 0 && i < n - 1;
            let r0 = second.then(|| (lambda_s - points[i - 1].2) / h);
            DpmStep {
                timestep: timesteps[i],
                sigma: sigmas[i],
                alpha_s,
                sigma_s,
                lambda_s,
                alpha_t,
                sigma_t,
                lambda_t,
                h,
                order: if second { 2 } else { 1 },
                r0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_ends() {
        let v = linspace(0.0001, 0.02, 1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(v[0], 0.0001);
        assert_eq!(v[999], 0.02);
        assert_eq!(linspace(0.5, 1.0, 1), vec![0.5]);
    }
}
