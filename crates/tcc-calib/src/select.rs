//! Choosing the prior of one site: the candidates fitted on the
//! calibration statistics, measured on the validation samples.

use serde::Serialize;
use tcc_core::{CalibrationSpec, PriorKind, Selection};

use crate::{
    blended_error, fit_centered, CalibError, Centered, FoldedPrior, Hyper, Moments, Prior,
};

/// One fitted candidate of a site.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub kind: PriorKind,
    /// The ridge strength `γ` it was fitted with (kinds that have one).
    pub ridge: Option<f64>,
    pub prior: Prior,
    /// Folded at alpha = 1 (what [`Moments::error_terms`] takes).
    folded: FoldedPrior,
}

/// Every candidate the settings ask for at one site: each kind of
/// [`CalibrationSpec::kinds`], each ridge strength for the kinds that have
/// one. A candidate whose fit fails numerically (a singular system without
/// ridge) is left out when others remain and the validation chooses;
/// otherwise the failure is the site's error.
pub fn fit_candidates(
    centered: &Centered,
    spec: &CalibrationSpec,
) -> Result<Vec<Candidate>, CalibError> {
    let mut out = Vec::new();
    let mut first_error = None;
    let rank = spec.lowrank_rank();
    for kind in spec.kinds() {
        let ridges: Vec<Option<f64>> = if kind.uses_ridge() {
            spec.ridge_grid().into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        for ridge in ridges {
            let hyper = Hyper {
                ridge: ridge.unwrap_or(0.0),
                rank,
            };
            match fit_centered(centered, kind, hyper) {
                Ok(prior) => out.push(Candidate {
                    kind,
                    ridge,
                    folded: prior.fold(1.0),
                    prior,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) if out.is_empty() || !spec.validation_chooses() => Err(e),
        _ => Ok(out),
    }
}

/// What was chosen at one site, and how far from the reference it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    /// `None`: no prior (the cached output is used as it is).
    pub kind: Option<PriorKind>,
    pub ridge: Option<f64>,
    pub alpha: f64,
    /// Index into the site's candidates.
    #[serde(skip)]
    pub candidate: Option<usize>,
    /// On the validation samples, every token of both CFG halves:
    /// `Σ ||a - b||²` without a prior, `Σ ||a - out||²` with the choice,
    /// and `Σ ||a||²` (absent without validation samples).
    pub val_before: Option<f64>,
    pub val_after: Option<f64>,
    pub val_norm: Option<f64>,
}

/// Choose among `candidates` with the validation moments `val`.
///
/// `fixed`: the one candidate at the schedule's alpha (among several ridge
/// strengths, the one closest to the reference on `val`). `validated`: the
/// (candidate, alpha) pair of the grid closest to the reference on `val`,
/// or no prior when none is strictly closer than the cached output.
pub fn choose(
    candidates: &[Candidate],
    spec: &CalibrationSpec,
    val: Option<&Moments>,
) -> Result<Choice, CalibError> {
    let terms: Vec<Option<(f64, f64, f64)>> = candidates
        .iter()
        .map(|c| val.map(|v| v.error_terms(&c.folded)).transpose())
        .collect::<Result<_, _>>()?;
    let before = val.map(Moments::error_identity);
    let pick = |i: usize, alpha: f64| Choice {
        kind: Some(candidates[i].kind),
        ridge: candidates[i].ridge,
        alpha,
        candidate: Some(i),
        val_before: before,
        val_after: terms[i].map(|t| blended_error(t, alpha)),
        val_norm: val.map(Moments::norm_a),
    };
    match spec.select {
        Selection::Fixed => {
            let alpha = spec.alpha;
            let best = (0..candidates.len())
                .min_by(|&i, &j| {
                    let e = |k: usize| terms[k].map_or(0.0, |t| blended_error(t, alpha));
                    e(i).total_cmp(&e(j))
                })
                .ok_or_else(|| CalibError::Empty("no prior could be fitted".into()))?;
            Ok(pick(best, alpha))
        }
        Selection::Validated => {
            let val = val.ok_or_else(|| {
                CalibError::Empty("validated selection needs validation samples".into())
            })?;
            let mut best = Choice {
                kind: None,
                ridge: None,
                alpha: 0.0,
                candidate: None,
                val_before: before,
                val_after: before,
                val_norm: Some(val.norm_a()),
            };
            let mut best_err = before.unwrap_or(f64::INFINITY);
            for (i, t) in terms.iter().enumerate() {
                let t = t.expect("validation moments were given");
                for alpha in spec.alpha_grid() {
                    let e = blended_error(t, alpha);
                    if e < best_err {
                        best_err = e;
                        best = pick(i, alpha);
                    }
                }
            }
            Ok(best)
        }
    }
}
