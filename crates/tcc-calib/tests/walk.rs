//! The calibration walk on a small random-weight DiT: the invariants SPEC
//! states for TCC, checked end to end through the executor.

mod common;
use common::{batch, batches, model};

use candle_core::{DType, Device};
use tcc_calib::{
    calibrate, calibrate_across, fit_merged, gather_one_shot, AllGather, CalibBatch, Calibration,
    Gathered, Prior, PriorHooks, PriorMeta, PriorSet, StatsFile, StatsMeta,
};
use tcc_core::{CalibMode, Shard};
use tcc_exec::{Hooks, NoHooks, Trajectory};
use tcc_model::Dit;
use tcc_plan::Plan;

/// FORA N=3 over 6 DDIM steps; priors at the two reuses of the first
/// segment (step 2 chains on step 1's corrected cache entry). The model is
/// a random 2-block DiT on 4x4 tokens (the workspace's
/// tests/fixtures/micro-dit): the invariants hold for any weights, and the
/// tiny testbed's shape costs about 100 times the compute for the same
/// assertions.
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
samples = 6
seed = 0
"#;

/// The workspace root, against which the schedule's model path resolves.
fn plan(text: &str) -> Plan {
    common::plan_of("walk.sched", text)
}

fn run(model: &Dit, plan: &Plan, mode: CalibMode) -> Calibration {
    calibrate(
        model,
        plan,
        &batches(plan),
        &[],
        mode,
        DType::F32,
        &mut |_| {},
    )
    .unwrap()
}

/// Validation samples of their own seeds (held out from `batches`).
fn validation(plan: &Plan) -> Vec<CalibBatch> {
    [(100u64, [0u32, 1, 2, 1])]
        .into_iter()
        .map(|(seed, classes)| CalibBatch {
            batch: batch(plan, seed, &classes),
            conditions: classes.iter().map(|&c| c as u64).collect(),
        })
        .collect()
}

fn run_validated(model: &Dit, plan: &Plan, mode: CalibMode) -> Calibration {
    calibrate(
        model,
        plan,
        &batches(plan),
        &validation(plan),
        mode,
        DType::F32,
        &mut |_| {},
    )
    .unwrap()
}

fn sample(model: &Dit, plan: &Plan, hooks: &mut dyn Hooks) -> Vec<u32> {
    let b = batch(plan, 42, &[3, 7]);
    let x = Trajectory::new(model, plan, &b)
        .unwrap()
        .run(hooks)
        .unwrap();
    x.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn the_first_prior_is_shared_by_both_modes_and_later_ones_differ() {
    let p = plan(FORA);
    let m = model(&p);
    let consistent = run(&m, &p, CalibMode::Consistent);
    let one_shot = run(&m, &p, CalibMode::OneShot);
    assert_eq!(consistent.priors.len(), 2 * 2 * p.model.depth);
    let (mut same_first, mut differ_later) = (0, 0);
    for (site, prior) in &consistent.priors {
        let other = &one_shot.priors[site];
        match site.step {
            1 => {
                assert_eq!(prior, other, "step 1 prior differs at {site:?}");
                same_first += 1;
            }
            2 => differ_later += usize::from(prior != other),
            s => panic!("unexpected calibrated step {s}"),
        }
    }
    assert_eq!(same_first, 2 * p.model.depth);
    assert!(
        differ_later > 0,
        "step 2's priors must see step 1's correction"
    );
}

#[test]
fn calibration_is_deterministic() {
    let p = plan(FORA);
    let m = model(&p);
    let a = run(&m, &p, CalibMode::Consistent);
    let b = run(&m, &p, CalibMode::Consistent);
    assert_eq!(a.priors, b.priors);
    assert_eq!(
        a.steps.iter().map(|s| s.rel_after).collect::<Vec<_>>(),
        b.steps.iter().map(|s| s.rel_after).collect::<Vec<_>>()
    );
}

#[test]
fn priors_blended_with_alpha_at_most_one_never_increase_the_pooled_distance() {
    let p = plan(FORA);
    let m = model(&p);
    for mode in [CalibMode::Consistent, CalibMode::OneShot] {
        let c = run(&m, &p, mode);
        assert_eq!(c.steps.len(), 2);
        for s in &c.steps {
            assert!(s.rel_before > 0.0, "{s:?}");
            assert!(s.rel_after <= s.rel_before, "{mode:?}: {s:?}");
        }
    }
}

#[test]
fn alpha_zero_and_identity_priors_leave_samples_bit_identical() {
    let p = plan(FORA);
    let m = model(&p);
    let plain = sample(&m, &p, &mut NoHooks);
    let fitted = run(&m, &p, CalibMode::Consistent);
    let set = |alpha: f64, priors| PriorSet {
        meta: PriorMeta {
            plan_hash: p.hash(),
            model: p.model.name.clone(),
            alpha,
            mode: CalibMode::Consistent,
            prior: p.calibration.prior,
            samples: 6,
            seed: 0,
            tool_version: "test".into(),
            select: tcc_core::Selection::Fixed,
            validation: None,
            report: None,
        },
        priors,
        alphas: Default::default(),
    };
    let zero = set(0.0, fitted.priors.clone());
    let mut hooks = PriorHooks::from_set(&zero, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(sample(&m, &p, &mut hooks), plain, "alpha = 0");

    let identity = fitted
        .priors
        .keys()
        .map(|&site| (site, Prior::identity(p.model.hidden)))
        .collect();
    let mut hooks = PriorHooks::from_set(&set(1.0, identity), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(sample(&m, &p, &mut hooks), plain, "identity priors");

    // The fitted priors themselves do change the samples.
    let mut hooks =
        PriorHooks::from_set(&set(0.5, fitted.priors), DType::F32, &Device::Cpu).unwrap();
    assert_ne!(sample(&m, &p, &mut hooks), plain);
}

#[test]
fn a_schedule_without_calibrated_steps_is_an_error() {
    let p = plan(&FORA.replace("method = \"tcc\"", "method = \"none\""));
    let m = model(&p);
    let e = calibrate(
        &m,
        &p,
        &batches(&p),
        &[],
        CalibMode::Consistent,
        DType::F32,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no calibrated steps"), "{e}");
}

/// Mean per-sample relative L2 of `plan` run with `hooks` against full
/// computation, over the validation samples: computed here independently
/// of the walk's own end-to-end check.
fn validation_error(model: &Dit, plan: &Plan, hooks: &mut dyn Hooks) -> f64 {
    let full = plan.all_compute();
    let (mut sum, mut n) = (0.0, 0);
    for b in validation(plan) {
        let x = Trajectory::new(model, plan, &b.batch)
            .unwrap()
            .run(hooks)
            .unwrap();
        let r = Trajectory::new(model, &full, &b.batch)
            .unwrap()
            .run(&mut NoHooks)
            .unwrap();
        let x: Vec<Vec<f32>> = x.flatten_from(1).unwrap().to_vec2().unwrap();
        let r: Vec<Vec<f32>> = r.flatten_from(1).unwrap().to_vec2().unwrap();
        for (x, r) in x.iter().zip(&r) {
            let d: f64 = x.iter().zip(r).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let nr: f64 = r.iter().map(|q| (*q as f64).powi(2)).sum();
            sum += (d / nr).sqrt();
            n += 1;
        }
    }
    sum / n as f64
}

fn set_of(p: &Plan, c: &Calibration) -> PriorSet {
    PriorSet {
        meta: PriorMeta {
            plan_hash: p.hash(),
            model: p.model.name.clone(),
            alpha: p.calibration.alpha,
            mode: CalibMode::Consistent,
            prior: p.calibration.prior,
            samples: 6,
            seed: 0,
            tool_version: "test".into(),
            select: p.calibration.select,
            validation: None,
            report: None,
        },
        priors: c.priors.clone(),
        alphas: c.alphas.clone(),
    }
}

const VALIDATED: &str = "\nselect = \"validated\"\ncandidates = [\"procrustes\", \"shift\", \"affine\", \"diagonal\", \"lowrank\"]\npooling = \"none\"\npooled-half = \"both\"\nridge = [0.01, 1.0]\nrank = 8\n";

#[test]
fn validated_priors_are_never_worse_than_the_cache_on_the_validation_samples() {
    // Across prior settings that help and that hurt (a wild blend), in both
    // modes: the walk's own end-to-end numbers agree with an independent run,
    // and the kept priors are never further from full computation than the
    // plain cache on the validation samples.
    for (extra, mode) in [
        (VALIDATED.to_string(), CalibMode::Consistent),
        (VALIDATED.to_string(), CalibMode::OneShot),
        (
            "\nselect = \"validated\"\nalphas = [4.0]\nprior = \"scale-shift\"\npooling = \"samples\"\n"
                .to_string(),
            CalibMode::Consistent,
        ),
    ] {
        let p = plan(&format!("{FORA}{extra}"));
        let m = model(&p);
        let c = run_validated(&m, &p, mode);
        let f = c.final_check.clone().expect("validation samples were given");
        let set = set_of(&p, &c);
        let cache = validation_error(&m, &p, &mut NoHooks);
        let mut hooks = PriorHooks::from_set(&set, DType::F32, &Device::Cpu).unwrap();
        let calibrated = validation_error(&m, &p, &mut hooks);
        assert!((f.cache - cache).abs() < 1e-6 * cache, "{extra}: {f:?} vs {cache}");
        assert!(calibrated <= cache, "{extra} {mode:?}: {calibrated} > {cache}");
        if f.kept {
            assert!((f.calibrated - calibrated).abs() < 1e-6 * cache, "{f:?} vs {calibrated}");
        } else {
            assert!(c.priors.is_empty() && c.alphas.values().all(|&a| a == 0.0));
            assert_eq!(calibrated, cache);
        }
        // Every calibrated site has a blend, and a prior exactly when it is
        // not 0; site choices and validation numbers are reported.
        assert_eq!(c.alphas.len(), 2 * 2 * p.model.depth);
        for (site, &alpha) in &c.alphas {
            assert_eq!(c.priors.contains_key(site), alpha != 0.0, "{site}");
        }
        assert_eq!(c.choices.len(), c.alphas.len());
        for s in &c.steps {
            let v = s.validation.as_ref().unwrap();
            assert!(v.branch_after <= v.branch_before + 1e-12, "{s:?}");
        }
    }
}

#[test]
fn validated_selection_never_picks_a_site_prior_that_is_worse_on_validation() {
    // A shift blended with alpha 4 overshoots: the fixed protocol applies it
    // and its validation numbers show sites where it is worse than the
    // cache; validated selection, offered only that blend, leaves those
    // sites without a prior.
    let hurt = "\nprior = \"shift\"\npooling = \"samples\"\n";
    let fixed = plan(&format!("{FORA}{hurt}").replace("alpha = 0.5", "alpha = 4.0"));
    let m = model(&fixed);
    let f = run_validated(&m, &fixed, CalibMode::Consistent);
    let worse = f
        .choices
        .iter()
        .filter(|c| c.choice.val_after > c.choice.val_before)
        .count();
    assert!(worse > 0, "alpha 4 should overshoot somewhere");
    assert!(
        f.final_check.unwrap().kept,
        "the fixed protocol keeps its priors"
    );

    let validated = plan(&format!(
        "{FORA}{hurt}select = \"validated\"\nalphas = [4.0]\n"
    ));
    let c = run_validated(&m, &validated, CalibMode::Consistent);
    for ch in &c.choices {
        let (before, after) = (ch.choice.val_before.unwrap(), ch.choice.val_after.unwrap());
        assert!(after <= before, "{}: {after} > {before}", ch.site);
        assert_eq!(ch.choice.kind.is_none(), ch.choice.alpha == 0.0);
    }
    assert!(c.choices.iter().any(|ch| ch.choice.kind.is_none()));
}

#[test]
fn token_level_families_share_the_first_prior_across_modes() {
    let p = plan(&format!(
        "{FORA}prior = \"affine\"\npooling = \"none\"\nridge = 0.01\nvalidation-samples = 0\n"
    ));
    let m = model(&p);
    let consistent = run(&m, &p, CalibMode::Consistent);
    let one_shot = run(&m, &p, CalibMode::OneShot);
    for (site, prior) in &consistent.priors {
        assert_eq!(prior.kind, tcc_core::PriorKind::Affine);
        if site.step == 1 {
            assert_eq!(prior, &one_shot.priors[site], "{site}");
        }
    }
    // Token rows: every token of every pooled sample is a row.
    let tokens = (p.model.input_size / p.model.patch).pow(2);
    assert!(consistent.steps.iter().all(|s| s.rows == 6 * tokens));
    assert!(consistent
        .steps
        .iter()
        .all(|s| s.rel_after < s.rel_before && s.common_share > 0.0 && s.common_share < 1.0));
}

/// The all-gather of processes run as threads: every rank writes its bytes
/// into a shared slot, and all read every slot.
struct Threads {
    rank: usize,
    slots: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    barrier: std::sync::Arc<std::sync::Barrier>,
}

impl AllGather for Threads {
    fn all_gather(&mut self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, tcc_calib::CalibError> {
        self.slots.lock().unwrap()[self.rank] = bytes;
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        Ok(all)
    }
}

/// `||x - y|| / ||y||` over every tensor of two sets of priors (same sites).
fn max_rel_diff(x: &Calibration, y: &Calibration) -> f64 {
    assert_eq!(
        x.priors.keys().collect::<Vec<_>>(),
        y.priors.keys().collect::<Vec<_>>()
    );
    assert_eq!(x.alphas, y.alphas);
    let rel = |a: &[f64], b: &[f64]| {
        let d: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
        let n: f64 = b.iter().map(|q| q * q).sum();
        (d / n.max(f64::MIN_POSITIVE)).sqrt()
    };
    let mut worst: f64 = 0.0;
    for (site, p) in &x.priors {
        let q = &y.priors[site];
        for (a, b) in [(&p.r, &q.r), (&p.mu_a, &q.mu_a), (&p.mu_b, &q.mu_b)] {
            worst = worst.max(rel(a, b));
        }
        worst = worst.max(rel(&[p.s], &[q.s]));
    }
    worst
}

#[test]
fn the_walk_across_two_processes_fits_the_single_process_priors() {
    let p = plan(FORA);
    let m = model(&p);
    let (all, val) = (batches(&p), validation(&p));
    // Consistent mode is the one that needs the barrier; one-shot shards
    // are checked through statistics files below.
    {
        let mode = CalibMode::Consistent;
        let single = run_validated(&m, &p, mode);
        let slots = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); 2]));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        // Rank 0 walks the first batch and the validation batch, rank 1 the
        // second batch and no validation sample.
        let ranks: Vec<Calibration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let (m, p) = (&m, &p);
                    let mine = &all[rank..rank + 1];
                    let v = if rank == 0 { &val[..] } else { &[][..] };
                    let mut g = Gathered(Threads {
                        rank,
                        slots: slots.clone(),
                        barrier: barrier.clone(),
                    });
                    s.spawn(move || {
                        calibrate_across(m, p, mine, v, true, mode, DType::F32, &mut g, &mut |_| {})
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Both ranks add the parts in rank order: the same priors, bit for bit.
        assert_eq!(ranks[0].priors, ranks[1].priors, "{mode:?}");
        assert_eq!(ranks[0].final_check, ranks[1].final_check);
        // Against one process: f64 sums in another order, 1e-6 relative.
        let d = max_rel_diff(&ranks[0], &single);
        assert!(d < 1e-6, "{mode:?}: priors differ by {d:e} (relative)");
        assert_eq!(ranks[0].cost, single.cost);
        let (a, b) = (
            ranks[0].final_check.as_ref().unwrap(),
            single.final_check.as_ref().unwrap(),
        );
        assert_eq!(a.samples, b.samples);
        assert!((a.calibrated - b.calibrated).abs() <= 1e-6 * b.calibrated);
        for (x, y) in ranks[0].steps.iter().zip(&single.steps) {
            assert!((x.rel_after - y.rel_after).abs() <= 1e-6 * y.rel_after);
            assert_eq!(
                x.validation.as_ref().map(|v| v.kept),
                y.validation.as_ref().map(|v| v.kept)
            );
        }
    }
}

fn shard_file(
    m: &Dit,
    p: &Plan,
    index: usize,
    batches: &[CalibBatch],
    val: &[CalibBatch],
) -> StatsFile {
    let (steps, cost) = gather_one_shot(m, p, batches, val, &mut |_| {}).unwrap();
    let file = StatsFile {
        meta: StatsMeta {
            plan_hash: p.hash(),
            model: p.model.name.clone(),
            mode: CalibMode::OneShot,
            calibration: p.calibration.clone(),
            batch_size: 3,
            shard: Shard::new(index, 2).unwrap(),
            samples: [3 * index, 3 * index + 3],
            validation: if val.is_empty() { [4, 4] } else { [0, 4] },
            cost,
            tool_version: "test".into(),
        },
        steps,
    };
    // Through the file format.
    StatsFile::from_bytes(&file.to_bytes().unwrap(), "shard").unwrap()
}

#[test]
fn one_shot_statistics_of_two_shards_merge_to_the_single_run_priors() {
    let p = plan(FORA);
    let m = model(&p);
    let (all, val) = (batches(&p), validation(&p));
    let single = run_validated(&m, &p, CalibMode::OneShot);
    let s0 = shard_file(&m, &p, 0, &all[..1], &val);
    let s1 = shard_file(&m, &p, 1, &all[1..], &[]);
    // Given in any order, merged in shard order.
    let merged =
        StatsFile::merge(vec![("b".into(), s1.clone()), ("a".into(), s0.clone())]).unwrap();
    assert_eq!(merged.meta.shard, Shard::WHOLE);
    // Every count but the validation's (the shards run no validation
    // latents: those checks need the fitted priors).
    let (c, want) = (&merged.meta.cost, &single.cost);
    assert_eq!(
        (c.samples, c.reference, c.accelerated, c.one_pass_bound),
        (
            want.samples,
            want.reference,
            want.accelerated,
            want.one_pass_bound
        )
    );
    let fitted = fit_merged(&merged).unwrap();
    let d = max_rel_diff(&fitted, &single);
    assert!(d < 1e-6, "priors differ by {d:e} (relative)");
    for (x, y) in fitted.steps.iter().zip(&single.steps) {
        assert_eq!((x.step, x.rows, x.dim), (y.step, y.rows, y.dim));
        assert!((x.rel_after - y.rel_after).abs() <= 1e-6 * y.rel_after);
        assert!((x.common_share - y.common_share).abs() <= 1e-6);
    }
    // Refusals: a shard twice, a missing shard, another plan.
    let err = |files: Vec<(String, StatsFile)>| StatsFile::merge(files).unwrap_err().to_string();
    let e = err(vec![("a".into(), s0.clone()), ("c".into(), s0.clone())]);
    assert!(e.contains("shard 0/2 is given twice: a and c"), "{e}");
    let e = err(vec![("a".into(), s0.clone())]);
    assert!(e.contains("shard 1/2 missing"), "{e}");
    let mut other = s1.clone();
    other.meta.plan_hash = tcc_plan::PlanHash([0x01; 32]);
    let e = err(vec![("a".into(), s0.clone()), ("b".into(), other)]);
    assert!(
        e.contains(&format!(
            "b and a are not shards of one calibration: plan {}",
            "01".repeat(32)
        )),
        "{e}"
    );
    // Consistent statistics cannot be fitted apart from the walk.
    let mut consistent = merged.clone();
    consistent.meta.mode = CalibMode::Consistent;
    assert!(fit_merged(&consistent).is_err());
    // A damaged file names the problem.
    let mut bytes = s0.to_bytes().unwrap();
    bytes.truncate(bytes.len() - 8);
    let e = StatsFile::from_bytes(&bytes, "s0.stats")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s0.stats"), "{e}");
}

/// A batch without the null condition the plan's CFG needs is the
/// caller's mistake, reported as the executor's input error, not as a
/// numerical failure.
#[test]
fn a_missing_null_condition_is_an_input_error() {
    let p = plan(FORA);
    let m = model(&p);
    let mut bad = batches(&p);
    bad[1].batch.uncond = None;
    let err = calibrate(
        &m,
        &p,
        &bad,
        &[],
        CalibMode::OneShot,
        DType::F32,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.is_input(), "{err:?}");
    assert!(matches!(err, tcc_calib::CalibError::Exec(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no null condition"), "{text}");
    assert!(!text.contains("numerical failure"), "{text}");
}
