//! Downloading from the Hugging Face Hub into the cache layout of [`crate::hf`].
//!
//! Two endpoints, as `huggingface_hub` uses them:
//! `GET {endpoint}/api/{models|datasets}/ORG/NAME/revision/REV` gives the commit sha and the
//! file list; `GET {endpoint}[/datasets]/ORG/NAME/resolve/SHA/FILE` gives a file (following the
//! redirect to the CDN; reqwest drops the Authorization header on cross-host redirects).
//! Files are fetched by commit sha, so one resolution never mixes two revisions.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Result, StoreError};
use crate::hf::{CompleteSnapshot, HfConfig, HfRef, HfRepoType, complete_marker, is_commit};
use crate::local::{TempGuard, sync_dir, temp_sibling, write_atomic};

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// An HTTP client for the Hub (rustls with ring).
pub(crate) fn client() -> Result<reqwest::Client> {
    crate::tls::install_ring_provider();
    reqwest::Client::builder()
        .user_agent(concat!("llamaduo-store/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| StoreError::Hub {
            url: String::new(),
            reason: format!("cannot build the HTTP client: {e}"),
        })
}

fn endpoint_url(cfg: &HfConfig, segments: &[&str]) -> Result<url::Url> {
    let mut url = url::Url::parse(&cfg.endpoint).map_err(|e| StoreError::InvalidUrl {
        url: crate::error::redact_url(&cfg.endpoint),
        reason: format!("HF_ENDPOINT is not a URL ({e}); e.g. https://huggingface.co"),
    })?;
    url.path_segments_mut()
        .map_err(|()| StoreError::InvalidUrl {
            url: crate::error::redact_url(&cfg.endpoint),
            reason: "HF_ENDPOINT cannot have paths appended; e.g. https://huggingface.co".into(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

async fn send(
    cfg: &HfConfig,
    client: &reqwest::Client,
    url: &url::Url,
    r: &HfRef,
) -> Result<reqwest::Response> {
    let mut req = client.get(url.clone());
    if let Some(token) = &cfg.token {
        req = req.bearer_auth(token);
    }
    let shown = crate::error::redact_url(url.as_str());
    let resp = req.send().await.map_err(|e| StoreError::Hub {
        url: shown.clone(),
        reason: format!(
            "request failed: {e}; check HF_ENDPOINT ({}) and the network, or set HF_HUB_OFFLINE=1 to use only the cache",
            cfg.endpoint
        ),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    let hint = match status.as_u16() {
        401 | 403 => format!(
            "{} is private or gated: set HF_TOKEN to a token with access (and accept its terms on the Hub)",
            r.repo_id
        ),
        404 => format!(
            "{} {} or revision {:?} not found: check the name and revision",
            r.repo_type.plural().trim_end_matches('s'),
            r.repo_id,
            r.revision
        ),
        _ => "the Hub answered with an error".to_string(),
    };
    Err(StoreError::Hub {
        url: shown,
        reason: format!("HTTP {status}: {hint} ({snippet})"),
    })
}

/// Downloads what `r` names into the cache and returns its snapshot path.
pub(crate) async fn download(
    cfg: &HfConfig,
    client: &reqwest::Client,
    r: &HfRef,
) -> Result<PathBuf> {
    let (org, name) = r.repo_id.split_once('/').unwrap_or((&r.repo_id, ""));
    let api = endpoint_url(
        cfg,
        &[
            "api",
            r.repo_type.plural(),
            org,
            name,
            "revision",
            &r.revision,
        ],
    )?;
    let info: RevisionInfo = send(cfg, client, &api, r)
        .await?
        .json()
        .await
        .map_err(|e| StoreError::Hub {
            url: api.to_string(),
            reason: format!("unexpected revision info: {e}"),
        })?;
    if !is_commit(&info.sha) {
        return Err(StoreError::Hub {
            url: api.to_string(),
            reason: format!("the Hub returned {:?}, not a commit sha", info.sha),
        });
    }
    let repo_dir = cfg.repo_dir(r);
    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    let listed: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted: Vec<String> = match &r.file {
        Some(file) => {
            if !listed.iter().any(|f| f == file) {
                return Err(StoreError::NotFound {
                    url: format!(
                        "hf://{}@{}/{file} (not in the repository's file list)",
                        r.repo_id, r.revision
                    ),
                });
            }
            vec![file.clone()]
        }
        None => listed.iter().filter(|f| cfg.wants(f)).cloned().collect(),
    };
    for file in &wanted {
        // Hub listings are trusted no further than our own keys: no '..', no absolute paths.
        crate::key::object_key(file)?;
        let target = snapshot.join(file);
        if target.is_file() {
            continue;
        }
        let mut segments = vec![];
        if r.repo_type == HfRepoType::Dataset {
            segments.push("datasets");
        }
        segments.extend([org, name, "resolve", info.sha.as_str()]);
        segments.extend(file.split('/'));
        let url = endpoint_url(cfg, &segments)?;
        tracing::info!(url = %url, "downloading from the Hugging Face Hub");
        let resp = send(cfg, client, &url, r).await?;
        fetch_blob(resp, &repo_dir, &target, file, url.as_str()).await?;
    }
    if !r.revision_is_commit() {
        let refs = repo_dir.join("refs").join(&r.revision);
        let bytes = bytes::Bytes::from(info.sha.clone());
        write_atomic(
            &refs,
            &refs.display().to_string(),
            futures::stream::once(async { Ok(bytes) }),
        )
        .await?;
    }
    match &r.file {
        Some(file) => Ok(snapshot.join(file)),
        None => {
            let marker = complete_marker(cfg, r, &info.sha);
            let json =
                serde_json::to_vec(&CompleteSnapshot { files: wanted }).map_err(|source| {
                    StoreError::Json {
                        url: marker.display().to_string(),
                        source,
                    }
                })?;
            let bytes = bytes::Bytes::from(json);
            write_atomic(
                &marker,
                &marker.display().to_string(),
                futures::stream::once(async { Ok(bytes) }),
            )
            .await?;
            tokio::fs::create_dir_all(&snapshot)
                .await
                .map_err(|e| StoreError::io("create directory", &snapshot, e))?;
            Ok(snapshot)
        }
    }
}

/// Streams a response into `blobs/{sha256}` and links `target` to it.
async fn fetch_blob(
    resp: reqwest::Response,
    repo_dir: &Path,
    target: &Path,
    file: &str,
    url: &str,
) -> Result<()> {
    let blobs = repo_dir.join("blobs");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(|e| StoreError::io("create directory", &blobs, e))?;
    let mut tmp = TempGuard::file(temp_sibling(&blobs.join("incoming")));
    let mut out = tokio::fs::File::create(tmp.path())
        .await
        .map_err(|e| StoreError::io("create", tmp.path(), e))?;
    let mut hasher = Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StoreError::Hub {
            url: url.to_string(),
            reason: format!("download interrupted: {e}; run again to retry"),
        })?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| StoreError::io("write", tmp.path(), e))?;
    }
    out.sync_all()
        .await
        .map_err(|e| StoreError::io("fsync", tmp.path(), e))?;
    drop(out);
    let hash = hex(&hasher.finalize());
    let blob = blobs.join(&hash);
    tokio::fs::rename(tmp.path(), &blob)
        .await
        .map_err(|e| StoreError::io("rename into place", &blob, e))?;
    tmp.disarm();
    sync_dir(&blobs);
    link(&blob, &hash, target, file).await
}

/// Points the snapshot entry `target` at the blob, atomically (temp link + rename).
async fn link(blob: &Path, hash: &str, target: &Path, file: &str) -> Result<()> {
    let parent = target.parent().unwrap_or(target);
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| StoreError::io("create directory", parent, e))?;
    let tmp = TempGuard::file(temp_sibling(target));
    #[cfg(unix)]
    {
        // From snapshots/{sha}/a/b/file up to the repo folder: 2 + (segments - 1) levels.
        let depth = 1 + file.split('/').count();
        let rel: PathBuf = std::iter::repeat_n("..", depth)
            .chain(["blobs", hash])
            .collect();
        tokio::fs::symlink(&rel, tmp.path())
            .await
            .map_err(|e| StoreError::io("symlink", tmp.path(), e))?;
    }
    #[cfg(not(unix))]
    {
        let _ = (hash, file);
        tokio::fs::copy(blob, tmp.path())
            .await
            .map_err(|e| StoreError::io("copy", tmp.path(), e))?;
    }
    #[cfg(unix)]
    let _ = blob;
    let mut tmp = tmp;
    tokio::fs::rename(tmp.path(), target)
        .await
        .map_err(|e| StoreError::io("rename into place", target, e))?;
    tmp.disarm();
    sync_dir(parent);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
