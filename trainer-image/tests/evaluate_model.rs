//! Loading the round's model for evaluation: a PEFT LoRA adapter folded into a from-scratch
//! base (W + alpha/r · B·A), adapter errors, and generation with a KV cache equal to
//! generation without one on the loaded model.

#[allow(dead_code)]
#[path = "../src/evaluate/mod.rs"]
mod evaluate;
#[allow(dead_code)]
#[path = "../src/failure_class.rs"]
mod failure_class;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use evaluate::load::{LoadError, load_round_model};
use llamaduo::api::{DatasetRow, EvaluateConfig};
use llamaduo_model::generate::{Generator, SamplingParams};
use llamaduo_store::Store;
use serde_json::json;

const Q: &str = "model.layers.0.self_attn.q_proj";

fn rows() -> Vec<DatasetRow> {
    (0..20)
        .map(|i| DatasetRow::single_turn(format!("What is {i} + {i}?"), format!("{}", 2 * i)))
        .collect()
}

fn config(root: &Path, method: &str) -> EvaluateConfig {
    serde_json::from_value(json!({
        "namespace": "local", "migration": "m", "round": 1,
        "artifacts": format!("file://{}", root.display()),
        "task": {"description": "add"},
        "student": {"fromScratch": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}},
        "training": {"method": method},
        "judge": {"provider": "simulated", "model": "arithmetic", "baseUrl": "http://127.0.0.1:9/v1"},
        "teacher": {"provider": "simulated", "model": "arithmetic", "baseUrl": "http://127.0.0.1:9/v1"},
        "evaluation": {}
    }))
    .expect("config")
}

fn build(dir: &Path) {
    let spec = serde_json::from_value(
        json!({"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}),
    )
    .expect("spec");
    let texts = llamaduo_model::from_scratch::tokenizer_corpus(&rows());
    llamaduo_model::from_scratch::build_from_scratch(&spec, &texts, 5, 128, dir).expect("build");
}

/// A PEFT adapter on q_proj and v_proj (r 4, alpha 8), with `base` as base_model_name_or_path.
fn write_adapter(
    dir: &Path,
    base: Option<&str>,
    extra_module: Option<&str>,
) -> HashMap<String, Tensor> {
    std::fs::create_dir_all(dir).expect("dir");
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut modules = vec![Q.to_string(), "model.layers.0.self_attn.v_proj".to_string()];
    modules.extend(extra_module.map(str::to_string));
    for m in &modules {
        let a = Tensor::randn(0f32, 0.5, (4, 32), &dev).expect("a");
        let b = Tensor::randn(0f32, 0.5, (32, 4), &dev).expect("b");
        t.insert(format!("base_model.model.{m}.lora_A.weight"), a);
        t.insert(format!("base_model.model.{m}.lora_B.weight"), b);
    }
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors")).expect("save");
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                     "base_model_name_or_path": base});
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).expect("cfg");
    t
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

fn weight(m: &llamaduo_model::models::CausalLm, name: &str) -> Tensor {
    m.weights()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, w)| w.tensor().to_dtype(DType::F32).expect("f32"))
        .expect("weight present")
}

#[tokio::test]
async fn lora_adapter_is_folded_into_the_from_scratch_base() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    build(&root.join("student/base"));
    let adapter = write_adapter(&root.join("round-1/model"), None, None);
    let store = Store::local(root);
    let loaded = load_round_model(&config(root, "lora"), &store)
        .await
        .expect("loads");
    let base =
        candle_core::safetensors::load(root.join("student/base/model.safetensors"), &Device::Cpu)
            .expect("base");
    let a = &adapter[&format!("base_model.model.{Q}.lora_A.weight")];
    let b = &adapter[&format!("base_model.model.{Q}.lora_B.weight")];
    let expected = (&base[&format!("{Q}.weight")]
        + (b.matmul(a).expect("ba") * 2.0).expect("scale"))
    .expect("sum");
    let got = weight(&loaded.model, &format!("{Q}.weight"));
    assert!(max_diff(&got, &expected) < 1e-5);
    // Modules without an adapter are the base's.
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(max_diff(&weight(&loaded.model, k), &base[k]), 0.0);
    assert!(loaded.source.contains("adapter"));

    // base_model_name_or_path as a key under the artifact root works the same.
    write_adapter(&root.join("round-1/model"), Some("student/base"), None);
    load_round_model(&config(root, "lora"), &store)
        .await
        .expect("loads by key");
}

#[tokio::test]
async fn adapter_for_a_missing_module_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    build(&root.join("student/base"));
    let dir = root.join("round-1/model");
    write_adapter(&dir, None, Some("model.layers.7.mlp.up_proj"));
    // The merge is the model crate's (`llamaduo_model::adapter`, tested there); its error
    // reaches the evaluate stage wrapped, naming the adapter and the module.
    let err = load_round_model(&config(root, "lora"), &Store::local(root))
        .await
        .err()
        .expect("layer 7 does not exist");
    assert!(
        matches!(
            err,
            LoadError::Adapter(llamaduo_model::peft::PeftError::Adapter { .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("model.layers.7.mlp.up_proj")
            && err.to_string().contains("round-1/model"),
        "{err}"
    );
    // No model at all: the error names the round's model.
    let empty = tempfile::tempdir().expect("tmp");
    let err = load_round_model(&config(empty.path(), "full"), &Store::local(empty.path()))
        .await
        .err()
        .expect("nothing to load");
    assert!(err.to_string().contains("round-1/model"), "{err}");
}

#[tokio::test]
async fn generation_with_kv_cache_equals_generation_without() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    build(&root.join("round-1/model"));
    let loaded = load_round_model(&config(root, "full"), &Store::local(root))
        .await
        .expect("loads");
    let prompts: Vec<Vec<u32>> = [
        "What is 1 + 1?",
        "What is 12 + 12?",
        "Add 3 and 4, please, now.",
    ]
    .iter()
    .map(|p| {
        let row = DatasetRow::single_turn(*p, "x");
        loaded
            .template
            .prompt_ids(&loaded.tokenizer, row.prompt_messages())
            .expect("ids")
    })
    .collect();
    let params = SamplingParams::greedy(12);
    let cached = Generator::new(&loaded.model, &loaded.tokenizer)
        .generate(&prompts, &params, 1)
        .expect("cached");
    let plain = Generator::new(&loaded.model, &loaded.tokenizer)
        .without_kv_cache()
        .generate(&prompts, &params, 1)
        .expect("plain");
    let ids = |g: &Vec<Vec<llamaduo_model::generate::Generation>>| {
        g.iter().map(|a| a[0].token_ids.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&cached), ids(&plain));
    assert!(ids(&cached).iter().all(|t| !t.is_empty()));
}
