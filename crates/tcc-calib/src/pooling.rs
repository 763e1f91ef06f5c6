//! From branch outputs to statistics rows: which CFG half(s), and what a
//! row is (a condition, a token position, a sample, or every token).

use candle_core::{DType, Tensor};
use tcc_core::{CfgHalf, CfgOrder, Pooling};
use tcc_plan::Plan;

use crate::{residual, CalibError, Centered, Moments, PairStats, Prior, Side};

fn candle(e: candle_core::Error) -> CalibError {
    CalibError::Numerics(e.to_string())
}

/// Row key bit marking the null-condition half under `tokens` pooling with
/// `pooled-half = "both"`: a class's conditional and unconditional rows stay
/// apart.
const UNCOND_ROW: u64 = 1 << 63;

/// How to turn one branch output into statistics rows: the plan's pooling
/// mode and pooled CFG half(s). `tcc eval` uses it to measure online the
/// same distances that calibration reports offline.
#[derive(Clone, Copy, Debug)]
pub struct Pooler {
    pooling: Pooling,
    half: CfgHalf,
    cfg: Option<CfgOrder>,
}

/// The statistics of one calibrated site, in the form its pooling needs:
/// per-row sums for `tokens` / `conditions` (rows are means over many
/// contributions), second moments for `samples` / `none`.
#[derive(Clone, Debug)]
pub enum SiteStats {
    Rows(PairStats),
    Moments(Moments),
}

impl Pooler {
    pub fn new(plan: &Plan) -> Pooler {
        Pooler {
            pooling: plan.calibration.pooling,
            half: plan.calibration.pooled_half,
            cfg: plan.sampler.uses_cfg().then_some(plan.sampler.cfg_order),
        }
    }

    /// Every token of both CFG halves: how the validation samples measure
    /// priors (a prior is applied to every token of both halves).
    pub fn validation(plan: &Plan) -> Pooler {
        Pooler {
            pooling: Pooling::Unpooled,
            half: CfgHalf::Both,
            cfg: plan.sampler.uses_cfg().then_some(plan.sampler.cfg_order),
        }
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Empty statistics of width `dim` for this pooling.
    pub fn stats(&self, dim: usize) -> SiteStats {
        match self.pooling {
            Pooling::Tokens | Pooling::Conditions => SiteStats::Rows(PairStats::new(dim)),
            Pooling::Samples | Pooling::Unpooled => SiteStats::Moments(Moments::new(dim)),
        }
    }

    /// The pooled half(s) of a model batch `out` (`[B or 2B, T, D]`, `b`
    /// samples), as f32 `[b, T, D]` tensors, each with whether it is the
    /// null-condition half.
    pub fn halves(&self, out: &Tensor, b: usize) -> Result<Vec<(Tensor, bool)>, CalibError> {
        let cond_first = match self.cfg {
            None => {
                return Ok(vec![(out.to_dtype(DType::F32).map_err(candle)?, false)]);
            }
            Some(order) => order == CfgOrder::CondFirst,
        };
        let take = |uncond: bool| -> Result<(Tensor, bool), CalibError> {
            let offset = if uncond == cond_first { b } else { 0 };
            let half = out
                .narrow(0, offset, b)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(candle)?;
            Ok((half, uncond))
        };
        match self.half {
            CfgHalf::Cond => Ok(vec![take(false)?]),
            CfgHalf::Uncond => Ok(vec![take(true)?]),
            CfgHalf::Both => Ok(vec![take(false)?, take(true)?]),
        }
    }

    /// Add the pooled rows of one side's branch output `out`
    /// (`[B or 2B, T, D]`) to row statistics (`tokens` / `conditions`).
    pub fn add(
        &self,
        out: &Tensor,
        conditions: &[u64],
        side: Side,
        stats: &mut PairStats,
    ) -> Result<(), CalibError> {
        for (half, uncond) in self.halves(out, conditions.len())? {
            // Summed per batch on the tensors' device, merged in f64.
            match self.pooling {
                Pooling::Tokens => {
                    let keys: Vec<u64> = conditions
                        .iter()
                        .map(|&k| if uncond { k | UNCOND_ROW } else { k })
                        .collect();
                    stats.add_rows(side, &half.mean(1).map_err(candle)?, &keys)?
                }
                Pooling::Conditions => stats.add_positions(side, &half)?,
                Pooling::Samples | Pooling::Unpooled => {
                    return Err(CalibError::Shape(format!(
                        "`{}` pooling keeps second moments, not row sums",
                        self.pooling
                    )))
                }
            }
        }
        Ok(())
    }

    /// Add the paired reference `a` and accelerated `b` outputs of one
    /// batch (`[B or 2B, T, D]`) to a site's statistics.
    pub fn add_pair(
        &self,
        a: &Tensor,
        b: &Tensor,
        conditions: &[u64],
        stats: &mut SiteStats,
    ) -> Result<(), CalibError> {
        match stats {
            SiteStats::Rows(st) => {
                self.add(a, conditions, Side::Reference, st)?;
                self.add(b, conditions, Side::Accelerated, st)
            }
            SiteStats::Moments(m) => {
                let n = conditions.len();
                for ((ha, _), (hb, _)) in self.halves(a, n)?.into_iter().zip(self.halves(b, n)?) {
                    match self.pooling {
                        Pooling::Samples => {
                            m.add_rows(&ha.mean(1).map_err(candle)?, &hb.mean(1).map_err(candle)?)?
                        }
                        _ => {
                            let (s, t, d) = ha.dims3().map_err(candle)?;
                            m.add_rows(
                                &ha.reshape((s * t, d)).map_err(candle)?,
                                &hb.reshape((s * t, d)).map_err(candle)?,
                            )?
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The per-token reuse error `e = a - b` of the pooled half(s):
    /// `(Σ ||e||², T Σ_samples ||mean over tokens of e||²)`. The ratio is the
    /// share of the error that every token of a sample has in common: all
    /// that a prior with one shift per sample could remove.
    pub fn common_error(
        &self,
        a: &Tensor,
        b: &Tensor,
        samples: usize,
    ) -> Result<(f64, f64), CalibError> {
        let (mut total, mut common) = (0.0, 0.0);
        for ((ha, _), (hb, _)) in self
            .halves(a, samples)?
            .into_iter()
            .zip(self.halves(b, samples)?)
        {
            let e = (ha - hb)
                .and_then(|e| e.to_dtype(DType::F64))
                .map_err(candle)?;
            let t = e.dim(1).map_err(candle)? as f64;
            total += e
                .sqr()
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar::<f64>())
                .map_err(candle)?;
            common += t * e
                .mean(1)
                .and_then(|m| m.sqr())
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_scalar::<f64>())
                .map_err(candle)?;
        }
        Ok((total, common))
    }
}

impl SiteStats {
    pub fn dim(&self) -> usize {
        match self {
            SiteStats::Rows(s) => s.dim(),
            SiteStats::Moments(m) => m.dim(),
        }
    }

    /// Number of rows a fit sees.
    pub fn rows(&self) -> usize {
        match self {
            SiteStats::Rows(s) => s.len(),
            SiteStats::Moments(m) => m.rows() as usize,
        }
    }

    pub fn centered(&self, pooling: Pooling) -> Result<Centered, CalibError> {
        match self {
            SiteStats::Rows(s) => Centered::from_pair_stats(s, pooling),
            SiteStats::Moments(m) => Centered::from_moments(m),
        }
    }

    /// `(Σ ||a - out||², Σ ||a - b||², Σ ||a||²)` over the rows, with
    /// `out` the prior blended with `alpha` (`None`: no prior).
    pub fn residual(
        &self,
        prior: Option<&Prior>,
        pooling: Pooling,
        alpha: f64,
    ) -> Result<(f64, f64, f64), CalibError> {
        match self {
            SiteStats::Rows(s) => {
                let identity = Prior::identity(s.dim());
                let (after, before, norm) =
                    residual(s, prior.unwrap_or(&identity), pooling, alpha)?;
                Ok((if prior.is_some() { after } else { before }, before, norm))
            }
            SiteStats::Moments(m) => {
                let before = m.error_identity();
                let after = match prior {
                    Some(p) => crate::blended_error(m.error_terms(&p.fold(1.0))?, alpha),
                    None => before,
                };
                Ok((after, before, m.norm_a()))
            }
        }
    }
}
