//! What every subcommand shares: loading a schedule into a plan, typed
//! flags over tcc-core's settings enums, default output names.

use std::io::Write;
use std::path::{Path, PathBuf};

use tcc_plan::Plan;
use tcc_schedule::{ModelSource, Schedule, Spanned};

use crate::error::CliError;
use crate::hub::{self, HubSource, Need};

/// A clap value parser for a settings enum of tcc-core: its spellings are
/// the possible values (listed in `--help`), and the value is the variant.
pub fn spelled<T: Copy + Send + Sync + 'static>(
    all: &'static [(&'static str, T)],
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(all.iter().map(|(n, _)| *n)).map(move |name| {
        all.iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
            .expect("clap accepts only the possible values")
    })
}

/// Reads and compiles a schedule file. The plan's `source` is the path as
/// given on the command line, so printed plans name it the way the user
/// wrote it. `hf:` model sources in the schedule are fetched (their configs
/// only; progress on stderr), see [`load_plan_with`].
pub fn load_plan(path: &Path) -> Result<Plan, CliError> {
    load_plan_with(path, None, None, Need::Config, &mut std::io::stderr())
}

/// [`load_plan`] with the command line's overrides: `model` (`--model
/// SOURCE`) replaces the schedule's model location, `steps` (`--steps`) the
/// sampler's number of steps. `need` says which files of an `hf:`
/// repository the command reads; downloads report on `err`.
///
/// Model sources, on the command line or in the schedule's `path` /
/// `weights` strings, are local paths or `hf:ORG/NAME[@REVISION]`. An `hf:`
/// source is downloaded into the Hugging Face cache and its snapshot folder
/// takes its place before the schedule is compiled, so the plan crate only
/// ever sees local folders. `--model DIR` or `--model hf:...` stands for
/// `path = SOURCE` with the section's `weights` dropped; `--model FILE` (a
/// checkpoint) for `weights = FILE`, the section's `name`/`path` still
/// giving the shape. The model's name (which the plan hash and priors
/// files record) is the source as written, not the folder it resolved to.
pub(crate) fn load_plan_with(
    path: &Path,
    model: Option<&str>,
    steps: Option<u64>,
    need: Need,
    err: &mut dyn Write,
) -> Result<Plan, CliError> {
    load_plan_edited(path, model, steps, need, err, &mut |_| Ok(()))
}

/// [`load_plan_with`] with `edit` applied to the parsed schedule after the
/// command line's overrides and before it is compiled (`tcc sweep` sets
/// the swept value there).
pub(crate) fn load_plan_edited(
    path: &Path,
    model: Option<&str>,
    steps: Option<u64>,
    need: Need,
    err: &mut dyn Write,
    edit: &mut dyn FnMut(&mut Schedule) -> Result<(), CliError>,
) -> Result<Plan, CliError> {
    if let Some(steps) = steps {
        // Checked here: the compiler's diagnostic would point into the
        // schedule, which does not hold this number.
        let max = tcc_core::SamplerSpec::default().train_timesteps as u64;
        if steps == 0 || steps > max {
            return Err(CliError::input(format!(
                "--steps {steps} is out of range: expected 1 to {max} (the model's training timesteps)"
            )));
        }
    }
    let mut failed = None;
    let mut name = None;
    let compiled = tcc_plan::compile_file_with(path, |schedule| {
        if let Some(steps) = steps {
            let sampler = schedule
                .sampler
                .get_or_insert_with(|| Spanned::unplaced(Default::default()));
            sampler.value.steps = Some(Spanned::unplaced(steps));
        }
        match resolve_sources(schedule, path, model, need, err) {
            Ok(n) => name = n,
            Err(e) => failed = Some(e),
        }
        if failed.is_none() {
            failed = edit(schedule).err();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let mut plan = compiled?;
    plan.source = path.display().to_string();
    if let Some(name) = name {
        plan.model.name = name;
    }
    Ok(plan)
}

/// Replaces the model location of `schedule` by `model`, and `hf:` sources
/// by their local folders. Returns the model's name when its `path` was
/// replaced: the source as written.
fn resolve_sources(
    schedule: &mut Schedule,
    file: &Path,
    model: Option<&str>,
    need: Need,
    err: &mut dyn Write,
) -> Result<Option<String>, CliError> {
    let section = &mut schedule.model.value;
    let span = section.source.span;
    let local = |dir: PathBuf| -> Result<String, CliError> {
        dir.to_str()
            .map(String::from)
            .ok_or_else(|| CliError::input(format!("{}: not a UTF-8 path", dir.display())))
    };
    if let Some(text) = model {
        let dir = match HubSource::parse(text) {
            Some(Ok(src)) => Some(hub::resolve(&src, need, err)?),
            Some(Err(e)) => return Err(CliError::input(format!("--model {e}"))),
            None => {
                // Relative to the working directory, as command-line paths are.
                let p = std::path::absolute(text)
                    .map_err(|e| CliError::input(format!("--model {text}: {e}")))?;
                let meta = std::fs::metadata(&p)
                    .map_err(|e| CliError::input(format!("--model {text}: {e}")))?;
                if meta.is_dir() {
                    Some(p)
                } else {
                    // A checkpoint: the weights only, the shape as before.
                    let w_span = section.weights.as_ref().map_or(span, |w| w.span);
                    section.weights = Some(Spanned::new(local(p)?, w_span));
                    None
                }
            }
        };
        if let Some(dir) = dir {
            section.source = Spanned::new(ModelSource::Path(local(dir)?), span);
            section.weights = None;
            return Ok(Some(text.to_string()));
        }
    }
    let in_file = |e: String| CliError::input(format!("{}: {e}", file.display()));
    let mut name = None;
    let mut resolved: Option<(String, String)> = None;
    let mut fetch = |text: &str| -> Result<String, CliError> {
        if let Some((from, to)) = &resolved {
            if from == text {
                return Ok(to.clone());
            }
        }
        let src = match HubSource::parse(text) {
            Some(Ok(src)) => src,
            Some(Err(e)) => return Err(in_file(e)),
            None => return Ok(text.to_string()),
        };
        // Say which schedule asked for it (`tcc check` takes several).
        let dir = hub::resolve(&src, need, err).map_err(|e| match e {
            CliError::Input(t) => CliError::Input(match t.strip_prefix("error: ") {
                Some(rest) => format!("error: {}: {rest}", file.display()),
                None => t,
            }),
            CliError::Failure(m) => CliError::Failure(format!("{}: {m}", file.display())),
            other => other,
        })?;
        let dir = local(dir)?;
        resolved = Some((text.to_string(), dir.clone()));
        Ok(dir)
    };
    if let ModelSource::Path(p) = &section.source.value {
        if p.starts_with("hf:") {
            name = Some(p.clone());
            section.source.value = ModelSource::Path(fetch(p)?);
        }
    }
    if let Some(w) = &mut section.weights {
        if w.value.starts_with("hf:") {
            w.value = fetch(&w.value)?;
        }
    }
    Ok(name)
}

/// The default output of a command run on schedule `file`: its file stem
/// with `suffix`, in the current directory (`fora3.sched` ->
/// `fora3.priors.safetensors`).
pub fn beside_cwd(file: &Path, suffix: &str) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "schedule".into());
    PathBuf::from(format!("{stem}.{suffix}"))
}
