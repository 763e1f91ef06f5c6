//! The calibration walk: fit every calibrated step's priors in sampling
//! order, each on the accelerated trajectory that the earlier priors already
//! shifted, and measure (or choose) them on held-out validation samples.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use tcc_core::{Branch, CalibMode, CalibrationSpec, Pooling, Selection};
use tcc_exec::{BranchSite, Hooks, NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Conditioning, Modulation};
use tcc_plan::{Action, Plan};

use crate::partial::{Local, Reduce, StatsFile, StepStats};
use crate::select::{choose, fit_candidates, Choice};
use crate::{CalibError, Moments, Pooler, Prior, PriorHooks, Site};

/// One batch of calibration samples and the condition (row key) of each.
#[derive(Clone, Debug)]
pub struct CalibBatch {
    pub batch: SampleBatch,
    /// The condition (class id or prompt index) of every sample; under
    /// `tokens` pooling it is the row the sample is pooled into.
    pub conditions: Vec<u64>,
}

/// What the walk is doing, for progress display.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Calibration batch `batch` (of `batches`) gave its statistics of
    /// calibrated `step`.
    Calibration {
        step: usize,
        batch: usize,
        batches: usize,
    },
    /// Validation batch `batch` gave its statistics of `step`.
    Validation {
        step: usize,
        batch: usize,
        batches: usize,
    },
    /// The priors of `step` were fitted (and chosen).
    Fitted { step: usize },
    /// The validation samples were run to the end, with and without priors.
    Final,
}

/// What the validation samples say about one calibrated step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepValidation {
    /// Relative distance `sqrt(Σ ||a - out||² / Σ ||a||²)` of the branch
    /// outputs to the reference, every token of both CFG halves, summed
    /// over the step's sites: without priors and with the chosen ones.
    pub branch_before: f64,
    pub branch_after: f64,
    /// Relative L2 of the validation latents after this step against the
    /// reference trajectory's: without this step's priors and with them.
    pub latent_before: f64,
    pub latent_after: f64,
    /// Whether the step's priors were kept (validated selection drops a
    /// step whose priors move the latents away from the reference).
    pub kept: bool,
    /// Sites that carry a prior (alpha > 0) after the choice.
    pub with_prior: usize,
}

/// Distances to the reference on the fitted rows of one calibrated step,
/// summed over its sites: before the priors and after them (at the chosen
/// alphas), relative to the reference's norm; and what the validation
/// samples say.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub sites: usize,
    /// Rows each site's fit saw, and their width.
    pub rows: usize,
    pub dim: usize,
    pub rel_before: f64,
    pub rel_after: f64,
    /// Share of the per-token reuse error that all tokens of a sample have
    /// in common (calibration samples, pooled halves): the most that one
    /// shift per sample could remove.
    pub common_share: f64,
    pub validation: Option<StepValidation>,
}

/// The choice made at one site.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteChoice {
    #[serde(flatten)]
    pub site: Site,
    #[serde(flatten)]
    pub choice: Choice,
}

/// The end-to-end check on the validation samples: mean per-sample
/// relative L2 of the final latents against full computation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FinalCheck {
    pub samples: usize,
    pub cache: f64,
    pub calibrated: f64,
    /// Whether the priors were kept. Validated selection drops all of them
    /// when the calibrated run is not closer to full computation than the
    /// plain cache; the fixed protocol keeps them and warns.
    pub kept: bool,
}

/// Model evaluations, counted in branch evaluations (one branch of one
/// block for one model batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostReport {
    pub samples: usize,
    /// Measured on the reference trajectories.
    pub reference: u64,
    /// Measured on the accelerated trajectories.
    pub accelerated: u64,
    /// Measured on the validation samples (all their trajectories).
    pub validation: u64,
    /// The one-pass bound: one reference plus one accelerated trajectory
    /// per batch.
    pub one_pass_bound: u64,
    /// What re-running the accelerated trajectory from step 0 for every
    /// calibrated step (plus one reference trajectory) would cost.
    pub rerun_from_start: u64,
    /// What re-running from the nearest refresh step for every calibrated
    /// step would cost, given the latents at every refresh step.
    pub rerun_from_refresh: u64,
}

impl CostReport {
    /// Adds another shard's counts (every field is a sum over batches).
    pub fn add(&mut self, other: &CostReport) {
        self.samples += other.samples;
        self.reference += other.reference;
        self.accelerated += other.accelerated;
        self.validation += other.validation;
        self.one_pass_bound += other.one_pass_bound;
        self.rerun_from_start += other.rerun_from_start;
        self.rerun_from_refresh += other.rerun_from_refresh;
    }

    fn to_values(&self) -> Vec<f64> {
        [
            self.samples as u64,
            self.reference,
            self.accelerated,
            self.validation,
            self.one_pass_bound,
            self.rerun_from_start,
            self.rerun_from_refresh,
        ]
        .iter()
        .map(|&x| x as f64)
        .collect()
    }

    fn from_values(v: &[f64]) -> CostReport {
        // Counts below 2^53 add up exactly in f64.
        CostReport {
            samples: v[0] as usize,
            reference: v[1] as u64,
            accelerated: v[2] as u64,
            validation: v[3] as u64,
            one_pass_bound: v[4] as u64,
            rerun_from_start: v[5] as u64,
            rerun_from_refresh: v[6] as u64,
        }
    }
}

/// The result of a calibration walk.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// The fitted prior of every site that carries one.
    pub priors: BTreeMap<Site, Prior>,
    /// The blend of every calibrated site (0: no prior).
    pub alphas: BTreeMap<Site, f64>,
    pub choices: Vec<SiteChoice>,
    pub steps: Vec<StepReport>,
    pub final_check: Option<FinalCheck>,
    pub cost: CostReport,
}

impl Calibration {
    /// What the calibration measured and chose (per step, per site, and the
    /// end-to-end check), as a priors file keeps it ([`PriorMeta::report`]).
    pub fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut report = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Result<serde_json::Value>| {
            report.insert(key.into(), value.unwrap_or(serde_json::Value::Null));
        };
        put("steps", serde_json::to_value(&self.steps));
        put("choices", serde_json::to_value(&self.choices));
        put("final", serde_json::to_value(&self.final_check));
        report
    }
}

/// Counts branch evaluations of the wrapped model.
struct Counting<'m, M> {
    inner: &'m M,
    evals: Cell<u64>,
}

impl<M: BlockModel> BlockModel for Counting<'_, M> {
    fn depth(&self) -> usize {
        self.inner.depth()
    }
    fn branches(&self) -> &'static [Branch] {
        self.inner.branches()
    }
    fn embed(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        cond_mask: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Conditioning)> {
        self.inner.embed(x, t, cond, cond_mask)
    }
    fn modulation(&self, block: usize, cond: &Conditioning) -> candle_core::Result<Modulation> {
        self.inner.modulation(block, cond)
    }
    fn modulated_input(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
    ) -> candle_core::Result<Tensor> {
        self.inner.modulated_input(block, x, m)
    }
    fn branch(
        &self,
        block: usize,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        cond: &Conditioning,
    ) -> candle_core::Result<Tensor> {
        self.evals.set(self.evals.get() + 1);
        self.inner.branch(block, branch, x, m, cond)
    }
    fn attention_received(
        &self,
        block: usize,
        x: &Tensor,
        m: &Modulation,
        cond: &Conditioning,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        self.evals.set(self.evals.get() + 1);
        self.inner.attention_received(block, x, m, cond)
    }
    fn add_branch(
        &self,
        branch: Branch,
        x: &Tensor,
        m: &Modulation,
        out: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.inner.add_branch(branch, x, m, out)
    }
    fn finish(&self, x: &Tensor, cond: &Conditioning) -> candle_core::Result<Tensor> {
        self.inner.finish(x, cond)
    }
}

/// The fresh tokens of a partial compute, per model batch row (`None`:
/// not a partial compute).
type Fresh = Option<Vec<Vec<usize>>>;

/// Keeps the outputs of the calibrated sites of one step, with the fresh
/// tokens of partial computes.
struct Recorder<'a> {
    step: usize,
    sites: &'a [Site],
    outputs: HashMap<Site, (Tensor, Fresh)>,
}

impl Hooks for Recorder<'_> {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        let key = Site::new(site.step, site.branch, site.block);
        if site.step == self.step && self.sites.contains(&key) {
            self.outputs
                .insert(key, (out.clone(), site.fresh.map(<[_]>::to_vec)));
        }
        Ok(None)
    }
}

/// The calibrated sites of a plan: step -> (block, branch index) of every
/// reuse (or ToCa partial compute) that carries a prior.
pub fn calibrated_sites(plan: &Plan) -> BTreeMap<usize, Vec<(usize, usize)>> {
    let mut sites: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for step in &plan.steps {
        for (block, row) in step.actions.iter().enumerate() {
            for (bi, a) in row.iter().enumerate() {
                if a.has_prior() {
                    sites.entry(step.step).or_default().push((block, bi));
                }
            }
        }
    }
    sites
}

/// Branch evaluations of `steps` of `plan`: a partial compute counts as
/// one (it runs the branch, on its fresh tokens).
fn computed_branches(plan: &Plan, steps: std::ops::RangeInclusive<usize>) -> u64 {
    plan.steps[steps]
        .iter()
        .flat_map(|s| s.actions.iter().flatten())
        .filter(|a| matches!(a, Action::Compute | Action::Partial { .. }))
        .count() as u64
}

fn candle(e: candle_core::Error) -> CalibError {
    CalibError::Numerics(e.to_string())
}

/// A batch's reference and accelerated trajectories, walked in lockstep.
struct Pair<'a, M: BlockModel> {
    reference: Trajectory<'a, M>,
    accelerated: Trajectory<'a, M>,
}

/// One reference and one accelerated trajectory per batch, each on its own
/// (counting) model so that the cost report tells them apart.
fn pairs<'a, M: BlockModel>(
    reference_model: &'a M,
    accelerated_model: &'a M,
    reference_plan: &'a Plan,
    plan: &'a Plan,
    batches: &'a [CalibBatch],
) -> Result<Vec<Pair<'a, M>>, CalibError> {
    batches
        .iter()
        .map(|b| {
            Ok(Pair {
                reference: Trajectory::new(reference_model, reference_plan, &b.batch)?,
                accelerated: Trajectory::new(accelerated_model, plan, &b.batch)?,
            })
        })
        .collect()
}

/// One site's paired outputs at a calibrated step: the reference `A`, the
/// uncorrected reused output `B`, and at a ToCa partial compute the fresh
/// tokens of `B` (computed, not reused: left out of the statistics).
type Paired = (Tensor, Tensor, Fresh);

impl<M: BlockModel> Pair<'_, M> {
    /// Advances both trajectories to calibrated step `k` and returns, per
    /// site, the reference output `A` (the reference trajectory runs step
    /// `k`) and the uncorrected reused output `B` (read from the cache
    /// before step `k` runs: a reuse does not depend on the step's input).
    ///
    /// At a step with partial computes the fresh tokens are chosen while
    /// the step runs: a copy of the accelerated trajectory runs step `k`
    /// without its priors (none is fitted yet) and gives `B` with its
    /// fresh tokens; the trajectory itself runs step `k` later, with them.
    fn outputs_at(
        &mut self,
        k: usize,
        sites: &[Site],
        branches: &[Branch],
        plan: &Plan,
        hooks: &mut PriorHooks,
    ) -> Result<Vec<Paired>, CalibError> {
        while self.accelerated.next_step() < k {
            self.accelerated.step(hooks)?;
        }
        let bi = |site: &Site| {
            branches
                .iter()
                .position(|&b| b == site.branch)
                .unwrap_or(usize::MAX)
        };
        let partial = sites.iter().any(|s| {
            matches!(
                plan.steps[k].actions[s.block][bi(s)],
                Action::Partial { .. }
            )
        });
        let mut bs = Vec::with_capacity(sites.len());
        if partial {
            let mut rec = Recorder {
                step: k,
                sites,
                outputs: HashMap::new(),
            };
            self.accelerated.clone().step(&mut rec)?;
            for site in sites {
                let (b, fresh) = rec.outputs.remove(site).ok_or_else(|| {
                    CalibError::Numerics(format!("{site}: no accelerated output"))
                })?;
                bs.push((b, fresh));
            }
        } else {
            for site in sites {
                let out = self
                    .accelerated
                    .pending_reuse(site.block, bi(site))
                    .ok_or_else(|| {
                        CalibError::Numerics(format!(
                            "step {k}, layer {}: nothing cached to reuse",
                            site.block
                        ))
                    })?;
                bs.push((out.clone(), None));
            }
        }
        while self.reference.next_step() < k {
            self.reference.step(&mut NoHooks)?;
        }
        let mut rec = Recorder {
            step: k,
            sites,
            outputs: HashMap::new(),
        };
        self.reference.step(&mut rec)?;
        sites
            .iter()
            .zip(bs)
            .map(|(site, (b, fresh))| {
                let (a, _) = rec.outputs.remove(site).ok_or_else(|| {
                    CalibError::Unpaired(format!("no reference output for {site}"))
                })?;
                Ok((a, b, fresh))
            })
            .collect()
    }
}

/// A site's paired outputs as its statistics see them: at a partial
/// compute only the stale (reused) tokens of both, the rows a prior
/// corrects; elsewhere every token.
fn stale_pair(
    a: &Tensor,
    b: &Tensor,
    fresh: Option<&[Vec<usize>]>,
) -> Result<(Tensor, Tensor), CalibError> {
    match fresh {
        Some(f) => Ok((
            tcc_exec::toca::stale_rows(a, f)?,
            tcc_exec::toca::stale_rows(b, f)?,
        )),
        None => Ok((a.clone(), b.clone())),
    }
}

/// Per-sample relative L2 between `x` and `reference` (`[n, ...]`):
/// `(Σ_samples ||x - r|| / ||r||, n)`.
fn rel_l2_sum(x: &Tensor, reference: &Tensor) -> Result<(f64, usize), CalibError> {
    let n = x.dim(0).map_err(candle)?;
    let x = x
        .flatten_from(1)
        .map_err(candle)?
        .to_dtype(DType::F64)
        .map_err(candle)?;
    let r = reference
        .flatten_from(1)
        .map_err(candle)?
        .to_dtype(DType::F64)
        .map_err(candle)?;
    let d: Vec<f64> = (&x - &r)
        .and_then(|d| d.sqr())
        .and_then(|d| d.sum(1))
        .and_then(|d| d.to_vec1())
        .map_err(candle)?;
    let nr: Vec<f64> = r
        .sqr()
        .and_then(|d| d.sum(1))
        .and_then(|d| d.to_vec1())
        .map_err(candle)?;
    let sum = d
        .iter()
        .zip(&nr)
        .map(|(d, r)| if *r > 0.0 { (d / r).sqrt() } else { d.sqrt() })
        .sum();
    Ok((sum, n))
}

/// Gathers one calibrated step's statistics on this process: advances
/// every calibration and validation pair to step `k` and sums the paired
/// outputs of `sites`.
#[allow(clippy::too_many_arguments)]
fn gather_step<M: BlockModel>(
    k: usize,
    sites: &[Site],
    branches: &[Branch],
    plan: &Plan,
    calib: &mut [Pair<'_, M>],
    batches: &[CalibBatch],
    val: &mut [Pair<'_, M>],
    validation: &[CalibBatch],
    hooks: &mut PriorHooks,
    progress: &mut dyn FnMut(Progress),
) -> Result<StepStats, CalibError> {
    let pooler = Pooler::new(plan);
    let val_pooler = Pooler::validation(plan);
    let mut part = StepStats::empty(k, sites.to_vec());
    for (i, (p, b)) in calib.iter_mut().zip(batches).enumerate() {
        let outs = p.outputs_at(k, sites, branches, plan, hooks)?;
        for ((a, bo, fresh), st) in outs.iter().zip(part.calib.iter_mut()) {
            if fresh.is_some() && pooler.pooling() == Pooling::Conditions {
                return Err(CalibError::Input(format!(
                    "step {k}: `conditions` pooling keeps a row per token position, and ToCa's stale tokens differ per sample: use `tokens`, `samples` or `none` pooling"
                )));
            }
            let (a, bo) = stale_pair(a, bo, fresh.as_deref())?;
            let (a, bo) = (&a, &bo);
            let st = st.get_or_insert_with(|| pooler.stats(a.dim(2).unwrap_or(0)));
            pooler.add_pair(a, bo, &b.conditions, st)?;
            let (t, c) = pooler.common_error(a, bo, b.conditions.len())?;
            part.err[0] += t;
            part.err[1] += c;
        }
        progress(Progress::Calibration {
            step: k,
            batch: i,
            batches: batches.len(),
        });
    }
    // The validation statistics of step k: every token of both halves (the
    // stale ones at a partial compute).
    for (i, (p, b)) in val.iter_mut().zip(validation).enumerate() {
        let outs = p.outputs_at(k, sites, branches, plan, hooks)?;
        for ((a, bo, fresh), m) in outs.iter().zip(part.validation.iter_mut()) {
            let (a, bo) = stale_pair(a, bo, fresh.as_deref())?;
            let (a, bo) = (&a, &bo);
            let m = m.get_or_insert_with(|| Moments::new(a.dim(2).unwrap_or(0)));
            for ((ha, _), (hb, _)) in val_pooler
                .halves(a, b.conditions.len())?
                .into_iter()
                .zip(val_pooler.halves(bo, b.conditions.len())?)
            {
                m.add_tokens(&ha, &hb)?;
            }
        }
        progress(Progress::Validation {
            step: k,
            batch: i,
            batches: validation.len(),
        });
    }
    Ok(part)
}

/// The candidates fitted at one step's sites and the choice made at each,
/// with the distances on the fitted rows.
struct StepFit {
    choices: Vec<(Site, Choice, Option<Prior>)>,
    after: f64,
    before: f64,
    norm: f64,
    rows: usize,
    dim: usize,
}

/// Fits and chooses the priors of one step on its (complete) statistics.
fn fit_step(total: &StepStats, cal: &CalibrationSpec) -> Result<StepFit, CalibError> {
    let mut fit = StepFit {
        choices: Vec::with_capacity(total.sites.len()),
        after: 0.0,
        before: 0.0,
        norm: 0.0,
        rows: 0,
        dim: 0,
    };
    for (j, site) in total.sites.iter().enumerate() {
        let st = total.calib[j]
            .as_ref()
            .ok_or_else(|| CalibError::Empty(format!("{site}: no calibration statistics")))?;
        let centered = st.centered(cal.pooling)?;
        fit.rows = st.rows();
        fit.dim = st.dim();
        let candidates = fit_candidates(&centered, cal).map_err(|e| e.at(*site))?;
        let choice = choose(&candidates, cal, total.validation[j].as_ref())?;
        let prior = choice.candidate.map(|c| candidates[c].prior.clone());
        let (a, b, n) = st.residual(prior.as_ref(), cal.pooling, choice.alpha)?;
        fit.after += a;
        fit.before += b;
        fit.norm += n;
        fit.choices.push((*site, choice, prior));
    }
    Ok(fit)
}

fn step_report(total: &StepStats, fit: &StepFit, validation: Option<StepValidation>) -> StepReport {
    let rel = |x: f64| {
        if fit.norm > 0.0 {
            (x / fit.norm).sqrt()
        } else {
            0.0
        }
    };
    let [err_total, err_common] = total.err;
    StepReport {
        step: total.step,
        sites: total.sites.len(),
        rows: fit.rows,
        dim: fit.dim,
        rel_before: rel(fit.before),
        rel_after: rel(fit.after),
        common_share: if err_total > 0.0 {
            err_common / err_total
        } else {
            0.0
        },
        validation,
    }
}

fn plan_sites(plan: &Plan) -> Result<Vec<(usize, Vec<Site>)>, CalibError> {
    let sites = calibrated_sites(plan);
    if sites.is_empty() {
        return Err(CalibError::Empty(
            "the schedule has no calibrated steps: set `[calibration] method = \"tcc\"` and `steps`".into(),
        ));
    }
    let branches = plan.branches();
    Ok(sites
        .into_iter()
        .map(|(k, list)| {
            let s = list
                .iter()
                .map(|&(block, bi)| Site::new(k, branches[bi], block))
                .collect();
            (k, s)
        })
        .collect())
}

/// The cost report of `batches` calibration batches, given the measured
/// evaluations.
fn cost_report(
    plan: &Plan,
    last_step: usize,
    batches: u64,
    samples: usize,
    measured: [u64; 3],
) -> CostReport {
    let reference_plan = plan.all_compute();
    let last = plan.steps.len() - 1;
    let full = computed_branches(&reference_plan, 0..=last);
    let refresh_before = |k: usize| {
        (0..=k)
            .rev()
            .find(|&s| plan.steps[s].is_full())
            .unwrap_or(0)
    };
    let sites = calibrated_sites(plan);
    let rerun_from_start: u64 = sites.keys().map(|&k| computed_branches(plan, 0..=k)).sum();
    let rerun_from_refresh: u64 = computed_branches(plan, 0..=last_step)
        + sites
            .keys()
            .map(|&k| computed_branches(plan, refresh_before(k)..=k))
            .sum::<u64>();
    CostReport {
        samples,
        reference: measured[0],
        accelerated: measured[1],
        validation: measured[2],
        one_pass_bound: batches * (full + computed_branches(plan, 0..=last)),
        rerun_from_start: batches * (full + rerun_from_start),
        rerun_from_refresh: batches * (full + rerun_from_refresh),
    }
}

/// Walk the plan once and fit every calibrated step's priors.
///
/// For every calibration batch a reference trajectory (full computation)
/// and an accelerated one advance side by side. Before calibrated step `k`
/// runs on the accelerated trajectory its reused outputs `B_k` are already
/// in the cache; the reference trajectory runs step `k` and gives `A_k`.
/// The pairs of all batches make the step's statistics, the candidates are
/// fitted, chosen (see [`choose`]) with the validation samples, which walk
/// the same way, and, in `consistent` mode, applied from step `k` on. In
/// `one-shot` mode no trajectory applies a prior during the walk.
///
/// With validation samples, each step's priors are also tried on the
/// validation latents (with and without them), and at the end the
/// validation samples run to the last step with all priors and without any;
/// [`Selection::Validated`] drops what does not bring them closer to full
/// computation, so its priors are never worse than the plain cache on the
/// validation samples.
pub fn calibrate<M: BlockModel>(
    model: &M,
    plan: &Plan,
    batches: &[CalibBatch],
    validation: &[CalibBatch],
    mode: CalibMode,
    dtype: DType,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibration, CalibError> {
    let validating = !validation.is_empty();
    calibrate_across(
        model, plan, batches, validation, validating, mode, dtype, &mut Local, progress,
    )
}

/// [`calibrate`] as one of several processes that each walk their share
/// of the calibration and validation batches: at every calibrated step,
/// once this process's statistics are complete, `reduce` adds up every
/// process's, and every process fits the same priors on the sums and
/// applies them before it walks on (the distances the validation measures
/// are added up the same way). `validating` says whether any process has
/// validation samples (every process must take part in every reduction,
/// those without validation batches included). With [`Local`] this is
/// [`calibrate`].
#[allow(clippy::too_many_arguments)]
pub fn calibrate_across<M: BlockModel>(
    model: &M,
    plan: &Plan,
    batches: &[CalibBatch],
    validation: &[CalibBatch],
    validating: bool,
    mode: CalibMode,
    dtype: DType,
    reduce: &mut dyn Reduce,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibration, CalibError> {
    let sites = plan_sites(plan)?;
    if batches.is_empty() {
        return Err(CalibError::Empty("no calibration samples".into()));
    }
    let cal = &plan.calibration;
    if cal.validation_chooses() && !validating {
        return Err(CalibError::Empty(
            "these calibration settings choose priors on validation samples, and none were given"
                .into(),
        ));
    }
    let branches = plan.branches();
    let reference_plan = plan.all_compute();
    let last_step = sites.last().expect("sites is not empty").0;

    let count = |m| Counting {
        inner: m,
        evals: Cell::new(0),
    };
    let (ref_model, acc_model, val_model) = (count(model), count(model), count(model));
    // The reference trajectories run on `ref_model`, the accelerated ones on
    // `acc_model`, so that the cost report tells them apart.
    let mut calib = pairs(&ref_model, &acc_model, &reference_plan, plan, batches)?;
    let mut val = pairs(&val_model, &val_model, &reference_plan, plan, validation)?;
    let device = calib[0].accelerated.latents().device().clone();

    let mut hooks = PriorHooks::lenient();
    let mut priors = BTreeMap::new();
    let mut alphas = BTreeMap::new();
    let mut choices = Vec::new();
    let mut reports = Vec::new();
    for (k, step_sites) in &sites {
        let k = *k;
        let local = gather_step(
            k, step_sites, branches, plan, &mut calib, batches, &mut val, validation, &mut hooks,
            progress,
        )?;
        // The barrier: every process's statistics of step k, summed.
        let total = reduce.step(local)?;
        let mut fit = fit_step(&total, cal)?;

        // Try the step's priors on the validation latents.
        let mut step_hooks = hooks.clone();
        for (site, choice, prior) in &fit.choices {
            if let Some(p) = prior {
                step_hooks
                    .insert(*site, p, choice.alpha, dtype, &device)
                    .map_err(candle)?;
            }
        }
        let with_prior = fit
            .choices
            .iter()
            .filter(|(_, c, p)| p.is_some() && c.alpha != 0.0)
            .count();
        let mut step_validation = None;
        let mut keep = true;
        if validating {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            let (mut after, mut before) = (Vec::new(), Vec::new());
            for p in &val {
                let mut a = p.accelerated.clone();
                a.step(&mut step_hooks)?;
                after.push(rel_l2_sum(a.latents(), p.reference.latents())?);
                with.push(a);
                let mut b = p.accelerated.clone();
                b.step(&mut hooks)?;
                before.push(rel_l2_sum(b.latents(), p.reference.latents())?);
                without.push(b);
            }
            let v = reduce.values(sums(&[after, before]))?;
            let (latent_after, latent_before) = (mean_of(v[0], v[1]), mean_of(v[2], v[3]));
            if cal.select == Selection::Validated && with_prior > 0 && latent_after > latent_before
            {
                keep = false;
            }
            // The validation trajectories go on as the calibration ones do:
            // with the step's priors in consistent mode, without in one-shot.
            let next = if keep && mode == CalibMode::Consistent {
                with
            } else {
                without
            };
            for (p, t) in val.iter_mut().zip(next) {
                p.accelerated = t;
            }
            let sum = |f: &dyn Fn(&Choice) -> Option<f64>| -> f64 {
                fit.choices.iter().filter_map(|(_, c, _)| f(c)).sum()
            };
            let norm = sum(&|c| c.val_norm);
            let rel = |x: f64| if norm > 0.0 { (x / norm).sqrt() } else { 0.0 };
            step_validation = Some(StepValidation {
                branch_before: rel(sum(&|c| c.val_before)),
                branch_after: rel(if keep {
                    sum(&|c| c.val_after)
                } else {
                    sum(&|c| c.val_before)
                }),
                latent_before,
                latent_after,
                kept: keep,
                with_prior: if keep { with_prior } else { 0 },
            });
        }
        if !keep {
            for (_, choice, prior) in fit.choices.iter_mut() {
                *prior = None;
                *choice = Choice {
                    kind: None,
                    ridge: None,
                    alpha: 0.0,
                    candidate: None,
                    val_after: choice.val_before,
                    ..choice.clone()
                };
            }
            let (mut a, mut b) = (0.0, 0.0);
            for st in total.calib.iter().flatten() {
                let (x, y, _) = st.residual(None, cal.pooling, 0.0)?;
                a += x;
                b += y;
            }
            fit.after = a;
            fit.before = b;
        }
        if mode == CalibMode::Consistent && keep {
            hooks = step_hooks;
        }
        reports.push(step_report(&total, &fit, step_validation));
        for (site, choice, prior) in fit.choices {
            alphas.insert(site, if prior.is_some() { choice.alpha } else { 0.0 });
            if let Some(p) = prior {
                priors.insert(site, p);
            }
            choices.push(SiteChoice { site, choice });
        }
        progress(Progress::Fitted { step: k });
    }

    // End to end on the validation samples: with all priors, and without.
    let mut final_check = None;
    if validating {
        let mut all = PriorHooks::lenient();
        for (site, p) in &priors {
            all.insert(*site, p, alphas[site], dtype, &device)
                .map_err(candle)?;
        }
        let (mut cache, mut calibrated) = (Vec::new(), Vec::new());
        for (p, b) in val.iter_mut().zip(validation) {
            while !p.reference.is_done() {
                p.reference.step(&mut NoHooks)?;
            }
            let x_ref = p.reference.latents();
            let plain =
                Trajectory::new(&val_model, plan, &b.batch).and_then(|t| t.run(&mut NoHooks))?;
            cache.push(rel_l2_sum(&plain, x_ref)?);
            let corrected =
                Trajectory::new(&val_model, plan, &b.batch).and_then(|t| t.run(&mut all))?;
            calibrated.push(rel_l2_sum(&corrected, x_ref)?);
        }
        let local_samples = validation.iter().map(|b| b.conditions.len()).sum::<usize>();
        let mut local = sums(&[cache, calibrated]);
        local.push(local_samples as f64);
        let v = reduce.values(local)?;
        let (cache, calibrated) = (mean_of(v[0], v[1]), mean_of(v[2], v[3]));
        let kept = !(cal.select == Selection::Validated && calibrated > cache);
        if !kept {
            priors.clear();
            alphas.values_mut().for_each(|a| *a = 0.0);
        }
        final_check = Some(FinalCheck {
            samples: v[4] as usize,
            cache,
            calibrated,
            kept,
        });
        progress(Progress::Final);
    }

    let local_cost = cost_report(
        plan,
        last_step,
        batches.len() as u64,
        batches.iter().map(|b| b.conditions.len()).sum(),
        [
            ref_model.evals.get(),
            acc_model.evals.get(),
            val_model.evals.get(),
        ],
    );
    let cost = CostReport::from_values(&reduce.values(local_cost.to_values())?);
    Ok(Calibration {
        priors,
        alphas,
        choices,
        steps: reports,
        final_check,
        cost,
    })
}

/// `[Σ sum, Σ n]` of each list of `(sum, n)` parts, concatenated.
fn sums(lists: &[Vec<(f64, usize)>]) -> Vec<f64> {
    lists
        .iter()
        .flat_map(|parts| {
            let (s, n) = parts
                .iter()
                .fold((0.0, 0), |(s, n), &(x, m)| (s + x, n + m));
            [s, n as f64]
        })
        .collect()
}

fn mean_of(sum: f64, n: f64) -> f64 {
    if n > 0.0 {
        sum / n
    } else {
        0.0
    }
}

/// The statistics of every calibrated step of a `one-shot` calibration on
/// this process's batches, without fitting: what a calibration shard
/// writes (see [`StatsFile`]). In one-shot mode no trajectory applies a
/// prior during the walk, so the statistics do not depend on any fit and
/// the shards' files add up to the single run's statistics
/// ([`StatsFile::merge`]); [`fit_merged`] then fits them.
pub fn gather_one_shot<M: BlockModel>(
    model: &M,
    plan: &Plan,
    batches: &[CalibBatch],
    validation: &[CalibBatch],
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<StepStats>, CostReport), CalibError> {
    let sites = plan_sites(plan)?;
    let branches = plan.branches();
    let reference_plan = plan.all_compute();
    let last_step = sites.last().expect("sites is not empty").0;
    let count = |m| Counting {
        inner: m,
        evals: Cell::new(0),
    };
    let (ref_model, acc_model, val_model) = (count(model), count(model), count(model));
    let mut calib = pairs(&ref_model, &acc_model, &reference_plan, plan, batches)?;
    let mut val = pairs(&val_model, &val_model, &reference_plan, plan, validation)?;
    let mut hooks = PriorHooks::lenient();
    let mut steps = Vec::with_capacity(sites.len());
    for (k, step_sites) in &sites {
        steps.push(gather_step(
            *k, step_sites, branches, plan, &mut calib, batches, &mut val, validation, &mut hooks,
            progress,
        )?);
    }
    let cost = cost_report(
        plan,
        last_step,
        batches.len() as u64,
        batches.iter().map(|b| b.conditions.len()).sum(),
        [
            ref_model.evals.get(),
            acc_model.evals.get(),
            val_model.evals.get(),
        ],
    );
    Ok((steps, cost))
}

/// Fits the priors of merged one-shot statistics: per step what
/// [`calibrate`] fits and chooses on the same sums. The validation
/// samples' statistics take part in the choice; the checks that run the
/// model on the validation latents (per step and end to end) do not, so
/// the steps' `validation` and the `final_check` are absent. Refuses
/// `validated` selection, whose choice depends on those checks.
pub fn fit_merged(stats: &StatsFile) -> Result<Calibration, CalibError> {
    let cal = &stats.meta.calibration;
    if stats.meta.mode != CalibMode::OneShot {
        return Err(CalibError::Binding(
            "only one-shot statistics can be fitted apart from the walk: consistent mode fits each step on the trajectory the earlier priors shifted".into(),
        ));
    }
    if cal.select == Selection::Validated {
        return Err(CalibError::Binding(
            "validated selection checks every step's priors on the validation latents: it cannot be fitted from statistics files (calibrate in one process, or across processes with MPI)".into(),
        ));
    }
    let (mut priors, mut alphas, mut choices, mut reports) =
        (BTreeMap::new(), BTreeMap::new(), Vec::new(), Vec::new());
    for total in &stats.steps {
        let fit = fit_step(total, cal)?;
        reports.push(step_report(total, &fit, None));
        for (site, choice, prior) in fit.choices {
            alphas.insert(site, if prior.is_some() { choice.alpha } else { 0.0 });
            if let Some(p) = prior {
                priors.insert(site, p);
            }
            choices.push(SiteChoice { site, choice });
        }
    }
    Ok(Calibration {
        priors,
        alphas,
        choices,
        steps: reports,
        final_check: None,
        cost: stats.meta.cost.clone(),
    })
}
