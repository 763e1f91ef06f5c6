//! The evaluation run: full computation and the variants side by side.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde::Serialize;
use tcc_calib::{Moments, Pooler, Site, SiteStats};
use tcc_core::{Branch, Pooling};
use tcc_exec::{BranchSite, ExecError, Hooks, Inputs, SampleBatch, Trajectory};
use tcc_metrics::{
    psnr, rel_l2, wilcoxon_signed_rank, BranchDistances, DataRange, FeatureStats, Summary, Wilcoxon,
};
use tcc_model::BlockModel;
use tcc_plan::{Action, Plan};

use crate::decisions::{DecisionReport, DecisionSums};

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The inputs cannot be evaluated as given (held-out overlap, plans of
    /// different lengths, empty seed sets).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Metrics(#[from] tcc_metrics::MetricsError),
    #[error("pooled statistics: {0}")]
    Calib(#[from] tcc_calib::CalibError),
    #[error("scoring the samples: {0}")]
    Scorer(String),
    #[error("{0}")]
    Io(String),
}

/// Scores final samples: features for the Fréchet distance and predicted
/// classes for accuracy (the testbed's classifier). Latent models without a
/// decoder and classifier have no scorer; FD and accuracy are then absent.
pub trait Scorer {
    /// Row-major features `[n, dim]` and the predicted class of each of the
    /// final latents `x` (`[n, C, H, W]`).
    fn score(&self, x: &Tensor) -> Result<(Vec<f64>, Vec<usize>), String>;
    /// The real data's feature statistics that FD compares against.
    fn reference(&self) -> &FeatureStats;
}

/// One seed set: the batches of (noise, condition) drawn from one seed, and
/// the class label of every sample in batch order.
pub struct SeedSet {
    pub seed: u64,
    pub batches: Vec<SampleBatch>,
    pub labels: Vec<u32>,
    /// The condition key of every sample (the class), for pooled rows.
    pub conditions: Vec<u64>,
}

impl SeedSet {
    /// Samples `range` of `inputs` (the seed set of `inputs.seed`) in
    /// batches of at most `batch_size`, the first starting at
    /// `range.start`.
    pub fn new(
        plan: &Plan,
        inputs: &Inputs,
        range: std::ops::Range<usize>,
        batch_size: usize,
    ) -> Result<SeedSet, ExecError> {
        let batches = inputs
            .batches(plan, range.clone(), batch_size)
            .map(|b| b.map(|(_, batch)| batch))
            .collect::<Result<_, _>>()?;
        Ok(SeedSet {
            seed: inputs.seed,
            batches,
            conditions: inputs.conditions()[range.clone()].to_vec(),
            labels: inputs.labels[range].to_vec(),
        })
    }
}

/// A cached variant: its plan (same steps as full computation) and the
/// hooks that apply its priors (`NoHooks` for the plain cache).
pub struct Variant<'a> {
    pub name: String,
    pub plan: &'a Plan,
    pub hooks: Box<dyn Hooks + 'a>,
    /// Keep, at every calibrated site, the second moments of the reference
    /// output and the uncorrected reused one (every token of both CFG
    /// halves): what an oracle prior, fitted on the evaluated samples
    /// themselves, would be fitted on ([`VariantReport::moments`]). Two
    /// `D x D` f64 matrices per site.
    pub oracle: bool,
}

/// Progress: `samples` more samples advanced one step (in full computation
/// or one of the variants).
pub struct Progress {
    pub samples: usize,
}

/// Metrics of one variant on one seed set.
#[derive(Clone, Debug, Serialize)]
pub struct SetMetrics {
    pub seed: u64,
    /// Fréchet distance of the samples' features to the real data's.
    pub fd: Option<f64>,
    /// Fraction of samples classified as their class.
    pub accuracy: Option<f64>,
    /// Mean per-sample relative L2 of the final latents against full
    /// computation (absent for full computation itself).
    pub rel_l2: Option<f64>,
    /// Mean per-sample PSNR (dB, latents taken in [-1, 1]) against full.
    pub psnr: Option<f64>,
    /// Wall time in the model and the variant's hooks, seconds.
    pub seconds: f64,
    /// Full computation's time over this variant's on the same seed set.
    pub speedup: f64,
    /// A dynamic plan's mean steps computed per sample (absent for static
    /// plans, whose JSON is unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computed_steps: Option<f64>,
    /// A dynamic plan's realised speedup: full computation's MACs over the
    /// MACs that ran on this seed set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realised_speedup: Option<f64>,
}

/// Distances at one step, pooled over all samples, blocks and branches.
#[derive(Clone, Debug, Serialize)]
pub struct StepDistance {
    pub step: usize,
    /// `sqrt(Σ ||x_var - x_full||^2 / Σ ||x_full||^2)` of the latents
    /// after this step.
    pub latent_rel_l2: f64,
    /// At reuse steps: per-sample relative L2 of the branch output the
    /// variant used (after its prior) against the one full computation
    /// computed at the same step, pooled over samples, blocks and branches.
    pub branch_rel_l2: Option<f64>,
    /// At reuse steps: the same on the calibration's pooled rows (per
    /// condition, mean over tokens), the quantity `tcc calibrate` reports.
    pub pooled_rel: Option<f64>,
}

/// Everything measured for one variant (index 0 is full computation).
#[derive(Clone, Debug, Serialize)]
pub struct VariantReport {
    pub name: String,
    pub sets: Vec<SetMetrics>,
    pub steps: Vec<StepDistance>,
    /// Per-sample relative L2 against full, all seed sets in order.
    #[serde(skip)]
    pub sample_rel_l2: Vec<f64>,
    /// With [`Variant::oracle`]: per calibrated site (step, branch, block),
    /// the moments of (reference output, uncorrected reused output) over
    /// all evaluated samples.
    #[serde(skip)]
    pub moments: BTreeMap<Site, Moments>,
    /// A dynamic plan's decisions over every seed set (absent for static
    /// plans).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<DecisionReport>,
}

impl VariantReport {
    /// Mean and sample std over seed sets of one metric.
    pub fn over_sets(&self, f: impl Fn(&SetMetrics) -> Option<f64>) -> Option<Summary> {
        let v: Vec<f64> = self.sets.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| Summary::of(&v))
    }
}

/// A paired Wilcoxon signed-rank test on per-sample relative L2.
#[derive(Clone, Debug, Serialize)]
pub struct PairedTest {
    pub a: String,
    pub b: String,
    /// Median of `a - b` over samples (negative: `a` is closer to full).
    pub median_difference: f64,
    /// Fraction of samples where `a` is closer to full than `b`.
    pub a_better: f64,
    /// `None` when `a` and `b` are identical on every sample (validated
    /// selection may keep no prior, leaving the cache as it is): the test
    /// is then undefined.
    pub test: Option<Wilcoxon>,
}

/// The evaluation's results.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub samples_per_set: usize,
    pub variants: Vec<VariantReport>,
    pub tests: Vec<PairedTest>,
}

/// Checks that no evaluation seed was used for calibration.
pub fn held_out(eval_seeds: &[u64], calibration_seeds: &[(String, u64)]) -> Result<(), EvalError> {
    for (what, s) in calibration_seeds {
        if eval_seeds.contains(s) {
            return Err(EvalError::Input(format!(
                "evaluation seed {s} is the calibration seed of {what}: evaluate on held-out seeds (choose other --seeds)"
            )));
        }
    }
    let mut seen = HashSet::new();
    for s in eval_seeds {
        if !seen.insert(s) {
            return Err(EvalError::Input(format!(
                "evaluation seed {s} is given twice: seed sets must be distinct"
            )));
        }
    }
    Ok(())
}

/// Runs full computation and every variant on every seed set and measures
/// them. `tests` names pairs of variants to compare with a paired Wilcoxon
/// test on per-sample relative L2.
pub fn evaluate<M: BlockModel>(
    model: &M,
    full: &Plan,
    variants: &mut [Variant<'_>],
    sets: &[SeedSet],
    scorer: Option<&dyn Scorer>,
    tests: &[(&str, &str)],
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, EvalError> {
    accumulate(model, full, variants, sets, scorer, progress)?
        .report(scorer.map(|s| s.reference()), tests)
}

/// The measurements of one variant (or full computation) on one seed set,
/// as mergeable sums: what [`EvalSums::report`] turns into [`SetMetrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSums {
    /// The scorer's feature sums (absent without a scorer).
    pub features: Option<FeatureStats>,
    /// Samples classified as their class.
    pub correct: u64,
    /// Per-sample relative L2 and PSNR against full computation, in sample
    /// order (empty for full computation itself).
    pub rel_l2: Vec<f64>,
    pub psnr: Vec<f64>,
    /// Wall time in the model and the variant's hooks, seconds.
    pub seconds: f64,
    /// A dynamic plan's decisions (`None` for static plans and full
    /// computation).
    pub decisions: Option<DecisionSums>,
}

/// One seed set's sums: `samples` samples, per variant (index 0: full).
#[derive(Clone, Debug, PartialEq)]
pub struct SetSums {
    pub seed: u64,
    pub samples: u64,
    pub variants: Vec<VariantSums>,
}

/// Everything an evaluation measured, as sums that shards of it (disjoint
/// samples of the same seed sets) add up: [`EvalSums::merge`] in sample
/// order gives the sums of the whole run, exactly for the per-sample values
/// and counts and up to f64 summation order for the rest, and
/// [`EvalSums::report`] makes the [`Report`].
#[derive(Clone, Debug)]
pub struct EvalSums {
    /// Variant names; index 0 is full computation.
    pub names: Vec<String>,
    /// The pooling of the calibration's rows (`pooled_rel`).
    pub pooling: Pooling,
    pub sets: Vec<SetSums>,
    /// Per variant (not full), per step: `Σ ||x_v - x_full||²` and
    /// `Σ ||x_full||²` of the latents after the step.
    pub latent: Vec<Vec<[f64; 2]>>,
    /// Per variant, per reuse step: `Σ ||used - computed||²` and
    /// `Σ ||computed||²` of the branch outputs.
    pub branch: Vec<BTreeMap<usize, [f64; 2]>>,
    /// Per variant, per reuse site: the calibration's pooled rows.
    pub pooled: Vec<BTreeMap<Site, SiteStats>>,
    /// Per variant, with [`Variant::oracle`]: the oracle's moments.
    pub moments: Vec<BTreeMap<Site, Moments>>,
}

fn merge_site_stats(mine: &mut SiteStats, theirs: &SiteStats) -> Result<(), EvalError> {
    match (mine, theirs) {
        (SiteStats::Rows(m), SiteStats::Rows(t)) => Ok(m.merge(t)?),
        (SiteStats::Moments(m), SiteStats::Moments(t)) => Ok(m.merge(t)?),
        _ => Err(EvalError::Input(
            "cannot merge pooled rows of different poolings".into(),
        )),
    }
}

impl EvalSums {
    /// Adds the sums of the next shard (samples after this one's).
    pub fn merge(&mut self, other: &EvalSums) -> Result<(), EvalError> {
        let seeds = |s: &EvalSums| s.sets.iter().map(|s| s.seed).collect::<Vec<_>>();
        if other.names != self.names || seeds(other) != seeds(self) || other.pooling != self.pooling
        {
            return Err(EvalError::Input(
                "cannot merge evaluations of different variants, seed sets or pooling".into(),
            ));
        }
        let latent_len = |s: &EvalSums| s.latent.iter().map(Vec::len).collect::<Vec<_>>();
        if latent_len(other) != latent_len(self) {
            return Err(EvalError::Input(
                "cannot merge evaluations of different step counts".into(),
            ));
        }
        for (a, b) in self.sets.iter_mut().zip(&other.sets) {
            a.samples += b.samples;
            for (x, y) in a.variants.iter_mut().zip(&b.variants) {
                x.features = match (x.features.take(), &y.features) {
                    (Some(mut f), Some(g)) => {
                        f.merge(g)?;
                        Some(f)
                    }
                    (None, None) => None,
                    _ => {
                        return Err(EvalError::Input(
                            "cannot merge scored and unscored evaluations".into(),
                        ))
                    }
                };
                x.correct += y.correct;
                x.rel_l2.extend_from_slice(&y.rel_l2);
                x.psnr.extend_from_slice(&y.psnr);
                x.seconds += y.seconds;
                match (&mut x.decisions, &y.decisions) {
                    (Some(a), Some(b)) => a.merge(b).map_err(EvalError::Input)?,
                    (None, None) => {}
                    _ => {
                        return Err(EvalError::Input(
                            "cannot merge the evaluation of a dynamic plan with a static one"
                                .into(),
                        ))
                    }
                }
            }
        }
        for (a, b) in self.latent.iter_mut().zip(&other.latent) {
            for (x, y) in a.iter_mut().zip(b) {
                x[0] += y[0];
                x[1] += y[1];
            }
        }
        for (a, b) in self.branch.iter_mut().zip(&other.branch) {
            for (k, y) in b {
                let x = a.entry(*k).or_default();
                x[0] += y[0];
                x[1] += y[1];
            }
        }
        for (a, b) in self.pooled.iter_mut().zip(&other.pooled) {
            for (site, y) in b {
                match a.get_mut(site) {
                    Some(x) => merge_site_stats(x, y).map_err(|e| at(e, site))?,
                    None => {
                        a.insert(*site, y.clone());
                    }
                }
            }
        }
        for (a, b) in self.moments.iter_mut().zip(&other.moments) {
            for (site, y) in b {
                match a.get_mut(site) {
                    Some(x) => x.merge(y).map_err(|e| at(e.into(), site))?,
                    None => {
                        a.insert(*site, y.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// The decisions of variant `vi` (0: full computation) over every
    /// seed set; `None` for static plans.
    fn decisions(&self, vi: usize) -> Result<Option<DecisionSums>, EvalError> {
        let mut total: Option<DecisionSums> = None;
        for d in self
            .sets
            .iter()
            .filter_map(|s| s.variants[vi].decisions.as_ref())
        {
            match &mut total {
                Some(t) => t.merge(d).map_err(EvalError::Input)?,
                None => total = Some(d.clone()),
            }
        }
        Ok(total)
    }

    /// The report of these sums: FD against `reference` (the scorer's real
    /// data statistics, needed when the sums hold features), and the paired
    /// tests `tests`.
    pub fn report(
        &self,
        reference: Option<&FeatureStats>,
        tests: &[(&str, &str)],
    ) -> Result<Report, EvalError> {
        let nv = self.names.len();
        let mut per_set: Vec<Vec<SetMetrics>> = vec![Vec::new(); nv];
        let mut sample_rel: Vec<Vec<f64>> = vec![Vec::new(); nv];
        for set in &self.sets {
            if set.variants.len() != nv {
                return Err(EvalError::Input(format!(
                    "seed set {} has {} variants, expected {nv}",
                    set.seed,
                    set.variants.len()
                )));
            }
            let n = set.samples as f64;
            let full_time = set.variants[0].seconds;
            for (vi, v) in set.variants.iter().enumerate() {
                let (fd, accuracy) = match &v.features {
                    Some(f) => {
                        let r = reference.ok_or_else(|| {
                            EvalError::Input(
                                "the real data's feature statistics are needed for FD".into(),
                            )
                        })?;
                        (Some(f.frechet_distance(r)?), Some(v.correct as f64 / n))
                    }
                    None => (None, None),
                };
                let (rel, ps) = if vi == 0 {
                    (None, None)
                } else {
                    sample_rel[vi].extend_from_slice(&v.rel_l2);
                    (
                        Some(Summary::of(&v.rel_l2).mean()),
                        Some(Summary::of(&v.psnr).mean()),
                    )
                };
                per_set[vi].push(SetMetrics {
                    seed: set.seed,
                    fd,
                    accuracy,
                    rel_l2: rel,
                    psnr: ps,
                    seconds: v.seconds,
                    speedup: full_time / v.seconds,
                    computed_steps: v.decisions.as_ref().map(DecisionSums::computed_steps),
                    realised_speedup: v.decisions.as_ref().map(DecisionSums::speedup),
                });
            }
        }

        let mut reports = Vec::with_capacity(nv);
        for (vi, name) in self.names.iter().enumerate() {
            let steps = if vi == 0 {
                Vec::new()
            } else {
                let pooled_step = pooled_per_step(&self.pooled[vi - 1], self.pooling)?;
                self.latent[vi - 1]
                    .iter()
                    .enumerate()
                    .map(|(k, &[d, r])| StepDistance {
                        step: k,
                        latent_rel_l2: if r > 0.0 { (d / r).sqrt() } else { 0.0 },
                        branch_rel_l2: self.branch[vi - 1].get(&k).map(|[d, r]| (d / r).sqrt()),
                        pooled_rel: pooled_step.get(&k).copied(),
                    })
                    .collect()
            };
            reports.push(VariantReport {
                name: name.clone(),
                sets: std::mem::take(&mut per_set[vi]),
                steps,
                sample_rel_l2: std::mem::take(&mut sample_rel[vi]),
                moments: if vi == 0 {
                    BTreeMap::new()
                } else {
                    self.moments[vi - 1].clone()
                },
                decisions: self.decisions(vi)?.map(|d| d.report()),
            });
        }
        let mut paired = Vec::new();
        for &(a, b) in tests {
            let find = |n: &str| {
                reports
                    .iter()
                    .find(|r| r.name == n)
                    .ok_or_else(|| EvalError::Input(format!("no variant named `{n}` to test")))
            };
            let (ra, rb) = (find(a)?, find(b)?);
            let x = &ra.sample_rel_l2;
            let y = &rb.sample_rel_l2;
            let mut d: Vec<f64> = x.iter().zip(y).map(|(p, q)| p - q).collect();
            d.sort_by(f64::total_cmp);
            let median = if d.is_empty() {
                f64::NAN
            } else if d.len() % 2 == 1 {
                d[d.len() / 2]
            } else {
                0.5 * (d[d.len() / 2 - 1] + d[d.len() / 2])
            };
            paired.push(PairedTest {
                a: a.to_string(),
                b: b.to_string(),
                median_difference: median,
                a_better: x.iter().zip(y).filter(|(p, q)| p < q).count() as f64
                    / x.len().max(1) as f64,
                test: if x == y {
                    None
                } else {
                    Some(wilcoxon_signed_rank(x, y)?)
                },
            });
        }
        Ok(Report {
            samples_per_set: self.sets.first().map_or(0, |s| s.samples as usize),
            variants: reports,
            tests: paired,
        })
    }
}

fn at(e: EvalError, site: &Site) -> EvalError {
    EvalError::Input(format!("{site}: {e}"))
}

/// Runs full computation and every variant on every seed set (or a shard's
/// share of each: the batches `sets` hold) and returns the sums of what it
/// measured.
pub fn accumulate<M: BlockModel>(
    model: &M,
    full: &Plan,
    variants: &mut [Variant<'_>],
    sets: &[SeedSet],
    scorer: Option<&dyn Scorer>,
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalSums, EvalError> {
    let nsteps = full.steps.len();
    for v in variants.iter() {
        if v.plan.steps.len() != nsteps {
            return Err(EvalError::Input(format!(
                "variant `{}` has {} steps, full computation {nsteps}: only plans of one sampler can be compared step by step",
                v.name,
                v.plan.steps.len()
            )));
        }
    }
    if sets.is_empty() || sets.iter().any(|s| s.labels.is_empty()) {
        return Err(EvalError::Input("no samples to evaluate".into()));
    }
    let nv = variants.len();
    // The (block, branch) pairs that some variant reuses, per step.
    let wanted: Vec<HashSet<(usize, Branch)>> = (0..nsteps)
        .map(|k| {
            let mut w = HashSet::new();
            for v in variants.iter() {
                for (block, actions) in v.plan.steps[k].actions.iter().enumerate() {
                    for (bi, a) in actions.iter().enumerate() {
                        if matches!(a, Action::Reuse { .. } | Action::Partial { .. }) {
                            w.insert((block, v.plan.branches()[bi]));
                        }
                    }
                }
            }
            w
        })
        .collect();
    let pooler = Pooler::new(full);

    let mut set_sums = Vec::with_capacity(sets.len());
    // Per variant, per step: (Σ||x_v - x_full||^2, Σ||x_full||^2).
    let mut latent: Vec<Vec<[f64; 2]>> = vec![vec![[0.0; 2]; nsteps]; nv];
    let mut branch: Vec<BranchDistances> = vec![BranchDistances::new(); nv];
    let mut pooled: Vec<BTreeMap<Site, SiteStats>> = vec![BTreeMap::new(); nv];
    let mut moments: Vec<BTreeMap<Site, Moments>> = vec![BTreeMap::new(); nv];
    let all_tokens = Pooler::validation(full);

    for set in sets {
        let mut finals: Vec<Vec<Tensor>> = vec![Vec::new(); nv + 1];
        let mut times = vec![Duration::ZERO; nv + 1];
        let mut decisions: Vec<Option<DecisionSums>> = variants
            .iter()
            .map(|v| v.plan.dynamic.is_some().then(|| DecisionSums::new(nsteps)))
            .collect();
        let mut offset = 0;
        for batch in &set.batches {
            let b = batch.noise.dim(0)?;
            let conditions = set
                .conditions
                .get(offset..offset + b)
                .ok_or_else(|| EvalError::Input("fewer conditions than samples".into()))?;
            offset += b;
            let mut reference = Trajectory::new(model, full, batch)?;
            let mut trajs = variants
                .iter()
                .map(|v| Trajectory::new(model, v.plan, batch))
                .collect::<Result<Vec<_>, _>>()?;
            for (k, wanted) in wanted.iter().enumerate() {
                let mut rec = Recorder {
                    wanted,
                    outputs: HashMap::new(),
                };
                let t0 = Instant::now();
                reference.step(&mut rec)?;
                // GPU kernels run asynchronously: wait before reading the clock.
                reference.latents().device().synchronize()?;
                times[0] += t0.elapsed();
                progress(Progress { samples: b });
                let x_ref = reference.latents().flatten_all()?.to_vec1::<f32>()?;
                for (vi, (v, traj)) in variants.iter_mut().zip(trajs.iter_mut()).enumerate() {
                    let mut obs = Observer {
                        inner: v.hooks.as_mut(),
                        reference: &rec.outputs,
                        distances: &mut branch[vi],
                        pooled: &mut pooled[vi],
                        pooler,
                        moments: v.oracle.then_some((&mut moments[vi], all_tokens)),
                        conditions,
                        overhead: Duration::ZERO,
                        error: None,
                    };
                    let t0 = Instant::now();
                    traj.step(&mut obs)?;
                    traj.latents().device().synchronize()?;
                    let spent = t0.elapsed().saturating_sub(obs.overhead);
                    if let Some(e) = obs.error {
                        return Err(e);
                    }
                    times[vi + 1] += spent;
                    progress(Progress { samples: b });
                    let x = traj.latents().flatten_all()?.to_vec1::<f32>()?;
                    let (d, r) = x.iter().zip(&x_ref).fold((0.0, 0.0), |(d, r), (&p, &q)| {
                        let (p, q) = (p as f64, q as f64);
                        (d + (p - q) * (p - q), r + q * q)
                    });
                    latent[vi][k][0] += d;
                    latent[vi][k][1] += r;
                }
            }
            finals[0].push(reference.latents().clone());
            for (vi, t) in trajs.iter().enumerate() {
                finals[vi + 1].push(t.latents().clone());
                if let Some(d) = decisions[vi].as_mut() {
                    d.add_batch(variants[vi].plan, b, &t.reuse_steps());
                }
            }
        }
        let finals: Vec<Tensor> = finals
            .iter()
            .map(|f| Tensor::cat(f, 0))
            .collect::<Result<_, _>>()?;
        let n = set.labels.len();
        let full_x = finals[0].flatten_all()?.to_vec1::<f32>()?;
        let per = full_x.len() / n;
        let mut sums = Vec::with_capacity(nv + 1);
        for (vi, x) in finals.iter().enumerate() {
            let (features, correct) = match scorer {
                Some(s) => {
                    let (features, predicted) = s.score(x).map_err(EvalError::Scorer)?;
                    let mut stats = FeatureStats::new(s.reference().dim());
                    stats.add_batch(&features)?;
                    let correct = predicted
                        .iter()
                        .zip(&set.labels)
                        .filter(|(p, l)| **p == **l as usize)
                        .count();
                    (Some(stats), correct as u64)
                }
                None => (None, 0),
            };
            let (mut rels, mut psnrs) = (Vec::new(), Vec::new());
            if vi > 0 {
                let xv = x.flatten_all()?.to_vec1::<f32>()?;
                for (a, r) in xv.chunks_exact(per).zip(full_x.chunks_exact(per)) {
                    rels.push(rel_l2(a, r)?);
                    let clamp =
                        |v: &[f32]| v.iter().map(|x| x.clamp(-1.0, 1.0)).collect::<Vec<_>>();
                    psnrs.push(psnr(&clamp(a), &clamp(r), DataRange::Signed)?);
                }
            }
            sums.push(VariantSums {
                features,
                correct,
                rel_l2: rels,
                psnr: psnrs,
                seconds: times[vi].as_secs_f64(),
                decisions: if vi == 0 {
                    None
                } else {
                    decisions[vi - 1].take()
                },
            });
        }
        set_sums.push(SetSums {
            seed: set.seed,
            samples: n as u64,
            variants: sums,
        });
    }

    let names = std::iter::once("full".to_string())
        .chain(variants.iter().map(|v| v.name.clone()))
        .collect();
    Ok(EvalSums {
        names,
        pooling: pooler.pooling(),
        sets: set_sums,
        latent,
        branch: branch
            .iter()
            .map(|b| {
                b.per_step()
                    .into_iter()
                    .map(|(k, s)| (k, [s.sq_diff, s.sq_ref]))
                    .collect()
            })
            .collect(),
        pooled,
        moments,
    })
}

/// Per step: `sqrt(Σ ||a_i - b_i||^2 / Σ ||a_i||^2)` over the pooled rows of
/// all its sites, as `tcc calibrate` computes "before" and "after".
fn pooled_per_step(
    stats: &BTreeMap<Site, SiteStats>,
    pooling: Pooling,
) -> Result<BTreeMap<usize, f64>, EvalError> {
    let mut sums: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for (site, st) in stats {
        let (d, _, n) = st.residual(None, pooling, 0.0)?;
        let e = sums.entry(site.step).or_default();
        e.0 += d;
        e.1 += n;
    }
    Ok(sums
        .into_iter()
        .map(|(k, (d, n))| (k, if n > 0.0 { (d / n).sqrt() } else { 0.0 }))
        .collect())
}

/// At a ToCa partial compute, the stale (reused) rows of the reference
/// `r` and of the variant's output: what a prior corrects and what
/// calibration pools. Every row elsewhere.
fn stale_only(site: &BranchSite, r: &Tensor, out: &Tensor) -> Result<(Tensor, Tensor), EvalError> {
    Ok(match site.fresh {
        Some(f) => (
            tcc_exec::toca::stale_rows(r, f)?,
            tcc_exec::toca::stale_rows(out, f)?,
        ),
        None => (r.clone(), out.clone()),
    })
}

/// Keeps full computation's outputs at the sites some variant reuses.
struct Recorder<'a> {
    wanted: &'a HashSet<(usize, Branch)>,
    outputs: HashMap<(usize, Branch), Tensor>,
}

impl Hooks for Recorder<'_> {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        if self.wanted.contains(&(site.block, site.branch)) {
            self.outputs.insert((site.block, site.branch), out.clone());
        }
        Ok(None)
    }
}

/// Runs a variant's own hooks, then measures the output it used at reuse
/// sites; the measuring time is kept apart from the variant's time.
struct Observer<'a> {
    inner: &'a mut dyn Hooks,
    reference: &'a HashMap<(usize, Branch), Tensor>,
    distances: &'a mut BranchDistances,
    pooled: &'a mut BTreeMap<Site, SiteStats>,
    pooler: Pooler,
    /// Where to keep the oracle moments, and the pooler of every token.
    moments: Option<(&'a mut BTreeMap<Site, Moments>, Pooler)>,
    conditions: &'a [u64],
    overhead: Duration,
    error: Option<EvalError>,
}

impl Observer<'_> {
    /// The oracle's statistics: the reference output and the reused one
    /// before the variant's prior, at a calibrated site.
    fn keep_moments(&mut self, site: &BranchSite, reused: &Tensor) -> Result<(), EvalError> {
        let Some((moments, all)) = self.moments.as_mut() else {
            return Ok(());
        };
        let Some(r) = self.reference.get(&(site.block, site.branch)) else {
            return Ok(());
        };
        let n = self.conditions.len();
        let (r, reused) = &stale_only(site, r, reused)?;
        let m = moments
            .entry(Site::new(site.step, site.branch, site.block))
            .or_insert_with(|| Moments::new(reused.dim(2).unwrap_or(0)));
        for ((a, _), (b, _)) in all.halves(r, n)?.into_iter().zip(all.halves(reused, n)?) {
            m.add_tokens(&a, &b)?;
        }
        Ok(())
    }

    fn measure(&mut self, site: &BranchSite, used: &Tensor) -> Result<(), EvalError> {
        let Some(r) = self.reference.get(&(site.block, site.branch)) else {
            return Ok(());
        };
        let (r, used) = &stale_only(site, r, used)?;
        let n = used.dim(0)?;
        let u = used.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let rv = r.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.distances
            .add_samples(site.step, site.branch.name(), site.block, &u, &rv, n)?;
        let pooler = self.pooler;
        let st = self
            .pooled
            .entry(Site::new(site.step, site.branch, site.block))
            .or_insert_with(|| pooler.stats(used.dim(2).unwrap_or(0)));
        pooler.add_pair(r, used, self.conditions, st)?;
        Ok(())
    }
}

impl Hooks for Observer<'_> {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        let replaced = self.inner.branch_output(site, out)?;
        if matches!(site.action, Action::Reuse { .. } | Action::Partial { .. })
            && self.error.is_none()
        {
            // The variant's queued GPU work is its time, not the overhead's.
            out.device().synchronize()?;
            let t0 = Instant::now();
            let used = replaced.as_ref().unwrap_or(out);
            if let Err(e) = self.measure(site, used) {
                self.error = Some(e);
            }
            if site.action.has_prior() {
                if let Err(e) = self.keep_moments(site, out) {
                    self.error.get_or_insert(e);
                }
            }
            self.overhead += t0.elapsed();
        }
        Ok(replaced)
    }
}
