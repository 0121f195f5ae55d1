//! The student's base model as a local Hugging Face directory, wherever the spec points:
//! built from scratch (once per migration, kept under `student/base` in the artifacts),
//! a GGUF file (converted once into the cache), or any URL `llamaduo-store` resolves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use llamaduo::api::{ArtifactLayout, DatasetRow, StudentSpec};
use llamaduo_store::{Resolver, Store};

pub use llamaduo_store::cache_dir;

/// Makes sure the base model exists and returns its local directory.
///
/// `rows` feed the from-scratch tokenizer; they are only read when the base is built (round 1),
/// so later rounds reuse the same vocabulary.
pub async fn base_model_dir(
    student: &StudentSpec,
    store: &Store,
    rows: &[DatasetRow],
    seed: u64,
    max_seq_len: usize,
) -> anyhow::Result<PathBuf> {
    if let Some(spec) = &student.from_scratch {
        let marker = format!("{}/config.json", ArtifactLayout::STUDENT_BASE);
        if !store.exists(&marker).await? {
            let scratch = tempfile::tempdir_in(scratch_root()?)?;
            let texts = llamaduo_model::from_scratch::tokenizer_corpus(rows);
            let built = {
                let spec = spec.clone();
                let out = scratch.path().to_path_buf();
                tokio::task::spawn_blocking(move || {
                    llamaduo_model::from_scratch::build_from_scratch(
                        &spec,
                        &texts,
                        seed,
                        max_seq_len.max(64),
                        &out,
                    )
                })
                .await?
                .context("building the from-scratch student")?
            };
            tracing::info!(
                parameters = built.parameters,
                "built the from-scratch student"
            );
            publish_dir(
                store,
                scratch.path(),
                ArtifactLayout::STUDENT_BASE,
                "config.json",
            )
            .await?;
        }
        return local_dir(store, ArtifactLayout::STUDENT_BASE).await;
    }
    let url = student
        .base_model
        .as_deref()
        .context("spec.student needs baseModel or fromScratch")?;
    let resolver = Resolver::from_env(cache_dir());
    let local = resolver.resolve(url).await.with_context(|| {
        format!(
            "fetching student.baseModel {}",
            llamaduo_store::redact_url(url)
        )
    })?;
    if local.extension().is_some_and(|e| e == "gguf") {
        return gguf_as_hf_dir(&local).await;
    }
    Ok(local)
}

/// The local directory of a model stored under `key` (the store's own path when it is a local
/// filesystem, else a cached download).
pub async fn local_dir(store: &Store, key: &str) -> anyhow::Result<PathBuf> {
    let resolver = Resolver::from_env(cache_dir());
    resolver
        .resolve_in(store, key)
        .await
        .with_context(|| format!("reading {}", store.url_of(key)))
}

/// Converts a GGUF file into a Hugging Face directory once, cached by the file's checksum
/// (`llamaduo_model::gguf::cached_hf_dir`, the cache evaluate and serve use too).
async fn gguf_as_hf_dir(gguf: &Path) -> anyhow::Result<PathBuf> {
    let gguf = gguf.to_path_buf();
    tokio::task::spawn_blocking(move || {
        llamaduo_model::gguf::cached_hf_dir(&gguf, &cache_dir().join("gguf"))
            .with_context(|| format!("converting {} to a Hugging Face directory", gguf.display()))
    })
    .await?
}

/// A writable local directory for intermediate files.
pub fn scratch_root() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join("scratch");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Uploads every file of `dir` under `key/`, the `last` file after all others, so a reader
/// that finds `last` finds a complete directory. Each upload is atomic.
pub async fn publish_dir(store: &Store, dir: &Path, key: &str, last: &str) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort_by_key(|p| p.file_name().is_some_and(|n| n == last));
    for file in files {
        let rel = file
            .strip_prefix(dir)?
            .to_str()
            .context("non-UTF-8 file name")?
            .to_string();
        store
            .put_file(&format!("{key}/{rel}"), &file)
            .await
            .with_context(|| format!("writing {}", store.url_of(&format!("{key}/{rel}"))))?;
    }
    Ok(())
}

/// Every file under `dir`, recursively.
pub(crate) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
