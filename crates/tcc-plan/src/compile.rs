//! Schedule -> plan: resolves the model and the sampler, applies the cache
//! rules in order, then the limits, links every reuse to the step it reads,
//! and marks the calibrated reuses. Every error points into the schedule.

mod dynamic;
mod grid;
mod model_dir;
#[cfg(test)]
mod proptests;
mod settings;
mod toca;

pub use settings::{MAX_ALPHA, MAX_CALIBRATION_SAMPLES, MAX_GUIDANCE};
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use tcc_schedule::{Diagnostics, Schedule};

use crate::plan::{Plan, StepPlan};

/// Why a schedule file did not compile.
#[derive(Debug)]
pub enum CompileError {
    /// The schedule file could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax or semantic errors, with the text they point into.
    Invalid {
        source_name: String,
        source_text: String,
        diagnostics: Diagnostics,
    },
}

impl CompileError {
    /// rustc-style text: `error: ...`, ` --> file:line:col`, the line and a
    /// caret under the offending text. No colours.
    pub fn render(&self) -> String {
        match self {
            CompileError::Io { path, source } => {
                format!("error: cannot read {}: {source}\n", path.display())
            }
            CompileError::Invalid {
                source_name,
                source_text,
                diagnostics,
            } => diagnostics.render(source_name, source_text),
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render().trim_end())
    }
}

impl std::error::Error for CompileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CompileError::Io { source, .. } => Some(source),
            CompileError::Invalid { diagnostics, .. } => Some(diagnostics),
        }
    }
}

/// The most bytes a schedule file may have: thousands of times what the
/// longest table a real plan needs takes.
pub const MAX_SCHEDULE_BYTES: u64 = 16 << 20;

/// Reads, parses and compiles a schedule file. Relative model and weights
/// paths are resolved against the file's directory.
pub fn compile_file(path: &Path) -> Result<Plan, CompileError> {
    compile_file_with(path, |_| {})
}

/// Like [`compile_file`], with the sampler's number of steps replaced by
/// `steps` (to evaluate a schedule at another step count than it names).
/// Step selectors of the schedule keep their meaning on the new count.
pub fn compile_file_with_steps(path: &Path, steps: u64) -> Result<Plan, CompileError> {
    compile_file_with(path, |schedule| {
        let sampler = schedule
            .sampler
            .get_or_insert_with(|| tcc_schedule::Spanned::unplaced(Default::default()));
        sampler.value.steps = Some(tcc_schedule::Spanned::unplaced(steps));
    })
}

/// Like [`compile_file`], with `edit` applied to the parsed schedule before
/// it is compiled: the way a caller overrides what a file says (the `tcc`
/// command's `--model` and `--steps`, its `hf:` model sources). Values the
/// edit inserts have no place in the file: give them [`Spanned::unplaced`]
/// or the span of what they replace, which diagnostics then point at.
///
/// [`Spanned::unplaced`]: tcc_schedule::Spanned::unplaced
pub fn compile_file_with(
    path: &Path,
    edit: impl FnOnce(&mut Schedule),
) -> Result<Plan, CompileError> {
    let text =
        tcc_fs::read_input_text(path, MAX_SCHEDULE_BYTES).map_err(|source| CompileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let name = path.display().to_string();
    let invalid = |diagnostics| CompileError::Invalid {
        source_name: name.clone(),
        source_text: text.clone(),
        diagnostics,
    };
    let mut schedule = tcc_schedule::parse(&name, &text).map_err(invalid)?;
    edit(&mut schedule);
    let base = path.parent().unwrap_or(Path::new(""));
    compile(&schedule, base).map_err(invalid)
}

/// Compiles a parsed schedule for its model. `base_dir` resolves relative
/// model and weights paths.
///
/// The model and the sampler are resolved first (family defaults for
/// whatever the schedule leaves out); then every `[[cache]]` rule is applied
/// in order, later rules overriding earlier ones, then the `[limits]`;
/// then each reuse is linked to the latest earlier step that computed its
/// (block, branch), and each delta reuse to the latest earlier step that
/// computed its whole block range; last, the reuses (and ToCa partial
/// computes) of the calibrated steps are marked with a prior. A `[dynamic]` policy is recorded as it is and
/// leaves the table full computation.
pub fn compile(schedule: &Schedule, base_dir: &Path) -> Result<Plan, Diagnostics> {
    let (model, weights) = settings::resolve_model(&schedule.model, base_dir)?;
    let sampler = settings::resolve_sampler(schedule.sampler.as_ref(), &model)?;
    let dynamic = dynamic::resolve_dynamic(schedule, sampler.steps, model.depth)?;
    let mut grid = grid::Grid::new(sampler.steps, &model);
    grid.apply_rules(&schedule.cache, &model)?;
    if let Some(limits) = &schedule.limits {
        grid.apply_limits(&limits.value)?;
    }
    let mut actions = grid.link()?;
    let toca = toca::resolve_toca(schedule.toca.as_ref(), &actions)?;
    let calibration = settings::resolve_calibration(schedule.calibration.as_ref(), &mut actions)?;
    toca::check_calibration(schedule.calibration.as_ref(), &calibration, &actions)?;
    let steps = sampler
        .timesteps()
        .into_iter()
        .zip(actions)
        .enumerate()
        .map(|(step, (timestep, actions))| StepPlan {
            step,
            timestep,
            actions,
        })
        .collect();
    Ok(Plan {
        source: schedule.source_name.clone(),
        weights,
        model,
        sampler,
        calibration,
        toca,
        steps,
        dynamic,
    })
}
