//! `.npz` files of images, the ADM evaluator's layout (uint8 NHWC images
//! in `arr_0`, uint8 labels in `arr_1` when every label fits), written
//! batch by batch: memory holds one batch of images, and the file appears
//! under its name only once complete (a `tcc_fs::AtomicFile`).
//!
//! A shard of a sampling run (`tcc sample --shard I/N`) writes the same
//! layout plus `indices` (int64, the samples' indices in the whole run) and
//! says which run it belongs to in the archive comment (JSON); `tcc merge`
//! joins the shards into the file the whole run writes, byte for byte.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tcc_core::{in_shard_order, Shard};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::error::CliError;

fn fail(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Failure(format!("{}: {e}", path.display()))
}

/// The `.npy` (format 1.0) header of an array of `descr` and `shape`.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Which sampling run a shard's `.npz` belongs to: what must agree for
/// shards to be joined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleShard {
    /// Always `tcc-sample-shard/1`.
    pub format: String,
    pub plan_hash: tcc_plan::PlanHash,
    pub model: String,
    /// SHA-256 of the priors file applied, if any.
    pub priors: Option<String>,
    pub seed: u64,
    pub n: usize,
    pub batch_size: usize,
    pub class: Option<usize>,
    /// SHA-256 of the prompts, in order (text-conditioned models).
    pub prompts: Option<String>,
    pub shard: Shard,
}

pub const SAMPLE_SHARD_FORMAT: &str = "tcc-sample-shard/1";

/// Writes images `[n, size, size, 3]` batch by batch.
pub struct NpzWriter {
    path: PathBuf,
    atomic: tcc_fs::AtomicFile,
    zip: ZipWriter<File>,
    n: usize,
    per: usize,
    written: usize,
    opts: SimpleFileOptions,
}

impl NpzWriter {
    /// Starts `path` (as a temporary file beside it) for `n` images of
    /// `size` x `size` pixels.
    pub fn create(path: &Path, n: usize, size: usize) -> Result<NpzWriter, CliError> {
        let mut atomic = tcc_fs::AtomicFile::create(path).map_err(|e| fail(path, e))?;
        // The zip writer seeks (to fill in entry headers): it writes through
        // a handle of the temporary file, which `atomic` renames once done
        // and removes if dropped before.
        let file = atomic.file().try_clone().map_err(|e| fail(path, e))?;
        let per = size * size * 3;
        let mut opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        // Zip64 only where the images need it (4 GiB and over: 50k images
        // of 256x256 take 9.8 GB), so that smaller files keep the plain layout.
        if (n * per) as u64 + 128 >= u32::MAX as u64 {
            opts = opts.large_file(true);
        }
        let mut zip = ZipWriter::new(file);
        zip.start_file("arr_0.npy", opts)
            .map_err(|e| fail(path, e))?;
        zip.write_all(&npy_header("|u1", &[n, size, size, 3]))
            .map_err(|e| fail(path, e))?;
        Ok(NpzWriter {
            path: path.to_path_buf(),
            atomic,
            zip,
            n,
            per,
            written: 0,
            opts: SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
        })
    }

    /// Appends images (uint8 NHWC, whole images).
    pub fn write_images(&mut self, nhwc: &[u8]) -> Result<(), CliError> {
        if !nhwc.len().is_multiple_of(self.per) || self.written + nhwc.len() / self.per > self.n {
            return Err(fail(
                &self.path,
                "more image bytes than the header announced",
            ));
        }
        self.zip.write_all(nhwc).map_err(|e| fail(&self.path, e))?;
        self.written += nhwc.len() / self.per;
        Ok(())
    }

    /// Copies `len` images' bytes from `from`.
    fn copy_images(&mut self, from: &mut dyn Read, len: usize) -> Result<(), CliError> {
        let mut buf = vec![0u8; self.per];
        for _ in 0..len {
            from.read_exact(&mut buf)
                .map_err(|e| fail(&self.path, format!("reading a shard's images: {e}")))?;
            self.write_images(&buf)?;
        }
        Ok(())
    }

    /// Writes the labels (`arr_1`, uint8, when all fit), the shard's
    /// `indices` and comment if given, and renames the file into place.
    pub fn finish(
        mut self,
        labels: &[u32],
        shard: Option<(&[u64], &SampleShard)>,
    ) -> Result<(), CliError> {
        let path = self.path.clone();
        if self.written != self.n {
            return Err(fail(
                &path,
                format!("{} of {} images were written", self.written, self.n),
            ));
        }
        if labels.iter().all(|&l| l < 256) {
            let l: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
            self.zip
                .start_file("arr_1.npy", self.opts)
                .map_err(|e| fail(&path, e))?;
            self.zip
                .write_all(&npy_header("|u1", &[l.len()]))
                .and_then(|_| self.zip.write_all(&l))
                .map_err(|e| fail(&path, e))?;
        }
        if let Some((indices, meta)) = shard {
            self.zip
                .start_file("indices.npy", self.opts)
                .map_err(|e| fail(&path, e))?;
            let bytes: Vec<u8> = indices
                .iter()
                .flat_map(|&i| (i as i64).to_le_bytes())
                .collect();
            self.zip
                .write_all(&npy_header("<i8", &[indices.len()]))
                .and_then(|_| self.zip.write_all(&bytes))
                .map_err(|e| fail(&path, e))?;
            let comment = serde_json::to_string(meta).map_err(|e| fail(&path, e))?;
            self.zip.set_comment(comment);
        }
        let file = self.zip.finish().map_err(|e| fail(&path, e))?;
        drop(file);
        self.atomic.commit().map_err(|e| fail(&path, e))
    }
}

/// The shape in a `.npy` header.
fn npy_shape(from: &mut dyn Read, what: &str) -> Result<(String, Vec<usize>), String> {
    let mut pre = [0u8; 10];
    from.read_exact(&mut pre)
        .map_err(|e| format!("{what}: {e}"))?;
    if &pre[..8] != b"\x93NUMPY\x01\x00" {
        return Err(format!("{what} is not a version 1.0 .npy array"));
    }
    let len = u16::from_le_bytes([pre[8], pre[9]]) as usize;
    let mut header = vec![0u8; len];
    from.read_exact(&mut header)
        .map_err(|e| format!("{what}: {e}"))?;
    let header = String::from_utf8_lossy(&header).into_owned();
    let field = |key: &str| -> Option<String> {
        let at = header.find(key)? + key.len();
        let rest = header[at..].trim_start();
        Some(rest.to_string())
    };
    let descr = field("'descr':")
        .and_then(|r| r.split('\'').nth(1).map(str::to_string))
        .ok_or_else(|| format!("{what}: no descr in the header"))?;
    let shape_text = field("'shape':")
        .and_then(|r| Some(r[r.find('(')? + 1..r.find(')')?].to_string()))
        .ok_or_else(|| format!("{what}: no shape in the header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("{what}: bad shape `{shape_text}`"))
        })
        .collect::<Result<_, _>>()?;
    Ok((descr, shape))
}

/// One shard's `.npz`, opened.
struct ShardFile {
    path: PathBuf,
    meta: SampleShard,
    archive: ZipArchive<File>,
    indices: Vec<u64>,
    labels: Option<Vec<u8>>,
    size: usize,
    len: usize,
}

fn open_shard(path: &Path) -> Result<ShardFile, CliError> {
    let bad = |m: String| CliError::input(format!("{}: {m}", path.display()));
    tcc_fs::check_input_file(path).map_err(|e| bad(e.to_string()))?;
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut archive =
        ZipArchive::new(file).map_err(|e| bad(format!("not a readable .npz ({e})")))?;
    let comment = String::from_utf8_lossy(archive.comment()).into_owned();
    let meta: SampleShard = serde_json::from_str(&comment)
        .ok()
        .filter(|m: &SampleShard| m.format == SAMPLE_SHARD_FORMAT)
        .ok_or_else(|| {
            bad("not a shard of a sampling run (`tcc sample --shard I/N --npz` writes them)".into())
        })?;
    let indices: Vec<u64> = {
        let mut e = archive
            .by_name("indices.npy")
            .map_err(|e| bad(format!("indices.npy: {e}")))?;
        let (descr, shape) = npy_shape(&mut e, "indices.npy").map_err(bad)?;
        if descr != "<i8" || shape.len() != 1 {
            return Err(bad(format!(
                "indices.npy is {descr} {shape:?}, expected <i8 [n]"
            )));
        }
        let mut raw = vec![0u8; shape[0].saturating_mul(8)];
        e.read_exact(&mut raw)
            .map_err(|e| bad(format!("indices.npy: {e}")))?;
        raw.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as u64)
            .collect()
    };
    let labels = match archive.by_name("arr_1.npy") {
        Ok(mut e) => {
            let (_, s) = npy_shape(&mut e, "arr_1.npy").map_err(bad)?;
            let mut l = vec![0u8; s.first().copied().unwrap_or(0)];
            e.read_exact(&mut l)
                .map_err(|e| bad(format!("arr_1.npy: {e}")))?;
            Some(l)
        }
        Err(_) => None,
    };
    let (size, len) = {
        let mut e = archive
            .by_name("arr_0.npy")
            .map_err(|e| bad(format!("arr_0.npy: {e}")))?;
        let (descr, s) = npy_shape(&mut e, "arr_0.npy").map_err(bad)?;
        if descr != "|u1" || s.len() != 4 || s[1] != s[2] || s[3] != 3 {
            return Err(bad(format!(
                "arr_0.npy is {descr} {s:?}, expected |u1 [n, size, size, 3]"
            )));
        }
        (s[1], s[0])
    };
    if indices.len() != len || labels.as_ref().is_some_and(|l| l.len() != len) {
        return Err(bad(format!(
            "{len} images but {} indices and {} labels",
            indices.len(),
            labels.as_ref().map_or(0, |l| l.len())
        )));
    }
    Ok(ShardFile {
        path: path.to_path_buf(),
        meta,
        archive,
        indices,
        labels,
        size,
        len,
    })
}

/// Joins the `.npz` shards of one sampling run into `out`: the file the
/// run writes unsharded. Refuses shards of different runs and duplicate or
/// missing shards (exit status 2) before writing anything.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<usize, CliError> {
    let shards = parts
        .iter()
        .map(|p| open_shard(p))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &shards[0];
    let (name0, meta0) = (first.path.display().to_string(), first.meta.clone());
    let count = meta0.shard.count;
    for s in &shards {
        let mut m = s.meta.clone();
        m.shard = meta0.shard;
        if m != meta0 {
            let what = if m.plan_hash != meta0.plan_hash {
                format!("plan {} against {}", m.plan_hash, meta0.plan_hash)
            } else if m.priors != meta0.priors {
                "other priors".to_string()
            } else {
                "other settings (model, seed, n, batch size, class or prompts)".to_string()
            };
            return Err(CliError::input(format!(
                "{} and {name0} are not shards of one sampling run: {what}",
                s.path.display()
            )));
        }
        if s.meta.shard.count != count {
            return Err(CliError::input(format!(
                "{} is shard {} but {name0} is shard {}",
                s.path.display(),
                s.meta.shard,
                meta0.shard
            )));
        }
    }
    let mut shards: Vec<_> = in_shard_order(
        count,
        shards
            .into_iter()
            .map(|s| (s.meta.shard, s.path.display().to_string(), s)),
    )
    .map_err(CliError::input)?
    .into_iter()
    .map(|(_, s)| s)
    .collect();
    for s in &shards {
        let want = s.meta.shard.samples(meta0.n, meta0.batch_size);
        let expect: Vec<u64> = (want.start as u64..want.end as u64).collect();
        if s.indices != expect || s.size != shards[0].size {
            return Err(CliError::input(format!(
                "{}: holds samples other than shard {}'s {}..{} (or images of another size)",
                s.path.display(),
                s.meta.shard,
                want.start,
                want.end
            )));
        }
    }
    let size = shards[0].size;
    let mut labels: Option<Vec<u32>> = Some(Vec::with_capacity(meta0.n));
    let mut writer = NpzWriter::create(out, meta0.n, size)?;
    for s in shards.iter_mut() {
        match (&mut labels, &s.labels) {
            (Some(all), Some(l)) => all.extend(l.iter().map(|&x| x as u32)),
            _ => labels = None,
        }
        let path = s.path.clone();
        let mut e = s.archive.by_name("arr_0.npy").map_err(|e| fail(&path, e))?;
        npy_shape(&mut e, "arr_0.npy").map_err(|m| fail(&path, m))?;
        writer.copy_images(&mut e, s.len)?;
    }
    // Labels of 256 and over are not written (uint8): mark them so.
    let labels = labels.unwrap_or_else(|| vec![u32::MAX; meta0.n]);
    writer.finish(&labels, None)?;
    Ok(meta0.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_reads_back() {
        let h = npy_header("|u1", &[1, 2, 1, 3]);
        assert_eq!(h.len() % 64, 0);
        let (descr, shape) = npy_shape(&mut &h[..], "x").unwrap();
        assert_eq!((descr.as_str(), shape), ("|u1", vec![1, 2, 1, 3]));
        let (_, shape) = npy_shape(&mut &npy_header("<i8", &[7])[..], "x").unwrap();
        assert_eq!(shape, vec![7]);
    }
}
