//! `plan --show` of a dynamic plan: the rule, its bounds and the range of
//! cost the run-time decisions can land in, instead of a fixed table.

use tcc_core::{DynamicPolicy, DynamicSpec, ProbePoint};

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
            DynamicPolicy::TeaCache => {
                let rescale = match &d.rescale {
                    Some(p) => {
                        let c: Vec<String> = p.coeffs().iter().map(|&c| num(c)).collect();
                        format!("rescale(c) = polyval([{}], c)", c.join(", "))
                    }
                    None => "rescale: none (the identity)".to_string(),
                };
                label(
                    out,
                    "dynamic",
                    &format!(
                        "teacache, threshold {}: before block 0 at every step, acc += rescale(mean|m - m_prev| / mean|m_prev|); when acc < {}",
                        num(d.threshold),
                        num(d.threshold)
                    ),
                );
                label(
                    out,
                    "",
                    &format!("blocks 0..={last} add their residual delta (block {last}'s output minus block 0's input) cached at the last computed step; else every block runs, refreshes the cache and acc = 0"),
                );
                label(
                    out,
                    "",
                    "(m: block 0's modulated input LayerNorm(x) * (1 + scale_msa) + shift_msa over the whole batch, both CFG halves; m_prev: m at the previous step, computed or not)",
                );
                label(out, "", &rescale);
            }
        }
        let max = d
            .max_reuse
            .map_or("no limit on reuses in a row".to_string(), |m| {
                format!("at most {m} reuses in a row")
            });
        label(
            out,
            "bounds",
            &format!(
                "warm-up {} (step 0 always computes), cut-off {}, {max}",
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
        let best = PlanCost::of_run(self, &most);
        let reuse_step = most
            .first()
            .map(|&s| best.steps[s].total)
            .unwrap_or(worst.full_step);
        let what = match d.policy.probe_point() {
            ProbePoint::AfterFirstBlock => "embed, block 0, final layer",
            ProbePoint::BeforeFirstBlock => "embed, block 0's adaLN for the probe, final layer",
        };
        label(
            out,
            "step MACs",
            &format!(
                "computed {}, reused {} ({what})",
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
    use crate::PlanCost;

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
    fn teacache_reuses_every_block_and_pays_its_probe() {
        let base = "[model]\nname = \"tiny\"\n[sampler]\nsteps = 6\n";
        let p = compile(&format!(
            "{base}[dynamic]\npolicy = \"teacache\"\nthreshold = 0.2\nrescale = [2, -0.5, 0.001]\n"
        ));
        let d = p.dynamic.unwrap();
        assert_eq!(d.policy, tcc_core::DynamicPolicy::TeaCache);
        assert_eq!(d.rescale.unwrap().coeffs(), [2.0, -0.5, 0.001]);
        let depth = p.model.depth;
        assert_eq!(p.reused_blocks(), Some((0, depth)));
        let realised = p.realised(&[2, 3]);
        for s in [2, 3] {
            for row in &realised.steps[s].actions {
                assert!(row.iter().all(|&a| a
                    == crate::Action::ReuseDelta {
                        start: 0,
                        end: depth,
                        from: 1
                    }));
            }
        }
        // A reuse step costs the embedding and the final layer in the
        // realised table; the run also paid block 0's adaLN for the probe.
        let table = PlanCost::of(&realised);
        let run = PlanCost::of_run(&p, &[2, 3]);
        let u = &table.units;
        assert_eq!(table.steps[2].total, u.embed + u.final_layer);
        assert_eq!(run.steps[2].total, u.embed + u.final_layer + u.adaln);
        assert_eq!(run.steps[1], table.steps[1]);
        assert_eq!(run.total, table.total + 2 * u.adaln);
        assert!(u.adaln > 0);

        // A first-block run costs what its realised table does.
        let fb = compile(&format!(
            "{base}[dynamic]\npolicy = \"first-block\"\nthreshold = 0.2\n"
        ));
        assert_eq!(fb.reused_blocks(), Some((1, depth)));
        assert_eq!(
            PlanCost::of_run(&fb, &[2, 3]),
            PlanCost::of(&fb.realised(&[2, 3]))
        );
        // A static plan has nothing to realise.
        let full = p.all_compute();
        assert_eq!(full.reused_blocks(), None);
        assert_eq!(full.realised(&[2, 3]), full);

        let shown = p.show();
        assert!(shown.contains("teacache, threshold 0.2"), "{shown}");
        assert!(shown.contains("polyval([2, -0.5, 0.001], c)"), "{shown}");
        assert!(
            shown.contains("blocks 0..=5 add their residual delta"),
            "{shown}"
        );
    }

    #[test]
    fn steps_as_ranges() {
        assert_eq!(step_list(&[2, 3, 4, 6, 9, 10]), "2..=4, 6, 9..=10");
        assert_eq!(step_list(&[]), "none");
    }
}
