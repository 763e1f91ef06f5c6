//! `--shard I/N` and `tcc merge`: shards of a sampling run join into the
//! whole run's file byte for byte; shards of a one-shot calibration merge
//! into the single run's priors (1e-6 relative); shards of an evaluation
//! into the single run's report (per-sample metrics exactly, sums 1e-6
//! relative); mixed, duplicate and missing shards are refused with exit
//! status 2 and nothing written.

mod common;

use std::path::Path;

use common::{assert_bad_input, assert_ok, tcc};

/// FORA N=3 on the embedded tiny model, 6 steps: fast.
const SCHED: &str = r#"
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
mode = "one-shot"
steps = "1, 2"
alpha = 0.5
samples = 4
seed = 0
validation-samples = 2
"#;

fn setup(dir: &Path) -> String {
    let sched = dir.join("s.sched");
    std::fs::write(&sched, SCHED).unwrap();
    sched.display().to_string()
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn sharded_samples_merge_into_the_whole_runs_npz_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sched = setup(d);
    let common = ["--n", "3", "--batch-size", "1", "--seed", "5"];
    let run = |extra: &[&str]| {
        let mut a = vec!["sample", &sched];
        a.extend_from_slice(&common);
        a.extend_from_slice(extra);
        tcc(&a)
    };
    assert_ok(&run(&["--npz", &p(d, "whole.npz")]));
    let out = assert_ok(&run(&["--npz", &p(d, "b.npz"), "--shard", "1/2"]));
    assert!(out.contains("shard 1/2: samples 1..3 of 3"), "{out}");
    assert_ok(&run(&["--npz", &p(d, "a.npz"), "--shard", "0/2"]));
    // In any order.
    assert_ok(&tcc(&[
        "merge",
        "--out",
        &p(d, "m.npz"),
        &p(d, "b.npz"),
        &p(d, "a.npz"),
    ]));
    let (whole, merged) = (
        std::fs::read(d.join("whole.npz")).unwrap(),
        std::fs::read(d.join("m.npz")).unwrap(),
    );
    assert!(
        whole == merged,
        "the merged .npz differs from the whole run's"
    );

    // Refusals: nothing is written.
    let e = assert_bad_input(&tcc(&["merge", "--out", &p(d, "x.npz"), &p(d, "a.npz")]));
    assert!(e.contains("shard 1/2 missing"), "{e}");
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &p(d, "x.npz"),
        &p(d, "a.npz"),
        &p(d, "a.npz"),
        &p(d, "b.npz"),
    ]));
    assert!(e.contains("shard 0/2 is given twice"), "{e}");
    // Another seed is another run.
    let mut a = vec![
        "sample",
        &sched,
        "--n",
        "3",
        "--batch-size",
        "1",
        "--seed",
        "6",
    ];
    let other = p(d, "other.npz");
    a.extend_from_slice(&["--npz", &other, "--shard", "1/2"]);
    assert_ok(&tcc(&a));
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &p(d, "x.npz"),
        &p(d, "a.npz"),
        &other,
    ]));
    assert!(e.contains("are not shards of one sampling run"), "{e}");
    assert!(!d.join("x.npz").exists());
    // A whole run's file is not a shard.
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &p(d, "x.npz"),
        &p(d, "whole.npz"),
    ]));
    assert!(e.contains("not a shard of a sampling run"), "{e}");
    // More shards than batches.
    let e = assert_bad_input(&run(&["--npz", &p(d, "y.npz"), "--shard", "0/4"]));
    assert!(e.contains("fewer than 4 shards"), "{e}");
    let leftovers: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Every tensor of two priors files, `||x - y|| / ||y||` at most `tol`.
fn assert_priors_close(x: &Path, y: &Path, tol: f64) {
    let (bx, by) = (std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
    let (tx, ty) = (
        safetensors::SafeTensors::deserialize(&bx).unwrap(),
        safetensors::SafeTensors::deserialize(&by).unwrap(),
    );
    let mut names = tx.names();
    names.sort();
    let mut other = ty.names();
    other.sort();
    assert_eq!(names, other);
    assert!(!names.is_empty());
    let f32s = |b: &[u8]| -> Vec<f64> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    };
    for n in names {
        let (a, b) = (
            f32s(tx.tensor(n).unwrap().data()),
            f32s(ty.tensor(n).unwrap().data()),
        );
        let d: f64 = a.iter().zip(&b).map(|(p, q)| (p - q) * (p - q)).sum();
        let norm: f64 = b.iter().map(|q| q * q).sum();
        let rel = (d / norm.max(f64::MIN_POSITIVE)).sqrt();
        assert!(rel <= tol, "{n}: relative difference {rel:e}");
    }
}

#[test]
fn sharded_one_shot_statistics_merge_into_the_single_run_priors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sched = setup(d);
    let run = |extra: &[&str]| {
        let mut a = vec!["calibrate", &sched, "--batch-size", "2"];
        a.extend_from_slice(extra);
        tcc(&a)
    };
    assert_ok(&run(&["--out", &p(d, "single.safetensors")]));
    for i in 0..2 {
        let shard = format!("{i}/2");
        assert_ok(&run(&[
            "--shard",
            &shard,
            "--out",
            &p(d, &format!("s{i}.stats")),
        ]));
    }
    let out = assert_ok(&tcc(&[
        "merge",
        "--out",
        &p(d, "merged.safetensors"),
        &p(d, "s1.stats"),
        &p(d, "s0.stats"),
    ]));
    assert!(out.contains("merged the statistics of 2 shards"), "{out}");
    // The priors are f32 on disk: f64 sums in another order, then rounding.
    assert_priors_close(
        &d.join("merged.safetensors"),
        &d.join("single.safetensors"),
        1e-6,
    );

    let e = assert_bad_input(&tcc(&["merge", "--out", &p(d, "x"), &p(d, "s0.stats")]));
    assert!(e.contains("shard 1/2 missing"), "{e}");
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &p(d, "x"),
        &p(d, "s0.stats"),
        &p(d, "single.safetensors"),
    ]));
    assert!(e.contains("not a tcc statistics file"), "{e}");
    // Statistics of another seed belong to another calibration.
    assert_ok(&run(&[
        "--shard",
        "1/2",
        "--seed",
        "9",
        "--out",
        &p(d, "o.stats"),
    ]));
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &p(d, "x"),
        &p(d, "s0.stats"),
        &p(d, "o.stats"),
    ]));
    assert!(e.contains("not shards of one calibration"), "{e}");
    assert!(!d.join("x").exists());
    // Consistent mode cannot be sharded into files.
    let e = assert_bad_input(&run(&["--shard", "0/2", "--mode", "consistent"]));
    assert!(e.contains("--shard needs --mode one-shot"), "{e}");
}

/// Walks two `tcc eval --json` documents: the same keys and strings (but
/// the plot's path), numbers within `tol` relative, and exactly equal under
/// the keys in `exact` (the metrics made of per-sample values). Timings
/// (`seconds`, `speedup`) are not compared.
fn assert_reports_agree(a: &serde_json::Value, b: &serde_json::Value, path: &str, tol: f64) {
    use serde_json::Value;
    const EXACT: [&str; 5] = ["rel_l2", "psnr", "accuracy", "tests", "samples_per_set"];
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<_>, Vec<_>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "{path}");
            for (k, v) in x {
                if ["seconds", "speedup", "plot"].contains(&k.as_str()) {
                    continue;
                }
                let tol = if EXACT.contains(&k.as_str()) {
                    0.0
                } else {
                    tol
                };
                assert_reports_agree(v, &y[k], &format!("{path}.{k}"), tol);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{path}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_reports_agree(p, q, &format!("{path}[{i}]"), tol);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= tol * y.abs(),
                "{path}: {x} (single run) vs {y} (merged shards)"
            );
        }
        (x, y) => assert_eq!(x, y, "{path}"),
    }
}

#[test]
fn sharded_evaluation_merges_into_the_single_runs_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sched = setup(d);
    for (mode, out) in [("one-shot", "o.priors"), ("consistent", "c.priors")] {
        let a = ["calibrate", &sched, "--batch-size", "4", "--mode", mode];
        let mut a = a.to_vec();
        let out = p(d, out);
        a.extend_from_slice(&["--out", &out]);
        assert_ok(&tcc(&a));
    }
    let (o, c) = (p(d, "o.priors"), p(d, "c.priors"));
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            &sched,
            "--priors",
            &c,
            "--one-shot-priors",
            &o,
            "--n",
            "4",
            "--batch-size",
            "2",
            "--seeds",
            "11,12",
        ];
        a.extend_from_slice(extra);
        tcc(&a)
    };
    let single = assert_ok(&eval(&["--json", "--plot", &p(d, "single.png")]));
    for i in 0..2 {
        let out = assert_ok(&eval(&[
            "--shard",
            &format!("{i}/2"),
            "--out",
            &p(d, &format!("e{i}.part")),
        ]));
        assert!(
            out.contains(&format!("samples {}..{} of 4", 2 * i, 2 * i + 2)),
            "{out}"
        );
    }
    // In any order.
    let merged = assert_ok(&tcc(&[
        "merge",
        "--json",
        "--out",
        &p(d, "m.json"),
        &p(d, "e1.part"),
        &p(d, "e0.part"),
    ]));
    let (single, merged): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&single).unwrap(),
        serde_json::from_str(&merged).unwrap(),
    );
    assert_eq!(merged["plot"], p(d, "m.png"));
    assert!(d.join("m.png").exists());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    assert_eq!(written, merged);
    assert!(!single["oracle"].as_array().unwrap().is_empty());
    assert_eq!(single["report"]["tests"].as_array().unwrap().len(), 2);
    // f64 sums (FD, per-step deviations, pooled rows, the oracle's moments)
    // added in another order: 1e-6 relative.
    assert_reports_agree(&single, &merged, "", 1e-6);
    // The tables too.
    let text = assert_ok(&tcc(&[
        "merge",
        "--out",
        &p(d, "t.json"),
        &p(d, "e0.part"),
        &p(d, "e1.part"),
    ]));
    assert!(text.contains("paired Wilcoxon signed-rank tests"), "{text}");
    assert!(text.contains("merged 2 shards"), "{text}");

    // Refusals: nothing is written.
    let x = p(d, "x.json");
    let e = assert_bad_input(&tcc(&["merge", "--out", &x, &p(d, "e0.part")]));
    assert!(e.contains("shard 1/2 missing"), "{e}");
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &x,
        &p(d, "e0.part"),
        &p(d, "e1.part"),
        &p(d, "e0.part"),
    ]));
    assert!(e.contains("shard 0/2 is given twice"), "{e}");
    let e = assert_bad_input(&tcc(&[
        "merge",
        "--out",
        &x,
        &p(d, "e0.part"),
        &p(d, "o.priors"),
    ]));
    assert!(e.contains("mix eval partials and statistics files"), "{e}");
    // Other seed sets are another evaluation (here also other variants:
    // the seeds are named first).
    let other = p(d, "other.part");
    assert_ok(&tcc(&[
        "eval",
        &sched,
        "--priors",
        &c,
        "--no-one-shot",
        "--no-oracle",
        "--n",
        "4",
        "--batch-size",
        "2",
        "--seeds",
        "11,13",
        "--shard",
        "1/2",
        "--out",
        &other,
    ]));
    let e = assert_bad_input(&tcc(&["merge", "--out", &x, &p(d, "e0.part"), &other]));
    assert!(e.contains("not shards of one evaluation: seed sets"), "{e}");
    assert!(!d.join("x.json").exists() && !d.join("x.png").exists());
    // A shard does not fit priors.
    let e = assert_bad_input(&tcc(&[
        "eval",
        &sched,
        "--priors",
        &c,
        "--shard",
        "0/2",
        "--out",
        &p(d, "y.part"),
    ]));
    assert!(e.contains("run `tcc calibrate` first"), "{e}");
    assert!(!d.join("y.part").exists());
    let leftovers: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
