//! Evaluation of cached and calibrated plans against full computation.
//!
//! [`evaluate`] runs, for every sample batch of every seed set, the full
//! computation and each variant (cache, cache + priors, ...) side by side,
//! one step at a time. It measures what SPEC's `eval` asks for:
//!
//! - per sample: relative L2 and PSNR of the final latents against full
//!   computation from the same noise and condition;
//! - per seed set: Fréchet distance and class accuracy through a
//!   [`Scorer`] (the testbed's classifier; none for latent models), wall time;
//! - per step: the deviation of each variant's latents from the reference
//!   trajectory, and at reuse steps the distance between the branch output
//!   the variant used (after its prior) and the one full computation
//!   computed: the online counterpart of `tcc calibrate`'s table.
//!
//! [`accumulate`] returns what it measured as mergeable sums
//! ([`EvalSums`]): shards of an evaluation (`tcc eval --shard I/N`) add
//! them up and [`EvalSums::report`] makes the same [`Report`].
//!
//! [`Entry`] and [`lineup`] make the variants and paired tests of one or
//! several schedules; [`oracle_rows`] compares each variant's priors with
//! the best prior fitted on the evaluated samples themselves.
//!
//! For a dynamic plan (a run-time policy) every variant also counts what
//! its policy decided ([`DecisionSums`]: per step the samples that computed
//! it, and the MACs that ran against full computation's). [`sweep`] runs
//! one schedule at several values of one setting ([`SweepParam`]: a
//! policy's threshold, ToCa's fresh ratio, FORA's refresh interval) as the
//! variants of one evaluation.
//!
//! Priors are passed in as fitted sets: this crate does not know how they
//! are fitted, and the model is any [`BlockModel`].

mod decisions;
mod lineup;
mod plot;
mod run;
mod sweep;

pub use decisions::{realised_macs, DecisionReport, DecisionSums};
pub use lineup::{
    calibration_seeds, lineup, oracle_rows, prior_terms, Entry, Lineup, OracleRow, PriorTerms,
    PriorsInfo,
};
pub use plot::{plot_deviation, Series};
pub use run::{
    accumulate, evaluate, held_out, EvalError, EvalSums, PairedTest, Progress, Report, Scorer,
    SeedSet, SetMetrics, SetSums, StepDistance, Variant, VariantReport, VariantSums,
};
pub use sweep::{
    parse_values, sweep, FullRow, Point, Stat, Sweep, SweepParam, SweepRow, MAX_SWEEP_VALUES,
};
