//! Properties of the compiler over generated schedules.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::plan::Action;

const MODELS: &[&str] = &["tiny", "dit-s-2-256", "pixart-alpha-256"];

fn compile_text(text: &str) -> Result<Plan, Diagnostics> {
    let s = tcc_schedule::parse("p.sched", text)?;
    compile(&s, Path::new("."))
}

fn header(model: &str, steps: usize) -> String {
    format!("[model]\nname = \"{model}\"\n[sampler]\nsteps = {steps}\n")
}

/// Refresh steps of FORA with interval p/q, in integer arithmetic:
/// round(k p / q) with halves rounded up is floor((2 k p + q) / (2 q)).
fn refresh_steps(p: u64, q: u64, steps: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for k in 0.. {
        let s = ((2 * k * p + q) / (2 * q)) as usize;
        if s >= steps {
            return out;
        }
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    unreachable!()
}

fn list(steps: &[usize]) -> String {
    steps
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// (2) One FORA policy written seven ways compiles to one plan.
    #[test]
    fn spellings_of_fora_compile_to_the_same_plan(
        model in prop::sample::select(MODELS),
        steps in 1usize..40,
        halves in 2u64..13,
        calibrate in any::<bool>(),
    ) {
        // Interval N = halves / 2: 1, 1.5, 2, ..., 6.
        let n = halves as f64 / 2.0;
        let refresh = refresh_steps(halves, 2, steps);
        let mask: String = (0..steps).map(|s| if refresh.contains(&s) { '1' } else { '0' }).collect();
        let depth = tcc_core::ModelShape::preset(model).unwrap().depth;
        let table: String = mask
            .chars()
            .map(|c| format!("  \"{}\",\n", c.to_string().repeat(depth)))
            .collect();
        let tail = if calibrate { "[calibration]\nmethod = \"none\"\n" } else { "" };
        let mut spellings = vec![
            format!("[[cache]]\nrefresh = \"every {n}\"\n"),
            format!("[[cache]]\nreuse = \"except every {n}\"\n"),
            format!("[[cache]]\nrefresh = \"{}\"\n", list(&refresh)),
            format!("[[cache]]\nmask = \"{mask}\"\n"),
            format!("[[cache]]\ntable = [\n{table}]\n"),
            format!("[[cache]]\nreuse = \"all\"\n[[cache]]\ncompute = \"every {n}\"\n"),
            format!("[[cache]]\nreuse = \"1..\"\nbranches = \"attn\"\n[[cache]]\nrefresh = \"every {n}\"\nbranches = \"all except attn\"\n[[cache]]\ncompute = \"{}\"\nbranches = \"attn\"\n", list(&refresh)),
        ];
        if halves % 2 == 0 {
            spellings.push(format!("[[cache]]\nrefresh = \"step % {} == 0\"\n", halves / 2));
        }
        let plans: Vec<Plan> = spellings
            .iter()
            .map(|rules| {
                let text = format!("{}{rules}{tail}", header(model, steps));
                compile_text(&text).unwrap_or_else(|d| panic!("{}", d.render("p.sched", &text)))
            })
            .collect();
        for (plan, rules) in plans.iter().zip(&spellings).skip(1) {
            prop_assert_eq!(plan, &plans[0], "{}", rules);
        }
        // And that plan is FORA: full refresh steps, everything reused between.
        for st in &plans[0].steps {
            let full = refresh.contains(&st.step);
            prop_assert_eq!(st.is_full(), full);
            if !full {
                let all_reused = st.actions.iter().flatten().all(|a| matches!(a, Action::Reuse { .. }));
                prop_assert!(all_reused);
            }
        }
    }
}

/// A step selector that stays inside `0..steps`.
fn step_selector(steps: usize) -> impl Strategy<Value = String> {
    let last = steps as u64 - 1;
    prop_oneof![
        Just("all".to_string()),
        (0..=last).prop_map(|i| i.to_string()),
        (0..=last, 0..=last).prop_map(|(a, b)| format!("{}..={}", a.min(b), a.max(b))),
        (1u32..8).prop_map(|k| format!("except every {}", f64::from(k) / 2.0 + 1.0)),
        (1u64..5, 0u64..5).prop_map(|(m, r)| format!("step % {m} == {r}")),
        (0..=last).prop_map(|i| format!("step >= {i}")),
        (1..=last.max(1)).prop_map(|i| format!("..{i}, last 1")),
    ]
}

fn block_selector(depth: usize) -> impl Strategy<Value = String> {
    let d = depth as u64;
    prop_oneof![
        Just("all".to_string()),
        (0..d, 0..d).prop_map(|(a, b)| format!("{}..={}", a.min(b), a.max(b))),
        (1u64..4).prop_map(|m| format!("block % {m} == 0")),
    ]
}

/// A random schedule (as text) over a small model: any mix of rule kinds,
/// usually with a warm-up so that step 0 caches something.
fn random_schedule() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["tiny", "dit-s-2-256", "pixart-alpha-256"][..]),
        1usize..16,
    )
        .prop_flat_map(|(model, steps)| {
            let depth = tcc_core::ModelShape::preset(model).unwrap().depth;
            let branches =
                prop::sample::select(&["all", "attn", "mlp", "attn, mlp", "except mlp"][..]);
            let rule = prop_oneof![
                (
                    step_selector(steps),
                    block_selector(depth),
                    branches.clone()
                )
                    .prop_map(|(s, b, br)| format!(
                        "[[cache]]\nreuse = \"{s}\"\nblocks = \"{b}\"\nbranches = \"{br}\"\n"
                    )),
                (step_selector(steps), branches).prop_map(|(s, br)| format!(
                    "[[cache]]\ncompute = \"{s}\"\nbranches = \"{br}\"\n"
                )),
                step_selector(steps).prop_map(|s| format!("[[cache]]\nrefresh = \"{s}\"\n")),
                (step_selector(steps), 0..depth, 1..=depth).prop_map(move |(s, a, len)| {
                    let end = (a + len).min(depth);
                    format!("[[cache]]\nreuse-delta = \"{s}\"\nblocks = \"{a}..{end}\"\n")
                }),
                proptest::collection::vec(any::<bool>(), steps).prop_map(|bits| {
                    let m: String = bits.iter().map(|&b| if b { '1' } else { '0' }).collect();
                    format!("[[cache]]\nmask = \"{m}\"\n")
                }),
                proptest::collection::vec(proptest::collection::vec(0u8..3, depth), steps)
                    .prop_map(|rows| {
                        let rows: String = rows
                            .iter()
                            .map(|r| {
                                let r: String =
                                    r.iter().map(|&c| ['0', '1', '.'][c as usize]).collect();
                                format!("  \"{r}\",\n")
                            })
                            .collect();
                        format!("[[cache]]\nbranches = \"attn\"\ntable = [\n{rows}]\n")
                    }),
            ];
            let limits =
                (0usize..3, 0usize..3, proptest::option::of(0u32..4)).prop_map(move |(w, c, m)| {
                    let mut s = format!(
                        "[limits]\nwarmup = {}\ncutoff = {}\n",
                        w.min(steps),
                        c.min(steps)
                    );
                    if let Some(m) = m {
                        s += &format!("max-reuse = {m}\n");
                    }
                    s
                });
            (
                Just(header(model, steps)),
                proptest::collection::vec(rule, 0..4),
                proptest::option::of(limits),
                any::<bool>(),
            )
                .prop_map(|(head, rules, limits, calib)| {
                    let mut text = head + &rules.concat();
                    if let Some(l) = limits {
                        text += &l;
                    }
                    if calib {
                        text += "[calibration]\nalpha = 0.5\n";
                    }
                    text
                })
        })
}

/// (4) Every reuse reads the latest earlier step that computed its (block,
/// branch); every delta reuse the latest earlier step that computed its
/// whole range, and all cells of a range agree; priors sit exactly on the
/// reuses of the calibrated steps.
fn check_links(plan: &Plan) -> Result<(), TestCaseError> {
    let nb = plan.branches().len();
    for st in &plan.steps {
        let s = st.step;
        prop_assert_eq!(st.actions.len(), plan.model.depth);
        for (block, row) in st.actions.iter().enumerate() {
            prop_assert_eq!(row.len(), nb);
            for (b, &a) in row.iter().enumerate() {
                match a {
                    Action::Compute => {}
                    Action::Reuse { from, prior } => {
                        prop_assert!(from < s);
                        prop_assert_eq!(plan.steps[from].actions[block][b], Action::Compute);
                        for between in from + 1..s {
                            prop_assert_ne!(plan.steps[between].actions[block][b], Action::Compute);
                        }
                        prop_assert_eq!(prior, plan.calibration.steps.contains(&s));
                    }
                    Action::Partial { from, fresh, prior } => {
                        prop_assert!(from < s);
                        prop_assert_eq!(prior, plan.calibration.steps.contains(&s));
                        prop_assert!(0 < fresh && fresh < plan.model.tokens());
                        prop_assert_eq!(plan.steps[from].actions[block][b], Action::Compute);
                        for between in from + 1..s {
                            prop_assert_ne!(plan.steps[between].actions[block][b], Action::Compute);
                        }
                    }
                    Action::ReuseDelta { start, end, from } => {
                        prop_assert!(start <= block && block < end && end <= plan.model.depth);
                        prop_assert!(from < s);
                        let full = |t: usize| {
                            plan.steps[t].actions[start..end]
                                .iter()
                                .flatten()
                                .all(|a| a.is_compute())
                        };
                        prop_assert!(full(from));
                        prop_assert!(!(from + 1..s).any(full));
                        for cell in st.actions[start..end].iter().flatten() {
                            prop_assert_eq!(*cell, a);
                        }
                    }
                }
            }
        }
    }
    for &s in &plan.calibration.steps {
        prop_assert!(plan.steps[s].is_calibrated());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_reuse_links_to_the_latest_compute(text in random_schedule()) {
        if let Ok(plan) = compile_text(&text) {
            check_links(&plan)?;
        }
    }

    /// (6) Arbitrary text never panics parse + compile.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Err(d) = compile_text(&text) {
            let _ = d.render("p.sched", &text);
        }
    }

    /// (6) Nor do the shipped schedules and random ones with a few
    /// characters changed.
    #[test]
    fn mutated_schedules_never_panic(
        base in prop_oneof![random_schedule(), shipped_schedule()],
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4, any::<char>()), 1..4),
    ) {
        let mut text = base;
        for (at, len, c) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + len).min(text.len());
            while !text.is_char_boundary(j) {
                j -= 1;
            }
            text.replace_range(i..j, &c.to_string());
        }
        match compile_text(&text) {
            Ok(plan) => check_links(&plan)?,
            Err(d) => {
                let _ = d.render("p.sched", &text);
            }
        }
    }
}

/// Every `.sched` under `schedules/`, subfolders included.
fn shipped_schedule() -> impl Strategy<Value = String> {
    fn walk(dir: &Path, texts: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, texts);
            } else if path.extension().is_some_and(|e| e == "sched") {
                texts.push(std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut texts = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schedules"),
        &mut texts,
    );
    texts.sort();
    prop::sample::select(texts)
}

/// The generator above must mostly produce schedules that compile, or the
/// link property would be checked on too few plans.
#[test]
fn random_schedules_mostly_compile() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = random_schedule();
    let total = 200;
    let ok = (0..total)
        .filter(|_| compile_text(&strategy.new_tree(&mut runner).unwrap().current()).is_ok())
        .count();
    assert!(ok * 3 >= total, "only {ok} of {total} compiled");
}
