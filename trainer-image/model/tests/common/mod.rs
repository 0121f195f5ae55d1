//! Shared helpers of the model tests: tiny random models of each family and a char-level
//! digit task.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::init::random_weights;
use llamaduo_model::models::{CausalLm, KvCache, LoadOptions, Trainable};
use llamaduo_model::rng::SplitMix;
use llamaduo_model::train::Sample;

pub const FAMILIES: [Architecture; 6] = Architecture::ALL;

/// A tiny config: vocab 32, hidden 32, 2 layers, 4 heads / 2 KV heads (GQA). Gemma 3's
/// first layer slides over 4 keys (shorter than the test sequences) with a local RoPE base
/// of its own, its second is global, and the attention scale is not 1/sqrt(head_dim).
pub fn tiny_config(arch: Architecture) -> ModelConfig {
    let mut c = ModelConfig::new(arch, 32, 32, 2, 4, 2, 64, 256);
    if arch == Architecture::Llama {
        // Untied lm_head on Llama so both layouts are covered.
        c.tie_word_embeddings = Some(false);
    }
    if arch == Architecture::Qwen3 {
        // Qwen3's heads are wider than hidden / heads (Qwen3-0.6B: 16 x 128 on 1024), so
        // q_proj is not square here either.
        c.head_dim = Some(12);
    }
    if arch == Architecture::Mistral {
        // A window shorter than the test sequences, so the window mask is exercised.
        c.sliding_window = Some(6);
    }
    if arch == Architecture::Gemma3 {
        c.sliding_window = Some(4);
        c.extra.insert(
            "layer_types".into(),
            serde_json::json!(["sliding_attention", "full_attention"]),
        );
        c.rope_parameters = Some(serde_json::json!({
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
        }));
        c.extra
            .insert("query_pre_attn_scalar".into(), serde_json::json!(5));
        c.validate().expect("valid Gemma 3 config");
    }
    c
}

/// [`build`] with every norm weight random (normal, std 0.3) instead of its initial value,
/// so that a norm whose weight were applied wrongly (w instead of 1 + w) shows.
pub fn build_random_norms(cfg: &ModelConfig, trainable: Trainable, seed: u64) -> CausalLm {
    let mut weights = random_weights(cfg, seed, &Device::Cpu).expect("weights");
    for (name, t) in weights.iter_mut() {
        if name.ends_with("norm.weight") {
            *t = t.randn_like(0.0, 0.3).expect("randn");
        }
    }
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed,
    };
    CausalLm::from_tensors(cfg, weights, &Device::Cpu, &opts).expect("model")
}

pub fn lora_all(rank: usize, dropout: f64) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout,
        target_modules: llamaduo_model::lora::TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

pub fn build(cfg: &ModelConfig, trainable: Trainable, seed: u64) -> CausalLm {
    let weights = random_weights(cfg, seed, &Device::Cpu).expect("weights");
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed,
    };
    CausalLm::from_tensors(cfg, weights, &Device::Cpu, &opts).expect("model")
}

pub fn ids(rows: &[Vec<u32>]) -> Tensor {
    Tensor::new(rows.to_vec(), &Device::Cpu).expect("ids")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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

// ---- the digit task: "<bos> d1 .. dn > reverse <eos>" ----
pub const BOS: u32 = 1;
pub const SEP: u32 = 2;
pub const EOS: u32 = 3;
pub const DIGIT0: u32 = 4;

pub fn reverse_sample(digits: &[u32]) -> Sample {
    let mut input_ids = vec![BOS];
    input_ids.extend(digits.iter().map(|d| DIGIT0 + d));
    input_ids.push(SEP);
    let answer_from = input_ids.len();
    input_ids.extend(digits.iter().rev().map(|d| DIGIT0 + d));
    input_ids.push(EOS);
    let loss_mask = (0..input_ids.len()).map(|i| i >= answer_from).collect();
    Sample {
        input_ids,
        loss_mask,
    }
}

pub fn random_digits(rng: &mut SplitMix, min_len: usize, max_len: usize) -> Vec<u32> {
    let n = min_len + rng.below(max_len - min_len + 1);
    (0..n).map(|_| rng.below(10) as u32).collect()
}

/// Greedy decoding with the KV cache until EOS or `max_new` tokens.
pub fn greedy(model: &CausalLm, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..max_new {
        let logits = model
            .forward(&ids(&[input.clone()]), cache.len(), Some(&mut cache))
            .expect("forward");
        let last = logits
            .squeeze(0)
            .expect("squeeze")
            .get(input.len() - 1)
            .expect("last")
            .argmax(0)
            .expect("argmax")
            .to_scalar::<u32>()
            .expect("id");
        if last == EOS {
            break;
        }
        out.push(last);
        input = vec![last];
    }
    out
}
