//! The S3 backend over the wire against a minimal local S3 endpoint: proves `Store::open`
//! reads the `AWS_*` environment, signs requests with ring (no aws-lc), and maps S3's answers.
//!
//! This file holds one test because it sets process environment variables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use llamaduo_store::{Store, StoreError};

#[derive(Default)]
struct S3 {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    unsigned: Mutex<usize>,
}

async fn object(
    State(s3): State<Arc<S3>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"));
    if !signed {
        *s3.unsigned.lock().unwrap() += 1;
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code></Error>",
        )
            .into_response();
    }
    let meta = |len: usize| {
        [
            ("etag", "\"e1\"".to_string()),
            ("last-modified", "Sun, 15 Nov 2026 08:12:31 GMT".to_string()),
            ("content-length", len.to_string()),
        ]
    };
    let mut objects = s3.objects.lock().unwrap();
    match method {
        Method::PUT => {
            objects.insert(key, body.to_vec());
            [("etag", "\"e1\"")].into_response()
        }
        Method::GET | Method::HEAD => match objects.get(&key) {
            Some(data) => {
                let body = if method == Method::GET {
                    data.clone()
                } else {
                    Vec::new()
                };
                (meta(data.len()), body).into_response()
            }
            None => (
                StatusCode::NOT_FOUND,
                "<Error><Code>NoSuchKey</Code></Error>",
            )
                .into_response(),
        },
        // DeleteObjects: `POST /{bucket}?delete` with the keys in an XML body.
        Method::POST if query.as_deref() == Some("delete") => {
            let body = String::from_utf8_lossy(&body);
            let mut deleted = String::new();
            for part in body.split("<Key>").skip(1) {
                let k = part.split("</Key>").next().unwrap_or_default();
                objects.remove(&format!("{key}/{k}"));
                deleted.push_str(&format!("<Deleted><Key>{k}</Key></Deleted>"));
            }
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DeleteResult>{deleted}</DeleteResult>"
            )
            .into_response()
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

#[tokio::test]
async fn s3_store_talks_signed_s3_over_the_wire() {
    let s3 = Arc::new(S3::default());
    let app = Router::new()
        .route("/{*key}", any(object))
        .with_state(s3.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // SAFETY: this binary's only test sets the variables before any other thread reads them.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDTEST");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "SECRETKEYTEST");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let store = Store::open("s3://bucket/team-a/tickets").unwrap();
    assert_eq!(store.url(), "s3://bucket/team-a/tickets");

    assert!(!store.exists("round-1/eval/summary.json").await.unwrap());
    let e = store.get("round-1/eval/summary.json").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    store
        .put_json(
            "round-1/eval/summary.json",
            &serde_json::json!({"pass_rate": 0.9}),
        )
        .await
        .unwrap();
    // Path-style addressing: bucket, then the store prefix, then the key.
    assert!(
        s3.objects
            .lock()
            .unwrap()
            .contains_key("bucket/team-a/tickets/round-1/eval/summary.json")
    );
    assert!(store.exists("round-1/eval/summary.json").await.unwrap());
    let v: serde_json::Value = store.get_json("round-1/eval/summary.json").await.unwrap();
    assert_eq!(v["pass_rate"], 0.9);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("summary.json");
    store
        .get_to_file("round-1/eval/summary.json", &dest)
        .await
        .unwrap();
    assert!(
        std::fs::read_to_string(&dest)
            .unwrap()
            .contains("pass_rate")
    );

    store.delete("round-1/eval/summary.json").await.unwrap();
    assert!(!store.exists("round-1/eval/summary.json").await.unwrap());
    assert_eq!(
        *s3.unsigned.lock().unwrap(),
        0,
        "every request is SigV4-signed"
    );

    // A refused request names the object and the fix, never the secret.
    // SAFETY: as above.
    unsafe { std::env::set_var("AWS_ACCESS_KEY_ID", "WRONG") };
    let denied = Store::open("s3://bucket/team-a/tickets").unwrap();
    let e = denied.get("x.json").await.unwrap_err();
    assert!(matches!(e, StoreError::ObjectStore { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("s3://bucket/team-a/tickets/x.json") && msg.contains("credentials"),
        "{msg}"
    );
    assert!(!msg.contains("SECRETKEYTEST") && !format!("{e:?}").contains("SECRETKEYTEST"));
}
