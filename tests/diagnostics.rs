//! The rendered diagnostic of every bad schedule in `tests/bad/`, as insta
//! snapshots (`tests/snapshots/diagnostics__*.snap`). Each file starts with
//! a comment saying what is wrong with it; review a changed snapshot
//! against that comment. Accept new ones with `INSTA_UPDATE=always cargo
//! test --test diagnostics` (or `cargo insta review`).

use std::path::{Path, PathBuf};

fn bad_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/bad")
        .expect("tests/bad exists (cargo runs tests from the package root)")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sched"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_schedule_renders_its_diagnostic() {
    let files = bad_files();
    assert!(files.len() >= 12, "only {} bad schedules", files.len());
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        // A relative path, so that the snapshots do not depend on the checkout.
        let rel = Path::new("tests/bad").join(path.file_name().unwrap());
        let err = match tcc_plan::compile_file(&rel) {
            Ok(_) => panic!("{} compiled, but it is meant to be rejected", rel.display()),
            Err(e) => e,
        };
        let rendered = err.render();
        assert!(rendered.starts_with("error: "), "{rendered}");
        assert!(
            rendered.contains(&format!("--> {}:", rel.display())),
            "{rendered}"
        );
        insta::assert_snapshot!(stem, rendered);
    }
}

#[test]
fn unreadable_file_names_the_file() {
    let err = tcc_plan::compile_file(Path::new("tests/bad/no-such-file.sched")).unwrap_err();
    let text = err.render();
    assert!(
        text.starts_with("error: cannot read tests/bad/no-such-file.sched: "),
        "{text}"
    );
}
