//! Source resolution, offline: local paths, object-store downloads into the cache (InMemory),
//! a hand-built Hugging Face cache, and the Hub wire protocol against a local axum server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use llamaduo_store::{HfConfig, Resolver, Store, StoreError};
use object_store::memory::InMemory;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn config(hub: &Path, endpoint: &str, token: Option<&str>, offline: bool) -> HfConfig {
    let mut vars: HashMap<&str, String> = HashMap::new();
    vars.insert("HF_HUB_CACHE", hub.display().to_string());
    vars.insert("HF_ENDPOINT", endpoint.to_string());
    // Hermetic: no token file from this machine's `hf auth login`.
    vars.insert("HF_TOKEN_PATH", hub.join("no-token").display().to_string());
    if let Some(t) = token {
        vars.insert("HF_TOKEN", t.to_string());
    }
    if offline {
        vars.insert("HF_HUB_OFFLINE", "1".into());
    }
    HfConfig::from_lookup(|k| vars.get(k).cloned())
}

/// An endpoint nothing listens on: any request fails, which proves a resolution was offline.
const DEAD: &str = "http://127.0.0.1:9";

#[tokio::test]
async fn local_paths_resolve_to_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let r = Resolver::new(
        dir.path().join("cache"),
        config(dir.path(), DEAD, None, false),
    );
    assert_eq!(
        r.resolve(&format!("file://{}", model.display()))
            .await
            .unwrap(),
        model
    );
    assert_eq!(r.resolve(model.to_str().unwrap()).await.unwrap(), model);
    let e = r.resolve("/no/such/model").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn object_store_sources_are_downloaded_once_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::from_object_store(Arc::new(InMemory::new()), "ns/m", "s3://bucket/ns/m").unwrap();
    store
        .put("round-1/model/config.json", "{\"hidden_size\":8}")
        .await
        .unwrap();
    store
        .put("round-1/model/tokenizer.json", "{}")
        .await
        .unwrap();
    store
        .put("round-1/model/sub/adapter.safetensors", vec![7u8; 1000])
        .await
        .unwrap();
    let r = Resolver::new(
        dir.path().join("cache"),
        config(dir.path(), DEAD, None, false),
    );

    // A prefix: the whole directory tree.
    let model = r.resolve_in(&store, "round-1/model").await.unwrap();
    assert!(
        model.starts_with(dir.path().join("cache/objects")),
        "{}",
        model.display()
    );
    assert_eq!(
        std::fs::read_to_string(model.join("config.json")).unwrap(),
        "{\"hidden_size\":8}"
    );
    assert_eq!(
        std::fs::read(model.join("sub/adapter.safetensors")).unwrap(),
        vec![7u8; 1000]
    );

    // A single object: the file.
    let cfg = r
        .resolve_in(&store, "round-1/model/config.json")
        .await
        .unwrap();
    assert!(cfg.is_file());
    assert_eq!(cfg.file_name().unwrap(), "config.json");

    // Cached: resolving the unchanged source again reuses the entry.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let first = mtime(&model.join("config.json"));
    assert_eq!(r.resolve_in(&store, "round-1/model").await.unwrap(), model);
    assert_eq!(mtime(&model.join("config.json")), first);
    // Nothing half-downloaded is left beside the entries: one folder per URL.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("cache/objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("llamaduo-tmp")));

    // The round is trained again under the same key: the new weights are fetched, not the
    // cached old ones, and the old entry is removed.
    store
        .put("round-1/model/sub/adapter.safetensors", vec![9u8; 1000])
        .await
        .unwrap();
    let retrained = r.resolve_in(&store, "round-1/model").await.unwrap();
    assert_ne!(retrained, model);
    assert_eq!(
        std::fs::read(retrained.join("sub/adapter.safetensors")).unwrap(),
        vec![9u8; 1000]
    );
    assert!(!model.exists(), "the outdated entry is removed");
    let url_dir = retrained.parent().unwrap().parent().unwrap();
    assert_eq!(std::fs::read_dir(url_dir).unwrap().count(), 1);

    // A source that is gone is gone, even with a cached copy.
    store.delete_prefix("round-1").await.unwrap();
    let e = r.resolve_in(&store, "round-1/model").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    let e = r.resolve_in(&store, "round-9/model").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        e.to_string().contains("s3://bucket/ns/m/round-9/model"),
        "{e}"
    );

    // A local store resolves in place, with no copy.
    let local = Store::local(dir.path().join("artifacts"));
    local.put("round-1/model/config.json", "{}").await.unwrap();
    assert_eq!(
        r.resolve_in(&local, "round-1/model").await.unwrap(),
        dir.path().join("artifacts/round-1/model")
    );
}

/// Writes a cache entry the way huggingface_hub does: blob + relative symlink + refs.
fn fake_cache_file(hub: &Path, folder: &str, rev: &str, file: &str, content: &str) -> PathBuf {
    let repo = hub.join(folder);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let blob_name = format!("blob{}", content.len());
    std::fs::write(repo.join("blobs").join(&blob_name), content).unwrap();
    std::fs::write(repo.join("refs").join(rev), SHA).unwrap();
    let target = repo.join("snapshots").join(SHA).join(file);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let depth = 1 + file.split('/').count();
    let rel: PathBuf = std::iter::repeat_n("..", depth)
        .chain(["blobs", &blob_name])
        .collect();
    std::os::unix::fs::symlink(rel, &target).unwrap();
    target
}

#[tokio::test]
async fn hf_files_in_the_cache_are_used_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let cfg_path = fake_cache_file(
        &hub,
        "models--org--tiny",
        "main",
        "config.json",
        "{\"a\":1}",
    );
    fake_cache_file(
        &hub,
        "models--org--tiny",
        "main",
        "nested/tokenizer.json",
        "{}",
    );
    let data = fake_cache_file(
        &hub,
        "datasets--org--tickets",
        "main",
        "data/train.jsonl",
        "{}\n",
    );
    let r = Resolver::new(dir.path().join("cache"), config(&hub, DEAD, None, false));

    let got = r.resolve("hf://org/tiny/config.json").await.unwrap();
    assert_eq!(got, cfg_path);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "{\"a\":1}");
    assert!(
        r.resolve("hf://org/tiny@main/nested/tokenizer.json")
            .await
            .unwrap()
            .is_file()
    );
    // By commit sha: no refs lookup needed.
    assert_eq!(
        r.resolve(&format!("hf://org/tiny@{SHA}/config.json"))
            .await
            .unwrap(),
        cfg_path
    );
    assert_eq!(
        r.resolve("hf://datasets/org/tickets/data/train.jsonl")
            .await
            .unwrap(),
        data
    );

    // A whole repository is only trusted from the cache offline (the file list is unknown
    // otherwise); online it must ask the Hub, which here is unreachable: a clear error.
    let e = r.resolve("hf://org/tiny").await.unwrap_err();
    assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
    let offline = Resolver::new(dir.path().join("cache"), config(&hub, DEAD, None, true));
    let snap = offline.resolve("hf://org/tiny").await.unwrap();
    assert_eq!(snap, hub.join("models--org--tiny/snapshots").join(SHA));
    let e = offline
        .resolve("hf://org/tiny/missing.json")
        .await
        .unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[derive(Default)]
struct Hub {
    requests: AtomicUsize,
    auth: Mutex<Vec<Option<String>>>,
    /// path inside the repo -> content
    files: HashMap<String, String>,
}

async fn revision(
    State(hub): State<Arc<Hub>>,
    UrlPath((kind, org, name, rev)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    hub.auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
    );
    if org != "org"
        || !((kind == "models" && name == "tiny") || (kind == "datasets" && name == "tickets"))
    {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    }
    if name == "tiny" && headers.get("authorization").is_none() {
        return (StatusCode::UNAUTHORIZED, "gated").into_response();
    }
    if rev != "main" && rev != SHA {
        return (StatusCode::NOT_FOUND, "Revision not found").into_response();
    }
    let siblings: Vec<_> = hub
        .files
        .keys()
        .map(|f| serde_json::json!({ "rfilename": f }))
        .collect();
    axum::Json(
        serde_json::json!({ "id": format!("{org}/{name}"), "sha": SHA, "siblings": siblings }),
    )
    .into_response()
}

/// `/{org}/{name}/resolve/{rev}/{*file}`: redirects to a CDN path, as the real Hub does for
/// large files, so the client must follow redirects.
async fn resolve(
    State(hub): State<Arc<Hub>>,
    UrlPath((_org, _name, rev, file)): UrlPath<(String, String, String, String)>,
) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    assert_eq!(rev, SHA, "files must be fetched by commit sha");
    if !hub.files.contains_key(&file) {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    }
    Redirect::temporary(&format!("/cdn/{file}")).into_response()
}

async fn cdn(State(hub): State<Arc<Hub>>, UrlPath(file): UrlPath<String>) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    hub.files[&file].clone().into_response()
}

async fn dataset_resolve(
    state: State<Arc<Hub>>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
) -> Response {
    resolve(state, UrlPath((org, name, rev, file))).await
}

async fn serve(hub: Arc<Hub>) -> String {
    let app = Router::new()
        .route("/api/{kind}/{org}/{name}/revision/{rev}", get(revision))
        .route(
            "/datasets/{org}/{name}/resolve/{rev}/{*file}",
            get(dataset_resolve),
        )
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .route("/cdn/{*file}", get(cdn))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn hf_downloads_over_the_wire_into_the_hf_cache_layout() {
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let hub = Arc::new(Hub {
        files: [
            (
                "config.json".to_string(),
                "{\"hidden_size\":64}".to_string(),
            ),
            ("model.safetensors".to_string(), "weights".repeat(1000)),
            ("nested/tokenizer.json".to_string(), "{\"v\":1}".to_string()),
            ("onnx/model.onnx".to_string(), "onnx".to_string()),
            ("README.md".to_string(), "# tiny".to_string()),
        ]
        .into(),
        ..Hub::default()
    });
    let endpoint = serve(hub.clone()).await;
    let r = Resolver::new(
        dir.path().join("cache"),
        config(&hub_dir, &endpoint, Some("hf_test_token"), false),
    );

    // One file.
    let cfg = r.resolve("hf://org/tiny/config.json").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "{\"hidden_size\":64}"
    );
    let repo = hub_dir.join("models--org--tiny");
    assert_eq!(cfg, repo.join("snapshots").join(SHA).join("config.json"));
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        SHA
    );
    // The snapshot entry is a relative symlink to a content-addressed blob.
    let link = std::fs::read_link(&cfg).unwrap();
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    assert_eq!(link.file_name().unwrap().len(), 64);
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        3,
        "revision + resolve + cdn"
    );
    assert!(
        hub.auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer hf_test_token")),
        "HF_TOKEN is sent to the API"
    );

    // The same file again: from the cache, no request.
    assert_eq!(r.resolve("hf://org/tiny/config.json").await.unwrap(), cfg);
    assert_eq!(hub.requests.load(Ordering::SeqCst), 3);

    // The whole repository: fetches only the missing files it needs to load the model; the
    // ONNX export, the README and subfolders stay on the Hub.
    let snap = r.resolve("hf://org/tiny").await.unwrap();
    assert_eq!(snap, repo.join("snapshots").join(SHA));
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap().len(),
        7000
    );
    assert!(!snap.join("onnx").exists() && !snap.join("README.md").exists());
    assert!(!snap.join("nested").exists());
    assert_eq!(hub.requests.load(Ordering::SeqCst), 3 + 1 + 2);
    // ...and is complete in the cache from now on, even for a fresh resolver with no network.
    let offline_dead = Resolver::new(
        dir.path().join("cache"),
        config(&hub_dir, DEAD, None, false),
    );
    assert_eq!(offline_dead.resolve("hf://org/tiny").await.unwrap(), snap);
    // Anything else can be named explicitly.
    let tok = r
        .resolve("hf://org/tiny/nested/tokenizer.json")
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(tok).unwrap(), "{\"v\":1}");
    // A wider file selection is a different request: it is not satisfied by the first record.
    let mut wide = config(&hub_dir, &endpoint, Some("hf_test_token"), false);
    wide.repo_files.push("onnx/*".into());
    let before = hub.requests.load(Ordering::SeqCst);
    let snap2 = Resolver::new(dir.path().join("cache"), wide)
        .resolve("hf://org/tiny")
        .await
        .unwrap();
    assert_eq!(snap2, snap);
    assert_eq!(
        std::fs::read_to_string(snap.join("onnx/model.onnx")).unwrap(),
        "onnx"
    );
    assert_eq!(hub.requests.load(Ordering::SeqCst), before + 1 + 2);

    // A dataset file.
    let data = r
        .resolve("hf://datasets/org/tickets/config.json")
        .await
        .unwrap();
    assert_eq!(
        data,
        hub_dir
            .join("datasets--org--tickets/snapshots")
            .join(SHA)
            .join("config.json")
    );

    // Errors say what to fix.
    let e = r.resolve("hf://org/tiny/nope.bin").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = r.resolve("hf://org/missing").await.unwrap_err();
    assert!(
        matches!(e, StoreError::Hub { .. }) && e.to_string().contains("404"),
        "{e}"
    );
    let e = r.resolve("hf://org/tiny@v9/config.json").await.unwrap_err();
    assert!(e.to_string().contains("\"v9\""), "{e}");
    let anonymous = Resolver::new(
        dir.path().join("cache2"),
        config(&dir.path().join("hub2"), &endpoint, None, false),
    );
    let e = anonymous
        .resolve("hf://org/tiny/config.json")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HF_TOKEN"), "{e}");
    // The token never appears in errors or Debug output.
    assert!(!format!("{e:?}{r:?}").contains("hf_test_token"));

    // No temp files left in the cache.
    let leftovers: Vec<_> = walk(&hub_dir)
        .into_iter()
        .filter(|p| p.contains("llamaduo-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}
