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
}

/// Result with [`TestbedError`].
pub type Result<T> = std::result::Result<T, TestbedError>;
