//! The embedded default testbed.
//!
//! The data split is fixed by seed: the tiny DiT and the classifier train on
//! `Dataset::new(TRAIN_SEED)`; the classifier's held-out accuracy and the
//! reference feature statistics use `Dataset::new(HELDOUT_SEED)`.
//!
//! - [`Classifier`]: a small CNN trained on the shapes (`examples/train_classifier.rs`);
//!   its 128-d globally pooled features are the feature space of the
//!   testbed's Fréchet distance (the role Inception's pool3 plays for FID).
//! - [`reference_stats`]: feature statistics of real held-out images
//!   (`examples/reference_stats.rs`).
//!
//! - [`tiny_dit`]: the default model itself, a 6-block DiT trained on the
//!   shapes (`tools/train/train_tiny_dit.py`).
//!
//! All three are embedded in the binary, so they work from any directory.

mod classifier;
mod error;
mod reference;
mod tiny_dit;

pub use classifier::{Classifier, CLASSIFIER_SEED, FEATURE_DIM};
pub use error::{Result, TestbedError};
pub use reference::{
    reference_stats, reference_stats_with_metadata, stats_from_bytes, REFERENCE_START,
};
pub use tiny_dit::{tiny_dit, TINY_DIT_CONFIG, TINY_DIT_TRAINING};

pub use tcc_data::{HELDOUT_SEED, TRAIN_SEED};
