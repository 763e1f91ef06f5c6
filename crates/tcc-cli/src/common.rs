//! What every subcommand shares: output streams, errors with exit status,
//! and loading a schedule into a plan.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tcc_plan::{CompileError, Plan};

/// The streams a subcommand writes to: results on `out`, diagnostics and
/// progress on `err`.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

/// Why a subcommand failed, and the exit status that says so.
#[derive(Debug)]
pub enum CliError {
    /// Invalid input (exit status 2). The text is printed to stderr as is:
    /// rendered diagnostics, or one `error: ...` line.
    Input(String),
    /// The command line is inconsistent (exit status 2), reported with the
    /// usage line like clap's own errors.
    Usage(clap::Error),
    /// Anything else (exit status 1).
    Failure(String),
    /// stdout was closed early (`tcc plan --show x | head`): stop quietly.
    BrokenPipe,
}

impl CliError {
    /// One `error: ...` line for invalid input.
    pub fn input(message: impl std::fmt::Display) -> CliError {
        CliError::Input(format!("error: {message}\n"))
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) | CliError::Usage(_) => 2,
            CliError::Failure(_) => 1,
            CliError::BrokenPipe => 0,
        }
    }

    /// Prints the error to `io.err` and returns the exit status.
    pub fn report(self, io: &mut Io) -> u8 {
        let code = self.exit_code();
        let text = match self {
            CliError::Input(text) => text,
            CliError::Usage(e) => e.render().to_string(),
            CliError::Failure(message) => format!("error: {message}\n"),
            CliError::BrokenPipe => String::new(),
        };
        let _ = io.err.write_all(text.as_bytes());
        let _ = io.err.flush();
        code
    }
}

impl From<CompileError> for CliError {
    fn from(e: CompileError) -> CliError {
        CliError::Input(e.render())
    }
}

impl From<io::Error> for CliError {
    /// Errors writing the output.
    fn from(e: io::Error) -> CliError {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Failure(format!("cannot write the output: {e}"))
        }
    }
}

/// Reads and compiles a schedule file. The plan's `source` is the path as
/// given on the command line, so printed plans name it the way the user
/// wrote it.
pub fn load_plan(path: &Path) -> Result<Plan, CliError> {
    let mut plan = tcc_plan::compile_file(path)?;
    plan.source = path.display().to_string();
    Ok(plan)
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
