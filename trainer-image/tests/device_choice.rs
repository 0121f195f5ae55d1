//! `llamaduo-trainer` on the device `LLAMADUO_DEVICE` names: a GPU request this build cannot
//! meet fails the train stage before anything is trained (never a silent run on the CPU), a
//! misspelt value names the accepted ones, `cpu` trains and says where in the log; evaluate
//! and serve refuse the same GPU request with the same fix.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

mod stage_support;

use stage_support::{TRAINER, run_stage, stage_config};

/// Round 1's train stage on a small coverage/train.jsonl under `root`.
fn train(root: &Path, device: &str) -> (Output, Value) {
    let rows = Command::new(TRAINER)
        .args(["sample-dataset", "--family", "reverse", "--rows", "24"])
        .output()
        .expect("sample-dataset runs");
    assert!(rows.status.success(), "{rows:?}");
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    std::fs::write(root.join("coverage/train.jsonl"), rows.stdout).expect("write");
    let training =
        json!({"training": {"method": "full", "epochs": 1, "batchSize": 8, "maxSeqLen": 64}});
    run_stage(
        root,
        "train",
        &stage_config(root, "train", training),
        device,
    )
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_request_without_cuda_fails_before_training() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, result) = train(tmp.path(), "cuda");
    assert!(!out.status.success());
    assert_eq!(result["succeeded"], false);
    assert_names_the_fix(result["message"].as_str().expect("message"));
    assert!(
        !tmp.path().join("round-1/model").exists(),
        "nothing trained"
    );
}

#[test]
fn a_misspelt_device_names_the_accepted_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, result) = train(tmp.path(), "gpu0");
    assert!(!out.status.success());
    let message = result["message"].as_str().expect("message");
    assert!(
        message.contains("\"gpu0\"") && message.contains("auto, cpu, cuda or cuda:N"),
        "{message}"
    );
}

#[test]
fn cpu_trains_and_logs_the_device_then_evaluate_and_serve_refuse_a_gpu_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, result) = train(tmp.path(), "cpu");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{result}\n{log}");
    assert!(result["train"]["steps"].as_u64().expect("steps") >= 1);
    assert!(tmp.path().join("round-1/model/model.safetensors").exists());
    let device_line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "training device")
        .unwrap_or_else(|| panic!("no device line in {log}"));
    assert_eq!(device_line["fields"]["device"], "cpu");
    assert_eq!(device_line["fields"]["dtype"], "F32");
    #[cfg(not(feature = "cuda"))]
    {
        evaluate_refuses_a_gpu_request(tmp.path());
        serve_refuses_a_gpu_request(&tmp.path().join("round-1/model"));
    }
}

/// The evaluate stage of the trained round, on a GPU this build cannot have.
#[cfg(not(feature = "cuda"))]
fn evaluate_refuses_a_gpu_request(root: &Path) {
    std::fs::copy(
        root.join("coverage/train.jsonl"),
        root.join("coverage/test.jsonl"),
    )
    .expect("test set");
    let simulated =
        json!({"provider": "simulated", "model": "reverse", "baseUrl": "http://127.0.0.1:9/v1"});
    let fields = json!({
        "task": {"description": "Reverse the digits."},
        "training": {"method": "full"},
        "judge": simulated,
        "teacher": simulated,
        "evaluation": {"metric": "exactMatch", "answersPerPrompt": 1}
    });
    let (out, result) = run_stage(
        root,
        "evaluate",
        &stage_config(root, "evaluate", fields),
        "cuda",
    );
    assert!(!out.status.success());
    assert_eq!(result["succeeded"], false);
    assert_names_the_fix(result["message"].as_str().expect("message"));
    assert!(!root.join("round-1/eval/summary.json").exists());
}

/// `serve` of the trained model, on a GPU this build cannot have: exits non-zero, saying why.
#[cfg(not(feature = "cuda"))]
fn serve_refuses_a_gpu_request(model: &Path) {
    let out = Command::new(TRAINER)
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(model)
        .env("LLAMADUO_DEVICE", "cuda")
        .output()
        .expect("trainer runs");
    assert!(!out.status.success());
    assert_names_the_fix(&String::from_utf8_lossy(&out.stderr));
}

#[cfg(not(feature = "cuda"))]
fn assert_names_the_fix(message: &str) {
    assert!(
        message.contains("LLAMADUO_DEVICE=cuda")
            && message.contains("built without CUDA")
            && message.contains("LLAMADUO_DEVICE=cpu"),
        "{message}"
    );
}
