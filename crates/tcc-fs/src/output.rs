//! Writing output files atomically, with temporary files that a later run
//! (or this one, on SIGINT / SIGTERM) can recognise and remove.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What every temporary file's name contains: `.NAME.tcc-tmp-PID-N`.
pub const TEMP_MARKER: &str = ".tcc-tmp-";

/// Temporary files of this process not yet renamed into place.
fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file this process has open and keeps any new one
/// from being created: for a signal handler, right before the process ends.
/// Threads that go on to create or rename an output block.
pub fn remove_pending_for_exit() {
    let guard = pending();
    for p in guard.iter() {
        let _ = std::fs::remove_file(p);
    }
    // Held until the process ends.
    std::mem::forget(guard);
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path (it ends in `..` or `/`)",
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(target).join(format!(
        ".{}{TEMP_MARKER}{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The process id in a temporary file's name, if it is one of ours.
fn temp_owner(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, rest) = name.rsplit_once(TEMP_MARKER)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` still runs. Where that cannot be told, it is
/// assumed to run (its files are left alone).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporary files of finished processes in `dir`, once per
/// folder and process.
fn remove_stale(dir: &Path) {
    static SWEPT: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let key = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let first = SWEPT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key);
    if !first {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if !alive(pid) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A file being written: a temporary file beside its target until
/// [`AtomicFile::commit`] renames it over the target. Dropped without a
/// commit (an error, a panic), the temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Starts writing `target`. Stale temporary files of finished runs in
    /// its folder are removed first.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let temp = temp_path(target)?;
        remove_stale(parent_dir(target));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o666);
        // Registered before it exists, under the lock, so that a signal
        // handler either sees it or stops it from being created.
        let mut list = pending();
        let file = options.open(&temp)?;
        list.push(temp.clone());
        drop(list);
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// The temporary file, for writers that open a path themselves (it
    /// exists; truncate it rather than creating another).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("the file is open until committed")
    }

    /// Flushes the file to disk and renames it over the target.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("the file is open until committed");
        file.sync_all()?;
        drop(file);
        if let Some(delay) = test_commit_delay() {
            std::thread::sleep(delay);
        }
        let mut list = pending();
        std::fs::rename(&self.temp, &self.target)?;
        list.retain(|p| p != &self.temp);
        drop(list);
        // The rename itself reaches the disk with the folder.
        if let Ok(dir) = File::open(parent_dir(&self.target)) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Still registered: not renamed into place.
        let mut list = pending();
        if list.contains(&self.temp) {
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
            list.retain(|p| p != &self.temp);
        }
    }
}

/// A pause between writing a temporary file and renaming it, from the
/// environment variable `TCC_TEST_COMMIT_DELAY_MS`: for tests that
/// interrupt a write (tests/cli_reliability.rs); unset, there is none.
fn test_commit_delay() -> Option<std::time::Duration> {
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms: u64 = std::env::var("TCC_TEST_COMMIT_DELAY_MS")
            .ok()?
            .parse()
            .ok()?;
        Some(std::time::Duration::from_millis(ms))
    })
}

/// Writes `bytes` to `path` through an [`AtomicFile`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// What an output path should become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A file (written atomically): its folder must exist and be writable,
    /// and the path must not be a folder.
    File,
    /// A folder to write files into: created if missing (its parent must
    /// exist: missing parents are not created, as for files), or an
    /// existing writable folder.
    Dir,
}

/// Whether `path` can be written as `kind`, checked before any work: a
/// message for the user if not. Writability is tried by creating (and
/// removing) a temporary file, so read-only mounts and ACLs count.
pub fn check_output(path: &Path, kind: OutputKind) -> Result<(), String> {
    let meta = std::fs::metadata(path).ok();
    let probe_in = |dir: &Path| -> Result<(), String> {
        match std::fs::metadata(dir) {
            Err(_) => return Err(format!("no such folder: {}", dir.display())),
            Ok(m) if !m.is_dir() => return Err(format!("{} is not a folder", dir.display())),
            Ok(_) => {}
        }
        AtomicFile::create(&dir.join("probe"))
            .map(drop)
            .map_err(|e| format!("cannot write into {}: {e}", dir.display()))
    };
    match kind {
        OutputKind::File => {
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                return Err("is a folder, expected a file path".into());
            }
            if path.file_name().is_none() {
                return Err("not a file path".into());
            }
            probe_in(parent_dir(path))
        }
        OutputKind::Dir => match meta {
            Some(m) if m.is_dir() => probe_in(path),
            Some(_) => Err("exists and is not a folder".into()),
            None => probe_in(parent_dir(path)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_renames_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"abc").unwrap();
        let temp = names(dir.path());
        assert_eq!(temp.len(), 1);
        assert!(temp[0].starts_with(".out.bin.tcc-tmp-"), "{temp:?}");
        assert_eq!(temp_owner(&temp[0]), Some(std::process::id()));
        let temp_file = f.temp_path().to_path_buf();
        f.commit().unwrap();
        assert_eq!(names(dir.path()), ["out.bin"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"abc");
        assert!(!pending().contains(&temp_file));

        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"half").unwrap();
        let temp_file = f.temp_path().to_path_buf();
        drop(f);
        assert_eq!(names(dir.path()), ["out.bin"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"abc");
        assert!(!pending().contains(&temp_file));
    }

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this id (Linux's pid_max is at most 2^22).
        let stale = dir.path().join(".x.png.tcc-tmp-4294967294-0");
        let mine = dir
            .path()
            .join(format!(".y.png.tcc-tmp-{}-999999", std::process::id()));
        let other = dir.path().join(".z.tmp123");
        for p in [&stale, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        write_atomically(&dir.path().join("a.txt"), b"a").unwrap();
        let left = names(dir.path());
        if cfg!(target_os = "linux") {
            assert!(!left.contains(&".x.png.tcc-tmp-4294967294-0".to_string()));
        }
        assert!(left.contains(&".z.tmp123".to_string()), "{left:?}");
        assert!(mine.exists(), "a live process's file is kept");
    }

    #[cfg(unix)]
    #[test]
    fn files_get_the_umask_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.txt");
        write_atomically(&p, b"m").unwrap();
        // Compared with a file created the ordinary way, under the same umask.
        let q = dir.path().join("plain.txt");
        std::fs::write(&q, b"q").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&q));
    }

    #[test]
    fn output_checks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(check_output(&d.join("a.png"), OutputKind::File).is_ok());
        let e = check_output(&d.join("missing/a.png"), OutputKind::File).unwrap_err();
        assert!(e.contains("no such folder"), "{e}");
        let e = check_output(d, OutputKind::File).unwrap_err();
        assert!(e.contains("is a folder"), "{e}");
        assert!(check_output(&d.join("new"), OutputKind::Dir).is_ok());
        assert!(check_output(d, OutputKind::Dir).is_ok());
        std::fs::write(d.join("f"), b"").unwrap();
        let e = check_output(&d.join("f"), OutputKind::Dir).unwrap_err();
        assert!(e.contains("not a folder"), "{e}");
        let e = check_output(&d.join("f/x.png"), OutputKind::File).unwrap_err();
        assert!(e.contains("not a folder"), "{e}");
        // Probing leaves nothing behind.
        assert_eq!(names(d), ["f"]);
    }
}
