//! What tcc promises about its outputs (docs/reliability.md), run as the
//! built binary: the same inputs give the same bytes, a sample's noise
//! does not depend on the batch size, files get the umask's mode, and no
//! temporary file survives an interrupted write or a killed run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_ok, tcc};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// FORA N = 3 over 6 DDIM steps of the embedded `tiny` model, priors at
/// steps 1 and 2: the same code paths as schedules/fora3.sched, in a
/// fraction of its time.
const SHORT: &str =
    "[model]\nname = \"tiny\"\n[sampler]\nkind = \"ddim\"\nsteps = 6\nguidance = 1.5\n\
                     [[cache]]\nrefresh = \"every 3\"\n\
                     [calibration]\nmethod = \"tcc\"\nsteps = \"1, 2\"\nalpha = 0.5\nsamples = 2\n";

/// [`SHORT`] as `dir/short.sched`.
fn short_schedule(dir: &Path) -> PathBuf {
    let path = dir.join("short.sched");
    std::fs::write(&path, SHORT).unwrap();
    path
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
    let sched = short_schedule(dir.path());
    let mut files = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("{i}.safetensors"));
        assert_ok(&tcc(&[
            "calibrate",
            s(&sched),
            "--samples",
            "2",
            "--validation-samples",
            "0",
            "--out",
            s(&out),
        ]));
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0] == files[1], "two identical calibrations differ");
}

/// The same run writes the same bytes; samples drawn in batches of 2 (the
/// second batch starts inside the seed's stream) and of 3 get the same
/// noise, so they differ only by the rounding of the model's batched
/// kernels (measured: 3.6e-5 at most, on values of order 1). Noise that
/// depended on the batching would change them by order 1.
#[test]
fn samples_do_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let sched = short_schedule(dir.path());
    let mut files = Vec::new();
    for (i, bs) in ["2", "3", "3"].into_iter().enumerate() {
        let out = dir.path().join(format!("{i}.safetensors"));
        assert_ok(&tcc(&[
            "sample",
            s(&sched),
            "--n",
            "3",
            "--seed",
            "7",
            "--batch-size",
            bs,
            "--latents",
            s(&out),
        ]));
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[1] == files[2], "two identical runs differ");
    let latents = |bytes: &[u8]| -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let t = st.tensor("latents").unwrap();
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (a, b) = (latents(&files[0]), latents(&files[1]));
    assert_eq!(a.len(), 3 * 3 * 32 * 32);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "batch sizes 2 and 3 differ by {worst}");
}

/// The same checkpoint converts to the same bytes.
#[test]
fn the_same_checkpoint_converts_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pt = "crates/tcc-model/tests/fixtures/dit_tiny/original.pt";
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
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
    let sched = short_schedule(dir.path());
    for (umask, mode) in [("022", 0o644), ("027", 0o640)] {
        let out = dir.path().join(format!("{umask}.safetensors"));
        let run = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask}; exec {} sample {} --n 1 --latents {}",
                env!("CARGO_BIN_EXE_tcc"),
                s(&sched),
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
    let other = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".x.safetensors.tcc-tmp-4294967294-0");
    let live = dir
        .path()
        .join(format!(".y.npz.tcc-tmp-{}-0", std::process::id()));
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&live, b"in progress").unwrap();
    let out = dir.path().join("x.safetensors");
    let sched = short_schedule(other.path());
    assert_ok(&tcc(&[
        "sample",
        s(&sched),
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
    let sched_dir = tempfile::tempdir().unwrap();
    let sched = short_schedule(sched_dir.path());
    for signal in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcc"))
            .args(["sample", s(&sched), "--n", "1", "--latents", s(&out)])
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

/// The streamed `.npz` is a pending temporary file from its first batch:
/// SIGTERM removes it and no output appears.
#[cfg(unix)]
#[test]
fn an_interrupted_npz_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    let sched_dir = tempfile::tempdir().unwrap();
    let sched = short_schedule(sched_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npz");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcc"))
        .args(["sample", s(&sched), "--n", "2", "--batch-size", "1"])
        .args(["--npz", s(&out)])
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
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}
