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
            "--validation-samples",
            "2",
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

/// FORA N=3 over 6 steps on the embedded model, priors chosen on
/// validation samples among three families at every reuse step.
const VALIDATED: &str = r#"
[model]
name = "tiny"

[sampler]
kind = "ddim"
steps = 6
guidance = 1.5

[[cache]]
refresh = "every 3"

[calibration]
pooling = "none"
pooled-half = "both"
samples = 4
seed = 0
select = "validated"
candidates = ["shift", "affine", "diagonal"]
ridge = [0.01, 1.0]
validation-samples = 2
"#;

#[test]
fn validated_calibration_writes_per_site_choices_that_sample_and_eval_use() {
    let dir = tempfile::tempdir().unwrap();
    let sched = dir.path().join("validated.sched");
    std::fs::write(&sched, VALIDATED).unwrap();
    let sched = sched.display().to_string();
    let priors = dir.path().join("v.safetensors").display().to_string();
    let stdout = assert_ok(&tcc(&["calibrate", &sched, "--out", &priors]));
    // The step table has the validation columns and the end-to-end check.
    assert!(
        stdout.contains("validated among shift/affine/diagonal"),
        "{stdout}"
    );
    assert!(stdout.contains("latent before"), "{stdout}");
    assert!(
        stdout.contains("end to end on 2 validation samples (seed 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("chosen priors per step"), "{stdout}");
    // Every reuse step (1, 2, 4, 5) has 12 calibrated sites.
    assert!(stdout.contains("(48 calibrated sites)"), "{stdout}");

    // `sample` applies the file (sites chosen to carry no prior included).
    let npz = dir.path().join("s.npz").display().to_string();
    assert_ok(&tcc(&[
        "sample", &sched, "--priors", &priors, "--n", "2", "--npz", &npz,
    ]));
    assert!(Path::new(&npz).exists());
}

#[test]
fn several_schedules_are_evaluated_side_by_side_with_oracle_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let sched = dir.path().join("validated.sched");
    std::fs::write(&sched, VALIDATED).unwrap();
    let paper = dir.path().join("paper.sched");
    std::fs::write(
        &paper,
        VALIDATED
            .replace("select = \"validated\"\n", "")
            .replace("candidates = [\"shift\", \"affine\", \"diagonal\"]\n", "")
            .replace("pooling = \"none\"", "steps = \"1, 2\"\nalpha = 0.5")
            .replace("ridge = [0.01, 1.0]\n", ""),
    )
    .unwrap();
    let out = tcc(&[
        "eval",
        sched.to_str().unwrap(),
        paper.to_str().unwrap(),
        "--n",
        "2",
        "--seeds",
        "5,6",
        "--batch-size",
        "2",
        "--no-one-shot",
        "--plot",
        dir.path().join("p.png").to_str().unwrap(),
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&out)).expect("JSON on stdout");
    let names: Vec<&str> = doc["report"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    // One full computation and one cache for both (same cache plan).
    assert_eq!(
        names,
        ["full", "validated:cache", "validated:tcc", "paper:tcc"]
    );
    let tests: Vec<(String, String)> = doc["report"]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["a"].as_str().unwrap().into(),
                t["b"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        tests.contains(&("paper:tcc".into(), "validated:tcc".into())),
        "{tests:?}"
    );
    // The oracle: per calibrated step, never further from full computation
    // than reusing as is (it may choose no prior).
    let oracle = doc["oracle"].as_array().unwrap();
    assert!(oracle
        .iter()
        .any(|r| r["variant"] == "paper:tcc" && r["step"] == 2));
    for r in oracle {
        let (before, best) = (r["before"].as_f64().unwrap(), r["oracle"].as_f64().unwrap());
        assert!(best <= before + 1e-12, "{r}");
    }

    // Settings that cannot be validated are refused before any work.
    let e = assert_bad_input(&tcc(&[
        "calibrate",
        sched.to_str().unwrap(),
        "--validation-samples",
        "0",
    ]));
    assert!(e.contains("validation samples"), "{e}");
    let fixed_seed = dir.path().join("seeded.sched");
    std::fs::write(&fixed_seed, format!("{VALIDATED}validation-seed = 3\n")).unwrap();
    let e = assert_bad_input(&tcc(&[
        "calibrate",
        fixed_seed.to_str().unwrap(),
        "--seed",
        "3",
    ]));
    assert!(
        e.contains("validation seed 3 is the calibration seed"),
        "{e}"
    );
    // The validation seed is held out from evaluation too.
    let e = assert_bad_input(&tcc(&[
        "eval",
        sched.to_str().unwrap(),
        "--seeds",
        "1,2",
        "--n",
        "1",
    ]));
    assert!(e.contains("validation samples"), "{e}");
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

/// TCC on ToCa from the command line: the embedded ToCa + TCC schedule
/// calibrated, sampled with its priors and evaluated, on the 2-block
/// micro DiT (tests/fixtures/micro-dit, random weights: seconds instead of
/// the tiny model's minutes). Priors change the samples, deterministically;
/// eval runs the TCC variant beside the cache and reports the branch
/// distances of the partly computed MLP too.
#[test]
fn toca_with_tcc_calibrates_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let file = "schedules/toca3-tcc.sched";
    let micro = [
        "--model",
        "tests/fixtures/micro-dit",
        "--random-weights",
        "0",
    ];
    let priors = dir.path().join("p.safetensors").display().to_string();
    let mut args = vec!["calibrate", file];
    args.extend(micro);
    args.extend([
        "--samples",
        "4",
        "--validation-samples",
        "2",
        "--out",
        &priors,
    ]);
    let stdout = assert_ok(&tcc(&args));
    // 2 blocks x (attn reused, mlp partly computed) x steps 1, 2, 4, 5.
    assert!(
        stdout.contains("wrote 16 priors (16 calibrated sites)"),
        "{stdout}"
    );

    let latents = |name: &str, with: bool| {
        let path = dir.path().join(name);
        let mut args = vec!["sample", file];
        args.extend(micro);
        args.extend(["--n", "3", "--latents", path.to_str().unwrap()]);
        if with {
            args.extend(["--priors", &priors]);
        }
        assert_ok(&tcc(&args));
        std::fs::read(path).unwrap()
    };
    let (with, again, without) = (
        latents("a.safetensors", true),
        latents("b.safetensors", true),
        latents("c.safetensors", false),
    );
    assert_eq!(with, again, "the same seed and priors give the same bytes");
    assert_ne!(with, without, "the priors change the samples");

    let plot = dir.path().join("e.png").display().to_string();
    let mut args = vec!["eval", file];
    args.extend(micro);
    args.extend([
        "--priors",
        &priors,
        "--no-one-shot",
        "--n",
        "3",
        "--seeds",
        "5,6",
        "--plot",
        &plot,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&tcc(&args))).unwrap();
    let variants = doc["report"]["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["full", "cache", "tcc"]);
    for v in &variants[1..] {
        for s in v["sets"].as_array().unwrap() {
            assert!(s["rel_l2"].as_f64().unwrap() > 0.0, "{v}");
        }
        // Step 1 reuses the attention and partly computes the MLP: both
        // are measured (over the stale tokens of the MLP).
        let step1 = &v["steps"][1];
        assert!(step1["branch_rel_l2"].as_f64().unwrap() > 0.0, "{step1}");
    }
    let tests = doc["report"]["tests"].as_array().unwrap();
    assert_eq!(
        (tests[0]["a"].as_str(), tests[0]["b"].as_str()),
        (Some("tcc"), Some("cache"))
    );
    assert!(Path::new(&plot).exists());

    // A plan whose only non-computed cells are partial: eval measures them.
    let micro_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/micro-dit");
    let sched = dir.path().join("partial-only.sched");
    std::fs::write(
        &sched,
        format!(
            "[model]\npath = {:?}\n[sampler]\nsteps = 6\nguidance = 1.5\n[[cache]]\npartial = \"1, 2\"\nbranches = \"mlp\"\nfresh-ratio = 0.25\n",
            micro_dir.display().to_string()
        ),
    )
    .unwrap();
    let out = tcc(&[
        "eval",
        sched.to_str().unwrap(),
        "--random-weights",
        "0",
        "--n",
        "2",
        "--seeds",
        "5",
        "--plot",
        &plot,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    let cache = &doc["report"]["variants"][1];
    assert_eq!(cache["name"], "cache");
    for (step, partial) in [(0, false), (1, true), (2, true), (3, false)] {
        let d = &cache["steps"][step]["branch_rel_l2"];
        assert_eq!(
            d.as_f64().is_some_and(|x| x > 0.0),
            partial,
            "step {step}: {d}"
        );
    }
}
