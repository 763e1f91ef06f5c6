//! Output streams, and errors with the exit status that says what failed.

use std::io::{self, Write};

use tcc_plan::CompileError;

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

impl From<tcc_exec::ExecError> for CliError {
    /// A plan, model and batch that do not fit are the input's fault (exit
    /// status 2); anything else is a failure.
    fn from(e: tcc_exec::ExecError) -> CliError {
        match e.kind() {
            tcc_exec::ErrorKind::Input => CliError::input(e),
            _ => CliError::Failure(e.to_string()),
        }
    }
}

impl From<tcc_calib::CalibError> for CliError {
    fn from(e: tcc_calib::CalibError) -> CliError {
        if e.is_input() {
            CliError::input(e)
        } else {
            CliError::Failure(e.to_string())
        }
    }
}

impl From<tcc_eval::EvalError> for CliError {
    fn from(e: tcc_eval::EvalError) -> CliError {
        match e {
            tcc_eval::EvalError::Input(_) => CliError::input(e),
            tcc_eval::EvalError::Exec(e) => e.into(),
            tcc_eval::EvalError::Calib(e) if e.is_input() => CliError::input(e),
            e => CliError::Failure(e.to_string()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tcc_calib::CalibError;
    use tcc_exec::ExecError;

    /// Input errors of the executor exit with 2 whichever crate passes them
    /// up; numerical failures with 1.
    #[test]
    fn input_errors_exit_2_through_every_layer() {
        let input = || ExecError::Input("no null condition".into());
        assert_eq!(CliError::from(input()).exit_code(), 2);
        assert_eq!(CliError::from(CalibError::Exec(input())).exit_code(), 2);
        assert_eq!(
            CliError::from(tcc_eval::EvalError::Exec(input())).exit_code(),
            2
        );
        let diverged = ExecError::NonFinite {
            step: 1,
            last: 3,
            detail: "NaN".into(),
        };
        assert_eq!(CliError::from(CalibError::Exec(diverged)).exit_code(), 1);
        assert_eq!(
            CliError::from(CalibError::Numerics("SVD".into())).exit_code(),
            1
        );
        assert_eq!(
            CliError::from(CalibError::Binding("other plan".into())).exit_code(),
            2
        );
    }
}
