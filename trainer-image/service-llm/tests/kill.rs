//! SIGKILL mid-run, then rerun: the requested count, no duplicate ids, no torn line. The
//! synthesis runs in a child process (this test binary re-run with an environment variable
//! naming the config) so the kill is a real SIGKILL, not a cooperative cancel.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use llamaduo::api::SynthesizeConfig;
use llamaduo_service_llm::run_synthesis;
use llamaduo_service_llm::simulate::{Family, SimulateOptions, spawn_simulated_teacher};
use llamaduo_service_llm::spend::SpendRecord;

const CHILD_ENV: &str = "LLAMADUO_TEST_SYNTH_CHILD_CONFIG";

/// The child's side: runs only when the parent test starts this binary with CHILD_ENV set.
#[test]
fn child_synthesis_process() {
    let Ok(json) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config: SynthesizeConfig = serde_json::from_str(&json).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(run_synthesis(&config, None));
    println!("{}", result.to_termination_message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_rerun_completes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teacher = spawn_simulated_teacher(SimulateOptions {
        latency_ms: 100,
        ..SimulateOptions::ephemeral()
    })
    .await
    .expect("teacher");
    let coverage = coverage_file(dir.path(), Family::Arithmetic, 30, 9);
    let artifacts = dir.path().join("artifacts");
    let config = config(&artifacts, &coverage, &teacher.base_url(), 150);

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_synthesis_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, serde_json::to_string(&config).expect("json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let parts_dir = artifacts.join("round-1/synthetic.parts");
    let spend_log = artifacts.join("round-1/spent/synthesize-a1.json");
    let spent =
        || -> Option<SpendRecord> { serde_json::from_slice(&std::fs::read(&spend_log).ok()?).ok() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parts = std::fs::read_dir(&parts_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        // Killed once its spend log holds tokens (it is rewritten every couple of seconds).
        if parts >= 4 && spent().is_some_and(|s| s.service_tokens.total() > 0) {
            break;
        }
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("the child ended before it could be killed: {status}");
        }
        assert!(Instant::now() < deadline, "no parts appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        !artifacts.join("round-1/synthetic.jsonl").exists(),
        "killed before finishing"
    );

    let killed = spent().expect("the killed run's spend log");
    assert!(!killed.reported);

    let result = run_synthesis(&config, None).await;
    assert!(result.succeeded, "{:?}", result.message);
    // The killed run's tokens were billed: the rerun reports them with its own, once.
    assert!(
        result.service_tokens.total() > killed.service_tokens.total(),
        "{:?} does not include the killed run's {:?}",
        result.service_tokens,
        killed.service_tokens
    );
    let after = spent().expect("spend log");
    assert!(after.reported);
    assert_eq!(after.service_tokens, result.service_tokens);
    assert_eq!(result.synthesize.expect("outcome").produced, 150);
    let rows = read_rows(&artifacts.join("round-1/synthetic.jsonl"));
    assert_eq!(rows.len(), 150);
    assert_synthetic(&rows, "arithmetic");
}
