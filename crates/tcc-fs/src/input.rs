//! Reading input files: regular files only, bounded in size, text in UTF-8.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}

/// `1.5 GB`-style sizes for messages.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The size of `path` if it is a regular file (symbolic links followed).
/// Directories, FIFOs, sockets and devices are refused without being
/// opened: opening a FIFO blocks until someone writes to it, and a device
/// such as `/dev/zero` never ends.
pub fn check_input_file(path: &Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(invalid("is a directory, expected a file"));
    }
    if !meta.is_file() {
        return Err(invalid(
            "not a regular file (a FIFO, socket or device): tcc reads only regular files",
        ));
    }
    Ok(meta.len())
}

/// The bytes of the regular file `path`, refused if it holds more than
/// `max_bytes` (checked before reading, and again while reading, in case
/// the file grows).
pub fn read_input(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let len = check_input_file(path)?;
    let too_large = |len: u64| {
        invalid(format!(
            "{} is more than the {} such a file may have",
            human_bytes(len),
            human_bytes(max_bytes)
        ))
    };
    if len > max_bytes {
        return Err(too_large(len));
    }
    let file = File::open(path)?;
    // The path may have been replaced between the check and the open.
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The text of the regular file `path` (see [`read_input`]). Text that is
/// not UTF-8 is an error naming the line and column (in characters,
/// 1-based) of the first invalid byte.
pub fn read_input_text(path: &Path, max_bytes: u64) -> io::Result<String> {
    let bytes = read_input(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        // Everything before `at` is valid UTF-8.
        let before = std::str::from_utf8(&bytes[..at]).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text: line {line}, column {column} has the byte 0x{:02x}; save the file as UTF-8",
                bytes[at]
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, b"ok\nab\xc3\xa9c\xff\n").unwrap();
        let e = read_input_text(&p, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("line 2, column 5") && e.contains("0xff"), "{e}");
        std::fs::write(&p, "é\n").unwrap();
        assert_eq!(read_input_text(&p, 1 << 20).unwrap(), "é\n");
    }

    #[test]
    fn size_and_kind_are_checked_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, [0u8; 100]).unwrap();
        let e = read_input(&p, 99).unwrap_err().to_string();
        assert!(e.contains("100 bytes") && e.contains("99 bytes"), "{e}");
        assert_eq!(read_input(&p, 100).unwrap().len(), 100);
        let e = read_input(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        #[cfg(unix)]
        {
            let e = read_input(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(12_000_000_000_000), "12.0 TB");
    }
}
