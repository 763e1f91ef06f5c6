use serde::{Deserialize, Serialize};

spelled_enum! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CalibMethod {
        None = "none",
        Tcc = "tcc",
    }
}

spelled_enum! {
    /// How the statistics of later calibrated steps are gathered.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CalibMode {
        /// Each step is fitted on the trajectory already shifted by the earlier priors.
        Consistent = "consistent",
        /// Every step is fitted on one uncorrected accelerated trajectory (ablation).
        OneShot = "one-shot",
    }
}

spelled_enum! {
    /// The family of a prior. Every family has the folded run-time form
    /// `out = B M + c` (one `D x D` GEMM plus a bias).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum PriorKind {
        /// Rotation R, isotropic scale s and means (the paper's prior, the default).
        Procrustes = "procrustes",
        /// R = I, least-squares scale s.
        ScaleShift = "scale-shift",
        /// R = I, s = 1: mean shift only.
        Shift = "shift",
        /// Ridge least squares `A ≈ B W + b`, W pulled toward the identity.
        Affine = "affine",
        /// Per-channel scale and shift.
        Diagonal = "diagonal",
        /// `W = I + U Vᵀ` of low rank: reduced-rank regression of `A - B` on `B`.
        Lowrank = "lowrank",
    }
}

impl PriorKind {
    /// Whether the fit has a ridge strength to choose (`ridge` in schedules).
    pub fn uses_ridge(self) -> bool {
        matches!(self, PriorKind::Affine | PriorKind::Lowrank)
    }

    /// The paper's similarity transforms (and their ablations), which also
    /// fit per-token means under `conditions` pooling.
    pub fn is_similarity(self) -> bool {
        matches!(
            self,
            PriorKind::Procrustes | PriorKind::ScaleShift | PriorKind::Shift
        )
    }
}

spelled_enum! {
    /// What one row of the fitted statistics is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Pooling {
        /// One row per condition: mean over tokens and latents of that condition.
        Tokens = "tokens",
        /// One row per token position: mean over conditions and latents.
        Conditions = "conditions",
        /// One row per sample: mean over its tokens (the official PixArt-α setting).
        Samples = "samples",
        /// No pooling: every token of every sample is a row.
        Unpooled = "none",
    }
}

spelled_enum! {
    /// Which half of the CFG batch the statistics are pooled from.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CfgHalf {
        Cond = "cond",
        Uncond = "uncond",
        /// Both halves: rows from the conditional and the null-condition half.
        Both = "both",
    }
}

spelled_enum! {
    /// How the prior of each calibrated site is chosen.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub enum Selection {
        /// The paper's protocol: every calibrated site gets `prior` at `alpha`.
        #[default]
        Fixed = "fixed",
        /// Per site, the candidate (prior kind, ridge, alpha, or no prior) that
        /// is closest to the reference on the validation samples; a step whose
        /// priors move the validation latents away from the reference gets
        /// none, and so does the whole set if it is worse end to end.
        Validated = "validated",
    }
}

/// The ridge strengths tried when a schedule gives none: `λ = γ tr(Cov_B) / D`
/// for each `γ` here.
pub const DEFAULT_RIDGE: [f64; 6] = [0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0];
/// The blends tried by validated selection when a schedule gives none (0,
/// no prior, is always tried as well).
pub const DEFAULT_ALPHAS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];
/// Rank of `lowrank` priors when a schedule gives none (capped at D).
pub const DEFAULT_RANK: usize = 32;
/// Validation samples when a schedule gives none.
pub const DEFAULT_VALIDATION_SAMPLES: usize = 32;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Calibration settings, as a schedule states them and a plan carries them.
///
/// The fields after `seed` are skipped from serialisation while they hold
/// their defaults, so plans written before they existed keep their hashes.
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
    #[serde(default, skip_serializing_if = "is_default")]
    pub select: Selection,
    /// Prior kinds validated selection tries (empty: just `prior`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<PriorKind>,
    /// Blends validated selection tries (empty: [`DEFAULT_ALPHAS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alphas: Vec<f64>,
    /// Ridge strengths `γ` of `affine` / `lowrank` (empty: [`DEFAULT_RIDGE`]);
    /// with several, the validation samples choose per site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ridge: Vec<f64>,
    /// Rank of `lowrank` priors (None: [`DEFAULT_RANK`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Validation samples (None: [`DEFAULT_VALIDATION_SAMPLES`]; 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_samples: Option<usize>,
    /// Seed of the validation samples (None: `seed + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_seed: Option<u64>,
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
            select: Selection::Fixed,
            candidates: Vec::new(),
            alphas: Vec::new(),
            ridge: Vec::new(),
            rank: None,
            validation_samples: None,
            validation_seed: None,
        }
    }
}

impl CalibrationSpec {
    /// The prior kinds fitted at every site: `candidates` under validated
    /// selection (or `prior` when none are given), else `prior`.
    pub fn kinds(&self) -> Vec<PriorKind> {
        match self.select {
            Selection::Validated if !self.candidates.is_empty() => self.candidates.clone(),
            _ => vec![self.prior],
        }
    }

    /// The blends tried at every site (without the always-tried 0 of
    /// validated selection).
    pub fn alpha_grid(&self) -> Vec<f64> {
        match self.select {
            Selection::Fixed => vec![self.alpha],
            Selection::Validated if self.alphas.is_empty() => DEFAULT_ALPHAS.to_vec(),
            Selection::Validated => self.alphas.clone(),
        }
    }

    /// The ridge strengths `γ` tried by the kinds that have one.
    pub fn ridge_grid(&self) -> Vec<f64> {
        if self.ridge.is_empty() {
            DEFAULT_RIDGE.to_vec()
        } else {
            self.ridge.clone()
        }
    }

    pub fn lowrank_rank(&self) -> usize {
        self.rank.unwrap_or(DEFAULT_RANK)
    }

    pub fn validation_samples(&self) -> usize {
        self.validation_samples
            .unwrap_or(DEFAULT_VALIDATION_SAMPLES)
    }

    pub fn validation_seed(&self) -> u64 {
        self.validation_seed
            .unwrap_or_else(|| self.seed.wrapping_add(1))
    }

    /// Whether the priors depend on the validation samples (selection, or
    /// a ridge strength chosen among several); otherwise validation only
    /// measures.
    pub fn validation_chooses(&self) -> bool {
        self.select == Selection::Validated
            || (self.kinds().iter().any(|k| k.uses_ridge()) && self.ridge_grid().len() > 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_match_serde() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
            all: &[(&str, T)],
            from: fn(&str) -> Option<T>,
        ) {
            for &(name, v) in all {
                assert_eq!(from(name), Some(v));
                assert_eq!(serde_json::to_value(v).unwrap(), name, "{v:?}");
            }
        }
        check(CalibMethod::ALL, CalibMethod::from_name);
        check(CalibMode::ALL, CalibMode::from_name);
        check(PriorKind::ALL, PriorKind::from_name);
        check(Pooling::ALL, Pooling::from_name);
        check(CfgHalf::ALL, CfgHalf::from_name);
        check(Selection::ALL, Selection::from_name);
        assert_eq!(Pooling::Unpooled.as_str(), "none");
        assert_eq!(PriorKind::from_name("nope"), None);
        assert_eq!("one-shot".parse(), Ok(CalibMode::OneShot));
        let err = "lowrnk".parse::<PriorKind>().unwrap_err();
        assert_eq!(err.expected, PriorKind::NAMES);
        let json: Result<CfgHalf, _> = serde_json::from_str("\"half\"");
        let msg = json.unwrap_err().to_string();
        assert!(
            msg.contains("unknown variant `half`, expected one of `cond`, `uncond`, `both`"),
            "{msg}"
        );
    }

    #[test]
    fn grids_follow_the_selection() {
        let mut s = CalibrationSpec {
            alpha: 0.5,
            ..CalibrationSpec::default()
        };
        assert_eq!(s.alpha_grid(), vec![0.5]);
        assert_eq!(s.kinds(), vec![PriorKind::Procrustes]);
        assert!(!s.validation_chooses());
        s.prior = PriorKind::Affine;
        assert!(s.validation_chooses());
        s.ridge = vec![0.1];
        assert!(!s.validation_chooses());
        s.select = Selection::Validated;
        s.candidates = vec![PriorKind::Shift, PriorKind::Diagonal];
        assert_eq!(s.kinds(), s.candidates);
        assert_eq!(s.alpha_grid(), DEFAULT_ALPHAS.to_vec());
        assert!(s.validation_chooses());
        assert_eq!(s.validation_seed(), 1);
    }
}
