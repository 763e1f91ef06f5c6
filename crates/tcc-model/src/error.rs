use std::path::{Path, PathBuf};

/// Errors from building or loading a model. Messages name the file and, where
/// one is at fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bad or inconsistent configuration.
    #[error("{0}")]
    Config(String),
    /// A weights file that cannot be read or is not a DiT checkpoint.
    #[error("{}: {msg}", file.display())]
    Format { file: PathBuf, msg: String },
    /// One tensor of a weights file is missing, unexpected, mis-shaped or
    /// non-finite.
    #[error("{}: tensor `{name}`: {msg}", file.display())]
    Tensor {
        file: PathBuf,
        name: String,
        msg: String,
    },
    /// The output could not be written (disk full, permissions): not a
    /// problem with the input.
    #[error("{}: cannot write: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(file: &Path, msg: impl std::fmt::Display) -> Error {
        Error::Format {
            file: file.to_path_buf(),
            msg: msg.to_string(),
        }
    }

    pub(crate) fn tensor(file: &Path, name: &str, msg: impl std::fmt::Display) -> Error {
        Error::Tensor {
            file: file.to_path_buf(),
            name: name.to_string(),
            msg: msg.to_string(),
        }
    }
}
