//! The calibration walk: fit every calibrated step's priors in sampling
//! order, each on the accelerated trajectory that the earlier priors already
//! shifted, and measure (or choose) them on held-out validation samples.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use serde::Serialize;
use tcc_core::{Branch, CalibMode, Selection};
use tcc_exec::{BranchSite, Hooks, NoHooks, SampleBatch, Trajectory};
use tcc_model::{BlockModel, Conditioning, Modulation};
use tcc_plan::{Action, Plan};

use crate::select::{choose, fit_candidates, Choice};
use crate::{CalibError, Moments, Pooler, Prior, PriorHooks, Site, SiteStats};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// Keeps the reference outputs of the calibrated sites of one step.
struct Recorder<'a> {
    step: usize,
    sites: &'a [Site],
    outputs: HashMap<Site, Tensor>,
}

impl Hooks for Recorder<'_> {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        let key = Site::new(site.step, site.branch, site.block);
        if site.step == self.step && self.sites.contains(&key) {
            self.outputs.insert(key, out.clone());
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

fn exec(e: tcc_exec::ExecError) -> CalibError {
    CalibError::Numerics(e.to_string())
}

fn candle(e: candle_core::Error) -> CalibError {
    CalibError::Numerics(e.to_string())
}

/// A batch's reference and accelerated trajectories, walked in lockstep.
struct Pair<'a, M: BlockModel> {
    reference: Trajectory<'a, M>,
    accelerated: Trajectory<'a, M>,
}

impl<M: BlockModel> Pair<'_, M> {
    /// Advances both trajectories to calibrated step `k` and returns, per
    /// site, the reference output `A` (the reference trajectory runs step
    /// `k`) and the uncorrected reused output `B` (read from the cache
    /// before step `k` runs: a reuse does not depend on the step's input).
    fn outputs_at(
        &mut self,
        k: usize,
        sites: &[Site],
        branches: &[Branch],
        hooks: &mut PriorHooks,
    ) -> Result<Vec<(Tensor, Tensor)>, CalibError> {
        while self.accelerated.next_step() < k {
            self.accelerated.step(hooks).map_err(exec)?;
        }
        let mut bs = Vec::with_capacity(sites.len());
        for site in sites {
            let bi = branches
                .iter()
                .position(|&b| b == site.branch)
                .unwrap_or(usize::MAX);
            let out = self
                .accelerated
                .pending_reuse(site.block, bi)
                .ok_or_else(|| {
                    CalibError::Numerics(format!(
                        "step {k}, layer {}: nothing cached to reuse",
                        site.block
                    ))
                })?;
            bs.push(out.clone());
        }
        while self.reference.next_step() < k {
            self.reference.step(&mut NoHooks).map_err(exec)?;
        }
        let mut rec = Recorder {
            step: k,
            sites,
            outputs: HashMap::new(),
        };
        self.reference.step(&mut rec).map_err(exec)?;
        sites
            .iter()
            .zip(bs)
            .map(|(site, b)| {
                let a = rec.outputs.remove(site).ok_or_else(|| {
                    CalibError::Unpaired(format!("no reference output for {site}"))
                })?;
                Ok((a, b))
            })
            .collect()
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

fn mean_rel(parts: impl IntoIterator<Item = (f64, usize)>) -> f64 {
    let (s, n) = parts
        .into_iter()
        .fold((0.0, 0), |(s, n), (x, m)| (s + x, n + m));
    if n > 0 {
        s / n as f64
    } else {
        0.0
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
    let sites = calibrated_sites(plan);
    if sites.is_empty() {
        return Err(CalibError::Empty(
            "the schedule has no calibrated steps: set `[calibration] method = \"tcc\"` and `steps`".into(),
        ));
    }
    if batches.is_empty() {
        return Err(CalibError::Empty("no calibration samples".into()));
    }
    let cal = &plan.calibration;
    if cal.validation_chooses() && validation.is_empty() {
        return Err(CalibError::Empty(
            "these calibration settings choose priors on validation samples, and none were given"
                .into(),
        ));
    }
    let branches = plan.branches();
    let pooler = Pooler::new(plan);
    let val_pooler = Pooler::validation(plan);
    let reference_plan = plan.all_compute();
    let last_step = *sites.keys().last().expect("sites is not empty");

    let count = |m| Counting {
        inner: m,
        evals: Cell::new(0),
    };
    let (ref_model, acc_model, val_model) = (count(model), count(model), count(model));
    // The reference trajectories run on `ref_model`, the accelerated ones on
    // `acc_model`, so that the cost report tells them apart.
    let mut calib = Vec::with_capacity(batches.len());
    for b in batches {
        calib.push(Pair {
            reference: Trajectory::new(&ref_model, &reference_plan, &b.batch).map_err(exec)?,
            accelerated: Trajectory::new(&acc_model, plan, &b.batch).map_err(exec)?,
        });
    }
    let mut val = Vec::with_capacity(validation.len());
    for b in validation {
        val.push(Pair {
            reference: Trajectory::new(&val_model, &reference_plan, &b.batch).map_err(exec)?,
            accelerated: Trajectory::new(&val_model, plan, &b.batch).map_err(exec)?,
        });
    }

    let mut hooks = PriorHooks::lenient();
    let mut priors = BTreeMap::new();
    let mut alphas = BTreeMap::new();
    let mut choices = Vec::new();
    let mut reports = Vec::new();
    for (&k, list) in &sites {
        let step_sites: Vec<Site> = list
            .iter()
            .map(|&(block, bi)| Site::new(k, branches[bi], block))
            .collect();

        // The calibration statistics of step k.
        let mut stats: Vec<Option<SiteStats>> = vec![None; step_sites.len()];
        let (mut err_total, mut err_common) = (0.0, 0.0);
        for (i, (p, b)) in calib.iter_mut().zip(batches).enumerate() {
            let outs = p.outputs_at(k, &step_sites, branches, &mut hooks)?;
            for ((a, bo), st) in outs.iter().zip(stats.iter_mut()) {
                let st = st.get_or_insert_with(|| pooler.stats(a.dim(2).unwrap_or(0)));
                pooler.add_pair(a, bo, &b.conditions, st)?;
                let (t, c) = pooler.common_error(a, bo, b.conditions.len())?;
                err_total += t;
                err_common += c;
            }
            progress(Progress::Calibration {
                step: k,
                batch: i,
                batches: batches.len(),
            });
        }
        let stats: Vec<SiteStats> = stats.into_iter().flatten().collect();

        // The validation statistics of step k: every token of both halves.
        let mut vstats: Vec<Moments> = Vec::new();
        for (i, (p, b)) in val.iter_mut().zip(validation).enumerate() {
            let outs = p.outputs_at(k, &step_sites, branches, &mut hooks)?;
            if vstats.is_empty() {
                vstats = outs
                    .iter()
                    .map(|(a, _)| Moments::new(a.dim(2).unwrap_or(0)))
                    .collect();
            }
            for ((a, bo), m) in outs.iter().zip(vstats.iter_mut()) {
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

        // Fit the candidates and choose, site by site.
        let mut step_choices = Vec::with_capacity(step_sites.len());
        let (mut fit_after, mut fit_before, mut fit_norm) = (0.0, 0.0, 0.0);
        let (mut rows, mut dim) = (0, 0);
        for (j, (site, st)) in step_sites.iter().zip(&stats).enumerate() {
            let centered = st.centered(cal.pooling)?;
            rows = st.rows();
            dim = st.dim();
            let candidates = fit_candidates(&centered, cal).map_err(|e| e.at(*site))?;
            let choice = choose(&candidates, cal, vstats.get(j))?;
            let prior = choice.candidate.map(|c| candidates[c].prior.clone());
            let (a, b, n) = st.residual(prior.as_ref(), cal.pooling, choice.alpha)?;
            fit_after += a;
            fit_before += b;
            fit_norm += n;
            step_choices.push((*site, choice, prior));
        }

        // Try the step's priors on the validation latents.
        let mut step_hooks = hooks.clone();
        for (site, choice, prior) in &step_choices {
            if let Some(p) = prior {
                let device = calib[0].accelerated.latents().device().clone();
                step_hooks
                    .insert(*site, p, choice.alpha, dtype, &device)
                    .map_err(candle)?;
            }
        }
        let with_prior = step_choices
            .iter()
            .filter(|(_, c, p)| p.is_some() && c.alpha != 0.0)
            .count();
        let mut step_validation = None;
        let mut keep = true;
        if !val.is_empty() {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            let (mut after, mut before) = (Vec::new(), Vec::new());
            for p in &val {
                let mut a = p.accelerated.clone();
                a.step(&mut step_hooks).map_err(exec)?;
                after.push(rel_l2_sum(a.latents(), p.reference.latents())?);
                with.push(a);
                let mut b = p.accelerated.clone();
                b.step(&mut hooks).map_err(exec)?;
                before.push(rel_l2_sum(b.latents(), p.reference.latents())?);
                without.push(b);
            }
            let (latent_after, latent_before) = (mean_rel(after), mean_rel(before));
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
                step_choices.iter().filter_map(|(_, c, _)| f(c)).sum()
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
            for (_, choice, prior) in step_choices.iter_mut() {
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
            for ((_, _, _), st) in step_choices.iter().zip(&stats) {
                let (x, y, _) = st.residual(None, cal.pooling, 0.0)?;
                a += x;
                b += y;
            }
            fit_after = a;
            fit_before = b;
        }
        if mode == CalibMode::Consistent && keep {
            hooks = step_hooks;
        }
        for (site, choice, prior) in step_choices {
            alphas.insert(site, if prior.is_some() { choice.alpha } else { 0.0 });
            if let Some(p) = prior {
                priors.insert(site, p);
            }
            choices.push(SiteChoice { site, choice });
        }
        let rel = |x: f64| {
            if fit_norm > 0.0 {
                (x / fit_norm).sqrt()
            } else {
                0.0
            }
        };
        reports.push(StepReport {
            step: k,
            sites: list.len(),
            rows,
            dim,
            rel_before: rel(fit_before),
            rel_after: rel(fit_after),
            common_share: if err_total > 0.0 {
                err_common / err_total
            } else {
                0.0
            },
            validation: step_validation,
        });
        progress(Progress::Fitted { step: k });
    }

    // End to end on the validation samples: with all priors, and without.
    let mut final_check = None;
    if !val.is_empty() {
        let device = calib[0].accelerated.latents().device().clone();
        let mut all = PriorHooks::lenient();
        for (site, p) in &priors {
            all.insert(*site, p, alphas[site], dtype, &device)
                .map_err(candle)?;
        }
        let (mut cache, mut calibrated) = (Vec::new(), Vec::new());
        for (p, b) in val.iter_mut().zip(validation) {
            while !p.reference.is_done() {
                p.reference.step(&mut NoHooks).map_err(exec)?;
            }
            let x_ref = p.reference.latents();
            let plain = Trajectory::new(&val_model, plan, &b.batch)
                .and_then(|t| t.run(&mut NoHooks))
                .map_err(exec)?;
            cache.push(rel_l2_sum(&plain, x_ref)?);
            let corrected = Trajectory::new(&val_model, plan, &b.batch)
                .and_then(|t| t.run(&mut all))
                .map_err(exec)?;
            calibrated.push(rel_l2_sum(&corrected, x_ref)?);
        }
        let (cache, calibrated) = (mean_rel(cache), mean_rel(calibrated));
        let kept = !(cal.select == Selection::Validated && calibrated > cache);
        if !kept {
            priors.clear();
            alphas.values_mut().for_each(|a| *a = 0.0);
        }
        final_check = Some(FinalCheck {
            samples: validation.iter().map(|b| b.conditions.len()).sum(),
            cache,
            calibrated,
            kept,
        });
        progress(Progress::Final);
    }

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
        alphas,
        choices,
        steps: reports,
        final_check,
        cost: CostReport {
            samples: batches.iter().map(|b| b.conditions.len()).sum(),
            reference: ref_model.evals.get(),
            accelerated: acc_model.evals.get(),
            validation: val_model.evals.get(),
            one_pass_bound: n * (full + computed_branches(plan, 0..=last)),
            rerun_from_start: n * (full + rerun_from_start),
            rerun_from_refresh: n * (full + rerun_from_refresh),
        },
    })
}
