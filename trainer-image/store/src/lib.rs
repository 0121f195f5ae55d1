//! llamaduo-store: how every llamaduo stage reads and writes artifacts and resolves model and
//! dataset sources.
//!
//! # Store URLs ([`Store::open`])
//!
//! | URL | backend |
//! |---|---|
//! | `file:///abs/path`, `/abs/path` | local directory; [`Store::local_path`] gives the path |
//! | `s3://bucket/prefix`, `s3a://...` | Amazon S3 or compatible (`AWS_*` environment, `AWS_ENDPOINT`) |
//! | `gs://bucket/prefix` | Google Cloud Storage (`GOOGLE_*` environment or workload identity) |
//! | `az://container/prefix`, `abfss://container@account.dfs.core.windows.net/prefix` | Azure Blob (`AZURE_*` environment) |
//!
//! Writes are atomic everywhere: a reader sees the old object or the whole new one.
//!
//! # Source URLs ([`resolve_to_local`])
//!
//! Everything a store URL names (an object or a whole prefix, downloaded once into a cache),
//! plus the Hugging Face Hub:
//!
//! | URL | meaning |
//! |---|---|
//! | `hf://ORG/NAME` | a model repository at `main` (a directory) |
//! | `hf://ORG/NAME@REV` | at a branch, tag or commit |
//! | `hf://ORG/NAME[@REV]/PATH/FILE` | one file of it |
//! | `hf://datasets/ORG/NAME[@REV]/PATH/FILE` | one file of a dataset repository |
//!
//! Hub files live in the standard Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME/hub` or
//! `~/.cache/huggingface/hub`) and are used from there with no network when present;
//! `HF_ENDPOINT` and `HF_TOKEN` are honoured.
//!
//! # Resumable JSONL ([`JsonlParts`])
//!
//! Rows are committed in atomically written numbered parts next to the final file and
//! concatenated into it by [`JsonlParts::finalize`]; a crashed run reopens and continues.

pub mod blocking;
mod error;
mod hf;
mod hf_download;
pub mod jsonl;
mod key;
mod local;
mod resolve;
mod store;
pub mod tls;

pub use error::{Result, StoreError, redact_url};
pub use hf::{DEFAULT_REPO_FILES, HfConfig, HfRef, HfRepoType};
pub use jsonl::{
    JsonlParts, JsonlRows, TailPolicy, TruncatedTail, parse_jsonl, parse_jsonl_within, read_jsonl,
    read_jsonl_with, read_jsonl_within, to_jsonl, write_jsonl,
};
pub use resolve::{Resolver, resolve_to_local};
pub use store::{ObjectVersion, Store};

/// Local cache for downloads and conversions, shared by every stage: `LLAMADUO_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/llamaduo`, else `$HOME/.cache/llamaduo` when `~/.cache` exists,
/// else a directory under the temp dir (stage pods have a read-only root filesystem and a
/// writable /tmp).
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if let Some(dir) = std::env::var_os("LLAMADUO_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("llamaduo");
    }
    match std::env::var_os("HOME") {
        Some(home) if Path::new(&home).join(".cache").is_dir() => {
            PathBuf::from(home).join(".cache/llamaduo")
        }
        _ => std::env::temp_dir().join("llamaduo-cache"),
    }
}
