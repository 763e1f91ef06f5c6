//! Downloading the selected files of a Hub repository with hf-hub's sync
//! API, into the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`), the layout candle and Python's
//! huggingface_hub share: `models--ORG--NAME/{blobs,refs,snapshots/COMMIT}`.
//!
//! One request asks the repository's listing and commit (`/api/models/...`);
//! files already in that commit's snapshot are not requested again. When
//! the Hub cannot be reached, or `HF_HUB_OFFLINE` is set, a snapshot already
//! in the cache serves if it holds what the command needs.

use std::io::Write;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::{Progress, RepoInfo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::select::{select, shard_files, SelectError};
use super::{HubSource, Need};
use crate::error::CliError;

/// Where and how to reach the Hub, from the environment variables Python's
/// huggingface_hub reads.
struct Env {
    endpoint: String,
    /// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`.
    cache: PathBuf,
    token: Option<String>,
    offline: bool,
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Env {
    fn from_env() -> Result<Env, CliError> {
        let home_dir = || {
            var("HOME")
                .or_else(|| var("USERPROFILE"))
                .map(PathBuf::from)
        };
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("huggingface")))
            .or_else(|| home_dir().map(|h| h.join(".cache").join("huggingface")));
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or_else(|| {
                CliError::input("no place for the Hugging Face cache: set HF_HOME (or HOME)")
            })?;
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
                let text = std::fs::read_to_string(file).ok()?;
                Some(text.trim().to_string()).filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Ok(Env {
            endpoint,
            cache,
            token,
            offline,
        })
    }
}

pub(super) fn resolve(
    src: &HubSource,
    need: Need,
    err: &mut dyn Write,
) -> Result<PathBuf, CliError> {
    let env = Env::from_env()?;
    let repo = Repo::with_revision(src.repo.clone(), RepoType::Model, src.revision.clone());
    let repo_dir = env.cache.join(repo.folder_name());
    if env.offline {
        return cached_snapshot(&repo_dir, src, need)
            .map_err(|why| CliError::Failure(format!("{src}: HF_HUB_OFFLINE is set and {why}")));
    }
    let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(false)
        .build()
        .map_err(|e| CliError::Failure(format!("{src}: cannot set up the Hub client: {e}")))?;
    let api_repo = api.repo(repo.clone());
    let info = match repo_info(&api_repo, src, &env) {
        Ok(info) => info,
        Err(Lookup::Unreachable(reason)) => {
            return match cached_snapshot(&repo_dir, src, need) {
                Ok(dir) => {
                    writeln!(
                        err,
                        "warning: cannot reach {} ({reason}): using the cached {src} in {}",
                        env.endpoint,
                        dir.display()
                    )?;
                    Ok(dir)
                }
                Err(why) => Err(CliError::Failure(format!(
                    "cannot reach the Hugging Face Hub at {} to download {src}: {reason}; check the network or HF_ENDPOINT ({why})",
                    env.endpoint
                ))),
            }
        }
        Err(Lookup::Failed(e)) => return Err(e),
    };
    let siblings: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let selection = select(&siblings, need).map_err(|e| select_error(src, &e, siblings.len()))?;
    for note in &selection.skipped {
        writeln!(err, "note: {src}: {note}")?;
    }
    let mut fetch = Fetch {
        src,
        endpoint: &env.endpoint,
        repo: &api_repo,
        snapshot: repo_dir.join("snapshots").join(&info.sha),
        commit: &info.sha,
        err,
        announced: false,
    };
    for file in &selection.files {
        fetch.file(file)?;
    }
    for index in &selection.indexes {
        let path = fetch.snapshot.join(index);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::Failure(format!("{}: {e}", path.display())))?;
        let shards = shard_files(index, &text, &siblings)
            .map_err(|e| CliError::input(format!("{src}: {e}")))?;
        for shard in &shards {
            fetch.file(shard)?;
        }
    }
    // What the revision names now, for the cache's later offline use (a
    // run that downloaded nothing has not written it).
    Cache::new(env.cache.clone())
        .repo(repo)
        .create_ref(&info.sha)
        .map_err(|e| CliError::Failure(format!("{}: {e}", repo_dir.display())))?;
    Ok(fetch.snapshot)
}

/// Why the repository's listing did not come.
enum Lookup {
    /// No answer (no network, no such host, refused connection, TLS).
    Unreachable(String),
    /// An answer that says no, or an error of ours.
    Failed(CliError),
}

/// `GET /api/models/REPO/revision/REVISION`: the files and the commit.
fn repo_info(repo: &ApiRepo, src: &HubSource, env: &Env) -> Result<RepoInfo, Lookup> {
    let response = repo
        .info_request()
        .config()
        .http_status_as_error(false)
        .build()
        .call();
    let mut response = response.map_err(|e| Lookup::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let header = |key: &str| {
        response
            .headers()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let code = header("x-error-code").unwrap_or_default();
    let said = header("x-error-message")
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let endpoint = &env.endpoint;
    let input = |m: String| Err(Lookup::Failed(CliError::input(m)));
    match status {
        200..=299 => response.body_mut().read_json::<RepoInfo>().map_err(|e| {
            Lookup::Failed(CliError::Failure(format!(
                "{src}: {endpoint} did not answer with Hub repository info (is HF_ENDPOINT a Hugging Face Hub?): {e}"
            )))
        }),
        _ if code == "RevisionNotFound" => input(format!(
            "{src}: the repository has no revision `{}`",
            src.revision
        )),
        _ if code == "GatedRepo" || status == 403 => input(gated(src, endpoint, status, &said)),
        401 | 404 => {
            let rev = if src.revision == "main" {
                String::new()
            } else {
                format!(" (or it has no revision `{}`)", src.revision)
            };
            let private = if env.token.is_some() {
                "if it is private, the token in HF_TOKEN has no access to it"
            } else {
                "if it is private, set HF_TOKEN or run `huggingface-cli login`"
            };
            input(format!(
                "{src}: no model repository `{}` on {endpoint}{rev}; {private}",
                src.repo
            ))
        }
        _ => Err(Lookup::Failed(CliError::Failure(format!(
            "{src}: the Hub at {endpoint} answered HTTP {status}{said}"
        )))),
    }
}

fn gated(src: &HubSource, endpoint: &str, status: u16, said: &str) -> String {
    format!(
        "{src}: access denied (HTTP {status}{said}): the repository is gated or private: accept its conditions at {endpoint}/{} and set HF_TOKEN (or run `huggingface-cli login`)",
        src.repo
    )
}

fn select_error(src: &HubSource, e: &SelectError, files: usize) -> CliError {
    CliError::input(match e {
        SelectError::NoTransformer => format!(
            "{src}: the repository has no transformer: neither transformer/config.json (a diffusers pipeline) nor config.json (a transformer folder) among its {files} files"
        ),
        SelectError::NoWeights { folder, found } => {
            let folder = if folder.is_empty() {
                "the repository root".to_string()
            } else {
                folder.clone()
            };
            let found = if found.is_empty() {
                "nothing else".to_string()
            } else {
                found.join(", ")
            };
            format!(
                "{src}: {folder} has no diffusion_pytorch_model.safetensors nor its .index.json (it has {found}); tcc reads full-precision safetensors weights"
            )
        }
    })
}

/// The snapshot the cache holds for `src`'s revision, if it has what a
/// command needing `need` reads; else why not.
fn cached_snapshot(repo_dir: &Path, src: &HubSource, need: Need) -> Result<PathBuf, String> {
    let rev = &src.revision;
    let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
        rev.clone()
    } else {
        let file = repo_dir.join("refs").join(rev);
        match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                return Err(format!(
                    "no copy in the cache: {} is missing",
                    file.display()
                ))
            }
        }
    };
    let dir = repo_dir.join("snapshots").join(&commit);
    let mut files = Vec::new();
    list_files(&dir, "", &mut files);
    if files.is_empty() {
        return Err(format!("no copy in the cache: {} is empty", dir.display()));
    }
    // The listing of the cached copy must serve the command as the Hub's would.
    match select(&files, need) {
        Ok(_) => Ok(dir),
        Err(_) => Err(format!(
            "the copy in the cache, {}, lacks files this command reads",
            dir.display()
        )),
    }
}

/// The files under `dir` as `/`-separated paths relative to it.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, &format!("{prefix}{name}/"), out);
        } else if path.is_file() {
            out.push(format!("{prefix}{name}"));
        }
    }
}

/// Runs `f`, turning a panic into an error carrying its message. hf-hub 0.5
/// `expect`s parts of a server's answer (a redirect's `Location` header):
/// a malformed answer must give tcc's one-line error, not a crash. The
/// panic hook is silenced meanwhile so that nothing is printed twice.
fn without_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "an unexpected answer".into())
    })
}

/// Downloads files of one commit into its snapshot, skipping those there.
struct Fetch<'a> {
    src: &'a HubSource,
    endpoint: &'a str,
    repo: &'a ApiRepo,
    snapshot: PathBuf,
    commit: &'a str,
    err: &'a mut dyn Write,
    announced: bool,
}

impl Fetch<'_> {
    fn file(&mut self, file: &str) -> Result<(), CliError> {
        if self.snapshot.join(file).is_file() {
            return Ok(());
        }
        if !self.announced {
            self.announced = true;
            writeln!(
                self.err,
                "downloading {} (commit {}) from {} into {}",
                self.src,
                &self.commit[..self.commit.len().min(12)],
                self.endpoint,
                self.snapshot.display()
            )?;
        }
        let repo = self.repo;
        let path = without_panics(|| repo.download_with_progress(file, Bar::new()))
            .map_err(|why| {
                CliError::Failure(format!(
                    "{}: downloading {file}: {} did not answer as the Hub does ({why})",
                    self.src, self.endpoint
                ))
            })?
            .map_err(|e| self.download_error(file, e))?;
        if !path.starts_with(&self.snapshot) {
            return Err(CliError::Failure(format!(
                "{}: the repository moved to another commit while downloading {file}: run the command again",
                self.src
            )));
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        writeln!(self.err, "  {file} ({})", HumanBytes(size))?;
        Ok(())
    }

    fn download_error(&self, file: &str, e: ApiError) -> CliError {
        let (src, endpoint) = (self.src, self.endpoint);
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::StatusCode(code @ (401 | 403)) => {
                    CliError::input(gated(src, endpoint, code, &format!(" for {file}")))
                }
                ureq::Error::StatusCode(code) => CliError::Failure(format!(
                    "{src}: downloading {file}: the Hub at {endpoint} answered HTTP {code}"
                )),
                other => CliError::Failure(format!(
                    "{src}: downloading {file} from {endpoint} failed: {other}"
                )),
            },
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => CliError::Failure(format!(
                "{src}: downloading {file}: {endpoint} did not answer as the Hub does (header `{h}` missing or invalid)"
            )),
            other => CliError::Failure(format!("{src}: downloading {file}: {other}")),
        }
    }
}

/// A download's progress bar on stderr (hidden when stderr is not a
/// terminal), cleared when the file is complete.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bytes:>10}/{total_bytes:<10} [{bar:30}] {bytes_per_sec:>12} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(bar)
    }
}

impl Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(filename.to_string());
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}
