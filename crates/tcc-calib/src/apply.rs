//! Applying priors during a run: executor hooks that replace a reused
//! branch output `B` with `B @ M + c`, computed in the dtype of `M` and `c`
//! and cast back to `B`'s (tcc keeps them in f32 whatever the model's
//! dtype, as the reference code applies its priors).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tcc_core::Branch;
use tcc_exec::{BranchSite, ExecError, Hooks};
use tcc_plan::Action;

use crate::{Prior, PriorSet, Site};

/// Executor hooks that apply folded priors to the reuses the plan marks.
///
/// The executor stores the returned value back into its cache, so a chain of
/// reuse steps corrects the already-corrected output, as SPEC requires.
#[derive(Clone, Debug, Default)]
pub struct PriorHooks {
    folded: HashMap<Site, (Tensor, Tensor)>,
    /// Whether a marked reuse without a prior is an error (sampling with a
    /// priors file) or passes through (during calibration, before the
    /// prior of that step is fitted).
    strict: bool,
}

impl PriorHooks {
    /// Hooks that apply what is inserted and let everything else through.
    pub fn lenient() -> PriorHooks {
        PriorHooks::default()
    }

    /// Hooks for every prior of `set`, blended with the set's alpha. A
    /// reuse the plan marks for a prior that the set lacks is an error.
    pub fn from_set(
        set: &PriorSet,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<PriorHooks> {
        let mut hooks = PriorHooks {
            folded: HashMap::new(),
            // alpha = 0 folds every prior to the identity: nothing to apply.
            strict: set.meta.alpha != 0.0,
        };
        for (site, prior) in &set.priors {
            hooks.insert(*site, prior, set.meta.alpha, dtype, device)?;
        }
        Ok(hooks)
    }

    /// Fold `prior` with `alpha` and apply it at `site` from now on.
    /// With `alpha = 0` the prior is the identity and is not applied at all,
    /// so the run stays bit-identical to the uncalibrated plan.
    pub fn insert(
        &mut self,
        site: Site,
        prior: &Prior,
        alpha: f64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<()> {
        if alpha == 0.0 {
            self.folded.remove(&site);
            return Ok(());
        }
        let f = prior.fold(alpha);
        let d = f.dim;
        let m: Vec<f32> = f.m.iter().map(|&x| x as f32).collect();
        let c: Vec<f32> = f.c.iter().map(|&x| x as f32).collect();
        let rows = c.len() / d;
        let m = Tensor::from_vec(m, (d, d), device)?.to_dtype(dtype)?;
        let c = Tensor::from_vec(c, (rows, d), device)?.to_dtype(dtype)?;
        self.folded.insert(site, (m, c));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.folded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.folded.is_empty()
    }

    fn get(&self, step: usize, branch: Branch, block: usize) -> Option<&(Tensor, Tensor)> {
        self.folded.get(&(step, branch, block))
    }
}

impl Hooks for PriorHooks {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        if !matches!(site.action, Action::Reuse { prior: true, .. }) {
            return Ok(None);
        }
        match self.get(site.step, site.branch, site.block) {
            Some((m, c)) => Ok(Some(
                out.to_dtype(m.dtype())?
                    .broadcast_matmul(m)?
                    .broadcast_add(c)?
                    .to_dtype(out.dtype())?,
            )),
            None if self.strict => Err(ExecError::Candle(candle_core::Error::Msg(format!(
                "the plan marks step {}, {}, layer {} for a prior, but the priors file has none",
                site.step, site.branch, site.block
            )))),
            None => Ok(None),
        }
    }
}
