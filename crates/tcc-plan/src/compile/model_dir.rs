//! The shape of a model stored in diffusers layout, read from its
//! `config.json` by [`TransformerConfig`] (the reader the model uses too).

use std::path::{Path, PathBuf};

use tcc_core::{ModelShape, TransformerConfig};

/// The most bytes a `config.json` may have (real ones have a few hundred).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a model directory gave no shape: a message and the file it is about.
#[derive(Debug)]
pub(crate) struct ModelDirError {
    pub message: String,
    pub file: PathBuf,
}

/// Finds `config.json` in `dir` itself or in `dir/transformer` (a whole
/// pipeline) and reads the model shape from it. `name` becomes the shape's
/// name (the path as the schedule wrote it).
pub(crate) fn shape_from_dir(dir: &Path, name: &str) -> Result<ModelShape, ModelDirError> {
    let candidates = [
        dir.join("config.json"),
        dir.join("transformer").join("config.json"),
    ];
    let Some(file) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let message = if dir.is_dir() {
            "no config.json in it or in its transformer/ folder".to_string()
        } else {
            "no such directory".to_string()
        };
        return Err(ModelDirError {
            message,
            file: dir.to_path_buf(),
        });
    };
    let fail = |message: String| ModelDirError {
        message,
        file: file.clone(),
    };
    let text = tcc_fs::read_input_text(&file, MAX_CONFIG_BYTES)
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    let shape = TransformerConfig::from_json(&text, None)
        .map_err(|e| fail(e.to_string()))?
        .shape(name);
    shape.check_limits().map_err(fail)?;
    Ok(shape)
}
