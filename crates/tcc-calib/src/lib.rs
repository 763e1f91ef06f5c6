//! Trajectory-Consistent Calibration (TCC).
//!
//! Priors correct reused branch outputs: `corr = muA + s (B - muB) R`,
//! blended as `(1 - alpha) B + alpha corr`. [`PairStats`] (pooled rows) and
//! [`Moments`] (every token a row) hold the paired statistics of one site as
//! mergeable sums; [`fit_centered`] fits a prior of any family on them;
//! [`calibrate`] walks a plan, fits, and measures or chooses the priors on
//! validation samples; [`PriorSet::fit`] does it for a plan's own
//! calibration samples ([`CalibSamples`]) and binds the priors to the plan.

mod apply;
mod calibrator;
mod codec;
mod fit;
mod moments;
mod partial;
mod pooling;
mod priors;
mod select;
mod stats;
mod walk;

pub use apply::PriorHooks;
pub use calibrator::{check_validation, CalibSamples, PRIOR_DTYPE};
pub use fit::{fit, fit_centered, fit_with, residual, Centered, Fit, FoldedPrior, Hyper, Prior};
pub use moments::{blended_error, Moments};
pub use partial::{
    AllGather, Gathered, Local, Reduce, StatsFile, StatsMeta, StepStats, MAX_STATS_BYTES,
};
pub use pooling::{Pooler, SiteStats};
pub use priors::{PriorMeta, PriorSet, Site, MAX_PRIORS_BYTES};
pub use select::{choose, fit_candidates, Candidate, Choice};
pub use stats::{PairStats, Rows, Side};
pub use walk::{
    calibrate, calibrate_across, calibrated_sites, fit_merged, gather_one_shot, CalibBatch,
    Calibration, CostReport, FinalCheck, Progress, SiteChoice, StepReport, StepValidation,
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
    /// Settings or samples that cannot be calibrated (an empty shard,
    /// validation that cannot choose): the caller's to fix.
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed (the device, an allocation).
    #[error(transparent)]
    Tensor(candle_core::Error),
    /// The executor's error, as it reported it (its kind tells a caller's
    /// mistake from a failure).
    #[error(transparent)]
    Exec(#[from] tcc_exec::ExecError),
}

impl CalibError {
    /// The same error, saying at which site it happened.
    pub fn at(self, site: Site) -> CalibError {
        let at = |m: String| format!("{site}: {m}");
        match self {
            CalibError::Shape(m) => CalibError::Shape(at(m)),
            CalibError::NonFinite(m) => CalibError::NonFinite(at(m)),
            CalibError::Unpaired(m) => CalibError::Unpaired(at(m)),
            CalibError::Empty(m) => CalibError::Empty(at(m)),
            CalibError::Numerics(m) => CalibError::Numerics(at(m)),
            CalibError::Io(m) => CalibError::Io(at(m)),
            CalibError::Format(m) => CalibError::Format(at(m)),
            CalibError::Binding(m) => CalibError::Binding(at(m)),
            CalibError::Input(m) => CalibError::Input(at(m)),
            CalibError::Tensor(e) => CalibError::Tensor(e),
            CalibError::Exec(e) => CalibError::Exec(e),
        }
    }

    /// Whether the inputs are at fault (a file or batch that does not fit
    /// the plan), not the calibration: the `tcc` command exits with 2.
    pub fn is_input(&self) -> bool {
        match self {
            CalibError::Format(_) | CalibError::Binding(_) | CalibError::Input(_) => true,
            CalibError::Exec(e) => e.kind() == tcc_exec::ErrorKind::Input,
            _ => false,
        }
    }
}
