//! `plan --show` of a dynamic plan: the rule, its bounds and the range of
//! cost the run-time decisions can land in, instead of a fixed table.

use tcc_core::{DynamicPolicy, DynamicSpec};

use crate::cost::{human_macs, PlanCost};
use crate::render::{label, num, speedup_text};
use crate::Plan;

/// Steps as ranges: `2..=4, 6..=8, 11`.
fn step_list(steps: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let mut j = i;
        while j + 1 < steps.len() && steps[j + 1] == steps[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            steps[i].to_string()
        } else {
            format!("{}..={}", steps[i], steps[j])
        });
        i = j + 1;
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

impl Plan {
    /// The lines that replace the grid for a dynamic plan.
    pub(crate) fn show_dynamic(&self, d: &DynamicSpec, out: &mut String) {
        let n = self.steps.len();
        let last = self.model.depth.saturating_sub(1);
        match d.policy {
            DynamicPolicy::FirstBlock => {
                label(
                    out,
                    "dynamic",
                    &format!(
                        "first-block cache, threshold {}: block 0 runs at every step; when mean|r - r_prev| / mean|r_prev| < {}",
                        num(d.threshold),
                        num(d.threshold)
                    ),
                );
                label(
                    out,
                    "",
                    &format!("(r: block 0's output minus its input over the whole batch, both CFG halves; r_prev: r at the last step that ran every block), blocks 1..={last} add their residual delta cached at that step; else every block runs and refreshes the cache"),
                );
            }
        }
        let max = d
            .max_reuse
            .map_or("no limit".to_string(), |m| m.to_string());
        label(
            out,
            "bounds",
            &format!(
                "warm-up {} (step 0 always computes), cut-off {}, at most {max} reuses in a row",
                d.warmup, d.cutoff
            ),
        );
        let most = d.most_reuses(n);
        label(
            out,
            "may reuse",
            &format!("at most {} of {n} steps: {}", most.len(), step_list(&most)),
        );
        out.push('\n');
        let worst = PlanCost::of(self);
        let best = PlanCost::of(&self.realised(&most));
        let reuse_step = most
            .first()
            .map(|&s| best.steps[s].total)
            .unwrap_or(worst.full_step);
        label(
            out,
            "step MACs",
            &format!(
                "computed {}, reused {} (embed, block 0, final layer)",
                human_macs(worst.full_step),
                human_macs(reuse_step)
            ),
        );
        label(
            out,
            "best case",
            &format!(
                "{} MACs, predicted speedup {} (every step the bounds allow reuses)",
                human_macs(best.total),
                speedup_text(&best)
            ),
        );
        label(
            out,
            "worst case",
            &format!(
                "{} MACs, predicted speedup {} (every step computes)",
                human_macs(worst.total),
                speedup_text(&worst)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::step_list;

    fn compile(text: &str) -> crate::Plan {
        let schedule = tcc_schedule::parse("d.sched", text).unwrap();
        crate::compile(&schedule, std::path::Path::new("")).unwrap()
    }

    #[test]
    fn policies_change_the_hash_and_show_in_diffs_not_the_table() {
        let base = "[model]\nname = \"tiny\"\n";
        let full = compile(base);
        let a = compile(&format!(
            "{base}[dynamic]\npolicy = \"first-block\"\nthreshold = 0.08\n"
        ));
        let b = compile(&format!(
            "{base}[dynamic]\npolicy = \"first-block\"\nthreshold = inf\n"
        ));
        assert_eq!(a.steps, full.steps);
        assert_eq!(a.all_compute(), full);
        assert_ne!(a.hash(), full.hash());
        assert_ne!(a.hash(), b.hash());
        let d = crate::PlanDiff::new(&a, &b);
        let keys: Vec<&str> = d.settings.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["dynamic.threshold"]);
        assert_eq!(d.settings[0].b.as_deref(), Some("inf"));
        assert!(d.cells.is_empty());
    }

    #[test]
    fn steps_as_ranges() {
        assert_eq!(step_list(&[2, 3, 4, 6, 9, 10]), "2..=4, 6, 9..=10");
        assert_eq!(step_list(&[]), "none");
    }
}
