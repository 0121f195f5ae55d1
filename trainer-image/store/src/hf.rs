//! `hf://` references and the local Hugging Face cache layout.
//!
//! The cache is the one `huggingface_hub` uses, so models downloaded by either tool serve both:
//!
//! ```text
//! {hub}/models--ORG--NAME/refs/main                 commit sha the branch pointed at
//! {hub}/models--ORG--NAME/snapshots/{sha}/FILE      symlink to ../../blobs/{hash}
//! {hub}/models--ORG--NAME/blobs/{hash}              the content
//! {hub}/datasets--ORG--NAME/...                     the same for dataset repositories
//! ```
//!
//! A whole-repository download also records the file list it fetched in
//! `{repo}/.llamaduo/complete-{sha}-{patterns}.json`, so the next resolution knows the snapshot is
//! complete without asking the Hub.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError, redact_url};
use crate::key::object_key;

/// The kind of Hub repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfRepoType {
    /// `hf://ORG/NAME`.
    Model,
    /// `hf://datasets/ORG/NAME`.
    Dataset,
}

impl HfRepoType {
    /// The plural used in cache folder names and API paths.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            HfRepoType::Model => "models",
            HfRepoType::Dataset => "datasets",
        }
    }
}

/// A parsed `hf://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfRef {
    /// Model or dataset repository.
    pub repo_type: HfRepoType,
    /// `ORG/NAME`.
    pub repo_id: String,
    /// Branch, tag or commit; `main` when the URL gives none.
    pub revision: String,
    /// A file path inside the repository; `None` for the whole repository.
    pub file: Option<String>,
}

impl HfRef {
    /// Parses `hf://ORG/NAME[@REV][/FILE]` or `hf://datasets/ORG/NAME[@REV][/FILE]`.
    pub fn parse(url: &str) -> Result<HfRef> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: format!(
                "{reason}; write hf://ORG/NAME[@REVISION][/FILE] or hf://datasets/ORG/NAME[@REVISION]/FILE"
            ),
        };
        let rest = url
            .strip_prefix("hf://")
            .ok_or_else(|| invalid("not an hf:// URL"))?;
        let (repo_type, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (HfRepoType::Dataset, r),
            None => (HfRepoType::Model, rest),
        };
        let mut segments = rest.splitn(3, '/');
        let org = segments.next().unwrap_or_default();
        let name_rev = segments
            .next()
            .ok_or_else(|| invalid("missing the repository name after the organisation"))?;
        let file = segments
            .next()
            .filter(|f| !f.trim_end_matches('/').is_empty());
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, r),
            None => (name_rev, "main"),
        };
        let valid_name = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid_name(org) || !valid_name(name) {
            return Err(invalid(
                "ORG and NAME must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        if revision.is_empty() || revision.contains(['\\', '?', '#']) || revision == ".." {
            return Err(invalid(
                "the revision after '@' must be a branch, tag or commit",
            ));
        }
        let file = match file {
            Some(f) => Some(
                object_key(f)
                    .map_err(|e| invalid(&format!("the file path {e}")))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(HfRef {
            repo_type,
            repo_id: format!("{org}/{name}"),
            revision: revision.to_string(),
            file,
        })
    }

    /// `models--ORG--NAME` or `datasets--ORG--NAME`.
    pub fn cache_folder(&self) -> String {
        format!(
            "{}--{}",
            self.repo_type.plural(),
            self.repo_id.replace('/', "--")
        )
    }

    /// Whether the revision is a full commit sha (then it needs no `refs/` lookup).
    pub fn revision_is_commit(&self) -> bool {
        is_commit(&self.revision)
    }
}

pub(crate) fn is_commit(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Where and how to reach the Hub. [`HfConfig::from_env`] reads the usual variables.
#[derive(Clone)]
pub struct HfConfig {
    /// `HF_ENDPOINT`, default `https://huggingface.co`, no trailing `/`.
    pub endpoint: String,
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file of `hf auth login`
    /// (`HF_TOKEN_PATH` or `HF_HOME/token`); never printed.
    pub token: Option<String>,
    /// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub hub_cache: PathBuf,
    /// `HF_HUB_OFFLINE=1`: never touch the network; a cached snapshot directory is used as is.
    pub offline: bool,
    /// Which files a whole-repository reference (`hf://ORG/NAME`) downloads: patterns where
    /// `*` matches within one path segment. Default [`DEFAULT_REPO_FILES`]: the top-level
    /// config, tokenizer and safetensors files, not ONNX/GGUF/PyTorch duplicates or subfolders.
    /// Name a file explicitly (`hf://ORG/NAME/model.Q4_K_M.gguf`) to fetch anything else.
    pub repo_files: Vec<String>,
}

/// The default [`HfConfig::repo_files`]: what loading a model or tokenizer needs.
pub const DEFAULT_REPO_FILES: &[&str] =
    &["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"];

/// Whether `path` matches `pattern` (`*` matches any run of characters except `/`).
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => {
                // Try every split point up to the next '/'.
                let limit = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
                (0..=limit).any(|i| go(rest, &s[i..]))
            }
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

impl fmt::Debug for HfConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HfConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("hub_cache", &self.hub_cache)
            .field("offline", &self.offline)
            .field("repo_files", &self.repo_files)
            .finish()
    }
}

impl HfConfig {
    /// Reads `HF_ENDPOINT`, `HF_TOKEN`, `HF_TOKEN_PATH`, `HF_HUB_CACHE`, `HF_HOME`,
    /// `XDG_CACHE_HOME`, `HOME` and `HF_HUB_OFFLINE` from the process environment.
    pub fn from_env() -> HfConfig {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`HfConfig::from_env`], reading variables through `var` (testable without touching
    /// the process environment).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> HfConfig {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let endpoint = set("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".to_string())
            .trim_end_matches('/')
            .to_string();
        // huggingface_hub's HF_HOME: where `hf auth login` leaves its token file.
        let hf_home =
            set("HF_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| match set("XDG_CACHE_HOME") {
                    Some(xdg) => Path::new(&xdg).join("huggingface"),
                    None => Path::new(&set("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache")
                        .join("huggingface"),
                });
        let token_file = set("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = set("HF_TOKEN")
            .or_else(|| set("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                std::fs::read_to_string(token_file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let hub_cache = set("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = set("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HfConfig {
            endpoint,
            token,
            hub_cache,
            offline,
            repo_files: DEFAULT_REPO_FILES.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Whether a whole-repository download takes `file` (see [`HfConfig::repo_files`]).
    pub fn wants(&self, file: &str) -> bool {
        self.repo_files.iter().any(|p| glob_match(p, file))
    }

    /// The repository's folder in the cache.
    pub fn repo_dir(&self, r: &HfRef) -> PathBuf {
        self.hub_cache.join(r.cache_folder())
    }
}

/// The file list of a complete whole-repository download.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(crate) struct CompleteSnapshot {
    pub files: Vec<String>,
}

/// Where a complete whole-repository download of `sha` with `cfg`'s file patterns is recorded
/// (keyed by the patterns too: a record for fewer files must not satisfy a wider request).
pub(crate) fn complete_marker(cfg: &HfConfig, r: &HfRef, sha: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let patterns = Sha256::digest(cfg.repo_files.join("\n").as_bytes());
    let tag: String = patterns
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    cfg.repo_dir(r)
        .join(".llamaduo")
        .join(format!("complete-{sha}-{tag}.json"))
}

/// The commit a reference points at, from the cache alone.
pub(crate) fn cached_commit(cfg: &HfConfig, r: &HfRef) -> Option<String> {
    if r.revision_is_commit() {
        return Some(r.revision.clone());
    }
    let refs = cfg.repo_dir(r).join("refs").join(&r.revision);
    let sha = std::fs::read_to_string(refs).ok()?;
    let sha = sha.trim();
    is_commit(sha).then(|| sha.to_string())
}

/// The local path for `r` if the cache already holds it (no network).
///
/// A file: its snapshot entry exists. A whole repository: a completeness record from an
/// earlier download lists files that all exist, or (offline mode) the snapshot folder exists.
pub(crate) fn lookup_cached(cfg: &HfConfig, r: &HfRef) -> Option<PathBuf> {
    let sha = cached_commit(cfg, r)?;
    let snapshot = cfg.repo_dir(r).join("snapshots").join(&sha);
    match &r.file {
        Some(file) => {
            let p = snapshot.join(file);
            p.is_file().then_some(p)
        }
        None => {
            if cfg.offline && snapshot.is_dir() {
                return Some(snapshot);
            }
            let marker = std::fs::read(complete_marker(cfg, r, &sha)).ok()?;
            let complete: CompleteSnapshot = serde_json::from_slice(&marker).ok()?;
            complete
                .files
                .iter()
                .all(|f| snapshot.join(f).is_file())
                .then_some(snapshot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn parses_the_url_forms() {
        let r = HfRef::parse("hf://HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(r.repo_type, HfRepoType::Model);
        assert_eq!(r.repo_id, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(r.revision, "main");
        assert_eq!(r.file, None);
        assert_eq!(
            r.cache_folder(),
            "models--HuggingFaceTB--SmolLM2-135M-Instruct"
        );

        let r = HfRef::parse("hf://org/name@v1.0/sub/config.json").unwrap();
        assert_eq!(r.revision, "v1.0");
        assert_eq!(r.file.as_deref(), Some("sub/config.json"));

        let r = HfRef::parse("hf://datasets/org/data@abc/train.jsonl").unwrap();
        assert_eq!(r.repo_type, HfRepoType::Dataset);
        assert_eq!(r.cache_folder(), "datasets--org--data");
        assert_eq!(r.file.as_deref(), Some("train.jsonl"));

        for bad in [
            "hf://gpt2",
            "hf://org/",
            "hf://org/name@/f",
            "hf://org/na me",
            "hf://org/name/../x",
            "s3://org/name",
        ] {
            let e = HfRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("hf://ORG/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn default_repo_files_take_what_loading_needs() {
        let cfg = HfConfig::from_lookup(|_| None);
        for f in [
            "config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "merges.txt",
            "tokenizer.model",
        ] {
            assert!(cfg.wants(f), "{f}");
        }
        for f in [
            "onnx/model.onnx",
            "pytorch_model.bin",
            "model.Q4_K_M.gguf",
            "sub/config.json",
            ".gitattributes",
            "README.md",
        ] {
            assert!(!cfg.wants(f), "{f}");
        }
        assert!(glob_match("*", "a"));
        assert!(glob_match("a*b*c", "aXXbYc"));
        assert!(!glob_match("a*c", "ab/c"));
        assert!(glob_match("onnx/*.onnx", "onnx/m.onnx"));
    }

    #[test]
    fn config_reads_the_hf_variables() {
        let vars: HashMap<&str, &str> = [
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "hf_secret"),
            ("HF_HOME", "/data/hf"),
            ("HF_HUB_OFFLINE", "1"),
        ]
        .into();
        let cfg = HfConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string()));
        assert_eq!(cfg.endpoint, "http://127.0.0.1:9");
        assert_eq!(cfg.token.as_deref(), Some("hf_secret"));
        assert_eq!(cfg.hub_cache, PathBuf::from("/data/hf/hub"));
        assert!(cfg.offline);
        assert!(!format!("{cfg:?}").contains("hf_secret"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_from_login\n").unwrap();
        let home = dir.path().display().to_string();
        let cfg = HfConfig::from_lookup(|k| (k == "HF_HOME").then(|| home.clone()));
        assert_eq!(cfg.token.as_deref(), Some("hf_from_login"));
        assert_eq!(cfg.hub_cache, dir.path().join("hub"));

        let cfg = HfConfig::from_lookup(|k| (k == "HOME").then(|| "/home/u".to_string()));
        assert_eq!(cfg.endpoint, "https://huggingface.co");
        assert_eq!(
            cfg.hub_cache,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert!(!cfg.offline);
        assert!(cfg.token.is_none());
    }
}
