//! Batched generation on a small from-scratch model: the KV cache gives exactly the tokens of
//! full recomputation, batching and left padding do not change answers, sampling is seeded,
//! and stop strings / max_new_tokens end answers.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use llamaduo::api::migration::FromScratchSpec;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::from_scratch::build_from_scratch;
use llamaduo_model::generate::{FinishReason, Generator, SamplingParams};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};
use llamaduo_model::tokenizer::TextTokenizer;

struct Fixture {
    _dir: tempfile::TempDir,
    model: CausalLm,
    tok: TextTokenizer,
    prompts: Vec<Vec<u32>>,
}

/// A 2-layer GQA model whose weights are scaled up from the usual 0.02 init so the logits
/// are far apart (a freshly initialised model's near-ties would make any float difference
/// flip the argmax, which says nothing about the cache).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let spec: FromScratchSpec = serde_json::from_str(
        r#"{"hiddenSize": 64, "numLayers": 2, "numHeads": 4, "numKvHeads": 2, "vocabSize": 400}"#,
    )
    .expect("spec");
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "Question {i}: how many apples are in basket {}? Answer: {}.",
                i % 9,
                i % 4
            )
        })
        .collect();
    build_from_scratch(&spec, &texts, 11, 512, dir.path()).expect("builds");
    let hub = HubDir::open(dir.path()).expect("opens");
    let cfg = ModelConfig::from_file(&dir.path().join("config.json")).expect("config");
    let raw = candle_core::safetensors::load(&hub.weight_files()[0], &Device::Cpu).expect("loads");
    let scaled: HashMap<String, Tensor> = raw
        .into_iter()
        .map(|(n, t)| {
            let t = if t.rank() == 2 {
                (t * 40.0).expect("scale")
            } else {
                t
            };
            (n, t)
        })
        .collect();
    let model = CausalLm::from_tensors(
        &cfg,
        scaled,
        &Device::Cpu,
        &LoadOptions::inference(DType::F32),
    )
    .expect("model");
    let tok = hub.tokenizer().expect("tokenizer");
    let prompts = [
        "Question 3: how many apples?",
        "Question 12: how many apples are in basket 4? Answer:",
        "Hi",
    ]
    .iter()
    .map(|p| tok.encode(p).expect("encodes"))
    .collect();
    Fixture {
        _dir: dir,
        model,
        tok,
        prompts,
    }
}

fn ids(out: &[Vec<llamaduo_model::generate::Generation>]) -> Vec<Vec<Vec<u32>>> {
    out.iter()
        .map(|answers| answers.iter().map(|g| g.token_ids.clone()).collect())
        .collect()
}

#[test]
fn kv_cache_equals_full_recomputation_and_batching_is_invisible() {
    let f = fixture();
    let params = SamplingParams::greedy(24);
    let cached = Generator::new(&f.model, &f.tok)
        .with_batch_size(3)
        .generate(&f.prompts, &params, 2)
        .expect("cached");
    let full = Generator::new(&f.model, &f.tok)
        .with_batch_size(3)
        .without_kv_cache()
        .generate(&f.prompts, &params, 2)
        .expect("recomputed");
    assert_eq!(ids(&cached), ids(&full), "KV cache changes greedy tokens");
    let single = Generator::new(&f.model, &f.tok)
        .with_batch_size(1)
        .generate(&f.prompts, &params, 2)
        .expect("one by one");
    assert_eq!(
        ids(&cached),
        ids(&single),
        "left-padded batching changes greedy tokens"
    );
    // Greedy answers of one prompt are identical copies with their own index.
    assert_eq!(cached[0][0].token_ids, cached[0][1].token_ids);
    assert_eq!(cached[0][1].answer_index, 1);
    // The answers are not all the same sequence (the model is not degenerate).
    assert_ne!(cached[0][0].token_ids, cached[1][0].token_ids);
    for answers in &cached {
        let g = &answers[0];
        match g.finish_reason {
            FinishReason::Length => assert_eq!(g.token_ids.len(), 24),
            FinishReason::Eos => assert!(g.token_ids.len() < 24),
            FinishReason::Stop => panic!("no stop strings were given"),
            FinishReason::Cancelled => panic!("nothing cancels"),
        }
    }
}

#[test]
fn sampling_is_seeded_per_answer() {
    let f = fixture();
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        max_new_tokens: 12,
        seed: 5,
    };
    let a = Generator::new(&f.model, &f.tok)
        .with_batch_size(4)
        .generate(&f.prompts, &params, 3)
        .expect("a");
    let b = Generator::new(&f.model, &f.tok)
        .with_batch_size(2)
        .generate(&f.prompts, &params, 3)
        .expect("b");
    assert_eq!(
        ids(&a),
        ids(&b),
        "same seed, different batching: same samples"
    );
    assert!(
        a.iter()
            .any(|answers| answers[0].token_ids != answers[1].token_ids),
        "answers of one prompt should differ when sampling"
    );
    let c = Generator::new(&f.model, &f.tok)
        .generate(&f.prompts, &SamplingParams { seed: 6, ..params }, 3)
        .expect("c");
    assert_ne!(ids(&a), ids(&c), "another seed, other samples");
}

#[test]
fn stop_strings_cut_the_text() {
    let f = fixture();
    let params = SamplingParams::greedy(24);
    let free = Generator::new(&f.model, &f.tok)
        .generate(&f.prompts[..1], &params, 1)
        .expect("free");
    let text = free[0][0].text.clone();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let stop: String = chars[4..7].iter().collect();
    let cut = &text[..text.find(&stop).expect("stop occurs")];
    let stopped = Generator::new(&f.model, &f.tok)
        .with_stop_strings(vec![stop.clone()])
        .generate(&f.prompts[..1], &params, 1)
        .expect("stopped");
    let g = &stopped[0][0];
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, cut, "stop {stop:?}");
    assert!(g.token_ids.len() < free[0][0].token_ids.len());
}

#[test]
fn bad_requests_are_errors() {
    let f = fixture();
    let g = Generator::new(&f.model, &f.tok);
    assert!(
        g.generate(&[vec![]], &SamplingParams::greedy(4), 1)
            .is_err()
    );
    assert!(
        g.generate(&f.prompts, &SamplingParams::greedy(4), 0)
            .is_err()
    );
    assert!(
        g.generate(&f.prompts, &SamplingParams::greedy(0), 1)
            .is_err()
    );
}
