//! Reading DiT weights: the diffusers layout (`DiTTransformer2DModel`) and the
//! original layout (facebookresearch/DiT), from safetensors or a PyTorch
//! `.pt` state dict; strict validation; `.pt` -> safetensors conversion.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::{DitConfig, Numerics};
use crate::dit::Dit;
use crate::error::{Error, Result};
use crate::layers::{pos_embed_2d, PATCH_EMBED};
use crate::weights::{self, Weights};

/// The two naming schemes of DiT weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsLayout {
    /// facebookresearch/DiT: `x_embedder.proj`, `blocks.{i}.attn.qkv`, ...
    Original,
    /// diffusers `DiTTransformer2DModel`: `pos_embed.proj`,
    /// `transformer_blocks.{i}.attn1.to_q`, ...
    Diffusers,
}

impl WeightsLayout {
    /// The tensor every checkpoint of this layout holds, and the other's
    /// never: the patch embedding's weight.
    fn marker(self) -> String {
        let names = PATCH_EMBED;
        let name = match self {
            WeightsLayout::Original => names.0,
            WeightsLayout::Diffusers => names.1,
        };
        format!("{name}.weight")
    }
}
const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const DIFFUSERS_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
/// Keys under which training scripts nest the state dict, most preferred
/// first (DiT's `sample.py` takes `ema` when present).
const NESTING_KEYS: [&str; 4] = ["ema", "model", "state_dict", "module"];

/// Tensors by name, each with the file it came from.
pub(crate) type Named = BTreeMap<String, (Tensor, PathBuf)>;

/// Tensors read from one weights source.
pub(crate) struct Raw {
    pub(crate) tensors: Named,
    /// What the user named, for messages about the whole source.
    pub(crate) origin: PathBuf,
}

impl Raw {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(crate) fn layout(&self) -> Result<WeightsLayout> {
        let original = WeightsLayout::Original.marker();
        let diffusers = WeightsLayout::Diffusers.marker();
        match (self.has(&original), self.has(&diffusers)) {
            (true, false) => Ok(WeightsLayout::Original),
            (false, true) => Ok(WeightsLayout::Diffusers),
            (true, true) => Err(Error::format(
                &self.origin,
                format!("holds both `{original}` (original layout) and `{diffusers}` (diffusers layout)"),
            )),
            (false, false) => Err(Error::format(
                &self.origin,
                format!(
                    "not a DiT checkpoint: neither `{original}` (original layout) nor `{diffusers}` (diffusers layout) found among its {} tensors",
                    self.tensors.len()
                ),
            )),
        }
    }
}

/// Checkpoint tensors are read and checked in host memory; `Weights` casts
/// and moves each one to the model's device as the model takes it.
fn read_safetensors(file: &Path, out: &mut Named) -> Result<()> {
    tcc_fs::check_input_file(file).map_err(|e| Error::io(file, e))?;
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        Error::format(
            file,
            format!("cannot read as safetensors (truncated or corrupt?): {e}"),
        )
    })?;
    for (name, t) in map {
        out.insert(name, (t, file.to_path_buf()));
    }
    Ok(())
}

/// Reads a PyTorch zip checkpoint: a plain state dict or one nested under
/// one of [`NESTING_KEYS`]. Returns the tensors and the key used.
fn read_pth(file: &Path) -> Result<(Named, Option<&'static str>)> {
    use candle_core::pickle::PthTensors;
    let wrap = |e: candle_core::Error| {
        Error::format(
            file,
            format!("cannot read as a PyTorch checkpoint (truncated or corrupt?): {e}"),
        )
    };
    let original = WeightsLayout::Original.marker();
    let diffusers = WeightsLayout::Diffusers.marker();
    let is_dit = |p: &PthTensors| {
        let names = p.tensor_infos();
        names.contains_key(&original) || names.contains_key(&diffusers)
    };
    verify_zip(file)?;
    let mut found = None;
    let top = PthTensors::new(file, None).map_err(wrap)?;
    let top_count = top.tensor_infos().len();
    if is_dit(&top) {
        found = Some((top, None));
    } else {
        for key in NESTING_KEYS {
            // A missing key is an error from candle: try the next one.
            if let Ok(p) = PthTensors::new(file, Some(key)) {
                if is_dit(&p) {
                    found = Some((p, Some(key)));
                    break;
                }
            }
        }
    }
    let (pth, key) = match found {
        Some(f) => f,
        None => {
            return Err(Error::format(
                file,
                format!(
                    "not a DiT checkpoint: no `{original}` at the top level nor under any of the keys {NESTING_KEYS:?} ({} top-level tensors)",
                    top_count
                ),
            ))
        }
    };
    let mut out = BTreeMap::new();
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    for name in names {
        let t = pth
            .get(name)
            .map_err(|e| Error::tensor(file, name, format!("cannot read: {e}")))?
            .ok_or_else(|| Error::tensor(file, name, "listed but not readable"))?;
        out.insert(name.clone(), (t, file.to_path_buf()));
    }
    Ok((out, key))
}

/// Checks the CRC-32 of every stored entry of a PyTorch zip checkpoint by
/// reading it to its end: candle's reader reads the tensors' bytes without
/// checking them, so a checkpoint damaged in the middle would load (or
/// convert) with wrong values. Entries in other compressions are left to
/// candle's reader.
fn verify_zip(file: &Path) -> Result<()> {
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| {
        Error::format(
            file,
            format!("cannot read as a PyTorch checkpoint (truncated or corrupt?): {e}"),
        )
    })?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index_raw(i)
            .map_err(|e| Error::format(file, format!("zip entry {i}: {e}")))?;
        if entry.compression() != zip::CompressionMethod::Stored {
            continue;
        }
        let name = entry.name().to_string();
        let want = entry.crc32();
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut entry, &mut buf)
                .map_err(|e| Error::format(file, format!("zip entry `{name}`: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let got = hasher.finalize();
        if got != want {
            return Err(Error::format(
                file,
                format!(
                    "zip entry `{name}` is damaged: its CRC-32 is {got:08x}, the archive says {want:08x} (truncated or corrupted download?)"
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a single weights file, safetensors or PyTorch zip (told apart by
/// their first bytes).
fn read_file(file: &Path) -> Result<Raw> {
    use std::io::Read;
    tcc_fs::check_input_file(file).map_err(|e| Error::io(file, e))?;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(file)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| Error::io(file, e))?;
    let mut tensors = BTreeMap::new();
    if n == 4 && &magic == b"PK\x03\x04" {
        tensors = read_pth(file)?.0;
    } else if n >= 1 && magic[0] == 0x80 {
        return Err(Error::format(
            file,
            "legacy (pre-zip) PyTorch serialisation is not supported: re-save it with a recent torch.save",
        ));
    } else {
        read_safetensors(file, &mut tensors)?;
    }
    Ok(Raw {
        tensors,
        origin: file.to_path_buf(),
    })
}

/// The shard files named by a diffusers `*.safetensors.index.json`.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let text = tcc_fs::read_input_text(index, crate::config::MAX_JSON_BYTES)
        .map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            index,
            format!("line {}, column {}: {e}", e.line(), e.column()),
        )
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, f) in map {
        let f = f.as_str().ok_or_else(|| {
            Error::format(
                index,
                format!("weight_map entry `{name}` is not a file name"),
            )
        })?;
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Where the weights of a path are.
pub(crate) enum Source {
    /// A diffusers model directory: its `config.json` and weight files.
    Diffusers {
        config: PathBuf,
        files: Vec<PathBuf>,
    },
    File(PathBuf),
}

pub(crate) fn resolve(path: &Path) -> Result<Source> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(Source::File(path.to_path_buf()));
    }
    let config = path.join("config.json");
    if !config.is_file() && path.join("transformer").is_dir() {
        // A pipeline directory (model_index.json, transformer/, vae/, ...).
        return resolve(&path.join("transformer"));
    }
    if !config.is_file() {
        return Err(Error::format(
            path,
            "not a diffusers model directory: no config.json (and no transformer/ subdirectory)",
        ));
    }
    let single = path.join(DIFFUSERS_WEIGHTS);
    let index = path.join(DIFFUSERS_INDEX);
    let files = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shards(&index)?
    } else {
        return Err(Error::format(
            path,
            format!("no {DIFFUSERS_WEIGHTS} nor {DIFFUSERS_INDEX} next to config.json"),
        ));
    };
    Ok(Source::Diffusers { config, files })
}

/// The files the weights at `path` are read from (a file, or a diffusers
/// folder's weight files), with their sizes: what loading them reads into
/// memory, known before reading. Each must be a regular file.
pub fn weight_files(path: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let files = match resolve(path)? {
        Source::File(f) => vec![f],
        Source::Diffusers { files, .. } => files,
    };
    files
        .into_iter()
        .map(|f| {
            let len = tcc_fs::check_input_file(&f).map_err(|e| Error::io(&f, e))?;
            Ok((f, len))
        })
        .collect()
}

pub(crate) fn read_source(path: &Path, src: &Source) -> Result<Raw> {
    match src {
        Source::File(f) => read_file(f),
        Source::Diffusers { files, .. } => {
            let mut tensors = BTreeMap::new();
            for f in files {
                read_safetensors(f, &mut tensors)?;
            }
            Ok(Raw {
                tensors,
                origin: path.to_path_buf(),
            })
        }
    }
}

/// Checks names, shapes, dtypes and values against `expected`. Missing
/// and unexpected tensors are named together (the first of each, with how
/// many more), as a wrong depth or layout gives both.
pub(crate) fn validate(raw: &Raw, expected: &[(String, Vec<usize>)]) -> Result<()> {
    let known: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&String> = expected
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !raw.has(n))
        .collect();
    let extra: Vec<&String> = raw
        .tensors
        .keys()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    let more = |n: usize, what: &str| match n {
        0 | 1 => String::new(),
        n => format!(" (and {} more {what} tensors)", n - 1),
    };
    const WHY: &str = "not part of this model (wrong depth or layout?)";
    if let Some(first) = missing.first() {
        let mut msg = format!("missing{}", more(missing.len(), "missing"));
        if let Some(x) = extra.first() {
            msg.push_str(&format!(
                "; and {}: tensor `{x}` is unexpected{}: {WHY}",
                raw.tensors[*x].1.display(),
                more(extra.len(), "unexpected")
            ));
        }
        return Err(Error::tensor(&raw.origin, first, msg));
    }
    if let Some(first) = extra.first() {
        return Err(Error::tensor(
            &raw.tensors[*first].1,
            first,
            format!("unexpected: {WHY}{}", more(extra.len(), "unexpected")),
        ));
    }
    for (name, shape) in expected {
        let (t, file) = &raw.tensors[name];
        if t.dims() != shape.as_slice() {
            return Err(Error::tensor(
                file,
                name,
                format!("has shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
    }
    for (name, (t, file)) in &raw.tensors {
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(Error::tensor(
                file,
                name,
                format!("has dtype {:?}, expected a float type", t.dtype()),
            ));
        }
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::tensor(
                file,
                name,
                format!("holds a non-finite value ({v} at flat index {i})"),
            ));
        }
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

/// Validates `raw` (weights of `layout`) against the tensors `build` asks
/// for, then builds the model from them, cast to `dtype` on `device`.
pub(crate) fn build_checked<M>(
    raw: Raw,
    layout: WeightsLayout,
    dtype: DType,
    device: &Device,
    build: impl Fn(&Weights) -> Result<M>,
) -> Result<M> {
    validate(&raw, &weights::shapes(layout, &build)?)?;
    let tensors = raw.tensors.into_iter().map(|(n, (t, _))| (n, t)).collect();
    weights::build_from(tensors, layout, dtype, device, build)
}

/// Checks an original checkpoint's fixed `pos_embed` buffer `[1, N, D]`
/// against the embedding the config computes (`expected`, `side x side`
/// positions of width `hidden`), within `tol`, then drops it. `what` names
/// the expected embedding in the message.
pub(crate) fn check_pos_embed_buffer(
    raw: &mut Raw,
    side: usize,
    hidden: usize,
    expected: Vec<f64>,
    tol: f64,
    what: &str,
) -> Result<()> {
    let Some((t, file)) = raw.tensors.remove("pos_embed") else {
        return Ok(());
    };
    let want = [1, side * side, hidden];
    if t.dims() != want {
        return Err(Error::tensor(
            &file,
            "pos_embed",
            format!(
                "has shape {:?}, expected {want:?} ({side}x{side} patches)",
                t.dims()
            ),
        ));
    }
    let computed = Tensor::from_vec(expected, (1, side * side, hidden), &Device::Cpu)?;
    let diff = max_abs_diff(&t, &computed)?;
    if diff.is_nan() || diff > tol {
        return Err(Error::tensor(
            &file,
            "pos_embed",
            format!("differs from {what} by {diff:.3e}"),
        ));
    }
    Ok(())
}

fn check_pos_embed(raw: &mut Raw, cfg: &DitConfig) -> Result<()> {
    let side = cfg.input_size / cfg.patch;
    let expected = pos_embed_2d(cfg.hidden, side);
    check_pos_embed_buffer(
        raw,
        side,
        cfg.hidden,
        expected,
        1e-5,
        "the 2-D sin-cos embedding",
    )
}

impl Dit {
    /// Loads diffusers-layout weights held in memory (a `config.json` and a
    /// `diffusion_pytorch_model.safetensors`, e.g. embedded in a binary with
    /// `include_bytes!`), with the same checks as [`Dit::load`]. `origin`
    /// names them in messages.
    pub fn load_diffusers_bytes(
        origin: &str,
        config_json: &str,
        weights: &[u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Dit> {
        let origin = PathBuf::from(origin);
        let cfg = DitConfig::from_diffusers_json(config_json, &origin.join("config.json"))?;
        let map = candle_core::safetensors::load_buffer(weights, &Device::Cpu)
            .map_err(|e| Error::format(&origin, format!("cannot read as safetensors: {e}")))?;
        let tensors = map
            .into_iter()
            .map(|(n, t)| (n, (t, origin.clone())))
            .collect();
        let raw = Raw { tensors, origin };
        if raw.layout()? != WeightsLayout::Diffusers {
            return Err(Error::format(&raw.origin, "not diffusers-layout weights"));
        }
        cfg.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", raw.origin.display())))?;
        build_checked(raw, WeightsLayout::Diffusers, dtype, device, |w| {
            Dit::build(&cfg, w)
        })
    }

    /// Loads DiT weights from `path`, cast to `dtype` on `device`.
    ///
    /// `path` is a diffusers model directory (`config.json` and
    /// `diffusion_pytorch_model.safetensors`, or shards with their
    /// `.index.json`), a diffusers pipeline directory (its `transformer/` is
    /// used), or one file, safetensors or PyTorch `.pt` (a state dict, maybe
    /// nested under `ema`, `model`, `state_dict` or `module`), in either
    /// layout (detected from the names).
    ///
    /// `cfg` is the expected shape. A diffusers directory brings its own
    /// config (and diffusers [`Numerics`]): `cfg`, when given, must agree
    /// with it. Original-layout weights need `cfg` (the number of heads is not
    /// in the weights) and get the original numerics. A lone diffusers-layout
    /// file uses the `config.json` beside it if any, else `cfg` with
    /// diffusers numerics and diffusers' default `norm_eps` (1e-5).
    ///
    /// Every tensor is checked: missing, unexpected, mis-shaped and
    /// non-finite tensors are errors naming the tensor and the file.
    pub fn load(
        path: &Path,
        cfg: Option<&DitConfig>,
        dtype: DType,
        device: &Device,
    ) -> Result<Dit> {
        let src = resolve(path)?;
        let mut raw = read_source(path, &src)?;
        let layout = raw.layout()?;
        let side_config = match &src {
            Source::Diffusers { config, .. } => Some(config.clone()),
            Source::File(f) => f
                .parent()
                .map(|d| d.join("config.json"))
                .filter(|c| layout == WeightsLayout::Diffusers && c.is_file()),
        };
        let cfg = match (layout, side_config, cfg) {
            (WeightsLayout::Diffusers, Some(config), want) => {
                let got = DitConfig::from_diffusers_config(&config)?;
                if let Some(want) = want {
                    got.check_same_sizes(
                        &config,
                        want,
                        &[("classes", got.num_classes, want.num_classes)],
                    )?;
                }
                got
            }
            (WeightsLayout::Diffusers, None, Some(want)) => DitConfig {
                numerics: Numerics::diffusers(1e-5),
                ..want.clone()
            },
            (WeightsLayout::Original, _, Some(want)) => DitConfig {
                numerics: Numerics::ORIGINAL,
                ..want.clone()
            },
            (_, _, None) => {
                return Err(Error::format(
                    path,
                    "weights without a config.json: name the model shape (the number of heads is not in the weights)",
                ))
            }
        };
        cfg.validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if layout == WeightsLayout::Original {
            check_pos_embed(&mut raw, &cfg)?;
        }
        build_checked(raw, layout, dtype, device, |w| Dit::build(&cfg, w))
    }
}

/// The layout of the weights at `path` (a file or a diffusers directory).
pub fn detect_layout(path: &Path) -> Result<WeightsLayout> {
    let src = resolve(path)?;
    read_source(path, &src)?.layout()
}

/// What [`convert_checkpoint`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertReport {
    pub tensors: usize,
    pub parameters: usize,
    /// The key the state dict was nested under, if any (`ema`, ...).
    pub nested_key: Option<String>,
}

/// Converts an original-layout PyTorch checkpoint (`.pt`, maybe nested under
/// `ema`/`model`/...) to safetensors with the same tensor names, contiguous,
/// in their stored dtypes. The output is written to a temporary file in the
/// same directory and renamed into place, so it never exists half-written.
/// Non-finite values and damaged zip entries are refused; a failure to
/// write the output is [`Error::Write`].
pub fn convert_checkpoint(input: &Path, output: &Path) -> Result<ConvertReport> {
    let (tensors, key) = read_pth(input)?;
    let marker = WeightsLayout::Original.marker();
    if !tensors.contains_key(&marker) {
        return Err(Error::format(
            input,
            format!("not an original-layout DiT checkpoint (no `{marker}`)"),
        ));
    }
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut parameters = 0;
    for (name, (t, _)) in &tensors {
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::tensor(input, name, "holds a non-finite value"));
        }
        parameters += t.elem_count();
        out.insert(name.clone(), t.contiguous()?);
    }
    let write = |e: String| Error::Write {
        path: output.to_path_buf(),
        msg: e,
    };
    let file = tcc_fs::AtomicFile::create(output).map_err(|e| write(e.to_string()))?;
    // safetensors orders the tensors by dtype, then name: the same
    // checkpoint gives the same bytes.
    candle_core::safetensors::save(&out, file.temp_path()).map_err(|e| write(e.to_string()))?;
    file.commit().map_err(|e| write(e.to_string()))?;
    Ok(ConvertReport {
        tensors: out.len(),
        parameters,
        nested_key: key.map(str::to_string),
    })
}
