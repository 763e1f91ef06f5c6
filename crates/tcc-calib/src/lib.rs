//! Trajectory-Consistent Calibration (TCC).
//!
//! Priors correct reused branch outputs: `corr = muA + s (B - muB) R`,
//! blended as `(1 - alpha) B + alpha corr`. [`PairStats`] holds the paired
//! statistics of one site as mergeable sums; [`fit`] fits a prior on them.

mod apply;
mod fit;
mod priors;
mod stats;
mod walk;

pub use apply::PriorHooks;
pub use fit::{fit, residual, Fit, FoldedPrior, Prior};
pub use priors::{write_atomically, PriorMeta, PriorSet, Site};
pub use stats::{PairStats, Rows, Side};
pub use walk::{
    calibrate, calibrated_sites, CalibBatch, Calibration, CostReport, Pooler, Progress, StepReport,
};

/// Errors from calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite statistics: {0}")]
    NonFinite(String),
    #[error("unpaired statistics: {0}")]
    Unpaired(String),
    #[error("{0}")]
    Empty(String),
    #[error("numerical failure: {0}")]
    Numerics(String),
    #[error("{0}")]
    Io(String),
    #[error("bad priors file: {0}")]
    Format(String),
    #[error("{0}")]
    Binding(String),
}
