//! Calibration across processes: one calibrated step's statistics as
//! mergeable sums ([`StepStats`]), the reduction the walk calls at each
//! calibrated step ([`Reduce`]: [`Local`] for one process, [`Gathered`]
//! over any all-gather such as MPI's), and statistics files
//! ([`StatsFile`]) that shards of a one-shot calibration write and
//! [`StatsFile::merge`] adds up.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tcc_core::{in_shard_order, Branch, CalibMode, CalibrationSpec, Shard};
use tcc_plan::PlanHash;

use crate::codec::{Reader, Writer};
use crate::{CalibError, CostReport, Moments, PairStats, Site, SiteStats};

/// What one or more processes gathered at one calibrated step: the sums
/// the step's fit and choice read.
#[derive(Clone, Debug)]
pub struct StepStats {
    pub step: usize,
    pub sites: Vec<Site>,
    /// Calibration statistics per site (`None`: no calibration sample
    /// was seen here).
    pub calib: Vec<Option<SiteStats>>,
    /// Validation moments per site, every token of both CFG halves
    /// (`None`: no validation sample was seen here).
    pub validation: Vec<Option<Moments>>,
    /// `Σ ||e||²` and `Σ T ||mean_t e||²` of the per-token reuse error on
    /// the calibration samples (the common share's numerator and
    /// denominator).
    pub err: [f64; 2],
}

fn merge_site(mine: &mut Option<SiteStats>, theirs: &Option<SiteStats>) -> Result<(), CalibError> {
    match (mine.as_mut(), theirs) {
        (_, None) => Ok(()),
        (None, Some(t)) => {
            *mine = Some(t.clone());
            Ok(())
        }
        (Some(SiteStats::Rows(m)), Some(SiteStats::Rows(t))) => m.merge(t),
        (Some(SiteStats::Moments(m)), Some(SiteStats::Moments(t))) => m.merge(t),
        _ => Err(CalibError::Shape(
            "cannot merge row sums with second moments (different pooling)".into(),
        )),
    }
}

fn merge_moments(mine: &mut Option<Moments>, theirs: &Option<Moments>) -> Result<(), CalibError> {
    match (mine.as_mut(), theirs) {
        (_, None) => Ok(()),
        (None, Some(t)) => {
            *mine = Some(t.clone());
            Ok(())
        }
        (Some(m), Some(t)) => m.merge(t),
    }
}

fn prefix(site: &Site) -> String {
    format!("step{}.{}.layer{}", site.step, site.branch, site.block)
}

impl StepStats {
    /// No statistics yet for `sites` of `step`.
    pub fn empty(step: usize, sites: Vec<Site>) -> StepStats {
        let n = sites.len();
        StepStats {
            step,
            sites,
            calib: vec![None; n],
            validation: vec![None; n],
            err: [0.0; 2],
        }
    }

    /// Adds another process's (or shard's) statistics of the same step.
    pub fn merge(&mut self, other: &StepStats) -> Result<(), CalibError> {
        if other.step != self.step || other.sites != self.sites {
            return Err(CalibError::Shape(format!(
                "cannot merge the statistics of step {} ({} sites) into step {} ({} sites)",
                other.step,
                other.sites.len(),
                self.step,
                self.sites.len()
            )));
        }
        for (j, site) in self.sites.iter().enumerate() {
            merge_site(&mut self.calib[j], &other.calib[j]).map_err(|e| e.at(*site))?;
            merge_moments(&mut self.validation[j], &other.validation[j])
                .map_err(|e| e.at(*site))?;
        }
        self.err[0] += other.err[0];
        self.err[1] += other.err[1];
        Ok(())
    }

    fn encode(&self, w: &mut Writer) {
        w.f64(format!("step{}.err", self.step), vec![2], &self.err);
        for (j, site) in self.sites.iter().enumerate() {
            let p = prefix(site);
            match &self.calib[j] {
                Some(SiteStats::Rows(s)) => s.encode(&format!("{p}.calib.rows"), w),
                Some(SiteStats::Moments(m)) => m.encode(&format!("{p}.calib.moments"), w),
                None => {}
            }
            if let Some(m) = &self.validation[j] {
                m.encode(&format!("{p}.validation"), w);
            }
        }
    }

    fn decode(step: usize, sites: Vec<Site>, r: &Reader) -> Result<StepStats, CalibError> {
        let err = r.f64_shaped(&format!("step{step}.err"), &[2])?;
        let mut s = StepStats::empty(step, sites);
        s.err = [err[0], err[1]];
        for (j, site) in s.sites.iter().enumerate() {
            let p = prefix(site);
            s.calib[j] = if r.has(&format!("{p}.calib.rows.a.keys")) {
                Some(SiteStats::Rows(PairStats::decode(
                    &format!("{p}.calib.rows"),
                    r,
                )?))
            } else if r.has(&format!("{p}.calib.moments.n")) {
                Some(SiteStats::Moments(Moments::decode(
                    &format!("{p}.calib.moments"),
                    r,
                )?))
            } else {
                None
            };
            if r.has(&format!("{p}.validation.n")) {
                s.validation[j] = Some(Moments::decode(&format!("{p}.validation"), r)?);
            }
        }
        Ok(s)
    }

    /// The statistics as bytes (safetensors), for another process.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CalibError> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.into_bytes(BTreeMap::new())
    }

    /// Reads [`StepStats::to_bytes`] of the same step and sites; `origin`
    /// names the sender in errors.
    pub fn from_bytes(
        step: usize,
        sites: Vec<Site>,
        bytes: &[u8],
        origin: &str,
    ) -> Result<StepStats, CalibError> {
        StepStats::decode(step, sites, &Reader::new(bytes, origin)?)
    }
}

/// Where the walk adds up what every process gathered. The walk calls it
/// at every calibrated step, after the step's statistics are complete on
/// this process and before the fit: every process then fits the same
/// priors on the same sums and applies them before it walks on.
pub trait Reduce {
    /// The step's statistics summed over every process, the same on each.
    fn step(&mut self, local: StepStats) -> Result<StepStats, CalibError>;
    /// Element-wise sums over every process, the same on each.
    fn values(&mut self, local: Vec<f64>) -> Result<Vec<f64>, CalibError>;
}

/// One process: nothing to add.
pub struct Local;

impl Reduce for Local {
    fn step(&mut self, local: StepStats) -> Result<StepStats, CalibError> {
        Ok(local)
    }
    fn values(&mut self, local: Vec<f64>) -> Result<Vec<f64>, CalibError> {
        Ok(local)
    }
}

/// A collective that gives every process the bytes of every process, in
/// rank order (MPI's `Allgatherv`).
pub trait AllGather {
    fn all_gather(&mut self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, CalibError>;
}

/// [`Reduce`] over an [`AllGather`]: every process receives every part
/// and adds them up itself in rank order, so the sums are bit for bit the
/// same on every process, whatever the transport's reduction order.
pub struct Gathered<G>(pub G);

impl<G: AllGather> Reduce for Gathered<G> {
    fn step(&mut self, local: StepStats) -> Result<StepStats, CalibError> {
        let (step, sites) = (local.step, local.sites.clone());
        let parts = self.0.all_gather(local.to_bytes()?)?;
        let mut total = StepStats::empty(step, sites.clone());
        for (rank, bytes) in parts.iter().enumerate() {
            let part = StepStats::from_bytes(step, sites.clone(), bytes, &format!("rank {rank}"))?;
            total.merge(&part)?;
        }
        Ok(total)
    }

    fn values(&mut self, local: Vec<f64>) -> Result<Vec<f64>, CalibError> {
        let n = local.len();
        let bytes = local.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut total = vec![0.0; n];
        for (rank, part) in self.0.all_gather(bytes)?.iter().enumerate() {
            if part.len() != 8 * n {
                return Err(CalibError::Shape(format!(
                    "rank {rank} sent {} bytes, expected {} values",
                    part.len(),
                    n
                )));
            }
            for (t, b) in total.iter_mut().zip(part.chunks_exact(8)) {
                *t += f64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
        }
        Ok(total)
    }
}

/// What a statistics file was gathered for, and by which shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsMeta {
    /// Content hash of the plan the priors will apply to.
    pub plan_hash: PlanHash,
    pub model: String,
    pub mode: CalibMode,
    /// The calibration settings, command-line overrides applied.
    pub calibration: CalibrationSpec,
    pub batch_size: usize,
    pub shard: Shard,
    /// The calibration and validation samples this shard walked.
    pub samples: [usize; 2],
    pub validation: [usize; 2],
    /// Model evaluations of this shard (of all shards, once merged).
    pub cost: CostReport,
    pub tool_version: String,
}

/// The statistics of every calibrated step of a one-shot calibration
/// shard: a partial result that [`StatsFile::merge`] adds up and
/// [`crate::fit_merged`] fits.
#[derive(Clone, Debug)]
pub struct StatsFile {
    pub meta: StatsMeta,
    pub steps: Vec<StepStats>,
}

/// The file format name in the metadata.
const STATS_FORMAT: &str = "tcc-stats/1";

/// The largest statistics file [`StatsFile::load`] reads (128 GiB: DiT-XL/2's
/// f64 sums take about 3 GB per calibrated step).
pub const MAX_STATS_BYTES: u64 = 1 << 37;

impl StatsFile {
    /// The safetensors bytes: every step's sums (f64), and metadata that
    /// names the plan, the settings, the shard and the sites.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CalibError> {
        let mut w = Writer::default();
        for s in &self.steps {
            s.encode(&mut w);
        }
        let sites: Vec<(usize, String, usize)> = self
            .steps
            .iter()
            .flat_map(|s| s.sites.iter())
            .map(|s| (s.step, s.branch.to_string(), s.block))
            .collect();
        let md: BTreeMap<String, String> = [
            ("format", STATS_FORMAT.to_string()),
            ("meta", json(&self.meta)?),
            ("sites", json(&sites)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        w.into_bytes(md)
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), CalibError> {
        tcc_fs::write_atomically(path, &self.to_bytes()?)
            .map_err(|e| CalibError::Io(format!("{}: {e}", path.display())))
    }

    /// Reads a statistics file; errors name `origin` (the path) and the
    /// tensor or metadata entry.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<StatsFile, CalibError> {
        let r = Reader::new(bytes, origin)?;
        let md = r.metadata();
        let get = |k: &str| {
            md.get(k).ok_or_else(|| {
                r.bad(format!(
                    "metadata has no `{k}`: not a tcc statistics file (`tcc calibrate --shard` writes them)"
                ))
            })
        };
        let format = get("format")?;
        if format != STATS_FORMAT {
            return Err(r.bad(format!(
                "its format is `{format}`, not {STATS_FORMAT}: not a tcc statistics file (`tcc calibrate --shard` writes them)"
            )));
        }
        let meta: StatsMeta = serde_json::from_str(get("meta")?)
            .map_err(|e| r.bad(format!("metadata `meta` is not readable ({e})")))?;
        let sites: Vec<(usize, String, usize)> = serde_json::from_str(get("sites")?)
            .map_err(|e| r.bad(format!("metadata `sites` is not readable ({e})")))?;
        let mut by_step: BTreeMap<usize, Vec<Site>> = BTreeMap::new();
        for (step, branch, block) in sites {
            let b = Branch::from_name(&branch)
                .ok_or_else(|| r.bad(format!("unknown branch `{branch}` in `sites`")))?;
            by_step
                .entry(step)
                .or_default()
                .push(Site::new(step, b, block));
        }
        let steps = by_step
            .into_iter()
            .map(|(step, sites)| StepStats::decode(step, sites, &r))
            .collect::<Result<_, _>>()?;
        Ok(StatsFile { meta, steps })
    }

    /// Reads a statistics file written by [`StatsFile::save`]: only a
    /// regular file of at most [`MAX_STATS_BYTES`].
    pub fn load(path: &Path) -> Result<StatsFile, CalibError> {
        let bytes = tcc_fs::read_input(path, MAX_STATS_BYTES)
            .map_err(|e| CalibError::Io(format!("{}: {e}", path.display())))?;
        StatsFile::from_bytes(&bytes, &path.display().to_string())
    }

    /// Adds up the statistics files of every shard of one calibration, in
    /// shard order. `files` pairs each with the name errors give it.
    /// Refuses files of different plans or settings, and duplicate or
    /// missing shards ([`CalibError::Binding`]).
    pub fn merge(files: Vec<(String, StatsFile)>) -> Result<StatsFile, CalibError> {
        let Some((first_name, first)) = files.first() else {
            return Err(CalibError::Empty("no statistics files to merge".into()));
        };
        let (first_name, a) = (first_name.clone(), first.meta.clone());
        let count = a.shard.count;
        let mut checked = Vec::with_capacity(files.len());
        for (name, f) in files {
            let b = &f.meta;
            let differs = if b.plan_hash != a.plan_hash {
                Some(format!("plan {} against {}", b.plan_hash, a.plan_hash))
            } else if b.model != a.model {
                Some(format!("model `{}` against `{}`", b.model, a.model))
            } else if b.mode != a.mode || b.calibration != a.calibration {
                Some("other calibration settings (mode, samples, seed or prior)".into())
            } else if b.batch_size != a.batch_size {
                Some(format!(
                    "batch size {} against {}",
                    b.batch_size, a.batch_size
                ))
            } else if b.shard.count != count {
                Some(format!("{} shards against {count}", b.shard.count))
            } else {
                None
            };
            if let Some(d) = differs {
                return Err(CalibError::Binding(format!(
                    "{name} and {first_name} are not shards of one calibration: {d}"
                )));
            }
            checked.push((b.shard, name, f));
        }
        let mut parts = in_shard_order(count, checked)
            .map_err(CalibError::Binding)?
            .into_iter();
        let (_, mut total) = parts.next().expect("count >= 1");
        for (name, f) in parts {
            if f.steps.len() != total.steps.len() {
                return Err(CalibError::Binding(format!(
                    "{name} has {} calibrated steps, the others {}",
                    f.steps.len(),
                    total.steps.len()
                )));
            }
            for (t, s) in total.steps.iter_mut().zip(&f.steps) {
                t.merge(s)
                    .map_err(|e| CalibError::Binding(format!("{name}: {e}")))?;
            }
            total.meta.cost.add(&f.meta.cost);
            total.meta.samples[1] = f.meta.samples[1];
            total.meta.validation[1] = f.meta.validation[1];
        }
        total.meta.shard = Shard::WHOLE;
        Ok(total)
    }
}

/// JSON text of a value, for the metadata.
fn json<T: Serialize>(v: &T) -> Result<String, CalibError> {
    serde_json::to_string(v).map_err(|e| CalibError::Format(e.to_string()))
}
