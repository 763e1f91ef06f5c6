//! Running the built `tcc` binary in the workspace-level tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `tcc` with `args` from the repository root.
pub fn tcc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcc"))
        .args(args)
        .output()
        .expect("the tcc binary runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Asserts exit status 2, nothing on stdout, a message on stderr, no panic.
pub fn assert_bad_input(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Asserts exit status 0 and returns stdout.
pub fn assert_ok(out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    stdout
}

/// Copies the files of `from` (not its folders) into `to`, created if needed.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Assembles the tiny random PixArt-α pipeline in `pipe` from the committed
/// fixtures: transformer/ (tools/golden/tiny_pixart_pipeline.py),
/// text_encoder/ and tokenizer/ (crates/tcc-text), vae/ (crates/tcc-vae).
pub fn tiny_pixart_pipeline(pipe: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(
        &root.join("tests/fixtures/tiny-pixart/transformer"),
        &pipe.join("transformer"),
    );
    let text = root.join("crates/tcc-text/tests/fixtures/tiny-pipeline");
    copy_dir(&text.join("text_encoder"), &pipe.join("text_encoder"));
    copy_dir(&text.join("tokenizer"), &pipe.join("tokenizer"));
    copy_dir(
        &root.join("crates/tcc-vae/tests/fixtures/tiny-vae"),
        &pipe.join("vae"),
    );
}
