//! The model, sampler and calibration settings of a plan: what the
//! schedule says, completed with the model family's defaults, and checked.

use std::path::Path;

use tcc_core::{
    CalibMethod, CalibrationSpec, CfgOrder, ModelFamily, ModelShape, Pooling, PriorKind,
    SamplerKind, SamplerSpec, Selection,
};
use tcc_schedule::eval::eval_selector;
use tcc_schedule::{
    CalibrationSection, Diagnostic, Diagnostics, GuidedChannels, IndexKind, ModelSection,
    ModelSource, SamplerSection, Span, Spanned,
};

use crate::plan::Action;
use crate::render::num;

/// The model's shape and the resolved weights path, if any. A `path`
/// model without `weights` takes its weights from the model directory.
pub(super) fn resolve_model(
    section: &Spanned<ModelSection>,
    base_dir: &Path,
) -> Result<(ModelShape, Option<String>), Diagnostics> {
    let m = &section.value;
    let resolve = |p: &str| base_dir.join(p).display().to_string();
    let weights = m.weights.as_ref().map(|w| resolve(&w.value));
    match &m.source.value {
        ModelSource::Preset(name) => match ModelShape::preset(name) {
            Some(shape) => Ok((shape, weights)),
            None => Err(unknown_model(name, m.source.span).into()),
        },
        ModelSource::Path(path) => {
            let dir = base_dir.join(path);
            match super::model_dir::shape_from_dir(&dir, path) {
                Ok(shape) => Ok((shape, weights.or_else(|| Some(resolve(path))))),
                Err(e) => {
                    let d = Diagnostic::new(
                        format!("cannot read the model at `{path}`"),
                        m.source.span,
                        e.message,
                    )
                    .with_note(format!("looked at {}", e.file.display()));
                    // This crate does no network I/O: the `tcc` command
                    // downloads `hf:` sources and compiles the local copy.
                    Err(if path.starts_with("hf:") {
                        d.with_help("`hf:ORG/NAME` sources are downloaded by the `tcc` command before it compiles; compile the downloaded folder here")
                    } else {
                        d
                    }
                    .into())
                }
            }
        }
    }
}

fn unknown_model(name: &str, span: Span) -> Diagnostic {
    let d = Diagnostic::new(
        format!("unknown model `{name}`"),
        span,
        "not a built-in model",
    )
    .with_note(format!(
        "built-in models: {}; or write `path = \"...\"` for a diffusers model directory",
        ModelShape::PRESETS.join(", ")
    ));
    let close = ModelShape::PRESETS
        .iter()
        .find(|p| p.contains(name) || name.contains(*p));
    match close {
        Some(p) if !name.is_empty() => d.with_help(format!("did you mean `{p}`?")),
        _ => d,
    }
}

/// The family's defaults: DiT samples with DDIM, `[cond; uncond]` batches,
/// and (for the paper's learned-sigma latent models, as DiT's official
/// sampler does) guides only the first 3 of the 4 latent channels; models
/// without learned sigma (`tiny`, `shapes160`) guide every channel.
/// PixArt-α with DPM-Solver++,
/// `[uncond; cond]` batches and guidance 4.5 on all channels.
pub(super) fn default_sampler(model: &ModelShape) -> SamplerSpec {
    let base = SamplerSpec::default();
    match model.family {
        ModelFamily::Dit => SamplerSpec {
            kind: SamplerKind::Ddim,
            steps: 20,
            guidance_scale: 1.5,
            cfg_order: CfgOrder::CondFirst,
            guided_channels: (model.in_channels == 4 && model.out_channels == 8).then_some(3),
            ..base
        },
        ModelFamily::Pixart => SamplerSpec {
            kind: SamplerKind::DpmSolverPp,
            steps: 20,
            guidance_scale: 4.5,
            cfg_order: CfgOrder::UncondFirst,
            guided_channels: None,
            ..base
        },
    }
}

pub(super) fn resolve_sampler(
    section: Option<&Spanned<SamplerSection>>,
    model: &ModelShape,
) -> Result<SamplerSpec, Diagnostics> {
    let mut spec = default_sampler(model);
    let Some(section) = section else {
        return Ok(spec);
    };
    let s = &section.value;
    let mut diags = Diagnostics::new();
    if let Some(k) = &s.kind {
        spec.kind = k.value;
    }
    if let Some(n) = &s.steps {
        let max = spec.train_timesteps as u64;
        if n.value == 0 || n.value > max {
            diags.push(Diagnostic::new(
                format!("{} sampling steps", n.value),
                n.span,
                format!("expected 1 to {max} (the model's training timesteps)"),
            ));
        } else {
            spec.steps = n.value as usize;
        }
    }
    if let Some(g) = &s.guidance {
        if !g.value.is_finite() {
            diags.push(not_finite("guidance scale", g));
        } else if !(0.0..=MAX_GUIDANCE).contains(&g.value) {
            diags.push(Diagnostic::new(
                format!("guidance scale {} is out of range", num(g.value)),
                g.span,
                format!("expected a number from 0 to {MAX_GUIDANCE}"),
            ));
        } else {
            spec.guidance_scale = g.value;
        }
    }
    if let Some(e) = &s.eta {
        if spec.kind != SamplerKind::Ddim {
            diags.push(
                Diagnostic::new(
                    format!("`eta` given for the {} sampler", spec.kind.as_str()),
                    e.span,
                    "only DDIM has an eta",
                )
                .with_help("remove `eta`, or use kind = \"ddim\""),
            );
        } else if !(e.value.is_finite() && (0.0..=1.0).contains(&e.value)) {
            diags.push(Diagnostic::new(
                format!("eta = {} is out of range", num(e.value)),
                e.span,
                "expected a number from 0 (deterministic) to 1 (DDPM-like)",
            ));
        } else {
            spec.eta = e.value;
        }
    }
    if let Some(o) = &s.cfg_order {
        spec.cfg_order = o.value;
    }
    if let Some(g) = &s.guided_channels {
        spec.guided_channels = match g.value {
            GuidedChannels::All => None,
            GuidedChannels::First(n) if n >= 1 && n as u128 <= model.in_channels as u128 => {
                Some(n as usize)
            }
            GuidedChannels::First(n) => {
                diags.push(Diagnostic::new(
                    format!("{n} guided channels"),
                    g.span,
                    format!(
                        "model `{}` has {} input channels",
                        model.name, model.in_channels
                    ),
                ));
                None
            }
        };
    }
    diags.into_result(spec)
}

fn not_finite(what: &str, v: &Spanned<f64>) -> Diagnostic {
    Diagnostic::new(
        format!("{what} is not a finite number"),
        v.span,
        "expected a finite number",
    )
}

/// The calibration settings, and the priors marked on the reuses of the
/// calibrated steps. A `[calibration]` section defaults to TCC; its `steps`
/// default to every reuse step. With `method = "none"` the steps are still
/// checked but nothing is calibrated.
pub(super) fn resolve_calibration(
    section: Option<&Spanned<CalibrationSection>>,
    actions: &mut [Vec<Vec<Action>>],
) -> Result<CalibrationSpec, Diagnostics> {
    let mut spec = CalibrationSpec::default();
    let Some(section) = section else {
        return Ok(spec);
    };
    let c = &section.value;
    let mut diags = Diagnostics::new();
    spec.method = c.method.as_ref().map_or(CalibMethod::Tcc, |m| m.value);
    if let Some(m) = &c.mode {
        spec.mode = m.value;
    }
    if let Some(a) = &c.alpha {
        if !a.value.is_finite() {
            diags.push(not_finite("alpha", a));
        } else if !(0.0..=MAX_ALPHA).contains(&a.value) {
            diags.push(Diagnostic::new(
                format!("alpha {} is out of range", num(a.value)),
                a.span,
                format!("expected a blend from 0 (no prior) to {MAX_ALPHA}"),
            ));
        } else {
            spec.alpha = a.value;
        }
    }
    if let Some(p) = &c.prior {
        spec.prior = p.value;
    }
    if let Some(p) = &c.pooling {
        spec.pooling = p.value;
    }
    if let Some(h) = &c.pooled_half {
        spec.pooled_half = h.value;
    }
    if let Some(n) = &c.samples {
        if n.value == 0 {
            diags.push(Diagnostic::new(
                "no calibration samples",
                n.span,
                "expected at least 1",
            ));
        } else if n.value > MAX_CALIBRATION_SAMPLES {
            diags.push(Diagnostic::new(
                "too many calibration samples",
                n.span,
                format!("expected at most {MAX_CALIBRATION_SAMPLES}"),
            ));
        } else {
            spec.samples = n.value as usize;
        }
    }
    if let Some(s) = &c.seed {
        spec.seed = s.value;
    }
    resolve_priors(c, &mut spec, &mut diags);

    // A partial compute reuses its stale rows: a prior corrects those.
    let has_reuse = |row: &Vec<Vec<Action>>| {
        row.iter()
            .flatten()
            .any(|a| matches!(a, Action::Reuse { .. } | Action::Partial { .. }))
    };
    let steps: Vec<usize> = match &c.steps {
        Some(sel) => match eval_selector(sel, IndexKind::Step, actions.len()) {
            Ok(picked) => {
                let picked: Vec<usize> = (0..actions.len()).filter(|&s| picked[s]).collect();
                let bad: Vec<usize> = picked
                    .iter()
                    .copied()
                    .filter(|&s| !has_reuse(&actions[s]))
                    .collect();
                if !bad.is_empty() {
                    diags.push(not_reuse_steps(&bad, actions, sel.span));
                }
                picked
            }
            Err(d) => {
                diags.push(d);
                Vec::new()
            }
        },
        None => (0..actions.len())
            .filter(|&s| has_reuse(&actions[s]))
            .collect(),
    };
    if spec.method == CalibMethod::Tcc && c.steps.is_none() && steps.is_empty() {
        let span = c.method.as_ref().map_or(section.span, |m| m.span);
        diags.push(
            Diagnostic::new(
                "nothing to calibrate",
                span,
                "TCC calibrates reuse steps, and this plan reuses nothing",
            )
            .with_help("add a `[[cache]]` rule that reuses something, or set method = \"none\""),
        );
    }
    if !diags.is_empty() {
        return diags.into_result(spec);
    }
    if spec.method == CalibMethod::Tcc {
        for &s in &steps {
            for a in actions[s].iter_mut().flatten() {
                if let Action::Reuse { prior, .. } | Action::Partial { prior, .. } = a {
                    *prior = true;
                }
            }
        }
        spec.steps = steps;
    }
    Ok(spec)
}

fn not_reuse_steps(bad: &[usize], actions: &[Vec<Vec<Action>>], span: Span) -> Diagnostic {
    let list = bad
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (what, rest) = if bad.len() == 1 {
        (format!("step {list}"), "is not a reuse step")
    } else {
        (format!("steps {list}"), "are not reuse steps")
    };
    let first = bad[0];
    let why = if actions[first].iter().flatten().all(|a| a.is_compute()) {
        format!("step {first} computes every branch of every block")
    } else {
        format!("step {first} only reuses block-range deltas, which take no prior")
    };
    Diagnostic::new(format!("calibration {what} {rest}"), span, why)
        .with_help("TCC priors correct reused branch outputs: pick steps where something is reused")
}

/// The prior families, their hyperparameters and the validation set; checks
/// that the combination can be fitted before any work starts.
fn resolve_priors(c: &CalibrationSection, spec: &mut CalibrationSpec, diags: &mut Diagnostics) {
    if let Some(s) = &c.select {
        spec.select = s.value;
    }
    if let Some(list) = &c.candidates {
        let mut kinds: Vec<PriorKind> = Vec::new();
        for k in &list.value {
            if kinds.contains(&k.value) {
                diags.push(Diagnostic::new(
                    format!("prior kind \"{}\" is listed twice", k.value),
                    k.span,
                    "already a candidate",
                ));
            }
            kinds.push(k.value);
        }
        spec.candidates = kinds;
        if spec.select != Selection::Validated {
            diags.push(
                Diagnostic::new(
                    "candidates without validated selection",
                    list.span,
                    "only `select = \"validated\"` chooses among candidates",
                )
                .with_help("add `select = \"validated\"`, or name one kind with `prior`"),
            );
        }
    }
    let finite_list = |what: &str,
                       list: &Spanned<Vec<Spanned<f64>>>,
                       ok: &dyn Fn(f64) -> bool,
                       expected: &str,
                       diags: &mut Diagnostics| {
        let mut out = Vec::new();
        for x in &list.value {
            if !x.value.is_finite() || !ok(x.value) {
                diags.push(Diagnostic::new(
                    format!("{what} {} is out of range", num(x.value)),
                    x.span,
                    expected.to_string(),
                ));
            } else {
                out.push(x.value);
            }
        }
        out
    };
    if let Some(list) = &c.alphas {
        spec.alphas = finite_list(
            "alpha",
            list,
            &|a| a > 0.0 && a <= MAX_ALPHA,
            "expected a blend in (0, 4]; 0 (no prior) is always tried",
            diags,
        );
        if spec.select != Selection::Validated {
            diags.push(
                Diagnostic::new(
                    "alphas without validated selection",
                    list.span,
                    "only `select = \"validated\"` chooses among blends",
                )
                .with_help("add `select = \"validated\"`, or give one blend with `alpha`"),
            );
        }
    }
    if let Some(list) = &c.ridge {
        spec.ridge = finite_list(
            "ridge",
            list,
            &|g| (0.0..=1e6).contains(&g),
            "expected a strength in [0, 1e6] (λ = ridge · tr(Cov_B) / D)",
            diags,
        );
    }
    if let Some(r) = &c.rank {
        if r.value == 0 || r.value > 65_536 {
            diags.push(Diagnostic::new(
                "lowrank rank out of range",
                r.span,
                "expected 1 to 65536 (it is capped at the branch width)",
            ));
        } else {
            spec.rank = Some(r.value as usize);
        }
    }
    if let Some(n) = &c.validation_samples {
        if n.value > MAX_CALIBRATION_SAMPLES {
            diags.push(Diagnostic::new(
                "too many validation samples",
                n.span,
                format!("expected at most {MAX_CALIBRATION_SAMPLES}"),
            ));
        } else {
            spec.validation_samples = Some(n.value as usize);
        }
    }
    if let Some(s) = &c.validation_seed {
        spec.validation_seed = Some(s.value);
    }
    if spec.validation_seed() == spec.seed {
        let span = c
            .validation_seed
            .as_ref()
            .map(|s| s.span)
            .or(c.seed.as_ref().map(|s| s.span));
        if let Some(span) = span {
            diags.push(Diagnostic::new(
                "the validation seed is the calibration seed",
                span,
                "validation samples must be held out from calibration",
            ));
        }
    }
    let kinds = spec.kinds();
    if spec.pooling == Pooling::Conditions {
        if let Some(k) = kinds.iter().find(|k| !k.is_similarity()) {
            let span = c
                .pooling
                .as_ref()
                .map_or_else(|| c.prior.as_ref().map(|p| p.span), |p| Some(p.span));
            if let Some(span) = span {
                diags.push(
                    Diagnostic::new(
                        format!("prior \"{k}\" cannot use `conditions` pooling"),
                        span,
                        "per-token means are kept only by procrustes, scale-shift and shift",
                    )
                    .with_help("use pooling = \"none\" (every token a row) or \"samples\""),
                );
            }
        }
    }
    if spec.validation_chooses() && spec.validation_samples() == 0 {
        let span = c
            .validation_samples
            .as_ref()
            .map(|n| n.span)
            .or(c.select.as_ref().map(|s| s.span))
            .or(c.prior.as_ref().map(|p| p.span));
        if let Some(span) = span {
            diags.push(
                Diagnostic::new(
                    "nothing to validate on",
                    span,
                    "validated selection (or choosing among several ridge strengths) needs validation samples",
                )
                .with_help("set validation-samples to 1 or more, or give a single `ridge` value"),
            );
        }
    }
}

/// The most calibration or validation samples a schedule may ask for: far
/// beyond the paper's 100 000 latents, far below what would overflow a
/// buffer size.
pub const MAX_CALIBRATION_SAMPLES: u64 = 100_000_000;

/// The largest guidance scale: far beyond the 1.5 to 20 that models are
/// sampled with, far below what makes f32 latents overflow.
pub const MAX_GUIDANCE: f64 = 1000.0;

/// The largest blend of a prior (the paper's presets use up to 1.75).
pub const MAX_ALPHA: f64 = 4.0;
