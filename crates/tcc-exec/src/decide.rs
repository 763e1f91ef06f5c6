//! Run-time cache decisions: the hook a dynamic plan consults at every step,
//! and the policies on it (first-block cache, TeaCache).
//!
//! A policy probes each step at one point ([`ProbePoint`], fixed by the
//! policy): after block 0, at block 0's residual (first-block cache), or
//! before block 0, at block 0's modulated input (TeaCache). The executor
//! hands it that tensor (the whole model batch: every sample and both CFG
//! halves) and then either runs the blocks from the probe point to the
//! last (storing their residual delta) or adds the delta stored at the
//! last step that ran them (a Δ-DiT delta reuse of blocks `1..depth` or
//! `0..depth`). The bounds of the plan's [`DynamicSpec`] (warm-up,
//! cut-off, consecutive reuses) are enforced by the executor, not the
//! policy, so every policy obeys them alike. The whole batch decides
//! together, as in cache-dit: a sample's bytes depend on the batch it ran
//! in.

use candle_core::{DType, Tensor};
use tcc_core::{DynamicPolicy, DynamicSpec, Polynomial, ProbePoint};

use crate::Result;

/// What a policy sees at its probe point of a step.
#[derive(Clone, Copy, Debug)]
pub struct Probe<'a> {
    pub step: usize,
    /// Where the executor probed (the policy's [`Decide::probe_point`]).
    pub point: ProbePoint,
    /// `[batch, tokens, hidden]` in the model's dtype: block 0's output
    /// minus its input after block 0, block 0's modulated input
    /// (`LayerNorm(x) * (1 + scale_msa) + shift_msa`) before it.
    pub signal: &'a Tensor,
    /// Whether the bounds allow a reuse at this step and a delta is cached.
    /// When false the step computes whatever the policy answers.
    pub may_reuse: bool,
}

/// A policy's answer for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Reuse the residual delta of the blocks from the probe point on
    /// (ignored unless the probe allowed it).
    pub reuse: bool,
    /// The change indicator the policy compared with its threshold, for
    /// reports (`None` where it had nothing to compare with).
    pub indicator: Option<f64>,
}

/// A run-time cache policy. It keeps its own state (e.g. the residual of
/// the last computed step) and is told about every step, whether or not the
/// bounds allow a reuse there.
pub trait Decide {
    /// Where the policy probes; it must be the probe point of the plan's
    /// policy ([`DynamicPolicy::probe_point`]), which fixes the blocks a
    /// reuse skips and so what the plan's cost model prices.
    fn probe_point(&self) -> ProbePoint;

    fn decide(&mut self, probe: &Probe<'_>) -> Result<Decision>;

    /// A copy with the same state, so a [`Trajectory`](crate::Trajectory)
    /// can be cloned mid-run.
    fn boxed_clone(&self) -> Box<dyn Decide>;
}

/// What happened at one step of a dynamic plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDecision {
    pub step: usize,
    /// Whether the blocks from the probe point on ran (false: their
    /// cached delta was added).
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
    fn probe_point(&self) -> ProbePoint {
        ProbePoint::AfterFirstBlock
    }

    fn decide(&mut self, probe: &Probe<'_>) -> Result<Decision> {
        let indicator = match &self.prev {
            Some(prev) => Some(relative_change(probe.signal, prev)?),
            None => None,
        };
        // NaN compares false: a broken indicator computes.
        let reuse = probe.may_reuse && indicator.is_some_and(|x| x < self.threshold);
        if !reuse {
            self.prev = Some(probe.signal.clone());
        }
        Ok(Decision { reuse, indicator })
    }

    fn boxed_clone(&self) -> Box<dyn Decide> {
        Box::new(self.clone())
    }
}

/// TeaCache, in the order of its reference code: at every step but the
/// first, `acc += rescale(mean|m - m_prev| / mean|m_prev|)`, `m` being
/// block 0's modulated input and `m_prev` that of the previous step
/// (computed or not); reuse when `acc < threshold` (and the bounds allow);
/// at every computed step `acc` goes back to 0. `m_prev = m` after every
/// step. The reported indicator is `acc` as compared.
#[derive(Clone, Debug)]
pub struct TeaCache {
    threshold: f64,
    rescale: Option<Polynomial>,
    prev: Option<Tensor>,
    acc: f64,
}

impl TeaCache {
    pub fn new(threshold: f64, rescale: Option<Polynomial>) -> TeaCache {
        TeaCache {
            threshold,
            rescale,
            prev: None,
            acc: 0.0,
        }
    }
}

impl Decide for TeaCache {
    fn probe_point(&self) -> ProbePoint {
        ProbePoint::BeforeFirstBlock
    }

    fn decide(&mut self, probe: &Probe<'_>) -> Result<Decision> {
        let indicator = match &self.prev {
            Some(prev) => {
                let change = relative_change(probe.signal, prev)?;
                self.acc += self.rescale.map_or(change, |p| p.eval(change));
                Some(self.acc)
            }
            None => None,
        };
        // NaN compares false: a broken indicator computes (and resets).
        let reuse = probe.may_reuse && indicator.is_some_and(|x| x < self.threshold);
        if !reuse {
            self.acc = 0.0;
        }
        self.prev = Some(probe.signal.clone());
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
        DynamicPolicy::TeaCache => Box::new(TeaCache::new(spec.threshold, spec.rescale)),
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

    /// Where the plan's policy probes.
    pub fn probe_point(&self) -> ProbePoint {
        self.spec.policy.probe_point()
    }

    /// Asks the policy at `step` of `steps` with the tensor of its probe
    /// point; `cached`: whether a delta of the reused blocks is held.
    /// True: reuse them.
    pub fn decide(
        &mut self,
        step: usize,
        steps: usize,
        signal: &Tensor,
        cached: bool,
    ) -> Result<bool> {
        let may_reuse = cached && self.spec.may_reuse(step, steps, self.run);
        let d = self.policy.decide(&Probe {
            step,
            point: self.probe_point(),
            signal,
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
