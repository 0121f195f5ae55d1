//! Running `llamaduo-trainer` stages as the operator does: a stage config file, a result
//! path, a private cache and scratch directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
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

/// `llamaduo-trainer <stage>` on `config` (written to `dir/{name}-config.json`) with
/// LLAMADUO_DEVICE=`device`, its result going to `dir/{name}-result.json`, its cache to
/// `dir/{name}-cache` and its scratch (`TMPDIR`, a pod's emptyDir) to `scratch`; returns the
/// command, to spawn or run, and the result path.
pub fn stage_command(
    dir: &Path,
    name: &str,
    stage: &str,
    config: &Value,
    device: &str,
    scratch: &Path,
) -> (Command, PathBuf) {
    let config_path = dir.join(format!("{name}-config.json"));
    std::fs::write(&config_path, config.to_string()).expect("write");
    let result_path = dir.join(format!("{name}-result.json"));
    let mut cmd = Command::new(TRAINER);
    cmd.args([stage, "--config", config_path.to_str().expect("utf8")])
        .env("LLAMADUO_DEVICE", device)
        .env("LLAMADUO_RESULT_PATH", &result_path)
        .env("LLAMADUO_CACHE_DIR", dir.join(format!("{name}-cache")))
        .env("TMPDIR", scratch);
    (cmd, result_path)
}

/// The result a stage run wrote to `path` (it writes one whatever happens).
pub fn read_result(path: &Path) -> Value {
    let result = std::fs::read(path).expect("a result is written whatever happens");
    serde_json::from_slice(&result).expect("result JSON")
}

/// Runs `llamaduo-trainer <stage>` on `config` with LLAMADUO_DEVICE=`device`: its output and
/// the result it wrote.
pub fn run_stage(root: &Path, stage: &str, config: &Value, device: &str) -> (Output, Value) {
    let (mut cmd, result_path) = stage_command(root, stage, stage, config, device, root);
    let out = cmd.output().expect("trainer runs");
    (out, read_result(&result_path))
}
