//! The train stage refuses input it cannot train on before it writes anything that later
//! rounds would reuse, and says whether another attempt could do better (`failureClass`), so
//! the operator retries only what a retry can fix.

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
    assert_eq!(result["failureClass"], "permanent", "{result}");
    assert!(
        !root.join("student/base").exists(),
        "no tokenizer trained on nothing was frozen for later rounds"
    );
}

/// One coverage train row, so a stage gets past its dataset checks.
fn one_row(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    let row = json!({"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]});
    std::fs::write(root.join("coverage/train.jsonl"), format!("{row}\n")).expect("write");
}

#[test]
fn an_unsupported_base_architecture_is_a_permanent_failure() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    one_row(root);
    let base = root.join("phi3");
    std::fs::create_dir_all(&base).expect("dir");
    std::fs::write(
        base.join("config.json"),
        json!({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
               "vocab_size": 100})
        .to_string(),
    )
    .expect("write");
    let mut config = stage_config(root, "train", json!({"training": {"method": "lora"}}));
    config["student"] = json!({"baseModel": format!("file://{}", base.display())});
    // No tokenizer file: no attempt can find one.
    let (out, result) = run_stage(root, "train", &config, "cpu");
    assert!(!out.status.success());
    let message = result["message"].as_str().expect("message");
    assert!(message.contains("tokenizer.json"), "{message}");
    assert_eq!(result["failureClass"], "permanent", "{result}");
    // With a (word-level) tokenizer the architecture is what stops it.
    std::fs::write(
        base.join("tokenizer.json"),
        json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
               "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
               "post_processor": null, "decoder": null,
               "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "</s>": 1, "4": 2},
                         "unk_token": "<unk>"}})
        .to_string(),
    )
    .expect("write");
    std::fs::write(
        base.join("tokenizer_config.json"),
        json!({"eos_token": "</s>"}).to_string(),
    )
    .expect("write");
    // A one-tensor safetensors file: 8-byte header length, the JSON header, the data.
    let header = br#"{"lm_head.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut weights = (header.len() as u64).to_le_bytes().to_vec();
    weights.extend_from_slice(header);
    weights.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(base.join("model.safetensors"), weights).expect("write");
    let (out, result) = run_stage(root, "train", &config, "cpu");
    assert!(!out.status.success());
    let message = result["message"].as_str().expect("message");
    assert!(message.contains("Phi3ForCausalLM"), "{message}");
    assert_eq!(result["failureClass"], "permanent", "{result}");
}

#[test]
fn an_unreachable_hub_is_a_transient_failure() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    one_row(root);
    // A port nothing listens on: connection refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut config = stage_config(root, "train", json!({"training": {"method": "lora"}}));
    config["student"] = json!({"baseModel": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"});
    let (mut cmd, result_path) =
        stage_support::stage_command(root, "train", "train", &config, "cpu", root);
    let out = cmd
        .env("HF_HOME", root.join("hf"))
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("trainer runs");
    assert!(!out.status.success());
    let result = stage_support::read_result(&result_path);
    let message = result["message"].as_str().expect("message");
    assert!(message.contains("HF_ENDPOINT"), "{message}");
    assert_eq!(result["failureClass"], "transient", "{result}");
}
