//! Source resolution: turn a model or dataset URL into a local path the trainer can open.
//!
//! - `file:///p`, `/p`: the path itself (it must exist).
//! - `s3://`, `gs://`, `az://`: the object, or every object under the prefix (a model
//!   directory), downloaded once into `{cache_dir}/objects/{hash of the URL}/data`. The
//!   download goes to a temp directory renamed into place, so a cache entry is complete or
//!   absent. Sources are treated as immutable (a finalized round's artifacts never change):
//!   delete the cache entry to force a fresh download.
//! - `hf://...`: the Hugging Face cache (see [`crate::hf`]), downloading only what is missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::{Result, StoreError, redact_url};
use crate::hf::{HfConfig, HfRef, lookup_cached};
use crate::local::{TempGuard, sync_dir, temp_sibling};
use crate::store::Store;

/// Resolves source URLs to local paths, with its own cache directory and Hub settings.
#[derive(Debug)]
pub struct Resolver {
    cache_dir: PathBuf,
    hf: HfConfig,
    client: OnceCell<reqwest::Client>,
}

/// What a finished object-store cache entry holds (written inside it before the rename).
#[derive(Serialize, Deserialize)]
struct Entry {
    url: String,
    /// The path to return, relative to the entry folder.
    path: String,
}

impl Resolver {
    /// A resolver caching object-store downloads under `cache_dir` and Hub files per `hf`.
    pub fn new(cache_dir: impl Into<PathBuf>, hf: HfConfig) -> Resolver {
        Resolver {
            cache_dir: cache_dir.into(),
            hf,
            client: OnceCell::new(),
        }
    }

    /// As [`Resolver::new`] with the Hub settings from the environment ([`HfConfig::from_env`]).
    pub fn from_env(cache_dir: impl Into<PathBuf>) -> Resolver {
        Self::new(cache_dir, HfConfig::from_env())
    }

    /// The Hub settings in use.
    pub fn hf_config(&self) -> &HfConfig {
        &self.hf
    }

    /// The local path of the file or directory `url` names, downloading it if needed.
    pub async fn resolve(&self, url: &str) -> Result<PathBuf> {
        if url.starts_with("hf://") {
            return self.resolve_hf(&HfRef::parse(url)?).await;
        }
        let store = Store::open(url)?;
        if let Some(path) = store.local_path() {
            return match tokio::fs::metadata(path).await {
                Ok(_) => Ok(path.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound {
                    url: redact_url(url),
                }),
                Err(e) => Err(StoreError::io("stat", path, e)),
            };
        }
        self.resolve_object(url).await
    }

    /// Resolves an `hf://` reference: from the cache when it is there, else from the Hub.
    pub async fn resolve_hf(&self, r: &HfRef) -> Result<PathBuf> {
        if let Some(path) = lookup_cached(&self.hf, r) {
            return Ok(path);
        }
        if self.hf.offline {
            return Err(StoreError::NotFound {
                url: format!(
                    "hf://{}@{}{} in the cache at {} (HF_HUB_OFFLINE is set: download it first or unset HF_HUB_OFFLINE)",
                    r.repo_id,
                    r.revision,
                    r.file.as_ref().map(|f| format!("/{f}")).unwrap_or_default(),
                    self.hf.hub_cache.display()
                ),
            });
        }
        let client = self
            .client
            .get_or_try_init(|| async { crate::hf_download::client() })
            .await?;
        crate::hf_download::download(&self.hf, client, r).await
    }

    async fn resolve_object(&self, url: &str) -> Result<PathBuf> {
        match single_object(url)? {
            Some((parent, name)) if parent.exists(&name).await? => {
                self.resolve_in(&parent, &name).await
            }
            _ => self.resolve_in(&Store::open(url)?, "").await,
        }
    }

    /// The local path of the object or prefix `key` of `store` (`""`: the whole store).
    ///
    /// A local store returns its own path (no copy); an object store's data is downloaded once
    /// into `{cache_dir}/objects/{hash}/data` (a temp folder renamed into place, so an entry is
    /// complete or absent). Used for the previous round's model in the artifact store.
    pub async fn resolve_in(&self, store: &Store, key: &str) -> Result<PathBuf> {
        let key = crate::key::prefix_key(key)?;
        let shown = store.url_of(key);
        if let Some(root) = store.local_path() {
            let path = if key.is_empty() {
                root.to_path_buf()
            } else {
                root.join(key)
            };
            return match tokio::fs::metadata(&path).await {
                Ok(_) => Ok(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StoreError::NotFound { url: shown })
                }
                Err(e) => Err(StoreError::io("stat", path, e)),
            };
        }
        let objects = self.cache_dir.join("objects");
        let entry_dir = objects.join(cache_key(&shown));
        if let Some(path) = read_entry(&entry_dir).await? {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&objects)
            .await
            .map_err(|e| StoreError::io("create directory", &objects, e))?;
        let mut tmp = TempGuard::dir(temp_sibling(&entry_dir));
        let data = tmp.path().join("data");
        let single = !key.is_empty() && store.exists(key).await?;
        let relative = if single {
            let name = key.rsplit('/').next().unwrap_or(key);
            store.get_to_file(key, &data.join(name)).await?;
            format!("data/{name}")
        } else {
            let keys = store.list(key).await?;
            if keys.is_empty() {
                return Err(StoreError::NotFound { url: shown });
            }
            for k in &keys {
                let rel = k.strip_prefix(key).unwrap_or(k).trim_start_matches('/');
                store.get_to_file(k, &data.join(rel)).await?;
            }
            "data".to_string()
        };
        let entry = serde_json::to_vec(&Entry {
            url: shown.clone(),
            path: relative.clone(),
        })
        .map_err(|source| StoreError::Json {
            url: shown.clone(),
            source,
        })?;
        let entry_file = tmp.path().join("entry.json");
        tokio::fs::write(&entry_file, entry)
            .await
            .map_err(|e| StoreError::io("write", &entry_file, e))?;
        match tokio::fs::rename(tmp.path(), &entry_dir).await {
            Ok(()) => {
                tmp.disarm();
                sync_dir(&objects);
            }
            // Another process finished the same download first; its entry is as good.
            Err(_) if read_entry(&entry_dir).await?.is_some() => {}
            Err(e) => return Err(StoreError::io("rename into place", &entry_dir, e)),
        }
        Ok(entry_dir.join(relative))
    }
}

/// Resolves `url` to a local path, caching object-store downloads under `cache_dir` and Hub
/// files in the Hugging Face cache (settings from the environment). See [`Resolver`].
pub async fn resolve_to_local(url: &str, cache_dir: &Path) -> Result<PathBuf> {
    Resolver::from_env(cache_dir).resolve(url).await
}

/// The cache folder name for a URL: 32 hex digits of its SHA-256.
fn cache_key(url: &str) -> String {
    Sha256::digest(url.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read_entry(entry_dir: &Path) -> Result<Option<PathBuf>> {
    let file = entry_dir.join("entry.json");
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let entry: Entry =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                    url: file.display().to_string(),
                    source,
                })?;
            Ok(Some(entry_dir.join(entry.path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", file, e)),
    }
}

/// For `s3://bucket/a/b.json`: the store at `s3://bucket/a` and the key `b.json`. `None`
/// when the URL names a bucket root (then it can only be a prefix).
fn single_object(url: &str) -> Result<Option<(Store, String)>> {
    let trimmed = url.trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).map_err(|e| StoreError::InvalidUrl {
        url: redact_url(url),
        reason: e.to_string(),
    })?;
    let path = parsed.path().trim_matches('/');
    if path.is_empty() || url.ends_with('/') {
        return Ok(None);
    }
    let name = path.rsplit('/').next().unwrap_or(path).to_string();
    let mut parent = parsed.clone();
    let parent_path = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    parent.set_path(parent_path);
    let parent = Store::open(parent.as_str())?;
    let name = percent_decode(&name);
    Ok(Some((parent, name)))
}

fn percent_decode(s: &str) -> String {
    object_store::path::Path::from_url_path(s)
        .map(|p| p.as_ref().to_string())
        .unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_are_stable_and_distinct() {
        assert_eq!(cache_key("s3://b/m"), cache_key("s3://b/m"));
        assert_ne!(cache_key("s3://b/m"), cache_key("s3://b/n"));
        assert_eq!(cache_key("s3://b/m").len(), 32);
    }

    #[test]
    fn single_object_splits_parent_and_name() {
        let (parent, name) = single_object("s3://bucket/models/a/config.json")
            .unwrap()
            .unwrap();
        assert_eq!(parent.url(), "s3://bucket/models/a");
        assert_eq!(name, "config.json");
        assert!(single_object("s3://bucket").unwrap().is_none());
        assert!(single_object("s3://bucket/dir/").unwrap().is_none());
    }
}
