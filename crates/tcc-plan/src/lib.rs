//! Execution plans: what is computed and what is reused at every
//! (step, block, branch), what it costs, and which reuses carry a TCC prior.
//!
//! A plan is compiled from a [`tcc_schedule`] schedule and consumed by the
//! executor and the calibration pass. It holds no tensors.

mod compile;
mod plan;

pub use compile::{
    compile, compile_file, compile_file_with, compile_file_with_steps, CompileError, MAX_ALPHA,
    MAX_CALIBRATION_SAMPLES, MAX_GUIDANCE, MAX_SCHEDULE_BYTES,
};
pub use plan::{Action, Plan, StepPlan};
pub use tcc_core::{Branch, CalibrationSpec, DynamicPolicy, DynamicSpec, ModelShape, SamplerSpec};

mod cost;
mod diff;
mod dynamic;
mod emit;
mod hash;
mod render;

pub use cost::{human_macs, CostSummary, PlanCost, StepCost, UnitCosts};
pub use diff::{CellChange, PlanDiff, SettingChange};
pub use emit::{EmitError, Format, PlanDocument};
pub use hash::PlanHash;
