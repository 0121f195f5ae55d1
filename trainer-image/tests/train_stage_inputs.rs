//! The train stage refuses input it cannot train on before it writes anything that later
//! rounds would reuse.

mod stage_support;

use serde_json::json;
use stage_support::{run_stage, stage_config};

#[test]
fn an_empty_training_set_fails_before_a_from_scratch_base_is_frozen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    std::fs::write(root.join("coverage/train.jsonl"), "").expect("write");
    let config = stage_config(root, "train", json!({"training": {"method": "full"}}));
    let (out, result) = run_stage(root, "train", &config, "cpu");
    assert!(!out.status.success());
    assert_eq!(result["succeeded"], false);
    let message = result["message"].as_str().expect("message");
    assert!(message.contains("the training set is empty"), "{message}");
    assert!(message.contains("coverage.source"), "{message}");
    assert!(
        !root.join("student/base").exists(),
        "no tokenizer trained on nothing was frozen for later rounds"
    );
}
