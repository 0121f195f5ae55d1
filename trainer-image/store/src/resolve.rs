//! Source resolution: turn a model or dataset URL into a local path the trainer can open.
//!
//! - `file:///p`, `/p`: the path itself (it must exist).
//! - `s3://`, `gs://`, `az://`: the object, or every object under the prefix (a model
//!   directory), downloaded into `{cache_dir}/objects/{hash of the URL}/{hash of the
//!   listing}/data`. Each resolution lists the source (one LIST or HEAD) and reuses the entry
//!   only when every key, size and ETag still match, so a round trained again under the same
//!   key is fetched again; older entries of the URL are then removed. The download goes to a
//!   temp directory renamed into place, so a cache entry is complete or absent.
//! - `hf://...`: the Hugging Face cache (see [`crate::hf`]), downloading only what is missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::error::{Result, StoreError, redact_url};
use crate::hf::{HfConfig, HfRef, lookup_cached};
use crate::local::{TempGuard, sync_dir, temp_sibling};
use crate::store::{ObjectVersion, Store};

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
    /// A local store returns its own path (no copy); an object store's data is downloaded into
    /// `{cache_dir}/objects/{hash of the URL}/{hash of the listing}/data` (a temp folder renamed
    /// into place, so an entry is complete or absent) and reused while the listing (keys,
    /// sizes, ETags) is unchanged. Used for the previous round's model in the artifact store.
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
        // One listing says what the source holds now; the entry is keyed by it, so a round
        // trained again under the same key (new ETags) is downloaded again, not served stale.
        let single_version = match key {
            "" => None,
            key => store.version(key).await?,
        };
        let single = single_version.is_some();
        let versions = match single_version {
            Some(v) => vec![v],
            None => store.versions(key).await?,
        };
        if versions.is_empty() {
            return Err(StoreError::NotFound { url: shown });
        }
        let url_dir = self.cache_dir.join("objects").join(cache_key(&shown));
        let entry_dir = url_dir.join(content_key(&versions));
        if let Some(path) = read_entry(&entry_dir).await? {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&url_dir)
            .await
            .map_err(|e| StoreError::io("create directory", &url_dir, e))?;
        let mut tmp = TempGuard::dir(temp_sibling(&entry_dir));
        let data = tmp.path().join("data");
        let relative = if single {
            let name = key.rsplit('/').next().unwrap_or(key);
            store.get_to_file(key, &data.join(name)).await?;
            format!("data/{name}")
        } else {
            for v in &versions {
                let rel = v.key.strip_prefix(key).unwrap_or(&v.key);
                store
                    .get_to_file(&v.key, &data.join(rel.trim_start_matches('/')))
                    .await?;
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
                sync_dir(&url_dir);
            }
            // Another process finished the same download first; its entry is as good.
            Err(_) if read_entry(&entry_dir).await?.is_some() => {}
            Err(e) => return Err(StoreError::io("rename into place", &entry_dir, e)),
        }
        remove_older_versions(&url_dir, &entry_dir);
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
    hex16(&Sha256::digest(url.as_bytes()))
}

/// The folder name for one content of a source: 32 hex digits of the SHA-256 of every
/// object's key, size and tag (ETag or modification time).
fn content_key(versions: &[ObjectVersion]) -> String {
    let mut hash = Sha256::new();
    for v in versions {
        for field in [v.key.as_bytes(), &v.size.to_le_bytes(), v.tag.as_bytes()] {
            hash.update((field.len() as u64).to_le_bytes());
            hash.update(field);
        }
    }
    hex16(&hash.finalize())
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Removes the entries of earlier contents of the same URL, so a source trained again does
/// not keep every old copy on the (often small) cache volume. Best effort: a process still
/// reading an old entry keeps its open files (unlinked files live on while open), and
/// in-flight temp folders of other processes are left alone.
fn remove_older_versions(url_dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(url_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path == keep || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an outdated cache entry");
        }
    }
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
