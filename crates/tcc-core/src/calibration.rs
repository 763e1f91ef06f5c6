use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibMethod {
    None,
    Tcc,
}

/// How the statistics of later calibrated steps are gathered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibMode {
    /// Each step is fitted on the trajectory already shifted by the earlier priors.
    Consistent,
    /// Every step is fitted on one uncorrected accelerated trajectory (ablation).
    OneShot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriorKind {
    /// Rotation R, isotropic scale s and means (the default).
    Procrustes,
    /// R = I, least-squares scale s.
    ScaleShift,
    /// R = I, s = 1: mean shift only.
    Shift,
}

/// What one row of the fitted statistics is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// One row per condition: mean over tokens and latents of that condition.
    Tokens,
    /// One row per token position: mean over conditions and latents.
    Conditions,
}

/// Which half of the CFG batch the statistics are pooled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CfgHalf {
    Cond,
    Uncond,
}

/// Calibration settings, as a schedule states them and a plan carries them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSpec {
    pub method: CalibMethod,
    pub mode: CalibMode,
    /// Calibrated steps, sampling order, ascending; each must be a reuse step.
    pub steps: Vec<usize>,
    pub alpha: f64,
    pub prior: PriorKind,
    pub pooling: Pooling,
    pub pooled_half: CfgHalf,
    /// Number of calibration samples (noise, condition pairs).
    pub samples: usize,
    pub seed: u64,
}

impl Default for CalibrationSpec {
    fn default() -> Self {
        CalibrationSpec {
            method: CalibMethod::None,
            mode: CalibMode::Consistent,
            steps: Vec::new(),
            alpha: 1.0,
            prior: PriorKind::Procrustes,
            pooling: Pooling::Tokens,
            pooled_half: CfgHalf::Cond,
            samples: 256,
            seed: 0,
        }
    }
}
