//! What TeaCache's rescaling is fitted on: per step of a full-computation
//! run, how much block 0's modulated input changed (what the policy sees)
//! and how much the model output changed (what reusing would cost).

use candle_core::Tensor;
use tcc_core::{DynamicPolicy, DynamicSpec};
use tcc_model::BlockModel;
use tcc_plan::Plan;

use crate::decide::relative_change;
use crate::{ExecError, Hooks, Result, SampleBatch, Trajectory};

/// One step's changes since the step before, over the whole model batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepChange {
    pub step: usize,
    /// mean|m - m_prev| / mean|m_prev| of block 0's modulated input: the
    /// indicator TeaCache accumulates (before rescaling).
    pub input: f64,
    /// The same of the model output (before guidance).
    pub output: f64,
}

/// Records the relative change of the model output from step to step.
struct OutputChanges {
    prev: Option<Tensor>,
    changes: Vec<f64>,
}

impl Hooks for OutputChanges {
    fn branch_output(&mut self, _: &crate::BranchSite, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn model_output(&mut self, _step: usize, out: &Tensor) -> Result<()> {
        if let Some(prev) = &self.prev {
            self.changes.push(relative_change(out, prev)?);
        }
        self.prev = Some(out.clone());
        Ok(())
    }
}

/// Runs `batch` with full computation under `plan`'s model and sampler
/// (its table, policy and priors ignored) and returns the changes of
/// steps 1.. The input change is TeaCache's own indicator: the run is a
/// TeaCache plan with threshold 0 and no rescaling, which computes every
/// step (bit for bit full computation) and reports each step's change.
pub fn teacache_changes<M: BlockModel>(
    model: &M,
    plan: &Plan,
    batch: &SampleBatch,
) -> Result<Vec<StepChange>> {
    let mut full = plan.all_compute();
    full.dynamic = Some(DynamicSpec {
        policy: DynamicPolicy::TeaCache,
        threshold: 0.0,
        warmup: 1,
        cutoff: 0,
        max_reuse: None,
        rescale: None,
    });
    let mut hooks = OutputChanges {
        prev: None,
        changes: Vec::new(),
    };
    let mut tr = Trajectory::new(model, &full, batch)?;
    while !tr.is_done() {
        tr.step(&mut hooks)?;
    }
    let mut out = Vec::new();
    for (d, &output) in tr.decisions().iter().skip(1).zip(&hooks.changes) {
        let input = d.indicator.ok_or_else(|| {
            ExecError::Input(format!("step {}: no indicator after step 0", d.step))
        })?;
        out.push(StepChange {
            step: d.step,
            input,
            output,
        });
    }
    Ok(out)
}
