//! `[dynamic]`: a run-time policy, checked and resolved into a
//! [`DynamicSpec`]. The plan's table stays full computation (the worst
//! case); the executor decides per step.

use tcc_core::{
    CalibMethod, DynamicPolicy, DynamicSpec, Polynomial, DEFAULT_DYNAMIC_WARMUP, MAX_RESCALE_COEFFS,
};
use tcc_schedule::{Diagnostic, Diagnostics, Schedule, Spanned};

use crate::render::num;

pub(super) fn resolve_dynamic(
    schedule: &Schedule,
    steps: usize,
    depth: usize,
) -> Result<Option<DynamicSpec>, Diagnostics> {
    let Some(section) = &schedule.dynamic else {
        return Ok(None);
    };
    let d = &section.value;
    let mut diags = Diagnostics::new();
    let not_with = |what: &str, span| {
        Diagnostic::new(
            format!("a [dynamic] policy cannot be combined with {what} yet"),
            span,
            "the policy decides every step at run time",
        )
        .with_help("remove it, or remove [dynamic] to use a fixed table")
    };
    if let Some(rule) = schedule.cache.first() {
        diags.push(not_with("[[cache]] rules", rule.span));
    }
    if let Some(limits) = &schedule.limits {
        diags.push(not_with("[limits]", limits.span).with_note(
            "the bounds of a dynamic policy are its own `warmup`, `cutoff` and `max-reuse` keys",
        ));
    }
    if let Some(cal) = &schedule.calibration {
        let method = cal
            .value
            .method
            .as_ref()
            .map_or(CalibMethod::Tcc, |m| m.value);
        if method == CalibMethod::Tcc {
            diags.push(
                Diagnostic::new(
                    "TCC calibration of a dynamic policy is not supported yet",
                    cal.span,
                    "the steps a dynamic policy reuses are only known while sampling",
                )
                .with_help("remove [calibration] (or set `method = \"none\"`) to sample with the policy uncalibrated"),
            );
        }
    }
    let policy = match &d.policy {
        Some(p) => Some(p.value),
        None => {
            let names: Vec<String> = DynamicPolicy::NAMES
                .iter()
                .map(|n| format!("`policy = \"{n}\"`"))
                .collect();
            diags.push(
                Diagnostic::new("[dynamic] needs a `policy`", section.span, "no policy")
                    .with_help(format!("add {}", names.join(" or "))),
            );
            None
        }
    };
    if policy == Some(DynamicPolicy::FirstBlock) && depth < 2 {
        diags.push(Diagnostic::new(
            format!("a first-block policy needs at least 2 blocks; the model has {depth}"),
            section.span,
            "nothing would be left to reuse",
        ));
    }
    let rescale = resolve_rescale(d.rescale.as_ref(), policy, &mut diags);
    let threshold = match &d.threshold {
        Some(t) if t.value.is_nan() || t.value < 0.0 => {
            diags.push(
                Diagnostic::new(
                    format!("threshold {} is out of range", num(t.value)),
                    t.span,
                    "expected a number >= 0",
                )
                .with_help("0 computes every step; `inf` reuses whenever the bounds allow"),
            );
            None
        }
        Some(t) => Some(t.value),
        None => {
            let help = match policy {
                Some(DynamicPolicy::TeaCache) => "e.g. `threshold = 0.1` (the accumulated, rescaled relative change of block 0's modulated input below which every block is reused)",
                _ => "e.g. `threshold = 0.08` (the relative change of block 0's residual below which the other blocks are reused)",
            };
            diags.push(
                Diagnostic::new(
                    "[dynamic] needs a `threshold`",
                    section.span,
                    "no threshold",
                )
                .with_help(help),
            );
            None
        }
    };
    let mut bound = |v: &Option<Spanned<u64>>, what: &str, default: usize| match v {
        Some(v) if v.value as u128 > steps as u128 => {
            diags.push(Diagnostic::new(
                format!("{what} of {} steps", v.value),
                v.span,
                format!("the sampler has {steps} steps"),
            ));
            default
        }
        Some(v) => v.value as usize,
        None => default,
    };
    let warmup = bound(&d.warmup, "warm-up", DEFAULT_DYNAMIC_WARMUP);
    let cutoff = bound(&d.cutoff, "cut-off", 0);
    let max_reuse = d
        .max_reuse
        .as_ref()
        .map(|m| usize::try_from(m.value).unwrap_or(usize::MAX));
    let (Some(policy), Some(threshold)) = (policy, threshold) else {
        // At least one diagnostic was pushed above.
        return diags.into_result(None);
    };
    diags.into_result(Some(DynamicSpec {
        policy,
        threshold,
        warmup,
        cutoff,
        max_reuse,
        rescale,
    }))
}

/// `rescale`: TeaCache only, 1 to [`MAX_RESCALE_COEFFS`] finite numbers.
fn resolve_rescale(
    list: Option<&Spanned<Vec<Spanned<f64>>>>,
    policy: Option<DynamicPolicy>,
    diags: &mut Diagnostics,
) -> Option<Polynomial> {
    let list = list?;
    match policy {
        Some(DynamicPolicy::TeaCache) => {}
        Some(p) => {
            diags.push(
                Diagnostic::new(
                    format!("`rescale` is a TeaCache setting; policy \"{p}\" has none"),
                    list.span,
                    "not used by this policy",
                )
                .with_help("remove it, or set `policy = \"teacache\"`"),
            );
            return None;
        }
        None => return None,
    }
    let mut ok = true;
    if list.value.len() > MAX_RESCALE_COEFFS {
        diags.push(
            Diagnostic::new(
                format!(
                    "{} rescale coefficients; at most {MAX_RESCALE_COEFFS} (degree {})",
                    list.value.len(),
                    MAX_RESCALE_COEFFS - 1
                ),
                list.span,
                "too many coefficients",
            )
            .with_help("TeaCache's fits have degree 4: 5 coefficients, highest power first"),
        );
        ok = false;
    }
    for c in &list.value {
        if !c.value.is_finite() {
            diags.push(Diagnostic::new(
                format!("rescale coefficient {} is not finite", num(c.value)),
                c.span,
                "expected a finite number",
            ));
            ok = false;
        }
    }
    let coeffs: Vec<f64> = list.value.iter().map(|c| c.value).collect();
    if ok {
        Polynomial::new(&coeffs)
    } else {
        None
    }
}
