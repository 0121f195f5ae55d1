//! Small GGUF files written from a Hugging Face model directory the way llama.cpp's converter
//! writes them (GGUF tensor names, permuted Q/K for Llama, "1 +" norms for Gemma, a GPT-2 BPE
//! tokenizer in the metadata), for tests of the GGUF conversion and its cache.

use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use llamaduo_model::config::ModelConfig;
use llamaduo_model::gguf::permute_rows;

/// HF name -> GGUF name, as llama.cpp's converter maps it.
fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return (*g).to_owned();
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (n, leaf) = rest.split_once('.').expect("layer index");
    let leaf = leaf
        .replace("input_layernorm", "attn_norm")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("self_attn.q_norm", "attn_q_norm")
        .replace("self_attn.k_norm", "attn_k_norm")
        .replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down");
    format!("blk.{n}.{leaf}")
}

/// Writes `dir` (an HF model directory) as a GGUF file the way llama.cpp does.
pub fn write_gguf(dir: &Path, arch: &str, out: &Path) {
    write_gguf_with(dir, arch, out, Vec::new());
}

/// [`write_gguf`] with extra metadata entries.
pub fn write_gguf_with(dir: &Path, arch: &str, out: &Path, extra: Vec<(String, Value)>) {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .expect("weights");
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).expect("read"))
            .expect("json");
    let vocab = tok["model"]["vocab"].as_object().expect("vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(p) => Value::String(format!(
                "{} {}",
                p[0].as_str().expect("a"),
                p[1].as_str().expect("b")
            )),
            other => panic!("merge {other}"),
        })
        .collect();
    let types: Vec<Value> = (0..tokens.len())
        .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
        .collect();
    let template: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).expect("read"))
            .expect("json");
    let k = |s: &str| format!("{arch}.{s}");
    let u = |x: usize| Value::U32(x as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (k("context_length"), u(cfg.max_position_embeddings)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u(cfg.num_kv_heads())),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta() as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        (
            "tokenizer.chat_template".into(),
            Value::String(template["chat_template"].as_str().expect("template").into()),
        ),
    ];
    let mut meta = meta;
    meta.extend(extra);
    let (heads, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &tensors {
        let mut t = t.clone();
        if arch == "llama" && name.ends_with("q_proj.weight") {
            t = permute_rows(&t, heads).expect("permute q");
        } else if arch == "llama" && name.ends_with("k_proj.weight") {
            t = permute_rows(&t, kv).expect("permute k");
        }
        if arch == "gemma" && name.ends_with("norm.weight") {
            t = (t + 1.0).expect("gemma norm");
        }
        q.push((
            gguf_name(name),
            QTensor::quantize(&t, GgmlDType::F32).expect("quantize"),
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).expect("create");
    gguf_file::write(&mut f, &meta_refs, &q_refs).expect("write gguf");
}
