//! `tcc sweep`: one setting of a schedule at several values against full
//! computation, on the micro DiT fixture (random weights: fast) and, for
//! FD, the embedded tiny model. Threshold 0 is full computation, threshold
//! inf computes exactly the steps the bounds force, a higher threshold
//! never computes more steps on these seeds, fresh ratio 1 is full
//! computation, the JSON reads back, and bad values exit 2 naming the flag
//! before any work.

mod common;

use std::path::Path;

use common::{assert_bad_input, assert_ok, tcc};

/// First-block cache on the micro DiT (2 blocks, 4x4 tokens).
fn fbcache(threshold: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    format!(
        r#"[model]
path = "{}"

[sampler]
kind = "ddim"
steps = 8
guidance = 1.5

[dynamic]
policy = "first-block"
threshold = {threshold}
warmup = 1
cutoff = 1
max-reuse = 3
"#,
        root.join("tests/fixtures/micro-dit").display()
    )
}

/// ToCa on the micro DiT: full steps every 3, every branch of the others
/// recomputed on a fresh share of the tokens.
fn toca() -> String {
    let fb = fbcache("0");
    let head = fb.split("[dynamic]").next().unwrap();
    format!("{head}[[cache]]\nrefresh = \"every 3\"\n\n[[cache]]\npartial = \"except every 3\"\nfresh-ratio = 0.3\n")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const RUN: [&str; 8] = [
    "--n",
    "4",
    "--batch-size",
    "2",
    "--seeds",
    "1,2",
    "--random-weights",
    "0",
];

fn sweep(sched: &str, param: &str, values: &str, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["sweep", sched, "--param", param, "--values", values];
    a.extend_from_slice(&RUN);
    a.extend_from_slice(extra);
    tcc(&a)
}

fn mean(v: &serde_json::Value) -> f64 {
    match &v["mean"] {
        serde_json::Value::String(s) if s == "inf" => f64::INFINITY,
        m => m.as_f64().unwrap_or_else(|| panic!("{v}")),
    }
}

#[test]
fn a_threshold_sweep_spans_full_computation_to_the_bounds_most_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let sched = write(dir.path(), "fb.sched", &fbcache("0.35"));
    let out = assert_ok(&sweep(&sched, "threshold", "0,0.4,0.5,inf", &["--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["param"], "threshold");
    assert_eq!(doc["seeds"], serde_json::json!([1, 2]));
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["value"], "inf");

    let zero = &rows[0];
    assert_eq!(mean(&zero["rel_l2"]), 0.0);
    assert_eq!(mean(&zero["realised_speedup"]), 1.0);
    assert_eq!(mean(&zero["computed_steps"]), 8.0);
    assert!(zero["predicted_speedup"].is_null(), "a run-time policy");

    // Threshold inf: step 0, the cut-off step and every 4th (max-reuse 3).
    let plan = tcc_plan::compile_file(Path::new(&sched)).unwrap();
    let most = plan.dynamic.unwrap().most_reuses(8);
    assert_eq!(most, [1, 2, 3, 5, 6]);
    let inf = &rows[3];
    assert_eq!(mean(&inf["computed_steps"]), 3.0);
    assert_eq!(
        inf["decisions"]["computed"],
        serde_json::json!([8, 0, 0, 0, 8, 0, 0, 8])
    );
    let best = tcc_plan::PlanCost::of(&plan.realised(&most)).speedup();
    assert!((mean(&inf["realised_speedup"]) - best).abs() < 1e-12);
    assert!(mean(&inf["rel_l2"]) > 0.0);

    // A higher threshold never computes more steps here, and 0.5 sits
    // strictly between the ends.
    let computed: Vec<f64> = rows.iter().map(|r| mean(&r["computed_steps"])).collect();
    assert!(computed.windows(2).all(|w| w[1] <= w[0]), "{computed:?}");
    assert!(computed[2] < 8.0 && computed[2] > 3.0, "{computed:?}");

    // The same run prints the same table (the decisions are deterministic).
    let text = assert_ok(&sweep(&sched, "threshold", "0,0.4,0.5,inf", &[]));
    assert!(
        text.contains("MAC speedup") && text.contains("computed steps"),
        "{text}"
    );
    let inf_row = text.lines().find(|l| l.starts_with("inf ")).expect(&text);
    assert!(
        inf_row.contains("1.42") && inf_row.contains("3.00"),
        "{inf_row}"
    );
    assert!(text.contains("steps computed, % of samples"), "{text}");
}

#[test]
fn a_fresh_ratio_sweep_spans_fora_to_full_computation() {
    let dir = tempfile::tempdir().unwrap();
    let sched = write(dir.path(), "toca.sched", &toca());
    let out = assert_ok(&sweep(&sched, "fresh-ratio", "0,0.5,1", &["--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    let predicted: Vec<f64> = rows
        .iter()
        .map(|r| r["predicted_speedup"].as_f64().unwrap())
        .collect();
    assert!(
        predicted[0] > predicted[1] && predicted[1] > predicted[2],
        "{predicted:?}"
    );
    assert_eq!(predicted[2], 1.0);
    assert_eq!(mean(&rows[2]["rel_l2"]), 0.0, "ratio 1 is full computation");
    assert!(mean(&rows[0]["rel_l2"]) > mean(&rows[1]["rel_l2"]));
    // Static plans: no decisions.
    assert!(rows.iter().all(|r| r["decisions"].is_null()));
    // FORA's refresh interval of the same schedule.
    let out = assert_ok(&sweep(&sched, "refresh", "1,2,3.5", &["--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows[0]["predicted_speedup"], 1.0, "every 1 computes all");
    assert_eq!(mean(&rows[0]["rel_l2"]), 0.0);
    assert!(rows[2]["predicted_speedup"].as_f64() > rows[1]["predicted_speedup"].as_f64());
}

#[test]
fn the_tiny_testbed_sweep_reports_fd() {
    let out = assert_ok(&tcc(&[
        "sweep",
        "schedules/fbcache.sched",
        "--param",
        "threshold",
        "--values",
        "0,inf",
        "--steps",
        "4",
        "--n",
        "2",
        "--seeds",
        "3",
        "--json",
    ]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fd = |r: &serde_json::Value| mean(&r["fd"]);
    let full = fd(&doc["full"]);
    assert!(full.is_finite() && full > 0.0, "{doc}");
    // Threshold 0 is full computation: the same features.
    assert_eq!(fd(&doc["rows"][0]), full);
    assert!(fd(&doc["rows"][1]).is_finite());
}

#[test]
fn bad_sweeps_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let fb = write(dir.path(), "fb.sched", &fbcache("0.35"));
    let toca = write(dir.path(), "toca.sched", &toca());
    let refused = |sched: &str, param: &str, values: &str, want: &str| {
        let e = assert_bad_input(&sweep(sched, param, values, &[]));
        assert!(e.contains(want), "{param} {values}: {e}");
    };
    refused(
        &fb,
        "threshold",
        "0,-0.1",
        "--values for --param threshold: -0.1 is not a threshold",
    );
    refused(&fb, "threshold", "0,abc", "--values: `abc` is not a number");
    refused(&fb, "threshold", "nan", "--values: `nan` is not a number");
    refused(
        &fb,
        "threshold",
        "0.1,0.10",
        "--values: 0.10 is given twice",
    );
    let many: Vec<String> = (0..33).map(|i| i.to_string()).collect();
    refused(
        &fb,
        "threshold",
        &many.join(","),
        "--values: expected 1 to 32 values, got 33",
    );
    refused(
        &toca,
        "fresh-ratio",
        "0.5,1.5",
        "1.5 is not a fresh ratio in [0, 1]",
    );
    refused(&toca, "refresh", "0.5", "0.5 is not a refresh interval");
    refused(
        &toca,
        "threshold",
        "0.1",
        "has no [dynamic] section: --param threshold",
    );
    refused(
        &fb,
        "fresh-ratio",
        "0.1",
        "has no `partial` rule: --param fresh-ratio",
    );
    refused(&fb, "refresh", "2", "has no `every N` step selector");
    // Unknown parameters: clap's usage error, exit 2.
    let out = sweep(&fb, "ratio", "0.1", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--param"));
    let e = assert_bad_input(&tcc(&[
        "sweep",
        &fb,
        "--param",
        "threshold",
        "--values",
        "0",
        "--n",
        "0",
    ]));
    assert!(e.contains("--n"), "{e}");
    // FD of one sample per seed set is undefined: refused before sampling.
    let e = assert_bad_input(&tcc(&[
        "sweep",
        "schedules/fbcache.sched",
        "--param",
        "threshold",
        "--values",
        "0",
        "--n",
        "1",
    ]));
    assert!(e.contains("--n 1") && e.contains("FD"), "{e}");
}
