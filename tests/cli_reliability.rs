//! What tcc promises about its outputs (docs/reliability.md), run as the
//! built binary: the same inputs give the same bytes, samples do not
//! depend on the batch size, files get the umask's mode, and no
//! temporary file survives an interrupted write or a killed run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_ok, tcc};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Two calibrations with the same settings write the same bytes (the
/// metadata once came out in a random order).
#[test]
fn the_same_calibration_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("{i}.safetensors"));
        assert_ok(&tcc(&[
            "calibrate",
            "schedules/fora3.sched",
            "--samples",
            "2",
            "--validation-samples",
            "2",
            "--out",
            s(&out),
        ]));
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0] == files[1], "two identical calibrations differ");
}

/// Samples drawn in batches of 3 and of 16 are the same samples, byte for
/// byte, and so are two runs: a sample's noise depends only on the seed
/// and its index.
#[test]
fn samples_do_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, bs) in ["3", "16", "16"].into_iter().enumerate() {
        let out = dir.path().join(format!("{i}.safetensors"));
        assert_ok(&tcc(&[
            "sample",
            "schedules/fora3.sched",
            "--n",
            "5",
            "--seed",
            "7",
            "--batch-size",
            bs,
            "--latents",
            s(&out),
        ]));
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0] == files[1], "batch size 3 and 16 differ");
    assert!(files[1] == files[2], "two identical runs differ");
}

/// The same checkpoint converts to the same bytes.
#[test]
fn the_same_checkpoint_converts_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pt = "crates/tcc-model/tests/fixtures/dit_tiny/original.pt";
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    assert_ok(&tcc(&["convert", pt, s(&a)]));
    assert_ok(&tcc(&["convert", pt, s(&b)]));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

/// Outputs get the mode the umask leaves (they used to be 0600 whatever
/// the umask).
#[cfg(unix)]
#[test]
fn outputs_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (umask, mode) in [("022", 0o644), ("027", 0o640)] {
        let out = dir.path().join(format!("{umask}.safetensors"));
        let run = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask}; exec {} sample schedules/fora3.sched --n 1 --latents {}",
                env!("CARGO_BIN_EXE_tcc"),
                s(&out)
            ))
            .output()
            .unwrap();
        assert_ok(&run);
        let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "umask {umask}: mode {got:o}");
    }
}

/// A later run removes the temporary files a killed run left in the folder
/// it writes into (a SIGKILL cannot be caught), and keeps those of live
/// processes.
#[test]
fn stale_temporary_files_are_removed_by_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".x.safetensors.tcc-tmp-4294967294-0");
    let live = dir
        .path()
        .join(format!(".y.npz.tcc-tmp-{}-0", std::process::id()));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&live, b"in progress").unwrap();
    let out = dir.path().join("x.safetensors");
    assert_ok(&tcc(&[
        "sample",
        "schedules/fora3.sched",
        "--n",
        "1",
        "--latents",
        s(&out),
    ]));
    assert!(!stale.exists(), "{:?}", names(dir.path()));
    assert!(live.exists());
    assert!(out.exists());
}

/// SIGINT or SIGTERM while an output is being written: the temporary file
/// is removed, no output appears, and the process ends by the signal.
#[cfg(unix)]
#[test]
fn an_interrupted_write_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    for signal in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcc"))
            .args(["sample", "schedules/fora3.sched", "--n", "1", "--latents", s(&out)])
            // Holds the finished temporary file for a minute before the rename.
            .env("TCC_TEST_COMMIT_DELAY_MS", "60000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !names(dir.path()).iter().any(|n| n.contains(".tcc-tmp-")) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no temporary file appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let kill = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        let expected = if signal == "INT" { 2 } else { 15 };
        assert_eq!(status.signal(), Some(expected), "{status:?}");
        assert!(
            names(dir.path()).is_empty(),
            "SIG{signal} left {:?}",
            names(dir.path())
        );
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!err.contains("panicked"), "{err}");
    }
}
