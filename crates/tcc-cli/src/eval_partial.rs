//! Eval partial files: what `tcc eval --shard I/N` writes (the sums of its
//! share of every seed set, [`tcc_eval::EvalSums`]) and `tcc merge` adds up
//! into the whole run's report.
//!
//! A partial is safetensors: per seed set and variant the per-sample
//! relative L2 and PSNR (f64, in sample order), the count of correctly
//! classified samples, the scorer's feature sums (f64 `Σx` and `Σxxᵀ`) and
//! the wall time; per variant the per-step latent and branch-output sums
//! and, per reuse step, the calibration's pooled rows and the oracle's
//! moments (tcc-calib's step statistics, embedded as bytes); per
//! calibrated variant the error terms of its priors on the oracle's
//! moments; per seed set and dynamic variant (a run-time policy) what it
//! decided: per step the samples that computed it, and the MACs that ran
//! and full computation's (u128, as two u64 halves). The metadata binds
//! it to the run: the report's context (plan hashes, model, seeds, priors'
//! settings), `n`, the batch size, the SHA-256 of the priors files, the
//! tool version and the shard.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tcc_calib::{Moments, Site, SiteStats, StepStats};
use tcc_core::{in_shard_order, Branch, CalibMode, Pooling, Shard};
use tcc_eval::{DecisionSums, EvalSums, PriorTerms, SetSums, VariantSums};
use tcc_metrics::FeatureStats;

use crate::error::{CliError, Io};
use crate::eval::ReportContext;

/// The format name in the metadata.
pub(crate) const EVAL_PARTIAL_FORMAT: &str = "tcc-eval-partial/1";

/// The largest partial file read (the oracle's moments of a large model
/// take two `D x D` f64 matrices per calibrated site).
const MAX_EVAL_PARTIAL_BYTES: u64 = 1 << 37;

/// Which run a partial belongs to, and which shard of it it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardRun {
    pub context: ReportContext,
    pub n: usize,
    pub batch_size: usize,
    pub shard: Shard,
    /// The samples of every seed set this shard evaluated.
    pub samples: Range<usize>,
    /// SHA-256 of the priors files applied, by mode.
    pub priors: Vec<(CalibMode, String)>,
}

/// The shape of the sums, so that the tensors can be read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Layout {
    names: Vec<String>,
    pooling: Pooling,
    steps: usize,
    /// The feature width, when the samples were scored.
    features: Option<usize>,
    /// Per variant (not full): the steps with branch-output sums.
    branch_steps: Vec<Vec<usize>>,
    /// Per variant (not full): per step, the sites with pooled rows or
    /// oracle moments, as (step, branch, block).
    stats_sites: Vec<BTreeMap<usize, Vec<SiteKey>>>,
    /// Per calibrated variant: the sites of its prior terms.
    terms_sites: Vec<Vec<SiteKey>>,
    /// The variants (index into `names`, not full) of dynamic plans, whose
    /// decisions are counted (absent in partials of static plans only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    decided: Vec<usize>,
}

/// One shard's partial: its run, its sums and its priors' error terms.
pub(crate) struct EvalPartial {
    pub run: ShardRun,
    pub tool_version: String,
    pub sums: EvalSums,
    pub terms: Vec<PriorTerms>,
}

/// A site as (step, branch name, block), for the metadata.
type SiteKey = (usize, String, usize);

fn site_key(s: &Site) -> SiteKey {
    (s.step, s.branch.to_string(), s.block)
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Tensors to write: name -> (dtype, shape, bytes).
#[derive(Default)]
struct Tensors(BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>);

impl Tensors {
    fn f64(&mut self, name: String, shape: Vec<usize>, v: &[f64]) {
        self.0
            .insert(name, (Dtype::F64, shape, le_bytes(v, f64::to_le_bytes)));
    }
    fn u64(&mut self, name: String, v: u64) {
        self.u64s(name, &[v]);
    }
    fn u64s(&mut self, name: String, v: &[u64]) {
        self.0.insert(
            name,
            (Dtype::U64, vec![v.len()], le_bytes(v, u64::to_le_bytes)),
        );
    }
    fn bytes(&mut self, name: String, v: Vec<u8>) {
        self.0.insert(name, (Dtype::U8, vec![v.len()], v));
    }
}

impl EvalPartial {
    fn to_bytes(&self) -> Result<Vec<u8>, CliError> {
        let fail = |e: &dyn std::fmt::Display| CliError::Failure(e.to_string());
        let s = &self.sums;
        let mut t = Tensors::default();
        let mut features = None;
        let mut decided = Vec::new();
        for (i, set) in s.sets.iter().enumerate() {
            t.u64(format!("set{i}.samples"), set.samples);
            for (j, v) in set.variants.iter().enumerate() {
                let p = format!("set{i}.v{j}");
                t.f64(format!("{p}.seconds"), vec![1], &[v.seconds]);
                t.u64(format!("{p}.correct"), v.correct);
                if j > 0 {
                    t.f64(format!("{p}.rel_l2"), vec![v.rel_l2.len()], &v.rel_l2);
                    t.f64(format!("{p}.psnr"), vec![v.psnr.len()], &v.psnr);
                }
                if let Some(d) = &v.decisions {
                    if i == 0 {
                        decided.push(j);
                    }
                    t.u64s(format!("{p}.computed"), &d.computed);
                    t.u64(format!("{p}.decided_samples"), d.samples);
                    let halves = |x: u128| [x as u64, (x >> 64) as u64];
                    let [a, b] = halves(d.macs);
                    let [c, e] = halves(d.full_macs);
                    t.u64s(format!("{p}.macs"), &[a, b, c, e]);
                }
                if let Some(f) = &v.features {
                    let d = f.dim();
                    features = Some(d);
                    t.u64(format!("{p}.features.n"), f.n());
                    t.f64(format!("{p}.features.sum"), vec![d], f.sum());
                    t.f64(format!("{p}.features.sum_outer"), vec![d, d], f.sum_outer());
                }
            }
        }
        let mut branch_steps = Vec::new();
        let mut stats_sites = Vec::new();
        for j in 1..s.names.len() {
            let latent: Vec<f64> = s.latent[j - 1].iter().flatten().copied().collect();
            t.f64(format!("v{j}.latent"), vec![latent.len() / 2, 2], &latent);
            let branch = &s.branch[j - 1];
            let sums: Vec<f64> = branch.values().flatten().copied().collect();
            t.f64(format!("v{j}.branch"), vec![branch.len(), 2], &sums);
            branch_steps.push(branch.keys().copied().collect());
            let (pooled, moments) = (&s.pooled[j - 1], &s.moments[j - 1]);
            let mut by_step: BTreeMap<usize, Vec<Site>> = BTreeMap::new();
            for site in pooled.keys().chain(moments.keys()) {
                by_step.entry(site.step).or_default().push(*site);
            }
            let mut layout = BTreeMap::new();
            for (step, mut sites) in by_step {
                sites.sort();
                sites.dedup();
                let mut st = StepStats::empty(step, sites.clone());
                for (k, site) in sites.iter().enumerate() {
                    st.calib[k] = pooled.get(site).cloned();
                    st.validation[k] = moments.get(site).cloned();
                }
                t.bytes(
                    format!("v{j}.step{step}"),
                    st.to_bytes().map_err(|e| fail(&e))?,
                );
                layout.insert(step, sites.iter().map(site_key).collect());
            }
            stats_sites.push(layout);
        }
        let mut terms_sites = Vec::new();
        for (p, terms) in self.terms.iter().enumerate() {
            let v: Vec<f64> = terms.values().flatten().copied().collect();
            t.f64(format!("priors{p}.terms"), vec![terms.len(), 4], &v);
            terms_sites.push(terms.keys().map(site_key).collect());
        }
        let layout = Layout {
            names: s.names.clone(),
            pooling: s.pooling,
            steps: s.latent.first().map_or(0, Vec::len),
            features,
            branch_steps,
            stats_sites,
            terms_sites,
            decided,
        };
        let metadata: BTreeMap<String, String> = [
            ("format".to_string(), EVAL_PARTIAL_FORMAT.to_string()),
            ("run".to_string(), json(&self.run)?),
            ("tool_version".to_string(), self.tool_version.clone()),
            ("layout".to_string(), json(&layout)?),
        ]
        .into_iter()
        .collect();
        let views =
            t.0.iter()
                .map(|(n, (dtype, shape, bytes))| {
                    TensorView::new(*dtype, shape.clone(), bytes).map(|v| (n.clone(), v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(&e))?;
        tcc_fs::safetensors_bytes(views, Some(metadata)).map_err(|e| fail(&e))
    }

    fn from_bytes(bytes: &[u8], origin: &str) -> Result<EvalPartial, CliError> {
        let bad = |what: String| CliError::input(format!("{origin}: {what}"));
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let md = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            md.get(k).ok_or_else(|| {
                bad(format!(
                    "metadata has no `{k}`: not a tcc eval partial (`tcc eval --shard` writes them)"
                ))
            })
        };
        if get("format")? != EVAL_PARTIAL_FORMAT {
            return Err(bad(format!(
                "its format is `{}`, not {EVAL_PARTIAL_FORMAT}",
                get("format")?
            )));
        }
        let run: ShardRun = serde_json::from_str(get("run")?)
            .map_err(|e| bad(format!("metadata `run` is not readable ({e})")))?;
        let layout: Layout = serde_json::from_str(get("layout")?)
            .map_err(|e| bad(format!("metadata `layout` is not readable ({e})")))?;
        let tool_version = get("tool_version")?.clone();
        let r = Reader { st: &st, origin };
        let nv = layout.names.len();
        if nv == 0
            || layout.branch_steps.len() != nv - 1
            || layout.stats_sites.len() != nv - 1
            || layout.decided.iter().any(|&j| j == 0 || j >= nv)
        {
            return Err(bad(
                "metadata `layout` lists no variants or is inconsistent".into(),
            ));
        }
        let mut sets = Vec::new();
        for (i, &seed) in run.context.seeds.iter().enumerate() {
            let samples = r.u64(&format!("set{i}.samples"))?;
            let mut variants = Vec::new();
            for j in 0..nv {
                let p = format!("set{i}.v{j}");
                let per_sample = |what: &str, infinite: bool| -> Result<Vec<f64>, CliError> {
                    if j == 0 {
                        return Ok(Vec::new());
                    }
                    r.f64(&format!("{p}.{what}"), &[samples as usize], infinite)
                };
                let features = match layout.features {
                    Some(d) => Some(
                        FeatureStats::from_parts(
                            r.u64(&format!("{p}.features.n"))?,
                            r.f64(&format!("{p}.features.sum"), &[d], false)?,
                            r.f64(&format!("{p}.features.sum_outer"), &[d, d], false)?,
                        )
                        .map_err(|e| bad(e.to_string()))?,
                    ),
                    None => None,
                };
                let decisions = if layout.decided.contains(&j) {
                    let computed = r.u64s(&format!("{p}.computed"), layout.steps)?;
                    let m = r.u64s(&format!("{p}.macs"), 4)?;
                    let joined = |lo: u64, hi: u64| lo as u128 | (hi as u128) << 64;
                    Some(DecisionSums {
                        computed,
                        samples: r.u64(&format!("{p}.decided_samples"))?,
                        macs: joined(m[0], m[1]),
                        full_macs: joined(m[2], m[3]),
                    })
                } else {
                    None
                };
                variants.push(VariantSums {
                    decisions,
                    features,
                    correct: r.u64(&format!("{p}.correct"))?,
                    rel_l2: per_sample("rel_l2", false)?,
                    // Identical latents have an infinite PSNR.
                    psnr: per_sample("psnr", true)?,
                    seconds: r.f64(&format!("{p}.seconds"), &[1], false)?[0],
                });
            }
            sets.push(SetSums {
                seed,
                samples,
                variants,
            });
        }
        let site = |(step, branch, block): &SiteKey| {
            Branch::from_name(branch)
                .map(|b| Site::new(*step, b, *block))
                .ok_or_else(|| bad(format!("unknown branch `{branch}` in `layout`")))
        };
        let (mut latent, mut branch, mut pooled, mut moments) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for j in 1..nv {
            let l = r.f64(&format!("v{j}.latent"), &[layout.steps, 2], false)?;
            latent.push(l.chunks_exact(2).map(|c| [c[0], c[1]]).collect());
            let steps = &layout.branch_steps[j - 1];
            let b = r.f64(&format!("v{j}.branch"), &[steps.len(), 2], false)?;
            branch.push(
                steps
                    .iter()
                    .zip(b.chunks_exact(2))
                    .map(|(k, c)| (*k, [c[0], c[1]]))
                    .collect(),
            );
            let (mut p, mut m): (BTreeMap<Site, SiteStats>, BTreeMap<Site, Moments>) =
                Default::default();
            for (step, keys) in &layout.stats_sites[j - 1] {
                let sites = keys.iter().map(site).collect::<Result<Vec<_>, _>>()?;
                let name = format!("v{j}.step{step}");
                let st = StepStats::from_bytes(
                    *step,
                    sites,
                    r.u8(&name)?,
                    &format!("{origin}: `{name}`"),
                )
                .map_err(|e| bad(e.to_string()))?;
                for (k, s) in st.sites.iter().enumerate() {
                    if let Some(x) = &st.calib[k] {
                        p.insert(*s, x.clone());
                    }
                    if let Some(x) = &st.validation[k] {
                        m.insert(*s, x.clone());
                    }
                }
            }
            pooled.push(p);
            moments.push(m);
        }
        if layout.terms_sites.len() != run.context.priors.len() {
            return Err(bad(
                "metadata `layout` has prior terms of another number of variants".into(),
            ));
        }
        let mut terms = Vec::new();
        for (p, keys) in layout.terms_sites.iter().enumerate() {
            let v = r.f64(&format!("priors{p}.terms"), &[keys.len(), 4], false)?;
            let mut map = PriorTerms::new();
            for (key, c) in keys.iter().zip(v.chunks_exact(4)) {
                map.insert(site(key)?, [c[0], c[1], c[2], c[3]]);
            }
            terms.push(map);
        }
        Ok(EvalPartial {
            run,
            tool_version,
            sums: EvalSums {
                names: layout.names,
                pooling: layout.pooling,
                sets,
                latent,
                branch,
                pooled,
                moments,
            },
            terms,
        })
    }

    fn load(path: &Path) -> Result<EvalPartial, CliError> {
        let bytes = tcc_fs::read_input(path, MAX_EVAL_PARTIAL_BYTES)
            .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
        EvalPartial::from_bytes(&bytes, &path.display().to_string())
    }
}

/// JSON text of a value, for the metadata.
fn json<T: Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string(v).map_err(|e| CliError::Failure(e.to_string()))
}

/// Reads tensors of one partial, checking dtype, shape and values; errors
/// name the file and the tensor (exit status 2).
struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    origin: &'a str,
}

impl<'a> Reader<'a> {
    fn raw(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &'a [u8]), CliError> {
        let v = self
            .st
            .tensor(name)
            .map_err(|_| CliError::input(format!("{}: missing tensor `{name}`", self.origin)))?;
        if v.dtype() != dtype {
            return Err(CliError::input(format!(
                "{}: tensor `{name}` is {:?}, expected {dtype:?}",
                self.origin,
                v.dtype()
            )));
        }
        Ok((v.shape().to_vec(), v.data()))
    }

    /// An f64 tensor of `shape`: no NaN, and no infinity unless `infinite`.
    fn f64(&self, name: &str, shape: &[usize], infinite: bool) -> Result<Vec<f64>, CliError> {
        let (s, data) = self.raw(name, Dtype::F64)?;
        if s != shape {
            return Err(CliError::input(format!(
                "{}: tensor `{name}` has shape {s:?}, expected {shape:?}",
                self.origin
            )));
        }
        let v: Vec<f64> = data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if let Some(i) = v
            .iter()
            .position(|x| x.is_nan() || (!infinite && x.is_infinite()))
        {
            return Err(CliError::input(format!(
                "{}: tensor `{name}` has a non-finite value at {i}",
                self.origin
            )));
        }
        Ok(v)
    }

    fn u64(&self, name: &str) -> Result<u64, CliError> {
        Ok(self.u64s(name, 1)?[0])
    }

    /// A u64 tensor of shape `[len]`.
    fn u64s(&self, name: &str, len: usize) -> Result<Vec<u64>, CliError> {
        let (s, data) = self.raw(name, Dtype::U64)?;
        if s != [len] {
            return Err(CliError::input(format!(
                "{}: tensor `{name}` has shape {s:?}, expected [{len}]",
                self.origin
            )));
        }
        Ok(data
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }

    fn u8(&self, name: &str) -> Result<&'a [u8], CliError> {
        Ok(self.raw(name, Dtype::U8)?.1)
    }
}

/// Whether `path` is an eval partial: a safetensors file whose metadata
/// names [`EVAL_PARTIAL_FORMAT`]. Reads the header only.
pub(crate) fn is_eval_partial(path: &Path) -> bool {
    let read = || -> std::io::Result<bool> {
        let mut f = std::fs::File::open(path)?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Ok(false);
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header)?;
        let v: serde_json::Value = serde_json::from_slice(&header)?;
        Ok(v["__metadata__"]["format"] == EVAL_PARTIAL_FORMAT)
    };
    read().unwrap_or(false)
}

/// `tcc eval --shard`: writes the shard's partial file atomically.
pub(crate) fn write_shard(
    io: &mut Io,
    out: &Path,
    run: ShardRun,
    sums: EvalSums,
    terms: Vec<PriorTerms>,
) -> Result<(), CliError> {
    let (shard, samples, n) = (run.shard, run.samples.clone(), run.n);
    let sets = run.context.seeds.len();
    let partial = EvalPartial {
        run,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        sums,
        terms,
    };
    tcc_fs::write_atomically(out, &partial.to_bytes()?)
        .map_err(|e| CliError::Failure(format!("{}: {e}", out.display())))?;
    writeln!(
        io.out,
        "evaluated shard {shard}: samples {}..{} of {n} in each of {sets} seed sets; wrote {} (`tcc merge` with every shard's file prints the report)",
        samples.start,
        samples.end,
        out.display()
    )?;
    Ok(())
}

/// Reads the partials of every shard of one evaluation and adds them up in
/// shard order. Refuses files of different runs (another plan, seed sets,
/// `n`, batch size, priors or tool version), duplicate and missing shards
/// (exit status 2).
pub(crate) fn merge(paths: &[PathBuf]) -> Result<EvalPartial, CliError> {
    let parts = paths
        .iter()
        .map(|p| EvalPartial::load(p).map(|e| (p.display().to_string(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((first_name, first)) = parts.first() else {
        return Err(CliError::input("no eval partials to merge"));
    };
    let (first_name, a, version) = (
        first_name.clone(),
        first.run.clone(),
        first.tool_version.clone(),
    );
    let mut checked = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let b = &p.run;
        let differs = if b.context.schedules != a.context.schedules {
            Some("other schedules or plans (plan hashes differ)".to_string())
        } else if b.context.seeds != a.context.seeds {
            Some(format!(
                "seed sets {:?} against {:?}",
                b.context.seeds, a.context.seeds
            ))
        } else if b.n != a.n {
            Some(format!("--n {} against {}", b.n, a.n))
        } else if b.batch_size != a.batch_size {
            Some(format!(
                "--batch-size {} against {}",
                b.batch_size, a.batch_size
            ))
        } else if b.priors != a.priors || b.context.priors != a.context.priors {
            Some("other priors files".to_string())
        } else if b.context != a.context {
            Some("other evaluation settings (variants, tests or model)".to_string())
        } else if p.tool_version != version {
            Some(format!("tcc {} against tcc {version}", p.tool_version))
        } else if b.shard.count != a.shard.count {
            Some(format!(
                "{} shards against {}",
                b.shard.count, a.shard.count
            ))
        } else if b.samples != b.shard.samples(b.n, b.batch_size) {
            return Err(CliError::input(format!(
                "{name}: shard {} holds samples {:?}, but the shard rule gives it {:?}",
                b.shard,
                b.samples,
                b.shard.samples(b.n, b.batch_size)
            )));
        } else {
            None
        };
        if let Some(d) = differs {
            return Err(CliError::input(format!(
                "{name} and {first_name} are not shards of one evaluation: {d}"
            )));
        }
        checked.push((b.shard, name, p));
    }
    let mut parts = in_shard_order(a.shard.count, checked)
        .map_err(CliError::input)?
        .into_iter();
    let (_, mut total) = parts.next().expect("count >= 1");
    for (name, p) in parts {
        let bad = |e: &dyn std::fmt::Display| CliError::input(format!("{name}: {e}"));
        total.sums.merge(&p.sums).map_err(|e| bad(&e))?;
        for (t, u) in total.terms.iter_mut().zip(&p.terms) {
            if t.keys().ne(u.keys()) {
                return Err(bad(&"its prior terms cover other sites"));
            }
            for (x, y) in t.values_mut().zip(u.values()) {
                if x[3] != y[3] {
                    return Err(bad(&"its priors have other blends"));
                }
                for k in 0..3 {
                    x[k] += y[k];
                }
            }
        }
        total.run.samples.end = p.run.samples.end;
    }
    total.run.shard = Shard::WHOLE;
    Ok(total)
}
