//! `hf:ORG/NAME` model sources through the binary, against a mock of the
//! Hugging Face Hub on 127.0.0.1 (this machine has no internet): a
//! std::net HTTP/1.1 server that answers what hf-hub 0.5's sync client asks
//! (`/api/models/REPO/revision/REV`, `REPO/resolve/REV/FILE` with the
//! `Range: bytes=0-0` metadata request, `etag` / `x-repo-commit` /
//! `content-range`, and for weights the Hub's redirect to a CDN URL with
//! `x-linked-etag`). The repository is the tiny PixArt pipeline of
//! tests/cli_pixart.rs, its T5 sharded, plus variants that must not be
//! downloaded. HF_ENDPOINT points at the mock, HF_HOME at a temporary dir.
#![cfg(feature = "hub")]

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{assert_ok, text, tiny_pixart_pipeline};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Repositories: name -> (path in the repo -> bytes).
type Repos = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The mock Hub: its URL and every request it answered (`GET /path`).
struct Hub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    fn start(repos: Repos) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (log, base) = (requests.clone(), url.clone());
        let repos = Arc::new(repos);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, base, repos) = (log.clone(), base.clone(), repos.clone());
                std::thread::spawn(move || serve(stream, &repos, &base, &log));
            }
        });
        Hub { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn etag(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Weights go through the Hub's CDN redirect, as LFS files do.
fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

/// Answers one request and closes the connection.
fn serve(mut stream: TcpStream, repos: &Repos, base: &str, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {path}"));
    let reply = |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    let not_found = |stream: &mut TcpStream, code: &str| {
        reply(
            stream,
            "404 Not Found",
            &[("X-Error-Code", code.into())],
            b"{\"error\":\"not found\"}",
        )
    };
    // The bytes of a file, honouring `Range: bytes=A-` / `bytes=A-B`.
    let content = |stream: &mut TcpStream, bytes: &[u8], extra: &[(&str, String)]| {
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b = if b.is_empty() {
                    bytes.len() - 1
                } else {
                    b.parse().unwrap()
                };
                (a, b.min(bytes.len() - 1))
            }
            None => (0, bytes.len() - 1),
        };
        let mut headers = extra.to_vec();
        headers.push((
            "Content-Range",
            format!("bytes {start}-{end}/{}", bytes.len()),
        ));
        reply(stream, "206 Partial Content", &headers, &bytes[start..=end]);
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, _rev)) = rest.split_once("/revision/") else {
            return not_found(&mut stream, "EntryNotFound");
        };
        let Some(files) = repos.get(repo) else {
            return not_found(&mut stream, "RepoNotFound");
        };
        let siblings: Vec<String> = files
            .keys()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"id\":\"{repo}\",\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        return reply(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    if let Some(tag) = path.strip_prefix("/cdn/") {
        let file = repos
            .values()
            .flat_map(|files| files.values())
            .find(|b| etag(b) == tag);
        return match file {
            Some(bytes) => content(&mut stream, bytes, &[]),
            None => not_found(&mut stream, "EntryNotFound"),
        };
    }
    // /ORG/NAME/resolve/REV/FILE
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if let [org, name, "resolve", _rev, file] = segments[..] {
        let repo = format!("{org}/{name}");
        let Some(files) = repos.get(&repo) else {
            return not_found(&mut stream, "RepoNotFound");
        };
        if repo.ends_with("/gated") {
            return reply(
                &mut stream,
                "401 Unauthorized",
                &[("X-Error-Code", "GatedRepo".into())],
                b"{}",
            );
        }
        let Some(bytes) = files.get(file) else {
            return not_found(&mut stream, "EntryNotFound");
        };
        let tag = etag(bytes);
        let commit = ("X-Repo-Commit", COMMIT.to_string());
        if is_lfs(file) && repo.ends_with("/broken-redirect") {
            // A redirect without its Location header.
            return reply(
                &mut stream,
                "302 Found",
                &[commit, ("X-Linked-Etag", format!("\"{tag}\""))],
                b"",
            );
        }
        if is_lfs(file) {
            return reply(
                &mut stream,
                "302 Found",
                &[
                    commit,
                    ("X-Linked-Etag", format!("\"{tag}\"")),
                    ("X-Linked-Size", bytes.len().to_string()),
                    ("Location", format!("{base}/cdn/{tag}")),
                ],
                b"",
            );
        }
        return content(
            &mut stream,
            bytes,
            &[commit, ("ETag", format!("\"{tag}\""))],
        );
    }
    not_found(&mut stream, "EntryNotFound")
}

/// The files under `dir` as repository paths.
fn files_of(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if p.is_dir() {
            files_of(&p, &format!("{prefix}{name}/"), out);
        } else {
            out.insert(format!("{prefix}{name}"), std::fs::read(&p).unwrap());
        }
    }
}

/// `model.safetensors` split in two shards and their index.
fn shard(single: &[u8]) -> Vec<(String, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(single).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut out = Vec::new();
    let mut map = Vec::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        out.push((file.clone(), safetensors::serialize(views, None).unwrap()));
        map.extend(part.iter().map(|n| format!("\"{n}\":\"{file}\"")));
    }
    let index = format!("{{\"metadata\":{{}},\"weight_map\":{{{}}}}}", map.join(","));
    out.push(("model.safetensors.index.json".into(), index.into_bytes()));
    out
}

/// Files the selection must leave on the Hub.
const DECOYS: [&str; 7] = [
    "README.md",
    "transformer/diffusion_pytorch_model.fp16.safetensors",
    "transformer/diffusion_pytorch_model.bin",
    "text_encoder/pytorch_model.bin",
    "tokenizer/spiece.model",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "PixArt-XL-2-256x256.pth",
];

/// The mock's repositories, from the local pipeline `pipe`:
/// `test-org/tiny-pixart` (the pipeline, T5 sharded, with decoys),
/// `test-org/no-transformer` (a VAE only) and `test-org/gated` (whose files
/// answer 401).
fn repos(pipe: &Path) -> Repos {
    let mut files = BTreeMap::new();
    files_of(pipe, "", &mut files);
    let single = files.remove("text_encoder/model.safetensors").unwrap();
    for (name, bytes) in shard(&single) {
        files.insert(format!("text_encoder/{name}"), bytes);
    }
    files.insert(
        "model_index.json".into(),
        br#"{"_class_name": "PixArtAlphaPipeline"}"#.to_vec(),
    );
    files.insert(
        "scheduler/scheduler_config.json".into(),
        br#"{"_class_name": "DPMSolverMultistepScheduler"}"#.to_vec(),
    );
    for d in DECOYS {
        files.insert(d.into(), b"must not be downloaded".to_vec());
    }
    let vae_only: BTreeMap<String, Vec<u8>> = files
        .iter()
        .filter(|(k, _)| k.starts_with("vae/") || *k == "model_index.json")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut repos = Repos::new();
    repos.insert("test-org/gated".into(), files.clone());
    repos.insert("test-org/broken-redirect".into(), files.clone());
    repos.insert("test-org/tiny-pixart".into(), files);
    repos.insert("test-org/no-transformer".into(), vae_only);
    repos
}

/// Runs `tcc` with the Hub at `endpoint` and its cache in `hf_home`, and
/// no proxy, token or offline setting from the environment.
fn tcc_hub(args: &[&str], endpoint: &str, hf_home: &Path, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcc"));
    cmd.args(args);
    for key in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env("NO_PROXY", "127.0.0.1,localhost");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("the tcc binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failure with `code` and one `error: ` line, the last on
/// stderr, that contains `needle`; no panic. Returns that line.
fn assert_error(out: &Output, code: i32, needle: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    assert!(errors[0].contains(needle), "{err}");
    errors[0].to_string()
}

/// A directory with the local pipeline `pipe/`, the schedule `full.sched`
/// naming it (the one of tests/cli_pixart.rs) and `hub.sched` naming
/// `hf:test-org/tiny-pixart` instead.
fn setup(d: &Path) -> (PathBuf, Hub) {
    tiny_pixart_pipeline(&d.join("pipe"));
    let sampler = "[sampler]\nkind = \"dpm-solver++\"\nsteps = 4\nguidance = 4.5\n";
    std::fs::write(
        d.join("full.sched"),
        format!("[model]\npath = \"pipe\"\n\n{sampler}"),
    )
    .unwrap();
    std::fs::write(
        d.join("hub.sched"),
        format!("[model]\npath = \"hf:test-org/tiny-pixart\"\n\n{sampler}"),
    )
    .unwrap();
    let hub = Hub::start(repos(&d.join("pipe")));
    (d.join("hf"), hub)
}

#[test]
fn an_hf_pipeline_samples_the_same_image_as_the_local_one_and_is_fetched_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hf_home, hub) = setup(d);
    let full = d.join("full.sched");
    let sample = |sched: &Path, model: Option<&str>, png: &str, endpoint: &str| {
        let png = d.join(png);
        let cache = d.join(format!("emb-{}", model.is_some()));
        let mut args = vec!["sample", s(sched), "--n", "2", "--grid", s(&png)];
        args.extend(["--prompt", "a red square", "--prompt", "two blue discs"]);
        args.extend(["--embeddings-cache", s(&cache)]);
        if let Some(m) = model {
            args.extend(["--model", m]);
        }
        let out = tcc_hub(&args, endpoint, &hf_home, &[]);
        assert_ok(&out);
        (std::fs::read(&png).unwrap(), text(&out.stderr))
    };
    let (local, _) = sample(&full, None, "local.png", &hub.url);
    assert!(hub.requests().is_empty());

    let model = Some("hf:test-org/tiny-pixart");
    let (first, log) = sample(&full, model, "hub.png", &hub.url);
    assert!(
        first == local,
        "the downloaded pipeline must give the same image"
    );
    assert!(log.contains("downloading hf:test-org/tiny-pixart"), "{log}");
    let requests = hub.requests();
    let info = "GET /api/models/test-org/tiny-pixart/revision/main";
    assert_eq!(requests.iter().filter(|r| *r == info).count(), 1);
    let fetched: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.strip_prefix("GET /test-org/tiny-pixart/resolve/main/"))
        .collect();
    for decoy in DECOYS {
        assert!(!fetched.contains(&decoy), "{decoy} was downloaded");
    }
    for wanted in [
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(fetched.contains(&wanted), "{wanted} not in {fetched:?}");
    }
    // Weights came through the CDN redirect.
    assert!(requests.iter().any(|r| r.starts_with("GET /cdn/")));
    let snapshot = hf_home
        .join("hub/models--test-org--tiny-pixart/snapshots")
        .join(COMMIT);
    assert!(snapshot.join("transformer/config.json").is_file());
    assert_eq!(
        std::fs::read_to_string(hf_home.join("hub/models--test-org--tiny-pixart/refs/main"))
            .unwrap(),
        COMMIT
    );

    // Again, and from a schedule that names the repository: one listing
    // request each, no file requested again.
    let before = hub.requests().len();
    let (second, log) = sample(&full, model, "hub2.png", &hub.url);
    assert!(second == local);
    assert!(!log.contains("downloading"), "{log}");
    let (third, _) = sample(&d.join("hub.sched"), None, "hub3.png", &hub.url);
    assert!(third == local);
    assert_eq!(hub.requests()[before..], [info, info]);

    // Hub unreachable: the cached snapshot serves, with a warning.
    let (offline, log) = sample(&full, model, "hub4.png", "http://127.0.0.1:1");
    assert!(offline == local);
    assert!(log.contains("warning: cannot reach"), "{log}");
    assert_eq!(hub.requests().len(), before + 2);
}

#[test]
fn plans_fetch_only_configs_and_name_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hf_home, hub) = setup(d);
    let out = tcc_hub(
        &["plan", "--emit", "json", s(&d.join("hub.sched"))],
        &hub.url,
        &hf_home,
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(json["plan"]["model"]["name"], "hf:test-org/tiny-pixart");
    // Each file is asked twice: its metadata (`Range: bytes=0-0`), then its bytes.
    let mut fetched: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/resolve/"))
        .collect();
    fetched.dedup();
    assert_eq!(
        fetched,
        [
            "GET /test-org/tiny-pixart/resolve/main/model_index.json",
            "GET /test-org/tiny-pixart/resolve/main/transformer/config.json",
        ]
    );
    // --model names the model the same way, so the plans (and their hashes)
    // agree; a local folder gives the same shape under its own name.
    let plan = |args: &[&str]| {
        let out = tcc_hub(args, &hub.url, &hf_home, &[]);
        serde_json::from_str::<serde_json::Value>(&assert_ok(&out)).unwrap()
    };
    let full = s(&d.join("full.sched")).to_string();
    let over = plan(&[
        "plan",
        "--emit",
        "json",
        &full,
        "--model",
        "hf:test-org/tiny-pixart",
    ]);
    assert_eq!(over["hash"], json["hash"]);
    let pipe = d.join("pipe");
    let local = plan(&["plan", "--emit", "json", &full, "--model", s(&pipe)]);
    assert_eq!(local["plan"]["model"]["name"], s(&pipe));
    let mut a = local["plan"]["model"].clone();
    a["name"] = json["plan"]["model"]["name"].clone();
    assert_eq!(a, json["plan"]["model"]);
}

#[test]
fn hub_failures_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hf_home, hub) = setup(d);
    let full = s(&d.join("full.sched")).to_string();
    let run = |model: &str, endpoint: &str| {
        let args = [
            "sample", &full, "--n", "1", "--prompt", "x", "--model", model,
        ];
        tcc_hub(&args, endpoint, &hf_home, &[])
    };
    let err = assert_error(
        &run("hf:test-org/no-transformer", &hub.url),
        2,
        "hf:test-org/no-transformer",
    );
    assert!(err.contains("no transformer"), "{err}");
    let err = assert_error(
        &run("hf:test-org/missing", &hub.url),
        2,
        "hf:test-org/missing",
    );
    assert!(err.contains("no model repository"), "{err}");
    assert_error(&run("hf:test-org/gated", &hub.url), 2, "gated");
    let err = assert_error(&run("hf:test-org/a/b", &hub.url), 2, "hf:ORG/NAME");
    assert!(err.contains("--model"), "{err}");
    // Nothing cached and nothing listening.
    let err = assert_error(
        &run("hf:test-org/tiny-pixart", "http://127.0.0.1:1"),
        1,
        "cannot reach",
    );
    assert!(err.contains("hf:test-org/tiny-pixart"), "{err}");
    // Offline mode with nothing cached.
    let out = tcc_hub(
        &["plan", s(&d.join("hub.sched"))],
        &hub.url,
        &hf_home,
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_error(&out, 1, "HF_HUB_OFFLINE");
    // An `hf:` path in the schedule fails the same way.
    let bad = d.join("bad.sched");
    std::fs::write(&bad, "[model]\npath = \"hf:test-org/no-transformer\"\n").unwrap();
    let out = tcc_hub(&["check", s(&bad)], &hub.url, &hf_home, &[]);
    assert_error(&out, 2, "no transformer");
    // A malformed answer (a redirect without Location, on which hf-hub
    // panics inside) is a one-line error too.
    let err = assert_error(
        &run("hf:test-org/broken-redirect", &hub.url),
        1,
        "did not answer as the Hub does",
    );
    assert!(
        err.contains("hf:test-org/broken-redirect") && err.contains("location"),
        "{err}"
    );
    // A local --model that does not exist.
    assert_error(&run("no/such/dir", &hub.url), 2, "--model no/such/dir");
}

#[test]
fn quantize_t5_writes_into_the_snapshot_where_text_dtype_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (hf_home, hub) = setup(d);
    let model = "hf:test-org/tiny-pixart";
    let out = tcc_hub(&["quantize-t5", model], &hub.url, &hf_home, &[]);
    let text = assert_ok(&out);
    let gguf = hf_home
        .join("hub/models--test-org--tiny-pixart/snapshots")
        .join(COMMIT)
        .join("text_encoder/model.q8_0.gguf");
    assert!(gguf.is_file(), "{text}");
    assert!(text.contains("model.q8_0.gguf"), "{text}");
    let before = hub.requests().len();
    let png = d.join("q8.png");
    let (sched, emb) = (d.join("full.sched"), d.join("emb"));
    let args = [
        "sample",
        s(&sched),
        "--model",
        model,
        "--text-dtype",
        "q8_0",
        "--prompt",
        "a red square",
        "--n",
        "1",
        "--embeddings-cache",
        s(&emb),
        "--grid",
        s(&png),
    ];
    assert_ok(&tcc_hub(&args, &hub.url, &hf_home, &[]));
    assert!(png.is_file());
    // Only the listing was asked for, and the quantized file (which the
    // repository does not list) is still there.
    assert_eq!(
        hub.requests()[before..],
        ["GET /api/models/test-org/tiny-pixart/revision/main"]
    );
    assert!(gguf.is_file());
}
