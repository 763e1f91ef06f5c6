//! The cost model: multiply-accumulates (MACs) of every action of a plan.
//!
//! Only matrix products are counted (linear layers, attention scores and
//! values, the patch-embedding convolution); normalisation, softmax,
//! activations, modulation and residual additions are elementwise and cheap
//! next to them. docs/plan.md states every formula.
//!
//! All arithmetic saturates: a shape read from a file can be absurd, and the
//! cost model must never overflow (a panic in debug builds).

use serde::{Deserialize, Serialize};
use tcc_core::{Branch, ModelFamily, ModelShape, SamplerSpec, TIMESTEP_FREQ_DIM};

use crate::{Action, Plan, StepPlan};

/// MACs of each part of one model forward at the plan's batch size (both
/// CFG halves when guidance is on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCosts {
    /// Samples per model forward per generated image: 2 with CFG, else 1.
    pub batch: u64,
    /// Patch embedding, timestep MLP and the condition path (DiT: label
    /// lookup, free; PixArt: caption projection and the shared adaLN-single
    /// linear). Paid once per step.
    pub embed: u64,
    /// Per-block adaLN modulation (DiT: Linear D -> 6D on the condition;
    /// PixArt: a table lookup plus the shared vector, free). Paid for every
    /// block that is not skipped by a reuse-delta.
    pub adaln: u64,
    /// One self-attention branch.
    pub attn: u64,
    /// One cross-attention branch (0 for DiT, which has none).
    pub cross: u64,
    /// One MLP branch.
    pub mlp: u64,
    /// Applying one TCC prior to a reused branch output: out = B M + c.
    pub prior: u64,
    /// Final layer (DiT: its adaLN Linear D -> 2D plus the output linear;
    /// PixArt: the output linear). Paid once per step.
    pub final_layer: u64,
}

fn mul(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

fn sum(terms: &[u64]) -> u64 {
    terms.iter().fold(0u64, |acc, &t| acc.saturating_add(t))
}

impl UnitCosts {
    pub fn new(model: &ModelShape, sampler: &SamplerSpec) -> UnitCosts {
        let t = model.tokens() as u64;
        let d = model.hidden as u64;
        let l = model.caption_tokens as u64;
        let p2 = mul(&[model.patch as u64, model.patch as u64]);
        let batch = if sampler.uses_cfg() { 2 } else { 1 };

        let patch_embed = mul(&[t, model.in_channels as u64, p2, d]);
        let timestep_mlp = sum(&[mul(&[TIMESTEP_FREQ_DIM as u64, d]), mul(&[d, d])]);
        let (condition, adaln, final_mod) = match model.family {
            // Label embedding is a table lookup; every block has its own
            // Linear D -> 6D; the final layer has a Linear D -> 2D.
            ModelFamily::Dit => (0, mul(&[6, d, d]), mul(&[2, d, d])),
            // Caption projection: Linear caption_dim -> D, Linear D -> D on
            // every caption token; adaLN-single: one shared Linear D -> 6D.
            ModelFamily::Pixart => {
                let caption = mul(&[l, sum(&[mul(&[model.caption_dim as u64, d]), mul(&[d, d])])]);
                (sum(&[caption, mul(&[6, d, d])]), 0, 0)
            }
        };
        let final_out = mul(&[t, d, p2, model.out_channels as u64]);

        UnitCosts {
            batch,
            embed: mul(&[batch, sum(&[patch_embed, timestep_mlp, condition])]),
            adaln: mul(&[batch, adaln]),
            attn: mul(&[batch, branch_macs(model, Branch::Attn, model.tokens())]),
            cross: mul(&[batch, branch_macs(model, Branch::Cross, model.tokens())]),
            mlp: mul(&[batch, branch_macs(model, Branch::Mlp, model.tokens())]),
            prior: mul(&[batch, t, d, d]),
            final_layer: mul(&[batch, sum(&[final_mod, final_out])]),
        }
    }

    /// MACs of computing `branch` in one block.
    pub fn branch(&self, branch: Branch) -> u64 {
        match branch {
            Branch::Attn => self.attn,
            Branch::Cross => self.cross,
            Branch::Mlp => self.mlp,
        }
    }

    /// MACs of one action on `branch` of one block, adaLN excluded.
    ///
    /// A reuse costs nothing but the prior it may carry. A reuse-delta costs
    /// nothing: the cached delta is added once (elementwise) for its whole
    /// block range. A partial compute costs the branch on its fresh tokens
    /// plus [`token_overhead`], and its prior if it carries one (applied to
    /// every token, the fresh rows then put back: one GEMM, as for a reuse).
    pub fn action(&self, model: &ModelShape, action: Action, branch: Branch) -> u64 {
        match action {
            Action::Compute => self.branch(branch),
            Action::Reuse { prior: true, .. } => self.prior,
            Action::Reuse { prior: false, .. } | Action::ReuseDelta { .. } => 0,
            Action::Partial { fresh, prior, .. } => sum(&[
                mul(&[self.batch, branch_macs(model, branch, fresh)]),
                mul(&[self.batch, token_overhead(model, fresh)]),
                if prior { self.prior } else { 0 },
            ]),
        }
    }

    /// MACs of one block whose branches are all computed.
    pub fn full_block(&self, branches: &[Branch]) -> u64 {
        sum(&[
            self.adaln,
            sum(&branches.iter().map(|&b| self.branch(b)).collect::<Vec<_>>()),
        ])
    }

    /// MACs of one full-computation step.
    pub fn full_step(&self, model: &ModelShape) -> u64 {
        sum(&[
            self.embed,
            mul(&[model.depth as u64, self.full_block(model.branches())]),
            self.final_layer,
        ])
    }
}

/// MACs of `branch` of one block for one sample when `tokens` of the image
/// tokens are its queries. Self-attention on a subset attends within the
/// subset (as ToCa computes it); cross-attention still reads every caption
/// token; the MLP is per token.
pub fn branch_macs(model: &ModelShape, branch: Branch, tokens: usize) -> u64 {
    let t = tokens as u64;
    let d = model.hidden as u64;
    let l = model.caption_tokens as u64;
    match branch {
        Branch::Attn => sum(&[mul(&[4, t, d, d]), mul(&[2, t, t, d])]),
        Branch::Cross => match model.family {
            ModelFamily::Dit => 0,
            ModelFamily::Pixart => {
                sum(&[mul(&[2, t, d, d]), mul(&[2, l, d, d]), mul(&[2, t, l, d])])
            }
        },
        Branch::Mlp => mul(&[2, t, d, model.mlp_hidden() as u64]),
    }
}

/// The elementwise work of one partial compute for one sample, counted as
/// MACs: gathering the fresh rows of the branch input (`fresh x D`),
/// writing the merged output (`T x D`), and scoring and ranking the tokens
/// (`8 T`). Memory-bound work takes longer per element than a MAC, so this
/// is a lower bound: `tcc bench` measures the real overhead.
pub fn token_overhead(model: &ModelShape, fresh: usize) -> u64 {
    let t = model.tokens() as u64;
    let d = model.hidden as u64;
    sum(&[mul(&[fresh as u64, d]), mul(&[t, d]), mul(&[8, t])])
}

/// The extra work of summing the self-attention probabilities over the
/// queries for one sample (`heads x T x T` additions), paid at the full
/// attention computes that ToCa's `attention` score reads.
pub fn attention_score_overhead(model: &ModelShape) -> u64 {
    let t = model.tokens() as u64;
    mul(&[model.heads as u64, t, t])
}

/// The cost of one step, itemised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCost {
    pub step: usize,
    /// Embedders plus final layer.
    pub fixed: u64,
    /// adaLN of every block not skipped by a reuse-delta.
    pub adaln: u64,
    /// `actions[block][i]`: MACs of the action of branch `i` (same layout as
    /// [`StepPlan::actions`]).
    pub actions: Vec<Vec<u64>>,
    /// `fixed + adaln + sum(actions)`.
    pub total: u64,
}

/// The cost of a whole plan against full computation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanCost {
    pub units: UnitCosts,
    pub steps: Vec<StepCost>,
    /// Sum of the step totals.
    pub total: u64,
    /// MACs of one full-computation step, and of the full-computation run.
    pub full_step: u64,
    pub full_total: u64,
}

impl PlanCost {
    pub fn of(plan: &Plan) -> PlanCost {
        let units = UnitCosts::new(&plan.model, &plan.sampler);
        let scored = plan.attention_score_steps();
        let steps: Vec<StepCost> = plan
            .steps
            .iter()
            .zip(&scored)
            .map(|(s, scored)| step_cost(&units, &plan.model, s, scored))
            .collect();
        let total = sum(&steps.iter().map(|s| s.total).collect::<Vec<_>>());
        let full_step = units.full_step(&plan.model);
        PlanCost {
            full_total: mul(&[full_step, plan.steps.len() as u64]),
            units,
            steps,
            total,
            full_step,
        }
    }

    /// The cost of a run of dynamic plan `plan` that reused at
    /// `reuse_steps`: the cost of [`Plan::realised`], plus what the policy's
    /// probe adds to it. TeaCache's probe computes block 0's adaLN
    /// modulation (for block 0's modulated input) also at the steps that
    /// then skip every block; a first-block probe is block 0 itself, which
    /// the realised plan already counts. Equal to [`PlanCost::of`] for a
    /// static plan.
    pub fn of_run(plan: &Plan, reuse_steps: &[usize]) -> PlanCost {
        let realised = plan.realised(reuse_steps);
        let mut cost = PlanCost::of(&realised);
        if let Some((0, _)) = plan.reused_blocks() {
            let probe = cost.units.adaln;
            for (step, plan_step) in cost.steps.iter_mut().zip(&realised.steps) {
                let skipped = plan_step
                    .actions
                    .first()
                    .and_then(|row| row.first())
                    .is_some_and(|a| matches!(a, Action::ReuseDelta { start: 0, .. }));
                if skipped {
                    step.adaln = step.adaln.saturating_add(probe);
                    step.total = step.total.saturating_add(probe);
                    cost.total = cost.total.saturating_add(probe);
                }
            }
        }
        cost
    }

    /// Whether a MAC count saturated its 64-bit counter (at
    /// [`u64::MAX`]): then the counts are lower bounds and the speedup
    /// means nothing.
    pub fn saturated(&self) -> bool {
        self.total == u64::MAX || self.full_total == u64::MAX
    }

    /// Predicted speedup over full computation: full MACs / plan MACs.
    pub fn speedup(&self) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        self.full_total as f64 / self.total as f64
    }

    /// The serialisable summary carried by emitted plans.
    pub fn summary(&self) -> CostSummary {
        CostSummary {
            units: self.units.clone(),
            step_macs: self.steps.iter().map(|s| s.total).collect(),
            total_macs: self.total,
            full_step_macs: self.full_step,
            full_macs: self.full_total,
            speedup: self.speedup(),
        }
    }
}

/// `scored[block]`: whether the block's attention is summed for ToCa's
/// score at this step (counted with its attention branch).
fn step_cost(units: &UnitCosts, model: &ModelShape, step: &StepPlan, scored: &[bool]) -> StepCost {
    let branches = model.branches();
    let score = mul(&[units.batch, attention_score_overhead(model)]);
    let actions: Vec<Vec<u64>> = step
        .actions
        .iter()
        .zip(scored)
        .map(|(row, &scored)| {
            row.iter()
                .zip(branches)
                .map(|(&a, &b)| {
                    let extra = if scored && b == Branch::Attn {
                        score
                    } else {
                        0
                    };
                    sum(&[units.action(model, a, b), extra])
                })
                .collect()
        })
        .collect();
    let live_blocks = step
        .actions
        .iter()
        .filter(|row| !row.iter().all(|a| matches!(a, Action::ReuseDelta { .. })))
        .count() as u64;
    let fixed = sum(&[units.embed, units.final_layer]);
    let adaln = mul(&[live_blocks, units.adaln]);
    let total = sum(&[
        fixed,
        adaln,
        sum(&actions.iter().flatten().copied().collect::<Vec<_>>()),
    ]);
    StepCost {
        step: step.step,
        fixed,
        adaln,
        actions,
        total,
    }
}

/// What `tcc plan --emit` writes about cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    pub units: UnitCosts,
    /// MACs of every step, in sampling order.
    pub step_macs: Vec<u64>,
    pub total_macs: u64,
    pub full_step_macs: u64,
    pub full_macs: u64,
    /// full_macs / total_macs.
    pub speedup: f64,
}

/// `1.23G`-style MAC count: three significant digits and an SI suffix;
/// `>18.4E` for a saturated count.
pub fn human_macs(macs: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    if macs < 1000 {
        return macs.to_string();
    }
    if macs == u64::MAX {
        // A saturated counter: the true count is larger.
        return ">18.4E".to_string();
    }
    let mut value = macs as f64;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let text = if value >= 99.95 {
        format!("{value:.0}")
    } else if value >= 9.995 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(name: &str, guidance: f64) -> UnitCosts {
        let sampler = SamplerSpec {
            guidance_scale: guidance,
            ..Default::default()
        };
        UnitCosts::new(&ModelShape::preset(name).unwrap(), &sampler)
    }

    /// DiT-XL/2 at 256 px, written out by hand from the layer sizes
    /// (T = 256, D = 1152, MLP 4608, patch 2, 4 -> 8 channels).
    #[test]
    fn dit_xl_units_match_hand_count() {
        let u = units("dit-xl-2-256", 1.0);
        let (t, d) = (256u64, 1152u64);
        assert_eq!(u.batch, 1);
        assert_eq!(u.attn, 3 * t * d * d + 2 * t * t * d + t * d * d);
        assert_eq!(u.mlp, t * d * 4608 + t * 4608 * d);
        assert_eq!(u.cross, 0);
        assert_eq!(u.adaln, d * 6 * d);
        assert_eq!(u.embed, t * (4 * 2 * 2) * d + 256 * d + d * d);
        assert_eq!(u.final_layer, d * 2 * d + t * d * (2 * 2 * 8));
        assert_eq!(u.prior, t * d * d);
        // Independent figure: the DiT paper (Peebles & Xie, table 4) gives
        // 118.6 "Gflops" for XL/2 at 256 px, counted with fvcore, which
        // counts one multiply-accumulate as one flop.
        let per_forward = u.full_step(&ModelShape::preset("dit-xl-2-256").unwrap());
        assert!(
            (118.55e9..118.65e9).contains(&(per_forward as f64)),
            "{per_forward}"
        );
    }

    #[test]
    fn pixart_has_cross_attention_and_shared_adaln() {
        let u = units("pixart-alpha-256", 4.5);
        let (t, d, l) = (256u64, 1152u64, 120u64);
        assert_eq!(u.batch, 2);
        assert_eq!(
            u.cross,
            2 * (t * d * d + 2 * l * d * d + 2 * t * l * d + t * d * d)
        );
        assert_eq!(u.adaln, 0);
        assert_eq!(
            u.embed,
            2 * (t * 16 * d + 256 * d + d * d + l * (4096 * d + d * d) + 6 * d * d)
        );
        assert_eq!(u.final_layer, 2 * t * d * 32);
    }

    #[test]
    fn cfg_doubles_every_unit() {
        let one = units("dit-b-2-256", 1.0);
        let two = units("dit-b-2-256", 1.5);
        for (a, b) in [
            (one.embed, two.embed),
            (one.adaln, two.adaln),
            (one.attn, two.attn),
            (one.mlp, two.mlp),
            (one.prior, two.prior),
            (one.final_layer, two.final_layer),
        ] {
            assert_eq!(2 * a, b);
        }
    }

    #[test]
    fn absurd_shapes_saturate_instead_of_overflowing() {
        let mut m = ModelShape::preset("tiny").unwrap();
        m.hidden = usize::MAX / 2;
        m.depth = usize::MAX;
        let u = UnitCosts::new(&m, &SamplerSpec::default());
        assert_eq!(u.full_step(&m), u64::MAX);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_macs(0), "0");
        assert_eq!(human_macs(999), "999");
        assert_eq!(human_macs(1000), "1.00K");
        assert_eq!(human_macs(1_234_567_890), "1.23G");
        assert_eq!(human_macs(12_345_678_901), "12.3G");
        assert_eq!(human_macs(123_456_789_012), "123G");
        assert_eq!(human_macs(999_600_000), "1.00G");
        assert_eq!(human_macs(u64::MAX - 1), "18.4E");
        // Saturated: the count is larger than it can show.
        assert_eq!(human_macs(u64::MAX), ">18.4E");
    }
}
