//! The plan executor: runs a compiled [`Plan`] over a [`BlockModel`] and a
//! sampler, one step at a time.
//!
//! At every step and for every block it computes the adaLN modulation (always:
//! it is cheap and depends on the timestep), then per branch does what the
//! plan says: compute the branch, reuse the cached pre-gate output, or skip a
//! whole block range and add its cached residual delta. A [`Hooks`]
//! implementation sees every pre-gate branch output before it is gated and may
//! replace it; that is where calibration plugs in.
//!
//! A ToCa partial compute ([`tcc_plan::Action::Partial`]) runs the branch on
//! the fresh tokens only (chosen by [`toca`]'s scores) and writes their rows
//! into the cache entry; the other rows stay as cached. The hooks see the
//! merged output with the fresh tokens ([`BranchSite::fresh`]), so that a
//! prior can correct the stale rows only; what they return becomes the
//! cache entry.
//!
//! The cache keeps only what the plan reads later: an output is stored only if
//! a later step reuses it, and dropped after its last reader.
//!
//! A dynamic plan (one with a run-time policy) is run the same way, with
//! one decision per step ([`Decide`]) at the policy's probe point: after
//! block 0 (first-block cache: compute blocks 1.. or add their residual
//! delta from the last computed step) or before it (TeaCache: compute
//! every block or add the delta of all of them).

mod cache;
mod decide;
mod inputs;
mod teacache;
pub mod toca;
mod trajectory;

pub use cache::CacheLayout;
pub use decide::{
    policy_for, relative_change, Decide, Decision, FirstBlockCache, Probe, StepDecision, TeaCache,
};
pub use inputs::{Captions, Inputs};
pub use teacache::{teacache_changes, StepChange};
pub use trajectory::{BranchSite, Hooks, NoHooks, SampleBatch, Trajectory};

/// What kind of failure an [`ExecError`] is, for callers that must tell a
/// caller's mistake (exit status 2 in the `tcc` command) from a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The plan, model and batch do not fit together.
    Input,
    /// The trajectory diverged (non-finite latents).
    Numerics,
    /// A [`Hooks`] implementation failed.
    Hook,
    /// Anything else: the device, the sampler, an inconsistent plan.
    Internal,
}

/// Errors from the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "the plan is for `{plan}` ({plan_depth} blocks) but the model has {model_depth} blocks"
    )]
    DepthMismatch {
        plan: String,
        plan_depth: usize,
        model_depth: usize,
    },
    #[error("the plan's branches ({plan}) differ from the model's ({model})")]
    BranchMismatch { plan: String, model: String },
    /// The batch does not fit the plan (e.g. CFG without a null condition).
    #[error("{0}")]
    Input(String),
    #[error("step {step}, block {block}, {branch}: the plan reuses step {from}, but nothing from that step is cached (the plan is inconsistent)")]
    MissingCache {
        step: usize,
        block: usize,
        branch: tcc_core::Branch,
        from: usize,
    },
    #[error("the trajectory has already run all {0} steps")]
    Finished(usize),
    /// The latents after a step hold NaN or infinite values (or values so
    /// large that their sum overflows): whatever follows would be garbage.
    #[error("the latents are not finite after step {step} (of steps 0 to {last}): {detail}; the sampler diverged (guidance scale, priors or weights out of range?)")]
    NonFinite {
        step: usize,
        last: usize,
        detail: String,
    },
    /// What a hook returned, as it returned it.
    #[error(transparent)]
    Hook(Box<ExecError>),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Sampler(#[from] tcc_sampler::SamplerError),
}

impl ExecError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::DepthMismatch { .. }
            | ExecError::BranchMismatch { .. }
            | ExecError::Input(_) => ErrorKind::Input,
            ExecError::NonFinite { .. } => ErrorKind::Numerics,
            ExecError::Hook(_) => ErrorKind::Hook,
            ExecError::MissingCache { .. }
            | ExecError::Finished(_)
            | ExecError::Candle(_)
            | ExecError::Sampler(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, ExecError>;
