//! What a command line may ask for, checked before any work: counts in
//! range, output paths writable, and the memory a run will hold against
//! what the machine has.

use std::path::Path;

use candle_core::DType;
use tcc_fs::OutputKind;
use tcc_plan::Plan;

use crate::error::CliError;
use crate::runtime::ModelArgs;

/// The most samples a command samples, calibrates on or evaluates per seed
/// set: the schedule's bound on calibration samples, for every count.
pub const MAX_SAMPLES: usize = tcc_plan::MAX_CALIBRATION_SAMPLES as usize;

/// The most samples per model batch.
pub const MAX_BATCH: usize = 1 << 16;

/// Refuses a count outside `1..=max`, naming the flag.
pub fn check_count(flag: &str, value: usize, max: usize) -> Result<(), CliError> {
    if value == 0 || value > max {
        return Err(CliError::input(format!(
            "{flag} {value} is out of range: expected 1 to {max}"
        )));
    }
    Ok(())
}

/// Refuses an output path that cannot be written as `kind`, naming the
/// flag: asked before the work whose result it would hold.
pub fn check_output(flag: &str, path: &Path, kind: OutputKind) -> Result<(), CliError> {
    tcc_fs::check_output(path, kind)
        .map_err(|e| CliError::input(format!("{flag} {}: {e}", path.display())))
}

/// The bytes a run holds at its peak, by part, for the check against the
/// machine's memory before the run starts. Estimates: the largest
/// buffers, not every allocation.
#[derive(Debug, Default)]
pub struct Memory {
    parts: Vec<(String, u128)>,
}

/// Bytes of `n` f32 values.
fn f32s(n: u128) -> u128 {
    4 * n
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    pub fn add(&mut self, what: impl Into<String>, bytes: u128) -> &mut Memory {
        if bytes > 0 {
            self.parts.push((what.into(), bytes));
        }
        self
    }

    /// The model's weights in `dtype` (random ones, or read from weight
    /// files, which are held whole on the host while the model loads).
    pub fn model(&mut self, plan: &Plan, args: &ModelArgs, dtype: DType) -> &mut Memory {
        let params = plan.model.parameter_count();
        self.add("model weights", params * dtype.size_in_bytes() as u128);
        if args.random_weights.is_none() {
            let files: Option<u128> = plan.weights.as_ref().and_then(|w| {
                let files = tcc_model::weight_files(Path::new(w)).ok()?;
                Some(files.iter().map(|(_, len)| *len as u128).sum())
            });
            self.add(
                "the weight files while they load",
                files.unwrap_or(f32s(params)),
            );
        }
        self
    }

    /// One model batch of `batch` samples in flight: activations (both
    /// CFG halves), attention scores and the plan's cache at its peak.
    pub fn batch(&mut self, plan: &Plan, batch: usize) -> &mut Memory {
        self.add("one model batch", batch_bytes(plan, batch as u128));
        self
    }

    /// `count` model batches of `batch` samples in flight at once (the
    /// trajectories that `tcc sweep` steps side by side).
    pub fn batches(&mut self, plan: &Plan, batch: usize, count: usize) -> &mut Memory {
        self.add(
            format!("{count} model batches in flight"),
            count as u128 * batch_bytes(plan, batch as u128),
        );
        self
    }

    /// `n` latents (one sample's `C x H x W` each, f32), `copies` times.
    pub fn latents(&mut self, what: &str, plan: &Plan, n: usize, copies: u128) -> &mut Memory {
        self.add(what, copies * n as u128 * f32s(latent_values(plan)))
    }

    pub fn total(&self) -> u128 {
        self.parts.iter().map(|(_, b)| *b).sum()
    }

    /// Refuses the run if it needs more than the memory available (RAM
    /// not in use plus free swap, as the kernel reports it); where that is
    /// unknown, nothing is refused.
    pub fn check(&self) -> Result<(), CliError> {
        let Some(available) = available_memory() else {
            return Ok(());
        };
        let total = self.total();
        if total <= available as u128 {
            return Ok(());
        }
        let mut parts: Vec<&(String, u128)> = self.parts.iter().collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let list: Vec<String> = parts
            .iter()
            .take(4)
            .map(|(w, b)| format!("{w} {}", human(*b)))
            .collect();
        Err(CliError::input(format!(
            "this run needs about {} of memory ({}), more than the {} available: ask for fewer samples, a smaller batch or fewer outputs",
            human(total),
            list.join(", "),
            human(available as u128)
        )))
    }
}

/// Values of one sample's latents.
pub fn latent_values(plan: &Plan) -> u128 {
    let m = &plan.model;
    (m.in_channels * m.input_size * m.input_size) as u128
}

fn batch_bytes(plan: &Plan, batch: u128) -> u128 {
    let m = &plan.model;
    let rows = batch * if plan.sampler.uses_cfg() { 2 } else { 1 };
    let (t, d, f) = (m.tokens() as u128, m.hidden as u128, m.mlp_hidden() as u128);
    let heads = m.heads as u128;
    let l = m.caption_tokens as u128;
    let per_row = t * (8 * d + 2 * f)
        + heads * t * t
        + l * (m.caption_dim as u128 + 2 * d)
        + heads * t * l
        + tcc_exec::CacheLayout::new(plan).peak_entries() as u128 * t * d;
    f32s(rows * per_row)
}

/// `1.2 GB`-style sizes.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `MemAvailable + SwapFree` of /proc/meminfo (Linux), in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_runs_are_refused_with_the_estimate() {
        let mut m = Memory::new();
        m.add("final latents", 12 << 40).add("images", 1 << 30);
        assert_eq!(m.total(), (12 << 40) + (1 << 30));
        if available_memory().is_some() {
            let e = match m.check() {
                Err(CliError::Input(e)) => e,
                other => panic!("{other:?}"),
            };
            assert!(
                e.contains("13.2 TB") && e.contains("final latents 13.2 TB"),
                "{e}"
            );
        }
        assert!(Memory::new().add("a little", 1000).check().is_ok());
    }
}
