//! Store operations on both backends: a local directory and object_store's InMemory (which
//! exercises every code path an S3/GCS/Azure store takes, minus the wire).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, stream};
use llamaduo_store::{Store, StoreError};
use object_store::memory::InMemory;

fn memory_store() -> Store {
    Store::from_object_store(
        Arc::new(InMemory::new()),
        "team-a/tickets",
        "memory:///team-a/tickets",
    )
    .unwrap()
}

async fn exercise_basic_ops(store: &Store) {
    assert!(!store.exists("round-1/summary.json").await.unwrap());
    assert!(
        store
            .get_opt("round-1/summary.json")
            .await
            .unwrap()
            .is_none()
    );
    let missing = store.get("round-1/summary.json").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(
        missing.to_string().contains("round-1/summary.json"),
        "{missing}"
    );

    store
        .put("round-1/summary.json", "{\"a\":1}")
        .await
        .unwrap();
    store.put("round-1/model/config.json", "{}").await.unwrap();
    store
        .put("round-1/model/sub/w.bin", vec![1u8, 2, 3])
        .await
        .unwrap();
    store.put("round-2/x", "x").await.unwrap();
    assert!(store.exists("round-1/summary.json").await.unwrap());
    assert_eq!(
        store.get("round-1/summary.json").await.unwrap(),
        Bytes::from("{\"a\":1}")
    );

    // Overwrite replaces the whole object.
    store
        .put("round-1/summary.json", "{\"a\":2}")
        .await
        .unwrap();
    let v: serde_json::Value = store.get_json("round-1/summary.json").await.unwrap();
    assert_eq!(v["a"], 2);

    assert_eq!(
        store.list("round-1").await.unwrap(),
        vec![
            "round-1/model/config.json",
            "round-1/model/sub/w.bin",
            "round-1/summary.json"
        ]
    );
    assert_eq!(store.list("round-1/model/").await.unwrap().len(), 2);
    assert_eq!(store.list("").await.unwrap().len(), 4);
    assert!(store.list("round-9").await.unwrap().is_empty());

    // A child store sees keys relative to itself.
    let r1 = store.child("round-1").unwrap();
    assert_eq!(r1.url(), format!("{}/round-1", store.url()));
    assert_eq!(
        r1.list("model").await.unwrap(),
        vec!["model/config.json", "model/sub/w.bin"]
    );
    assert_eq!(
        r1.get("model/sub/w.bin").await.unwrap().as_ref(),
        &[1, 2, 3]
    );

    // Deletes are idempotent.
    store.delete("round-2/x").await.unwrap();
    store.delete("round-2/x").await.unwrap();
    assert!(!store.exists("round-2/x").await.unwrap());
    assert_eq!(store.delete_prefix("round-1/model").await.unwrap(), 2);
    assert_eq!(store.list("").await.unwrap(), vec!["round-1/summary.json"]);
    assert!(store.delete_prefix("").await.is_err());

    // Bad keys are refused before any I/O.
    for bad in ["../escape", "/abs", "a//b", ""] {
        let e = store.put(bad, "x").await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidKey { .. }), "{bad}: {e}");
    }

    // Streaming in and out through a local file.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    assert_eq!(
        store.put_file("m/big.bin", &src).await.unwrap(),
        data.len() as u64
    );
    let dest = dir.path().join("out/nested/big.bin");
    assert_eq!(
        store.get_to_file("m/big.bin", &dest).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let e = store
        .get_to_file("m/nope.bin", &dir.path().join("nope"))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn local_store_basic_ops() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "file://{}",
        dir.path().join("team-a/tickets").display()
    ))
    .unwrap();
    assert_eq!(
        store.local_path(),
        Some(dir.path().join("team-a/tickets").as_path())
    );
    assert_eq!(
        store.local_file("round-1/model/config.json").unwrap(),
        Some(dir.path().join("team-a/tickets/round-1/model/config.json"))
    );
    exercise_basic_ops(&store).await;
}

#[tokio::test]
async fn object_store_basic_ops() {
    let store = memory_store();
    assert_eq!(store.local_path(), None);
    assert_eq!(store.local_file("x").unwrap(), None);
    exercise_basic_ops(&store).await;
}

/// A source that yields some data and then fails, like a dropped connection or a crashed
/// producer.
fn failing_source(
    chunks: usize,
    chunk_size: usize,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    let ok = (0..chunks).map(move |i| Ok(Bytes::from(vec![b'a' + (i % 26) as u8; chunk_size])));
    stream::iter(ok.chain(std::iter::once(Err(io::Error::other("producer crashed")))))
}

fn all_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

#[tokio::test]
async fn local_put_failing_midway_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());

    // New object: nothing appears, not even a temp file.
    let e = store
        .put_stream("round-1/model.bin", failing_source(4, 64 * 1024))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Source { .. }), "{e}");
    assert!(e.to_string().contains("producer crashed"), "{e}");
    assert!(!store.exists("round-1/model.bin").await.unwrap());
    assert!(
        all_names(&dir.path().join("round-1")).is_empty(),
        "{:?}",
        all_names(&dir.path().join("round-1"))
    );

    // Existing object: the old content survives intact.
    store.put("round-1/model.bin", "old").await.unwrap();
    store
        .put_stream("round-1/model.bin", failing_source(2, 1000))
        .await
        .unwrap_err();
    assert_eq!(
        store.get("round-1/model.bin").await.unwrap(),
        Bytes::from("old")
    );
    assert_eq!(all_names(&dir.path().join("round-1")), vec!["model.bin"]);
}

#[tokio::test]
async fn local_put_cancelled_midway_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    // A source that stalls forever after one chunk; the write is cancelled by a timeout.
    let stalled =
        stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"partial"))]).chain(stream::pending());
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        store.put_stream("a/b", stalled),
    )
    .await;
    assert!(r.is_err(), "the put should still be waiting");
    assert!(all_names(&dir.path().join("a")).is_empty());
}

#[tokio::test]
async fn object_put_failing_midway_leaves_no_object() {
    let store = memory_store();
    // Small: buffered, never sent.
    store
        .put_stream("small.bin", failing_source(3, 1024))
        .await
        .unwrap_err();
    assert!(!store.exists("small.bin").await.unwrap());
    // Big (past one 16 MiB part): the multipart upload is started, then aborted.
    let e = store
        .put_stream("big.bin", failing_source(20, 1024 * 1024))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Source { .. }), "{e}");
    assert!(!store.exists("big.bin").await.unwrap());
    assert!(store.list("").await.unwrap().is_empty());
    // And a big stream that succeeds arrives whole.
    let ok =
        stream::iter((0..20).map(|i| Ok::<_, io::Error>(Bytes::from(vec![i as u8; 1024 * 1024]))));
    assert_eq!(
        store.put_stream("big.bin", ok).await.unwrap(),
        20 * 1024 * 1024
    );
    let got = store.get("big.bin").await.unwrap();
    assert_eq!(got.len(), 20 * 1024 * 1024);
    assert_eq!(got[19 * 1024 * 1024], 19);
}

#[tokio::test]
async fn listing_skips_in_flight_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    store.put("d/real.jsonl", "{}\n").await.unwrap();
    // What a process killed mid-write leaves behind.
    std::fs::write(
        dir.path().join("d/.real.jsonl.llamaduo-tmp.999.0"),
        "{\"torn",
    )
    .unwrap();
    std::fs::write(dir.path().join("d/.keep"), "").unwrap();
    assert_eq!(
        store.list("d").await.unwrap(),
        vec!["d/.keep", "d/real.jsonl"]
    );
}

#[test]
fn urls_open_the_right_backend_without_network() {
    let local = Store::open("/tmp/artifacts/ns/m/").unwrap();
    assert_eq!(
        local.local_path(),
        Some(std::path::Path::new("/tmp/artifacts/ns/m/"))
    );
    assert_eq!(local.url(), "file:///tmp/artifacts/ns/m");
    let file = Store::open("file:///tmp/artifacts").unwrap();
    assert_eq!(
        file.local_path(),
        Some(std::path::Path::new("/tmp/artifacts"))
    );

    let s3 = Store::open("s3://bucket/team-a/tickets").unwrap();
    assert_eq!(s3.local_path(), None);
    assert_eq!(s3.url(), "s3://bucket/team-a/tickets");
    assert_eq!(
        s3.url_of("round-1/synthetic.jsonl"),
        "s3://bucket/team-a/tickets/round-1/synthetic.jsonl"
    );
    assert_eq!(
        s3.child("round-1").unwrap().url(),
        "s3://bucket/team-a/tickets/round-1"
    );

    let gs = Store::open("gs://bucket/p").unwrap();
    assert_eq!(gs.url(), "gs://bucket/p");
    // az:// takes the account from AZURE_STORAGE_ACCOUNT_NAME; the error says so when unset.
    match Store::open("az://container/p") {
        Ok(az) => assert_eq!(az.url(), "az://container/p"),
        Err(e) => assert!(e.to_string().contains("environment"), "{e}"),
    }
    let abfs = Store::open("abfss://data@acct.dfs.core.windows.net/team-a").unwrap();
    assert_eq!(abfs.url(), "abfss://data@acct.dfs.core.windows.net/team-a");

    for (bad, needle) in [
        ("relative/path", "file:///abs/path"),
        ("file://host/x", "three slashes"),
        ("ftp://host/x", "supported schemes"),
        ("https://example.com/x", "not an artifact store"),
    ] {
        let e = Store::open(bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{bad}: {e}");
    }
    // Credentials in the URL never reach the error.
    let e = Store::open("ftp://user:SECRET@host/x?sig=SECRET2")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("SECRET"), "{e}");
}
