//! `tcc sweep`: one setting of a schedule at several values, each value's
//! plan measured against full computation on the same samples, so that a
//! threshold or ratio is picked from measurements: the speedup (the cost
//! model's for static plans, the realised one for run-time policies), the
//! steps computed, the error and the FD of each value.
//!
//! The values are the variants of one evaluation ([`accumulate`]): full
//! computation runs once per batch and every value's plan steps beside it
//! from the same noise and conditions.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tcc_exec::NoHooks;
use tcc_metrics::{FeatureStats, Summary};
use tcc_model::BlockModel;
use tcc_plan::{Plan, PlanCost};
use tcc_schedule::{RuleAction, Schedule, SelNode, Selector, Spanned};

use crate::decisions::DecisionReport;
use crate::run::{accumulate, EvalError, Progress, Scorer, SeedSet, Variant, VariantReport};

/// The most values one sweep takes: each is a trajectory beside full
/// computation's, all in memory at once.
pub const MAX_SWEEP_VALUES: usize = 32;

/// The setting a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SweepParam {
    /// `[dynamic] threshold`: a run-time policy's threshold, >= 0 or `inf`.
    Threshold,
    /// `fresh-ratio` of every `partial` rule (ToCa), in [0, 1].
    FreshRatio,
    /// `N` of every `every N` step selector of the `[[cache]]` rules
    /// (FORA's refresh interval, ToCa's full-compute interval), >= 1.
    Refresh,
}

impl SweepParam {
    /// Every parameter with its spelling on the command line.
    pub const ALL: &'static [(&'static str, SweepParam)] = &[
        ("threshold", SweepParam::Threshold),
        ("fresh-ratio", SweepParam::FreshRatio),
        ("refresh", SweepParam::Refresh),
    ];

    pub fn as_str(self) -> &'static str {
        SweepParam::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .expect("every parameter is spelled")
    }

    /// Whether `v` is a value of this parameter; else what it must be.
    pub fn check(self, v: f64) -> Result<(), String> {
        let (ok, want) = match self {
            SweepParam::Threshold => (v >= 0.0, "a threshold: a number >= 0, or inf"),
            SweepParam::FreshRatio => ((0.0..=1.0).contains(&v), "a fresh ratio in [0, 1]"),
            SweepParam::Refresh => (
                v.is_finite() && v >= 1.0,
                "a refresh interval: a finite number >= 1",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{v} is not {want}"))
        }
    }

    /// Sets this parameter of `schedule` to `v` (checked with
    /// [`SweepParam::check`]) and drops its `[calibration]`: a sweep
    /// measures the cache without priors, and steps calibrated for one
    /// value need not be reuse steps at another. Errors when the schedule
    /// has no such setting.
    pub fn apply(self, schedule: &mut Schedule, v: f64) -> Result<(), String> {
        schedule.calibration = None;
        match self {
            SweepParam::Threshold => {
                let Some(d) = schedule.dynamic.as_mut() else {
                    return Err("has no [dynamic] section: --param threshold varies a run-time policy's threshold (e.g. schedules/fbcache.sched)".into());
                };
                let span = d.value.threshold.as_ref().map_or(d.span, |t| t.span);
                d.value.threshold = Some(Spanned::new(v, span));
            }
            SweepParam::FreshRatio => {
                let mut found = false;
                for rule in &mut schedule.cache {
                    if let RuleAction::Partial(_) = rule.value.action.value {
                        let span = rule
                            .value
                            .fresh_ratio
                            .as_ref()
                            .map_or(rule.span, |r| r.span);
                        rule.value.fresh_ratio = Some(Spanned::new(v, span));
                        found = true;
                    }
                }
                if !found {
                    return Err("has no `partial` rule: --param fresh-ratio varies ToCa's fresh ratio (e.g. schedules/toca3.sched)".into());
                }
            }
            SweepParam::Refresh => {
                let mut found = false;
                for rule in &mut schedule.cache {
                    if let Some(sel) = step_selector(&mut rule.value.action.value) {
                        found |= set_every(sel, v);
                    }
                }
                if !found {
                    return Err("has no `every N` step selector in its [[cache]] rules: --param refresh varies N (e.g. schedules/fora3.sched)".into());
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for SweepParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The step selector of a rule's action, if it has one.
fn step_selector(action: &mut RuleAction) -> Option<&mut Selector> {
    match action {
        RuleAction::Compute(s)
        | RuleAction::Reuse(s)
        | RuleAction::Refresh(s)
        | RuleAction::ReuseDelta(s)
        | RuleAction::Partial(s) => Some(s),
        RuleAction::Mask(_) | RuleAction::Table(_) => None,
    }
}

/// Sets N of every `every N` in `sel`; whether there was one.
fn set_every(sel: &mut Selector, v: f64) -> bool {
    match &mut sel.value {
        SelNode::Every { n, .. } => {
            *n = v;
            true
        }
        SelNode::Union(items) | SelNode::Intersect(items) => {
            items.iter_mut().fold(false, |f, s| set_every(s, v) | f)
        }
        SelNode::Except { base, removed } => set_every(base, v) | set_every(removed, v),
        _ => false,
    }
}

/// The values of `--values` for `param`: numbers (or `inf`), at least one
/// and at most [`MAX_SWEEP_VALUES`], each valid for the parameter and
/// given once. Errors name the flag.
pub fn parse_values(param: SweepParam, values: &[String]) -> Result<Vec<f64>, String> {
    if values.is_empty() || values.len() > MAX_SWEEP_VALUES {
        return Err(format!(
            "--values: expected 1 to {MAX_SWEEP_VALUES} values, got {}",
            values.len()
        ));
    }
    let mut out: Vec<f64> = Vec::with_capacity(values.len());
    for text in values {
        let t = text.trim();
        let v: f64 = match t {
            "inf" | "+inf" => f64::INFINITY,
            _ => t
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("--values: `{t}` is not a number (or `inf`)"))?,
        };
        param
            .check(v)
            .map_err(|e| format!("--values for --param {param}: {e}"))?;
        if out.contains(&v) {
            return Err(format!("--values: {t} is given twice"));
        }
        out.push(v);
    }
    Ok(out)
}

/// One value of a sweep and the plan it compiles to.
pub struct Point {
    pub value: f64,
    pub plan: Plan,
}

/// Mean and sample standard deviation over seed sets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The number of seed sets.
    pub n: u64,
    #[serde(with = "tcc_core::json_float")]
    pub mean: f64,
    /// NaN for one seed set, or with an infinite value.
    #[serde(with = "tcc_core::json_float")]
    pub std: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Stat {
        let s = Summary::of(values);
        Stat {
            n: s.n(),
            mean: s.mean(),
            std: s.std(),
        }
    }

    /// `mean ± std` (only the mean for one seed set, or where the std is
    /// not a number: an infinite PSNR of identical samples).
    pub fn text(&self, digits: usize) -> String {
        if self.n >= 2 && self.std.is_finite() {
            format!("{:.digits$} ± {:.digits$}", self.mean, self.std)
        } else {
            format!("{:.digits$}", self.mean)
        }
    }
}

/// Full computation's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullRow {
    pub fd: Option<Stat>,
    pub accuracy: Option<Stat>,
    /// Wall time per sample in the model, milliseconds.
    pub ms_per_sample: Stat,
}

/// One value's measurements, over the seed sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    #[serde(with = "tcc_core::json_float")]
    pub value: f64,
    pub plan_hash: String,
    /// The cost model's speedup (full MACs / plan MACs) of a static plan;
    /// absent for a run-time policy, whose cost is decided while sampling.
    pub predicted_speedup: Option<f64>,
    /// A run-time policy's realised speedup: full computation's MACs over
    /// the MACs that ran.
    pub realised_speedup: Option<Stat>,
    /// A run-time policy's mean steps computed per sample.
    pub computed_steps: Option<Stat>,
    /// A run-time policy's decisions over every sample.
    pub decisions: Option<DecisionReport>,
    /// Per-sample relative L2 of the final latents against full computation.
    pub rel_l2: Stat,
    /// Per-sample PSNR (dB, latents clamped to [-1, 1]) against full.
    pub psnr: Stat,
    /// Fréchet distance to the real data's features (testbed models).
    pub fd: Option<Stat>,
    /// Fréchet distance to full computation's samples' features.
    pub fd_to_full: Option<Stat>,
    pub accuracy: Option<Stat>,
    /// Wall time per sample in the model, milliseconds.
    pub ms_per_sample: Stat,
    /// Full computation's wall time over this value's, per seed set.
    pub wall_speedup: Stat,
}

/// A sweep's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The schedule's source and its model.
    pub schedule: String,
    pub model: String,
    pub param: SweepParam,
    pub steps: usize,
    pub seeds: Vec<u64>,
    pub samples_per_set: usize,
    pub full: FullRow,
    pub rows: Vec<SweepRow>,
}

/// A value as the table and the variant names write it.
fn value_text(v: f64) -> String {
    format!("{v}")
}

/// Runs full computation and every point's plan on every seed set and
/// measures each point against full computation. The points' plans must
/// share the model and sampler (one schedule at several values of one
/// setting).
pub fn sweep<M: BlockModel>(
    model: &M,
    param: SweepParam,
    points: &[Point],
    sets: &[SeedSet],
    scorer: Option<&dyn Scorer>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Sweep, EvalError> {
    let first = points
        .first()
        .ok_or_else(|| EvalError::Input("a sweep needs at least one value".into()))?;
    let full = first.plan.all_compute();
    for p in points {
        if p.plan.model != first.plan.model || p.plan.sampler != first.plan.sampler {
            return Err(EvalError::Input(format!(
                "{param} = {}: the plan's model or sampler differs from the first value's",
                value_text(p.value)
            )));
        }
    }
    let mut variants: Vec<Variant> = points
        .iter()
        .map(|p| Variant {
            name: format!("{param}={}", value_text(p.value)),
            plan: &p.plan,
            hooks: Box::new(NoHooks),
            oracle: false,
        })
        .collect();
    let sums = accumulate(model, &full, &mut variants, sets, scorer, progress)?;
    let report = sums.report(scorer.map(|s| s.reference()), &[])?;

    let samples: Vec<f64> = sums.sets.iter().map(|s| s.samples as f64).collect();
    let ms = |v: &VariantReport| {
        let per: Vec<f64> = v
            .sets
            .iter()
            .zip(&samples)
            .map(|(s, n)| 1e3 * s.seconds / n)
            .collect();
        Stat::of(&per)
    };
    let over = |v: &VariantReport, f: &dyn Fn(&crate::SetMetrics) -> Option<f64>| {
        let x: Vec<f64> = v.sets.iter().filter_map(f).collect();
        (!x.is_empty()).then(|| Stat::of(&x))
    };
    // FD of each value's features to full computation's, per seed set.
    let fd_to_full = |vi: usize| -> Result<Option<Stat>, EvalError> {
        let mut x = Vec::new();
        for set in &sums.sets {
            let (Some(a), Some(f)) = (&set.variants[vi].features, &set.variants[0].features) else {
                return Ok(None);
            };
            x.push(FeatureStats::frechet_distance(a, f)?);
        }
        Ok(Some(Stat::of(&x)))
    };
    let full_report = &report.variants[0];
    let mut rows = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let v = &report.variants[i + 1];
        let cost = PlanCost::of(&p.plan);
        rows.push(SweepRow {
            value: p.value,
            plan_hash: p.plan.hash().to_string(),
            predicted_speedup: p.plan.dynamic.is_none().then(|| cost.speedup()),
            realised_speedup: over(v, &|s| s.realised_speedup),
            computed_steps: over(v, &|s| s.computed_steps),
            decisions: v.decisions.clone(),
            rel_l2: over(v, &|s| s.rel_l2).expect("variants have rel. L2"),
            psnr: over(v, &|s| s.psnr).expect("variants have PSNR"),
            fd: over(v, &|s| s.fd),
            fd_to_full: fd_to_full(i + 1)?,
            accuracy: over(v, &|s| s.accuracy),
            ms_per_sample: ms(v),
            wall_speedup: over(v, &|s| Some(s.speedup)).expect("every set is timed"),
        });
    }
    Ok(Sweep {
        schedule: first.plan.source.clone(),
        model: first.plan.model.name.clone(),
        param,
        steps: full.steps.len(),
        seeds: sets.iter().map(|s| s.seed).collect(),
        samples_per_set: report.samples_per_set,
        full: FullRow {
            fd: over(full_report, &|s| s.fd),
            accuracy: over(full_report, &|s| s.accuracy),
            ms_per_sample: ms(full_report),
        },
        rows,
    })
}

impl Sweep {
    /// The sweep as text tables: one row per value (mean ± std over seed
    /// sets), then, for run-time policies, the share of samples that
    /// computed each step.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            out,
            "{} on {}, {} swept: {} seed sets x {} samples (seeds {}), {} steps; mean ± std over seed sets\n",
            self.schedule,
            self.model,
            self.param,
            self.seeds.len(),
            self.samples_per_set,
            seeds.join(","),
            self.steps
        );
        let w = self
            .rows
            .iter()
            .map(|r| value_text(r.value).len())
            .max()
            .unwrap_or(0)
            .max(self.param.as_str().len());
        let opt = |s: &Option<Stat>, d: usize| s.as_ref().map_or("-".into(), |s| s.text(d));
        let _ = writeln!(
            out,
            "{:<w$} {:>13} {:>13} {:>15} {:>17} {:>15} {:>15} {:>13}",
            self.param.as_str(),
            "MAC speedup",
            "wall speedup",
            "computed steps",
            "rel. L2 vs full",
            "PSNR vs full",
            "FD",
            "ms/sample"
        );
        let _ = writeln!(
            out,
            "{:<w$} {:>13} {:>13} {:>15} {:>17} {:>15} {:>15} {:>13}",
            "full",
            "1.00",
            "1.00",
            self.steps,
            "-",
            "-",
            opt(&self.full.fd, 0),
            self.full.ms_per_sample.text(2)
        );
        for r in &self.rows {
            let mac = match (&r.realised_speedup, r.predicted_speedup) {
                (Some(s), _) => s.text(2),
                (None, Some(p)) => format!("{p:.2}*"),
                (None, None) => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<w$} {:>13} {:>13} {:>15} {:>17} {:>15} {:>15} {:>13}",
                value_text(r.value),
                mac,
                r.wall_speedup.text(2),
                opt(&r.computed_steps, 2),
                r.rel_l2.text(4),
                r.psnr.text(2),
                opt(&r.fd, 0),
                r.ms_per_sample.text(2)
            );
        }
        let _ = writeln!(
            out,
            "\nMAC speedup: full computation's MACs over the MACs that ran (run-time policies: measured per batch), or\nthe cost model's prediction (* static plans). wall speedup: full computation's wall time over the value's,\nmeasured side by side. FD: to the real data's features (testbed models only)."
        );
        let decided: Vec<&SweepRow> = self.rows.iter().filter(|r| r.decisions.is_some()).collect();
        if !decided.is_empty() {
            let _ = writeln!(
                out,
                "\nsteps computed, % of samples (a batch decides together):"
            );
            let _ = write!(out, "{:<w$}", self.param.as_str());
            for k in 0..self.steps {
                let _ = write!(out, " {k:>3}");
            }
            let _ = writeln!(out);
            for r in decided {
                let d = r.decisions.as_ref().expect("filtered");
                let _ = write!(out, "{:<w$}", value_text(r.value));
                for s in d.shares() {
                    let _ = write!(out, " {:>3.0}", 100.0 * s);
                }
                let _ = writeln!(out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(text: &str) -> Schedule {
        tcc_schedule::parse("s.sched", text).unwrap()
    }

    fn compile(s: &Schedule) -> Plan {
        tcc_plan::compile(s, std::path::Path::new("")).unwrap()
    }

    const TINY: &str = "[model]\nname = \"tiny\"\n[sampler]\nsteps = 10\n";

    #[test]
    fn values_are_checked_per_parameter_and_bounded() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_values(SweepParam::Threshold, &v(&["0", "0.05", "inf"])).unwrap(),
            [0.0, 0.05, f64::INFINITY]
        );
        let err = |p, xs: &[&str]| parse_values(p, &v(xs)).unwrap_err();
        assert!(err(SweepParam::Threshold, &["-0.1"]).contains("not a threshold"));
        assert!(err(SweepParam::Threshold, &["nan"]).contains("not a number"));
        assert!(err(SweepParam::Threshold, &["x"]).contains("`x` is not a number"));
        assert!(err(SweepParam::FreshRatio, &["1.5"]).contains("fresh ratio in [0, 1]"));
        assert!(err(SweepParam::FreshRatio, &["inf"]).contains("fresh ratio"));
        assert!(err(SweepParam::Refresh, &["0.5"]).contains("refresh interval"));
        assert!(err(SweepParam::Refresh, &["inf"]).contains("refresh interval"));
        assert!(err(SweepParam::Threshold, &["0.1", "0.10"]).contains("given twice"));
        assert!(err(SweepParam::Threshold, &[]).contains("expected 1 to 32"));
        let many: Vec<String> = (0..=MAX_SWEEP_VALUES).map(|i| i.to_string()).collect();
        assert!(parse_values(SweepParam::Refresh, &many)
            .unwrap_err()
            .starts_with("--values"));
        assert_eq!(
            parse_values(SweepParam::Refresh, &many[1..]).unwrap().len(),
            MAX_SWEEP_VALUES
        );
    }

    #[test]
    fn parameters_edit_the_schedule_they_name() {
        let mut s = schedule(&format!(
            "{TINY}[dynamic]\npolicy = \"first-block\"\nthreshold = 0.08\n"
        ));
        SweepParam::Threshold.apply(&mut s, f64::INFINITY).unwrap();
        assert_eq!(compile(&s).dynamic.unwrap().threshold, f64::INFINITY);
        // A [dynamic] section without a threshold gets one.
        let mut s = schedule(&format!("{TINY}[dynamic]\npolicy = \"first-block\"\n"));
        SweepParam::Threshold.apply(&mut s, 0.3).unwrap();
        assert_eq!(compile(&s).dynamic.unwrap().threshold, 0.3);

        let toca = format!(
            "{TINY}[[cache]]\nrefresh = \"every 3\"\n[[cache]]\npartial = \"except every 3\"\nfresh-ratio = 0.1\n"
        );
        let mut s = schedule(&toca);
        SweepParam::FreshRatio.apply(&mut s, 0.0).unwrap();
        let fora = schedule(&format!("{TINY}[[cache]]\nrefresh = \"every 3\"\n"));
        assert_eq!(compile(&s).steps, compile(&fora).steps, "ratio 0 is FORA");
        let mut s = schedule(&toca);
        SweepParam::FreshRatio.apply(&mut s, 1.0).unwrap();
        assert!(
            compile(&s).steps.iter().all(|st| st.is_full()),
            "ratio 1 is full"
        );

        // Every `every N` of the step selectors, also under `except`.
        let mut s = schedule(&toca);
        SweepParam::Refresh.apply(&mut s, 2.0).unwrap();
        let mut want = schedule(&toca.replace("every 3", "every 2"));
        want.source_name = s.source_name.clone();
        assert_eq!(compile(&s).steps, compile(&want).steps);

        let plain = schedule(TINY);
        for p in [
            SweepParam::Threshold,
            SweepParam::FreshRatio,
            SweepParam::Refresh,
        ] {
            let e = p.apply(&mut plain.clone(), 1.0).unwrap_err();
            assert!(e.contains(&format!("--param {p}")), "{e}");
        }
        let mask = schedule(&format!("{TINY}[[cache]]\nmask = \"1010101011\"\n"));
        assert!(SweepParam::Refresh.apply(&mut mask.clone(), 2.0).is_err());

        // Calibrated steps of every 3 are refresh steps of every 2: the
        // sweep drops the priors' settings with them.
        let fora3 = format!(
            "{TINY}[[cache]]\nrefresh = \"every 3\"\n[calibration]\nmethod = \"tcc\"\nsteps = \"1, 2\"\n"
        );
        let mut s = schedule(&fora3);
        SweepParam::Refresh.apply(&mut s, 2.0).unwrap();
        assert!(s.calibration.is_none());
        let p = compile(&s);
        assert!(p.steps[2].is_full() && !p.steps[1].is_full());
    }

    #[test]
    fn non_finite_numbers_survive_json() {
        let s = Stat {
            n: 1,
            mean: f64::INFINITY,
            std: f64::NAN,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"n":1,"mean":"inf","std":"nan"}"#);
        let back: Stat = serde_json::from_str(&text).unwrap();
        assert_eq!(back.mean, f64::INFINITY);
        assert!(back.std.is_nan());
        assert!(serde_json::from_str::<Stat>(r#"{"n":1,"mean":"big","std":0}"#).is_err());
    }
}
