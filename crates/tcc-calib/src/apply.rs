//! Applying priors during a run: executor hooks that replace a reused
//! branch output `B` with `B @ M + c`, computed in the dtype of `M` and `c`
//! and cast back to `B`'s (tcc keeps them in f32 whatever the model's
//! dtype, as the reference code applies its priors).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tcc_exec::{BranchSite, ExecError, Hooks};

use crate::{Prior, PriorSet, Site};

/// Executor hooks that apply folded priors to the reuses the plan marks.
///
/// The executor stores the returned value back into its cache, so a chain of
/// reuse steps corrects the already-corrected output, as SPEC requires. At a
/// ToCa partial compute only the stale rows are corrected: the fresh ones
/// (computed at this step) are returned bit for bit as computed, and the
/// entry the cache keeps is the corrected stale rows with the fresh ones.
#[derive(Clone, Debug, Default)]
pub struct PriorHooks {
    /// `None`: the site is calibrated but carries no prior (blend 0).
    folded: HashMap<Site, Option<(Tensor, Tensor)>>,
    /// Whether a marked reuse that the hooks do not know is an error
    /// (sampling with a priors file) or passes through (during calibration,
    /// before the prior of that step is fitted).
    strict: bool,
}

impl PriorHooks {
    /// Hooks that apply what is inserted and let everything else through.
    pub fn lenient() -> PriorHooks {
        PriorHooks::default()
    }

    /// Hooks for every site of `set`, each prior blended with its site's
    /// alpha. A reuse the plan marks for a prior that the set does not
    /// know is an error.
    pub fn from_set(
        set: &PriorSet,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<PriorHooks> {
        let mut hooks = PriorHooks {
            folded: HashMap::new(),
            // A format-1 set with alpha = 0 folds every prior to the
            // identity: nothing to apply, whatever the plan marks.
            strict: set.meta.alpha != 0.0 || !set.alphas.is_empty(),
        };
        for site in set.sites() {
            match set.priors.get(&site) {
                Some(prior) => hooks.insert(site, prior, set.alpha(&site), dtype, device)?,
                None => {
                    hooks.folded.insert(site, None);
                }
            }
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
        if let Some(e) = prior.shape_error() {
            return Err(candle_core::Error::Msg(format!("{site}: {e}")));
        }
        if alpha == 0.0 {
            self.folded.insert(site, None);
            return Ok(());
        }
        let f = prior.fold(alpha);
        let d = f.dim;
        let m: Vec<f32> = f.m.iter().map(|&x| x as f32).collect();
        let c: Vec<f32> = f.c.iter().map(|&x| x as f32).collect();
        let rows = c.len() / d;
        let m = Tensor::from_vec(m, (d, d), device)?.to_dtype(dtype)?;
        let c = Tensor::from_vec(c, (rows, d), device)?.to_dtype(dtype)?;
        self.folded.insert(site, Some((m, c)));
        Ok(())
    }

    /// Number of sites that apply a prior.
    pub fn len(&self) -> usize {
        self.folded.values().filter(|f| f.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Hooks for PriorHooks {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        if !site.action.has_prior() {
            return Ok(None);
        }
        match self
            .folded
            .get(&Site::new(site.step, site.branch, site.block))
        {
            Some(Some((m, c))) => {
                let tokens = out.dim(1)?;
                if let Some(f) = site.fresh {
                    if f.iter().all(|r| r.len() == tokens) {
                        // Every token was computed: nothing stale to correct.
                        return Ok(None);
                    }
                }
                let corrected = out
                    .to_dtype(m.dtype())?
                    .broadcast_matmul(m)?
                    .broadcast_add(c)?
                    .to_dtype(out.dtype())?;
                Ok(Some(match site.fresh {
                    // A partial compute: the fresh rows are computed at this
                    // step, not reused; they stay as computed.
                    Some(f) => tcc_exec::toca::keep_fresh(&corrected, out, f)?,
                    None => corrected,
                }))
            }
            Some(None) => Ok(None),
            None if self.strict => Err(ExecError::Candle(candle_core::Error::Msg(format!(
                "the plan marks step {}, {}, layer {} for a prior, but the priors file has none",
                site.step, site.branch, site.block
            )))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use tcc_core::Branch;

    use super::*;

    /// A zero-width prior (`R` of `[0, 0]`) once divided by zero here; any
    /// prior whose sizes disagree is an error naming the site.
    #[test]
    fn priors_whose_sizes_disagree_are_errors_not_panics() {
        let site = Site::new(1, Branch::Attn, 0);
        let mut hooks = PriorHooks::lenient();
        let zero = Prior {
            dim: 0,
            r: vec![],
            mu_a: vec![],
            mu_b: vec![],
            ..Prior::identity(1)
        };
        let mut short = Prior::identity(4);
        short.mu_b.pop();
        let mut no_rows = Prior::identity(4);
        no_rows.mu_a.clear();
        no_rows.mu_b.clear();
        for (prior, alpha) in [
            (zero.clone(), 0.5),
            (zero, 0.0),
            (short, 0.5),
            (no_rows, 1.0),
        ] {
            let e = hooks
                .insert(site, &prior, alpha, DType::F32, &Device::Cpu)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("step 1, attn, layer 0") && e.contains("width"),
                "{e}"
            );
        }
        assert!(hooks.is_empty());
        hooks
            .insert(site, &Prior::identity(4), 0.5, DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(hooks.len(), 1);
    }
}
