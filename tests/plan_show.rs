//! `tcc plan --show` of every schedule in `schedules/`, as insta snapshots
//! (`tests/snapshots/plan_show__<name>.snap`). A new schedule gets its
//! snapshot on the first run; accept it with `INSTA_UPDATE=always cargo test
//! --test plan_show` (or `cargo insta review`) after reading it: the grid
//! must show what the schedule's comment says it does.

use std::path::PathBuf;
use std::process::Command;

/// Every `.sched` under `schedules/`, subfolders (`schedules/study/`)
/// included, as paths relative to the package root.
fn schedules() -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir)
            .expect("schedules/ exists (cargo runs tests from the package root)")
        {
            let path = e.expect("readable entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "sched") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk("schedules".as_ref(), &mut files);
    files.sort();
    files
}

#[test]
fn every_shipped_schedule_shows_its_plan() {
    let files = schedules();
    assert!(files.len() >= 10, "only {} schedules", files.len());
    let mut failed = Vec::new();
    for path in files {
        // `study/fora3-affine` -> snapshot `study__fora3-affine`.
        let inner = path.strip_prefix("schedules").unwrap().with_extension("");
        let stem = inner.to_string_lossy().replace('/', "__");
        // Relative, as a user types it: the text shows the path as given.
        let rel = path.to_string_lossy().into_owned();
        let out = Command::new(env!("CARGO_BIN_EXE_tcc"))
            .args(["plan", "--show", &rel])
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(0), "{rel}: {stderr}");
        assert!(stderr.is_empty(), "{rel}: {stderr}");
        assert!(
            stdout.starts_with(&format!("source      {rel}\n")),
            "{stdout}"
        );

        // The same text as the library renders for the compiled plan.
        let mut plan = tcc_plan::compile_file(rel.as_ref()).unwrap();
        plan.source = rel.clone();
        assert_eq!(stdout, plan.show(), "{rel}");

        // Snapshot every file, then report all mismatches at once.
        let result = std::panic::catch_unwind(|| insta::assert_snapshot!(stem.as_str(), stdout));
        if result.is_err() {
            failed.push(rel);
        }
    }
    assert!(failed.is_empty(), "snapshots differ: {failed:?}");
}
