use std::collections::HashMap;

use candle_core::{DType, Tensor};
use tcc_core::{Branch, CfgOrder, ProbePoint};
use tcc_model::BlockModel;
use tcc_plan::{Action, Plan};
use tcc_sampler::{NoiseRng, Sampler};

use crate::decide::{Decide, DynamicState, StepDecision};
use crate::toca::{self, PartialCell, TokenState};
use crate::{CacheLayout, ExecError, Result};

/// Where a branch output belongs in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchSite<'a> {
    pub step: usize,
    pub block: usize,
    pub branch: Branch,
    /// `Compute`, `Reuse` or `Partial` (reuse-delta ranges have no branch
    /// outputs).
    pub action: Action,
    /// At a `Partial` action: the tokens computed at this step, per row of
    /// the model batch (ascending; empty when none was, every token when
    /// the whole branch was). The other rows of the output were read from
    /// the cache (stale). `None` at every other action.
    pub fresh: Option<&'a [Vec<usize>]>,
}

/// Observes, and may replace, pre-gate branch outputs during a run.
pub trait Hooks {
    /// Called with every pre-gate branch output right before it is gated:
    /// computed outputs and reused ones (as read from the cache). Returning
    /// `Some(t)` uses `t` instead; if that output is cached (a computed output
    /// a later step reuses, or a reused one), `t` also replaces the cache
    /// entry, so consecutive reuses chain from the replaced value. The
    /// tensor covers the whole model batch (both CFG halves).
    fn branch_output(&mut self, site: &BranchSite<'_>, out: &Tensor) -> Result<Option<Tensor>>;

    /// Called at every step with the model's output (`[batch, C_out, H,
    /// W]` f32, the whole model batch, before guidance), to observe it
    /// (TeaCache's fit of its rescaling reads it). Does nothing by default.
    fn model_output(&mut self, step: usize, out: &Tensor) -> Result<()> {
        let _ = (step, out);
        Ok(())
    }
}

/// Hooks that observe nothing and replace nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn branch_output(&mut self, _: &BranchSite<'_>, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The inputs of one sampling run: initial noise and conditions.
#[derive(Clone, Debug)]
pub struct SampleBatch {
    /// Initial latents `x_T`, `[B, C, H, W]`, f32.
    pub noise: Tensor,
    /// Conditions `[B, ...]` (class ids for DiT).
    pub cond: Tensor,
    /// The null condition `[B, ...]`, required when the plan uses CFG.
    pub uncond: Option<Tensor>,
    /// Key mask of `cond` `[B, L]` (1 = attend, 0 = padding): PixArt's
    /// caption mask. `None` attends to every token.
    pub cond_mask: Option<Tensor>,
    /// Key mask of `uncond`; with CFG, give both masks or neither.
    pub uncond_mask: Option<Tensor>,
    /// Seed of the sampler's own noise (DDPM, DDIM with eta > 0).
    pub seed: u64,
}

/// One trajectory of a plan in progress: the latents, the sampler state and
/// the cache. Advance it with [`Trajectory::step`]; several trajectories can
/// advance side by side (the calibration pass walks a reference and an
/// accelerated one together).
pub struct Trajectory<'a, M: BlockModel> {
    model: &'a M,
    plan: &'a Plan,
    layout: CacheLayout,
    sampler: Sampler,
    rng: NoiseRng,
    x: Tensor,
    cond_in: Tensor,
    /// The key mask matching `cond_in`, if the batch has masks.
    mask_in: Option<Tensor>,
    next: usize,
    /// (block, branch index) -> (step it was computed at, pre-gate output).
    cache: HashMap<(usize, usize), (usize, Tensor)>,
    /// (start, end) -> (step, residual delta of blocks start..end).
    delta: HashMap<(usize, usize), (usize, Tensor)>,
    /// `[step][block]`: sum the block's attention for ToCa's score.
    scored: Vec<Vec<bool>>,
    /// Staleness and attention of ToCa's token choice.
    token_state: TokenState,
    /// Seed of the batch (ToCa's `random` score mixes it in).
    seed: u64,
    /// The policy of a dynamic plan and its decisions so far.
    dynamic: Option<DynamicState>,
}

/// A copy of the trajectory at its current step (tensors are shared, not
/// copied): advancing the copy leaves the original where it was, so a step
/// can be tried with and without some hooks.
impl<M: BlockModel> Clone for Trajectory<'_, M> {
    fn clone(&self) -> Self {
        Trajectory {
            model: self.model,
            plan: self.plan,
            layout: self.layout.clone(),
            sampler: self.sampler.clone(),
            rng: self.rng.clone(),
            x: self.x.clone(),
            cond_in: self.cond_in.clone(),
            mask_in: self.mask_in.clone(),
            next: self.next,
            cache: self.cache.clone(),
            delta: self.delta.clone(),
            scored: self.scored.clone(),
            token_state: self.token_state.clone(),
            seed: self.seed,
            dynamic: self.dynamic.clone(),
        }
    }
}

impl<'a, M: BlockModel> Trajectory<'a, M> {
    pub fn new(model: &'a M, plan: &'a Plan, batch: &SampleBatch) -> Result<Self> {
        if model.depth() != plan.model.depth {
            return Err(ExecError::DepthMismatch {
                plan: plan.model.name.clone(),
                plan_depth: plan.model.depth,
                model_depth: model.depth(),
            });
        }
        if plan.has_partial() && plan.toca.is_none() {
            return Err(ExecError::Input(
                "the plan computes tokens partially but has no ToCa settings".into(),
            ));
        }
        if model.branches() != plan.branches() {
            let names = |bs: &[Branch]| bs.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ");
            return Err(ExecError::BranchMismatch {
                plan: names(plan.branches()),
                model: names(model.branches()),
            });
        }
        let cond_in = if plan.sampler.uses_cfg() {
            let uncond = batch.uncond.as_ref().ok_or_else(|| {
                ExecError::Input("the plan uses CFG but no null condition was given".into())
            })?;
            match plan.sampler.cfg_order {
                CfgOrder::CondFirst => Tensor::cat(&[&batch.cond, uncond], 0)?,
                CfgOrder::UncondFirst => Tensor::cat(&[uncond, &batch.cond], 0)?,
            }
        } else {
            batch.cond.clone()
        };
        let mask_in = match (&batch.cond_mask, &batch.uncond_mask) {
            (None, None) => None,
            (Some(m), _) if !plan.sampler.uses_cfg() => Some(m.clone()),
            (Some(m), Some(u)) => Some(match plan.sampler.cfg_order {
                CfgOrder::CondFirst => Tensor::cat(&[m, u], 0)?,
                CfgOrder::UncondFirst => Tensor::cat(&[u, m], 0)?,
            }),
            _ => {
                return Err(ExecError::Input(
                    "the plan uses CFG: give a key mask for both the condition and the null condition, or for neither".into(),
                ))
            }
        };
        Ok(Trajectory {
            model,
            plan,
            layout: CacheLayout::new(plan),
            sampler: Sampler::new(&plan.sampler)?,
            rng: NoiseRng::new(batch.seed),
            x: batch.noise.to_dtype(DType::F32)?,
            cond_in,
            mask_in,
            next: 0,
            cache: HashMap::new(),
            delta: HashMap::new(),
            scored: plan.attention_score_steps(),
            token_state: TokenState::default(),
            seed: batch.seed,
            dynamic: plan.dynamic.map(DynamicState::new),
        })
    }

    /// Replaces the policy of a dynamic plan (the one its spec names by
    /// default) before the first step; the plan's bounds still apply, and
    /// the policy must probe where the plan's does (that fixes the blocks
    /// a reuse skips, which the plan's cost model prices).
    pub fn with_policy(mut self, policy: Box<dyn Decide>) -> Result<Self> {
        match &mut self.dynamic {
            Some(state) if policy.probe_point() != state.probe_point() => {
                Err(ExecError::Input(format!(
                    "the policy probes at {:?}, the plan's policy ({}) at {:?}",
                    policy.probe_point(),
                    state.spec.policy,
                    state.probe_point()
                )))
            }
            Some(state) if self.next == 0 => {
                state.policy = policy;
                Ok(self)
            }
            Some(_) => Err(ExecError::Input(
                "a policy can only be replaced before the first step".into(),
            )),
            None => Err(ExecError::Input(
                "the plan is static: it has no run-time policy to replace".into(),
            )),
        }
    }

    /// What a dynamic plan decided at every step run so far (empty for a
    /// static plan).
    pub fn decisions(&self) -> &[StepDecision] {
        self.dynamic.as_ref().map_or(&[], |d| &d.decisions)
    }

    /// The steps at which a dynamic plan reused its blocks
    /// ([`Plan::reused_blocks`]) so far: `plan.realised(&reuse_steps())` is
    /// the static plan the run followed.
    pub fn reuse_steps(&self) -> Vec<usize> {
        self.decisions()
            .iter()
            .filter(|d| !d.computed)
            .map(|d| d.step)
            .collect()
    }

    /// The index of the next step to run.
    pub fn next_step(&self) -> usize {
        self.next
    }

    pub fn is_done(&self) -> bool {
        self.next >= self.plan.steps.len()
    }

    /// The current latents (after the steps run so far).
    pub fn latents(&self) -> &Tensor {
        &self.x
    }

    /// Number of cached tensors held right now (branch outputs + deltas).
    pub fn cached_entries(&self) -> usize {
        self.cache.len() + self.delta.len()
    }

    /// The cached pre-gate output that the next step will reuse for
    /// `(block, branch index)`, as no hook has seen it yet; `None` if the
    /// next step does not reuse that branch.
    ///
    /// A reused output depends only on the cache, not on the step's own
    /// input, so calibration reads its statistics here before the step runs.
    pub fn pending_reuse(&self, block: usize, branch_index: usize) -> Option<&Tensor> {
        let step = self.plan.steps.get(self.next)?;
        match step.actions.get(block)?.get(branch_index)? {
            Action::Reuse { from, .. } => match self.cache.get(&(block, branch_index)) {
                Some((at, t)) if at == from => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// Run the next step of the plan.
    pub fn step(&mut self, hooks: &mut dyn Hooks) -> Result<()> {
        let s = self.next;
        let plan = self.plan;
        let step = plan
            .steps
            .get(s)
            .ok_or(ExecError::Finished(plan.steps.len()))?;
        let model = self.model;
        let branches = plan.branches();
        let cfg = plan.sampler.uses_cfg();

        let x_in = if cfg {
            Tensor::cat(&[&self.x, &self.x], 0)?
        } else {
            self.x.clone()
        };
        let batch = x_in.dim(0)?;
        let t = Tensor::full(step.timestep as f32, batch, x_in.device())?;
        let (mut h, c) = model.embed(&x_in, &t, &self.cond_in, self.mask_in.as_ref())?;

        let tokens = plan.model.tokens();
        let depth = model.depth();
        let mut open_ranges: Vec<((usize, usize), Tensor)> = Vec::new();
        let mut block = 0;
        // A dynamic plan's probe: after block 0, the residual stream
        // entering it; before block 0, its modulated input, whose
        // modulation block 0 then uses.
        let mut first_in = None;
        let mut first_mod = None;
        match self.dynamic.as_ref().map(|d| d.probe_point()) {
            Some(ProbePoint::AfterFirstBlock) => first_in = Some(h.clone()),
            Some(ProbePoint::BeforeFirstBlock) => {
                let m = model.modulation(0, &c)?;
                let signal = model.modulated_input(0, &h, &m)?;
                if self.decide_dynamic(s, &signal, 0)? {
                    h = (h + &self.delta[&(0, depth)].1)?;
                    block = depth;
                } else {
                    open_ranges.push(((0, depth), h.clone()));
                    first_mod = Some(m);
                }
            }
            None => {}
        }
        while block < depth {
            if let Action::ReuseDelta { start, end, from } = step.actions[block][0] {
                let (at, d) = self
                    .delta
                    .get(&(start, end))
                    .ok_or(ExecError::MissingCache {
                        step: s,
                        block,
                        branch: branches[0],
                        from,
                    })?;
                if *at != from {
                    return Err(ExecError::MissingCache {
                        step: s,
                        block,
                        branch: branches[0],
                        from,
                    });
                }
                h = (h + d)?;
                block = end;
                continue;
            }
            // Remember the residual stream entering each range whose delta
            // this step stores.
            for &(start, end) in &self.layout.store_delta[s] {
                if start == block {
                    open_ranges.push(((start, end), h.clone()));
                }
            }
            let m = match first_mod.take() {
                Some(m) => m,
                None => model.modulation(block, &c)?,
            };
            for (bi, &branch) in branches.iter().enumerate() {
                let action = step.actions[block][bi];
                let cached = |from: usize| match self.cache.get(&(block, bi)) {
                    Some((at, t)) if *at == from => Ok(t.clone()),
                    _ => Err(ExecError::MissingCache {
                        step: s,
                        block,
                        branch,
                        from,
                    }),
                };
                // The fresh tokens of a partial compute, for the hooks.
                let mut fresh_rows: Option<Vec<Vec<usize>>> = None;
                let out = match action {
                    Action::Compute if branch == Branch::Attn && self.scored[s][block] => {
                        let (out, received) = model.attention_received(block, &h, &m, &c)?;
                        let received = received.ok_or_else(|| {
                            ExecError::Input("ToCa's attention score needs the attention each token receives, and this model does not report it (use score = \"random\")".into())
                        })?;
                        self.token_state.set_received(block, &received)?;
                        out
                    }
                    Action::Compute => model.branch(block, branch, &h, &m, &c)?,
                    Action::Reuse { from, .. } => cached(from)?,
                    Action::Partial { from, fresh: 0, .. } => {
                        fresh_rows = Some(vec![Vec::new(); batch]);
                        cached(from)?
                    }
                    Action::Partial { fresh, .. } if fresh >= tokens => {
                        fresh_rows = Some(vec![(0..tokens).collect(); batch]);
                        model.branch(block, branch, &h, &m, &c)?
                    }
                    Action::Partial { from, fresh, .. } => {
                        let entry = cached(from)?;
                        let spec = plan.toca.as_ref().ok_or_else(|| {
                            ExecError::Input("a partial compute without ToCa settings".into())
                        })?;
                        let cell = PartialCell {
                            step: s,
                            block,
                            branch_index: bi,
                            fresh,
                        };
                        let side = plan.model.input_size / plan.model.patch.max(1);
                        let idx = toca::choose(
                            &mut self.token_state,
                            spec,
                            &cell,
                            batch,
                            side,
                            cfg,
                            self.seed,
                        )?;
                        let out =
                            toca::partial_branch(model, block, branch, &h, &m, &c, &entry, &idx)?;
                        fresh_rows = Some(idx);
                        out
                    }
                    Action::ReuseDelta { .. } => {
                        unreachable!("a reuse-delta block was skipped above")
                    }
                };
                if plan.toca.is_some() {
                    // Partial computes of some tokens update their own counters.
                    match action {
                        Action::Compute => self.token_state.computed((block, bi)),
                        Action::Partial { fresh, .. } if fresh >= tokens => {
                            self.token_state.computed((block, bi))
                        }
                        Action::Reuse { .. } | Action::Partial { fresh: 0, .. } => {
                            self.token_state.reused((block, bi), batch * tokens)
                        }
                        _ => {}
                    }
                }
                let site = BranchSite {
                    step: s,
                    block,
                    branch,
                    action,
                    fresh: fresh_rows.as_deref(),
                };
                let out = hooks
                    .branch_output(&site, &out)
                    .map_err(hook_error)?
                    .unwrap_or(out);
                match action {
                    Action::Compute if self.layout.store[s].contains(&(block, bi)) => {
                        self.cache.insert((block, bi), (s, out.clone()));
                    }
                    Action::Reuse { from, .. } | Action::Partial { from, .. } => {
                        self.cache.insert((block, bi), (from, out.clone()));
                    }
                    _ => {}
                }
                h = model.add_branch(branch, &h, &m, &out)?;
            }
            block += 1;
            let mut i = 0;
            while i < open_ranges.len() {
                if open_ranges[i].0 .1 == block {
                    let (range, input) = open_ranges.swap_remove(i);
                    self.delta.insert(range, (s, (&h - &input)?));
                } else {
                    i += 1;
                }
            }
            if let (1, Some(first_in)) = (block, &first_in) {
                let residual = (&h - first_in)?;
                if self.decide_dynamic(s, &residual, 1)? {
                    h = (h + &self.delta[&(1, depth)].1)?;
                    break;
                }
                open_ranges.push(((1, depth), h.clone()));
            }
        }
        let out = model.finish(&h, &c)?.to_dtype(DType::F32)?;
        hooks.model_output(s, &out).map_err(hook_error)?;
        let guided = tcc_sampler::guide(&out, &plan.sampler, plan.model.in_channels)?;
        let noise = if self.sampler.needs_noise(s) {
            Some(self.rng.randn(self.x.dims(), self.x.device())?)
        } else {
            None
        };
        self.x = self.sampler.step(s, &self.x, &guided, noise.as_ref())?;
        check_finite(&self.x, s, plan.steps.len())?;

        for key in &self.layout.drop[s] {
            self.cache.remove(key);
        }
        for key in &self.layout.drop_delta[s] {
            self.delta.remove(key);
        }
        self.next += 1;
        Ok(())
    }

    /// A dynamic plan's decision at step `s`, from the tensor of its probe
    /// point: true to add the residual delta of blocks `start..depth`
    /// cached at the last computed step.
    fn decide_dynamic(&mut self, s: usize, signal: &Tensor, start: usize) -> Result<bool> {
        let steps = self.plan.steps.len();
        let cached = self.delta.contains_key(&(start, self.model.depth()));
        let state = self
            .dynamic
            .as_mut()
            .expect("called for dynamic plans only");
        state.decide(s, steps, signal, cached)
    }

    /// Run every remaining step and return the final latents.
    pub fn run(mut self, hooks: &mut dyn Hooks) -> Result<Tensor> {
        while !self.is_done() {
            self.step(hooks)?;
        }
        Ok(self.x)
    }
}

/// What a hook returned, marked as the hook's (unless it already is).
fn hook_error(e: ExecError) -> ExecError {
    match e {
        ExecError::Hook(_) => e,
        e => ExecError::Hook(Box::new(e)),
    }
}

/// Refuses latents with NaN or infinite values after step `step`: one
/// reduction per step (the sum is finite only if every value is, short of
/// an overflow of the sum itself, which only latents of ~1e34 and more
/// reach); the values are read back only to describe a failure.
fn check_finite(x: &Tensor, step: usize, steps: usize) -> Result<()> {
    let total = x.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if total.is_finite() {
        return Ok(());
    }
    let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let nan = v.iter().filter(|x| x.is_nan()).count();
    let inf = v.iter().filter(|x| x.is_infinite()).count();
    let detail = if nan + inf > 0 {
        format!("{nan} NaN and {inf} infinite of {} values", v.len())
    } else {
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        format!("values up to {max:e}, whose sum overflows")
    };
    Err(ExecError::NonFinite {
        step,
        last: steps.saturating_sub(1),
        detail,
    })
}
