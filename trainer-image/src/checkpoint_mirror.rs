//! Kill-safe checkpoints on object storage. With `file://` storage the train stage writes its
//! resume points (round-{n}/checkpoints/step-*/, best-epoch-*/) straight into the artifact
//! store, which outlives the pod. An object store cannot be written file by file as training
//! goes, so the checkpoints are written on the pod's scratch disk and mirrored to the same
//! keys of the artifact store after every save; a new pod (after an eviction, an OOM kill, a
//! lost node) pulls them back before it trains, and resumes where the last one stopped.
//!
//! Atomic as a whole: each checkpoint directory's `state.json` (which the trainer reads first
//! and without which it ignores the directory) is uploaded after its tensors, so a pod killed
//! mid-upload leaves an older complete checkpoint or an incomplete one that a pull skips.
//! Remote files the trainer no longer keeps (older checkpoints beyond `keepCheckpoints`) are
//! deleted after the new ones are up. The train stage deletes the whole prefix once the model
//! is published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use llamaduo_store::Store;

/// The file whose presence makes a checkpoint directory complete.
const STATE: &str = "state.json";

/// The local checkpoint directory and its mirror under `prefix` of the artifact store.
pub struct CheckpointMirror {
    store: Store,
    prefix: String,
    local: PathBuf,
    /// What was uploaded (or pulled) of each relative path: size and mtime, so unchanged
    /// files are not sent again.
    synced: BTreeMap<String, (u64, Option<SystemTime>)>,
}

impl CheckpointMirror {
    /// A mirror of `local` at `prefix` (e.g. `round-2/checkpoints`) of `store`.
    pub fn new(store: Store, prefix: impl Into<String>, local: impl Into<PathBuf>) -> Self {
        Self {
            store,
            prefix: prefix.into(),
            local: local.into(),
            synced: BTreeMap::new(),
        }
    }

    /// Downloads the complete checkpoint directories under the prefix into the local
    /// directory (files already there with the same size are kept); returns how many files
    /// came down. Incomplete directories (no `state.json`: a pod killed mid-upload) are
    /// skipped, except `best-epoch-*` weights, which carry no state and are written before
    /// the checkpoint that refers to them.
    pub async fn pull(&mut self) -> anyhow::Result<usize> {
        let keys = self
            .store
            .list(&self.prefix)
            .await
            .with_context(|| format!("listing {}", self.store.url_of(&self.prefix)))?;
        let rel: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("{}/", self.prefix)))
            .map(str::to_string)
            .collect();
        let complete = |path: &str| match path.split_once('/') {
            Some((dir, _)) if dir.starts_with("step-") => {
                rel.iter().any(|r| *r == format!("{dir}/{STATE}"))
            }
            _ => true,
        };
        let mut pulled = 0;
        for path in rel.iter().filter(|p| complete(p)) {
            let dest = self.local.join(path);
            let key = format!("{}/{path}", self.prefix);
            if !dest.exists() {
                self.store
                    .get_to_file(&key, &dest)
                    .await
                    .with_context(|| format!("downloading {}", self.store.url_of(&key)))?;
                pulled += 1;
            }
            self.synced.insert(path.clone(), file_stamp(&dest)?);
        }
        Ok(pulled)
    }

    /// Uploads what changed in the local directory since the last push or pull (each
    /// directory's `state.json` last), then deletes remote files that are gone locally;
    /// returns (uploaded, deleted).
    pub async fn push(&mut self) -> anyhow::Result<(usize, usize)> {
        let mut files = Vec::new();
        if self.local.exists() {
            let mut paths = Vec::new();
            crate::student::collect_files(&self.local, &mut paths)
                .with_context(|| format!("reading {}", self.local.display()))?;
            for path in paths {
                if let Some(rel) = path.strip_prefix(&self.local)?.to_str() {
                    files.push(rel.replace('\\', "/"));
                }
            }
        }
        // Temporary directories of a save in progress are not checkpoints yet.
        files.retain(|rel| !rel.split('/').any(|part| part.starts_with(".tmp-")));
        files.sort_by_key(|rel| (rel.ends_with(&format!("/{STATE}")), rel.clone()));
        let mut uploaded = 0;
        for rel in &files {
            let path = self.local.join(rel);
            let stamp = file_stamp(&path)?;
            if self.synced.get(rel) == Some(&stamp) {
                continue;
            }
            let key = format!("{}/{rel}", self.prefix);
            self.store
                .put_file(&key, &path)
                .await
                .with_context(|| format!("uploading {}", self.store.url_of(&key)))?;
            self.synced.insert(rel.clone(), stamp);
            uploaded += 1;
        }
        // Each checkpoint directory's state first, so a pull never sees a state whose
        // tensors are already gone.
        let mut gone: Vec<String> = self
            .synced
            .keys()
            .filter(|rel| !files.contains(rel))
            .cloned()
            .collect();
        gone.sort_by_key(|rel| (!rel.ends_with(&format!("/{STATE}")), rel.clone()));
        for rel in &gone {
            let key = format!("{}/{rel}", self.prefix);
            self.store
                .delete(&key)
                .await
                .with_context(|| format!("deleting {}", self.store.url_of(&key)))?;
            self.synced.remove(rel);
        }
        Ok((uploaded, gone.len()))
    }

    /// Deletes the mirror (the model is published: nothing will resume from it).
    pub async fn remove(&self) -> anyhow::Result<usize> {
        self.store
            .delete_prefix(&self.prefix)
            .await
            .with_context(|| format!("deleting {}", self.store.url_of(&self.prefix)))
    }
}

fn file_stamp(path: &Path) -> anyhow::Result<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.len(), meta.modified().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    }

    #[tokio::test]
    async fn checkpoints_round_trip_through_the_store_and_old_ones_are_deleted() {
        let remote = tempfile::tempdir().expect("remote");
        let store = Store::local(remote.path());
        let pod1 = tempfile::tempdir().expect("pod1");
        let mut m = CheckpointMirror::new(store.clone(), "round-1/checkpoints", pod1.path());
        write(pod1.path(), "step-00000010/trainable.safetensors", "w10");
        write(pod1.path(), "step-00000010/state.json", "{\"step\":10}");
        write(
            pod1.path(),
            ".tmp-step-00000020/trainable.safetensors",
            "partial",
        );
        assert_eq!(m.push().await.expect("push"), (2, 0));
        assert_eq!(m.push().await.expect("push"), (0, 0), "nothing changed");
        // The next checkpoint replaces the first (keepCheckpoints 1).
        std::fs::remove_dir_all(pod1.path().join(".tmp-step-00000020")).expect("rm");
        write(pod1.path(), "step-00000020/trainable.safetensors", "w20");
        write(pod1.path(), "step-00000020/state.json", "{\"step\":20}");
        std::fs::remove_dir_all(pod1.path().join("step-00000010")).expect("rm");
        assert_eq!(m.push().await.expect("push"), (2, 2));
        assert_eq!(
            store.list("round-1/checkpoints").await.expect("list"),
            [
                "round-1/checkpoints/step-00000020/state.json",
                "round-1/checkpoints/step-00000020/trainable.safetensors"
            ]
        );
        // A new pod pulls the checkpoint back.
        let pod2 = tempfile::tempdir().expect("pod2");
        let mut m2 = CheckpointMirror::new(store.clone(), "round-1/checkpoints", pod2.path());
        assert_eq!(m2.pull().await.expect("pull"), 2);
        assert_eq!(
            std::fs::read_to_string(pod2.path().join("step-00000020/trainable.safetensors"))
                .expect("read"),
            "w20"
        );
        assert_eq!(
            m2.push().await.expect("push"),
            (0, 0),
            "pulled files are synced"
        );
        assert_eq!(m2.remove().await.expect("remove"), 2);
        assert!(store.list("round-1").await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_checkpoint_whose_upload_was_cut_short_is_not_pulled() {
        let remote = tempfile::tempdir().expect("remote");
        let store = Store::local(remote.path());
        write(
            remote.path(),
            "round-1/checkpoints/step-00000010/state.json",
            "{}",
        );
        write(
            remote.path(),
            "round-1/checkpoints/step-00000010/trainable.safetensors",
            "w",
        );
        // Killed before its state.json went up.
        write(
            remote.path(),
            "round-1/checkpoints/step-00000020/trainable.safetensors",
            "w",
        );
        write(
            remote.path(),
            "round-1/checkpoints/best-epoch-1/trainable.safetensors",
            "b",
        );
        let pod = tempfile::tempdir().expect("pod");
        let mut m = CheckpointMirror::new(store, "round-1/checkpoints", pod.path());
        assert_eq!(m.pull().await.expect("pull"), 3);
        assert!(pod.path().join("step-00000010/state.json").exists());
        assert!(!pod.path().join("step-00000020").exists());
        assert!(
            pod.path()
                .join("best-epoch-1/trainable.safetensors")
                .exists()
        );
    }
}
