//! ToCa (token-wise feature caching, Zou et al. 2024): the settings of a
//! plan whose cache steps recompute a fraction of the tokens of a branch,
//! and the fresh-ratio schedules that set that fraction per step, block and
//! branch.

use serde::{Deserialize, Serialize};

use crate::Branch;

spelled_enum! {
    /// How the fresh tokens of a partly computed branch are chosen.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TokenScore {
        /// The attention each token receives at the block's last full
        /// self-attention (L2-normalised per sample), plus staleness and
        /// the spatial spread bonus (ToCa's default).
        Attention = "attention",
        /// A seeded uniform score, the same for both CFG halves, plus
        /// staleness and the spread bonus (ToCa's `random` ablation).
        Random = "random",
    }
}

spelled_enum! {
    /// How a rule's `fresh-ratio` varies over steps, blocks and branches.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum RatioSchedule {
        /// The same ratio everywhere.
        Constant = "constant",
        /// ToCa's schedule with the step counted in sampling order (as
        /// PixArt-ToCa counts it): more fresh tokens early in sampling.
        Toca = "toca",
        /// ToCa's schedule with the step counted down from the last (as
        /// DiT-ToCa's DDIM loop counts it): more fresh tokens late.
        TocaCountdown = "toca-countdown",
    }
}

impl RatioSchedule {
    /// The factor the base ratio is multiplied by at (`step` of `steps`,
    /// `block` of `depth`, `branch`), before clamping to [0, 1]:
    /// `step_factor * layer_factor * module_factor` with
    /// `step_factor = 1.4 - 0.8 s / steps`, `layer_factor = 1.8 - 1.6
    /// block / (depth - 1)`, `module_factor` 0 for self-attention and 2.5
    /// for the other branches (ToCa's weights: its attention work moves to
    /// the MLP).
    pub fn factor(
        self,
        step: usize,
        steps: usize,
        block: usize,
        depth: usize,
        branch: Branch,
    ) -> f64 {
        let s = match self {
            RatioSchedule::Constant => return 1.0,
            RatioSchedule::Toca => step,
            RatioSchedule::TocaCountdown => steps.saturating_sub(1 + step),
        };
        let step_factor = 1.0 + 0.4 - 0.8 * s as f64 / steps.max(1) as f64;
        let layer_factor = if depth > 1 {
            1.0 + 0.8 - 1.6 * block as f64 / (depth - 1) as f64
        } else {
            1.0
        };
        // ToCa: module weight 2.5, module time weight 0.6.
        const WEIGHT: f64 = 2.5;
        const TIME_WEIGHT: f64 = 0.6;
        let module_factor = match branch {
            Branch::Attn => 1.0 - (1.0 - TIME_WEIGHT) * WEIGHT,
            Branch::Cross | Branch::Mlp => 1.0 + TIME_WEIGHT * WEIGHT,
        };
        step_factor * layer_factor * module_factor
    }
}

/// The fresh tokens of a branch of `tokens` tokens at base ratio `ratio`
/// times `factor`: `floor(clamp(ratio * factor, 0, 1) * tokens)`.
pub fn fresh_tokens(ratio: f64, factor: f64, tokens: usize) -> usize {
    let r = (ratio * factor).clamp(0.0, 1.0);
    if r.is_nan() {
        return 0;
    }
    ((r * tokens as f64).floor() as usize).min(tokens)
}

/// Default weight of the staleness term of the token score (ToCa's
/// `soft_fresh_weight`).
pub const DEFAULT_FRESH_WEIGHT: f64 = 0.25;
/// Default spatial spread bonus: the best token of every 2x2 patch gets
/// this fraction of its score added.
pub const DEFAULT_SPREAD_BONUS: f64 = 0.6;

/// How a ToCa plan chooses its fresh tokens at run time (the fresh counts
/// themselves are in the plan's actions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TocaSpec {
    pub score: TokenScore,
    /// Weight `w` of the staleness term `w * stale / interval`.
    pub fresh_weight: f64,
    /// The best-scoring token of each 2x2 patch gets `spread_bonus * score`
    /// added.
    pub spread_bonus: f64,
    /// `N` of the staleness term: the steps between full computations.
    pub interval: f64,
    /// Seed of the `random` score.
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toca_factors_match_the_formula() {
        let f = RatioSchedule::Toca.factor(0, 50, 0, 28, Branch::Mlp);
        assert!((f - 1.4 * 1.8 * 2.5).abs() < 1e-12, "{f}");
        let f = RatioSchedule::Toca.factor(25, 50, 27, 28, Branch::Mlp);
        assert!((f - 1.0 * 0.2 * 2.5).abs() < 1e-12, "{f}");
        assert_eq!(RatioSchedule::Toca.factor(3, 50, 3, 28, Branch::Attn), 0.0);
        // Counting down: the last sampling step is step 0.
        let up = RatioSchedule::Toca.factor(0, 50, 5, 28, Branch::Cross);
        let down = RatioSchedule::TocaCountdown.factor(49, 50, 5, 28, Branch::Cross);
        assert!((up - down).abs() < 1e-12);
        assert_eq!(
            RatioSchedule::Constant.factor(7, 9, 1, 2, Branch::Attn),
            1.0
        );
    }

    #[test]
    fn fresh_tokens_floor_and_clamp() {
        assert_eq!(fresh_tokens(0.07, 1.0, 256), 17);
        assert_eq!(fresh_tokens(1.0, 1.0, 256), 256);
        assert_eq!(fresh_tokens(0.5, 3.0, 256), 256);
        assert_eq!(fresh_tokens(0.5, -1.0, 256), 0);
        assert_eq!(fresh_tokens(0.0, 2.5, 256), 0);
    }
}
