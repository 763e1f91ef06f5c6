//! Serialisation, content hash and cost model of plans built in code
//! (independent of the schedule compiler).
//!
//! Properties (issue 2): (3) plan -> TOML -> plan and plan -> JSON -> plan
//! are identities and the hash survives them; (5) cost totals equal the sum
//! of the per-action costs.

use proptest::prelude::*;
use tcc_core::{
    CalibMethod, CalibMode, CalibrationSpec, CfgHalf, CfgOrder, ModelFamily, ModelShape, Pooling,
    PriorKind, SamplerKind, SamplerSpec,
};
use tcc_plan::{Action, Format, Plan, PlanCost, PlanDiff, PlanDocument, StepPlan, UnitCosts};

/// FORA: refresh every `n` steps, reuse every branch in between; priors on
/// the reuse steps listed in `calibrated`.
fn fora(model: &str, sampler: SamplerSpec, n: usize, calibrated: &[usize]) -> Plan {
    let model = ModelShape::preset(model).unwrap();
    let nb = model.branches().len();
    let steps = sampler
        .timesteps()
        .into_iter()
        .enumerate()
        .map(|(step, timestep)| {
            let refresh = step - step % n;
            let action = if step == refresh {
                Action::Compute
            } else {
                Action::Reuse {
                    from: refresh,
                    prior: calibrated.contains(&step),
                }
            };
            StepPlan {
                step,
                timestep,
                actions: vec![vec![action; nb]; model.depth],
            }
        })
        .collect();
    let calibration = if calibrated.is_empty() {
        CalibrationSpec::default()
    } else {
        CalibrationSpec {
            method: CalibMethod::Tcc,
            steps: calibrated.to_vec(),
            alpha: 1.75,
            ..Default::default()
        }
    };
    Plan {
        source: "fora.sched".into(),
        weights: None,
        model,
        sampler,
        calibration,
        toca: None,
        steps,
        dynamic: None,
    }
}

fn ddim(steps: usize) -> SamplerSpec {
    SamplerSpec {
        steps,
        ..Default::default()
    }
}

/// The plan whose hash is pinned below: tiny model, DDIM 4 steps with CFG
/// 1.5, FORA N=2, a prior on step 1.
fn pinned_plan() -> Plan {
    fora("tiny", ddim(4), 2, &[1])
}

/// Changing the canonical form (or any serialised name of the plan, model,
/// sampler or calibration settings) changes the hash of every plan, which
/// unbinds every calibration file users have fitted. If this test fails,
/// that is what the change does: bump the canonical prefix version
/// deliberately, say so in the release notes, and regenerate the reference.
///
/// Reference: tests/fixtures/pinned_plan_hash.py writes the same plan by
/// hand as a Python dict and hashes it with `json.dumps(sort_keys=True,
/// separators=(",", ":"))` and hashlib.sha256 — an implementation that
/// shares no code with ours.
#[test]
fn pinned_hash_matches_python_reference() {
    let plan = pinned_plan();
    let canonical = String::from_utf8(plan.canonical_bytes()).unwrap();
    let expected = include_str!("fixtures/pinned_plan_canonical.txt");
    assert_eq!(canonical, expected.trim_end_matches('\n'));
    assert_eq!(
        plan.hash().to_string(),
        include_str!("fixtures/pinned_plan_hash.txt").trim()
    );
}

#[test]
fn hash_ignores_source_and_weights_only() {
    let plan = pinned_plan();
    let mut moved = plan.clone();
    moved.source = "elsewhere/other.sched".into();
    moved.weights = Some("/models/dit.safetensors".into());
    assert_eq!(plan.hash(), moved.hash());

    let mut alpha = plan.clone();
    alpha.calibration.alpha = 0.5;
    assert_ne!(plan.hash(), alpha.hash());
    let mut seed = plan.clone();
    seed.calibration.seed = 1;
    assert_ne!(plan.hash(), seed.hash());
    let mut guidance = plan.clone();
    guidance.sampler.guidance_scale = 4.5;
    assert_ne!(plan.hash(), guidance.hash());
    let mut timestep = plan.clone();
    timestep.steps[2].timestep += 1;
    assert_ne!(plan.hash(), timestep.hash());
}

#[test]
fn hash_changes_when_any_single_action_changes() {
    let plan = fora("dit-s-2-256", ddim(6), 3, &[1, 4]);
    let base = plan.hash();
    let mut seen = std::collections::HashSet::new();
    for s in 0..plan.steps.len() {
        for b in 0..plan.model.depth {
            for i in 0..plan.branches().len() {
                let old = plan.steps[s].actions[b][i];
                let alternatives = [
                    Action::Compute,
                    Action::Reuse {
                        from: 0,
                        prior: false,
                    },
                    Action::Reuse {
                        from: 0,
                        prior: true,
                    },
                    Action::ReuseDelta {
                        start: b,
                        end: b + 1,
                        from: 0,
                    },
                ];
                for new in alternatives.into_iter().filter(|&a| a != old) {
                    let mut changed = plan.clone();
                    changed.steps[s].actions[b][i] = new;
                    let h = changed.hash();
                    assert_ne!(h, base, "step {s} block {b} branch {i}: {old:?} -> {new:?}");
                    assert!(seen.insert(h), "two different edits gave the same hash");
                }
            }
        }
    }
}

#[test]
fn document_rejects_a_hand_edited_plan() {
    let plan = fora("tiny", ddim(4), 2, &[]);
    let text = PlanDocument::new(plan).render(Format::Json).unwrap();
    let edited = text.replacen("\"compute\"", "\"COMPUTE\"", 1);
    assert!(PlanDocument::parse(&edited, Format::Json).is_err());
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["plan"]["calibration"]["seed"] = 7.into();
    let err = PlanDocument::parse(&doc.to_string(), Format::Json).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// Predicted speedup of FORA N on an n-step run, from the unit costs:
/// refresh steps cost a full step, reuse steps cost embed + adaLN + final.
#[test]
fn fora_speedup_matches_closed_form() {
    for (model, n, steps) in [
        ("dit-xl-2-256", 2, 20),
        ("dit-xl-2-256", 3, 20),
        ("pixart-alpha-256", 3, 20),
    ] {
        let plan = fora(model, ddim(steps), n, &[]);
        let cost = PlanCost::of(&plan);
        let u = UnitCosts::new(&plan.model, &plan.sampler);
        let full = u.full_step(&plan.model);
        let reuse = u.embed + u.final_layer + plan.model.depth as u64 * u.adaln;
        let refresh_steps = steps.div_ceil(n) as u64;
        let expected = refresh_steps * full + (steps as u64 - refresh_steps) * reuse;
        assert_eq!(cost.total, expected, "{model} N={n}");
        assert_eq!(cost.full_total, steps as u64 * full);
        // Reuse steps are nearly free, so the speedup is close to n.
        let ideal = steps as f64 / refresh_steps as f64;
        assert!(
            cost.speedup() < ideal && cost.speedup() > 0.97 * ideal,
            "{}",
            cost.speedup()
        );
    }
}

#[test]
fn show_marks_calibrated_steps_and_is_stable() {
    let plan = fora("dit-xl-2-256", ddim(20), 2, &[1, 3, 5, 7]);
    let text = plan.show();
    assert_eq!(text, plan.clone().show());
    assert!(text.lines().all(|l| l == l.trim_end()), "trailing blanks");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<usize>().is_ok())
        })
        .collect();
    assert_eq!(rows.len(), 20);
    for (step, row) in rows.iter().enumerate() {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[0], step.to_string());
        assert_eq!(fields[1], plan.steps[step].timestep.to_string());
        let calibrated = [1, 3, 5, 7].contains(&step);
        assert_eq!(fields[2] == "*", calibrated, "{row}");
        let grid = if calibrated { fields[3] } else { fields[2] };
        // Compact grid: one character per block.
        let expected = if step % 2 == 0 {
            'C'
        } else if calibrated {
            'R'
        } else {
            'r'
        };
        assert_eq!(grid, expected.to_string().repeat(28), "{row}");
    }
    let total = text.lines().find(|l| l.starts_with("total")).unwrap();
    let speedup = PlanCost::of(&plan).speedup();
    assert!(
        total.ends_with(&format!("predicted speedup {speedup:.2}x")),
        "{total}"
    );
    assert!(text.contains(&plan.hash().short()));
}

#[test]
fn show_expands_blocks_whose_branches_differ() {
    let mut plan = fora("pixart-alpha-256", ddim(4), 2, &[]);
    // Reuse only the MLP of block 3 at step 2 (its last branch).
    plan.steps[2].actions[3][2] = Action::Reuse {
        from: 0,
        prior: false,
    };
    let text = plan.show();
    assert!(text.contains("one column per branch"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("2 "))
        .unwrap();
    let groups: Vec<&str> = row.split_whitespace().skip(2).take(28).collect();
    assert_eq!(groups[3], "CCr");
    assert!(groups
        .iter()
        .enumerate()
        .all(|(i, g)| i == 3 || *g == "CCC"));
    let header = text.lines().find(|l| l.contains("acm acm")).unwrap();
    assert_eq!(header.matches("acm").count(), 28);
}

#[test]
fn diff_lists_changed_cells_and_cost_delta() {
    let a = fora("dit-xl-2-256", ddim(10), 2, &[]);
    let b = fora("dit-xl-2-256", ddim(10), 3, &[]);
    let diff = PlanDiff::new(&a, &b);
    // N=2 computes steps 0,2,4,6,8; N=3 computes 0,3,6,9.
    let mut changed_steps: Vec<usize> = diff.cells.iter().map(|c| c.step).collect();
    changed_steps.dedup();
    assert_eq!(changed_steps, vec![2, 3, 4, 5, 8, 9]);
    assert!(diff.settings.is_empty());
    assert!(!diff.is_same());
    let text = diff.render();
    // Step 5: reuse in both, from 4 in a and from 3 in b.
    let row5 = text
        .lines()
        .find(|l| l.trim_start().starts_with("5 "))
        .unwrap();
    assert!(row5.contains(&"~".repeat(28)), "{row5}");
    let row3 = text
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .unwrap();
    assert!(row3.contains(&"C".repeat(28)), "{row3}");
    let row1 = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap();
    assert!(row1.contains(&".".repeat(28)), "{row1}");
    assert!(
        text.contains(&format!("{} of {} differ", 6 * 28 * 2, 10 * 28 * 2)),
        "{text}"
    );
    let delta = PlanCost::of(&b).total as i128 - PlanCost::of(&a).total as i128;
    assert!(delta < 0);
    assert!(text.contains("b - a -"), "{text}");

    let c = fora("dit-xl-2-256", ddim(10), 2, &[1]);
    let settings = PlanDiff::new(&a, &c).settings;
    let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "calibration.alpha",
            "calibration.method",
            "calibration.steps"
        ]
    );
    assert!(PlanDiff::new(&a, &a.clone()).is_same());
}

#[test]
fn diff_of_different_models_compares_costs_only() {
    let a = fora("dit-xl-2-256", ddim(4), 2, &[]);
    let b = fora("pixart-alpha-256", ddim(6), 2, &[]);
    let diff = PlanDiff::new(&a, &b);
    assert!(diff.incomparable.is_some());
    assert!(diff.cells.is_empty());
    let text = diff.render();
    assert!(text.contains("not compared"), "{text}");
    assert!(text.contains("model.family: dit -> pixart"), "{text}");
}

/// Property (3) on the plans of the shipped schedules.
#[test]
fn shipped_schedules_round_trip_with_a_stable_hash() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schedules");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "sched") {
            continue;
        }
        let plan = tcc_plan::compile_file(&path).unwrap();
        let hash = plan.hash();
        let toml = Plan::from_toml(&plan.to_toml().unwrap()).unwrap();
        let json = Plan::from_json(&plan.to_json().unwrap()).unwrap();
        for back in [toml, json] {
            assert_eq!(back, plan, "{}", path.display());
            assert_eq!(back.hash(), hash, "{}", path.display());
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} schedules in {}", dir.display());
}

// ---------------------------------------------------------------------------
// Random valid plans.

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        -1e3..1e3f64,
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
    ]
}

fn arb_model() -> impl Strategy<Value = ModelShape> {
    (
        prop_oneof![Just(ModelFamily::Dit), Just(ModelFamily::Pixart)],
        1usize..6,
        1usize..5,
        1usize..9,
        prop_oneof![Just(1usize), Just(2), Just(4)],
        1usize..5,
        1usize..4,
        prop_oneof![Just(1.0), Just(2.5), Just(4.0)],
        (0usize..20, 1usize..8, 1usize..64),
        "[a-z][a-z0-9-]{0,12}",
    )
        .prop_map(
            |(family, depth, heads, head_dim, patch, side, channels, mlp_ratio, extra, name)| {
                let (classes, caption_tokens, caption_dim) = extra;
                let pixart = family == ModelFamily::Pixart;
                ModelShape {
                    name,
                    family,
                    depth,
                    hidden: heads * head_dim * 2,
                    heads,
                    patch,
                    input_size: patch * side,
                    in_channels: channels,
                    out_channels: 2 * channels,
                    mlp_ratio,
                    num_classes: if pixart { 0 } else { classes },
                    caption_tokens: if pixart { caption_tokens } else { 0 },
                    caption_dim: if pixart { caption_dim } else { 0 },
                }
            },
        )
}

fn arb_sampler() -> impl Strategy<Value = SamplerSpec> {
    (
        prop_oneof![
            Just(SamplerKind::Ddpm),
            Just(SamplerKind::Ddim),
            Just(SamplerKind::DpmSolverPp)
        ],
        1usize..9,
        prop_oneof![Just(1.0), finite()],
        finite(),
        prop_oneof![Just(CfgOrder::CondFirst), Just(CfgOrder::UncondFirst)],
        prop::option::of(1usize..8),
        (10usize..2000, finite(), finite()),
    )
        .prop_map(
            |(kind, steps, guidance_scale, eta, cfg_order, guided_channels, schedule)| {
                let (train_timesteps, beta_start, beta_end) = schedule;
                SamplerSpec {
                    kind,
                    steps,
                    guidance_scale,
                    eta,
                    cfg_order,
                    guided_channels,
                    train_timesteps,
                    beta_start,
                    beta_end,
                }
            },
        )
}

/// A random plan in which every reuse refers to the latest earlier step
/// that computed the same (block, branch), and every reuse-delta to the
/// latest earlier step that computed its whole block range.
fn arb_plan() -> impl Strategy<Value = Plan> {
    (arb_model(), arb_sampler()).prop_flat_map(|(model, sampler)| {
        let cells = sampler.steps * model.depth * model.branches().len();
        let steps = sampler.steps;
        (
            Just(model),
            Just(sampler),
            prop::collection::vec(0u8..4, cells),
            prop::collection::vec((0usize..8, 1usize..8), steps),
            (
                any::<bool>(),
                any::<bool>(),
                finite(),
                0usize..6,
                any::<bool>(),
                any::<bool>(),
                0..i64::MAX as u64,
                0..i64::MAX as usize,
            ),
            "[a-z/._-]{1,20}",
            prop::option::of("[a-z/._-]{1,20}"),
        )
            .prop_map(
                |(model, sampler, choices, deltas, calib, source, weights)| {
                    build_plan(model, sampler, &choices, &deltas, calib, source, weights)
                },
            )
    })
}

type CalibChoice = (bool, bool, f64, usize, bool, bool, u64, usize);

fn build_plan(
    model: ModelShape,
    sampler: SamplerSpec,
    choices: &[u8],
    deltas: &[(usize, usize)],
    calib: CalibChoice,
    source: String,
    weights: Option<String>,
) -> Plan {
    let nb = model.branches().len();
    let depth = model.depth;
    let mut last_compute = vec![vec![None::<usize>; nb]; depth];
    let mut choice = choices.iter().copied();
    let mut steps = Vec::new();
    for (step, timestep) in sampler.timesteps().into_iter().enumerate() {
        let mut actions = vec![vec![Action::Compute; nb]; depth];
        // One optional reuse-delta range per step.
        let (start, len) = deltas[step];
        let end = (start + len).min(depth);
        let delta_from = (start < end)
            .then(|| {
                (0..step).rev().find(|&s: &usize| {
                    let row: &StepPlan = &steps[s];
                    (start..end).all(|b| row.actions[b].iter().all(|a| a.is_compute()))
                })
            })
            .flatten();
        for (block, row) in actions.iter_mut().enumerate() {
            for (i, action) in row.iter_mut().enumerate() {
                let pick = choice.next().unwrap_or(0);
                if let Some(from) = delta_from.filter(|_| (start..end).contains(&block)) {
                    *action = Action::ReuseDelta { start, end, from };
                    continue;
                }
                *action = match (pick, last_compute[block][i]) {
                    (1 | 2, Some(from)) => Action::Reuse {
                        from,
                        prior: pick == 2,
                    },
                    _ => Action::Compute,
                };
                if action.is_compute() {
                    last_compute[block][i] = Some(step);
                }
            }
        }
        steps.push(StepPlan {
            step,
            timestep,
            actions,
        });
    }
    let (tcc, one_shot, alpha, prior, conditions, uncond, seed, samples) = calib;
    let calibrated: Vec<usize> = steps
        .iter()
        .filter(|s| s.is_calibrated())
        .map(|s| s.step)
        .collect();
    let calibration = CalibrationSpec {
        method: if tcc {
            CalibMethod::Tcc
        } else {
            CalibMethod::None
        },
        mode: if one_shot {
            CalibMode::OneShot
        } else {
            CalibMode::Consistent
        },
        steps: calibrated,
        alpha,
        prior: PriorKind::ALL[prior].1,
        pooling: if conditions {
            Pooling::Conditions
        } else {
            Pooling::ALL[(seed % 4) as usize].1
        },
        pooled_half: if uncond {
            CfgHalf::Uncond
        } else {
            CfgHalf::ALL[(seed % 3) as usize].1
        },
        samples,
        seed,
        // The settings added with validated selection, from the seed's bits
        // (absent in half the plans, as in plans written before them).
        select: if seed % 2 == 1 {
            tcc_core::Selection::Validated
        } else {
            tcc_core::Selection::Fixed
        },
        candidates: if seed % 4 == 3 {
            vec![PriorKind::Affine, PriorKind::Shift]
        } else {
            Vec::new()
        },
        alphas: if seed % 8 >= 4 {
            vec![alpha.abs(), 0.5]
        } else {
            Vec::new()
        },
        ridge: if seed % 16 >= 8 {
            vec![0.0, 0.01]
        } else {
            Vec::new()
        },
        rank: (seed % 32 >= 16).then_some(8),
        validation_samples: (seed % 64 >= 32).then_some(samples % 1000),
        validation_seed: (seed % 128 >= 64).then_some(seed / 2),
    };
    Plan {
        source,
        weights,
        model,
        sampler,
        calibration,
        toca: None,
        steps,
        dynamic: (seed % 256 >= 128).then(|| tcc_core::DynamicSpec {
            policy: if seed % 13 >= 6 {
                tcc_core::DynamicPolicy::TeaCache
            } else {
                tcc_core::DynamicPolicy::FirstBlock
            },
            threshold: if seed % 3 == 0 {
                f64::INFINITY
            } else {
                (seed % 100) as f64 / 64.0
            },
            warmup: (seed % 5) as usize,
            cutoff: (seed % 7) as usize,
            max_reuse: (seed % 11 >= 5).then_some((seed % 4) as usize),
            rescale: (seed % 13 >= 9).then(|| {
                let c: Vec<f64> = (0..1 + seed % 8)
                    .map(|i| (seed as f64).sin() * 1e3 / (i + 1) as f64)
                    .collect();
                tcc_core::Polynomial::new(&c).unwrap()
            }),
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Property (3).
    #[test]
    fn toml_and_json_round_trips_are_identities(plan in arb_plan()) {
        let hash = plan.hash();
        let toml = plan.to_toml().unwrap();
        let back = Plan::from_toml(&toml).unwrap();
        prop_assert_eq!(&back, &plan);
        prop_assert_eq!(back.hash(), hash);
        // Bitwise: PartialEq calls -0.0 and 0.0 equal, the hash does not.
        prop_assert_eq!(back.canonical_bytes(), plan.canonical_bytes());

        let json = plan.to_json().unwrap();
        let back = Plan::from_json(&json).unwrap();
        prop_assert_eq!(&back, &plan);
        prop_assert_eq!(back.canonical_bytes(), plan.canonical_bytes());

        for format in [Format::Toml, Format::Json] {
            let doc = PlanDocument::new(plan.clone());
            let back = PlanDocument::parse(&doc.render(format).unwrap(), format).unwrap();
            prop_assert_eq!(back.hash, hash);
            prop_assert_eq!(&back.plan, &plan);
            prop_assert_eq!(&back.cost, &doc.cost);
        }
    }

    /// Property (5), against a second count: the number of computed
    /// branches of each kind, priors and live blocks times the unit costs.
    #[test]
    fn cost_total_is_the_sum_of_per_action_costs(plan in arb_plan()) {
        let cost = PlanCost::of(&plan);
        let u = &cost.units;
        let mut expected = 0u64;
        for (step, sc) in plan.steps.iter().zip(&cost.steps) {
            let mut step_total = u.embed + u.final_layer;
            for (row, costs) in step.actions.iter().zip(&sc.actions) {
                if !row.iter().all(|a| matches!(a, Action::ReuseDelta { .. })) {
                    step_total += u.adaln;
                }
                for ((&action, &branch), &c) in row.iter().zip(plan.branches()).zip(costs) {
                    let own = match action {
                        Action::Compute => u.branch(branch),
                        Action::Reuse { prior: true, .. } => u.prior,
                        _ => 0,
                    };
                    prop_assert_eq!(c, own);
                    step_total += own;
                }
            }
            prop_assert_eq!(sc.total, step_total);
            prop_assert_eq!(sc.total, sc.fixed + sc.adaln + sc.actions.iter().flatten().sum::<u64>());
            expected += step_total;
        }
        prop_assert_eq!(cost.total, expected);
        prop_assert_eq!(cost.total, cost.steps.iter().map(|s| s.total).sum::<u64>());
        let mut full = plan.clone();
        full.steps.iter_mut().flat_map(|s| &mut s.actions).flatten().for_each(|a| *a = Action::Compute);
        prop_assert_eq!(cost.full_total, PlanCost::of(&full).total);
        // Nothing costs more than computing it, except a prior on a branch
        // cheaper than one T x D^2 GEMM (cross-attention of tiny shapes).
        if plan.steps.iter().flat_map(|s| &s.actions).flatten().all(|a| !matches!(a, Action::Reuse { prior: true, .. })) {
            prop_assert!(cost.speedup() >= 1.0);
        }
    }

    /// Show and diff never panic and are deterministic on valid plans.
    #[test]
    fn show_and_diff_are_total(a in arb_plan(), b in arb_plan()) {
        let text = a.show();
        prop_assert!(text.lines().all(|l| l == l.trim_end()));
        prop_assert_eq!(&text, &a.show());
        let d = PlanDiff::new(&a, &b);
        prop_assert_eq!(d.render(), PlanDiff::new(&a, &b).render());
        prop_assert!(PlanDiff::new(&a, &a).cells.is_empty());
    }
}
