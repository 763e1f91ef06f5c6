//! The `tcc plan` and `tcc check` commands, run as the built binary: exit
//! status (0 success, 2 invalid input with diagnostics on stderr), and
//! output that agrees with the library it prints.

use std::path::Path;
use std::process::{Command, Stdio};

use tcc_plan::{Format, Plan, PlanCost, PlanDiff, PlanDocument};

mod common;
use common::{assert_bad_input, tcc, text};

/// The plan the library compiles, named by the path as given.
fn compiled(path: &str) -> Plan {
    let mut plan = tcc_plan::compile_file(Path::new(path)).unwrap();
    plan.source = path.to_string();
    plan
}

#[test]
fn help_is_there_and_exits_zero() {
    let out = tcc(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "plan",
        "check",
        "Examples:",
        "tcc plan --show",
        "Exit status",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let out = tcc(&["plan", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in [
        "--show",
        "--emit <FORMAT>",
        "--diff",
        "toml, json",
        "Examples:",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let out = tcc(&["check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("tcc check schedules/*.sched"));
    // No subcommand: the help, on stderr, as a usage error.
    let out = tcc(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: tcc <COMMAND>"));
}

#[test]
fn show_is_the_default_and_matches_the_library() {
    let path = "schedules/fora3.sched";
    let shown = tcc(&["plan", "--show", path]);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
    assert!(shown.stderr.is_empty());
    assert_eq!(text(&shown.stdout), compiled(path).show());
    let default = tcc(&["plan", path]);
    assert_eq!(default.stdout, shown.stdout);
}

#[test]
fn emit_json_and_toml_carry_the_plan_its_hash_and_costs() {
    let path = "schedules/dit-xl2-fora2-tcc.sched";
    let plan = compiled(path);
    let mut emitted = Vec::new();
    for (flag, format) in [("json", Format::Json), ("toml", Format::Toml)] {
        let out = tcc(&["plan", "--emit", flag, path]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let doc = PlanDocument::parse(&text(&out.stdout), format).unwrap();
        assert_eq!(doc.plan, plan);
        assert_eq!(doc.hash, plan.hash());
        assert_eq!(doc.cost.total_macs, PlanCost::of(&plan).total);
        assert_eq!(doc.cost.step_macs.len(), plan.steps.len());
        emitted.push(doc);
    }
    assert_eq!(emitted[0], emitted[1]);
    // The JSON is plain JSON with the full hash at the top level.
    let out = tcc(&["plan", "--emit", "json", path]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["hash"], plan.hash().to_string());
    assert_eq!(value["plan"]["source"], path);
}

#[test]
fn diff_shows_changed_cells_and_both_speedups() {
    let (a, b) = ("schedules/fora2.sched", "schedules/fora3.sched");
    let out = tcc(&["plan", "--diff", a, b]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (pa, pb) = (compiled(a), compiled(b));
    assert_eq!(stdout, PlanDiff::new(&pa, &pb).render());
    let changed = PlanDiff::new(&pa, &pb).cells.len();
    assert!(changed > 0);
    assert!(stdout.contains(&format!("{changed} of ")), "{stdout}");
    for (path, plan) in [(a, &pa), (b, &pb)] {
        let speedup = format!("{:.2}x", PlanCost::of(plan).speedup());
        let line = stdout
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("{path} not named:\n{stdout}"));
        assert!(line.contains(&speedup), "{line}");
    }

    // A plan against itself: nothing differs, still exit 0.
    let out = tcc(&["plan", "--diff", a, a]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("settings    same"), "{stdout}");
    assert!(stdout.contains("\ncells       0 of "), "{stdout}");
}

#[test]
fn check_reports_every_file() {
    let files = [
        "schedules/full.sched",
        "schedules/fora3.sched",
        "schedules/pixart-fora3-tcc.sched",
    ];
    let out = tcc(&[&["check"], &files[..]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty());
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), files.len());
    for (line, path) in lines.iter().zip(files) {
        let plan = compiled(path);
        let expected = format!(
            "ok: {path} ({} steps, speedup {:.2}x)",
            plan.steps.len(),
            PlanCost::of(&plan).speedup()
        );
        assert_eq!(line, &expected);
    }
    assert_eq!(
        lines[0],
        "ok: schedules/full.sched (20 steps, speedup 1.00x)"
    );
}

#[test]
fn check_fails_with_status_2_if_any_file_is_bad() {
    let bad = first_bad_schedule();
    let out = tcc(&[
        "check",
        "schedules/fora2.sched",
        &bad,
        "schedules/fora3.sched",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok: schedules/fora2.sched"), "{stdout}");
    assert!(stdout.contains("ok: schedules/fora3.sched"), "{stdout}");
    assert!(!stdout.contains(&bad), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("--> {bad}:")), "{stderr}");
    assert!(stderr.contains('^'), "{stderr}");
    assert!(
        stderr.ends_with("error: 1 of 3 schedules are invalid\n"),
        "{stderr}"
    );
}

/// A schedule from tcc-plan's tests/bad/ (each is rejected with a diagnostic).
fn first_bad_schedule() -> String {
    const BAD: &str = "crates/tcc-plan/tests/bad";
    let mut bad: Vec<String> = std::fs::read_dir(BAD)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sched"))
        .map(|p| format!("{BAD}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    bad.sort();
    bad.into_iter()
        .next()
        .expect("tcc-plan's tests/bad has schedules")
}

#[test]
fn invalid_schedules_give_diagnostics_and_status_2() {
    let bad = first_bad_schedule();
    for args in [
        vec!["plan", "--show", &bad],
        vec!["plan", "--emit", "json", &bad],
        vec!["plan", "--diff", "schedules/fora2.sched", &bad],
        vec!["check", &bad],
    ] {
        let stderr = assert_bad_input(&tcc(&args));
        // rustc style: where, the line, a caret; the same text as the library.
        let expected = tcc_plan::compile_file(Path::new(&bad))
            .unwrap_err()
            .render();
        assert_eq!(stderr, expected, "{args:?}");
    }
}

#[test]
fn diff_reports_both_bad_files() {
    let stderr = assert_bad_input(&tcc(&["plan", "--diff", "nope-a.sched", "nope-b.sched"]));
    assert!(stderr.contains("cannot read nope-a.sched"), "{stderr}");
    assert!(stderr.contains("cannot read nope-b.sched"), "{stderr}");
}

#[test]
fn bad_command_lines_exit_2_with_usage() {
    for (args, needle) in [
        (
            vec!["plan", "--show", "no/such/file.sched"],
            "cannot read no/such/file.sched",
        ),
        (vec!["plan"], "required arguments were not provided"),
        (
            vec!["plan", "--diff", "schedules/fora2.sched"],
            "--diff compares two schedules",
        ),
        (
            vec!["plan", "schedules/fora2.sched", "schedules/fora3.sched"],
            "two only with --diff",
        ),
        (
            vec!["plan", "--emit", "yaml", "schedules/fora2.sched"],
            "invalid value 'yaml'",
        ),
        (
            vec!["plan", "--show", "--diff", "a.sched", "b.sched"],
            "cannot be used with",
        ),
        (vec!["check"], "required arguments were not provided"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let stderr = assert_bad_input(&tcc(&args));
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn closed_stdout_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcc"))
        .args(["plan", "--show", "schedules/pixart-fora3-tcc.sched"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}
