//! The `.sched` schedule language.
//!
//! A schedule is a TOML-shaped file with the sections `[model]`,
//! `[sampler]`, `[[cache]]` (any number of rules, applied in order),
//! `[limits]` and `[calibration]`. Fields that select steps, blocks or
//! branches are written in a small selector language parsed with pest
//! (`0..28`, `12..=18`, `1, 3, 5`, `every 2.5`, `except every 3`,
//! `step % 2 == 0`, `attn, mlp`, ...). See `docs/schedule-language.md`.
//!
//! [`parse`] turns text into a [`Schedule`] (syntax, schema and types; every
//! error carries the span of the offending text); [`print`] writes a
//! schedule back in canonical form. What a schedule means for a given model
//! (which cells are computed, what each reuse reads) is decided by the plan
//! compiler in `tcc-plan`, using [`Selector`] evaluation from [`eval`].

mod ast;
mod diag;
pub mod eval;
mod parse;
mod print;
mod selector;
mod span;

pub use ast::{
    BranchItem, BranchSelector, CacheRule, CalibrationSection, Cell, CmpOp, DynamicSection,
    GuidedChannels, IndexKind, LimitsSection, Mask, ModelSection, ModelSource, RuleAction,
    SamplerSection, Schedule, SelNode, Selector, TableRow, TocaSection,
};
pub use diag::{Diagnostic, Diagnostics, Location};
pub use eval::{mask_preset, MASK_PRESETS};
pub use span::{Span, Spanned};

/// Parses a `.sched` file. `source_name` is kept in the schedule (and the
/// plan) for display; every error points into `text`.
pub fn parse(source_name: &str, text: &str) -> Result<Schedule, Diagnostics> {
    parse::parse_schedule(source_name, text)
}

/// Writes a schedule in canonical form: fixed section and key order, no
/// comments. `parse(name, &print(s)) == s` for every schedule `s`.
pub fn print(schedule: &Schedule) -> String {
    print::print_schedule(schedule)
}
