//! Calibration assembled from a plan: which samples a shard walks (in
//! batches, by the shard rule of [`Shard`]), the walk and fit that turn
//! them into a bound [`PriorSet`], the one-shot statistics a shard writes
//! instead, and the hooks that apply a set.

use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device};
use tcc_core::{CalibMode, Shard};
use tcc_exec::{Captions, Inputs};
use tcc_model::BlockModel;
use tcc_plan::{Plan, PlanHash};

use crate::{
    calibrate_across, calibrated_sites, gather_one_shot, CalibBatch, CalibError, Calibration,
    PriorHooks, PriorSet, Progress, Reduce, StatsFile, StatsMeta,
};

/// The dtype TCC priors are applied in, on every device and whatever the
/// model's dtype: the branch output is cast to f32, corrected and cast
/// back, as the reference code does.
pub const PRIOR_DTYPE: DType = DType::F32;

impl CalibBatch {
    /// Samples `range` of `inputs` in batches of at most `batch_size`,
    /// each sample keyed by its condition (class or prompt).
    pub fn batches<'s>(
        inputs: &'s Inputs,
        plan: &'s Plan,
        range: Range<usize>,
        batch_size: usize,
    ) -> impl Iterator<Item = Result<CalibBatch, CalibError>> + 's {
        inputs.batches(plan, range, batch_size).map(move |b| {
            let (start, batch) = b?;
            let len = batch.noise.dims()[0];
            Ok(CalibBatch {
                batch,
                conditions: inputs.labels[start..start + len]
                    .iter()
                    .map(|&c| c as u64)
                    .collect(),
            })
        })
    }
}

/// The calibration and validation samples that one shard of a plan's
/// calibration walks: `plan.calibration.samples` of its seed and the
/// validation samples of theirs, conditions cycling through the classes
/// or prompts, in batches of the whole run's.
pub struct CalibSamples {
    pub batches: Vec<CalibBatch>,
    pub validation: Vec<CalibBatch>,
    /// Which of the calibration and of the validation samples these are.
    pub range: Range<usize>,
    pub validation_range: Range<usize>,
}

impl CalibSamples {
    /// Shard `shard`'s samples (its calibration share must not be empty).
    pub fn for_shard(
        plan: &Plan,
        shard: Shard,
        batch_size: usize,
        captions: Option<&Captions>,
        device: &Device,
    ) -> Result<CalibSamples, CalibError> {
        let cal = &plan.calibration;
        let range = shard
            .nonempty_samples(cal.samples, batch_size, "calibration samples")
            .map_err(CalibError::Input)?;
        let n = cal.validation_samples();
        let validation_range = shard.samples(n, batch_size);
        let walk = |seed: u64, n: usize, range: Range<usize>| {
            let inputs = Inputs::cycling(plan, seed, n, captions, device);
            CalibBatch::batches(&inputs, plan, range, batch_size).collect::<Result<Vec<_>, _>>()
        };
        Ok(CalibSamples {
            batches: walk(cal.seed, cal.samples, range.clone())?,
            validation: walk(cal.validation_seed(), n, validation_range.clone())?,
            range,
            validation_range,
        })
    }

    /// How many calibration and validation progress events
    /// ([`Progress::Calibration`], [`Progress::Validation`]) a walk of
    /// these samples over `plan` reports.
    pub fn progress_len(&self, plan: &Plan) -> u64 {
        (self.batches.len() + self.validation.len()) as u64 * calibrated_sites(plan).len() as u64
    }
}

/// Refuse calibration settings that cannot be validated (the schedule
/// compiler checks the same; command-line overrides can break it again).
pub fn check_validation(plan: &Plan) -> Result<(), CalibError> {
    let cal = &plan.calibration;
    if cal.validation_chooses() && cal.validation_samples() == 0 {
        return Err(CalibError::Input(format!(
            "{}: these calibration settings choose priors on validation samples: set validation-samples to 1 or more",
            plan.source
        )));
    }
    if cal.validation_samples() > 0 && cal.validation_seed() == cal.seed {
        return Err(CalibError::Input(format!(
            "{}: the validation seed {} is the calibration seed: choose another seed",
            plan.source, cal.seed
        )));
    }
    Ok(())
}

impl PriorSet {
    /// Fits the priors of `plan`'s calibrated steps in `mode` on `samples`
    /// (validated as the plan's settings say), as one of the processes
    /// that `reduce` joins, and binds them to `plan_hash`. Returns the set
    /// and the walk's report.
    pub fn fit<M: BlockModel>(
        model: &M,
        plan: &Plan,
        plan_hash: PlanHash,
        mode: CalibMode,
        samples: &CalibSamples,
        reduce: &mut dyn Reduce,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(PriorSet, Calibration), CalibError> {
        let cal = &plan.calibration;
        let result = calibrate_across(
            model,
            plan,
            &samples.batches,
            &samples.validation,
            cal.validation_samples() > 0,
            mode,
            PRIOR_DTYPE,
            reduce,
            progress,
        )?;
        let set = PriorSet::fitted(
            plan_hash,
            &plan.model.name,
            cal,
            mode,
            &result,
            result.report(),
        );
        Ok((set, result))
    }

    /// Reads a priors file and checks it against `plan` (its binding, then
    /// its sites and shapes); binding errors name the file.
    pub fn load_for(path: &Path, plan: &Plan) -> Result<PriorSet, CalibError> {
        let set = PriorSet::load(path)?;
        set.check_binding(&plan.hash(), &plan.model.name)
            .and_then(|()| set.check_plan(plan))
            .map_err(|e| CalibError::Binding(format!("{}: {e}", path.display())))?;
        Ok(set)
    }

    /// Hooks that apply the set on `device` (in [`PRIOR_DTYPE`]).
    pub fn hooks(&self, device: &Device) -> Result<PriorHooks, CalibError> {
        PriorHooks::from_set(self, PRIOR_DTYPE, device).map_err(CalibError::Tensor)
    }
}

impl StatsFile {
    /// The one-shot statistics of shard `shard` of `plan`'s calibration,
    /// walked on `samples` in batches of `batch_size` and bound to
    /// `plan_hash`: what `tcc calibrate --shard` writes.
    #[allow(clippy::too_many_arguments)]
    pub fn gather<M: BlockModel>(
        model: &M,
        plan: &Plan,
        plan_hash: PlanHash,
        mode: CalibMode,
        batch_size: usize,
        shard: Shard,
        samples: &CalibSamples,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<StatsFile, CalibError> {
        let (steps, cost) =
            gather_one_shot(model, plan, &samples.batches, &samples.validation, progress)?;
        Ok(StatsFile {
            meta: StatsMeta {
                plan_hash,
                model: plan.model.name.clone(),
                mode,
                calibration: plan.calibration.clone(),
                batch_size,
                shard,
                samples: [samples.range.start, samples.range.end],
                validation: [samples.validation_range.start, samples.validation_range.end],
                cost,
                tool_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            steps,
        })
    }
}
