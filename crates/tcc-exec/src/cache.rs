use std::collections::{BTreeMap, BTreeSet};

use tcc_plan::{Action, Plan};

/// What the executor must keep, derived once from a plan.
///
/// A computed branch output (or a block range's residual delta) is stored
/// only when a later step reads it, and dropped right after the last step
/// that reads it, so memory holds no more than the plan needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheLayout {
    /// `store[step]`: the (block, branch index) outputs computed at `step`
    /// that a later step reuses.
    pub store: Vec<BTreeSet<(usize, usize)>>,
    /// `store_delta[step]`: the block ranges `(start, end)` whose residual
    /// delta at `step` a later step reuses.
    pub store_delta: Vec<BTreeSet<(usize, usize)>>,
    /// `drop[step]`: entries whose last reader is `step`.
    pub drop: Vec<BTreeSet<(usize, usize)>>,
    /// `drop_delta[step]`: delta ranges whose last reader is `step`.
    pub drop_delta: Vec<BTreeSet<(usize, usize)>>,
}

impl CacheLayout {
    pub fn new(plan: &Plan) -> CacheLayout {
        let n = plan.steps.len();
        let mut layout = CacheLayout {
            store: vec![BTreeSet::new(); n],
            store_delta: vec![BTreeSet::new(); n],
            drop: vec![BTreeSet::new(); n],
            drop_delta: vec![BTreeSet::new(); n],
        };
        // Last reader of each stored (source step, key).
        let mut last: BTreeMap<(usize, usize, usize), usize> = BTreeMap::new();
        let mut last_delta: BTreeMap<(usize, usize, usize), usize> = BTreeMap::new();
        for (s, step) in plan.steps.iter().enumerate() {
            for (block, row) in step.actions.iter().enumerate() {
                for (bi, action) in row.iter().enumerate() {
                    match *action {
                        Action::Compute => {}
                        Action::Reuse { from, .. } | Action::Partial { from, .. } => {
                            if from < n {
                                layout.store[from].insert((block, bi));
                            }
                            last.insert((from, block, bi), s);
                        }
                        Action::ReuseDelta { start, end, from } => {
                            if from < n {
                                layout.store_delta[from].insert((start, end));
                            }
                            last_delta.insert((from, start, end), s);
                        }
                    }
                }
            }
        }
        for ((_, block, bi), s) in last {
            layout.drop[s].insert((block, bi));
        }
        for ((_, start, end), s) in last_delta {
            layout.drop_delta[s].insert((start, end));
        }
        layout
    }

    /// The largest number of branch outputs held at once, for reporting.
    pub fn peak_entries(&self) -> usize {
        let mut held: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut peak = 0;
        for s in 0..self.store.len() {
            held.extend(self.store[s].iter().copied());
            peak = peak.max(held.len());
            // A key read at step s is not computed at step s, so the sets
            // of one step never overlap.
            for key in &self.drop[s] {
                held.remove(key);
            }
        }
        peak
    }
}
