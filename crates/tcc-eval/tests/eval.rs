//! `evaluate` on a small random-weight DiT (the workspace's
//! tests/fixtures/micro-dit: 2 blocks, 4x4 tokens): exactness where the
//! variant is full computation, measured deviation where it caches, and
//! hooks that really reach the variant's run.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tcc_calib::{Prior, PriorHooks};
use tcc_core::{Branch, PriorKind};
use tcc_eval::{
    accumulate, evaluate, held_out, plot_deviation, Report, Scorer, SeedSet, Series, Variant,
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
