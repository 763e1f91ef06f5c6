//! Which files of a Hub repository a command downloads, chosen from the
//! repository's file listing. Pure: no network, no file system.
//!
//! A repository is either a diffusers pipeline (`transformer/config.json`)
//! or a transformer folder of its own (`config.json` at the root). Weights
//! are taken under the names tcc's loaders read: the full-precision
//! `*.safetensors` file, else its `*.safetensors.index.json` and the shards
//! it lists; `.fp16.` variants (only the VAE loader reads one, and only when
//! the full-precision file is absent), `.bin`, `.pth`, `.msgpack`, ONNX and
//! everything else are left on the Hub.

/// What a command reads of a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The transformer's `config.json` (and `model_index.json`): enough to
    /// compile a plan (`tcc plan`, `tcc check`, runs on random weights).
    Config,
    /// Everything a run reads: the transformer's config and weights, the
    /// text encoder's and the VAE's, the tokenizer, the scheduler config.
    Pipeline,
}

/// The files to download, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Paths in the repository, configs before weights.
    pub files: Vec<String>,
    /// The `*.safetensors.index.json` files among `files`: the shards each
    /// lists ([`shard_files`]) are downloaded after it.
    pub indexes: Vec<String>,
    /// Parts of the pipeline left out, with the reason (told to the user).
    pub skipped: Vec<String>,
}

/// Why a repository cannot serve as a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectError {
    /// Neither `transformer/config.json` nor `config.json`.
    NoTransformer,
    /// The transformer's folder (`""` for the root) has no weights tcc
    /// reads; `found` is what else it holds.
    NoWeights { folder: String, found: Vec<String> },
}

/// Base name of the weights of diffusers models (transformer, VAE).
const DIFFUSERS: &str = "diffusion_pytorch_model";
/// Base name of the weights of transformers models (the T5 text encoder).
const TRANSFORMERS: &str = "model";

/// The files of `siblings` (the repository's listing, `/`-separated paths)
/// that a command needing `need` reads.
pub fn select(siblings: &[String], need: Need) -> Result<Selection, SelectError> {
    let has = |f: &str| siblings.iter().any(|s| s == f);
    let root = if has("transformer/config.json") {
        "transformer/"
    } else if has("config.json") {
        ""
    } else {
        return Err(SelectError::NoTransformer);
    };
    let mut sel = Selection::default();
    for f in ["model_index.json".to_string(), format!("{root}config.json")] {
        sel.push_if(&f, has(&f));
    }
    if need == Need::Config {
        return Ok(sel);
    }
    match weights(siblings, root, DIFFUSERS, false) {
        Some(w) => sel.add(w),
        None => {
            return Err(SelectError::NoWeights {
                folder: root.to_string(),
                found: files_in(siblings, root)
                    .map(|f| f[root.len()..].to_string())
                    .filter(|f| f != "config.json" && !f.ends_with(".md") && !f.starts_with('.'))
                    .collect(),
            })
        }
    }
    if root.is_empty() {
        // A transformer folder of its own: the rest of a pipeline (text
        // encoder, VAE) comes from --pipeline.
        return Ok(sel);
    }
    for (folder, base, fp16) in [
        ("text_encoder/", TRANSFORMERS, false),
        ("vae/", DIFFUSERS, true),
    ] {
        let config = format!("{folder}config.json");
        if !has(&config) {
            continue;
        }
        match weights(siblings, folder, base, fp16) {
            Some(w) => {
                sel.push_if(&config, true);
                sel.add(w);
            }
            None => sel.skipped.push(format!(
                "{folder} left out: no {base}.safetensors nor {base}.safetensors.index.json{}",
                if fp16 {
                    format!(" nor {base}.fp16.safetensors")
                } else {
                    String::new()
                }
            )),
        }
    }
    // tokenizer.json is all the tokenizers crate reads (with the small JSON
    // files beside it). Without it, take the whole folder: the text encoder's
    // error then names it and says how to write tokenizer.json.
    let tokenizer: Vec<&String> = files_in(siblings, "tokenizer/").collect();
    let json_only = has("tokenizer/tokenizer.json");
    for f in tokenizer {
        sel.push_if(f, !json_only || f.ends_with(".json"));
    }
    sel.push_if(
        "scheduler/scheduler_config.json",
        has("scheduler/scheduler_config.json"),
    );
    Ok(sel)
}

/// Weights of one folder: a single file or an index (with its shards).
enum Weights {
    Single(String),
    Index(String),
}

fn weights(siblings: &[String], folder: &str, base: &str, fp16: bool) -> Option<Weights> {
    let has = |f: &String| siblings.contains(f);
    let single = format!("{folder}{base}.safetensors");
    let index = format!("{single}.index.json");
    let half = format!("{folder}{base}.fp16.safetensors");
    if has(&single) {
        Some(Weights::Single(single))
    } else if has(&index) {
        Some(Weights::Index(index))
    } else if fp16 && has(&half) {
        Some(Weights::Single(half))
    } else {
        None
    }
}

impl Selection {
    fn push_if(&mut self, file: &str, cond: bool) {
        if cond && !self.files.iter().any(|f| f == file) {
            self.files.push(file.to_string());
        }
    }

    fn add(&mut self, w: Weights) {
        match w {
            Weights::Single(f) => self.push_if(&f, true),
            Weights::Index(f) => {
                self.push_if(&f, true);
                self.indexes.push(f);
            }
        }
    }
}

/// The files directly in `folder` (`""`: the root; else ending in `/`).
fn files_in<'a>(siblings: &'a [String], folder: &'a str) -> impl Iterator<Item = &'a String> {
    siblings.iter().filter(move |s| {
        s.strip_prefix(folder)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    })
}

/// The shards the index `index` (its path in the repository and its text)
/// lists, as repository paths, sorted. Every shard must be a plain file name
/// beside the index that the repository has.
pub fn shard_files(index: &str, text: &str, siblings: &[String]) -> Result<Vec<String>, String> {
    let folder = index.rfind('/').map_or("", |i| &index[..=i]);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("`{index}` is not JSON: {e}"))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("`{index}` has no `weight_map` object"))?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let name = file
            .as_str()
            .ok_or_else(|| format!("`{index}`: the file of `{tensor}` is not a string"))?;
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
            return Err(format!(
                "`{index}` lists `{name}`, which is not a file name beside it"
            ));
        }
        let path = format!("{folder}{name}");
        if !siblings.contains(&path) {
            return Err(format!(
                "`{index}` lists `{name}`, which the repository does not have"
            ));
        }
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    if shards.is_empty() {
        return Err(format!("`{index}` lists no files"));
    }
    shards.sort();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(files: &[&str]) -> Vec<String> {
        files.iter().map(|s| s.to_string()).collect()
    }

    /// The layout of PixArt-alpha/PixArt-XL-2-512x512 with the variants
    /// diffusers repositories carry.
    fn pixart_like() -> Vec<String> {
        list(&[
            ".gitattributes",
            "README.md",
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "text_encoder/model.safetensors.index.json",
            "text_encoder/model.fp16-00001-of-00002.safetensors",
            "text_encoder/model.fp16-00002-of-00002.safetensors",
            "text_encoder/model.safetensors.index.fp16.json",
            "text_encoder/pytorch_model-00001-of-00002.bin",
            "text_encoder/pytorch_model-00002-of-00002.bin",
            "text_encoder/pytorch_model.bin.index.json",
            "tokenizer/added_tokens.json",
            "tokenizer/special_tokens_map.json",
            "tokenizer/spiece.model",
            "tokenizer/tokenizer_config.json",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.fp16.safetensors",
            "transformer/diffusion_pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.bin",
            "PixArt-XL-2-512x512.pth",
        ])
    }

    #[test]
    fn a_pipeline_gets_full_precision_safetensors_index_and_tokenizer_folder() {
        let sel = select(&pixart_like(), Need::Pipeline).unwrap();
        assert_eq!(
            sel.files,
            list(&[
                "model_index.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json",
                "text_encoder/model.safetensors.index.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                // No tokenizer.json: the whole folder, spiece.model included.
                "tokenizer/added_tokens.json",
                "tokenizer/special_tokens_map.json",
                "tokenizer/spiece.model",
                "tokenizer/tokenizer_config.json",
                "scheduler/scheduler_config.json",
            ])
        );
        assert_eq!(sel.indexes, ["text_encoder/model.safetensors.index.json"]);
        assert!(sel.skipped.is_empty());
        // The shards of the full-precision index, not of the fp16 one.
        let index = r#"{"metadata": {"total_size": 8},
            "weight_map": {"a": "model-00002-of-00002.safetensors",
                           "b": "model-00001-of-00002.safetensors",
                           "c": "model-00001-of-00002.safetensors"}}"#;
        assert_eq!(
            shard_files(&sel.indexes[0], index, &pixart_like()).unwrap(),
            [
                "text_encoder/model-00001-of-00002.safetensors",
                "text_encoder/model-00002-of-00002.safetensors"
            ]
        );
    }

    #[test]
    fn plans_need_only_the_configs() {
        let sel = select(&pixart_like(), Need::Config).unwrap();
        assert_eq!(sel.files, ["model_index.json", "transformer/config.json"]);
        assert!(sel.indexes.is_empty());
    }

    #[test]
    fn a_tokenizer_json_replaces_the_sentencepiece_files() {
        let mut files = pixart_like();
        files.push("tokenizer/tokenizer.json".into());
        let sel = select(&files, Need::Pipeline).unwrap();
        let tok: Vec<&String> = sel
            .files
            .iter()
            .filter(|f| f.starts_with("tokenizer/"))
            .collect();
        assert_eq!(
            tok,
            [
                "tokenizer/added_tokens.json",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/tokenizer.json",
            ]
        );
    }

    #[test]
    fn variants_are_a_fallback_for_the_vae_only() {
        let files = list(&[
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            "transformer/diffusion_pytorch_model-00001-of-00001.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.bin",
        ]);
        let sel = select(&files, Need::Pipeline).unwrap();
        assert_eq!(
            sel.files,
            [
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors.index.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ]
        );
        assert_eq!(sel.skipped.len(), 1);
        assert!(sel.skipped[0].starts_with("text_encoder/"), "{sel:?}");
    }

    #[test]
    fn a_transformer_folder_repository_works_alone() {
        let files = list(&[
            "README.md",
            "config.json",
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ]);
        let sel = select(&files, Need::Pipeline).unwrap();
        assert_eq!(
            sel.files,
            ["config.json", "diffusion_pytorch_model.safetensors"]
        );
    }

    #[test]
    fn no_transformer_or_no_readable_weights_are_errors() {
        let vae_only = list(&[
            "model_index.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]);
        assert_eq!(
            select(&vae_only, Need::Config),
            Err(SelectError::NoTransformer)
        );
        let bin_only = list(&[
            "README.md",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.bin",
            "transformer/diffusion_pytorch_model.fp16.safetensors",
        ]);
        assert_eq!(
            select(&bin_only, Need::Pipeline),
            Err(SelectError::NoWeights {
                folder: "transformer/".into(),
                found: list(&[
                    "diffusion_pytorch_model.bin",
                    "diffusion_pytorch_model.fp16.safetensors"
                ]),
            })
        );
        // A plan needs no weights.
        assert!(select(&bin_only, Need::Config).is_ok());
    }

    #[test]
    fn shard_lists_must_stay_beside_their_index() {
        let files = list(&["te/model.safetensors.index.json", "te/a.safetensors"]);
        let index = "te/model.safetensors.index.json";
        let map = |m: &str| format!(r#"{{"weight_map": {m}}}"#);
        assert!(shard_files(index, &map(r#"{"x": "a.safetensors"}"#), &files).is_ok());
        for bad in [
            r#"{"x": "../../a.safetensors"}"#,
            r#"{"x": "/etc/passwd"}"#,
            r#"{"x": "b.safetensors"}"#,
            r#"{"x": 3}"#,
            r#"{}"#,
        ] {
            assert!(shard_files(index, &map(bad), &files).is_err(), "{bad}");
        }
        assert!(shard_files(index, "not json", &files).is_err());
    }
}
