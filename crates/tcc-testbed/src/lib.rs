//! The embedded testbeds ([`Testbed`]): `tiny` (10 shape classes, RGB
//! 32x32, a 6-block DiT, the default model) and `shapes160` (160 classes,
//! grey 64x64 images as 4x32x32 Haar latents, a 12-block DiT of hidden
//! width 128: the paper's regime of at least as many classes as hidden
//! dimensions).
//!
//! The data split is fixed by seed: the DiTs and the classifiers train on
//! the data set of `TRAIN_SEED`; the classifiers' held-out accuracy and the
//! reference feature statistics use `HELDOUT_SEED`.
//!
//! - [`Classifier`]: a small CNN per testbed (`examples/train_classifier.rs`);
//!   its 128-d globally pooled features are the feature space of the
//!   testbed's Fréchet distance (the role Inception's pool3 plays for FID).
//! - [`reference_stats`]: feature statistics of real held-out inputs
//!   (`examples/reference_stats.rs`).
//! - [`embedded_dit`]: the models themselves (`tools/train/train_tiny_dit.py`);
//!   shapes160's weights are embedded once a GPU run has trained them.
//!
//! All are embedded in the binary, so they work from any directory.

mod classifier;
mod dit;
mod error;
mod reference;
mod testbed;

pub use classifier::{Classifier, ClassifierArch, CLASSIFIER_SEED, FEATURE_DIM};
pub use dit::{
    check_embedded, embedded_dit, shapes160_training, tiny_dit, SHAPES160_DIT_CONFIG,
    SHAPES160_TRAINING_COMMAND, SHAPES160_WEIGHTS_PATH, TINY_DIT_CONFIG, TINY_DIT_TRAINING,
};
pub use error::{Result, TestbedError};
pub use reference::{
    reference_stats, reference_stats_with_metadata, stats_from_bytes, REFERENCE_START,
};
pub use testbed::Testbed;

pub use tcc_data::{HELDOUT_SEED, TRAIN_SEED};
