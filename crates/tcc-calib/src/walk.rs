//! The calibration walk: fit every calibrated step's priors in sampling
//! order, each on the accelerated trajectory that the earlier priors already
//! shifted.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use tcc_core::{Branch, CalibMode, CfgHalf, CfgOrder, Pooling};
use tcc_exec::{BranchSite, Hooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Conditioning, Modulation};
use tcc_plan::{Action, Plan};

use crate::{fit, residual, CalibError, PairStats, Prior, PriorHooks, Side, Site};

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
    /// Reference trajectory of `batch` (of `batches`) finished.
    Reference { batch: usize, batches: usize },
    /// Accelerated trajectory of `batch` reached calibrated `step`.
    Accelerated {
        step: usize,
        batch: usize,
        batches: usize,
    },
    /// The priors of `step` were fitted.
    Fitted { step: usize },
}

/// Distances to the reference on the pooled rows of one calibrated step,
/// summed over its sites: before the prior and after it (at the plan's
/// alpha), relative to the reference's norm.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub step: usize,
    pub sites: usize,
    pub rows: usize,
    pub rel_before: f64,
    pub rel_after: f64,
}

/// Model evaluations, counted in branch evaluations (one branch of one
/// block for one model batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostReport {
    pub samples: usize,
    /// Measured on the reference trajectories.
    pub reference: u64,
    /// Measured on the accelerated trajectories.
    pub accelerated: u64,
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

/// The result of a calibration walk.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub priors: BTreeMap<Site, Prior>,
    pub steps: Vec<StepReport>,
    pub cost: CostReport,
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

/// How to turn one branch output into statistics rows: the plan's pooling
/// mode and pooled CFG half. `tcc eval` uses it to measure online the same
/// pooled-row distances that calibration reports offline.
#[derive(Clone, Copy, Debug)]
pub struct Pooler {
    pooling: Pooling,
    half: CfgHalf,
    cfg: Option<CfgOrder>,
}

impl Pooler {
    pub fn new(plan: &Plan) -> Pooler {
        Pooler {
            pooling: plan.calibration.pooling,
            half: plan.calibration.pooled_half,
            cfg: plan.sampler.uses_cfg().then_some(plan.sampler.cfg_order),
        }
    }

    /// Add the pooled rows of `out` (`[B or 2B, T, D]`, on any device) to
    /// `stats`: summed per batch on the device, merged in f64.
    pub fn add(
        &self,
        out: &Tensor,
        conditions: &[u64],
        side: Side,
        stats: &mut PairStats,
    ) -> Result<(), CalibError> {
        let b = conditions.len();
        let offset = match (self.cfg, self.half) {
            (None, _) => 0,
            (Some(CfgOrder::CondFirst), CfgHalf::Cond)
            | (Some(CfgOrder::UncondFirst), CfgHalf::Uncond) => 0,
            _ => b,
        };
        let candle = |e: candle_core::Error| CalibError::Numerics(e.to_string());
        let half = out
            .narrow(0, offset, b)
            .map_err(candle)?
            .to_dtype(DType::F32)
            .map_err(candle)?;
        match self.pooling {
            Pooling::Tokens => stats.add_rows(side, &half.mean(1).map_err(candle)?, conditions)?,
            Pooling::Conditions => stats.add_positions(side, &half)?,
        }
        Ok(())
    }
}

/// Records the reference (computed) outputs at the calibrated sites.
struct ReferenceHooks<'a> {
    sites: &'a BTreeMap<usize, Vec<(usize, usize)>>,
    branches: &'static [Branch],
    pooler: Pooler,
    conditions: &'a [u64],
    stats: &'a mut HashMap<Site, PairStats>,
    error: Option<CalibError>,
}

impl Hooks for ReferenceHooks<'_> {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        let Some(list) = self.sites.get(&site.step) else {
            return Ok(None);
        };
        let bi = self
            .branches
            .iter()
            .position(|&b| b == site.branch)
            .unwrap_or(usize::MAX);
        if list.contains(&(site.block, bi)) {
            let stats = self
                .stats
                .entry((site.step, site.branch, site.block))
                .or_insert_with(|| PairStats::new(out.dim(2).unwrap_or(0)));
            if let Err(e) = self
                .pooler
                .add(out, self.conditions, Side::Reference, stats)
            {
                self.error.get_or_insert(e);
            }
        }
        Ok(None)
    }
}

/// The calibrated sites of a plan: step -> (block, branch index) of every
/// reuse that carries a prior.
pub fn calibrated_sites(plan: &Plan) -> BTreeMap<usize, Vec<(usize, usize)>> {
    let mut sites: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for step in &plan.steps {
        for (block, row) in step.actions.iter().enumerate() {
            for (bi, a) in row.iter().enumerate() {
                if matches!(a, Action::Reuse { prior: true, .. }) {
                    sites.entry(step.step).or_default().push((block, bi));
                }
            }
        }
    }
    sites
}

fn computed_branches(plan: &Plan, steps: std::ops::RangeInclusive<usize>) -> u64 {
    plan.steps[steps]
        .iter()
        .flat_map(|s| s.actions.iter().flatten())
        .filter(|a| a.is_compute())
        .count() as u64
}

/// Walk the plan once and fit every calibrated step's priors.
///
/// The reference trajectories do not depend on the priors, so they run
/// first and record `A` at every calibrated site. Then the accelerated
/// trajectories of all batches advance side by side: before calibrated step
/// `k` runs, its reused outputs are already in the cache (a reuse does not
/// depend on the step's own input), so `B_k` is read there, the priors of
/// step `k` are fitted on all batches' statistics, and, in `consistent`
/// mode, applied from step `k` on. In `one-shot` mode the accelerated
/// trajectories never apply a prior. Every batch's trajectory stays in
/// memory for the whole walk (fine for the embedded model; large models
/// would instead recompute the segment's refresh step).
pub fn calibrate<M: BlockModel>(
    model: &M,
    plan: &Plan,
    batches: &[CalibBatch],
    mode: CalibMode,
    dtype: DType,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibration, CalibError> {
    let sites = calibrated_sites(plan);
    if sites.is_empty() {
        return Err(CalibError::Empty(
            "the schedule has no calibrated steps: set `[calibration] method = \"tcc\"` and `steps`".into(),
        ));
    }
    if batches.is_empty() {
        return Err(CalibError::Empty("no calibration samples".into()));
    }
    let exec = |e: tcc_exec::ExecError| CalibError::Numerics(e.to_string());
    let branches = plan.branches();
    let pooler = Pooler::new(plan);
    let cal = &plan.calibration;
    let reference_plan = plan.all_compute();
    let last_step = *sites.keys().last().expect("sites is not empty");
    let mut stats: HashMap<Site, PairStats> = HashMap::new();

    // Reference trajectories: only up to the last calibrated step.
    let counting = Counting {
        inner: model,
        evals: Cell::new(0),
    };
    for (i, b) in batches.iter().enumerate() {
        let mut traj = Trajectory::new(&counting, &reference_plan, &b.batch).map_err(exec)?;
        let mut hooks = ReferenceHooks {
            sites: &sites,
            branches,
            pooler,
            conditions: &b.conditions,
            stats: &mut stats,
            error: None,
        };
        while traj.next_step() <= last_step {
            traj.step(&mut hooks).map_err(exec)?;
        }
        if let Some(e) = hooks.error {
            return Err(e);
        }
        progress(Progress::Reference {
            batch: i,
            batches: batches.len(),
        });
    }
    let reference_evals = counting.evals.replace(0);

    // Accelerated trajectories, side by side.
    let mut trajectories = batches
        .iter()
        .map(|b| Trajectory::new(&counting, plan, &b.batch))
        .collect::<Result<Vec<_>, _>>()
        .map_err(exec)?;
    let mut hooks = PriorHooks::lenient();
    let mut priors = BTreeMap::new();
    let mut reports = Vec::new();
    for (&k, list) in &sites {
        for (i, (traj, b)) in trajectories.iter_mut().zip(batches).enumerate() {
            while traj.next_step() < k {
                traj.step(&mut hooks).map_err(exec)?;
            }
            for &(block, bi) in list {
                let out = traj.pending_reuse(block, bi).ok_or_else(|| {
                    CalibError::Numerics(format!(
                        "step {k}, block {block}: nothing cached to reuse"
                    ))
                })?;
                let site = (k, branches[bi], block);
                let st = stats.get_mut(&site).ok_or_else(|| {
                    CalibError::Unpaired(format!("no reference statistics for {site:?}"))
                })?;
                pooler.add(out, &b.conditions, Side::Accelerated, st)?;
            }
            progress(Progress::Accelerated {
                step: k,
                batch: i,
                batches: batches.len(),
            });
        }
        let (mut after, mut before, mut norm, mut rows) = (0.0, 0.0, 0.0, 0);
        for &(block, bi) in list {
            let site = (k, branches[bi], block);
            let st = &stats[&site];
            let fitted = fit(st, cal.prior, cal.pooling)?;
            let (a, b, n) = residual(st, &fitted.prior, cal.pooling, cal.alpha)?;
            after += a;
            before += b;
            norm += n;
            rows = fitted.rows;
            if mode == CalibMode::Consistent {
                let device = trajectories[0].latents().device().clone();
                hooks
                    .insert(site, &fitted.prior, cal.alpha, dtype, &device)
                    .map_err(|e| CalibError::Numerics(e.to_string()))?;
            }
            priors.insert(site, fitted.prior);
        }
        let rel = |x: f64| if norm > 0.0 { (x / norm).sqrt() } else { 0.0 };
        reports.push(StepReport {
            step: k,
            sites: list.len(),
            rows,
            rel_before: rel(before),
            rel_after: rel(after),
        });
        progress(Progress::Fitted { step: k });
    }
    let accelerated_evals = counting.evals.get();

    let n = batches.len() as u64;
    let last = plan.steps.len() - 1;
    let full = computed_branches(&reference_plan, 0..=last);
    let refresh_before = |k: usize| {
        (0..=k)
            .rev()
            .find(|&s| plan.steps[s].is_full())
            .unwrap_or(0)
    };
    let rerun_from_start: u64 = sites.keys().map(|&k| computed_branches(plan, 0..=k)).sum();
    let rerun_from_refresh: u64 = computed_branches(plan, 0..=last_step)
        + sites
            .keys()
            .map(|&k| computed_branches(plan, refresh_before(k)..=k))
            .sum::<u64>();
    Ok(Calibration {
        priors,
        steps: reports,
        cost: CostReport {
            samples: batches.iter().map(|b| b.conditions.len()).sum(),
            reference: reference_evals,
            accelerated: accelerated_evals,
            one_pass_bound: n * (full + computed_branches(plan, 0..=last)),
            rerun_from_start: n * (full + rerun_from_start),
            rerun_from_refresh: n * (full + rerun_from_refresh),
        },
    })
}
