use std::path::PathBuf;

/// Errors of the testbed crate.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A tensor operation failed (shape mismatch inside the network, ...).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A metrics computation failed.
    #[error(transparent)]
    Metrics(#[from] tcc_metrics::MetricsError),
    /// A weights or statistics file (or embedded asset) could not be read.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// An input tensor has the wrong shape or dtype.
    #[error("{name}: {message}")]
    Input { name: String, message: String },
    /// An embedded model could not be built from its bytes.
    #[error("embedded model: {0}")]
    Model(String),
    /// The testbed's model weights were not in the tree when this binary
    /// was built: they have not been trained yet.
    #[error("model `{model}` has no trained weights in this build ({missing} is missing). Train them with {how}; or give `weights = \"PATH\"` in the schedule's [model] section, or --random-weights SEED for a timing run")]
    NotTrained {
        model: String,
        missing: String,
        how: String,
    },
}

/// Result with [`TestbedError`].
pub type Result<T> = std::result::Result<T, TestbedError>;
