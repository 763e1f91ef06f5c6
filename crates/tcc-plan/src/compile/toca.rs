//! The `[toca]` settings of a plan with partly computed branches.

use tcc_core::{
    CalibMethod, CalibrationSpec, Pooling, TocaSpec, TokenScore, DEFAULT_FRESH_WEIGHT,
    DEFAULT_SPREAD_BONUS,
};
use tcc_schedule::{CalibrationSection, Diagnostic, Diagnostics, Spanned, TocaSection};

use crate::plan::Action;

/// The plan's [`TocaSpec`]: `None` without partial actions (a `[toca]`
/// section is then an error: it would do nothing).
pub(super) fn resolve_toca(
    section: Option<&Spanned<TocaSection>>,
    actions: &[Vec<Vec<Action>>],
) -> Result<Option<TocaSpec>, Diagnostics> {
    let has_partial = actions
        .iter()
        .flatten()
        .flatten()
        .any(|a| matches!(a, Action::Partial { .. }));
    if !has_partial {
        return match section {
            Some(s) => Err(Diagnostic::new(
                "[toca] settings, but no cell is partly computed",
                s.span,
                "this section does nothing",
            )
            .with_help("add a `[[cache]]` rule with `partial = STEPS` and `fresh-ratio = r` (a ratio that leaves 0 < fresh < all tokens), or remove [toca]")
            .into()),
            None => Ok(None),
        };
    }
    let t = section.map(|s| s.value.clone()).unwrap_or_default();
    Ok(Some(TocaSpec {
        score: t.score.map_or(TokenScore::Attention, |s| s.value),
        fresh_weight: t.fresh_weight.map_or(DEFAULT_FRESH_WEIGHT, |x| x.value),
        spread_bonus: t.spread_bonus.map_or(DEFAULT_SPREAD_BONUS, |x| x.value),
        interval: t
            .interval
            .map_or_else(|| default_interval(actions), |x| x.value),
        seed: t.seed.map_or(0, |s| s.value),
    }))
}

/// `N` of the staleness term when the schedule does not give it: one more
/// than the longest run of non-computed steps of any (block, branch) that
/// is partly computed in that run (2 for a refresh every 2 steps).
fn default_interval(actions: &[Vec<Vec<Action>>]) -> f64 {
    let cells = actions.first().map_or(0, |s| s.iter().map(Vec::len).sum());
    let mut run = vec![0usize; cells];
    let mut partial = vec![false; cells];
    let mut longest = 0;
    for step in actions {
        for (i, a) in step.iter().flatten().enumerate() {
            if a.is_compute() {
                run[i] = 0;
                partial[i] = false;
            } else {
                run[i] += 1;
                partial[i] |= matches!(a, Action::Partial { .. });
                if partial[i] {
                    longest = longest.max(run[i]);
                }
            }
        }
    }
    (longest + 1) as f64
}

/// TCC on partly computed plans fits and applies priors on the stale
/// (reused) tokens only, and the stale set differs per sample and step:
/// `conditions` pooling (a row per token position, a mean per position)
/// would give each position a different number of contributions and none
/// at all to positions that are always fresh, so it is refused where a
/// calibrated step has a partial cell. Every other pooling pools the stale
/// tokens.
pub(super) fn check_calibration(
    section: Option<&Spanned<CalibrationSection>>,
    spec: &CalibrationSpec,
    actions: &[Vec<Vec<Action>>],
) -> Result<(), Diagnostics> {
    let Some(section) = section else {
        return Ok(());
    };
    if spec.method != CalibMethod::Tcc || spec.pooling != Pooling::Conditions {
        return Ok(());
    }
    let partial = spec.steps.iter().find(|&&s| {
        actions[s]
            .iter()
            .flatten()
            .any(|a| matches!(a, Action::Partial { .. }))
    });
    let Some(step) = partial else {
        return Ok(());
    };
    let span = section
        .value
        .pooling
        .as_ref()
        .map_or(section.span, |p| p.span);
    Err(Diagnostic::new(
        "`conditions` pooling cannot calibrate partly computed (ToCa) cells",
        span,
        format!("calibrated step {step} computes some tokens fresh"),
    )
    .with_help("priors on ToCa cells are fitted on the stale tokens, which differ per sample and step: use pooling = \"tokens\" (the default), \"samples\" or \"none\"")
    .into())
}
