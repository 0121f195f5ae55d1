//! The synthesize stage against the simulated teacher on 127.0.0.1: exact counts, faults,
//! budget, resume after an abort and after SIGKILL, idempotent reruns, dedup and
//! decontamination.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use llamaduo_service_llm::simulate::{Family, SimulateOptions, spawn_simulated_teacher};
use llamaduo_service_llm::{run_synthesis, synthesize_with};

#[tokio::test]
async fn produces_exactly_the_requested_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teacher = spawn_simulated_teacher(SimulateOptions::ephemeral())
        .await
        .expect("teacher");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 40, 1);
    let artifacts = dir.path().join("artifacts");
    let config = config(&artifacts, &coverage, &teacher.base_url(), 63);

    let result = run_synthesis(&config, None).await;
    assert!(result.succeeded, "{:?}", result.message);
    let outcome = result.synthesize.clone().expect("outcome");
    assert_eq!((outcome.requested, outcome.produced), (63, 63));
    assert!(!outcome.budget_exhausted);
    let rows = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows.len(), 63);
    assert_synthetic(&rows, "arithmetic");
    assert!(
        !artifacts.join("round-1/synthetic.parts").exists(),
        "parts are folded into the final file"
    );
    let train = read_rows(&artifacts.join("coverage/train.jsonl"));
    let test = read_rows(&artifacts.join("coverage/test.jsonl"));
    assert_eq!((train.len(), test.len()), (32, 8));
    // Tokens are the server's own counts, exactly.
    assert!(result.service_tokens.input > 0 && result.service_tokens.output > 0);
    // No call was wasted: 63 samples at 5 per call need 13 calls when nothing is dropped.
    let calls = teacher.stats().requests.load(Ordering::Relaxed);
    assert!(
        calls <= 13 + outcome.deduplicated + outcome.decontaminated,
        "{calls} calls"
    );

    // A rerun with the same config finds the work done and calls nobody.
    let again = run_synthesis(&config, None).await;
    assert!(again.succeeded);
    assert_eq!(again.synthesize.expect("outcome").produced, 63);
    assert_eq!(teacher.stats().requests.load(Ordering::Relaxed), calls);
    assert_eq!(read_rows(&artifacts.join("round-1/synthetic.jsonl")), rows);
}

#[tokio::test]
async fn completes_with_thirty_percent_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teacher = spawn_simulated_teacher(SimulateOptions {
        seed: 11,
        fault_429: 0.06,
        retry_after: 0.02,
        fault_500: 0.06,
        fault_timeout: 0.06,
        timeout_delay_ms: 1_500,
        fault_malformed: 0.06,
        fault_truncated: 0.06,
        ..SimulateOptions::ephemeral()
    })
    .await
    .expect("teacher");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 30, 2);
    let artifacts = dir.path().join("artifacts");
    let config = config(&artifacts, &coverage, &teacher.base_url(), 80);
    let client = fast_client(&config, Duration::from_millis(400));

    let result = synthesize_with(&config, client).await;
    assert!(result.succeeded, "{:?}", result.message);
    let outcome = result.synthesize.expect("outcome");
    assert_eq!(outcome.produced, 80);
    assert!(outcome.retries > 0, "faults were retried");
    assert!(
        outcome.rejected_malformed > 0,
        "malformed replies were counted"
    );
    let s = teacher.stats();
    assert!(s.rate_limited.load(Ordering::Relaxed) > 0 && s.truncated.load(Ordering::Relaxed) > 0);
    let rows = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows.len(), 80);
    assert_synthetic(&rows, "arithmetic");
}

#[tokio::test]
async fn stops_at_the_token_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teacher = spawn_simulated_teacher(SimulateOptions::ephemeral())
        .await
        .expect("teacher");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 20, 3);
    let artifacts = dir.path().join("artifacts");
    let mut config = config(&artifacts, &coverage, &teacher.base_url(), 500);
    config.token_budget = Some(6_000);

    let result = run_synthesis(&config, None).await;
    assert!(result.succeeded, "{:?}", result.message);
    let outcome = result.synthesize.expect("outcome");
    assert!(outcome.budget_exhausted);
    assert!(
        outcome.produced > 0 && outcome.produced < 500,
        "{}",
        outcome.produced
    );
    let used = result.service_tokens.total();
    assert!(used <= 6_000, "used {used} of a 6000 budget");
    assert!(used > 2_000, "the budget was mostly spent: {used}");
    let rows = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows.len() as u64, outcome.produced);

    // A rerun with a fresh budget continues from the stopped file to the full count.
    config.token_budget = None;
    let more = run_synthesis(&config, None).await;
    assert!(more.succeeded, "{:?}", more.message);
    let rows2 = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows2.len(), 500);
    assert_eq!(
        &rows2[..rows.len()],
        &rows[..],
        "earlier rows are kept as they were"
    );
    assert_synthetic(&rows2, "arithmetic");
}

#[tokio::test]
async fn resumes_after_an_abort_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teacher = spawn_simulated_teacher(SimulateOptions {
        latency_ms: 30,
        ..SimulateOptions::ephemeral()
    })
    .await
    .expect("teacher");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 30, 4);
    let artifacts = dir.path().join("artifacts");
    let config = config(&artifacts, &coverage, &teacher.base_url(), 120);

    let parts_dir = artifacts.join("round-1/synthetic.parts");
    let cfg = config.clone();
    let run = tokio::spawn(async move { run_synthesis(&cfg, None).await });
    // Abort once a few parts are committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parts = std::fs::read_dir(&parts_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        if parts >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no parts appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    let _ = run.await;
    // Let a part write already handed to the blocking pool land, as a dying process's would.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !artifacts.join("round-1/synthetic.jsonl").exists(),
        "aborted before finishing"
    );

    let result = run_synthesis(&config, None).await;
    assert!(result.succeeded, "{:?}", result.message);
    let rows = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows.len(), 120);
    assert_synthetic(&rows, "arithmetic");
}

#[tokio::test]
async fn filters_duplicates_and_test_prompts() {
    use axum::{Json, Router, routing::post};
    use serde_json::{Value, json};
    // A teacher that always sends the same pairs: a copy of a test prompt, a copy of a seed,
    // one new pair, and a near-copy of it.
    let dir = tempfile::tempdir().expect("tempdir");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 20, 5);
    let artifacts = dir.path().join("artifacts");
    // Freeze the split first, to know a test prompt and a train prompt.
    let probe = {
        let teacher = spawn_simulated_teacher(SimulateOptions::ephemeral())
            .await
            .expect("teacher");
        let c = config(&artifacts, &coverage, &teacher.base_url(), 1);
        run_synthesis(&c, None).await
    };
    assert!(probe.succeeded, "{:?}", probe.message);
    let test = read_rows(&artifacts.join("coverage/test.jsonl"));
    let train = read_rows(&artifacts.join("coverage/train.jsonl"));
    let test_prompt = test[0].instruction().expect("prompt").to_string();
    let train_prompt = train[0].instruction().expect("prompt").to_string();
    let pairs = json!({"pairs": [
        {"instruction": test_prompt, "response": "x"},
        {"instruction": train_prompt.to_uppercase(), "response": "x"},
        {"instruction": "Summarize in one line the support ticket about the broken login page that customers reported this morning after the update of the mobile app, and say which team should look at it first and why", "response": "Login page broken."},
        {"instruction": "Summarize in one line the support ticket about the broken login page that customers reported this morning after the update of the mobile app, and say which team should look at it first and why!", "response": "Login page broken."}
    ]})
    .to_string();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(_req): Json<Value>| {
            let content = pairs.clone();
            async move {
                Json(json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut c = config(&artifacts, &coverage, &format!("http://{addr}/v1"), 5);
    c.context.round = 2;
    c.synthesis.pairs_per_call = 4;
    c.teacher.limits.concurrency = 1;
    let result = run_synthesis(&c, None).await;
    // One new pair, then only repeats: the stage gives up with a reason instead of looping.
    assert!(!result.succeeded);
    let message = result.message.clone().unwrap_or_default();
    assert!(message.contains("duplicates"), "{message}");
    let outcome = result.synthesize.expect("outcome");
    assert_eq!(outcome.produced, 1);
    assert!(outcome.decontaminated >= 1);
    assert!(outcome.deduplicated >= 3, "{outcome:?}");
    assert_eq!(
        result.service_tokens.total() % 30,
        0,
        "tokens add up per call"
    );
    // Round 1's row counts as existing training data for round 2.
    let round1 = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(round1.len(), 1);
}
