//! The model, sampler and calibration settings of a plan: what the
//! schedule says, completed with the model family's defaults, and checked.

use std::path::Path;

use tcc_core::{
    CalibMethod, CalibrationSpec, CfgOrder, ModelFamily, ModelShape, SamplerKind, SamplerSpec,
};
use tcc_schedule::eval::eval_selector;
use tcc_schedule::{
    CalibrationSection, Diagnostic, Diagnostics, GuidedChannels, IndexKind, ModelSection,
    ModelSource, SamplerSection, Span, Spanned,
};

use crate::plan::Action;

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
        if g.value.is_finite() {
            spec.guidance_scale = g.value;
        } else {
            diags.push(not_finite("guidance scale", g));
        }
    }
    if let Some(e) = &s.eta {
        if spec.kind != SamplerKind::Ddim {
            diags.push(
                Diagnostic::new(
                    format!("`eta` given for the {} sampler", spec.kind.name()),
                    e.span,
                    "only DDIM has an eta",
                )
                .with_help("remove `eta`, or use kind = \"ddim\""),
            );
        } else if !(e.value.is_finite() && e.value >= 0.0) {
            diags.push(Diagnostic::new(
                format!("eta = {}", e.value),
                e.span,
                "expected a finite number >= 0",
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
        if a.value.is_finite() {
            spec.alpha = a.value;
        } else {
            diags.push(not_finite("alpha", a));
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
        } else {
            spec.samples = n.value as usize;
        }
    }
    if let Some(s) = &c.seed {
        spec.seed = s.value;
    }

    let has_reuse = |row: &Vec<Vec<Action>>| {
        row.iter()
            .flatten()
            .any(|a| matches!(a, Action::Reuse { .. }))
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
                if let Action::Reuse { prior, .. } = a {
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
