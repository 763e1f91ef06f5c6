//! The shape of a model stored in diffusers layout, read from its
//! `config.json` (`DiTTransformer2DModel` or `PixArtTransformer2DModel`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tcc_core::{ModelFamily, ModelShape};

/// Caption tokens of PixArt-α's T5 encoder (the pipeline's
/// `max_sequence_length`; the transformer's config does not hold it).
const PIXART_CAPTION_TOKENS: usize = 120;

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
    let json: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    shape_from_config(&json, name).map_err(fail)
}

/// The model shape a diffusers transformer config describes.
pub(crate) fn shape_from_config(json: &Value, name: &str) -> Result<ModelShape, String> {
    let obj = json.as_object().ok_or("expected a JSON object")?;
    let class = obj.get("_class_name").and_then(Value::as_str).unwrap_or("");
    let norm = obj.get("norm_type").and_then(Value::as_str).unwrap_or("");
    let family = if class.contains("PixArt") || norm == "ada_norm_single" {
        ModelFamily::Pixart
    } else if class.contains("DiT") || norm == "ada_norm_zero" {
        ModelFamily::Dit
    } else {
        return Err(format!(
            "unsupported model class `{class}` (norm_type `{norm}`): expected DiTTransformer2DModel or PixArtTransformer2DModel"
        ));
    };
    let int = |key: &str, default: Option<usize>| -> Result<usize, String> {
        match obj.get(key) {
            Some(Value::Null) | None => default.ok_or(format!("`{key}` is missing")),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or(format!("`{key}` must be a positive integer, found {v}")),
        }
    };
    // diffusers' defaults for these two classes where a key is absent.
    let heads = int("num_attention_heads", Some(16))?;
    let head_dim = int("attention_head_dim", Some(72))?;
    let hidden = heads
        .checked_mul(head_dim)
        .ok_or("num_attention_heads x attention_head_dim overflows")?;
    let in_channels = int("in_channels", Some(4))?;
    let patch = int("patch_size", Some(2))?;
    let input_size = int(
        "sample_size",
        Some(if family == ModelFamily::Dit { 32 } else { 128 }),
    )?;
    if input_size % patch != 0 {
        return Err(format!(
            "sample_size {input_size} is not a multiple of patch_size {patch}"
        ));
    }
    let mlp_ratio = match obj.get("ff_inner_dim") {
        Some(Value::Null) | None => 4.0,
        Some(_) => int("ff_inner_dim", None)? as f64 / hidden as f64,
    };
    let (num_classes, caption_tokens, caption_dim) = match family {
        ModelFamily::Dit => (int("num_embeds_ada_norm", Some(1000))?, 0, 0),
        ModelFamily::Pixart => (
            0,
            PIXART_CAPTION_TOKENS,
            int("caption_channels", Some(4096))?,
        ),
    };
    let depth = int("num_layers", Some(28))?;
    let shape = ModelShape {
        name: name.to_string(),
        family,
        depth,
        hidden,
        heads,
        patch,
        input_size,
        in_channels,
        out_channels: int(
            "out_channels",
            Some(match family {
                ModelFamily::Dit => in_channels,
                ModelFamily::Pixart => 8,
            }),
        )?,
        mlp_ratio,
        num_classes,
        caption_tokens,
        caption_dim,
    };
    shape.check_limits()?;
    Ok(shape)
}
