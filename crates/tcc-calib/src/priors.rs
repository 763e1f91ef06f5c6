//! Priors files: safetensors with the folded `M`, `c` and, for inspection,
//! `R`, `s`, `muA`, `muB` of every calibrated (step, branch, layer), and
//! metadata that binds them to the plan and model they were fitted for.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Serialize;
use tcc_core::{Branch, CalibMode, PriorKind, Selection};

use crate::{CalibError, Prior};

/// Where a prior applies: a branch of a block at a calibrated step. Sites
/// order by step, then branch, then block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Site {
    pub step: usize,
    pub branch: Branch,
    /// The block (layer) index.
    #[serde(rename = "layer")]
    pub block: usize,
}

impl Site {
    pub fn new(step: usize, branch: Branch, block: usize) -> Site {
        Site {
            step,
            branch,
            block,
        }
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}, {}, layer {}",
            self.step, self.branch, self.block
        )
    }
}

/// What a priors file was fitted for.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorMeta {
    /// Content hash of the plan (see `tcc plan --show`).
    pub plan_hash: String,
    /// Model identity: preset name or weights path, and shape.
    pub model: String,
    /// The blend of every site under the fixed protocol (per-site blends,
    /// [`PriorSet::alphas`], take precedence).
    pub alpha: f64,
    pub mode: CalibMode,
    pub prior: PriorKind,
    pub samples: usize,
    pub seed: u64,
    pub tool_version: String,
    pub select: Selection,
    /// The validation samples, and their seed (absent: none were used).
    pub validation: Option<(usize, u64)>,
    /// What the calibration measured and chose, as JSON (per site and per
    /// step, and the end-to-end check), for inspection.
    pub report: Option<String>,
}

/// A set of fitted priors, keyed by (step, branch, layer).
#[derive(Clone, Debug, PartialEq)]
pub struct PriorSet {
    pub meta: PriorMeta,
    /// The prior of every site that carries one.
    pub priors: BTreeMap<Site, Prior>,
    /// Per-site blends of every calibrated site (0: the site carries no
    /// prior). Empty: every prior is blended with `meta.alpha`.
    pub alphas: BTreeMap<Site, f64>,
}

fn key(site: &Site, what: &str) -> String {
    format!(
        "step{}.{}.layer{}.{}",
        site.step, site.branch, site.block, what
    )
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    // The serde names are the schedule-language spellings.
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, CalibError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| CalibError::Format(format!("unknown {what} `{s}` in the metadata")))
}

/// The current file format, and the one before per-site blends.
const FORMAT: &str = "tcc-priors/2";
const FORMAT_V1: &str = "tcc-priors/1";
/// `site_kinds` entry of a calibrated site that carries no prior.
const NO_PRIOR: &str = "none";

impl PriorSet {
    /// The blend of `site`.
    pub fn alpha(&self, site: &Site) -> f64 {
        self.alphas.get(site).copied().unwrap_or(self.meta.alpha)
    }

    /// Every calibrated site of the set: those with a prior and those
    /// chosen to carry none.
    pub fn sites(&self) -> Vec<Site> {
        let mut sites: Vec<Site> = self
            .priors
            .keys()
            .chain(self.alphas.keys())
            .copied()
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }

    /// Write the file atomically: a temporary file in the same directory,
    /// renamed over `path` only once it is complete.
    pub fn save(&self, path: &Path) -> Result<(), CalibError> {
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, data: &[f64]| {
            let bytes: Vec<u8> = data
                .iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect();
            buffers.push((name, shape, bytes));
        };
        let sites = self.sites();
        let mut kinds = Vec::with_capacity(sites.len());
        for site in &sites {
            let alpha = self.alpha(site);
            push(key(site, "alpha"), vec![1], &[alpha]);
            let Some(p) = self.priors.get(site) else {
                kinds.push(NO_PRIOR.to_string());
                continue;
            };
            kinds.push(p.kind.to_string());
            let d = p.dim;
            let rows = p.mean_rows();
            let folded = p.fold(alpha);
            push(key(site, "M"), vec![d, d], &folded.m);
            push(key(site, "c"), vec![rows, d], &folded.c);
            push(key(site, "R"), vec![d, d], &p.r);
            push(key(site, "s"), vec![1], &[p.s]);
            push(key(site, "muA"), vec![rows, d], &p.mu_a);
            push(key(site, "muB"), vec![rows, d], &p.mu_b);
        }
        let views: Vec<(String, TensorView<'_>)> = buffers
            .iter()
            .map(|(n, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| CalibError::Format(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let m = &self.meta;
        let mut metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("plan_hash", m.plan_hash.clone()),
            ("model", m.model.clone()),
            ("alpha", format!("{:?}", m.alpha)),
            ("mode", enum_name(&m.mode)),
            ("prior", m.prior.to_string()),
            ("samples", m.samples.to_string()),
            ("seed", m.seed.to_string()),
            ("tool_version", m.tool_version.clone()),
            ("site_kinds", kinds.join(",")),
            ("select", m.select.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some((n, seed)) = m.validation {
            metadata.insert("validation_samples".into(), n.to_string());
            metadata.insert("validation_seed".into(), seed.to_string());
        }
        if let Some(r) = &m.report {
            metadata.insert("report".into(), r.clone());
        }
        let bytes = safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| CalibError::Format(e.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Read a priors file written by [`PriorSet::save`] (this format or the
    /// one before per-site blends).
    pub fn load(path: &Path) -> Result<PriorSet, CalibError> {
        let io = |e: std::io::Error| CalibError::Io(format!("{}: {e}", path.display()));
        let bytes = std::fs::read(path).map_err(io)?;
        let bad = |what: String| CalibError::Format(format!("{}: {what}", path.display()));
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let md = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| -> Result<String, CalibError> {
            md.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata has no `{k}`: not a tcc priors file")))
        };
        let format = get("format")?;
        if format != FORMAT && format != FORMAT_V1 {
            return Err(bad(format!("unknown priors format `{format}`")));
        }
        let v1 = format == FORMAT_V1;
        let num = |k: &str| -> Result<f64, CalibError> {
            get(k)?
                .parse::<f64>()
                .map_err(|_| bad(format!("metadata `{k}` is not a number")))
        };
        let int = |k: &str| -> Result<u64, CalibError> {
            get(k)?
                .parse::<u64>()
                .map_err(|_| bad(format!("metadata `{k}` is not an integer")))
        };
        let prior_name = get("prior")?;
        let select = if v1 {
            Selection::Fixed
        } else {
            let name = get("select")?;
            Selection::from_name(&name)
                .ok_or_else(|| bad(format!("unknown selection `{name}` in the metadata")))?
        };
        let validation = match (md.get("validation_samples"), md.get("validation_seed")) {
            (Some(_), Some(_)) => {
                Some((int("validation_samples")? as usize, int("validation_seed")?))
            }
            _ => None,
        };
        let meta = PriorMeta {
            plan_hash: get("plan_hash")?,
            model: get("model")?,
            alpha: num("alpha")?,
            mode: parse_enum(&get("mode")?, "mode").map_err(|e| bad(e.to_string()))?,
            prior: PriorKind::from_name(&prior_name)
                .ok_or_else(|| bad(format!("unknown prior kind `{prior_name}` in the metadata")))?,
            samples: int("samples")? as usize,
            seed: int("seed")?,
            tool_version: get("tool_version")?,
            select,
            validation,
            report: md.get("report").cloned(),
        };
        if !meta.alpha.is_finite() {
            return Err(bad("metadata `alpha` is not finite".into()));
        }
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>), CalibError> {
            let v = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if v.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    v.dtype()
                )));
            }
            let data: Vec<f64> = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect();
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor `{name}` has a non-finite value at {i}"
                )));
            }
            Ok((v.shape().to_vec(), data))
        };
        // A site is known by its `alpha` (this format) or `M` (format 1).
        let marker = if v1 { ".M" } else { ".alpha" };
        let mut sites: Vec<Site> = Vec::new();
        for name in st.names() {
            if let Some(prefix) = name.strip_suffix(marker) {
                sites.push(
                    parse_site(prefix).ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?,
                );
            }
        }
        sites.sort();
        let kinds = get("site_kinds")?;
        let kinds: Vec<&str> = if kinds.is_empty() {
            vec![]
        } else {
            kinds.split(',').collect()
        };
        if kinds.len() != sites.len() {
            return Err(bad(
                "metadata `site_kinds` does not match the tensors".into()
            ));
        }
        let mut priors = BTreeMap::new();
        let mut alphas = BTreeMap::new();
        for (site, kind) in sites.into_iter().zip(kinds) {
            if !v1 {
                let (shape, a) = read(&key(&site, "alpha"))?;
                if shape != [1] {
                    return Err(bad(format!(
                        "tensor `{}` must have shape [1]",
                        key(&site, "alpha")
                    )));
                }
                alphas.insert(site, a[0]);
            }
            if kind == NO_PRIOR {
                if alphas.get(&site) != Some(&0.0) {
                    return Err(bad(format!(
                        "{site} carries no prior but a blend other than 0"
                    )));
                }
                continue;
            }
            let kind = PriorKind::from_name(kind)
                .ok_or_else(|| bad(format!("unknown prior kind `{kind}` in the metadata")))?;
            let (r_shape, r) = read(&key(&site, "R"))?;
            let (_, s) = read(&key(&site, "s"))?;
            let (mu_shape, mu_a) = read(&key(&site, "muA"))?;
            let (mu_b_shape, mu_b) = read(&key(&site, "muB"))?;
            let d = r_shape.get(1).copied().unwrap_or(0);
            if d == 0
                || r_shape != [d, d]
                || mu_shape.len() != 2
                || mu_shape[0] == 0
                || mu_shape[1] != d
                || mu_b_shape != mu_shape
                || s.len() != 1
            {
                return Err(bad(format!(
                    "tensors of {} have inconsistent shapes (R {r_shape:?}, muA {mu_shape:?}, muB {mu_b_shape:?}, s of {} values)",
                    key(&site, "*"),
                    s.len()
                )));
            }
            priors.insert(
                site,
                Prior {
                    kind,
                    dim: d,
                    r,
                    s: s[0],
                    mu_a,
                    mu_b,
                },
            );
        }
        Ok(PriorSet {
            meta,
            priors,
            alphas,
        })
    }

    /// Refuse priors fitted for another plan or model.
    pub fn check_binding(&self, plan_hash: &str, model: &str) -> Result<(), CalibError> {
        if self.meta.plan_hash != plan_hash {
            return Err(CalibError::Binding(format!(
                "these priors were fitted for plan {} but the schedule compiles to plan {}; priors are tied to the exact plan (steps, cache rules, sampler, calibration settings): calibrate this schedule again",
                self.meta.plan_hash, plan_hash
            )));
        }
        if self.meta.model != model {
            return Err(CalibError::Binding(format!(
                "these priors were fitted for model `{}` but the schedule uses `{}`",
                self.meta.model, model
            )));
        }
        Ok(())
    }
}

fn parse_site(prefix: &str) -> Option<Site> {
    let mut parts = prefix.split('.');
    let step = parts.next()?.strip_prefix("step")?.parse().ok()?;
    let branch = Branch::from_name(parts.next()?)?;
    let layer = parts.next()?.strip_prefix("layer")?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some(Site::new(step, branch, layer))
}

/// Write `bytes` to `path` through a temporary file in the same directory,
/// so that a reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CalibError> {
    let io = |e: std::io::Error| CalibError::Io(format!("{}: {e}", path.display()));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_set() -> PriorSet {
        let mut priors = BTreeMap::new();
        let mut p = Prior::identity(3);
        p.kind = PriorKind::Procrustes;
        p.s = 0.5;
        p.mu_a = vec![1.0, 2.0, 3.0];
        let (a, b, none) = (
            Site::new(1, Branch::Attn, 0),
            Site::new(3, Branch::Mlp, 2),
            Site::new(3, Branch::Attn, 1),
        );
        priors.insert(a, p.clone());
        priors.insert(b, p);
        PriorSet {
            meta: PriorMeta {
                plan_hash: "abc123".into(),
                model: "tiny".into(),
                alpha: 1.75,
                mode: CalibMode::Consistent,
                prior: PriorKind::Procrustes,
                samples: 8,
                seed: 42,
                tool_version: "0.1.0".into(),
                select: Selection::Validated,
                validation: Some((4, 43)),
                report: Some("{}".into()),
            },
            priors,
            alphas: [(a, 1.75), (b, 0.5), (none, 0.0)].into_iter().collect(),
        }
    }

    #[test]
    fn a_format_1_file_reads_with_the_set_alpha() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.safetensors");
        let d = 2;
        let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
            ("step1.attn.layer0.M", vec![d, d], vec![1.0, 0.0, 0.0, 1.0]),
            ("step1.attn.layer0.c", vec![1, d], vec![0.5, 0.0]),
            ("step1.attn.layer0.R", vec![d, d], vec![1.0, 0.0, 0.0, 1.0]),
            ("step1.attn.layer0.s", vec![1], vec![1.0]),
            ("step1.attn.layer0.muA", vec![1, d], vec![1.0, 0.0]),
            ("step1.attn.layer0.muB", vec![1, d], vec![0.0, 0.0]),
        ];
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, shape, _), b)| {
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let md: HashMap<String, String> = [
            ("format", "tcc-priors/1"),
            ("plan_hash", "h"),
            ("model", "tiny"),
            ("alpha", "0.5"),
            ("mode", "one-shot"),
            ("prior", "shift"),
            ("samples", "4"),
            ("seed", "0"),
            ("tool_version", "0.1.0"),
            ("site_kinds", "shift"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        std::fs::write(
            &path,
            safetensors::tensor::serialize(views, Some(md)).unwrap(),
        )
        .unwrap();
        let set = PriorSet::load(&path).unwrap();
        let site = Site::new(1, Branch::Attn, 0);
        assert_eq!(set.alpha(&site), 0.5);
        assert_eq!(set.priors[&site].kind, PriorKind::Shift);
        assert_eq!(set.meta.select, Selection::Fixed);
        assert_eq!(set.meta.mode, CalibMode::OneShot);
    }

    #[test]
    fn save_load_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let set = sample_set();
        set.save(&path).unwrap();
        let back = PriorSet::load(&path).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.sites().len(), 3);
        assert_eq!(back.alpha(&Site::new(3, Branch::Attn, 1)), 0.0);
        assert!(back.check_binding("abc123", "tiny").is_ok());
        let err = back.check_binding("ffff", "tiny").unwrap_err().to_string();
        assert!(err.contains("abc123") && err.contains("ffff"), "{err}");
        // Only the final file is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        sample_set().save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = PriorSet::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("p.safetensors") && err.contains("safetensors"),
            "{err}"
        );
        let missing = PriorSet::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
