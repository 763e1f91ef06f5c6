use std::path::PathBuf;

/// Everything that can go wrong in this crate. Messages name the quantity
/// (and file) involved so a caller can pass them straight to the user.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Two inputs that must have the same length do not.
    #[error("{what}: length mismatch, expected {expected}, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A statistic needs more samples than it has.
    #[error("{what}: needs at least {needed} samples, has {have}")]
    TooFewSamples {
        what: &'static str,
        needed: u64,
        have: u64,
    },
    /// An input or result is NaN or infinite.
    #[error("{what}: contains a non-finite value")]
    NonFinite { what: &'static str },
    /// A symmetric eigendecomposition did not converge.
    #[error("{what}: eigendecomposition did not converge")]
    Eigen { what: &'static str },
    /// Other invalid input.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a statistics file failed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, MetricsError>;

/// Checks that `got == expected`.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(MetricsError::Length {
            what,
            expected,
            got,
        })
    }
}
