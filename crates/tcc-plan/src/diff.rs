//! `tcc plan --diff A B`: what changed between two plans.

use serde_json::Value;
use tcc_core::Branch;

use crate::cost::{human_macs, PlanCost};
use crate::render::{
    label, speedup_text, GridLayout, ACTION_LEGEND, PARTIAL_LEGEND, PARTIAL_PRIOR_LEGEND,
};
use crate::{Action, Plan};

/// One (step, block, branch) whose action differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellChange {
    pub step: usize,
    pub block: usize,
    pub branch: Branch,
    pub a: Action,
    pub b: Action,
}

impl CellChange {
    /// The grid character: the action in B, or `~` when only the step the
    /// cache is read from changed (same character in A and B).
    pub fn symbol(&self) -> char {
        if self.a.symbol() == self.b.symbol() {
            '~'
        } else {
            self.b.symbol()
        }
    }
}

/// A setting (model, sampler, calibration or weights) that differs,
/// as dotted key and the value in each plan (`None`: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingChange {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// The differences between plan `a` and plan `b`.
#[derive(Clone, Debug)]
pub struct PlanDiff<'p> {
    pub a: &'p Plan,
    pub b: &'p Plan,
    pub settings: Vec<SettingChange>,
    /// Changed cells of the steps both plans have, in (step, block, branch)
    /// order; empty when the grids cannot be compared.
    pub cells: Vec<CellChange>,
    /// Why the grids are not compared cell by cell (different depth or
    /// branches), if they are not.
    pub incomparable: Option<String>,
    pub cost_a: PlanCost,
    pub cost_b: PlanCost,
}

impl<'p> PlanDiff<'p> {
    pub fn new(a: &'p Plan, b: &'p Plan) -> PlanDiff<'p> {
        let incomparable = if a.model.depth != b.model.depth || a.branches() != b.branches() {
            Some(format!(
                "a has {} blocks ({}), b has {} blocks ({})",
                a.model.depth,
                branch_names(a.branches()),
                b.model.depth,
                branch_names(b.branches()),
            ))
        } else {
            None
        };
        let mut cells = Vec::new();
        if incomparable.is_none() {
            for (step, (sa, sb)) in a.steps.iter().zip(&b.steps).enumerate() {
                for (block, (ra, rb)) in sa.actions.iter().zip(&sb.actions).enumerate() {
                    for (i, (&xa, &xb)) in ra.iter().zip(rb).enumerate() {
                        if xa != xb {
                            let Some(&branch) = a.branches().get(i) else {
                                continue;
                            };
                            cells.push(CellChange {
                                step,
                                block,
                                branch,
                                a: xa,
                                b: xb,
                            });
                        }
                    }
                }
            }
        }
        PlanDiff {
            a,
            b,
            settings: setting_changes(a, b),
            cells,
            incomparable,
            cost_a: PlanCost::of(a),
            cost_b: PlanCost::of(b),
        }
    }

    /// Whether the two plans compute the same thing (same hash).
    pub fn is_same(&self) -> bool {
        self.a.hash() == self.b.hash()
    }

    /// The `tcc plan --diff` text.
    pub fn render(&self) -> String {
        let (a, b) = (self.a, self.b);
        let mut out = String::new();
        for (name, plan, cost) in [("a", a, &self.cost_a), ("b", b, &self.cost_b)] {
            label(
                &mut out,
                name,
                &format!(
                    "{}  (hash {}, {} steps, predicted speedup {})",
                    plan.source,
                    plan.hash().short(),
                    plan.steps.len(),
                    speedup_text(cost)
                ),
            );
        }
        if self.settings.is_empty() {
            label(&mut out, "settings", "same");
        }
        for (i, change) in self.settings.iter().enumerate() {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_string());
            label(
                &mut out,
                if i == 0 { "settings" } else { "" },
                &format!("{}: {} -> {}", change.key, show(&change.a), show(&change.b)),
            );
        }
        label(
            &mut out,
            "legend",
            &format!(". same in a and b; otherwise the action in b: {ACTION_LEGEND}"),
        );
        if self.a.toca.is_some() || self.b.toca.is_some() {
            label(&mut out, "", PARTIAL_LEGEND);
        }
        if self.a.has_partial_prior() || self.b.has_partial_prior() {
            label(&mut out, "", PARTIAL_PRIOR_LEGEND);
        }
        label(
            &mut out,
            "",
            "~ same action, cache read from another step; MACs: cost of the step in a and b",
        );

        if let Some(why) = &self.incomparable {
            label(&mut out, "grid", &format!("not compared: {why}"));
        } else {
            out.push_str(&self.grid());
        }
        out.push('\n');

        let steps_total = a.steps.len().max(b.steps.len()) * a.model.depth * a.branches().len();
        if self.incomparable.is_none() {
            label(
                &mut out,
                "cells",
                &format!(
                    "{} of {} differ{}",
                    self.cells.len(),
                    steps_total,
                    if a.steps.len() == b.steps.len() {
                        String::new()
                    } else {
                        format!(
                            " (in the {} steps both plans have)",
                            a.steps.len().min(b.steps.len())
                        )
                    }
                ),
            );
        }
        let (ta, tb) = (self.cost_a.total, self.cost_b.total);
        let percent = if ta == 0 {
            0.0
        } else {
            (tb as f64 - ta as f64) / ta as f64 * 100.0
        };
        label(
            &mut out,
            "total",
            &format!(
                "a {} MACs ({}), b {} MACs ({}), b - a {} MACs ({percent:+.1}%)",
                human_macs(ta),
                speedup_text(&self.cost_a),
                human_macs(tb),
                speedup_text(&self.cost_b),
                signed_macs(ta, tb),
            ),
        );
        out
    }

    fn grid(&self) -> String {
        let (a, b) = (self.a, self.b);
        let mut symbols = vec![vec![vec!['.'; a.branches().len()]; a.model.depth]; a.steps.len()];
        for cell in &self.cells {
            let i = a.branch_index(cell.branch).unwrap_or(0);
            if let Some(slot) = symbols
                .get_mut(cell.step)
                .and_then(|s| s.get_mut(cell.block))
                .and_then(|row| row.get_mut(i))
            {
                *slot = cell.symbol();
            }
        }
        let compact = a.branches().len() == 1
            || (a.branches_agree()
                && b.branches_agree()
                && symbols
                    .iter()
                    .flatten()
                    .all(|row| row.windows(2).all(|p| p[0] == p[1])));
        let layout = GridLayout {
            depth: a.model.depth,
            branches: a.branches().to_vec(),
            compact,
        };

        let n = a.steps.len().max(b.steps.len());
        let step_w = n.saturating_sub(1).to_string().len().max(4);
        let t_w = a
            .steps
            .iter()
            .chain(&b.steps)
            .map(|s| s.timestep.to_string().len())
            .max()
            .unwrap_or(1);
        let macs_w = 7;
        let prefix_w = step_w + 2 + t_w + 2;
        let mut out = String::new();
        let header = layout.header();
        let last = header.len().saturating_sub(1);
        for (i, line) in header.iter().enumerate() {
            let lead = if i == last {
                format!("{:>step_w$}  {:>t_w$}  ", "step", "t")
            } else if i == 0 {
                format!("{:<prefix_w$}", "block")
            } else {
                " ".repeat(prefix_w)
            };
            let tail = if i == last {
                format!(
                    "  {:>macs_w$}  {:>macs_w$}  {:>macs_w$}",
                    "MACs a", "MACs b", "b - a"
                )
            } else {
                String::new()
            };
            push_line(&mut out, &format!("{lead}{line}{tail}"));
        }
        let width = layout.width();
        for step in 0..n {
            let (sa, sb) = (a.steps.get(step), b.steps.get(step));
            let t = sb.or(sa).map(|s| s.timestep).unwrap_or(0);
            let middle = match (sa, sb) {
                (Some(_), Some(_)) => layout.row(|block, i| {
                    symbols
                        .get(step)
                        .and_then(|s| s.get(block))
                        .and_then(|row| row.get(i))
                        .copied()
                        .unwrap_or('?')
                }),
                (Some(_), None) => format!("{:<width$}", "(only in a)"),
                _ => format!("{:<width$}", "(only in b)"),
            };
            let ca = self.cost_a.steps.get(step).map(|c| c.total);
            let cb = self.cost_b.steps.get(step).map(|c| c.total);
            let show = |c: Option<u64>| c.map(human_macs).unwrap_or_else(|| "-".to_string());
            push_line(
                &mut out,
                &format!(
                    "{step:>step_w$}  {t:>t_w$}  {middle}  {:>macs_w$}  {:>macs_w$}  {:>macs_w$}",
                    show(ca),
                    show(cb),
                    signed_macs(ca.unwrap_or(0), cb.unwrap_or(0)),
                ),
            );
        }
        out
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line.trim_end());
    out.push('\n');
}

/// `b - a` in human units with its sign (`+1.23G`, `-512M`, `0`).
fn signed_macs(a: u64, b: u64) -> String {
    if b >= a {
        let d = b - a;
        if d == 0 {
            "0".to_string()
        } else {
            format!("+{}", human_macs(d))
        }
    } else {
        format!("-{}", human_macs(a - b))
    }
}

fn branch_names(branches: &[Branch]) -> String {
    branches
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Settings flattened to dotted keys: `sampler.steps`, `calibration.alpha`, ...
fn settings(plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let sections = [
        ("model", serde_json::to_value(&plan.model)),
        ("sampler", serde_json::to_value(&plan.sampler)),
        ("calibration", serde_json::to_value(&plan.calibration)),
        ("toca", serde_json::to_value(&plan.toca)),
        ("dynamic", serde_json::to_value(plan.dynamic)),
        ("weights", serde_json::to_value(&plan.weights)),
    ];
    for (name, value) in sections {
        flatten(name, &value.unwrap_or(Value::Null), &mut out);
    }
    out
}

fn flatten(key: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|x, y| x.0.cmp(y.0));
            for (k, v) in entries {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        Value::String(s) => out.push((key.to_string(), s.clone())),
        Value::Null => {}
        other => out.push((key.to_string(), other.to_string())),
    }
}

fn setting_changes(a: &Plan, b: &Plan) -> Vec<SettingChange> {
    let (sa, sb) = (settings(a), settings(b));
    let lookup = |list: &[(String, String)], key: &str| {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut keys: Vec<&String> = sa.iter().chain(&sb).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (va, vb) = (lookup(&sa, key), lookup(&sb, key));
            (va != vb).then(|| SettingChange {
                key: key.clone(),
                a: va,
                b: vb,
            })
        })
        .collect()
}
