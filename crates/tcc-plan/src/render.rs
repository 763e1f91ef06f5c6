//! `tcc plan --show`: the plan as a stable, diff-friendly text grid.
//!
//! The text holds no timestamps and no absolute paths (the source is printed
//! as given), lines have no trailing blanks, and the layout depends only on
//! the plan, so it can be snapshot-tested and reviewed in a diff.

use std::fmt::Write as _;

use tcc_core::{Branch, CalibMethod, ModelFamily, PriorKind, Selection};

use crate::cost::{human_macs, PlanCost};
use crate::{Action, Plan};

/// Width of the label column of header and footer lines.
const LABEL: usize = 12;

impl Action {
    /// The character a grid shows for this action.
    pub fn symbol(self) -> char {
        match self {
            Action::Compute => 'C',
            Action::Reuse { prior: false, .. } => 'r',
            Action::Reuse { prior: true, .. } => 'R',
            Action::ReuseDelta { .. } => 'd',
            Action::Partial { prior: false, .. } => 'p',
            Action::Partial { prior: true, .. } => 'P',
        }
    }
}

/// The legend of action characters, shared by `--show` and `--diff`.
pub(crate) const ACTION_LEGEND: &str =
    "C compute   r reuse   R reuse + TCC prior   d reuse-delta (block skipped)";

/// The legend line of partial computes, shown when a plan has them.
pub(crate) const PARTIAL_LEGEND: &str =
    "p partial: fresh tokens computed, the others reused (ToCa); its MACs include gather, merge and scoring";

/// The legend line of partial computes with a prior, shown when a plan
/// has them.
pub(crate) const PARTIAL_PRIOR_LEGEND: &str =
    "P partial + TCC prior on the stale (reused) tokens; the fresh ones are not corrected";

/// Columns of a step x block grid: one per block when every block's
/// branches agree everywhere (compact), else one per (block, branch),
/// grouped by block.
pub(crate) struct GridLayout {
    pub depth: usize,
    pub branches: Vec<Branch>,
    pub compact: bool,
}

impl GridLayout {
    /// Explains the columns, for the legend.
    pub fn describe(&self) -> String {
        if self.compact {
            "one column per block (its branches always agree)".to_string()
        } else {
            let letters: Vec<String> = self
                .branches
                .iter()
                .map(|b| format!("{} {}", branch_letter(*b), b.name()))
                .collect();
            format!(
                "one column per branch, grouped by block: {}",
                letters.join(", ")
            )
        }
    }

    /// Header lines above the grid: the block numbers written vertically
    /// (most significant digit on top), then the branch letters when the
    /// grid is not compact. Always at least two lines: the first carries
    /// the `block` label, the last the column titles.
    pub fn header(&self) -> Vec<String> {
        let digits = self.depth.saturating_sub(1).to_string().len();
        let mut lines = Vec::new();
        for place in (0..digits).rev() {
            let cells: Vec<String> = (0..self.depth)
                .map(|block| {
                    let text = block.to_string();
                    let c = if place < text.len() {
                        text.as_bytes()[text.len() - 1 - place] as char
                    } else {
                        ' '
                    };
                    c.to_string()
                })
                .collect();
            lines.push(self.join(cells.into_iter().map(|c| self.pad_group(&c)).collect()));
        }
        if !self.compact {
            let group: String = self.branches.iter().map(|b| branch_letter(*b)).collect();
            lines.push(self.join(vec![group; self.depth]));
        }
        if lines.len() == 1 {
            // Room for the `block` label above a single row of numbers.
            lines.insert(0, String::new());
        }
        lines
    }

    /// One grid row; `cell(block, branch_index)` gives each character.
    pub fn row(&self, cell: impl Fn(usize, usize) -> char) -> String {
        let groups = (0..self.depth)
            .map(|block| {
                if self.compact {
                    cell(block, 0).to_string()
                } else {
                    (0..self.branches.len()).map(|i| cell(block, i)).collect()
                }
            })
            .collect();
        self.join(groups)
    }

    pub fn width(&self) -> usize {
        self.row(|_, _| ' ').chars().count()
    }

    fn pad_group(&self, text: &str) -> String {
        if self.compact {
            text.to_string()
        } else {
            format!("{text:<width$}", width = self.branches.len())
        }
    }

    fn join(&self, groups: Vec<String>) -> String {
        groups.join(if self.compact { "" } else { " " })
    }
}

pub(crate) fn branch_letter(branch: Branch) -> char {
    match branch {
        Branch::Attn => 'a',
        Branch::Cross => 'c',
        Branch::Mlp => 'm',
    }
}

/// Distinct steps whose cache a row of actions reads, e.g. `0` or `2,3`.
pub(crate) fn sources(actions: &[Vec<Action>]) -> String {
    let mut from: Vec<usize> = actions
        .iter()
        .flatten()
        .filter_map(|a| a.source())
        .collect();
    from.sort_unstable();
    from.dedup();
    if from.is_empty() {
        "-".to_string()
    } else {
        from.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(crate) fn label(out: &mut String, name: &str, text: &str) {
    let line = format!("{name:<LABEL$}{text}");
    out.push_str(line.trim_end());
    out.push('\n');
}

/// The predicted speedup, or why there is none: MAC counts that saturate
/// the 64-bit counters (an absurd model shape) give no ratio.
pub(crate) fn speedup_text(cost: &PlanCost) -> String {
    if cost.saturated() {
        "unknown (MAC counts beyond 2^64, shown as >18.4E)".to_string()
    } else {
        format!("{:.2}x", cost.speedup())
    }
}

/// The shortest form of a float that reads back (`0`, `1.5`, `0.0001`),
/// in exponent form when very large or small (`1e300`, not 301 digits).
pub(crate) fn num(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-6..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

impl Plan {
    /// Whether every block's branches carry the same action character at
    /// every step, so the grid can show one column per block.
    pub(crate) fn branches_agree(&self) -> bool {
        self.steps.iter().flat_map(|s| &s.actions).all(|row| {
            row.windows(2)
                .all(|pair| pair[0].symbol() == pair[1].symbol())
        })
    }

    pub(crate) fn grid_layout(&self) -> GridLayout {
        GridLayout {
            depth: self.model.depth,
            branches: self.branches().to_vec(),
            compact: self.branches().len() == 1 || self.branches_agree(),
        }
    }

    /// One-line description of the model.
    pub(crate) fn model_line(&self) -> String {
        let m = &self.model;
        let branches: Vec<&str> = m.branches().iter().map(|b| b.name()).collect();
        let family = match m.family {
            ModelFamily::Dit => "dit",
            ModelFamily::Pixart => "pixart",
        };
        let mut text = format!(
            "{}: {family}, {} blocks ({}), hidden {}, {} heads, mlp {}, {} tokens (input {}x{}, patch {})",
            m.name,
            m.depth,
            branches.join(", "),
            m.hidden,
            m.heads,
            m.mlp_hidden(),
            m.tokens(),
            m.input_size,
            m.input_size,
            m.patch,
        );
        if m.family == ModelFamily::Pixart {
            let _ = write!(
                text,
                ", {} caption tokens of width {}",
                m.caption_tokens, m.caption_dim
            );
        }
        text
    }

    pub(crate) fn sampler_line(&self) -> String {
        let s = &self.sampler;
        let cfg = if s.uses_cfg() {
            let order = s.cfg_order;
            let channels = match s.guided_channels {
                Some(n) => format!("first {n} channels guided"),
                None => "all channels guided".to_string(),
            };
            format!(
                "guidance {} (CFG batch x2, {order}, {channels})",
                num(s.guidance_scale)
            )
        } else {
            "no guidance".to_string()
        };
        format!(
            "{}, {} steps, eta {}, {cfg}, {} training timesteps, linear betas {}..{}",
            s.kind.as_str(),
            s.steps,
            num(s.eta),
            s.train_timesteps,
            num(s.beta_start),
            num(s.beta_end),
        )
    }

    pub(crate) fn calibration_line(&self) -> String {
        let c = &self.calibration;
        if c.method == CalibMethod::None {
            return "none".to_string();
        }
        let steps: Vec<String> = c.steps.iter().map(|s| s.to_string()).collect();
        let list = |xs: &[String]| xs.join("/");
        let kinds: Vec<String> = c.kinds().iter().map(|k| k.to_string()).collect();
        let (how, alpha) = match c.select {
            Selection::Fixed => (format!("prior {}", list(&kinds)), num(c.alpha)),
            Selection::Validated => (
                format!("validated among {}", list(&kinds)),
                format!(
                    "0/{}",
                    list(&c.alpha_grid().into_iter().map(num).collect::<Vec<_>>())
                ),
            ),
        };
        let mut hyper = String::new();
        if c.kinds().iter().any(|k| k.uses_ridge()) {
            let ridge: Vec<String> = c.ridge_grid().into_iter().map(num).collect();
            let _ = write!(hyper, ", ridge {}", list(&ridge));
        }
        if c.kinds().contains(&PriorKind::Lowrank) {
            let _ = write!(hyper, ", rank {}", c.lowrank_rank());
        }
        let validation = match c.validation_samples() {
            0 => "no validation".to_string(),
            n => format!("validation {n} samples, seed {}", c.validation_seed()),
        };
        format!(
            "tcc {}, steps {}, alpha {alpha}, {how}{hyper}, pooling {}, pooled half {}, {} samples, seed {}, {validation}",
            c.mode,
            if steps.is_empty() {
                "none".to_string()
            } else {
                steps.join(",")
            },
            c.pooling,
            c.pooled_half,
            c.samples,
            c.seed,
        )
    }

    /// The token-choice settings and the fresh counts of a plan with partly
    /// computed branches.
    pub(crate) fn toca_line(&self) -> Option<String> {
        let t = self.toca.as_ref()?;
        let fresh: Vec<usize> = self
            .steps
            .iter()
            .flat_map(|s| &s.actions)
            .flatten()
            .filter_map(|a| match a {
                Action::Partial { fresh, .. } => Some(*fresh),
                _ => None,
            })
            .collect();
        let (lo, hi) = (
            fresh.iter().min().copied().unwrap_or(0),
            fresh.iter().max().copied().unwrap_or(0),
        );
        let mean = fresh.iter().sum::<usize>() as f64 / fresh.len().max(1) as f64;
        let tokens = self.model.tokens();
        let mut text = format!(
            "score {}, staleness weight {} / interval {}, spread bonus {}",
            t.score,
            num(t.fresh_weight),
            num(t.interval),
            num(t.spread_bonus),
        );
        if t.score == tcc_core::TokenScore::Random {
            let _ = write!(text, ", seed {}", t.seed);
        }
        let _ = write!(
            text,
            "; fresh tokens {lo}..{hi} of {tokens} per partial cell (mean {:.1})",
            mean
        );
        Some(text)
    }

    /// The `tcc plan --show` text.
    pub fn show(&self) -> String {
        let cost = PlanCost::of(self);
        let layout = self.grid_layout();
        let mut out = String::new();

        label(&mut out, "source", &self.source);
        label(&mut out, "hash", &self.hash().short());
        label(&mut out, "model", &self.model_line());
        if let Some(weights) = &self.weights {
            label(&mut out, "weights", weights);
        }
        label(&mut out, "sampler", &self.sampler_line());
        label(&mut out, "calibration", &self.calibration_line());
        if let Some(toca) = self.toca_line() {
            label(&mut out, "toca", &toca);
        }
        let u = &cost.units;
        let mut units = format!("attn {}, mlp {}", human_macs(u.attn), human_macs(u.mlp));
        if u.cross > 0 {
            let _ = write!(units, ", cross {}", human_macs(u.cross));
        }
        let _ = write!(
            units,
            ", adaLN {} per block; embed {}, final {} per step; prior {}",
            human_macs(u.adaln),
            human_macs(u.embed),
            human_macs(u.final_layer),
            human_macs(u.prior),
        );
        label(&mut out, "unit MACs", &units);
        if let Some(d) = &self.dynamic {
            self.show_dynamic(d, &mut out);
            return out;
        }
        label(&mut out, "legend", ACTION_LEGEND);
        if self.toca.is_some() {
            label(&mut out, "", PARTIAL_LEGEND);
        }
        if self.has_partial_prior() {
            label(&mut out, "", PARTIAL_PRIOR_LEGEND);
        }
        label(&mut out, "", &layout.describe());
        label(
            &mut out,
            "",
            "* calibrated step; MACs: cost of the step; from: steps whose cache it reads",
        );
        out.push('\n');

        let step_w = self.steps.len().saturating_sub(1).to_string().len().max(4);
        let t_w = self
            .steps
            .iter()
            .map(|s| s.timestep.to_string().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let macs_w = 7;
        let prefix_w = step_w + 2 + t_w + 2 + 1 + 2;
        let header = layout.header();
        let last = header.len().saturating_sub(1);
        for (i, line) in header.iter().enumerate() {
            let lead = if i == last {
                format!("{:>step_w$}  {:>t_w$}  {:1}  ", "step", "t", "")
            } else if i == 0 {
                format!("{:<prefix_w$}", "block")
            } else {
                " ".repeat(prefix_w)
            };
            let tail = if i == last {
                format!("  {:>macs_w$}  from", "MACs")
            } else {
                String::new()
            };
            out.push_str(format!("{lead}{line}{tail}").trim_end());
            out.push('\n');
        }
        for (step, step_cost) in self.steps.iter().zip(&cost.steps) {
            let grid = layout.row(|block, i| {
                step.actions
                    .get(block)
                    .and_then(|row| row.get(i))
                    .map_or('?', |a| a.symbol())
            });
            let mark = if step.is_calibrated() { '*' } else { ' ' };
            let line = format!(
                "{:>step_w$}  {:>t_w$}  {mark}  {grid}  {:>macs_w$}  {}",
                step.step,
                step.timestep,
                human_macs(step_cost.total),
                sources(&step.actions),
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');

        let (mut computed, mut reused, mut priors, mut delta) = (0usize, 0usize, 0usize, 0usize);
        let (mut partial, mut partial_priors) = (0usize, 0usize);
        for action in self.steps.iter().flat_map(|s| &s.actions).flatten() {
            match action {
                Action::Compute => computed += 1,
                Action::Reuse { prior, .. } => {
                    reused += 1;
                    priors += usize::from(*prior);
                }
                Action::ReuseDelta { .. } => delta += 1,
                Action::Partial { prior, .. } => {
                    partial += 1;
                    partial_priors += usize::from(*prior);
                }
            }
        }
        let partial = match (partial, partial_priors) {
            (0, _) => String::new(),
            (n, 0) => format!(", {n} partly computed"),
            (n, p) => format!(", {n} partly computed ({p} with prior)"),
        };
        label(
            &mut out,
            "cells",
            &format!(
                "{computed} computed, {reused} reused ({priors} with prior), {delta} in reuse-delta ranges{partial}"
            ),
        );
        label(
            &mut out,
            "total",
            &format!(
                "{} MACs, full computation {} MACs, predicted speedup {}",
                human_macs(cost.total),
                human_macs(cost.full_total),
                speedup_text(&cost),
            ),
        );
        out
    }
}
