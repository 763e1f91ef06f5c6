//! What one evaluation compares: the schedules, the variants each adds
//! (plain cache, and cache + priors per calibration mode), the paired
//! tests between them, and what the report says about their priors:
//! the error terms of each variant's priors on the evaluated samples'
//! moments and the oracle bound they are compared with.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use tcc_calib::{
    blended_error, choose, fit_candidates, CalibError, Centered, Moments, PriorSet, Site,
};
use tcc_core::{CalibMode, CalibrationSpec, PriorKind, Selection};
use tcc_exec::NoHooks;
use tcc_plan::{Action, Plan, PlanHash};

use crate::{EvalSums, Report, Variant};

/// One schedule of the evaluation: its plan and the variants it adds.
pub struct Entry {
    pub plan: Plan,
    pub hash: PlanHash,
    /// `stem:` when several schedules are compared, else empty.
    pub prefix: String,
    /// (variant label, priors) of its calibrated variants.
    pub calibrated: Vec<(String, PriorSet)>,
    /// The label of its plain-cache variant (shared by schedules with the
    /// same cache plan).
    pub cache: String,
}

impl Entry {
    /// The entries of `plans`, each named by the stem of its schedule
    /// file in `files` when there are several: `stem:` prefixes, made
    /// unique with the schedule's position (which also stands in for a
    /// missing stem). Schedules whose plans cache alike (the same actions
    /// and the same run-time policy) share one plain-cache variant.
    pub fn label(plans: Vec<Plan>, files: &[impl AsRef<Path>]) -> Vec<Entry> {
        let stems: Vec<Option<String>> = files
            .iter()
            .map(|f| {
                f.as_ref()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .collect();
        let several = plans.len() > 1;
        let mut entries: Vec<Entry> = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            let prefix = if several {
                let stem = stems[i].clone().unwrap_or_else(|| format!("{i}"));
                let taken = entries.iter().any(|e| e.prefix == format!("{stem}:"));
                if taken {
                    format!("{stem}#{i}:")
                } else {
                    format!("{stem}:")
                }
            } else {
                String::new()
            };
            let hash = plan.hash();
            let cache = entries
                .iter()
                .find(|e| {
                    cache_actions(&e.plan) == cache_actions(&plan) && e.plan.dynamic == plan.dynamic
                })
                .map(|e| e.cache.clone())
                .unwrap_or_else(|| format!("{prefix}cache"));
            entries.push(Entry {
                plan,
                hash,
                prefix,
                calibrated: Vec::new(),
                cache,
            });
        }
        entries
    }

    /// The calibrated variants this entry wants, in report order: its
    /// label and mode (`one-shot` unless `no_one_shot`, then `tcc`).
    pub fn wanted(&self, no_one_shot: bool) -> Vec<(String, CalibMode)> {
        let mut wanted = vec![("tcc", CalibMode::Consistent)];
        if !no_one_shot {
            wanted.insert(0, (CalibMode::OneShot.as_str(), CalibMode::OneShot));
        }
        wanted
            .into_iter()
            .map(|(label, mode)| (format!("{}{label}", self.prefix), mode))
            .collect()
    }
}

/// The plan without prior marks: schedules that differ only in
/// calibration share one plain-cache variant.
fn cache_actions(plan: &Plan) -> Vec<Vec<Vec<Action>>> {
    plan.steps
        .iter()
        .map(|s| {
            s.actions
                .iter()
                .map(|row| row.iter().map(|a| a.without_prior()).collect())
                .collect()
        })
        .collect()
}

/// The seeds the priors of `entries` were fitted and validated on, named
/// for [`crate::held_out`].
pub fn calibration_seeds(entries: &[Entry]) -> Vec<(String, u64)> {
    let mut seeds = Vec::new();
    for (l, s) in entries.iter().flat_map(|e| &e.calibrated) {
        seeds.push((format!("the {l} priors"), s.meta.seed));
        if let Some((_, seed)) = s.meta.validation {
            seeds.push((format!("the validation samples of the {l} priors"), seed));
        }
    }
    seeds
}

/// The variants that an evaluation runs beside full computation, and the
/// pairs of them that its paired tests compare.
pub struct Lineup<'a> {
    pub variants: Vec<Variant<'a>>,
    pub tests: Vec<(String, String)>,
}

/// The variants of `entries` (each distinct plain cache once, then the
/// calibrated ones with their priors' hooks on `device`; `oracle` keeps
/// the oracle's moments of the calibrated ones) and the pairs the paired
/// tests compare: each schedule's `tcc` against its one-shot (unless
/// `no_one_shot`) and its cache, and every later schedule's `tcc` against
/// the first calibrated one's.
pub fn lineup<'a>(
    entries: &'a [Entry],
    no_one_shot: bool,
    oracle: bool,
    device: &Device,
) -> Result<Lineup<'a>, CalibError> {
    let mut variants = Vec::new();
    let mut tests: Vec<(String, String)> = Vec::new();
    for e in entries {
        if !variants.iter().any(|v: &Variant| v.name == e.cache) {
            variants.push(Variant {
                name: e.cache.clone(),
                plan: &e.plan,
                hooks: Box::new(NoHooks),
                oracle: false,
            });
        }
        for (label, set) in &e.calibrated {
            variants.push(Variant {
                name: label.clone(),
                plan: &e.plan,
                hooks: Box::new(set.hooks(device)?),
                oracle,
            });
        }
        let tcc = format!("{}tcc", e.prefix);
        if !e.calibrated.is_empty() {
            if !no_one_shot {
                tests.push((tcc.clone(), format!("{}one-shot", e.prefix)));
            }
            tests.push((tcc.clone(), e.cache.clone()));
        }
    }
    let calibrated_prefixes: Vec<&str> = entries
        .iter()
        .filter(|e| !e.calibrated.is_empty())
        .map(|e| e.prefix.as_str())
        .collect();
    for p in calibrated_prefixes.iter().skip(1) {
        tests.push((format!("{p}tcc"), format!("{}tcc", calibrated_prefixes[0])));
    }
    Ok(Lineup { variants, tests })
}

/// One calibrated variant's priors, as the report describes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriorsInfo {
    pub variant: String,
    pub mode: CalibMode,
    pub select: Selection,
    pub prior: PriorKind,
    pub alpha: f64,
    pub sites: usize,
    pub sites_with_prior: usize,
    pub samples: usize,
    pub seed: u64,
    pub validation: Option<(usize, u64)>,
    /// The plan's calibration settings: which priors the oracle tries.
    pub calibration: CalibrationSpec,
}

impl PriorsInfo {
    pub fn of(variant: &str, set: &PriorSet, calibration: &CalibrationSpec) -> PriorsInfo {
        PriorsInfo {
            variant: variant.to_string(),
            mode: set.meta.mode,
            select: set.meta.select,
            prior: set.meta.prior,
            alpha: set.meta.alpha,
            sites: set.sites().len(),
            sites_with_prior: set.priors.len(),
            samples: set.meta.samples,
            seed: set.meta.seed,
            validation: set.meta.validation,
            calibration: calibration.clone(),
        }
    }

    /// The descriptions of every calibrated variant of `entries`.
    pub fn of_entries(entries: &[Entry]) -> Vec<PriorsInfo> {
        entries
            .iter()
            .flat_map(|e| {
                e.calibrated
                    .iter()
                    .map(|(l, s)| PriorsInfo::of(l, s, &e.plan.calibration))
            })
            .collect()
    }
}

/// Per calibrated site with oracle moments: the error terms of the
/// variant's prior on them ([`Moments::error_terms`], sums over samples,
/// so shards add them up) and the site's blend: `[e0, e1, e2, alpha]`.
pub type PriorTerms = BTreeMap<Site, [f64; 4]>;

/// The error terms of every calibrated variant's priors of `entries` on
/// the oracle's moments its variant kept in `sums`, in variant order.
pub fn prior_terms(entries: &[Entry], sums: &EvalSums) -> Result<Vec<PriorTerms>, CalibError> {
    entries
        .iter()
        .flat_map(|e| &e.calibrated)
        .map(|(label, set)| {
            let i = sums.names.iter().position(|n| n == label);
            set_terms(i.map(|i| &sums.moments[i - 1]), set)
        })
        .collect()
}

/// The error terms of `set`'s priors on the oracle's `moments` of its
/// variant (none: the variant kept no moments).
fn set_terms(
    moments: Option<&BTreeMap<Site, Moments>>,
    set: &PriorSet,
) -> Result<PriorTerms, CalibError> {
    let mut terms = BTreeMap::new();
    for (site, m) in moments.into_iter().flatten() {
        let t = match set.priors.get(site) {
            Some(p) => {
                let (e0, e1, e2) = m.error_terms(&p.fold(1.0))?;
                [e0, e1, e2, set.alpha(site)]
            }
            None => [m.error_identity(), 0.0, 0.0, 0.0],
        };
        terms.insert(*site, t);
    }
    Ok(terms)
}

/// One calibrated step of one variant: the relative distance of its
/// branch outputs to full computation's (every token, both CFG halves),
/// reused as they are, with the variant's priors, and with the oracle: the
/// best prior of the variant's kind(s) fitted on these samples themselves.
#[derive(Clone, Debug, Serialize)]
pub struct OracleRow {
    pub variant: String,
    pub step: usize,
    pub before: f64,
    pub used: f64,
    pub oracle: f64,
}

/// The oracle rows of every calibrated variant (`priors`, with their
/// `terms`) that kept moments in `report`.
pub fn oracle_rows(
    report: &Report,
    priors: &[PriorsInfo],
    terms: &[PriorTerms],
) -> Result<Vec<OracleRow>, CalibError> {
    let mut rows = Vec::new();
    for (info, terms) in priors.iter().zip(terms) {
        let label = &info.variant;
        let Some(v) = report.variants.iter().find(|v| &v.name == label) else {
            continue;
        };
        if v.moments.is_empty() {
            continue;
        }
        // The oracle tries the variant's kinds, every ridge and its blends
        // (and 1), on every token of both halves.
        let mut spec = info.calibration.clone();
        spec.candidates = spec.kinds();
        spec.select = Selection::Validated;
        let mut alphas = info.calibration.alpha_grid();
        if !alphas.contains(&1.0) {
            alphas.push(1.0);
        }
        spec.alphas = alphas;
        let mut per_step: BTreeMap<usize, (f64, f64, f64, f64)> = BTreeMap::new();
        for (site, m) in &v.moments {
            let before = m.error_identity();
            let used = match terms.get(site) {
                Some(&[e0, e1, e2, alpha]) => blended_error((e0, e1, e2), alpha),
                None => before,
            };
            let centered = Centered::from_moments(m)?;
            let candidates = fit_candidates(&centered, &spec)?;
            let best = choose(&candidates, &spec, Some(m))?;
            let e = per_step.entry(site.step).or_default();
            e.0 += before;
            e.1 += used;
            e.2 += best.val_after.unwrap_or(before);
            e.3 += m.norm_a();
        }
        for (step, (before, used, oracle, norm)) in per_step {
            let rel = |x: f64| if norm > 0.0 { (x / norm).sqrt() } else { 0.0 };
            rows.push(OracleRow {
                variant: label.clone(),
                step,
                before: rel(before),
                used: rel(used),
                oracle: rel(oracle),
            });
        }
    }
    Ok(rows)
}
