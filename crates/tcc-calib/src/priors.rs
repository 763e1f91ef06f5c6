//! Priors files: safetensors with the blend `alpha` of every calibrated
//! (step, branch, layer) and, where it carries a prior, its `R`, `s`,
//! `muA`, `muB`; metadata binds them to the plan and model they were
//! fitted for.
//!
//! The folded form `M = (1 - alpha) I + alpha s R`, `c = alpha (muA - s muB R)`
//! is computed when the priors are applied, not stored: it would double
//! the file (`M` is as large as `R`) and could disagree with what it is
//! derived from. Files written before this rule hold `M` and `c`; they are
//! checked against the fold of the stored `R`, `s`, means and blend.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Serialize;
use tcc_core::{Branch, CalibMode, CalibrationSpec, Pooling, PriorKind, Selection};
use tcc_plan::{Plan, PlanHash};

use crate::{CalibError, Prior};

/// The largest priors file read (whole, into memory): far beyond what a
/// real model's calibration writes (DiT-XL/2, every reuse step of FORA
/// N=3: about 4 GB).
pub const MAX_PRIORS_BYTES: u64 = 1 << 36;

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
    pub plan_hash: PlanHash,
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

/// The current file format, and the one before per-site blends.
const FORMAT: &str = "tcc-priors/2";
const FORMAT_V1: &str = "tcc-priors/1";
/// `site_kinds` entry of a calibrated site that carries no prior.
const NO_PRIOR: &str = "none";

impl PriorSet {
    /// The priors `result` chose, bound to the plan they apply to
    /// (`plan_hash`, `model`) and saying how they were fitted: the
    /// calibration settings `cal` (overrides applied), `mode`, and `report`
    /// ([`Calibration::report`](crate::Calibration::report), maybe with
    /// more entries).
    pub fn fitted(
        plan_hash: PlanHash,
        model: &str,
        cal: &CalibrationSpec,
        mode: CalibMode,
        result: &crate::Calibration,
        report: serde_json::Map<String, serde_json::Value>,
    ) -> PriorSet {
        PriorSet {
            meta: PriorMeta {
                plan_hash,
                model: model.to_string(),
                alpha: cal.alpha,
                mode,
                prior: cal.prior,
                samples: cal.samples,
                seed: cal.seed,
                tool_version: env!("CARGO_PKG_VERSION").to_string(),
                select: cal.select,
                validation: (cal.validation_samples() > 0)
                    .then(|| (cal.validation_samples(), cal.validation_seed())),
                report: Some(serde_json::Value::Object(report).to_string()),
            },
            priors: result.priors.clone(),
            alphas: result.alphas.clone(),
        }
    }

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

    /// The file's bytes: the same set gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CalibError> {
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        // Stored as f32: a value beyond f32's range would read back infinite.
        let mut push = |name: String, shape: Vec<usize>, data: &[f64]| {
            if let Some(i) = data.iter().position(|&x| !(x as f32).is_finite()) {
                return Err(CalibError::NonFinite(format!(
                    "tensor `{name}` has the value {:e} at {i}, not a finite f32: refusing to write it",
                    data[i]
                )));
            }
            let bytes: Vec<u8> = data
                .iter()
                .flat_map(|&x| (x as f32).to_le_bytes())
                .collect();
            buffers.push((name, shape, bytes));
            Ok(())
        };
        let sites = self.sites();
        let mut kinds = Vec::with_capacity(sites.len());
        for site in &sites {
            push(key(site, "alpha"), vec![1], &[self.alpha(site)])?;
            let Some(p) = self.priors.get(site) else {
                kinds.push(NO_PRIOR.to_string());
                continue;
            };
            kinds.push(p.kind.to_string());
            let (d, rows) = (p.dim, p.mean_rows());
            push(key(site, "R"), vec![d, d], &p.r)?;
            push(key(site, "s"), vec![1], &[p.s])?;
            push(key(site, "muA"), vec![rows, d], &p.mu_a)?;
            push(key(site, "muB"), vec![rows, d], &p.mu_b)?;
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
        let mut metadata: BTreeMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("plan_hash", m.plan_hash.to_string()),
            ("model", m.model.clone()),
            ("alpha", format!("{:?}", m.alpha)),
            ("mode", m.mode.to_string()),
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
        tcc_fs::safetensors_bytes(views, Some(metadata)).map_err(CalibError::Format)
    }

    /// Write the file atomically: a temporary file in the same directory,
    /// renamed over `path` only once it is complete.
    pub fn save(&self, path: &Path) -> Result<(), CalibError> {
        tcc_fs::write_atomically(path, &self.to_bytes()?)
            .map_err(|e| CalibError::Io(format!("{}: {e}", path.display())))
    }

    /// Read a priors file written by [`PriorSet::save`] (this format or the
    /// one before per-site blends). Only a regular file of at most
    /// [`MAX_PRIORS_BYTES`] is read.
    pub fn load(path: &Path) -> Result<PriorSet, CalibError> {
        let bytes = tcc_fs::read_input(path, MAX_PRIORS_BYTES)
            .map_err(|e| CalibError::Io(format!("{}: {e}", path.display())))?;
        PriorSet::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parse the bytes of a priors file; `name` (the file) starts every
    /// message. Every tensor must belong to a site, and have the shape and
    /// the finite values its site's prior needs; stored folded tensors
    /// (`M`, `c`, older files) must agree with the fold of the rest.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<PriorSet, CalibError> {
        let bad = |what: String| CalibError::Format(format!("{name}: {what}"));
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
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
        let mode_name = get("mode")?;
        let hash_text = get("plan_hash")?;
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
            plan_hash: PlanHash::from_hex(&hash_text).ok_or_else(|| {
                bad(format!(
                    "metadata `plan_hash` is `{hash_text}`, not a plan hash (64 hex digits)"
                ))
            })?,
            model: get("model")?,
            alpha: num("alpha")?,
            mode: CalibMode::from_name(&mode_name)
                .ok_or_else(|| bad(format!("unknown mode `{mode_name}` in the metadata")))?,
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
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut read = |name: String| -> Result<(Vec<usize>, Vec<f64>), CalibError> {
            let v = st
                .tensor(&name)
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
            let shape = v.shape().to_vec();
            used.insert(name);
            Ok((shape, data))
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
                let (shape, a) = read(key(&site, "alpha"))?;
                if shape != [1] {
                    return Err(bad(format!(
                        "tensor `{}` has shape {shape:?}, expected [1]",
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
            let (r_shape, r) = read(key(&site, "R"))?;
            let (_, s) = read(key(&site, "s"))?;
            let (mu_shape, mu_a) = read(key(&site, "muA"))?;
            let (mu_b_shape, mu_b) = read(key(&site, "muB"))?;
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
            let prior = Prior {
                kind,
                dim: d,
                r,
                s: s[0],
                mu_a,
                mu_b,
            };
            let alpha = alphas.get(&site).copied().unwrap_or(meta.alpha);
            let folded = prior.fold(alpha);
            for (what, want_shape, want, scale) in [
                ("M", vec![d, d], &folded.m, m_scale(&prior, alpha)),
                ("c", mu_shape.clone(), &folded.c, c_scale(&prior, alpha)),
            ] {
                let name = key(&site, what);
                if st.tensor(&name).is_err() && !v1 {
                    continue;
                }
                let (shape, got) = read(name.clone())?;
                if shape != want_shape {
                    return Err(bad(format!(
                        "tensor `{name}` has shape {shape:?}, expected {want_shape:?}"
                    )));
                }
                // Both sides are rounded to f32 from the same f64 fold: they
                // agree to a few units in the last place of the terms summed.
                if let Some(i) =
                    (0..got.len()).find(|&i| (got[i] - want[i]).abs() > 1e-5 * scale[i] + 1e-30)
                {
                    return Err(bad(format!(
                        "tensor `{name}` disagrees with the prior it folds (R, s, muA, muB and alpha {alpha}): {} at {i} instead of {}",
                        got[i], want[i]
                    )));
                }
            }
            priors.insert(site, prior);
        }
        if let Some(extra) = st.names().into_iter().find(|n| !used.contains(*n)) {
            return Err(bad(format!(
                "unexpected tensor `{extra}`: not part of a site's prior"
            )));
        }
        Ok(PriorSet {
            meta,
            priors,
            alphas,
        })
    }

    /// Refuse a set whose sites or shapes do not fit `plan`: a site the
    /// plan does not calibrate, a calibrated site the set lacks, or
    /// tensors of the wrong width or number of mean rows. Call it after
    /// [`PriorSet::check_binding`]; messages name the site and the shapes.
    pub fn check_plan(&self, plan: &Plan) -> Result<(), CalibError> {
        let branches = plan.branches();
        let wanted: BTreeSet<Site> = crate::calibrated_sites(plan)
            .into_iter()
            .flat_map(|(step, list)| {
                list.into_iter()
                    .map(move |(block, bi)| Site::new(step, branches[bi], block))
            })
            .collect();
        let sites = self.sites();
        if let Some(extra) = sites.iter().find(|s| !wanted.contains(s)) {
            return Err(CalibError::Binding(format!(
                "{extra}: the plan does not calibrate this site (it calibrates steps {:?} of {} blocks, branches {})",
                plan.calibration.steps,
                plan.model.depth,
                branches.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
            )));
        }
        // As `PriorHooks::from_set`: a format-1 set with alpha 0 applies nothing.
        let strict = self.meta.alpha != 0.0 || !self.alphas.is_empty();
        if strict {
            if let Some(missing) = wanted.iter().find(|s| !sites.contains(s)) {
                return Err(CalibError::Binding(format!(
                    "{missing}: the plan calibrates this site, but the file has no prior for it"
                )));
            }
        }
        let d = plan.model.hidden;
        let rows = if plan.calibration.pooling == Pooling::Conditions {
            plan.model.tokens()
        } else {
            1
        };
        for (site, p) in &self.priors {
            if p.dim != d {
                return Err(CalibError::Binding(format!(
                    "tensor `{}` has shape [{}, {}], expected [{d}, {d}] (the branch width of model `{}`)",
                    key(site, "R"),
                    p.dim,
                    p.dim,
                    plan.model.name
                )));
            }
            if p.mean_rows() != rows {
                return Err(CalibError::Binding(format!(
                    "tensor `{}` has shape [{}, {d}], expected [{rows}, {d}] ({} pooling)",
                    key(site, "muA"),
                    p.mean_rows(),
                    plan.calibration.pooling
                )));
            }
        }
        Ok(())
    }

    /// Refuse priors fitted for another plan or model.
    pub fn check_binding(&self, plan_hash: &PlanHash, model: &str) -> Result<(), CalibError> {
        if self.meta.plan_hash != *plan_hash {
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

/// Per entry of `M`, the size of the terms it is the sum of.
fn m_scale(p: &Prior, alpha: f64) -> Vec<f64> {
    let d = p.dim;
    let mut out: Vec<f64> = p.r.iter().map(|r| (alpha * p.s * r).abs()).collect();
    for i in 0..d {
        out[i * d + i] += (1.0 - alpha).abs();
    }
    out
}

/// Per entry of `c`, the size of the terms it is the sum of.
fn c_scale(p: &Prior, alpha: f64) -> Vec<f64> {
    let d = p.dim;
    let mut out = Vec::with_capacity(p.mu_a.len());
    for row in 0..p.mean_rows() {
        let mu_b = &p.mu_b[row * d..(row + 1) * d];
        for j in 0..d {
            let acc: f64 = (0..d).map(|k| (mu_b[k] * p.r[k * d + j]).abs()).sum();
            out.push(alpha.abs() * (p.mu_a[row * d + j].abs() + p.s.abs() * acc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const HASH: PlanHash = PlanHash([0xab; 32]);
    const HASH_HEX: &str = "abababababababababababababababababababababababababababababababab";

    #[test]
    fn the_test_hash_spells_its_hex() {
        assert_eq!(HASH.to_string(), HASH_HEX);
    }

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
                plan_hash: HASH,
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
        let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            (
                "step1.attn.layer0.M".to_string(),
                vec![d, d],
                vec![1.0, 0.0, 0.0, 1.0],
            ),
            (
                "step1.attn.layer0.c".to_string(),
                vec![1, d],
                vec![0.5, 0.0],
            ),
            (
                "step1.attn.layer0.R".to_string(),
                vec![d, d],
                vec![1.0, 0.0, 0.0, 1.0],
            ),
            ("step1.attn.layer0.s".to_string(), vec![1], vec![1.0]),
            (
                "step1.attn.layer0.muA".to_string(),
                vec![1, d],
                vec![1.0, 0.0],
            ),
            (
                "step1.attn.layer0.muB".to_string(),
                vec![1, d],
                vec![0.0, 0.0],
            ),
        ];
        raw_file(
            &path,
            &tensors,
            &[
                ("format", "tcc-priors/1"),
                ("plan_hash", HASH_HEX),
                ("model", "tiny"),
                ("alpha", "0.5"),
                ("mode", "one-shot"),
                ("prior", "shift"),
                ("samples", "4"),
                ("seed", "0"),
                ("tool_version", "0.1.0"),
                ("site_kinds", "shift"),
            ],
        );
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
        assert!(back.check_binding(&HASH, "tiny").is_ok());
        let other = PlanHash([0xff; 32]);
        let err = back.check_binding(&other, "tiny").unwrap_err().to_string();
        assert!(
            err.contains(HASH_HEX) && err.contains(&other.to_string()),
            "{err}"
        );
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

    /// `(name, shape, values)` and metadata as a safetensors file.
    fn raw_file(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], md: &[(&str, &str)]) {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, shape, _), b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let md: HashMap<String, String> = md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::fs::write(
            path,
            safetensors::tensor::serialize(views, Some(md)).unwrap(),
        )
        .unwrap();
    }

    const META_V2: [(&str, &str); 11] = [
        ("format", "tcc-priors/2"),
        ("plan_hash", HASH_HEX),
        ("model", "tiny"),
        ("alpha", "0.5"),
        ("mode", "consistent"),
        ("prior", "shift"),
        ("samples", "4"),
        ("seed", "0"),
        ("tool_version", "0.1.0"),
        ("site_kinds", "shift"),
        ("select", "fixed"),
    ];

    /// One shift prior at step 1, attn, layer 0 (d = 2), blend 0.5; with
    /// the folded `M` and `c` older files carried, `c` given.
    fn v2_tensors(c: [f32; 2]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let d = 2;
        vec![
            ("step1.attn.layer0.alpha".into(), vec![1], vec![0.5]),
            (
                "step1.attn.layer0.M".into(),
                vec![d, d],
                vec![1.0, 0.0, 0.0, 1.0],
            ),
            ("step1.attn.layer0.c".into(), vec![1, d], c.to_vec()),
            (
                "step1.attn.layer0.R".into(),
                vec![d, d],
                vec![1.0, 0.0, 0.0, 1.0],
            ),
            ("step1.attn.layer0.s".into(), vec![1], vec![1.0]),
            ("step1.attn.layer0.muA".into(), vec![1, d], vec![1.0, 0.0]),
            ("step1.attn.layer0.muB".into(), vec![1, d], vec![0.0, 0.0]),
        ]
    }

    #[test]
    fn values_beyond_f32_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        let mut set = sample_set();
        set.priors.values_mut().next().unwrap().mu_a[1] = 1e39;
        let e = set.save(&p).unwrap_err().to_string();
        assert!(
            e.contains("step1.attn.layer0.muA") && e.contains("1e39"),
            "{e}"
        );
        assert!(!p.exists());
    }

    #[test]
    fn the_same_set_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let set = sample_set();
        let mut files = Vec::new();
        for i in 0..4 {
            let p = dir.path().join(format!("{i}.safetensors"));
            set.save(&p).unwrap();
            files.push(std::fs::read(&p).unwrap());
        }
        for f in &files[1..] {
            assert!(f == &files[0], "two saves of one set differ");
        }
    }

    #[test]
    fn stored_folded_tensors_are_checked_against_the_prior() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        // c = alpha (muA - s muB R) = [0.5, 0].
        raw_file(&p, &v2_tensors([0.5, 0.0]), &META_V2);
        let set = PriorSet::load(&p).unwrap();
        assert_eq!(set.alpha(&Site::new(1, Branch::Attn, 0)), 0.5);
        raw_file(&p, &v2_tensors([0.5, 0.25]), &META_V2);
        let e = PriorSet::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("p.safetensors")
                && e.contains("step1.attn.layer0.c")
                && e.contains("disagrees"),
            "{e}"
        );
        // New files do not store them at all.
        let out = dir.path().join("new.safetensors");
        sample_set().save(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
        // Per prior R, s, muA, muB and alpha; alpha alone for the empty site.
        assert_eq!(names, 2 * 5 + 1);
    }

    #[test]
    fn tensors_that_belong_to_no_site_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        let mut t = v2_tensors([0.5, 0.0]);
        t.push(("step1.attn.layer0.extra".into(), vec![1], vec![0.0]));
        raw_file(&p, &t, &META_V2);
        let e = PriorSet::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("unexpected tensor `step1.attn.layer0.extra`"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_mode_names_the_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.safetensors");
        let mut md = META_V2;
        md[4] = ("mode", "sideways");
        raw_file(&p, &v2_tensors([0.5, 0.0]), &md);
        let e = PriorSet::load(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "bad priors file: {}: unknown mode `sideways` in the metadata",
                p.display()
            )
        );
    }

    #[test]
    fn only_regular_files_are_read() {
        let e = PriorSet::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
    }

    /// FORA N=3 over 6 steps of `tiny` (4 blocks of width 64), priors at
    /// steps 1 and 2.
    fn plan() -> Plan {
        let text = "[model]\nname = \"tiny\"\n[sampler]\nkind = \"ddim\"\nsteps = 6\n\
                    [[cache]]\nrefresh = \"every 3\"\n[calibration]\nsteps = \"1, 2\"\n";
        let s = tcc_schedule::parse("p.sched", text).unwrap();
        tcc_plan::compile(&s, Path::new("")).unwrap()
    }

    fn set_for(plan: &Plan) -> PriorSet {
        let mut set = sample_set();
        set.priors.clear();
        set.alphas.clear();
        for (step, list) in crate::calibrated_sites(plan) {
            for (block, bi) in list {
                let site = Site::new(step, plan.branches()[bi], block);
                set.priors.insert(site, Prior::identity(plan.model.hidden));
                set.alphas.insert(site, 0.5);
            }
        }
        set
    }

    #[test]
    fn sets_are_checked_against_the_plan_sites_and_shapes() {
        let plan = plan();
        let d = plan.model.hidden;
        let good = set_for(&plan);
        good.check_plan(&plan).unwrap();

        let mut extra = good.clone();
        let layer = Site::new(1, Branch::Mlp, plan.model.depth);
        extra.priors.insert(layer, Prior::identity(d));
        extra.alphas.insert(layer, 0.5);
        let e = extra.check_plan(&plan).unwrap_err().to_string();
        assert!(
            e.contains(&format!("layer {}", plan.model.depth)) && e.contains("does not calibrate"),
            "{e}"
        );

        let mut step = good.clone();
        step.alphas.insert(Site::new(3, Branch::Attn, 0), 0.0);
        let e = step.check_plan(&plan).unwrap_err().to_string();
        assert!(e.contains("step 3, attn, layer 0"), "{e}");

        let mut missing = good.clone();
        let first = *missing.priors.keys().next().unwrap();
        missing.priors.remove(&first);
        missing.alphas.remove(&first);
        let e = missing.check_plan(&plan).unwrap_err().to_string();
        assert!(e.contains("has no prior for it"), "{e}");

        let mut narrow = good.clone();
        narrow.priors.insert(first, Prior::identity(d / 2));
        let e = narrow.check_plan(&plan).unwrap_err().to_string();
        assert!(
            e.contains("step1.attn.layer0.R") && e.contains(&format!("expected [{d}, {d}]")),
            "{e}"
        );

        let mut rows = good;
        let mut p = Prior::identity(d);
        p.mu_a = vec![0.0; 3 * d];
        p.mu_b = vec![0.0; 3 * d];
        rows.priors.insert(first, p);
        let e = rows.check_plan(&plan).unwrap_err().to_string();
        assert!(
            e.contains("step1.attn.layer0.muA") && e.contains(&format!("expected [1, {d}]")),
            "{e}"
        );
    }

    /// What the cargo-fuzz target `priors_file` checks, on a fixed set of
    /// damaged files (every byte flipped in turn, every truncation): the
    /// reader never panics, and whatever loads saves and loads back the
    /// same.
    #[test]
    fn damaged_priors_files_are_errors_or_round_trip() {
        let good = sample_set().to_bytes().unwrap();
        let check = |bytes: &[u8]| {
            if let Ok(set) = PriorSet::from_bytes(bytes, "x.safetensors") {
                for (site, prior) in &set.priors {
                    assert_eq!(prior.fold(set.alpha(site)).m.len(), prior.dim * prior.dim);
                }
                if let Ok(again) = set.to_bytes() {
                    let back = PriorSet::from_bytes(&again, "y.safetensors").unwrap();
                    assert_eq!(back.to_bytes().unwrap(), again);
                }
            }
        };
        check(&good);
        let mut loaded = 0;
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                check(&bad);
                loaded += PriorSet::from_bytes(&bad, "x").is_ok() as usize;
            }
            check(&good[..i]);
        }
        // Flipped tensor values (and some header bytes) still load.
        assert!(loaded > 0);
    }
}
