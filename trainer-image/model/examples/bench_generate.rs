//! Generation throughput: tokens/s at batch 1 and 8 with the KV cache, on the tiny Llama of
//! FINDINGS.md (random weights) and, when its converted directory exists, SmolLM2-135M
//! (run the `smollm2` tests once to create it).
//!
//! `cargo run -p llamaduo-model --example bench_generate [SMOLLM2_HF_DIR]`
//! Prints one JSON line per measurement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use llamaduo::api::dataset::{Message, Role};
use llamaduo::api::migration::FromScratchSpec;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::from_scratch::build_from_scratch;
use llamaduo_model::generate::{Generator, SamplingParams};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};

fn load(dir: &Path) -> Result<(CausalLm, llamaduo_model::tokenizer::TextTokenizer, HubDir)> {
    let hub = HubDir::open(dir)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let vb = hub.var_builder(DType::F32, &Device::Cpu)?;
    let model = CausalLm::load(&cfg, vb, &LoadOptions::inference(DType::F32))?;
    let tok = hub.tokenizer()?;
    Ok((model, tok, hub))
}

fn bench(name: &str, dir: &Path, questions: &[&str], max_new: usize) -> Result<()> {
    let (model, tok, hub) = load(dir)?;
    let tmpl = hub.chat_template(&tok, None)?;
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            tmpl.prompt_ids(
                &tok,
                &[Message {
                    role: Role::User,
                    content: (*q).to_owned(),
                }],
            )
        })
        .collect::<Result<_, _>>()?;
    for batch in [1usize, 8] {
        let chosen: Vec<Vec<u32>> = prompts.iter().cycle().take(batch).cloned().collect();
        let generator = Generator::new(&model, &tok).with_batch_size(batch);
        // Warm-up (allocator, page faults of the mapped weights).
        generator.generate(&chosen[..1], &SamplingParams::greedy(4), 1)?;
        let t0 = Instant::now();
        let out = generator.generate(&chosen, &SamplingParams::greedy(max_new), 1)?;
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|a| a[0].token_ids.len()).sum();
        let prompt_tokens: usize = chosen.iter().map(Vec::len).sum();
        println!(
            "{}",
            serde_json::json!({
                "model": name, "batch": batch, "prompt_tokens": prompt_tokens,
                "new_tokens": tokens, "seconds": secs,
                "tokens_per_s": tokens as f64 / secs,
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let questions = [
        "Write a short story about a robot who learns to paint.",
        "Explain how a bicycle works.",
        "List some tips for staying focused while studying.",
        "Describe the water cycle.",
    ];
    let tmp = tempfile::tempdir()?;
    let spec: FromScratchSpec = serde_json::from_value(serde_json::json!({
        "hiddenSize": 128, "numLayers": 4, "numHeads": 4, "intermediateSize": 344, "vocabSize": 1024
    }))?;
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("Example {i}: {} {}", questions[i % 4], i * 7))
        .collect();
    build_from_scratch(&spec, &texts, 1, 2048, tmp.path()).context("tiny model")?;
    bench("tiny-llama", tmp.path(), &questions, 128)?;
    let smol: PathBuf = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(
            ".cache/llamaduo/models/smollm2-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53/hf",
        )
    });
    if smol.join("config.json").exists() {
        bench("smollm2-135m", &smol, &questions, 64)?;
    } else {
        eprintln!("{} not found: skipping SmolLM2", smol.display());
    }
    Ok(())
}
