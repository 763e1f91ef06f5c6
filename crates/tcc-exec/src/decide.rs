//! Run-time cache decisions: the hook a dynamic plan consults at every step,
//! and the first-block cache policy on it.
//!
//! The executor runs block 0, hands its residual (output minus input, the
//! whole model batch: every sample and both CFG halves) to a [`Decide`], and
//! then either runs blocks 1.. (storing their residual delta) or adds the
//! delta stored at the last step that ran them (a Δ-DiT delta reuse of
//! blocks `1..depth`). The bounds of the plan's [`DynamicSpec`] (warm-up,
//! cut-off, consecutive reuses) are enforced by the executor, not the
//! policy, so every policy obeys them alike. The whole batch decides
//! together, as in cache-dit: a sample's bytes depend on the batch it ran
//! in.

use candle_core::{DType, Tensor};
use tcc_core::{DynamicPolicy, DynamicSpec};

use crate::Result;

/// What a policy sees after block 0 of a step.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    pub step: usize,
    /// Block 0's output minus its input, `[batch, tokens, hidden]`, in the
    /// model's dtype.
    pub residual: &'a Tensor,
    /// Whether the bounds allow a reuse at this step and a delta is cached.
    /// When false the step computes whatever the policy answers.
    pub may_reuse: bool,
}

/// A policy's answer for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Reuse the residual delta of blocks 1.. (ignored unless the probe
    /// allowed it).
    pub reuse: bool,
    /// The change indicator the policy compared with its threshold, for
    /// reports (`None` where it had nothing to compare with).
    pub indicator: Option<f64>,
}

/// A run-time cache policy. It keeps its own state (e.g. the residual of
/// the last computed step) and is told about every step, whether or not the
/// bounds allow a reuse there.
pub trait Decide {
    fn decide(&mut self, probe: &Probe<'_>) -> Result<Decision>;

    /// A copy with the same state, so a [`Trajectory`](crate::Trajectory)
    /// can be cloned mid-run.
    fn boxed_clone(&self) -> Box<dyn Decide>;
}

/// What happened at one step of a dynamic plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDecision {
    pub step: usize,
    /// Whether blocks 1.. ran (false: their cached delta was added).
    pub computed: bool,
    pub indicator: Option<f64>,
}

/// First-block cache: reuse when mean|r - r_prev| / mean|r_prev| is below
/// the threshold, r_prev being block 0's residual at the last step that
/// ran every block.
#[derive(Clone, Debug)]
pub struct FirstBlockCache {
    threshold: f64,
    prev: Option<Tensor>,
}

impl FirstBlockCache {
    pub fn new(threshold: f64) -> FirstBlockCache {
        FirstBlockCache {
            threshold,
            prev: None,
        }
    }
}

/// mean|r - prev| / mean|prev| over every element, computed in f32 and
/// returned as f64; 0 when both are zero, infinite when only `prev` is.
pub fn relative_change(r: &Tensor, prev: &Tensor) -> Result<f64> {
    let r = r.to_dtype(DType::F32)?;
    let prev = prev.to_dtype(DType::F32)?;
    let num = (&r - &prev)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let den = prev.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(if den > 0.0 {
        num / den
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    })
}

impl Decide for FirstBlockCache {
    fn decide(&mut self, probe: &Probe<'_>) -> Result<Decision> {
        let indicator = match &self.prev {
            Some(prev) => Some(relative_change(probe.residual, prev)?),
            None => None,
        };
        // NaN compares false: a broken indicator computes.
        let reuse = probe.may_reuse && indicator.is_some_and(|x| x < self.threshold);
        if !reuse {
            self.prev = Some(probe.residual.clone());
        }
        Ok(Decision { reuse, indicator })
    }

    fn boxed_clone(&self) -> Box<dyn Decide> {
        Box::new(self.clone())
    }
}

/// The policy a plan's spec names.
pub fn policy_for(spec: &DynamicSpec) -> Box<dyn Decide> {
    match spec.policy {
        DynamicPolicy::FirstBlock => Box::new(FirstBlockCache::new(spec.threshold)),
    }
}

/// The executor's side of a dynamic plan: the policy, the bounds and what
/// was decided so far.
pub(crate) struct DynamicState {
    pub spec: DynamicSpec,
    pub policy: Box<dyn Decide>,
    /// Reuse steps in a row just before the next step.
    pub run: usize,
    pub decisions: Vec<StepDecision>,
}

impl Clone for DynamicState {
    fn clone(&self) -> Self {
        DynamicState {
            spec: self.spec,
            policy: self.policy.boxed_clone(),
            run: self.run,
            decisions: self.decisions.clone(),
        }
    }
}

impl DynamicState {
    pub fn new(spec: DynamicSpec) -> DynamicState {
        DynamicState {
            spec,
            policy: policy_for(&spec),
            run: 0,
            decisions: Vec::new(),
        }
    }

    /// Asks the policy at `step` of `steps`; true: reuse blocks 1...
    pub fn decide(
        &mut self,
        step: usize,
        steps: usize,
        residual: &Tensor,
        cached: bool,
    ) -> Result<bool> {
        let may_reuse = cached && self.spec.may_reuse(step, steps, self.run);
        let d = self.policy.decide(&Probe {
            step,
            residual,
            may_reuse,
        })?;
        let reuse = d.reuse && may_reuse;
        self.run = if reuse { self.run + 1 } else { 0 };
        self.decisions.push(StepDecision {
            step,
            computed: !reuse,
            indicator: d.indicator,
        });
        Ok(reuse)
    }
}
