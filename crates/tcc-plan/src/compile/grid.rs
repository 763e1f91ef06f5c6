//! The step x block x branch table a schedule's rules and limits write,
//! and its linking into plan actions.

use std::collections::HashSet;

use tcc_core::{fresh_tokens, Branch, ModelShape, RatioSchedule};
use tcc_schedule::eval::{eval_branches, eval_selector};
use tcc_schedule::{
    CacheRule, Cell, Diagnostic, Diagnostics, IndexKind, LimitsSection, Mask, RuleAction, Span,
    Spanned,
};

use crate::plan::Action;

/// What the rules decided for one cell, before reuses are linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Compute,
    Reuse,
    /// Part of the delta-reused block range `start..end`.
    Delta {
        start: usize,
        end: usize,
    },
    /// Computed for `fresh` of the tokens (0 < fresh < tokens).
    Partial {
        fresh: usize,
    },
}

/// What one rule writes at one step: one decision for every selected
/// block (`whole`), or one per selected block (`None` keeps the cell).
struct StepWrite {
    step: usize,
    whole: Option<Decision>,
    per_block: Vec<Option<Decision>>,
    origin: Span,
}

impl StepWrite {
    fn all(step: usize, d: Decision, origin: Span) -> StepWrite {
        StepWrite {
            step,
            whole: Some(d),
            per_block: Vec::new(),
            origin,
        }
    }
}

pub(super) struct Grid {
    steps: usize,
    depth: usize,
    branches: usize,
    branch_names: &'static [Branch],
    tokens: usize,
    cells: Vec<Decision>,
    /// The text that made each decision (for errors found later).
    origin: Vec<Span>,
}

impl Grid {
    /// Everything computed.
    pub(super) fn new(steps: usize, model: &ModelShape) -> Grid {
        let n = steps * model.depth * model.branches().len();
        Grid {
            steps,
            depth: model.depth,
            branches: model.branches().len(),
            branch_names: model.branches(),
            tokens: model.tokens(),
            cells: vec![Decision::Compute; n],
            origin: vec![Span::default(); n],
        }
    }

    fn idx(&self, step: usize, block: usize, branch: usize) -> usize {
        (step * self.depth + block) * self.branches + branch
    }

    fn get(&self, step: usize, block: usize, branch: usize) -> Decision {
        self.cells[self.idx(step, block, branch)]
    }

    fn set(&mut self, step: usize, block: usize, branch: usize, d: Decision, origin: Span) {
        let i = self.idx(step, block, branch);
        self.cells[i] = d;
        self.origin[i] = origin;
    }

    /// The cells of one step, in (block, branch) order.
    fn step_cells(&self, step: usize) -> &[Decision] {
        let n = self.depth * self.branches;
        &self.cells[step * n..(step + 1) * n]
    }

    /// Applies every rule in order. Errors of one rule do not stop the
    /// others from being checked.
    pub(super) fn apply_rules(
        &mut self,
        rules: &[Spanned<CacheRule>],
        model: &ModelShape,
    ) -> Result<(), Diagnostics> {
        let mut diags = Diagnostics::new();
        for rule in rules {
            if let Err(d) = self.apply_rule(&rule.value, model) {
                diags.push(d);
            }
        }
        diags.into_result(())
    }

    fn apply_rule(&mut self, rule: &CacheRule, model: &ModelShape) -> Result<(), Diagnostic> {
        let blocks = match &rule.blocks {
            Some(sel) => eval_selector(sel, IndexKind::Block, self.depth)?,
            None => vec![true; self.depth],
        };
        let model_branches = model.branches();
        let branches: Vec<usize> = match &rule.branches {
            Some(sel) => eval_branches(sel, model_branches, &model.name)?
                .into_iter()
                .map(|b| {
                    model_branches
                        .iter()
                        .position(|&m| m == b)
                        .expect("eval_branches picks the model's branches")
                })
                .collect(),
            None => (0..model_branches.len()).collect(),
        };
        let block_list: Vec<usize> = (0..self.depth).filter(|&b| blocks[b]).collect();

        let mut writes: Vec<StepWrite> = Vec::new();
        let key = rule.action.span;
        match &rule.action.value {
            RuleAction::Compute(sel) | RuleAction::Reuse(sel) => {
                let d = if matches!(rule.action.value, RuleAction::Compute(_)) {
                    Decision::Compute
                } else {
                    Decision::Reuse
                };
                let picked = eval_selector(sel, IndexKind::Step, self.steps)?;
                for s in (0..self.steps).filter(|&s| picked[s]) {
                    writes.push(StepWrite::all(s, d, sel.span));
                }
            }
            RuleAction::Refresh(sel) => {
                let picked = eval_selector(sel, IndexKind::Step, self.steps)?;
                for (s, &p) in picked.iter().enumerate() {
                    let d = if p {
                        Decision::Compute
                    } else {
                        Decision::Reuse
                    };
                    writes.push(StepWrite::all(s, d, sel.span));
                }
            }
            RuleAction::Mask(Mask::Bits(bits)) => {
                if bits.len() != self.steps {
                    let span = bits
                        .first()
                        .zip(bits.last())
                        .map_or(key, |(a, b)| a.span.to(b.span));
                    return Err(Diagnostic::new(
                        format!("mask has {} steps", bits.len()),
                        span,
                        format!("the sampler has {} steps: one digit each", self.steps),
                    ));
                }
                for (s, b) in bits.iter().enumerate() {
                    let d = if b.value {
                        Decision::Compute
                    } else {
                        Decision::Reuse
                    };
                    writes.push(StepWrite::all(s, d, b.span));
                }
            }
            RuleAction::Mask(Mask::Preset(name)) => {
                let Some(mask) = tcc_schedule::mask_preset(&name.value, self.steps) else {
                    return Err(Diagnostic::new(
                        format!("unknown mask preset `{}`", name.value),
                        name.span,
                        "expected digits (1 = compute, 0 = reuse) or a preset name",
                    )
                    .with_help(format!(
                        "presets: {}",
                        tcc_schedule::MASK_PRESETS.join(", ")
                    )));
                };
                for (s, b) in mask.into_iter().enumerate() {
                    let d = if b {
                        Decision::Compute
                    } else {
                        Decision::Reuse
                    };
                    writes.push(StepWrite::all(s, d, name.span));
                }
            }
            RuleAction::Table(rows) => {
                if rows.len() != self.steps {
                    let span = rows
                        .first()
                        .zip(rows.last())
                        .map_or(key, |(a, b)| a.span.to(b.span));
                    return Err(Diagnostic::new(
                        format!("table has {} rows", rows.len()),
                        span,
                        format!("the sampler has {} steps: one row each", self.steps),
                    ));
                }
                for (s, row) in rows.iter().enumerate() {
                    if row.value.cells.len() != block_list.len() {
                        return Err(Diagnostic::new(
                            format!("table row {s} has {} cells", row.value.cells.len()),
                            row.span,
                            format!("expected {} (one per selected block)", block_list.len()),
                        ));
                    }
                    let per_block = row
                        .value
                        .cells
                        .iter()
                        .map(|c| match c.value {
                            Cell::Compute => Some(Decision::Compute),
                            Cell::Reuse => Some(Decision::Reuse),
                            Cell::Keep => None,
                        })
                        .collect();
                    writes.push(StepWrite {
                        step: s,
                        whole: None,
                        per_block,
                        origin: row.span,
                    });
                }
            }
            RuleAction::ReuseDelta(sel) => {
                if let Some(b) = &rule.branches {
                    return Err(Diagnostic::new(
                        "`branches` in a reuse-delta rule",
                        b.span,
                        "a delta replaces whole blocks, every branch",
                    )
                    .with_help("remove `branches`"));
                }
                let (start, end) = match (block_list.first(), block_list.last()) {
                    (Some(&a), Some(&b)) if b - a + 1 == block_list.len() => (a, b + 1),
                    _ => {
                        let span = rule.blocks.as_ref().map_or(key, |b| b.span);
                        return Err(Diagnostic::new(
                            "reuse-delta needs one contiguous block range",
                            span,
                            if block_list.is_empty() {
                                "selects no block".to_string()
                            } else {
                                "these blocks have gaps".to_string()
                            },
                        )
                        .with_help("write the range as `blocks = \"a..b\"`"));
                    }
                };
                let picked = eval_selector(sel, IndexKind::Step, self.steps)?;
                for s in (0..self.steps).filter(|&s| picked[s]) {
                    let d = Decision::Delta { start, end };
                    writes.push(StepWrite::all(s, d, sel.span));
                }
                // Every branch of the range, whatever `branches` says.
                let all: Vec<usize> = (0..self.branches).collect();
                let range: Vec<usize> = (start..end).collect();
                return self.write(&writes, &range, &all);
            }
            RuleAction::Partial(sel) => {
                let ratio = rule.fresh_ratio.as_ref().map_or(0.0, |r| r.value);
                let schedule = rule
                    .ratio_schedule
                    .as_ref()
                    .map_or(RatioSchedule::Constant, |r| r.value);
                let picked = eval_selector(sel, IndexKind::Step, self.steps)?;
                for s in (0..self.steps).filter(|&s| picked[s]) {
                    let before = self.step_cells(s).to_vec();
                    for &block in &block_list {
                        for &b in &branches {
                            let factor = schedule.factor(
                                s,
                                self.steps,
                                block,
                                self.depth,
                                self.branch_names[b],
                            );
                            let d = match fresh_tokens(ratio, factor, self.tokens) {
                                0 => Decision::Reuse,
                                k if k >= self.tokens => Decision::Compute,
                                fresh => Decision::Partial { fresh },
                            };
                            self.set(s, block, b, d, sel.span);
                        }
                    }
                    self.check_delta_groups(s, &before, sel.span)?;
                }
                return Ok(());
            }
        }
        self.write(&writes, &block_list, &branches)
    }

    /// Writes the decisions of one rule, refusing to overwrite only part of
    /// a delta range that an earlier rule set.
    fn write(
        &mut self,
        writes: &[StepWrite],
        blocks: &[usize],
        branches: &[usize],
    ) -> Result<(), Diagnostic> {
        for w in writes {
            let before = self.step_cells(w.step).to_vec();
            for (i, &block) in blocks.iter().enumerate() {
                let Some(d) = w.whole.or_else(|| w.per_block[i]) else {
                    continue;
                };
                for &b in branches {
                    self.set(w.step, block, b, d, w.origin);
                }
            }
            self.check_delta_groups(w.step, &before, w.origin)?;
        }
        Ok(())
    }

    /// A delta range is one unit: after a write, each range that was there
    /// before must be either untouched or entirely overwritten.
    fn check_delta_groups(
        &self,
        step: usize,
        before: &[Decision],
        origin: Span,
    ) -> Result<(), Diagnostic> {
        let after = self.step_cells(step);
        let mut seen = HashSet::new();
        for &d in before {
            let Decision::Delta { start, end } = d else {
                continue;
            };
            if !seen.insert((start, end)) {
                continue;
            }
            let cells = (start * self.branches)..(end * self.branches);
            let changed = cells.clone().filter(|&i| after[i] != before[i]).count();
            let kept: Vec<usize> = cells.filter(|&i| after[i] == d).collect();
            if changed > 0 && !kept.is_empty() {
                // A cell the write left alone still names the earlier rule.
                let earlier = self.origin[self.idx(step, 0, 0) + kept[0]];
                return Err(Diagnostic::new(
                    format!("this rule overrides part of the delta range {start}..{end} at step {step}"),
                    origin,
                    "overlaps a delta range set by an earlier rule",
                )
                .with_secondary(earlier, format!("the delta range {start}..{end} is set here"))
                .with_help(format!(
                    "a delta skips blocks {start}..{end} as one unit: override all of them at step {step}, or none"
                )));
            }
        }
        Ok(())
    }

    /// Warm-up and cut-off force computation at the first and last steps;
    /// then a (block, branch) reused more than `max-reuse` times in a row is
    /// computed (a whole delta range at once).
    pub(super) fn apply_limits(&mut self, limits: &LimitsSection) -> Result<(), Diagnostics> {
        let mut diags = Diagnostics::new();
        let mut force_steps = Vec::new();
        for (v, what) in [(&limits.warmup, "warm-up"), (&limits.cutoff, "cut-off")] {
            let Some(v) = v else { continue };
            if v.value as u128 > self.steps as u128 {
                diags.push(Diagnostic::new(
                    format!("{what} of {} steps", v.value),
                    v.span,
                    format!("the sampler has {} steps", self.steps),
                ));
                continue;
            }
            let k = v.value as usize;
            if what == "warm-up" {
                force_steps.extend((0..k).map(|s| (s, v.span)));
            } else {
                force_steps.extend((self.steps - k..self.steps).map(|s| (s, v.span)));
            }
        }
        if !diags.is_empty() {
            return diags.into_result(());
        }
        for (s, span) in force_steps {
            for block in 0..self.depth {
                for b in 0..self.branches {
                    self.set(s, block, b, Decision::Compute, span);
                }
            }
        }
        if let Some(m) = &limits.max_reuse {
            self.limit_runs(m.value, m.span);
        }
        Ok(())
    }

    fn limit_runs(&mut self, max: u64, span: Span) {
        let per_step = self.depth * self.branches;
        let mut run = vec![0u64; per_step];
        for s in 0..self.steps {
            let mut force: Vec<usize> = Vec::new();
            let cells = &self.cells[s * per_step..(s + 1) * per_step];
            for (i, (&d, &r)) in cells.iter().zip(&run).enumerate() {
                if d != Decision::Compute && r + 1 > max {
                    match d {
                        Decision::Delta { start, end } => {
                            force.extend(start * self.branches..end * self.branches)
                        }
                        _ => force.push(i),
                    }
                }
            }
            for i in force {
                self.cells[s * per_step + i] = Decision::Compute;
                self.origin[s * per_step + i] = span;
            }
            for (i, r) in run.iter_mut().enumerate() {
                *r = match self.cells[s * per_step + i] {
                    Decision::Compute => 0,
                    _ => *r + 1,
                };
            }
        }
    }

    /// The plan's actions, `[step][block][branch]`: each reuse reads the
    /// latest earlier step that computed its cell; each delta reuse the
    /// latest earlier step that computed every branch of its whole range.
    pub(super) fn link(&self) -> Result<Vec<Vec<Vec<Action>>>, Diagnostics> {
        let mut diags = Diagnostics::new();
        let mut reported: HashSet<(usize, usize)> = HashSet::new();
        let mut last = vec![None::<usize>; self.depth * self.branches];
        let mut out = Vec::with_capacity(self.steps);
        for s in 0..self.steps {
            let mut step = vec![vec![Action::Compute; self.branches]; self.depth];
            for (block, row) in step.iter_mut().enumerate() {
                for (b, action) in row.iter_mut().enumerate() {
                    let i = block * self.branches + b;
                    let origin = self.origin[self.idx(s, block, b)];
                    *action = match self.get(s, block, b) {
                        Decision::Compute => Action::Compute,
                        d @ (Decision::Reuse | Decision::Partial { .. }) => match last[i] {
                            Some(from) => match d {
                                Decision::Partial { fresh } => Action::Partial {
                                    from,
                                    fresh,
                                    prior: false,
                                },
                                _ => Action::Reuse { from, prior: false },
                            },
                            None => {
                                if reported.insert((origin.start, origin.end)) {
                                    diags.push(nothing_cached(
                                        s,
                                        block,
                                        self.branch_names[b],
                                        origin,
                                        matches!(d, Decision::Partial { .. }),
                                    ));
                                }
                                Action::Compute
                            }
                        },
                        Decision::Delta { start, end } => {
                            match self.latest_full_range(s, start, end) {
                                Some(from) => Action::ReuseDelta { start, end, from },
                                None => {
                                    if reported.insert((origin.start, origin.end)) {
                                        diags.push(
                                            Diagnostic::new(
                                                format!("blocks {start}..{end} reuse their delta at step {s}, but no earlier step computed all of them"),
                                                origin,
                                                "delta reuse with nothing cached",
                                            )
                                            .with_help("a delta is cached at a step that computes every branch of the range: compute it at an earlier step"),
                                        );
                                    }
                                    Action::Compute
                                }
                            }
                        }
                    };
                }
            }
            for block in 0..self.depth {
                for b in 0..self.branches {
                    if self.get(s, block, b) == Decision::Compute {
                        last[block * self.branches + b] = Some(s);
                    }
                }
            }
            out.push(step);
        }
        diags.into_result(out)
    }

    fn latest_full_range(&self, step: usize, start: usize, end: usize) -> Option<usize> {
        (0..step).rev().find(|&s| {
            (start..end)
                .all(|block| (0..self.branches).all(|b| self.get(s, block, b) == Decision::Compute))
        })
    }
}

fn nothing_cached(
    step: usize,
    block: usize,
    branch: Branch,
    origin: Span,
    partial: bool,
) -> Diagnostic {
    let (what, does) = if partial {
        ("partial compute", "partly computes")
    } else {
        ("reuse", "reuses")
    };
    Diagnostic::new(
        format!("{what} with nothing cached: block {block} `{branch}` at step {step}"),
        origin,
        format!("step {step} {does} a branch that no earlier step computed"),
    )
    .with_help("a reuse reads the latest earlier step that computed the same block and branch: compute it first (e.g. leave step 0 out, or add `[limits] warmup = 1`)")
}
