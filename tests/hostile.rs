//! The hostile-input corpus: every case of `tests/hostile/cases.toml` run
//! as the built binary, each checked for its exit status, the place its
//! message names, and no output or debris left behind. The binary inputs
//! (priors files, a damaged checkpoint, a FIFO) are made here, from the
//! plan they are bound to, so they never go stale.
//!
//! `TCC_BIN=/path/to/tcc cargo test --test hostile` runs the corpus
//! against another build (an older one, to see what it got wrong).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::tensor::{Dtype, TensorView};
use tcc_calib::{Prior, PriorMeta, PriorSet, Site};
use tcc_core::{Branch, CalibMode, PriorKind, Selection};

/// Tensors of a safetensors file as (name, shape, values).
type RawTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    defect: String,
    #[serde(default)]
    args: Vec<String>,
    sh: Option<String>,
    make: Option<String>,
    exit: i32,
    #[serde(default)]
    stderr: Vec<String>,
    #[serde(default)]
    stderr_not: Vec<String>,
    stdout: Option<Vec<String>>,
    #[serde(default)]
    absent: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

/// A case that runs longer than this is stuck (a FIFO read, a runaway
/// allocation): it fails instead of hanging the suite.
const TIMEOUT: Duration = Duration::from_secs(120);

fn tcc_bin() -> PathBuf {
    std::env::var_os("TCC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tcc")))
}

/// The fora3 priors file every priors case starts from: identity priors
/// at every calibrated site, bound to the plan.
fn fora3_set() -> PriorSet {
    let plan = tcc_plan::compile_file(Path::new("schedules/fora3.sched")).unwrap();
    let d = plan.model.hidden;
    let mut priors = BTreeMap::new();
    let mut alphas = BTreeMap::new();
    for (step, list) in tcc_calib::calibrated_sites(&plan) {
        for (block, bi) in list {
            let site = Site::new(step, plan.branches()[bi], block);
            let mut p = Prior::identity(d);
            p.kind = PriorKind::Procrustes;
            priors.insert(site, p);
            alphas.insert(site, 0.5);
        }
    }
    PriorSet {
        meta: PriorMeta {
            plan_hash: plan.hash(),
            model: plan.model.name.clone(),
            alpha: 0.5,
            mode: CalibMode::Consistent,
            prior: PriorKind::Procrustes,
            samples: 4,
            seed: 0,
            tool_version: "0.1.0".into(),
            select: Selection::Fixed,
            validation: None,
            report: None,
        },
        priors,
        alphas,
    }
}

/// `tensors` (name, shape, values) and `metadata` as a safetensors file.
fn write_raw(path: &Path, tensors: &RawTensors, metadata: &BTreeMap<String, String>) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let md: HashMap<String, String> = metadata.clone().into_iter().collect();
    std::fs::write(
        path,
        safetensors::tensor::serialize(views, Some(md)).unwrap(),
    )
    .unwrap();
}

/// The tensors and metadata of a saved set, to edit.
fn raw_of(set: &PriorSet, dir: &Path) -> (RawTensors, BTreeMap<String, String>) {
    let path = dir.join("base.safetensors");
    set.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md: BTreeMap<String, String> = header.metadata().clone().unwrap().into_iter().collect();
    let mut tensors = Vec::new();
    for name in st.names() {
        let v = st.tensor(name).unwrap();
        let values = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push((name.to_string(), v.shape().to_vec(), values));
    }
    (tensors, md)
}

/// Writes the hostile input `what` into `dir`.
fn make(what: &str, dir: &Path) {
    let out = dir.join("p.safetensors");
    let site = Site::new(1, Branch::Attn, 0);
    match what {
        "priors-zero-width" => {
            let (mut t, md) = raw_of(&fora3_set(), dir);
            for (name, shape, values) in t.iter_mut() {
                if name.starts_with("step1.attn.layer0.") && shape.len() == 2 {
                    let rows = if name.ends_with(".R") { 0 } else { 1 };
                    *shape = vec![rows, 0];
                    values.clear();
                }
            }
            write_raw(&out, &t, &md);
        }
        "priors-huge-values" => {
            // Finite in the file; the folded bias alpha (muA - s muB R)
            // is not.
            let mut set = fora3_set();
            let p = set.priors.get_mut(&site).unwrap();
            p.mu_a.iter_mut().for_each(|x| *x = 3e38);
            p.mu_b.iter_mut().for_each(|x| *x = -3e38);
            set.alphas.insert(site, 1.0);
            set.save(&out).unwrap();
        }
        "priors-wrong-width" => {
            let mut set = fora3_set();
            set.priors
                .values_mut()
                .for_each(|p| *p = Prior::identity(8));
            set.save(&out).unwrap();
        }
        "priors-wrong-rows" => {
            let mut set = fora3_set();
            for p in set.priors.values_mut() {
                p.mu_a = vec![0.0; 3 * p.dim];
                p.mu_b = vec![0.0; 3 * p.dim];
            }
            set.save(&out).unwrap();
        }
        "priors-unknown-mode" => {
            let (t, mut md) = raw_of(&fora3_set(), dir);
            md.insert("mode".into(), "sideways".into());
            write_raw(&out, &t, &md);
        }
        "priors-extra-layer" | "priors-extra-step" => {
            let mut set = fora3_set();
            let extra = if what == "priors-extra-layer" {
                Site::new(1, Branch::Attn, 99)
            } else {
                Site::new(3, Branch::Mlp, 0)
            };
            set.priors.insert(extra, Prior::identity(128));
            set.alphas.insert(extra, 0.5);
            set.save(&out).unwrap();
        }
        "priors-folded-mismatch" => {
            // As older files stored them: M = (1 - alpha) I + alpha s R is
            // the identity here; store it doubled.
            let (mut t, md) = raw_of(&fora3_set(), dir);
            let d = 128;
            let mut m = vec![0f32; d * d];
            for i in 0..d {
                m[i * d + i] = 2.0;
            }
            t.push(("step1.attn.layer0.M".into(), vec![d, d], m));
            write_raw(&out, &t, &md);
        }
        "pt-damaged" => {
            let mut bytes =
                std::fs::read("crates/tcc-model/tests/fixtures/dit_tiny/original.pt").unwrap();
            let mut zip = zip_entries(&bytes);
            zip.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
            let (start, len) = zip[0];
            bytes[start + len / 2] ^= 0x40;
            std::fs::write(dir.join("damaged.pt"), bytes).unwrap();
        }
        "vae-bad-config" => {
            std::fs::create_dir(dir.join("vae")).unwrap();
            std::fs::write(dir.join("vae/config.json"), r#"{"block_out_channels": []}"#).unwrap();
        }
        "t5-weights-fifo" => {
            let te = dir.join("te");
            std::fs::create_dir(&te).unwrap();
            std::fs::copy(
                "crates/tcc-text/tests/fixtures/tiny-pipeline/text_encoder/config.json",
                te.join("config.json"),
            )
            .unwrap();
            let status = Command::new("mkfifo")
                .arg(te.join("model.safetensors"))
                .status()
                .expect("mkfifo runs");
            assert!(status.success());
        }
        "fifo" => {
            let status = Command::new("mkfifo")
                .arg(dir.join("fifo.sched"))
                .status()
                .expect("mkfifo runs");
            assert!(status.success());
        }
        other => panic!("unknown input to make: {other}"),
    }
}

/// (data offset, size) of every stored entry of a zip archive, read from
/// its local headers (signature, 26 bytes of fields, name, extra field).
fn zip_entries(bytes: &[u8]) -> Vec<(usize, usize)> {
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i + 30 <= bytes.len() && u32_at(i) == 0x0403_4b50 {
        let size = u32_at(i + 18);
        let start = i + 30 + u16_at(i + 26) + u16_at(i + 28);
        out.push((start, size));
        i = start + size;
    }
    out
}

fn fill(s: &str, tmp: &Path, tcc: &Path) -> String {
    s.replace("{tmp}", &tmp.display().to_string())
        .replace("{hostile}", "tests/hostile")
        .replace("{tcc}", &tcc.display().to_string())
}

/// Runs one case; the reasons it failed, if it did.
fn run_case(case: &Case, tcc: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(what) = &case.make {
        make(what, tmp.path());
    }
    let mut cmd = match &case.sh {
        Some(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(fill(line, tmp.path(), tcc));
            c
        }
        None => {
            let mut c = Command::new(tcc);
            c.args(case.args.iter().map(|a| fill(a, tmp.path(), tcc)));
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Read both streams on threads, so that a chatty child never blocks.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    let mut failures = Vec::new();
    let Some(status) = status else {
        return vec![format!("still running after {TIMEOUT:?}: killed")];
    };
    if status.code() != Some(case.exit) {
        failures.push(format!(
            "exit status {:?}, expected {}",
            status.code(),
            case.exit
        ));
    }
    if stderr.contains("panicked") {
        failures.push("panicked".into());
    }
    for s in &case.stderr {
        let s = fill(s, tmp.path(), tcc);
        if !stderr.contains(&s) {
            failures.push(format!("stderr lacks `{s}`"));
        }
    }
    for s in &case.stderr_not {
        if stderr.contains(s.as_str()) {
            failures.push(format!("stderr has `{s}`"));
        }
    }
    match &case.stdout {
        Some(want) => {
            for s in want {
                if !stdout.contains(s.as_str()) {
                    failures.push(format!("stdout lacks `{s}`"));
                }
            }
        }
        None if case.exit != 0 && !stdout.is_empty() => {
            failures.push("wrote to stdout: refused only after some work".into());
        }
        None => {}
    }
    for p in &case.absent {
        let p = fill(p, tmp.path(), tcc);
        if Path::new(&p).exists() {
            failures.push(format!("{p} exists"));
        }
    }
    // No temporary files left anywhere in the case's folder.
    for e in walk(tmp.path()) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tcc-tmp-") || name.starts_with(".tmp") {
            failures.push(format!("left {}", e.display()));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("stdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    failures
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn every_hostile_input_gets_its_answer() {
    let text = std::fs::read_to_string("tests/hostile/cases.toml").unwrap();
    let corpus: Corpus = toml::from_str(&text).unwrap();
    assert!(corpus.case.len() >= 30, "{} cases", corpus.case.len());
    let tcc = tcc_bin();
    // Cases are independent: run them four at a time.
    let failed: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<&[Case]> = corpus.case.chunks(corpus.case.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let tcc = &tcc;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|case| {
                            let f = run_case(case, tcc);
                            (!f.is_empty()).then(|| {
                                format!("{} ({}):\n  {}", case.name, case.defect, f.join("\n  "))
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let names: Vec<&str> = failed
        .iter()
        .map(|f| f.split(' ').next().unwrap_or(""))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed: {names:?}\n\n{}",
        failed.len(),
        corpus.case.len(),
        failed.join("\n\n")
    );
}
