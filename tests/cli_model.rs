//! The commands that run the embedded testbed model (`calibrate`, `eval`),
//! run as the built binary on a few samples: their outputs, and clear
//! errors (exit status 2, no panic) for priors that do not belong.

use std::path::Path;

mod common;
use common::{assert_bad_input, assert_ok, tcc};

/// Calibrates fora3 on 4 samples into `dir`, in both modes.
fn priors(dir: &Path) -> (String, String) {
    let tcc_p = dir.join("tcc.safetensors").display().to_string();
    let one_p = dir.join("one.safetensors").display().to_string();
    for (mode, path) in [("consistent", &tcc_p), ("one-shot", &one_p)] {
        let out = tcc(&[
            "calibrate",
            "schedules/fora3.sched",
            "--samples",
            "4",
            "--mode",
            mode,
            "--out",
            path,
        ]);
        let stdout = assert_ok(&out);
        assert!(stdout.contains("re-run from the refresh step"), "{stdout}");
    }
    (tcc_p, one_p)
}

#[test]
fn eval_reports_every_variant_tests_and_plot_and_refuses_foreign_priors() {
    let dir = tempfile::tempdir().unwrap();
    let (tcc_p, one_p) = priors(dir.path());
    let plot = dir.path().join("dev.png").display().to_string();
    let out = tcc(&[
        "eval",
        "schedules/fora3.sched",
        "--priors",
        &tcc_p,
        "--one-shot-priors",
        &one_p,
        "--n",
        "3",
        "--seeds",
        "5,6",
        "--plot",
        &plot,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&out)).expect("JSON on stdout");
    let variants = doc["report"]["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["full", "cache", "one-shot", "tcc"]);
    for v in variants {
        let sets = v["sets"].as_array().unwrap();
        assert_eq!(sets.len(), 2);
        for s in sets {
            let acc = s["accuracy"].as_f64().expect("the testbed scores accuracy");
            assert!((0.0..=1.0).contains(&acc));
            assert!(s["fd"].as_f64().unwrap() >= 0.0);
        }
    }
    // Full computation has no error against itself; the cache has some.
    assert!(variants[0]["sets"][0]["rel_l2"].is_null());
    assert!(variants[1]["sets"][0]["rel_l2"].as_f64().unwrap() > 0.0);
    assert_eq!(variants[1]["steps"].as_array().unwrap().len(), 20);
    let tests = doc["report"]["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    assert!(Path::new(&plot).exists());

    // The calibration seed (0) is not held out.
    let e = assert_bad_input(&tcc(&[
        "eval",
        "schedules/fora3.sched",
        "--priors",
        &tcc_p,
        "--one-shot-priors",
        &one_p,
        "--seeds",
        "3,0",
    ]));
    assert!(e.contains("calibration seed"), "{e}");
    // Priors are tied to their plan: another step count is another plan.
    let e = assert_bad_input(&tcc(&[
        "eval",
        "schedules/fora3.sched",
        "--steps",
        "10",
        "--priors",
        &tcc_p,
    ]));
    assert!(e.contains("tied to the exact plan"), "{e}");
    // One-shot priors where consistent ones are expected.
    let e = assert_bad_input(&tcc(&["eval", "schedules/fora3.sched", "--priors", &one_p]));
    assert!(e.contains("one-shot priors"), "{e}");
    // A schedule without calibration takes no priors.
    let e = assert_bad_input(&tcc(&["eval", "schedules/full.sched", "--priors", &tcc_p]));
    assert!(e.contains("no calibrated steps"), "{e}");
    // Priors of another schedule: both plan hashes are named.
    let e = assert_bad_input(&tcc(&["eval", "schedules/fora2.sched", "--priors", &tcc_p]));
    assert!(e.contains("tied to the exact plan"), "{e}");
}

#[test]
fn convert_writes_safetensors_with_the_same_tensors_and_refuses_non_checkpoints() {
    let fixtures = Path::new("crates/tcc-model/tests/fixtures/dit_tiny");
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("converted.safetensors");
    let out = tcc(&[
        "convert",
        fixtures.join("original.pt").to_str().unwrap(),
        out_path.to_str().unwrap(),
    ]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("tensors"), "{stdout}");
    // The same tensors, bit for bit, as the fixture script's own
    // safetensors export of that checkpoint (tools/golden, PyTorch).
    let dev = candle_core::Device::Cpu;
    let got = candle_core::safetensors::load(&out_path, &dev).unwrap();
    let want = candle_core::safetensors::load(fixtures.join("original.safetensors"), &dev).unwrap();
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dims(), w.dims(), "{name}");
        let (g, w) = (
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(g, w, "{name}");
    }
    // A safetensors file is not a PyTorch checkpoint; nothing is written.
    let bad_out = dir.path().join("bad.safetensors");
    let e = assert_bad_input(&tcc(&[
        "convert",
        fixtures.join("original.safetensors").to_str().unwrap(),
        bad_out.to_str().unwrap(),
    ]));
    assert!(e.contains("original.safetensors"), "{e}");
    assert!(!bad_out.exists());
    let e = assert_bad_input(&tcc(&["convert", "no/such.pt", bad_out.to_str().unwrap()]));
    assert!(e.contains("no/such.pt"), "{e}");
}
