use serde::{Deserialize, Serialize};
use tcc_core::{Branch, CalibrationSpec, DynamicSpec, ModelShape, SamplerSpec, TocaSpec};

/// What happens to one branch of one block at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Action {
    /// Run the branch.
    Compute,
    /// Use the pre-gate branch output computed at step `from` (the latest
    /// step before this one where it was computed). `prior` marks a reuse
    /// that a TCC prior corrects before it is gated.
    Reuse { from: usize, prior: bool },
    /// Skip blocks `start..end` entirely and add the residual delta
    /// (output minus input of those blocks) cached at step `from`
    /// (Δ-DiT). Every branch of every block in the range carries the same
    /// action.
    ReuseDelta {
        start: usize,
        end: usize,
        from: usize,
    },
    /// ToCa: compute the branch for `fresh` of the tokens only (chosen at
    /// run time by the plan's [`TocaSpec`]), and use the output cached at
    /// step `from` for the others; the fresh rows replace theirs in the
    /// cache entry. `0 < fresh < tokens`: the compiler turns 0 into a reuse
    /// and all tokens into a compute. `prior` marks a partial compute whose
    /// stale (reused) rows a TCC prior corrects; the fresh rows are
    /// computed and never corrected. Serialised only when set, so plans
    /// without priors keep their hash.
    Partial {
        from: usize,
        fresh: usize,
        #[serde(default, skip_serializing_if = "is_false")]
        prior: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Action {
    pub fn is_compute(self) -> bool {
        matches!(self, Action::Compute)
    }

    /// The step whose cache this action reads, if any.
    pub fn source(self) -> Option<usize> {
        match self {
            Action::Compute => None,
            Action::Reuse { from, .. }
            | Action::ReuseDelta { from, .. }
            | Action::Partial { from, .. } => Some(from),
        }
    }

    /// Whether a TCC prior corrects (the reused rows of) this action.
    pub fn has_prior(self) -> bool {
        matches!(
            self,
            Action::Reuse { prior: true, .. } | Action::Partial { prior: true, .. }
        )
    }

    /// The same action without a prior mark.
    pub fn without_prior(self) -> Action {
        match self {
            Action::Reuse { from, .. } => Action::Reuse { from, prior: false },
            Action::Partial { from, fresh, .. } => Action::Partial {
                from,
                fresh,
                prior: false,
            },
            other => other,
        }
    }
}

/// One sampling step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    /// Sampling-order index (0 = noisiest).
    pub step: usize,
    /// Model timestep fed to the network at this step.
    pub timestep: u32,
    /// `actions[block][i]` is the action of branch `model.branches()[i]`.
    pub actions: Vec<Vec<Action>>,
}

impl StepPlan {
    /// Whether every branch of every block is computed (a refresh step).
    pub fn is_full(&self) -> bool {
        self.actions.iter().flatten().all(|a| a.is_compute())
    }

    /// Whether any reuse (or partial compute) at this step carries a prior.
    pub fn is_calibrated(&self) -> bool {
        self.actions.iter().flatten().any(|a| a.has_prior())
    }
}

/// A compiled schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Where the plan came from (the schedule's file name), for display only:
    /// it is not part of the content hash.
    pub source: String,
    /// Where the model weights are (resolved path), if the schedule names
    /// any; `None` means the built-in model of that name (the embedded
    /// `tiny` model, or random weights for benchmarks). Not hashed.
    pub weights: Option<String>,
    pub model: ModelShape,
    pub sampler: SamplerSpec,
    pub calibration: CalibrationSpec,
    /// How partly computed branches choose their fresh tokens; present
    /// exactly when some action is [`Action::Partial`]. Absent from the
    /// serialised form otherwise, so plans without it keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toca: Option<TocaSpec>,
    pub steps: Vec<StepPlan>,
    /// A run-time policy: `steps` is then the full-computation table (the
    /// worst case), and the executor decides per step whether to run the
    /// blocks of [`Plan::reused_blocks`] or reuse their residual delta
    /// ([`Plan::reuse_step`]). Absent
    /// from files and the hash when `None`, so static plans keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSpec>,
}

impl Plan {
    pub fn branches(&self) -> &'static [Branch] {
        self.model.branches()
    }

    /// Index of `branch` in every `actions[block]` row.
    pub fn branch_index(&self, branch: Branch) -> Option<usize> {
        self.branches().iter().position(|&b| b == branch)
    }

    pub fn action(&self, step: usize, block: usize, branch: Branch) -> Option<Action> {
        let i = self.branch_index(branch)?;
        self.steps.get(step)?.actions.get(block)?.get(i).copied()
    }

    /// Whether any action computes a branch for part of the tokens.
    pub fn has_partial(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.actions)
            .flatten()
            .any(|a| matches!(a, Action::Partial { .. }))
    }

    /// Whether any partial compute carries a TCC prior (on its stale tokens).
    pub fn has_partial_prior(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.actions)
            .flatten()
            .any(|a| matches!(a, Action::Partial { prior: true, .. }))
    }

    /// `[step][block]`: whether the executor sums the attention
    /// probabilities of that block's self-attention at that step, for
    /// ToCa's `attention` score: at every step that computes the block's
    /// attention whole, when a partial compute of the block (at that step
    /// or later, before the attention is computed again) scores its tokens.
    pub fn attention_score_steps(&self) -> Vec<Vec<bool>> {
        let depth = self.model.depth;
        let mut out = vec![vec![false; depth]; self.steps.len()];
        let scored = matches!(&self.toca, Some(t) if t.score == tcc_core::TokenScore::Attention);
        let Some(attn) = self.branch_index(Branch::Attn).filter(|_| scored) else {
            return out;
        };
        let mut last = vec![None::<usize>; depth];
        for (s, step) in self.steps.iter().enumerate() {
            for (block, row) in step.actions.iter().enumerate() {
                if row[attn].is_compute() {
                    last[block] = Some(s);
                }
                if row.iter().any(|a| matches!(a, Action::Partial { .. })) {
                    if let Some(at) = last[block] {
                        out[at][block] = true;
                    }
                }
            }
        }
        out
    }

    /// The blocks `start..end` a dynamic plan's reuse skips, adding their
    /// residual delta from the last computed step: `1..depth` for a policy
    /// that probes after block 0 (first-block cache), `0..depth` for one
    /// that probes before it (TeaCache). `None` for a static plan.
    pub fn reused_blocks(&self) -> Option<(usize, usize)> {
        let d = self.dynamic.as_ref()?;
        Some((
            d.policy.probe_point().first_reused_block(),
            self.model.depth,
        ))
    }

    /// Step `step` of a dynamic plan as it runs when the policy reuses:
    /// the blocks of [`Plan::reused_blocks`] add their residual delta
    /// cached at step `from` (a Δ-DiT delta reuse), the blocks before them
    /// computed. A static plan's step is returned as it is.
    pub fn reuse_step(&self, step: usize, from: usize) -> StepPlan {
        let mut out = self.steps[step].clone();
        let Some((start, end)) = self.reused_blocks() else {
            return out;
        };
        for row in out.actions.iter_mut().skip(start) {
            row.iter_mut()
                .for_each(|a| *a = Action::ReuseDelta { start, end, from });
        }
        out
    }

    /// The static plan a dynamic plan ran as, given the steps at which it
    /// reused: each reuse step reads the latest computed step before it.
    /// This is what the cost model prices to give a run's realised cost,
    /// and a plan that sampling it reproduces bit for bit. A static plan
    /// is returned as it is.
    pub fn realised(&self, reuse_steps: &[usize]) -> Plan {
        let mut out = self.clone();
        out.dynamic = None;
        let mut last_computed = 0;
        for s in 0..self.steps.len() {
            if reuse_steps.contains(&s) && s > 0 && self.dynamic.is_some() {
                out.steps[s] = self.reuse_step(s, last_computed);
            } else {
                last_computed = s;
            }
        }
        out
    }

    /// The same plan with every action `Compute`: the reference trajectory
    /// of calibration and evaluation (same model, sampler and timesteps).
    /// A dynamic plan's policy is dropped: the reference computes every step.
    pub fn all_compute(&self) -> Plan {
        let mut full = self.clone();
        full.toca = None;
        full.dynamic = None;
        for step in &mut full.steps {
            for row in &mut step.actions {
                row.iter_mut().for_each(|a| *a = Action::Compute);
            }
        }
        full
    }
}
