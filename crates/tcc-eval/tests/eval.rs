//! `evaluate` on a small random-weight DiT (the workspace's
//! tests/fixtures/micro-dit: 2 blocks, 4x4 tokens): exactness where the
//! variant is full computation, measured deviation where it caches, and
//! hooks that really reach the variant's run; the decisions of a dynamic
//! plan and their sums across shards; sweeps of a threshold and a fresh
//! ratio between their ends (full computation, FORA, the bounds' most
//! reuses).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tcc_calib::{Prior, PriorHooks};
use tcc_core::{Branch, PriorKind};
use tcc_eval::{
    accumulate, evaluate, held_out, plot_deviation, sweep, Point, Report, Scorer, SeedSet, Series,
    SweepParam, Variant,
};
use tcc_exec::{NoHooks, SampleBatch};
use tcc_metrics::FeatureStats;
use tcc_model::{Dit, DitConfig};
use tcc_plan::Plan;
use tcc_sampler::NoiseRng;

const FORA: &str = r#"
[model]
path = "tests/fixtures/micro-dit"

[sampler]
kind = "ddim"
steps = 6
guidance = 1.5

[[cache]]
refresh = "every 3"

[calibration]
method = "tcc"
steps = "1, 2"
alpha = 0.5
samples = 4
seed = 0
"#;

/// The workspace root, against which the schedule's model path resolves.
fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plan(text: &str) -> Plan {
    let s = tcc_schedule::parse("test.sched", text).expect("parses");
    tcc_plan::compile(&s, &workspace()).expect("compiles")
}

fn model(plan: &Plan) -> Dit {
    let cfg = DitConfig::from_shape(&plan.model).unwrap();
    Dit::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap()
}

fn seed_set(plan: &Plan, seed: u64, n: usize, batch: usize) -> SeedSet {
    let m = &plan.model;
    let dev = Device::Cpu;
    let noise = NoiseRng::new(seed)
        .randn((n, m.in_channels, m.input_size, m.input_size), &dev)
        .unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % m.num_classes as u32).collect();
    let mut batches = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        batches.push(SampleBatch {
            noise: noise.narrow(0, start, len).unwrap(),
            cond: Tensor::new(&labels[start..start + len], &dev).unwrap(),
            uncond: Some(Tensor::full(m.num_classes as u32, len, &dev).unwrap()),
            cond_mask: None,
            uncond_mask: None,
            seed,
        });
        start += len;
    }
    SeedSet {
        seed,
        batches,
        conditions: labels.iter().map(|&c| c as u64).collect(),
        labels,
    }
}

fn run(plan: &Plan, variants: &mut [Variant<'_>], scorer: Option<&dyn Scorer>) -> Report {
    let model = model(plan);
    let full = plan.all_compute();
    let sets = vec![seed_set(plan, 11, 5, 3), seed_set(plan, 12, 5, 5)];
    evaluate(&model, &full, variants, &sets, scorer, &[], &mut |_| {}).unwrap()
}

#[test]
fn full_computation_as_a_variant_is_exactly_full_and_the_cache_is_not() {
    let p = plan(FORA);
    let full = p.all_compute();
    let mut variants = vec![
        Variant {
            name: "same".into(),
            plan: &full,
            hooks: Box::new(NoHooks),
            oracle: false,
        },
        Variant {
            name: "cache".into(),
            plan: &p,
            hooks: Box::new(NoHooks),
            oracle: false,
        },
    ];
    let r = run(&p, &mut variants, None);
    assert_eq!(r.variants.len(), 3);
    let same = &r.variants[1];
    assert!(same.sets.iter().all(|s| s.rel_l2 == Some(0.0)));
    assert!(same.steps.iter().all(|s| s.latent_rel_l2 == 0.0));
    assert!(same.steps.iter().all(|s| s.branch_rel_l2.is_none()));
    let cache = &r.variants[2];
    assert_eq!(
        cache.steps[0].latent_rel_l2, 0.0,
        "step 0 computes everything"
    );
    assert!(cache.steps[5].latent_rel_l2 > 0.0);
    assert!(cache.sets.iter().all(|s| s.rel_l2.unwrap() > 0.0));
    // Branch distances exist exactly at the reuse steps (1, 2, 4, 5).
    let reuse: Vec<usize> = cache
        .steps
        .iter()
        .filter(|s| s.branch_rel_l2.is_some())
        .map(|s| s.step)
        .collect();
    assert_eq!(reuse, vec![1, 2, 4, 5]);
    assert!(cache.steps[1].branch_rel_l2.unwrap() > 0.0);
    assert!(cache.steps[1].pooled_rel.unwrap() > 0.0);
    assert_eq!(cache.sample_rel_l2.len(), 10);
    assert!(cache
        .sets
        .iter()
        .all(|s| s.fd.is_none() && s.accuracy.is_none()));
}

/// Hooks with one prior per calibrated site: `R = I`, `mu = 0`, scale `s`.
fn scaling_hooks(plan: &Plan, s: f64) -> PriorHooks {
    let d = plan.model.hidden;
    let mut r = vec![0.0; d * d];
    for i in 0..d {
        r[i * d + i] = 1.0;
    }
    let prior = Prior {
        kind: PriorKind::ScaleShift,
        dim: d,
        r,
        s,
        mu_a: vec![0.0; d],
        mu_b: vec![0.0; d],
    };
    let mut hooks = PriorHooks::lenient();
    for step in [1, 2] {
        for block in 0..plan.model.depth {
            for branch in [Branch::Attn, Branch::Mlp] {
                hooks
                    .insert(
                        tcc_calib::Site::new(step, branch, block),
                        &prior,
                        1.0,
                        DType::F32,
                        &Device::Cpu,
                    )
                    .unwrap();
            }
        }
    }
    hooks
}

#[test]
fn variant_hooks_reach_the_run_and_an_identity_prior_changes_nothing() {
    let p = plan(FORA);
    let mut variants = vec![
        Variant {
            name: "cache".into(),
            plan: &p,
            hooks: Box::new(NoHooks),
            oracle: false,
        },
        Variant {
            name: "identity".into(),
            plan: &p,
            hooks: Box::new(scaling_hooks(&p, 1.0)),
            oracle: false,
        },
        Variant {
            name: "halved".into(),
            plan: &p,
            hooks: Box::new(scaling_hooks(&p, 0.5)),
            oracle: false,
        },
    ];
    let r = run(&p, &mut variants, None);
    let (cache, identity, halved) = (&r.variants[1], &r.variants[2], &r.variants[3]);
    assert_eq!(cache.sample_rel_l2, identity.sample_rel_l2);
    assert_ne!(cache.sample_rel_l2, halved.sample_rel_l2);
    // Step 1's reused outputs are halved before use: the distance measured
    // at step 1 is that of the used (corrected) output, not the cached one.
    let (c1, h1) = (
        cache.steps[1].branch_rel_l2.unwrap(),
        halved.steps[1].branch_rel_l2.unwrap(),
    );
    assert!((h1 - c1).abs() > 1e-3, "halved {h1} vs cache {c1}");
    assert_eq!(cache.steps[0].latent_rel_l2, halved.steps[0].latent_rel_l2);
}

/// Predicts class 0 for everything; features are (mean, mean square) of
/// each sample.
struct Constant {
    reference: FeatureStats,
}

impl Scorer for Constant {
    fn score(&self, x: &Tensor) -> Result<(Vec<f64>, Vec<usize>), String> {
        let v: Vec<Vec<f32>> = x.flatten_from(1).unwrap().to_vec2().unwrap();
        let mut f = Vec::new();
        for row in &v {
            let n = row.len() as f64;
            f.push(row.iter().map(|&a| a as f64).sum::<f64>() / n);
            f.push(row.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / n);
        }
        Ok((f, vec![0; v.len()]))
    }
    fn reference(&self) -> &FeatureStats {
        &self.reference
    }
}

#[test]
fn the_scorer_gives_accuracy_and_fd_per_seed_set() {
    let p = plan(FORA);
    let mut reference = FeatureStats::new(2);
    reference
        .add_batch(&[0.0, 1.0, 0.1, 0.9, -0.1, 1.2, 0.05, 1.1])
        .unwrap();
    let scorer = Constant { reference };
    let mut variants = vec![Variant {
        name: "cache".into(),
        plan: &p,
        hooks: Box::new(NoHooks),
        oracle: false,
    }];
    let r = run(&p, &mut variants, Some(&scorer));
    for v in &r.variants {
        for s in &v.sets {
            // Five samples with classes 0..5: one is class 0.
            assert_eq!(s.accuracy, Some(0.2));
            let fd = s.fd.unwrap();
            assert!(fd.is_finite() && fd > 0.0, "{fd}");
        }
    }
}

/// The samples of `set` from batch `from` on (`..to`): a shard's share.
fn share(set: &SeedSet, batches: std::ops::Range<usize>) -> SeedSet {
    let sizes: Vec<usize> = set
        .batches
        .iter()
        .map(|b| b.noise.dim(0).unwrap())
        .collect();
    let start: usize = sizes[..batches.start].iter().sum();
    let end: usize = sizes[..batches.end].iter().sum();
    SeedSet {
        seed: set.seed,
        batches: set.batches[batches].to_vec(),
        labels: set.labels[start..end].to_vec(),
        conditions: set.conditions[start..end].to_vec(),
    }
}

#[test]
fn shards_of_the_seed_sets_merge_into_the_whole_runs_sums() {
    let p = plan(FORA);
    let model = model(&p);
    let full = p.all_compute();
    let mut reference = FeatureStats::new(2);
    reference
        .add_batch(&[0.0, 1.0, 0.1, 0.9, -0.1, 1.2, 0.05, 1.1])
        .unwrap();
    let scorer = Constant { reference };
    let variants = || {
        vec![
            Variant {
                name: "cache".into(),
                plan: &p,
                hooks: Box::new(NoHooks),
                oracle: false,
            },
            Variant {
                name: "scaled".into(),
                plan: &p,
                hooks: Box::new(scaling_hooks(&p, 0.9)),
                oracle: true,
            },
        ]
    };
    let sets = vec![seed_set(&p, 11, 4, 2), seed_set(&p, 12, 4, 2)];
    let run = |sets: &[SeedSet]| {
        accumulate(
            &model,
            &full,
            &mut variants(),
            sets,
            Some(&scorer),
            &mut |_| {},
        )
        .unwrap()
    };
    let whole = run(&sets);
    // Shard 0 of 2 takes batch 0 of each set, shard 1 batch 1; added up
    // in shard order.
    let mut merged = run(&sets.iter().map(|s| share(s, 0..1)).collect::<Vec<_>>());
    merged
        .merge(&run(&sets
            .iter()
            .map(|s| share(s, 1..2))
            .collect::<Vec<_>>()))
        .unwrap();
    // The cache's PSNRs are not all +inf (identical after clamping), so
    // comparing them below can catch a wrong merge.
    assert!(whole
        .sets
        .iter()
        .any(|s| s.variants[1].psnr.iter().any(|p| p.is_finite())));
    // Per sample: bit for bit, in sample order.
    for (a, b) in whole.sets.iter().zip(&merged.sets) {
        assert_eq!(a.samples, b.samples);
        for (x, y) in a.variants.iter().zip(&b.variants) {
            assert_eq!(x.rel_l2, y.rel_l2);
            assert_eq!(x.psnr, y.psnr);
            assert_eq!(x.correct, y.correct);
        }
        assert_eq!(a.variants[1].rel_l2.len(), 4);
    }
    assert_eq!(whole.moments[1].len(), merged.moments[1].len());
    assert!(!whole.moments[1].is_empty(), "the oracle kept moments");
    let tests = [("scaled", "cache")];
    let (a, b) = (
        whole.report(Some(&scorer.reference), &tests).unwrap(),
        merged.report(Some(&scorer.reference), &tests).unwrap(),
    );
    // The rest from f64 sums added in another order: 1e-6 relative.
    let close = |x: f64, y: f64, what: &str| {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1e-12),
            "{what}: {x} vs {y}"
        );
    };
    for (va, vb) in a.variants.iter().zip(&b.variants) {
        for (sa, sb) in va.sets.iter().zip(&vb.sets) {
            close(sa.fd.unwrap(), sb.fd.unwrap(), "FD");
            assert_eq!(sa.accuracy, sb.accuracy);
            assert_eq!(sa.rel_l2, sb.rel_l2);
            assert_eq!(sa.psnr, sb.psnr);
        }
        for (ka, kb) in va.steps.iter().zip(&vb.steps) {
            close(ka.latent_rel_l2, kb.latent_rel_l2, "latent");
            let opt = |x: Option<f64>, y: Option<f64>, what: &str| match (x, y) {
                (Some(x), Some(y)) => close(x, y, what),
                (x, y) => assert_eq!(x, y, "{what}"),
            };
            opt(ka.branch_rel_l2, kb.branch_rel_l2, "branch");
            opt(ka.pooled_rel, kb.pooled_rel, "pooled");
        }
        for ((s, ma), mb) in va.moments.iter().zip(vb.moments.values()) {
            close(ma.error_identity(), mb.error_identity(), &s.to_string());
        }
    }
    let (ta, tb) = (&a.tests[0], &b.tests[0]);
    assert_eq!(ta.median_difference, tb.median_difference);
    assert_eq!(
        ta.test.as_ref().map(|w| w.p_value),
        tb.test.as_ref().map(|w| w.p_value)
    );
    // Shards of other seed sets do not merge.
    let mut other = run(&[share(&sets[0], 0..1)]);
    assert!(other.merge(&merged).is_err());
}

#[test]
fn evaluation_seeds_must_be_held_out_and_distinct() {
    let cal = vec![("the tcc priors".to_string(), 7)];
    assert!(held_out(&[1, 2, 3], &cal).is_ok());
    let e = held_out(&[1, 7], &cal).unwrap_err().to_string();
    assert!(e.contains("seed 7") && e.contains("tcc priors"), "{e}");
    let e = held_out(&[1, 1], &[]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn plans_of_different_lengths_are_refused() {
    let p = plan(FORA);
    let longer = plan(&FORA.replace("steps = 6", "steps = 9"));
    let mut variants = vec![Variant {
        name: "nine".into(),
        plan: &longer,
        hooks: Box::new(NoHooks),
        oracle: false,
    }];
    let model = model(&p);
    let sets = vec![seed_set(&p, 1, 2, 2)];
    let e = evaluate(
        &model,
        &p.all_compute(),
        &mut variants,
        &sets,
        None,
        &[],
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("9 steps") && e.contains("full computation 6"),
        "{e}"
    );
}

#[test]
fn the_plot_is_a_png_of_the_stated_size_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.png");
    let series = vec![
        Series {
            name: "cache".into(),
            color: [200, 0, 0],
            values: vec![Some(0.0), Some(0.1), Some(0.2), None, Some(0.15)],
        },
        Series {
            name: "tcc".into(),
            color: [0, 150, 0],
            values: vec![Some(0.0), Some(0.05), Some(0.1), Some(0.1), Some(0.08)],
        },
    ];
    plot_deviation(&path, "title", "y", &series).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (820, 500));
    // Both series' colours are drawn.
    for c in [[200u8, 0, 0], [0, 150, 0]] {
        assert!(img.pixels().any(|p| p.0 == c), "{c:?} missing");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "only the PNG is left behind");
}

/// First-block cache on the micro DiT: block 0 runs at every step, block 1
/// adds its cached residual delta when block 0's residual changed little.
const FBCACHE: &str = r#"
[model]
path = "tests/fixtures/micro-dit"

[sampler]
kind = "ddim"
steps = 8
guidance = 1.5

[dynamic]
policy = "first-block"
threshold = 0.35
warmup = 1
cutoff = 1
max-reuse = 3
"#;

/// Per batch of `set`, the steps at which `plan` reused, run on its own.
fn reuse_steps_alone(model: &Dit, plan: &Plan, set: &SeedSet) -> Vec<(usize, Vec<usize>)> {
    set.batches
        .iter()
        .map(|b| {
            let mut t = tcc_exec::Trajectory::new(model, plan, b).unwrap();
            while !t.is_done() {
                t.step(&mut NoHooks).unwrap();
            }
            (b.noise.dim(0).unwrap(), t.reuse_steps())
        })
        .collect()
}

#[test]
fn dynamic_variants_count_their_decisions_and_shards_add_them_up_exactly() {
    let dynamic = plan(FBCACHE);
    let fora = plan(&FBCACHE.replace(
        "[dynamic]\npolicy = \"first-block\"\nthreshold = 0.35\nwarmup = 1\ncutoff = 1\nmax-reuse = 3\n",
        "[[cache]]\nrefresh = \"every 2\"\n",
    ));
    assert!(dynamic.dynamic.is_some() && fora.dynamic.is_none());
    let model = model(&dynamic);
    let full = dynamic.all_compute();
    let variants = || {
        vec![
            Variant {
                name: "fora".into(),
                plan: &fora,
                hooks: Box::new(NoHooks),
                oracle: false,
            },
            Variant {
                name: "fbcache".into(),
                plan: &dynamic,
                hooks: Box::new(NoHooks),
                oracle: false,
            },
        ]
    };
    let sets = vec![seed_set(&dynamic, 11, 6, 2), seed_set(&dynamic, 12, 6, 2)];
    let run = |sets: &[SeedSet]| {
        accumulate(&model, &full, &mut variants(), sets, None, &mut |_| {}).unwrap()
    };
    let whole = run(&sets);

    // What each batch decided, run on its own, priced by the cost model.
    let steps = dynamic.steps.len();
    let mut all_reuse = Vec::new();
    for (set, sums) in sets.iter().zip(&whole.sets) {
        assert_eq!(sums.variants[0].decisions, None, "full computation");
        assert_eq!(sums.variants[1].decisions, None, "a static plan");
        let d = sums.variants[2].decisions.as_ref().expect("dynamic");
        let mut computed = vec![0u64; steps];
        let (mut ran, mut all) = (0u128, 0u128);
        for (len, reuse) in reuse_steps_alone(&model, &dynamic, set) {
            for (k, c) in computed.iter_mut().enumerate() {
                if !reuse.contains(&k) {
                    *c += len as u64;
                }
            }
            let cost = tcc_plan::PlanCost::of(&dynamic.realised(&reuse));
            ran += cost.total as u128 * len as u128;
            all += cost.full_total as u128 * len as u128;
            all_reuse.extend(reuse);
        }
        assert_eq!(d.computed, computed);
        assert_eq!((d.macs, d.full_macs), (ran, all));
        assert_eq!(d.samples, 6);
        // Step 0 and the cut-off step always compute.
        assert_eq!((d.computed[0], d.computed[steps - 1]), (6, 6));
    }
    assert!(
        !all_reuse.is_empty(),
        "the policy reused somewhere, so the counts can tell"
    );

    // Shard 0 of 2 takes batch 0 of each set, shard 1 batches 1..3.
    let mut merged = run(&sets.iter().map(|s| share(s, 0..1)).collect::<Vec<_>>());
    merged
        .merge(&run(&sets
            .iter()
            .map(|s| share(s, 1..3))
            .collect::<Vec<_>>()))
        .unwrap();
    for (a, b) in whole.sets.iter().zip(&merged.sets) {
        for (x, y) in a.variants.iter().zip(&b.variants) {
            assert_eq!(x.decisions, y.decisions);
        }
    }
    let (a, b) = (
        whole.report(None, &[]).unwrap(),
        merged.report(None, &[]).unwrap(),
    );
    let (da, db) = (&a.variants[2], &b.variants[2]);
    assert_eq!(da.decisions, db.decisions);
    let d = da.decisions.as_ref().unwrap();
    assert_eq!(d.samples, 12);
    let mean = d.computed.iter().sum::<u64>() as f64 / 12.0;
    assert_eq!(d.computed_steps, mean);
    assert!(mean < steps as f64 && d.realised_speedup > 1.0, "{d:?}");
    for (sa, sb) in da.sets.iter().zip(&db.sets) {
        assert_eq!(sa.computed_steps, sb.computed_steps);
        assert_eq!(sa.realised_speedup, sb.realised_speedup);
        assert!(sa.computed_steps.is_some() && sa.realised_speedup.is_some());
    }
    // Static plans and full computation: no new fields, in JSON either.
    for v in &a.variants[..2] {
        assert!(v.decisions.is_none());
        let json = serde_json::to_string(v).unwrap();
        assert!(
            !json.contains("computed_steps") && !json.contains("decisions"),
            "{json}"
        );
    }
    let json = serde_json::to_string(da).unwrap();
    assert!(json.contains("\"realised_speedup\""), "{json}");
    // A dynamic variant's sums do not merge into a static one's.
    let mut swapped = run(&sets.iter().map(|s| share(s, 0..1)).collect::<Vec<_>>());
    for s in &mut swapped.sets {
        s.variants.swap(1, 2);
    }
    assert!(swapped.merge(&merged).is_err());
}

fn sweep_points(text: &str, param: SweepParam, values: &[f64]) -> Vec<Point> {
    values
        .iter()
        .map(|&v| {
            let mut s = tcc_schedule::parse("test.sched", text).unwrap();
            param.apply(&mut s, v).unwrap();
            Point {
                value: v,
                plan: tcc_plan::compile(&s, &workspace()).unwrap(),
            }
        })
        .collect()
}

#[test]
fn a_threshold_sweep_goes_from_full_computation_to_the_bounds_most_reuses() {
    let values = [0.0, 0.3, 0.36, 0.4, f64::INFINITY];
    let points = sweep_points(FBCACHE, SweepParam::Threshold, &values);
    let p = &points[0].plan;
    let model = model(p);
    let mut reference = FeatureStats::new(2);
    reference
        .add_batch(&[0.0, 1.0, 0.1, 0.9, -0.1, 1.2, 0.05, 1.1])
        .unwrap();
    let scorer = Constant { reference };
    let sets = vec![seed_set(p, 11, 4, 2), seed_set(p, 12, 4, 4)];
    let s = sweep(
        &model,
        SweepParam::Threshold,
        &points,
        &sets,
        Some(&scorer),
        &mut |_| {},
    )
    .unwrap();
    let steps = p.steps.len();
    assert_eq!(
        (s.steps, s.samples_per_set, s.seeds.clone()),
        (steps, 4, vec![11, 12])
    );
    assert_eq!(s.rows.len(), values.len());

    // Threshold 0 computes every step: exactly full computation.
    let zero = &s.rows[0];
    assert_eq!(zero.rel_l2.mean, 0.0);
    assert_eq!(zero.psnr.mean, f64::INFINITY);
    assert_eq!(zero.realised_speedup.unwrap().mean, 1.0);
    assert_eq!(zero.computed_steps.unwrap().mean, steps as f64);
    // FD of identical samples: 0 up to the matrix square root's rounding.
    assert!(zero.fd_to_full.unwrap().mean.abs() < 1e-3);
    assert_eq!(zero.predicted_speedup, None, "a run-time policy");

    // Threshold inf reuses at every step the bounds allow.
    let most = p.dynamic.unwrap().most_reuses(steps);
    let inf = s.rows.last().unwrap();
    assert_eq!(
        inf.computed_steps.unwrap().mean,
        (steps - most.len()) as f64
    );
    assert_eq!(inf.computed_steps.unwrap().std, 0.0);
    let best = tcc_plan::PlanCost::of(&p.realised(&most)).speedup();
    assert!((inf.realised_speedup.unwrap().mean - best).abs() < 1e-12);
    assert!(inf.rel_l2.mean > 0.0 && inf.fd.is_some());
    assert!(inf.fd_to_full.unwrap().mean > 1e-3);

    // On these seeds, a higher threshold never computes more steps.
    let computed: Vec<f64> = s
        .rows
        .iter()
        .map(|r| r.computed_steps.unwrap().mean)
        .collect();
    assert!(computed.windows(2).all(|w| w[1] <= w[0]), "{computed:?}");
    assert!(computed[0] > computed[4], "{computed:?}");

    // The JSON reads back into the same document (inf and NaN as text).
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains(r#""value":"inf""#), "{text}");
    let back: tcc_eval::Sweep = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
    assert_eq!(back.rows[2].decisions, s.rows[2].decisions);

    let table = s.table();
    assert!(
        table.contains("threshold") && table.contains("\ninf "),
        "{table}"
    );
    assert!(table.contains("steps computed, % of samples"), "{table}");
}

#[test]
fn a_fresh_ratio_sweep_goes_from_fora_to_full_computation() {
    let fora_text = FORA.split("[calibration]").next().unwrap();
    let toca = format!("{fora_text}[[cache]]\npartial = \"except every 3\"\nfresh-ratio = 0.5\n");
    let points = sweep_points(&toca, SweepParam::FreshRatio, &[0.0, 0.5, 1.0]);
    let p = &points[1].plan;
    assert!(p.has_partial());
    let model = model(p);
    let sets = vec![seed_set(p, 11, 4, 2)];
    let s = sweep(
        &model,
        SweepParam::FreshRatio,
        &points,
        &sets,
        None,
        &mut |_| {},
    )
    .unwrap();
    let predicted: Vec<f64> = s
        .rows
        .iter()
        .map(|r| r.predicted_speedup.unwrap())
        .collect();
    assert!(
        predicted[0] > predicted[1] && predicted[1] > predicted[2],
        "{predicted:?}"
    );
    assert_eq!(predicted[2], 1.0);
    assert_eq!(s.rows[2].rel_l2.mean, 0.0, "ratio 1 is full computation");
    assert!(s
        .rows
        .iter()
        .all(|r| r.decisions.is_none() && r.fd.is_none()));

    // Ratio 0 is FORA, sample for sample.
    let fora = plan(fora_text);
    let mut variants = vec![Variant {
        name: "fora".into(),
        plan: &fora,
        hooks: Box::new(NoHooks),
        oracle: false,
    }];
    let r = evaluate(
        &model,
        &fora.all_compute(),
        &mut variants,
        &sets,
        None,
        &[],
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(Some(s.rows[0].rel_l2.mean), r.variants[1].sets[0].rel_l2);
    assert!(s.rows[1].rel_l2.mean > 0.0);
    assert!(s.rows[1].rel_l2.mean < s.rows[0].rel_l2.mean);
}

/// Two dynamic plans have the same static table (every step computes) and
/// differ only in their run-time policy: each keeps its own plain-cache
/// variant, where sharing one would drop the second schedule from the report.
#[test]
fn dynamic_plans_with_other_policies_do_not_share_a_cache_variant() {
    let root = workspace();
    let files = [
        root.join("schedules/fbcache.sched"),
        root.join("schedules/teacache.sched"),
        root.join("schedules/fora3.sched"),
        root.join("schedules/fora3-validated.sched"),
    ];
    let plans: Vec<Plan> = files
        .iter()
        .map(|f| tcc_plan::compile_file(f).expect("compiles"))
        .collect();
    assert_eq!(plans[0].steps, plans[1].steps);
    let entries = tcc_eval::Entry::label(plans, &files);
    let caches: Vec<&str> = entries.iter().map(|e| e.cache.as_str()).collect();
    assert_eq!(
        caches,
        [
            "fbcache:cache",
            "teacache:cache",
            "fora3:cache",
            "fora3:cache"
        ]
    );
}
