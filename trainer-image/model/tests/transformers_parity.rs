//! Every family against transformers and PEFT themselves, on models transformers builds.
//!
//! tests/python/hf_reference.py creates one tiny random model per family with transformers
//! (`<Family>Config` → `AutoModelForCausalLM.from_config` → `save_pretrained`; odd widths, 4
//! query heads over 2 KV heads, random norm weights, and each family's own features: Llama 3.2's
//! tied embeddings and `llama3` RoPE scaling, Llama's optional biases with linear RoPE scaling,
//! Qwen2's q/k/v biases with a sliding window on its upper layers, Qwen3's head norms with heads
//! wider than hidden / heads, Mistral's sliding window, Gemma's (1 + w) norms and scaled
//! embeddings, Gemma 3's sliding and global layers with their own RoPE bases). For each, our
//! loader reads the saved directory as it is and must give
//! - the same logits, within 1e-4 of the largest |logit|,
//! - the same 24 greedy ids, decoded incrementally through the KV cache past every window,
//! - with PEFT's adapter (rank 4, alpha 8, every projection, random A and B) loaded through
//!   `llamaduo_model::peft`, PEFT's logits,
//! - and with our adapter (the same shape, random values, written by `peft::save_adapter`),
//!   loaded by PEFT's `PeftModel.from_pretrained`, our logits.
//!
//! The Python side runs twice for all families together (once to build, once to load our
//! adapters), in the repository's .venv (scripts/test.sh): skipped visibly without it, a
//! failure under scripts/test.sh or `CI=true`.

mod common;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use common::{ids, max_abs_diff};
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::{CausalLm, KvCache, LoadOptions, Trainable};
use llamaduo_model::peft;

/// The families hf_reference.py builds, with the architecture each must read as.
const FAMILIES: [(&str, Architecture); 7] = [
    ("llama32", Architecture::Llama),
    ("llama_bias", Architecture::Llama),
    ("qwen2", Architecture::Qwen2),
    ("qwen3", Architecture::Qwen3),
    ("mistral", Architecture::Mistral),
    ("gemma", Architecture::Gemma),
    ("gemma3", Architecture::Gemma3),
];

/// Two rows of 16 tokens (windows are 5) and a prompt to continue for 24 tokens.
const IDS: &str = r#"{"input_ids": [
  [2, 17, 45, 99, 3, 150, 7, 7, 201, 64, 12, 88, 5, 33, 120, 9],
  [2, 5, 5, 180, 61, 0, 14, 92, 37, 111, 210, 1, 49, 73, 8, 26]],
  "prompt": [2, 17, 45, 99, 3, 150, 7, 7, 201, 64, 12], "new_tokens": 24}"#;

/// Where the shared Python runs left each family's files; kept for the process's lifetime.
struct Fixture {
    _tmp: tempfile::TempDir,
    out: PathBuf,
}

/// Runs hf_reference.py for every family once per test process (the tests share it); `None`
/// when the venv is absent and not required.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let py = support::python::venv_python(
                "transformers parity",
                &["torch", "transformers", "peft", "safetensors"],
            )?;
            let tmp = tempfile::tempdir().expect("tmp");
            let ids_json = tmp.path().join("ids.json");
            std::fs::write(&ids_json, IDS).expect("ids");
            let out = tmp.path().join("out");
            let families: Vec<&Path> = FAMILIES.iter().map(|(f, _)| Path::new(*f)).collect();
            let args = |mode: &'static str| {
                let mut a: Vec<&Path> = vec![Path::new(mode), &out, &ids_json];
                a.extend(&families);
                a
            };
            let t0 = Instant::now();
            let said = support::python::run_script(&py, "hf_reference.py", &args("tiny"));
            eprintln!("{}\n({:.1} s)", said.trim(), t0.elapsed().as_secs_f64());
            for (family, _) in FAMILIES {
                write_our_adapter(&out.join(family));
            }
            let t0 = Instant::now();
            let said = support::python::run_script(&py, "hf_reference.py", &args("peft-load"));
            eprintln!("{}\n({:.1} s)", said.trim(), t0.elapsed().as_secs_f64());
            Some(Fixture { _tmp: tmp, out })
        })
        .as_ref()
}

fn load(dir: &Path, trainable: Trainable) -> CausalLm {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors =
        candle_core::safetensors::load(dir.join(peft::MODEL_WEIGHTS), &Device::Cpu).expect("load");
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed: 7,
    };
    CausalLm::from_tensors(&cfg, tensors, &Device::Cpu, &opts).expect("model")
}

fn all_projections() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec![llamaduo::api::ALL_LINEAR.to_string()],
    }
}

/// Our LoRA adapter on every projection with seeded random A and B, written to
/// `dir/our_adapter` for PEFT; its logits to `dir/our_logits.safetensors`.
fn write_our_adapter(dir: &Path) {
    let lora = all_projections();
    let model = load(&dir.join("model"), Trainable::Lora(lora.clone()));
    let mut rng = llamaduo_model::rng::SplitMix::new(7);
    for (_, var) in model.trainable() {
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| (rng.normal() * 0.1) as f32)
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device()).expect("tensor"))
            .expect("set");
    }
    peft::save_adapter(
        &model,
        &lora,
        &dir.join("model").display().to_string(),
        &dir.join("our_adapter"),
    )
    .expect("saves");
    let logits = model.forward(&ids(&rows()), 0, None).expect("forward");
    candle_core::safetensors::save(
        &HashMap::from([("logits".to_string(), logits)]),
        dir.join("our_logits.safetensors"),
    )
    .expect("logits");
}

fn spec() -> serde_json::Value {
    serde_json::from_str(IDS).expect("ids")
}

fn rows() -> Vec<Vec<u32>> {
    serde_json::from_value(spec()["input_ids"].clone()).expect("rows")
}

fn read_logits(path: &Path) -> Tensor {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove("logits")
        .expect("logits tensor")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max")
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

/// Asserts `ours` is `theirs` within 1e-4 of the largest |logit|; returns the difference.
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims(), "{what}");
    let scale = max_abs(theirs).max(1.0);
    let diff = max_abs_diff(ours, theirs);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: logits differ by {diff} (max |logit| {scale})"
    );
    diff
}

fn check(family: &str, arch: Architecture) {
    let Some(fx) = fixture() else { return };
    let dir = fx.out.join(family);
    let base_dir = dir.join("model");
    let cfg = ModelConfig::from_file(&base_dir.join("config.json")).expect("config");
    assert_eq!(cfg.architecture().expect("arch"), arch, "{family}");
    let x = ids(&rows());

    // The base model: logits and greedy ids.
    let model = load(&base_dir, Trainable::None);
    let base = model.forward(&x, 0, None).expect("forward");
    let d_base = assert_close(
        &format!("{family} base"),
        &base,
        &read_logits(&dir.join("logits.safetensors")),
    );
    let want: Vec<u32> = serde_json::from_value(
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(dir.join("greedy.json")).expect("greedy"),
        )
        .expect("json")["ids"]
            .clone(),
    )
    .expect("ids");
    let prompt: Vec<u32> = serde_json::from_value(spec()["prompt"].clone()).expect("prompt");
    assert_eq!(
        greedy(&model, &prompt, want.len()),
        want,
        "{family}: greedy decoding differs from transformers"
    );

    // PEFT's adapter through our reader.
    let theirs_dir = dir.join("peft_adapter");
    let lora = peft::read_adapter_config(&theirs_dir).expect("reads PEFT's adapter_config.json");
    assert_eq!((lora.rank, lora.alpha), (4, 8.0), "{family}");
    let with_theirs = load(&base_dir, Trainable::Lora(lora));
    peft::load_adapter_weights(&with_theirs, &theirs_dir).expect("loads PEFT's adapter");
    let theirs_logits = with_theirs.forward(&x, 0, None).expect("forward");
    assert!(
        max_abs_diff(&theirs_logits, &base) > 1e-2,
        "{family}: PEFT's random adapter must change the logits, or the check proves nothing"
    );
    let d_peft = assert_close(
        &format!("{family} with PEFT's adapter"),
        &theirs_logits,
        &read_logits(&dir.join("peft_logits.safetensors")),
    );

    // Our adapter through PEFT.
    let ours_logits = read_logits(&dir.join("our_logits.safetensors"));
    assert!(
        max_abs_diff(&ours_logits, &base) > 1e-2,
        "{family}: our random adapter must change the logits"
    );
    let d_ours = assert_close(
        &format!("{family} with our adapter in PEFT"),
        &ours_logits,
        &read_logits(&dir.join("peft_logits_ours.safetensors")),
    );
    eprintln!(
        "{family}: max |logit diff| base {d_base:.2e}, PEFT->ours {d_peft:.2e}, ours->PEFT \
         {d_ours:.2e} (max |logit| {:.2}); greedy ids equal",
        max_abs(&base)
    );
}

#[test]
fn llama32_tied_llama3_rope_matches_transformers_and_peft() {
    check(FAMILIES[0].0, FAMILIES[0].1);
}

#[test]
fn llama_with_biases_matches_transformers_and_peft() {
    check(FAMILIES[1].0, FAMILIES[1].1);
}

#[test]
fn qwen2_with_sliding_layers_matches_transformers_and_peft() {
    check(FAMILIES[2].0, FAMILIES[2].1);
}

#[test]
fn qwen3_matches_transformers_and_peft() {
    check(FAMILIES[3].0, FAMILIES[3].1);
}

#[test]
fn mistral_matches_transformers_and_peft() {
    check(FAMILIES[4].0, FAMILIES[4].1);
}

#[test]
fn gemma_matches_transformers_and_peft() {
    check(FAMILIES[5].0, FAMILIES[5].1);
}

#[test]
fn gemma3_matches_transformers_and_peft() {
    check(FAMILIES[6].0, FAMILIES[6].1);
}
