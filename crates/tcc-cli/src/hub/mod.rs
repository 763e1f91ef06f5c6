//! `hf:ORG/NAME[@REVISION]` model sources: parsing them, choosing the files
//! of the repository a command reads ([`select`]), and (with the `hub`
//! feature) downloading those into the Hugging Face cache, whose snapshot
//! folder then stands for the model. The only network code of tcc: the
//! schedule and plan crates see local folders only.

#[cfg(feature = "hub")]
mod fetch;
// Compiled (and unit-tested) without the feature too, unused then.
#[cfg_attr(not(feature = "hub"), allow(dead_code))]
mod select;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

pub use select::Need;

use crate::error::CliError;

/// What `hf:` sources look like, for error messages.
pub const SYNTAX: &str = "hf:ORG/NAME or hf:ORG/NAME@REVISION";

/// A parsed `hf:ORG/NAME[@REVISION]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSource {
    /// `ORG/NAME` (or a bare `NAME`, as the Hub's oldest models are named).
    pub repo: String,
    /// A branch, tag or commit hash; `main` when none is given.
    pub revision: String,
    /// The source as written.
    text: String,
}

impl HubSource {
    /// `None` if `text` does not start with `hf:` (a local path); else the
    /// source, or why it is malformed.
    pub fn parse(text: &str) -> Option<Result<HubSource, String>> {
        let rest = text.strip_prefix("hf:")?;
        let bad = |why: &str| Err(format!("`{text}`: {why}; expected {SYNTAX}"));
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.len() <= 96
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() > 2 || !parts.iter().all(part_ok) {
            return Some(bad("not a repository name"));
        }
        let revision = match revision {
            None => "main".to_string(),
            Some(rev) => {
                // Revisions become paths in the cache (refs/REVISION).
                let rev_ok = !rev.is_empty()
                    && !rev.chars().any(|c| c.is_whitespace() || c == '\\')
                    && rev
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != "..");
                if !rev_ok {
                    return Some(bad("not a revision"));
                }
                rev.to_string()
            }
        };
        Some(Ok(HubSource {
            repo: repo.to_string(),
            revision,
            text: text.to_string(),
        }))
    }
}

impl fmt::Display for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The local folder that stands for `source`: its snapshot in the Hugging
/// Face cache, holding (at least) the files a command needing `need` reads.
/// Progress and notes go to `err`.
#[cfg(feature = "hub")]
pub fn resolve(source: &HubSource, need: Need, err: &mut dyn Write) -> Result<PathBuf, CliError> {
    fetch::resolve(source, need, err)
}

/// Without the `hub` feature, `hf:` sources are an error.
#[cfg(not(feature = "hub"))]
pub fn resolve(source: &HubSource, _need: Need, _err: &mut dyn Write) -> Result<PathBuf, CliError> {
    Err(CliError::input(format!(
        "{source}: this tcc was built without the `hub` feature and downloads nothing: download the repository (`huggingface-cli download {}`) and give its folder instead",
        source.repo
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_with_and_without_revision() {
        let s = HubSource::parse("hf:PixArt-alpha/PixArt-XL-2-256x256")
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.repo.as_str(), s.revision.as_str()),
            ("PixArt-alpha/PixArt-XL-2-256x256", "main")
        );
        let s = HubSource::parse("hf:org/name@refs/pr/3").unwrap().unwrap();
        assert_eq!(
            (s.repo.as_str(), s.revision.as_str()),
            ("org/name", "refs/pr/3")
        );
        assert_eq!(s.to_string(), "hf:org/name@refs/pr/3");
        assert!(HubSource::parse("hf:gpt2").unwrap().is_ok());
        assert!(HubSource::parse("models/hf:x").is_none());
        assert!(HubSource::parse("./hf:x").is_none());
        for bad in [
            "hf:",
            "hf:a/b/c",
            "hf:/b",
            "hf:a/",
            "hf:a b/c",
            "hf:../x",
            "hf:a/b@",
            "hf:a/b@../../x",
            "hf:a/b@x y",
        ] {
            let e = HubSource::parse(bad).unwrap().unwrap_err();
            assert!(e.contains(SYNTAX), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "hub"))]
    #[test]
    fn without_the_hub_feature_hf_sources_are_an_input_error() {
        let src = HubSource::parse("hf:org/name").unwrap().unwrap();
        let e = resolve(&src, Need::Pipeline, &mut Vec::new()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let CliError::Input(text) = e else {
            panic!("{e:?}")
        };
        assert!(text.contains("`hub` feature"), "{text}");
    }
}
