//! Running `llamaduo-trainer` stages as the operator does: a stage config file, a result
//! path, a private cache and scratch directory.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

pub const TRAINER: &str = env!("CARGO_BIN_EXE_llamaduo-trainer");

/// The stage config of round 1 of migration `m` stored under `root`, with `fields` added.
pub fn stage_config(root: &Path, stage: &str, fields: Value) -> Value {
    let mut config = json!({
        "stage": stage,
        "namespace": "local",
        "migration": "m",
        "round": 1,
        "artifacts": format!("file://{}", root.display()),
        "student": {"fromScratch": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}},
    });
    if let (Some(c), Value::Object(f)) = (config.as_object_mut(), fields) {
        c.extend(f);
    }
    config
}

/// Runs `llamaduo-trainer <stage>` on `config` with LLAMADUO_DEVICE=`device`: its output and
/// the result it wrote.
pub fn run_stage(root: &Path, stage: &str, config: &Value, device: &str) -> (Output, Value) {
    let config_path = root.join(format!("{stage}-config.json"));
    std::fs::write(&config_path, config.to_string()).expect("write");
    let result_path = root.join(format!("{stage}-result.json"));
    let out = Command::new(TRAINER)
        .args([stage, "--config", config_path.to_str().expect("utf8")])
        .env("LLAMADUO_DEVICE", device)
        .env("LLAMADUO_RESULT_PATH", &result_path)
        .env("LLAMADUO_CACHE_DIR", root.join("cache"))
        .env("TMPDIR", root)
        .output()
        .expect("trainer runs");
    let result = std::fs::read(&result_path).expect("a result is written whatever happens");
    (out, serde_json::from_slice(&result).expect("result JSON"))
}
