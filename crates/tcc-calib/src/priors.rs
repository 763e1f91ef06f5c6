//! Priors files: safetensors with the folded `M`, `c` and, for inspection,
//! `R`, `s`, `muA`, `muB` of every calibrated (step, branch, layer), and
//! metadata that binds them to the plan and model they were fitted for.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tcc_core::{Branch, CalibMode, PriorKind};

use crate::{CalibError, Prior};

/// Where a prior applies.
pub type Site = (usize, Branch, usize);

/// What a priors file was fitted for.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorMeta {
    /// Content hash of the plan (see `tcc plan --show`).
    pub plan_hash: String,
    /// Model identity: preset name or weights path, and shape.
    pub model: String,
    pub alpha: f64,
    pub mode: CalibMode,
    pub prior: PriorKind,
    pub samples: usize,
    pub seed: u64,
    pub tool_version: String,
}

/// A set of fitted priors, keyed by (step, branch, layer).
#[derive(Clone, Debug, PartialEq)]
pub struct PriorSet {
    pub meta: PriorMeta,
    pub priors: BTreeMap<Site, Prior>,
}

fn key(site: &Site, what: &str) -> String {
    format!("step{}.{}.layer{}.{}", site.0, site.1, site.2, what)
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

impl PriorSet {
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
        for (site, p) in &self.priors {
            let d = p.dim;
            let rows = p.mean_rows();
            let folded = p.fold(self.meta.alpha);
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
        let kinds: Vec<String> = self.priors.values().map(|p| enum_name(&p.kind)).collect();
        let metadata: HashMap<String, String> = [
            ("format", "tcc-priors/1".to_string()),
            ("plan_hash", m.plan_hash.clone()),
            ("model", m.model.clone()),
            ("alpha", format!("{:?}", m.alpha)),
            ("mode", enum_name(&m.mode)),
            ("prior", enum_name(&m.prior)),
            ("samples", m.samples.to_string()),
            ("seed", m.seed.to_string()),
            ("tool_version", m.tool_version.clone()),
            ("site_kinds", kinds.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| CalibError::Format(e.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Read a priors file written by [`PriorSet::save`].
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
        if get("format")? != "tcc-priors/1" {
            return Err(bad("unknown priors format".into()));
        }
        let num = |k: &str| -> Result<f64, CalibError> {
            get(k)?
                .parse::<f64>()
                .map_err(|_| bad(format!("metadata `{k}` is not a number")))
        };
        let meta = PriorMeta {
            plan_hash: get("plan_hash")?,
            model: get("model")?,
            alpha: num("alpha")?,
            mode: parse_enum(&get("mode")?, "mode")?,
            prior: parse_enum(&get("prior")?, "prior kind")?,
            samples: num("samples")? as usize,
            seed: get("seed")?
                .parse()
                .map_err(|_| bad("metadata `seed` is not an integer".into()))?,
            tool_version: get("tool_version")?,
        };
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
        let mut sites: Vec<Site> = Vec::new();
        for name in st.names() {
            if let Some(prefix) = name.strip_suffix(".M") {
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
        for (site, kind) in sites.into_iter().zip(kinds) {
            let (r_shape, r) = read(&key(&site, "R"))?;
            let (_, s) = read(&key(&site, "s"))?;
            let (mu_shape, mu_a) = read(&key(&site, "muA"))?;
            let (mu_b_shape, mu_b) = read(&key(&site, "muB"))?;
            let d = r_shape.get(1).copied().unwrap_or(0);
            if r_shape != [d, d]
                || mu_shape.get(1) != Some(&d)
                || mu_b_shape != mu_shape
                || s.len() != 1
            {
                return Err(bad(format!(
                    "tensors of {} have inconsistent shapes",
                    key(&site, "*")
                )));
            }
            priors.insert(
                site,
                Prior {
                    kind: parse_enum(kind, "prior kind")?,
                    dim: d,
                    r,
                    s: s[0],
                    mu_a,
                    mu_b,
                },
            );
        }
        Ok(PriorSet { meta, priors })
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
    parts.next().is_none().then_some((step, branch, layer))
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
        priors.insert((1, Branch::Attn, 0), p.clone());
        priors.insert((3, Branch::Mlp, 2), p);
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
            },
            priors,
        }
    }

    #[test]
    fn save_load_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        let set = sample_set();
        set.save(&path).unwrap();
        let back = PriorSet::load(&path).unwrap();
        assert_eq!(back, set);
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
