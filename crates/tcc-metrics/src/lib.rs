//! Evaluation metrics for tcc, in f64, on plain slices (row-major
//! matrices); no tensor library.
//!
//! - [`FeatureStats`]: mergeable feature sums (n, Σx, Σxxᵀ) giving mean and
//!   covariance; saved as safetensors. [`frechet_distance`] between two
//!   Gaussians (FID formula, matrix square root via faer's symmetric
//!   eigendecomposition).
//! - [`Accuracy`]: class accuracy, overall and per class.
//! - [`ErrorStats`]: per-sample error against full computation (relative
//!   L2, PSNR), summarised as mean ± std.
//! - [`BranchDistances`]: per (step, branch, layer) distances between a
//!   cached run's branch outputs and the reference run's.
//! - [`wilcoxon_signed_rank`]: paired two-sided signed-rank test;
//!   [`Summary`] / [`mean_std`]: mean ± std.
//!
//! Every accumulator merges exactly (sums and counts), so an evaluation can
//! be split across shards. See `docs/metrics.md`.

mod accuracy;
mod branch;
mod compare;
mod error;
mod features;
mod frechet;
mod summary;
mod wilcoxon;

pub use accuracy::{argmax_rows, Accuracy};
pub use branch::{BranchDistances, BranchKey, DistanceSums};
pub use compare::{cosine, psnr, rel_l2, DataRange, ErrorStats};
pub use error::{MetricsError, Result};
pub use features::{FeatureStats, FEATURE_STATS_FORMAT};
pub use frechet::{frechet_distance, trace_sqrt_product};
pub use summary::{format_mean_std, mean_std, Summary};
pub use wilcoxon::{wilcoxon_signed_rank, Wilcoxon, WilcoxonMethod, EXACT_MAX_N};
