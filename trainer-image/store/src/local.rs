//! The local filesystem backend and the atomic-file primitives every download also uses.
//!
//! Atomic write: stream into a hidden temp file in the destination's directory, fsync it,
//! rename it over the destination, fsync the directory. A reader sees the old file or the
//! complete new one, never a prefix; a failed or cancelled write leaves no file behind (the
//! temp file is removed by a drop guard, so cancellation of the future is covered too).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::error::{Result, StoreError};
use crate::key::TMP_MARKER;

/// Removes a temp file or directory on drop unless it was persisted.
pub(crate) struct TempGuard {
    path: PathBuf,
    dir: bool,
    armed: bool,
}

impl TempGuard {
    pub(crate) fn file(path: PathBuf) -> Self {
        Self {
            path,
            dir: false,
            armed: true,
        }
    }

    pub(crate) fn dir(path: PathBuf) -> Self {
        Self {
            path,
            dir: true,
            armed: true,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the path (it has been renamed into place).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the temp name is hidden and skipped by listings, so a leftover after
            // a failed removal is harmless.
            let _ = if self.dir {
                std::fs::remove_dir_all(&self.path)
            } else {
                std::fs::remove_file(&self.path)
            };
        }
    }
}

/// A unique hidden sibling of `dest` for an in-flight write.
pub(crate) fn temp_sibling(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}{TMP_MARKER}{}.{n}", std::process::id());
    dest.with_file_name(tmp)
}

/// Makes a rename in `dir` durable. Some filesystems (FUSE, network mounts) refuse to fsync a
/// directory; the rename itself is still atomic there, so that is not an error.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync not supported");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Writes `stream` to `dest` atomically; returns the number of bytes written.
///
/// A stream error becomes [`StoreError::Source`] naming `url` (how the caller names `dest`).
pub(crate) async fn write_atomic<S>(dest: &Path, url: &str, stream: S) -> Result<u64>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let parent = dest.parent().ok_or_else(|| StoreError::InvalidUrl {
        url: url.to_string(),
        reason: "has no parent directory to write into".into(),
    })?;
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| StoreError::io("create directory", parent, e))?;
    let mut guard = TempGuard::file(temp_sibling(dest));
    let mut file = tokio::fs::File::create(guard.path())
        .await
        .map_err(|e| StoreError::io("create", guard.path(), e))?;
    let mut written = 0u64;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| StoreError::Source {
            url: url.to_string(),
            source,
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| StoreError::io("write", guard.path(), e))?;
        written += chunk.len() as u64;
    }
    file.flush()
        .await
        .map_err(|e| StoreError::io("flush", guard.path(), e))?;
    file.sync_all()
        .await
        .map_err(|e| StoreError::io("fsync", guard.path(), e))?;
    drop(file);
    tokio::fs::rename(guard.path(), dest)
        .await
        .map_err(|e| StoreError::io("rename into place", dest, e))?;
    guard.disarm();
    sync_dir(parent);
    Ok(written)
}

/// Reads a whole file; `None` when it does not exist.
pub(crate) async fn read(path: &Path) -> Result<Option<Bytes>> {
    match tokio::fs::read(path).await {
        Ok(v) => Ok(Some(Bytes::from(v))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path, e)),
    }
}

/// Whether a regular file (or a symlink to one) exists at `path`.
pub(crate) async fn is_file(path: &Path) -> Result<bool> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("stat", path, e)),
    }
}

/// Every file under `root/prefix`, as keys relative to `root`, sorted; temp files skipped.
pub(crate) async fn list(root: &Path, prefix: &str) -> Result<Vec<String>> {
    let root = root.to_path_buf();
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let start = if prefix.is_empty() {
            root.clone()
        } else {
            root.join(&prefix)
        };
        walk(&start, &prefix, &mut out)?;
        out.sort();
        Ok(out)
    })
    .await
    .map_err(|e| StoreError::io("list", PathBuf::new(), io::Error::other(e)))?
}

fn walk(dir: &Path, key_prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A missing or non-directory prefix lists nothing, as on object stores.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(StoreError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| {
            StoreError::io(
                "list",
                entry.path(),
                io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
            )
        })?;
        if name.contains(TMP_MARKER) {
            continue;
        }
        let key = crate::key::join(key_prefix, name);
        // metadata() follows symlinks: Hugging Face snapshots are symlinks into blobs/.
        let meta =
            std::fs::metadata(entry.path()).map_err(|e| StoreError::io("stat", entry.path(), e))?;
        if meta.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

/// Deletes a file; a missing file is fine (deletes are idempotent so stages can resume).
pub(crate) async fn delete(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("delete", path, e)),
    }
}
