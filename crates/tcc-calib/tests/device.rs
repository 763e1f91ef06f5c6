//! What calibration does on the model's device and dtype: pooled statistics
//! summed per batch on the device (f32) and merged on the host (f64), and
//! priors applied in f32 whatever the branch outputs' dtype.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tcc_calib::{PairStats, Pooler, Prior, PriorHooks, Side};
use tcc_core::Branch;
use tcc_exec::{BranchSite, Hooks};
use tcc_plan::{Action, Plan};
use tcc_sampler::NoiseRng;

fn plan(pooling: &str, half: &str) -> Plan {
    let text = format!(
        r#"
[model]
name = "tiny"

[sampler]
kind = "ddim"
steps = 6
guidance = 1.5

[[cache]]
refresh = "every 3"

[calibration]
method = "tcc"
steps = "1, 2"
pooling = "{pooling}"
pooled-half = "{half}"
samples = 6
seed = 0
"#
    );
    let s = tcc_schedule::parse("device.sched", &text).expect("parses");
    tcc_plan::compile(&s, Path::new("")).expect("compiles")
}

/// Branch outputs `[2B, T, D]` with CFG, conditions with repeats.
fn outputs(dtype: DType) -> (Tensor, Vec<u64>) {
    let conditions = vec![3, 1, 3, 0, 1, 3, 7];
    let b = conditions.len();
    let out = NoiseRng::new(11)
        .randn((2 * b, 5, 8), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (out, conditions)
}

/// The rows of `stats` on one side, as `PairStats::rows` gives them (both
/// sides get the same data here).
fn rows(pooler: &Pooler, out: &Tensor, conditions: &[u64]) -> (Vec<u64>, Vec<f64>) {
    let mut stats = PairStats::new(out.dim(2).unwrap());
    pooler
        .add(out, conditions, Side::Reference, &mut stats)
        .unwrap();
    pooler
        .add(out, conditions, Side::Accelerated, &mut stats)
        .unwrap();
    let r = stats.rows().unwrap();
    assert_eq!(r.a, r.b);
    (r.keys, r.a)
}

/// Independent reference: the values in f64 on the host, one sample at a
/// time, as the statistics were gathered before they were summed on the
/// device. Device sums add at most 3 f32 values per row here: agreement to
/// 1e-6 relative (f32 rounds at 6e-8).
#[test]
fn pooled_rows_are_the_per_sample_means() {
    for dtype in [DType::F32, DType::BF16] {
        let (out, conditions) = outputs(dtype);
        let b = conditions.len();
        // The conditional half of a cond-first batch: samples 0..b.
        let v: Vec<Vec<Vec<f32>>> = out
            .narrow(0, 0, b)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec3()
            .unwrap();
        let (t, d) = (v[0].len(), v[0][0].len());

        // tokens: a row per condition, the mean over its samples' token means.
        let (keys, got) = rows(&Pooler::new(&plan("tokens", "cond")), &out, &conditions);
        assert_eq!(keys, vec![0, 1, 3, 7]);
        for (ki, key) in keys.iter().enumerate() {
            let members: Vec<usize> = (0..b).filter(|&i| conditions[i] == *key).collect();
            for j in 0..d {
                let want = members
                    .iter()
                    .map(|&i| (0..t).map(|k| v[i][k][j] as f64).sum::<f64>() / t as f64)
                    .sum::<f64>()
                    / members.len() as f64;
                let g = got[ki * d + j];
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{dtype:?} tokens {key} {j}: {g} vs {want}"
                );
            }
        }

        // conditions: a row per token position, the mean over all samples.
        let (keys, got) = rows(&Pooler::new(&plan("conditions", "cond")), &out, &conditions);
        assert_eq!(keys, (0..t as u64).collect::<Vec<_>>());
        for k in 0..t {
            for j in 0..d {
                let want = (0..b).map(|i| v[i][k][j] as f64).sum::<f64>() / b as f64;
                let g = got[k * d + j];
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{dtype:?} conditions {k} {j}"
                );
            }
        }
    }
}

#[test]
fn the_pooled_half_is_the_one_asked_for() {
    let (out, conditions) = outputs(DType::F32);
    let b = conditions.len();
    let (_, cond) = rows(&Pooler::new(&plan("conditions", "cond")), &out, &conditions);
    let (_, uncond) = rows(
        &Pooler::new(&plan("conditions", "uncond")),
        &out,
        &conditions,
    );
    let want_uncond = out.narrow(0, b, b).unwrap().mean(0).unwrap();
    let want: Vec<f64> = want_uncond
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    for (g, w) in uncond.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6);
    }
    assert_ne!(cond, uncond);
}

/// `B @ M + c` on a bf16 branch output is computed in f32 and cast back
/// once: exactly `(B_f32 @ M + c)` rounded to bf16.
#[test]
fn priors_apply_in_f32_and_cast_back() {
    let d = 8;
    let mut prior = Prior::identity(d);
    prior.s = 0.75;
    prior.mu_a = (0..d).map(|j| 0.1 * j as f64).collect();
    prior.mu_b = (0..d).map(|j| -0.05 * j as f64).collect();
    // A rotation in the plane of the first two channels.
    let (c, s) = (0.6f64, 0.8f64);
    prior.r[0] = c;
    prior.r[1] = -s;
    prior.r[d] = s;
    prior.r[d + 1] = c;
    let alpha = 0.5;
    let mut hooks = PriorHooks::lenient();
    // f32, as tcc applies priors whatever the model's dtype.
    hooks
        .insert(
            tcc_calib::Site::new(1, Branch::Mlp, 0),
            &prior,
            alpha,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
    let site = BranchSite {
        step: 1,
        block: 0,
        branch: Branch::Mlp,
        action: Action::Reuse {
            from: 0,
            prior: true,
        },
        fresh: None,
    };
    let b = NoiseRng::new(5).randn((4, 3, d), &Device::Cpu).unwrap();
    let f = prior.fold(alpha);
    let m = Tensor::from_vec(
        f.m.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        (d, d),
        &Device::Cpu,
    )
    .unwrap();
    let cv = Tensor::from_vec(
        f.c.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        (1, d),
        &Device::Cpu,
    )
    .unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let bh = b.to_dtype(dtype).unwrap();
        let got = hooks.branch_output(&site, &bh).unwrap().unwrap();
        assert_eq!(got.dtype(), dtype);
        let want = bh
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_matmul(&m)
            .unwrap()
            .broadcast_add(&cv)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (g, w): (Vec<f32>, Vec<f32>) = (
            got.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
            want.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
        );
        assert_eq!(g, w, "{dtype:?}");
    }
    // Other sites pass through.
    let other = BranchSite { step: 2, ..site };
    assert!(hooks.branch_output(&other, &b).unwrap().is_none());
}
