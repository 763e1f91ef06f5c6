//! `tcc sample`, `tcc eval` and `tcc calibrate` on dynamic schedules
//! (`[dynamic]`, first-block cache and TeaCache): the reported decisions and
//! realised speedup agree with the library's cost model, the same seed and
//! batch size decide alike, eval's decisions of a sharded run merge into the
//! single run's exactly, and calibration is refused. `tcc teacache-fit`
//! prints a rescale line that a schedule takes, fitted on its own pairs.

use std::path::Path;

mod common;
use common::{assert_bad_input, assert_ok, tcc};

const SCHEDULE: &str = "schedules/fbcache.sched";

/// The computed steps of each reported batch, and the realised speedup.
fn parse_report(stdout: &str) -> (Vec<Vec<usize>>, f64) {
    let mut batches = Vec::new();
    let mut speedup = None;
    for line in stdout.lines() {
        if let Some((_, rest)) = line.split_once("steps (") {
            let steps = rest.trim_end_matches(')');
            batches.push(steps.split(", ").map(|s| s.parse().unwrap()).collect());
        }
        if let Some((_, x)) = line.split_once(": speedup ") {
            speedup = Some(x.trim_end_matches('x').parse().unwrap());
        }
    }
    (batches, speedup.expect(stdout))
}

#[test]
fn sample_reports_the_steps_computed_and_the_realised_speedup() {
    let run = || {
        assert_ok(&tcc(&[
            "sample",
            SCHEDULE,
            "--n",
            "2",
            "--batch-size",
            "1",
            "--seed",
            "5",
        ]))
    };
    let out = run();
    let (batches, speedup) = parse_report(&out);
    assert_eq!(batches.len(), 2, "{out}");
    assert!(out.contains("samples 0..1: computed"), "{out}");

    let plan = tcc_plan::compile_file(Path::new(SCHEDULE)).unwrap();
    assert!(plan.dynamic.is_some());
    let (mut ran, mut full) = (0u128, 0u128);
    for computed in &batches {
        // Warm-up 2 and cut-off 1 always compute; runs of reuse <= 3.
        assert!(
            computed.starts_with(&[0, 1]) && computed.ends_with(&[19]),
            "{out}"
        );
        assert!(computed.windows(2).all(|w| w[1] - w[0] <= 4), "{out}");
        let reuse: Vec<usize> = (0..20).filter(|s| !computed.contains(s)).collect();
        assert!(reuse.iter().all(|s| (2..19).contains(s)), "{out}");
        ran += tcc_plan::PlanCost::of(&plan.realised(&reuse)).total as u128;
        full += tcc_plan::PlanCost::of(&plan).total as u128;
    }
    let want = full as f64 / ran as f64;
    assert!((speedup - want).abs() < 0.006, "{speedup} vs {want}\n{out}");
    assert!(speedup > 1.0, "{out}");

    // Same seed and batch size: the same decisions.
    assert_eq!(parse_report(&run()).0, batches);
}

#[test]
fn calibrating_a_dynamic_policy_is_refused() {
    let err = assert_bad_input(&tcc(&["calibrate", SCHEDULE]));
    assert!(err.contains("not supported yet"), "{err}");
    // With a [calibration] section the schedule itself is rejected.
    let err = assert_bad_input(&tcc(&[
        "calibrate",
        "crates/tcc-plan/tests/bad/dynamic-with-cache.sched",
    ]));
    assert!(
        err.contains("TCC calibration of a dynamic policy is not supported yet"),
        "{err}"
    );
}

#[test]
fn sample_reports_teacaches_steps_and_speedup_with_its_probe() {
    const TEA: &str = "schedules/teacache.sched";
    let run = || {
        assert_ok(&tcc(&[
            "sample",
            TEA,
            "--n",
            "2",
            "--batch-size",
            "2",
            "--seed",
            "3",
        ]))
    };
    let out = run();
    assert!(out.contains("dynamic policy teacache (threshold "), "{out}");
    let (batches, speedup) = parse_report(&out);
    assert_eq!(batches.len(), 1, "{out}");
    let computed = &batches[0];
    // Step 0 and the cut-off step 19 always compute; some step reuses.
    assert!(
        computed.starts_with(&[0]) && computed.ends_with(&[19]),
        "{out}"
    );
    assert!(computed.len() < 20, "{out}");
    let reuse: Vec<usize> = (0..20).filter(|s| !computed.contains(s)).collect();

    // Every block is skipped at a reuse step; the realised speedup counts
    // the probe's adaLN of block 0 at each of them.
    let plan = tcc_plan::compile_file(Path::new(TEA)).unwrap();
    assert_eq!(plan.reused_blocks(), Some((0, plan.model.depth)));
    let ran = tcc_plan::PlanCost::of_run(&plan, &reuse);
    let table = tcc_plan::PlanCost::of(&plan.realised(&reuse));
    assert_eq!(
        ran.total,
        table.total + reuse.len() as u64 * ran.units.adaln
    );
    let want = ran.full_total as f64 / ran.total as f64;
    assert!((speedup - want).abs() < 0.006, "{speedup} vs {want}\n{out}");
    assert!(speedup > 1.0, "{out}");

    assert_eq!(parse_report(&run()).0, batches);
}

/// A schedule for the 2-block micro DiT (random weights): fast full runs.
fn micro_schedule(dir: &Path, dynamic: &str) -> std::path::PathBuf {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/micro-dit");
    let text = format!(
        "[model]\npath = {:?}\n\n[sampler]\nkind = \"ddim\"\nsteps = 8\nguidance = 1.5\n{dynamic}",
        model.to_str().unwrap()
    );
    let path = dir.join("fit.sched");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn teacache_fit_prints_a_rescale_line_fitted_on_its_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let sched = micro_schedule(dir.path(), "");
    let sched = sched.to_str().unwrap();
    let common = [
        "teacache-fit",
        sched,
        "--random-weights",
        "1",
        "--n",
        "3",
        "--batch-size",
        "2",
        "--degree",
        "2",
    ];
    let json = assert_ok(&tcc(&[&common[..], &["--json"]].concat()));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pairs = doc["pairs"].as_array().unwrap();
    // Two batches (samples 0..2, 2..3), steps 1..=7 each.
    assert_eq!(pairs.len(), 14, "{json}");
    let starts: Vec<u64> = pairs
        .iter()
        .map(|p| p["batch_start"].as_u64().unwrap())
        .collect();
    assert_eq!(starts, [[0; 7], [2; 7]].concat());
    let get = |k: &str| -> Vec<f64> { pairs.iter().map(|p| p[k].as_f64().unwrap()).collect() };
    let (x, y) = (get("input_change"), get("output_change"));
    assert!(
        x.iter().chain(&y).all(|v| v.is_finite() && *v > 0.0),
        "{json}"
    );
    let want = tcc_core::Polynomial::fit(&x, &y, 2).unwrap();
    let got: Vec<f64> = doc["rescale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .collect();
    assert_eq!(got, want.coeffs());

    // The text report ends with the line for the schedule, which compiles
    // to the same coefficients.
    let out = assert_ok(&tcc(&common));
    let line = out.lines().last().unwrap();
    assert!(line.starts_with("rescale = ["), "{out}");
    let tea = micro_schedule(
        dir.path(),
        &format!("\n[dynamic]\npolicy = \"teacache\"\nthreshold = 0.1\n{line}\n"),
    );
    let plan = tcc_plan::compile_file(&tea).unwrap();
    assert_eq!(
        plan.dynamic.unwrap().rescale.unwrap().coeffs(),
        want.coeffs()
    );

    // Too few pairs for the degree, and a degree out of range.
    let sched = micro_schedule(dir.path(), "");
    let sched = sched.to_str().unwrap();
    let few = &[
        "teacache-fit",
        sched,
        "--random-weights",
        "1",
        "--n",
        "1",
        "--degree",
        "7",
    ];
    let err = assert_bad_input(&tcc(few));
    assert!(err.contains("needs more than 7"), "{err}");
    let out = tcc(&["teacache-fit", sched, "--degree", "8"]);
    assert_eq!(out.status.code(), Some(2));
}

/// First-block cache on the micro DiT fixture (random weights: fast), with
/// a threshold at which batches decide differently.
fn micro_fbcache(dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "[model]\npath = \"{}\"\n\n[sampler]\nkind = \"ddim\"\nsteps = 8\nguidance = 1.5\n\n[dynamic]\npolicy = \"first-block\"\nthreshold = 0.5\nwarmup = 1\ncutoff = 1\nmax-reuse = 3\n",
        root.join("tests/fixtures/micro-dit").display()
    );
    let p = dir.join("fb.sched");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn eval_reports_the_decisions_and_sharded_runs_merge_them_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sched = micro_fbcache(d);
    let p = |n: &str| d.join(n).display().to_string();
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            &sched,
            "--n",
            "4",
            "--batch-size",
            "2",
            "--seeds",
            "1,2",
            "--random-weights",
            "0",
        ];
        a.extend_from_slice(extra);
        tcc(&a)
    };
    let single = assert_ok(&eval(&["--json", "--plot", &p("s.png")]));
    let single: serde_json::Value = serde_json::from_str(&single).unwrap();
    let cache = &single["report"]["variants"][1];
    assert_eq!(cache["name"], "cache");
    let d1 = &cache["decisions"];
    assert_eq!(d1["samples"], 8);
    let computed: Vec<u64> = d1["computed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(computed.len(), 8);
    assert_eq!((computed[0], computed[7]), (8, 8), "step 0 and the cut-off");
    assert!(
        computed.iter().any(|&c| c < 8),
        "{computed:?}: something reused"
    );
    let mean = computed.iter().sum::<u64>() as f64 / 8.0;
    assert_eq!(d1["computed_steps"].as_f64().unwrap(), mean);
    assert!(d1["realised_speedup"].as_f64().unwrap() > 1.0);
    for s in cache["sets"].as_array().unwrap() {
        assert!(s["computed_steps"].as_f64().unwrap() <= 8.0, "{s}");
        assert!(s["realised_speedup"].as_f64().unwrap() >= 1.0, "{s}");
    }
    // Full computation has no decisions.
    let full = &single["report"]["variants"][0];
    assert!(full.get("decisions").is_none() && full["sets"][0].get("computed_steps").is_none());

    // Two shards and their merge: the same decisions, exactly.
    for i in 0..2 {
        assert_ok(&eval(&[
            "--shard",
            &format!("{i}/2"),
            "--out",
            &p(&format!("e{i}.part")),
        ]));
    }
    let merged = assert_ok(&tcc(&[
        "merge",
        "--json",
        "--out",
        &p("m.json"),
        &p("e1.part"),
        &p("e0.part"),
    ]));
    let merged: serde_json::Value = serde_json::from_str(&merged).unwrap();
    let m = &merged["report"]["variants"][1];
    assert_eq!(m["decisions"], cache["decisions"]);
    for (a, b) in m["sets"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cache["sets"].as_array().unwrap())
    {
        assert_eq!(a["computed_steps"], b["computed_steps"]);
        assert_eq!(a["realised_speedup"], b["realised_speedup"]);
        assert_eq!(a["rel_l2"], b["rel_l2"]);
    }

    // The tables say it too.
    let text = assert_ok(&eval(&["--plot", &p("t.png")]));
    assert!(text.contains("run-time decisions"), "{text}");
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("steps computed, % of samples"))
        .find(|l| l.starts_with("cache"))
        .expect(&text);
    let shares: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let want: Vec<f64> = computed
        .iter()
        .map(|&c| (100.0 * c as f64 / 8.0).round())
        .collect();
    assert_eq!(shares, want, "{row}");
}
