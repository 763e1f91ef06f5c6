//! `--shard I/N` and `tcc merge`: shards of a sampling run join into the
//! whole run's file byte for byte; shards of a one-shot calibration merge
//! into the single run's priors (1e-6 relative); mixed, duplicate and
//! missing shards are refused with exit status 2 and nothing written.

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
