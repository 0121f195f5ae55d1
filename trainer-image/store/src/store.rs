//! [`Store`]: one artifact root (a local directory or an object-store prefix) and the few
//! operations stages need on it.
//!
//! Local roots use the filesystem directly (atomic temp-file + fsync + rename writes, and a
//! real path for mmap); object stores go through the `object_store` crate, whose single PUT
//! and completed multipart upload are both atomic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StoreError, redact_url};
use crate::key::{join, object_key, prefix_key};
use crate::local;

/// Uploads up to this size go in one PUT; bigger ones in multipart chunks of this size.
const PART_SIZE: usize = 16 * 1024 * 1024;

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
    },
}

/// An artifact root: `file:///artifacts/ns/migration`, `s3://bucket/prefix`, ...
///
/// Cheap to clone. Keys are `/`-separated paths relative to the root
/// (`round-1/synthetic.jsonl`); `..`, empty segments and leading `/` are rejected.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The root URL, redacted (no credentials or query string), without a trailing `/`.
    url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// One object's key and what identifies its current content: a re-uploaded object (a round
/// trained again under the same key) gets a new ETag, or at least a new modification time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectVersion {
    /// The key relative to the store root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// The ETag when the backend has one, else the modification time.
    pub tag: String,
}

impl ObjectVersion {
    fn from_meta(key: String, meta: &object_store::ObjectMeta) -> ObjectVersion {
        let tag = match (&meta.e_tag, &meta.version) {
            (Some(e_tag), _) => e_tag.clone(),
            (None, Some(version)) => version.clone(),
            (None, None) => meta.last_modified.to_rfc3339(),
        };
        ObjectVersion {
            key,
            size: meta.size,
            tag,
        }
    }
}

impl Store {
    /// Opens a store from a URL; does no I/O and no network.
    ///
    /// - `file:///abs/path` or `/abs/path`: a local directory (created on first write).
    /// - `s3://bucket/prefix` (also `s3a://`): credentials and region from `AWS_*` variables
    ///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, ...) or
    ///   the instance/pod identity.
    /// - `gs://bucket/prefix`: `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS` or
    ///   the workload identity.
    /// - `az://container/prefix`, `abfs[s]://container@account.dfs.core.windows.net/prefix`:
    ///   `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` or a SAS / workload identity.
    pub fn open(url: &str) -> Result<Store> {
        let shown = redact_url(url);
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: shown.clone(),
            reason,
        };
        if url.starts_with('/') {
            return Ok(Store::local(url));
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(format!(
                "{e}: use file:///abs/path, /abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
            ))
        })?;
        if parsed.scheme() == "file" {
            if parsed
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(invalid(
                    "file URLs name a local path: write file:///abs/path (three slashes)".into(),
                ));
            }
            let path = parsed
                .to_file_path()
                .map_err(|()| invalid("not an absolute local path".into()))?;
            return Ok(Store::local(path));
        }
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
            invalid(format!(
                "unknown scheme {:?}: supported schemes are file, s3, gs and az",
                parsed.scheme()
            ))
        })?;
        let bucket_url = bucket_url(&parsed);
        // object_store's messages quote the URL they were given verbatim: the bucket URL
        // below, user info and all (`az://user:SECRET@host` leaked so), so it is scrubbed as
        // well as the caller's URL; only redacted forms may show.
        let bucket_shown = redact_url(&bucket_url);
        let scrub = |msg: String| {
            msg.replace(url, &shown)
                .replace(parsed.as_str(), &shown)
                .replace(&bucket_url, &bucket_shown)
        };
        let built: std::result::Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                crate::tls::install_ring_provider();
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(bucket_url.as_str())
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                crate::tls::install_ring_provider();
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(bucket_url.as_str())
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                crate::tls::install_ring_provider();
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(bucket_url.as_str())
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            other => {
                return Err(invalid(format!(
                    "{other:?} is not an artifact store: use file://, s3://, gs:// or az://"
                )));
            }
        };
        let store = built.map_err(|e| {
            invalid(scrub(format!(
                "{e}; set the provider's credentials and region in the environment"
            )))
        })?;
        Ok(Store {
            backend: Backend::Object { store, prefix },
            url: shown.trim_end_matches('/').to_string(),
        })
    }

    /// A store rooted at a local directory (need not exist yet).
    pub fn local(root: impl Into<PathBuf>) -> Store {
        let root: PathBuf = root.into();
        let url = format!("file://{}", root.display());
        Store {
            backend: Backend::Local(root),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// A store over any `object_store` implementation (e.g. `InMemory` in tests), rooted at
    /// `prefix`; `url` is how errors and [`Store::url`] name the root.
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        url: &str,
    ) -> Result<Store> {
        let prefix = ObjPath::parse(prefix_key(prefix)?).map_err(|e| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(Store {
            backend: Backend::Object { store, prefix },
            url: redact_url(url).trim_end_matches('/').to_string(),
        })
    }

    /// The root URL (credentials and query string removed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key` under the root, for results and messages.
    pub fn url_of(&self, key: &str) -> String {
        join(&self.url, key.trim_matches('/'))
    }

    /// The root directory when this is a local store; `None` for object stores.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(root) => Some(root),
            Backend::Object { .. } => None,
        }
    }

    /// The local path of `key` when this is a local store (the trainer mmaps from it).
    pub fn local_file(&self, key: &str) -> Result<Option<PathBuf>> {
        let key = object_key(key)?;
        Ok(self.local_path().map(|root| root.join(key)))
    }

    /// A store rooted at `prefix` under this one (`store.child("round-2")`).
    pub fn child(&self, prefix: &str) -> Result<Store> {
        let prefix = prefix_key(prefix)?;
        let backend = match &self.backend {
            Backend::Local(root) => Backend::Local(if prefix.is_empty() {
                root.clone()
            } else {
                root.join(prefix)
            }),
            Backend::Object { store, prefix: p } => Backend::Object {
                store: store.clone(),
                prefix: self.obj_path(p, prefix)?,
            },
        };
        Ok(Store {
            backend,
            url: join(&self.url, prefix),
        })
    }

    fn obj_path(&self, base: &ObjPath, key: &str) -> Result<ObjPath> {
        let full = join(base.as_ref(), key);
        ObjPath::parse(&full).map_err(|e| StoreError::InvalidKey {
            key: key.to_string(),
            reason: match e {
                object_store::path::Error::BadSegment { .. } => {
                    "has a segment the object store rejects"
                }
                _ => "is not a valid object path",
            },
        })
    }

    fn backend_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                url: self.url_of(key),
            },
            source => StoreError::ObjectStore {
                op,
                url: self.url_of(key),
                source,
            },
        }
    }

    /// The whole object; [`StoreError::NotFound`] when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_opt(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                url: self.url_of(key),
            })
    }

    /// The whole object, or `None` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        let key = object_key(key)?;
        match &self.backend {
            Backend::Local(root) => local::read(&root.join(key)).await,
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                let got = match store.get(&path).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(self.backend_err("get", key, e)),
                };
                got.bytes()
                    .await
                    .map(Some)
                    .map_err(|e| self.backend_err("get", key, e))
            }
        }
    }

    /// Streams the object into the local file `dest` atomically (temp file, fsync, rename),
    /// creating parent directories; returns its size. For big files such as model weights.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        let key = object_key(key)?;
        let url = self.url_of(key);
        match &self.backend {
            Backend::Local(root) => {
                let src = root.join(key);
                let file = match tokio::fs::File::open(&src).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound { url });
                    }
                    Err(e) => return Err(StoreError::io("open", src, e)),
                };
                let stream = tokio_util_stream(file);
                local::write_atomic(dest, &url, stream).await
            }
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                let got = store
                    .get(&path)
                    .await
                    .map_err(|e| self.backend_err("get", key, e))?;
                let stream = got.into_stream().map_err(io::Error::from);
                local::write_atomic(dest, &url, stream).await
            }
        }
    }

    /// Writes `data` to `key` atomically: readers see the old object or all of the new one.
    pub async fn put(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        let data: Bytes = data.into();
        self.put_stream(key, futures::stream::once(async move { Ok(data) }))
            .await
            .map(|_| ())
    }

    /// Writes a stream of chunks to `key` atomically; returns the size written.
    ///
    /// If the stream yields an error, nothing is written (local: the temp file is removed;
    /// object stores: the multipart upload is aborted) and [`StoreError::Source`] is returned.
    pub async fn put_stream<S>(&self, key: &str, stream: S) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send,
    {
        let key = object_key(key)?;
        match &self.backend {
            Backend::Local(root) => {
                local::write_atomic(&root.join(key), &self.url_of(key), stream).await
            }
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                self.put_object(store.as_ref(), &path, key, stream).await
            }
        }
    }

    async fn put_object<S>(
        &self,
        store: &dyn ObjectStore,
        path: &ObjPath,
        key: &str,
        stream: S,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Send,
    {
        let source_err = |source| StoreError::Source {
            url: self.url_of(key),
            source,
        };
        let mut stream = std::pin::pin!(stream);
        // Buffer up to one part: small objects (most artifacts) then take a single PUT.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let mut ended = true;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(source_err)?;
            head_len += chunk.len();
            head.push(chunk);
            if head_len > PART_SIZE {
                ended = false;
                break;
            }
        }
        if ended {
            let payload: PutPayload = head.into_iter().collect();
            store
                .put(path, payload)
                .await
                .map_err(|e| self.backend_err("put", key, e))?;
            return Ok(head_len as u64);
        }
        let upload = store
            .put_multipart(path)
            .await
            .map_err(|e| self.backend_err("start upload", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut total = head_len as u64;
        for chunk in head {
            writer.put(chunk);
        }
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    writer.put(chunk);
                    if let Err(e) = writer.wait_for_capacity(4).await {
                        failure = Some(self.backend_err("upload part", key, e));
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(source_err(e));
                    break;
                }
            }
        }
        if let Some(err) = failure {
            // An aborted upload never becomes visible; an abort failure only leaves invisible
            // parts that the bucket's lifecycle rule cleans up.
            if let Err(e) = writer.abort().await {
                tracing::warn!(url = %self.url_of(key), error = %e, "aborting multipart upload failed");
            }
            return Err(err);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.backend_err("complete upload", key, e))?;
        Ok(total)
    }

    /// Uploads the local file `src` to `key` atomically; returns its size.
    pub async fn put_file(&self, key: &str, src: &Path) -> Result<u64> {
        let file = tokio::fs::File::open(src)
            .await
            .map_err(|e| StoreError::io("open", src, e))?;
        self.put_stream(key, tokio_util_stream(file)).await
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let key = object_key(key)?;
        match &self.backend {
            Backend::Local(root) => local::is_file(&root.join(key)).await,
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                match store.head(&path).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(self.backend_err("head", key, e)),
                }
            }
        }
    }

    /// Every object under `prefix` (a directory-like prefix; `""` for the whole store), as
    /// keys relative to the store root, sorted. In-flight temp files are not listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Local(root) => local::list(root, prefix_key(prefix)?).await,
            Backend::Object { .. } => Ok(self
                .versions(prefix)
                .await?
                .into_iter()
                .map(|v| v.key)
                .collect()),
        }
    }

    /// As [`Store::list`], with what identifies each object's current content (see
    /// [`ObjectVersion`]), from the same single listing.
    pub async fn versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let prefix = prefix_key(prefix)?;
        match &self.backend {
            Backend::Local(root) => {
                let mut out = Vec::new();
                for key in local::list(root, prefix).await? {
                    if let Some(v) = self.version(&key).await? {
                        out.push(v);
                    }
                }
                Ok(out)
            }
            Backend::Object {
                store,
                prefix: root,
            } => {
                let full = self.obj_path(root, prefix)?;
                let mut listing = store.list(Some(&full));
                let mut out = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(|e| self.backend_err("list", prefix, e))?;
                    let Some(rel) = meta.location.prefix_match(root) else {
                        continue;
                    };
                    let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
                    out.push(ObjectVersion::from_meta(rel.join("/"), &meta));
                }
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
        }
    }

    /// The current version of one object, or `None` when it does not exist.
    pub async fn version(&self, key: &str) -> Result<Option<ObjectVersion>> {
        let key = object_key(key)?;
        match &self.backend {
            Backend::Local(root) => {
                let path = root.join(key);
                match tokio::fs::metadata(&path).await {
                    Ok(m) if m.is_file() => {
                        let modified = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_nanos().to_string())
                            .unwrap_or_default();
                        Ok(Some(ObjectVersion {
                            key: key.to_string(),
                            size: m.len(),
                            tag: modified,
                        }))
                    }
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::io("stat", path, e)),
                }
            }
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                match store.head(&path).await {
                    Ok(meta) => Ok(Some(ObjectVersion::from_meta(key.to_string(), &meta))),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.backend_err("head", key, e)),
                }
            }
        }
    }

    /// Deletes the object; deleting a missing object succeeds (stages re-run deletes).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let key = object_key(key)?;
        match &self.backend {
            Backend::Local(root) => local::delete(&root.join(key)).await,
            Backend::Object { store, prefix } => {
                let path = self.obj_path(prefix, key)?;
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.backend_err("delete", key, e)),
                }
            }
        }
    }

    /// Deletes every object under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let prefix = prefix_key(prefix)?;
        if prefix.is_empty() {
            return Err(StoreError::InvalidKey {
                key: String::new(),
                reason: "refusing to delete the whole store: name a prefix such as \"round-1/checkpoints\"",
            });
        }
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        if let Backend::Local(root) = &self.backend {
            // Drop the now-empty directories too, so the prefix is gone as on object stores.
            let dir = root.join(prefix);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != io::ErrorKind::NotFound
                && e.kind() != io::ErrorKind::NotADirectory
            {
                return Err(StoreError::io("delete directory", dir, e));
            }
        }
        Ok(keys.len())
    }

    /// Reads a JSON document (e.g. `round-1/eval/summary.json`).
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let bytes = self.get(key).await?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            url: self.url_of(key),
            source,
        })
    }

    /// Writes a JSON document atomically (pretty-printed, trailing newline).
    pub async fn put_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
            url: self.url_of(key),
            source,
        })?;
        bytes.push(b'\n');
        self.put(key, bytes).await
    }
}

/// `s3://bucket/prefix` -> `s3://bucket`: the builders take the bucket from the URL and we keep
/// the prefix ourselves (so `list` and keys are relative to it).
fn bucket_url(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_path("");
    u.set_query(None);
    u.set_fragment(None);
    u.to_string().trim_end_matches('/').to_string()
}

/// A file as a stream of chunks.
fn tokio_util_stream(file: tokio::fs::File) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_url_drops_the_prefix() {
        let u = url::Url::parse("s3://bucket/a/b?x=1").unwrap();
        assert_eq!(bucket_url(&u), "s3://bucket");
    }
}
