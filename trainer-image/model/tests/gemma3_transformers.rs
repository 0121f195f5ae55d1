//! Gemma 3 against transformers itself: tests/python/gemma3_reference.py builds a tiny random
//! `Gemma3ForCausalLM` with transformers (`Gemma3TextConfig` → `from_config` →
//! `save_pretrained`; odd sizes, 4 heads / 2 KV heads, head_dim 18 with
//! query_pre_attn_scalar 24, three sliding layers with a window of 5 and a local RoPE base of
//! 100 around one global layer with linear RoPE scaling, random norm weights) and writes its
//! logits and greedy continuation; our loader reads the saved directory as it is and must give
//! the same logits (within 1e-4 of the largest logit) and the same greedy ids, decoded
//! incrementally through the KV cache well past the window.
//!
//! Needs the repository's .venv (scripts/test.sh); skips visibly without it, fails under
//! scripts/test.sh or `CI=true`.

mod common;
mod support;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use common::{ids, max_abs_diff};
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::models::{CausalLm, KvCache, LoadOptions};

/// Two rows of 16 tokens (the window is 5) and a prompt to continue for 24 tokens.
const IDS: &str = r#"{"input_ids": [
  [2, 17, 45, 99, 3, 150, 7, 7, 201, 64, 12, 88, 5, 33, 120, 9],
  [2, 5, 5, 180, 61, 0, 14, 92, 37, 111, 210, 1, 49, 73, 8, 26]],
  "prompt": [2, 17, 45, 99, 3, 150, 7, 7, 201, 64, 12], "new_tokens": 24}"#;

fn load(dir: &Path) -> CausalLm {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("load");
    CausalLm::from_tensors(
        &cfg,
        tensors,
        &Device::Cpu,
        &LoadOptions::inference(DType::F32),
    )
    .expect("model")
}

/// Greedy decoding of `n` tokens after `prompt`, one token at a time through the KV cache.
fn greedy(model: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut input = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let logits = model
            .forward(&ids(&[input.clone()]), cache.len(), Some(&mut cache))
            .expect("forward");
        let next = logits
            .squeeze(0)
            .and_then(|l| l.get(input.len() - 1))
            .and_then(|l| l.argmax(0))
            .and_then(|l| l.to_scalar::<u32>())
            .expect("argmax");
        out.push(next);
        input = vec![next];
    }
    out
}

#[test]
fn tiny_gemma3_matches_transformers() {
    let Some(py) = support::python::venv_python(
        "Gemma 3 transformers parity",
        &["torch", "transformers", "safetensors"],
    ) else {
        return;
    };
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let ids_json = tmp.path().join("ids.json");
    std::fs::write(&ids_json, IDS).expect("ids");
    let out = tmp.path().join("out");
    let said = support::python::run_script(
        &py,
        "gemma3_reference.py",
        &[Path::new("tiny"), &out, &ids_json],
    );
    eprintln!("{} ({:.1} s)", said.trim(), t0.elapsed().as_secs_f64());

    let dir = out.join("model");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    assert_eq!(cfg.architecture().expect("arch"), Architecture::Gemma3);
    let model = load(&dir);
    let spec: serde_json::Value = serde_json::from_str(IDS).expect("ids");
    let rows: Vec<Vec<u32>> = serde_json::from_value(spec["input_ids"].clone()).expect("rows");
    let prompt: Vec<u32> = serde_json::from_value(spec["prompt"].clone()).expect("prompt");

    let ours = model.forward(&ids(&rows), 0, None).expect("forward");
    let theirs = candle_core::safetensors::load(out.join("logits.safetensors"), &Device::Cpu)
        .expect("logits")
        .remove("logits")
        .expect("logits tensor");
    assert_eq!(ours.dims(), theirs.dims());
    let scale = theirs
        .abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("scale");
    let diff = max_abs_diff(&ours, &theirs);
    eprintln!("tiny Gemma 3: max |logit diff| {diff:.2e}, max |logit| {scale:.2}");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "logits differ from transformers by {diff} (max |logit| {scale})"
    );

    let want: Vec<u32> = serde_json::from_value(
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(out.join("greedy.json")).expect("greedy"),
        )
        .expect("json")["ids"]
            .clone(),
    )
    .expect("ids");
    let got = greedy(&model, &prompt, want.len());
    assert_eq!(got, want, "greedy decoding differs from transformers");
    // The same continuation from a plain forward over the whole sequence (no cache).
    let mut full = prompt.clone();
    full.extend(&got[..got.len() - 1]);
    let logits = model.forward(&ids(&[full]), 0, None).expect("forward");
    let argmax: Vec<u32> = logits
        .squeeze(0)
        .and_then(|l| l.narrow(0, prompt.len() - 1, got.len()))
        .and_then(|l| l.argmax(1))
        .and_then(|l| l.to_vec1::<u32>())
        .expect("argmax");
    assert_eq!(argmax, got, "cached and uncached decoding disagree");
}
