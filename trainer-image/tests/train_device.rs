//! `llamaduo-trainer train` on the device `LLAMADUO_DEVICE` names: a GPU request this build
//! cannot meet fails the stage before anything is trained (never a silent run on the CPU), a
//! misspelt value names the accepted ones, and `cpu` trains and says where in the log.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

const TRAINER: &str = env!("CARGO_BIN_EXE_llamaduo-trainer");

/// A migration root with a small coverage/train.jsonl, and a train config for round 1.
fn setup(root: &Path) -> std::path::PathBuf {
    let rows = Command::new(TRAINER)
        .args(["sample-dataset", "--family", "reverse", "--rows", "24"])
        .output()
        .expect("sample-dataset runs");
    assert!(rows.status.success(), "{rows:?}");
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    std::fs::write(root.join("coverage/train.jsonl"), rows.stdout).expect("write");
    let config = json!({
        "stage": "train",
        "namespace": "local",
        "migration": "m",
        "round": 1,
        "artifacts": format!("file://{}", root.display()),
        "student": {"fromScratch": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}},
        "training": {"method": "full", "epochs": 1, "batchSize": 8, "maxSeqLen": 64}
    });
    let path = root.join("train-config.json");
    std::fs::write(&path, config.to_string()).expect("write");
    path
}

fn train(root: &Path, device: &str) -> (Output, Value) {
    let config = setup(root);
    let result_path = root.join("result.json");
    let out = Command::new(TRAINER)
        .args(["train", "--config", config.to_str().expect("utf8")])
        .env("LLAMADUO_DEVICE", device)
        .env("LLAMADUO_RESULT_PATH", &result_path)
        .env("LLAMADUO_CACHE_DIR", root.join("cache"))
        .env("TMPDIR", root)
        .output()
        .expect("trainer runs");
    let result = std::fs::read(&result_path).expect("a result is written whatever happens");
    (out, serde_json::from_slice(&result).expect("result JSON"))
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_request_without_cuda_fails_before_training() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, result) = train(tmp.path(), "cuda");
    assert!(!out.status.success());
    assert_eq!(result["succeeded"], false);
    let message = result["message"].as_str().expect("message");
    assert!(
        message.contains("LLAMADUO_DEVICE=cuda")
            && message.contains("built without CUDA")
            && message.contains("LLAMADUO_DEVICE=cpu"),
        "{message}"
    );
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
fn cpu_trains_and_logs_the_device() {
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
}
