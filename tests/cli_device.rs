//! `--device` and `--dtype` on the commands that run a model, on this
//! build (CI's: no `cuda` feature, no GPU): the refusals, the announced
//! device, and whole runs in f16 / bf16 against f32.

mod common;

use std::path::Path;

use common::{assert_bad_input, assert_ok, tcc, text};

/// The final latents and labels a `tcc sample --latents` file holds.
fn latents(path: &Path) -> (Vec<f32>, Vec<usize>, Vec<u32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = st.tensor("latents").unwrap();
    assert_eq!(x.dtype(), safetensors::Dtype::F32);
    let v = x
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let l = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (v, x.shape().to_vec(), l)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d / n).sqrt()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cuda_is_refused_in_one_line_on_a_build_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let priors = tmp.path().join("p.safetensors");
    for args in [
        vec![
            "sample",
            "schedules/fora3.sched",
            "--n",
            "1",
            "--device",
            "cuda",
        ],
        vec![
            "sample",
            "schedules/fora3.sched",
            "--device",
            "cuda:1",
            "--dtype",
            "bf16",
        ],
        vec![
            "calibrate",
            "schedules/fora3.sched",
            "--device",
            "cuda",
            "--out",
            s(&priors),
        ],
        vec!["eval", "schedules/fora3.sched", "--device", "cuda"],
        vec!["bench", "schedules/fora3.sched", "--device", "cuda"],
        vec!["golden", "--device", "cuda"],
    ] {
        let err = assert_bad_input(&tcc(&args));
        assert!(
            err.contains("this tcc was built without CUDA support"),
            "{args:?}: {err}"
        );
        assert!(err.contains("--features cuda"), "{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!priors.exists(), "nothing is written before the refusal");
}

#[test]
fn bad_device_and_dtype_names_are_usage_errors() {
    for (args, needle) in [
        (
            vec!["sample", "schedules/fora3.sched", "--device", "gpu"],
            "not a device",
        ),
        (
            vec!["sample", "schedules/fora3.sched", "--device", "cuda:x"],
            "not a device",
        ),
        (
            vec!["eval", "schedules/fora3.sched", "--dtype", "f64"],
            "invalid value 'f64'",
        ),
    ] {
        let out = tcc(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The embedded model sampled in f16 and bf16 against f32, with TCC priors
/// (applied in f32 and cast back), from the same noise: 20 DDIM steps with
/// CFG 1.5 on 4 samples (priors fitted on 8, without the validation walk:
/// this test is about precision, not calibration). Tolerances, as the
/// relative L2 of all final latents against f32's: measured 1.42e-2 (f16)
/// and 8.7e-2 (bf16) on this CPU; allowed about 2x that (3e-2 and 0.2).
/// f16 rounds every activation and weight to 11 significant bits, bf16 to 8
/// (8x coarser, and 6x the error here); the errors of 20 steps add up in
/// the latents. The same command gives the same bytes.
#[test]
fn half_precision_samples_stay_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let priors = tmp.path().join("fora3.priors.safetensors");
    assert_ok(&tcc(&[
        "calibrate",
        "schedules/fora3.sched",
        "--samples",
        "8",
        "--validation-samples",
        "0",
        "--device",
        "cpu",
        "--out",
        s(&priors),
    ]));
    let run = |dtype: &str, name: &str| {
        let path = tmp.path().join(name);
        let out = tcc(&[
            "sample",
            "schedules/fora3.sched",
            "--n",
            "4",
            "--priors",
            s(&priors),
            "--dtype",
            dtype,
            "--latents",
            s(&path),
        ]);
        assert_ok(&out);
        let err = text(&out.stderr);
        // No --device on a CPU build: the CPU, said once on stderr.
        assert!(
            err.starts_with("running on cpu (") && err.contains(&format!(", {dtype}\n")),
            "{err}"
        );
        latents(&path)
    };
    let (f32_x, dims, labels) = run("f32", "f32.safetensors");
    assert_eq!(dims, [4, 3, 32, 32]);
    assert_eq!(labels, (0..4).collect::<Vec<u32>>());
    for (dtype, tol) in [("f16", 3e-2), ("bf16", 0.2)] {
        let (x, d, l) = run(dtype, &format!("{dtype}.safetensors"));
        assert_eq!(
            (d.as_slice(), l.as_slice()),
            (dims.as_slice(), labels.as_slice())
        );
        assert!(x.iter().all(|v| v.is_finite()), "{dtype}");
        let err = rel_l2(&x, &f32_x);
        eprintln!("{dtype} vs f32: rel. L2 {err:.3e}");
        assert!(err > 0.0 && err <= tol, "{dtype}: rel. L2 {err} vs f32");
        if dtype == "bf16" {
            let (again, _, _) = run(dtype, "again.safetensors");
            assert_eq!(again, x, "the same command, other bytes");
        }
    }
}

#[test]
fn bench_times_the_plan_against_full_computation() {
    let out = tcc(&[
        "bench",
        "schedules/fora3.sched",
        "--steps",
        "6",
        "--rounds",
        "1",
        "--batch-size",
        "2",
        "--dtype",
        "bf16",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert!(text(&out.stderr).starts_with("running on cpu ("));
    assert_eq!(doc["model"], "tiny");
    assert_eq!(doc["model_batch"], 4);
    assert_eq!(doc["steps"], 6);
    // FORA N=3 over 6 steps: two refresh steps, four reuse steps.
    let predicted = doc["predicted_speedup"].as_f64().unwrap();
    assert!(predicted > 1.5 && predicted < 3.0, "{predicted}");
    for k in [
        "full_step_ms",
        "reuse_step_ms",
        "full_run_s",
        "plan_run_s",
        "measured_speedup",
    ] {
        let v = doc[k].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{k}: {v}");
    }
    let err = assert_bad_input(&tcc(&[
        "bench",
        "schedules/fora3.sched",
        "--batch-size",
        "0",
    ]));
    assert!(err.contains("--batch-size"), "{err}");
}

#[test]
fn golden_diagnostic_passes_on_the_cpu() {
    let out = assert_ok(&tcc(&["golden", "--device", "cpu"]));
    // Two models x three dtypes, every one within its bound and repeatable.
    assert_eq!(out.matches("identical").count(), 6, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("  ok")).count(),
        6,
        "{out}"
    );
    let err = assert_bad_input(&tcc(&["golden", "--fixtures", "no/such/dir"]));
    assert!(err.contains("no/such/dir"), "{err}");
}
