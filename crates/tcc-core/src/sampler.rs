use serde::{Deserialize, Serialize};

spelled_enum! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum SamplerKind {
        /// Ancestral DDPM with DiT's timestep respacing.
        Ddpm = "ddpm",
        /// DDIM; deterministic when eta = 0.
        Ddim = "ddim",
        /// DPM-Solver++ multistep, order 2 (PixArt's sampler).
        DpmSolverPp = "dpm-solver++",
    }
}

spelled_enum! {
    /// Order of the two halves of a classifier-free-guidance batch.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CfgOrder {
        /// `[cond; uncond]` (DiT).
        CondFirst = "cond-first",
        /// `[uncond; cond]` (PixArt).
        UncondFirst = "uncond-first",
    }
}

/// Sampler settings, as a schedule states them and a plan carries them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerSpec {
    pub kind: SamplerKind,
    /// Number of sampling steps.
    pub steps: usize,
    /// Classifier-free guidance scale; 1.0 means no guidance (no CFG batch).
    pub guidance_scale: f64,
    /// DDIM eta (0 = deterministic).
    pub eta: f64,
    pub cfg_order: CfgOrder,
    /// Guide only the first N channels (DiT's official sampler guides 3);
    /// `None` guides all of them.
    pub guided_channels: Option<usize>,
    /// Training timesteps of the noise schedule (1000 for DiT and PixArt).
    pub train_timesteps: usize,
    /// Linear beta schedule endpoints.
    pub beta_start: f64,
    pub beta_end: f64,
}

impl SamplerSpec {
    /// Whether a step runs the model on a doubled (CFG) batch.
    pub fn uses_cfg(&self) -> bool {
        self.guidance_scale != 1.0
    }

    /// The model timestep of every step, in sampling order (noisiest first).
    ///
    /// DDIM and DDPM use DiT's respacing (`space_timesteps(T, [n])`): a
    /// running index that starts at 0 and grows by (T-1)/(n-1) per step,
    /// rounded half to even as Python's `round` does (so n = 7 gives
    /// 832 and 166, not 833 and 167); n = 1 keeps timestep 0 only, as DiT
    /// does. DPM-Solver++ uses diffusers' "linspace" spacing,
    /// `round(linspace(0, T-1, n+1))[::-1][:-1]`, with numpy's
    /// half-to-even rounding. Steps beyond T give repeated timesteps, which
    /// samplers reject.
    pub fn timesteps(&self) -> Vec<u32> {
        let n = self.steps;
        let t_max = self.train_timesteps.saturating_sub(1) as f64;
        match self.kind {
            SamplerKind::Ddim | SamplerKind::Ddpm => {
                let stride = if n <= 1 { 1.0 } else { t_max / (n - 1) as f64 };
                let mut idx = 0.0f64;
                let mut ts = Vec::with_capacity(n);
                for _ in 0..n {
                    ts.push(idx.round_ties_even() as u32);
                    idx += stride;
                }
                ts.reverse();
                ts
            }
            SamplerKind::DpmSolverPp => {
                // numpy's linspace: i * step, with the endpoint set exactly.
                let step = t_max / n.max(1) as f64;
                (1..=n)
                    .rev()
                    .map(|i| {
                        let v = if i == n { t_max } else { i as f64 * step };
                        v.round_ties_even() as u32
                    })
                    .collect()
            }
        }
    }
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec {
            kind: SamplerKind::Ddim,
            steps: 20,
            guidance_scale: 1.5,
            eta: 0.0,
            cfg_order: CfgOrder::CondFirst,
            guided_channels: None,
            train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_match_serde() {
        for &(name, kind) in SamplerKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<SamplerKind>(name.into()).unwrap(),
                kind
            );
        }
        for &(name, order) in CfgOrder::ALL {
            assert_eq!(serde_json::to_value(order).unwrap(), name);
        }
        assert_eq!(SamplerKind::DpmSolverPp.as_str(), "dpm-solver++");
    }

    #[test]
    fn ddim_respacing_matches_dit_rule() {
        let s = SamplerSpec {
            steps: 4,
            ..Default::default()
        };
        // round(i*999/3) for i = 3, 2, 1, 0
        assert_eq!(s.timesteps(), vec![999, 666, 333, 0]);
    }

    #[test]
    fn ddim_respacing_rounds_half_to_even_like_python() {
        let s = SamplerSpec {
            steps: 7,
            ..Default::default()
        };
        // DiT's running index 0, 166.5, 333, 499.5, 666, 832.5, 999 under
        // Python's round(): 166.5 -> 166, 499.5 -> 500, 832.5 -> 832.
        assert_eq!(s.timesteps(), vec![999, 832, 666, 500, 333, 166, 0]);
    }

    #[test]
    fn dpm_linspace_spacing() {
        let s = SamplerSpec {
            kind: SamplerKind::DpmSolverPp,
            steps: 4,
            ..Default::default()
        };
        // round(linspace(0, 999, 5)) = [0, 250, 500, 749, 999] -> reversed, last dropped
        assert_eq!(s.timesteps(), vec![999, 749, 500, 250]);
        // numpy rounds 832.5 and 166.5 to even.
        let s6 = SamplerSpec { steps: 6, ..s };
        assert_eq!(s6.timesteps(), vec![999, 832, 666, 500, 333, 166]);
    }
}
