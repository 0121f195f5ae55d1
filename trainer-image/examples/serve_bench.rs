//! Benchmark of `llamaduo-trainer serve` on a tiny model: requests/s, generated tokens/s and
//! p50/p99 latency at concurrency 1 and 8, printed as a table.
//!
//! Run: `cargo build --release -p llamaduo-trainer && cargo run --release -p llamaduo-trainer
//! --example serve_bench [-- REQUESTS MAX_TOKENS]` (it serves the release binary next to it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/{profile}/examples/serve_bench -> target/{profile}/llamaduo-trainer
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("no target directory")?;
    let bin = dir.join("llamaduo-trainer");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p llamaduo-trainer)",
            bin.display()
        );
    }
    Ok(bin)
}

fn tiny_model(dir: &std::path::Path) -> anyhow::Result<()> {
    let spec = serde_json::from_value(
        json!({"hiddenSize": 128, "numLayers": 4, "numHeads": 4, "vocabSize": 1024}),
    )?;
    let texts: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "Question {i}: how many apples are in basket {}? Answer: {}.",
                i % 9,
                i % 4
            )
        })
        .collect();
    llamaduo_model::from_scratch::build_from_scratch(&spec, &texts, 3, 1024, dir)?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    base: &str,
    concurrency: usize,
    requests: usize,
    max_tokens: u32,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(requests);
    let mut tokens = 0u64;
    let mut next = 0usize;
    while next < requests {
        let n = concurrency.min(requests - next);
        let batch = (0..n).map(|k| {
            let client = client.clone();
            let body = json!({"messages": [{"role": "user", "content": format!("Question {}: how many apples?", next + k)}],
                              "max_tokens": max_tokens, "temperature": 0});
            let url = format!("{base}/chat/completions");
            async move {
                let t = Instant::now();
                let v: Value = client.post(url).json(&body).send().await?.error_for_status()?.json().await?;
                anyhow::Ok((t.elapsed().as_secs_f64(), v["usage"]["completion_tokens"].as_u64().unwrap_or(0)))
            }
        });
        for r in futures::future::join_all(batch).await {
            let (l, t) = r?;
            latencies.push(l);
            tokens += t;
        }
        next += n;
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((
        requests as f64 / wall,
        tokens as f64 / wall,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let requests: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let max_tokens: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("tiny");
    tiny_model(&dir)?;
    let mut child = Command::new(binary()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-batch",
            "8",
            "--max-tokens",
            "512",
        ])
        .arg("--model")
        .arg(&dir)
        .env("LLAMADUO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let base = serde_json::from_str::<Value>(line.trim())?["baseUrl"]
        .as_str()
        .context("baseUrl")?
        .to_owned();
    let root = base.trim_end_matches("/v1").to_owned();
    while reqwest::get(format!("{root}/health"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Warm-up.
    run(&base, 1, 2, max_tokens).await?;
    println!(
        "tiny Llama (hidden 128, 4 layers, vocab 1024), {requests} requests, max_tokens {max_tokens}, greedy"
    );
    println!("| concurrency | requests/s | tokens/s | p50 latency (s) | p99 latency (s) |");
    println!("|---|---|---|---|---|");
    for c in [1usize, 8] {
        let (rps, tps, p50, p99) = run(&base, c, requests, max_tokens).await?;
        println!("| {c} | {rps:.2} | {tps:.1} | {p50:.3} | {p99:.3} |");
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
