//! TCC on ToCa plans: statistics pooled over the stale (reused) tokens
//! only, priors applied to the stale tokens only, on a random 2-block DiT
//! over 4x4 tokens (the workspace's tests/fixtures/micro-dit).

mod common;
use common::{batch, batches, model};
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tcc_calib::{calibrate, gather_one_shot, CalibError, Calibration, PriorHooks, SiteStats};
use tcc_core::{Branch, CalibMode, Pooling};
use tcc_exec::{BranchSite, Hooks, NoHooks, SampleBatch, Trajectory};
use tcc_model::Dit;
use tcc_plan::{Action, Plan};

/// ToCa N = 3 over 6 DDIM steps: steps 0 and 3 compute everything, steps
/// 1, 2, 4 and 5 compute 4 of the 16 tokens of every branch (chosen by
/// the attention they received) and reuse the others; priors at the two
/// partial steps of the first segment (step 2 chains on step 1's entry).
const TOCA: &str = r#"
[model]
path = "tests/fixtures/micro-dit"

[sampler]
kind = "ddim"
steps = 6
guidance = 1.5

[[cache]]
refresh = "every 3"

[[cache]]
partial = "except every 3"
fresh-ratio = 0.25

[calibration]
method = "tcc"
steps = "1, 2"
alpha = 0.5
samples = 6
seed = 0
"#;

const PARTIAL_RULE: &str = "[[cache]]\npartial = \"except every 3\"\nfresh-ratio = 0.25\n";

/// Tokens of the micro DiT and fresh tokens per partial cell.
const TOKENS: usize = 16;
const FRESH: usize = 4;

fn plan(text: &str) -> Plan {
    common::plan_of("toca.sched", text)
}

fn run(model: &Dit, plan: &Plan, mode: CalibMode) -> Result<Calibration, CalibError> {
    calibrate(
        model,
        plan,
        &batches(plan),
        &[],
        mode,
        DType::F32,
        &mut |_| {},
    )
}

fn hooks_of(c: &Calibration) -> PriorHooks {
    let mut hooks = PriorHooks::lenient();
    for (site, prior) in &c.priors {
        hooks
            .insert(*site, prior, c.alphas[site], DType::F32, &Device::Cpu)
            .unwrap();
    }
    hooks
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn sample(model: &Dit, plan: &Plan, hooks: &mut dyn Hooks) -> Vec<u32> {
    let b = batch(plan, 42, &[3, 7]);
    bits(
        &Trajectory::new(model, plan, &b)
            .unwrap()
            .run(hooks)
            .unwrap(),
    )
}

/// Largest relative difference between the priors of two calibrations
/// (same sites required).
fn max_rel_diff(x: &Calibration, y: &Calibration) -> f64 {
    assert_eq!(
        x.priors.keys().collect::<Vec<_>>(),
        y.priors.keys().collect::<Vec<_>>()
    );
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

/// Fresh ratio 0 compiles to FORA, so ToCa + TCC is FORA + TCC plan for
/// plan. And the stale-token path itself is FORA's when no token is
/// fresh: every calibrated reuse turned into a partial compute of no
/// token (the executor, the walk's peek at the step, the stale-row
/// gathers and the prior hooks' fresh-row merge all run) gives the same
/// priors (1e-6, relative) and the same samples bit for bit, in both modes.
#[test]
fn fresh_ratio_zero_gives_the_fora_priors_and_samples() {
    let fora = plan(&TOCA.replace(PARTIAL_RULE, ""));
    let zero = plan(&TOCA.replace("0.25", "0"));
    assert_eq!(zero.steps, fora.steps);
    assert_eq!(zero.toca, None);
    assert_eq!(zero.hash(), fora.hash());

    let mut none = fora.clone();
    none.toca = plan(TOCA).toca;
    let mut partial = 0;
    for a in none.steps.iter_mut().flat_map(|s| &mut s.actions).flatten() {
        if let Action::Reuse { from, prior: true } = *a {
            *a = Action::Partial {
                from,
                fresh: 0,
                prior: true,
            };
            partial += 1;
        }
    }
    assert_eq!(partial, 2 * 2 * fora.model.depth);
    let m = model(&fora);
    for mode in [CalibMode::Consistent, CalibMode::OneShot] {
        let f = run(&m, &fora, mode).unwrap();
        let t = run(&m, &none, mode).unwrap();
        assert_eq!(f.priors.len(), partial);
        let d = max_rel_diff(&t, &f);
        assert!(d <= 1e-6, "{mode:?}: priors differ by {d:e}");
        assert_eq!(
            sample(&m, &none, &mut hooks_of(&t)),
            sample(&m, &fora, &mut hooks_of(&f)),
            "{mode:?}"
        );
    }
}

/// Fresh tokens per model batch row, where a site reported them.
type Fresh = Option<Vec<Vec<usize>>>;

/// One step's outputs per (block, branch), with their fresh tokens.
type StepOutputs = HashMap<(usize, Branch), (Tensor, Fresh)>;

/// Keeps the outputs of one step's sites as a hook sees them (before any
/// replacement), with the fresh tokens of partial computes.
struct StepRecorder {
    step: usize,
    outputs: StepOutputs,
}

impl Hooks for StepRecorder {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        if site.step == self.step {
            self.outputs.insert(
                (site.block, site.branch),
                (out.clone(), site.fresh.map(<[_]>::to_vec)),
            );
        }
        Ok(None)
    }
}

/// Runs `plan` on `b` up to and including `step`, recording that step.
fn record(m: &Dit, plan: &Plan, b: &SampleBatch, step: usize) -> StepOutputs {
    let mut t = Trajectory::new(m, plan, b).unwrap();
    while t.next_step() < step {
        t.step(&mut NoHooks).unwrap();
    }
    let mut rec = StepRecorder {
        step,
        outputs: HashMap::new(),
    };
    t.step(&mut rec).unwrap();
    rec.outputs
}

/// `x[row]` as f64 `[T][D]`.
fn rows_f64(x: &Tensor, row: usize) -> Vec<Vec<f64>> {
    x.narrow(0, row, 1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
}

fn mean_of(rows: &[Vec<f64>], tokens: &[usize]) -> Vec<f64> {
    let d = rows[0].len();
    let mut m = vec![0.0; d];
    for &i in tokens {
        for (s, x) in m.iter_mut().zip(&rows[i]) {
            *s += x;
        }
    }
    m.iter_mut().for_each(|s| *s /= tokens.len() as f64);
    m
}

/// The walk's `tokens`-pooled rows against the same pooling written out
/// here in f64: per conditional sample, the mean over its stale tokens
/// (the tokens the accelerated trajectory did not compute at that site
/// and step, which differ per sample) of the reference output `A` and of
/// the reused output `B`, averaged per class. The walk sums per batch on
/// the device in f32 and merges in f64: agreement within 1e-5 of
/// `1 + |value|`. The mean over every token differs by more, so the test
/// sees which tokens were pooled. With `none` pooling each stale token of
/// each conditional sample is one row.
#[test]
fn stale_token_statistics_match_a_hand_pooled_reference() {
    let p = plan(TOCA);
    let m = model(&p);
    let reference_plan = p.all_compute();
    let (stats, _) = gather_one_shot(&m, &p, &batches(&p), &[], &mut |_| {}).unwrap();
    assert_eq!(stats.len(), 2);
    for st in &stats {
        let k = st.step;
        // Hand pooling: (site, class) -> (Σ mean_a, Σ mean_b, Σ all-token mean_b, n).
        type Acc = (Vec<f64>, Vec<f64>, Vec<f64>, usize);
        let mut hand: HashMap<((usize, Branch), u64), Acc> = HashMap::new();
        let mut distinct_fresh = false;
        for cb in batches(&p) {
            let n = cb.conditions.len();
            let a = record(&m, &reference_plan, &cb.batch, k);
            let b = record(&m, &p, &cb.batch, k);
            for site in &st.sites {
                let key = (site.block, site.branch);
                let (bo, fresh) = &b[&key];
                let fresh = fresh
                    .as_ref()
                    .expect("a partial compute reports fresh tokens");
                assert_eq!(fresh.len(), 2 * n, "both CFG halves");
                assert!(fresh.iter().all(|f| f.len() == FRESH));
                distinct_fresh |= fresh[..n].windows(2).any(|w| w[0] != w[1]);
                // The conditional half comes first (cond-first CFG).
                for (i, &class) in cb.conditions.iter().enumerate() {
                    let stale: Vec<usize> = (0..TOKENS).filter(|t| !fresh[i].contains(t)).collect();
                    let (ra, rb) = (rows_f64(&a[&key].0, i), rows_f64(bo, i));
                    let all: Vec<usize> = (0..TOKENS).collect();
                    let e = hand.entry((key, class)).or_insert_with(|| {
                        let d = ra[0].len();
                        (vec![0.0; d], vec![0.0; d], vec![0.0; d], 0)
                    });
                    for (acc, v) in [
                        (&mut e.0, mean_of(&ra, &stale)),
                        (&mut e.1, mean_of(&rb, &stale)),
                        (&mut e.2, mean_of(&rb, &all)),
                    ] {
                        acc.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
                    }
                    e.3 += 1;
                }
            }
        }
        assert!(
            distinct_fresh,
            "step {k}: the samples' fresh tokens should differ"
        );
        let mut worst: f64 = 0.0;
        let mut all_token_gap: f64 = 0.0;
        for (site, s) in st.sites.iter().zip(&st.calib) {
            let Some(SiteStats::Rows(ps)) = s else {
                panic!("{site}: tokens pooling keeps rows")
            };
            let rows = ps.rows().unwrap();
            assert_eq!(rows.keys, vec![0, 1, 2], "{site}");
            let d = ps.dim();
            for (j, class) in rows.keys.iter().enumerate() {
                let (sa, sb, sall, n) = &hand[&((site.block, site.branch), *class)];
                assert_eq!(*n, 2);
                for c in 0..d {
                    let (wa, wb) = (sa[c] / 2.0, sb[c] / 2.0);
                    let (ga, gb) = (rows.a[j * d + c], rows.b[j * d + c]);
                    worst = worst
                        .max((ga - wa).abs() / (1.0 + wa.abs()))
                        .max((gb - wb).abs() / (1.0 + wb.abs()));
                    all_token_gap = all_token_gap.max((gb - sall[c] / 2.0).abs());
                }
            }
        }
        assert!(worst <= 1e-5, "step {k}: walk vs hand pooling {worst:e}");
        assert!(
            all_token_gap > 1e-3,
            "step {k}: the all-token mean is as close ({all_token_gap:e}): the test cannot tell"
        );
    }

    // `none` pooling: one row per stale token of each conditional sample.
    let mut q = p.clone();
    q.calibration.pooling = Pooling::Unpooled;
    let (stats, _) = gather_one_shot(&m, &q, &batches(&q), &[], &mut |_| {}).unwrap();
    for st in &stats {
        for s in &st.calib {
            let Some(SiteStats::Moments(mo)) = s else {
                panic!("none pooling keeps moments")
            };
            assert_eq!(mo.rows(), (6 * (TOKENS - FRESH)) as u64);
        }
    }
}

/// SPEC's invariant: the first prior is the same in consistent and
/// one-shot mode (bit for bit: the same statistics); step 2's differ,
/// as consistent mode fits them on the trajectory step 1's priors shifted.
#[test]
fn the_first_toca_prior_is_shared_by_both_modes() {
    let p = plan(TOCA);
    let m = model(&p);
    let consistent = run(&m, &p, CalibMode::Consistent).unwrap();
    let one_shot = run(&m, &p, CalibMode::OneShot).unwrap();
    assert_eq!(consistent.priors.len(), 2 * 2 * p.model.depth);
    let mut differ_later = 0;
    for (site, prior) in &consistent.priors {
        let other = &one_shot.priors[site];
        match site.step {
            1 => assert_eq!(prior, other, "{site}"),
            2 => differ_later += usize::from(prior != other),
            s => panic!("unexpected calibrated step {s}"),
        }
    }
    assert!(differ_later > 0, "step 2's priors must see step 1's");
    for s in &consistent.steps {
        assert!(s.rel_after <= s.rel_before, "{s:?}");
        // Rows: the three classes.
        assert_eq!(s.rows, 3);
    }
}

/// What the prior hooks got and gave at each site.
type Seen = HashMap<(usize, usize, Branch), (Tensor, Tensor, Fresh)>;

/// Runs the wrapped hooks and keeps (input, output, fresh) per site.
struct Watch {
    inner: PriorHooks,
    seen: Seen,
}

impl Hooks for Watch {
    fn branch_output(
        &mut self,
        site: &BranchSite,
        out: &Tensor,
    ) -> tcc_exec::Result<Option<Tensor>> {
        let replaced = self.inner.branch_output(site, out)?;
        let used = replaced.clone().unwrap_or_else(|| out.clone());
        self.seen.insert(
            (site.step, site.block, site.branch),
            (out.clone(), used, site.fresh.map(<[_]>::to_vec)),
        );
        Ok(replaced)
    }
}

/// Per row, whether `x` and `y` (`[rows, T, D]`) agree bit for bit on
/// token `i`.
fn same_token(x: &Tensor, y: &Tensor, row: usize, i: usize) -> bool {
    let pick = |t: &Tensor| bits(&t.narrow(0, row, 1).unwrap().narrow(1, i, 1).unwrap());
    pick(x) == pick(y)
}

/// Priors never touch fresh tokens: at every partial compute with a
/// prior, the fresh rows leave the hooks bit for bit as computed while
/// every stale row is corrected; from the same state, a step run with
/// and without priors computes the same fresh rows bit for bit (block 0's
/// attention, whose input no prior has touched yet); and the corrected
/// output is the cache entry the next partial step reads (step 2's stale
/// rows are step 1's corrected rows, not the uncorrected ones).
#[test]
fn priors_never_touch_fresh_tokens_and_their_output_is_cached() {
    let p = plan(TOCA);
    let m = model(&p);
    let c = run(&m, &p, CalibMode::Consistent).unwrap();
    let b = batch(&p, 42, &[3, 7]);
    let mut watch = Watch {
        inner: hooks_of(&c),
        seen: HashMap::new(),
    };
    Trajectory::new(&m, &p, &b)
        .unwrap()
        .run(&mut watch)
        .unwrap();
    let mut checked = 0;
    for step in [1, 2] {
        for block in 0..p.model.depth {
            for branch in [Branch::Attn, Branch::Mlp] {
                let (input, output, fresh) = &watch.seen[&(step, block, branch)];
                let fresh = fresh.as_ref().unwrap();
                for (r, f) in fresh.iter().enumerate() {
                    for i in 0..TOKENS {
                        let same = same_token(input, output, r, i);
                        if f.contains(&i) {
                            assert!(same, "step {step} block {block} {branch} row {r}: fresh token {i} changed");
                        } else {
                            assert!(!same, "step {step} block {block} {branch} row {r}: stale token {i} not corrected");
                        }
                    }
                }
                checked += 1;
                if step == 2 {
                    // The cache entry step 2 reads is step 1's output.
                    let (in1, out1, fresh1) = &watch.seen[&(1, block, branch)];
                    let fresh1 = fresh1.as_ref().unwrap();
                    for (r, f) in fresh.iter().enumerate() {
                        for i in (0..TOKENS).filter(|i| !f.contains(i)) {
                            assert!(
                                same_token(input, out1, r, i),
                                "block {block} {branch} row {r} token {i}: not step 1's output"
                            );
                            // Stale at step 1 too: corrected there.
                            if !fresh1[r].contains(&i) {
                                assert!(!same_token(input, in1, r, i));
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 2 * p.model.depth);

    // From the state before step 1: with and without priors.
    let mut t = Trajectory::new(&m, &p, &b).unwrap();
    t.step(&mut NoHooks).unwrap();
    let mut with = Watch {
        inner: hooks_of(&c),
        seen: HashMap::new(),
    };
    let mut without = Watch {
        inner: PriorHooks::lenient(),
        seen: HashMap::new(),
    };
    t.clone().step(&mut with).unwrap();
    t.clone().step(&mut without).unwrap();
    let (_, yes, fresh_yes) = &with.seen[&(1, 0, Branch::Attn)];
    let (_, no, fresh_no) = &without.seen[&(1, 0, Branch::Attn)];
    assert_eq!(fresh_yes, fresh_no);
    for (r, f) in fresh_yes.as_ref().unwrap().iter().enumerate() {
        for i in 0..TOKENS {
            assert_eq!(
                same_token(yes, no, r, i),
                f.contains(&i),
                "row {r} token {i}"
            );
        }
    }
}

/// `conditions` pooling keeps a row per token position; the compiler
/// refuses it on ToCa's calibrated steps, and the walk refuses a plan
/// that asks for it anyway.
#[test]
fn conditions_pooling_on_partial_cells_is_an_input_error() {
    let mut p = plan(TOCA);
    p.calibration.pooling = Pooling::Conditions;
    let m = model(&p);
    let e = run(&m, &p, CalibMode::Consistent).unwrap_err();
    assert!(e.is_input(), "{e}");
    assert!(e.to_string().contains("`conditions` pooling"), "{e}");
}
