//! Generation throughput: tokens/s at batch 1 and 8 with the KV cache, on the tiny Llama of
//! FINDINGS.md (random weights) and, when its converted directory exists, SmolLM2-135M
//! (run the `smollm2` tests once to create it).
//!
//! `cargo run -p llamaduo-model --example bench_generate [SMOLLM2_HF_DIR]`
//! Prints one JSON line per measurement.
//!
//! With `BENCH_MODEL_DIR=DIR` the tiny model is built in DIR (kept, reused when it exists),
//! SmolLM2 is skipped, and DIR also receives the token ids for bench/hf_generate.py:
//! `prompts.json` (`{"b1": [[ids]], "b8": [[ids], ...]}`, unpadded) and `candle_ids_b{N}.json`
//! (the generated ids per row), so transformers runs the same prompts on the same weights.
//! `BENCH_NEW_TOKENS` (default 128) sets the answer length, `BENCH_GEN_REPS` (default 1) the
//! number of timed runs per batch size whose median is printed.

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

fn bench(name: &str, dir: &Path, questions: &[&str], max_new: usize, export: bool) -> Result<()> {
    let reps = match std::env::var("BENCH_GEN_REPS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("BENCH_GEN_REPS={v:?} must be a positive integer"))?,
        Err(_) => 1,
    };
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
    let batches = [1usize, 8];
    if export {
        let mut m = serde_json::Map::new();
        for batch in batches {
            let chosen: Vec<Vec<u32>> = prompts.iter().cycle().take(batch).cloned().collect();
            m.insert(format!("b{batch}"), serde_json::json!(chosen));
        }
        std::fs::write(dir.join("prompts.json"), serde_json::to_vec(&m)?)
            .context("writing prompts.json")?;
    }
    for batch in batches {
        let chosen: Vec<Vec<u32>> = prompts.iter().cycle().take(batch).cloned().collect();
        let generator = Generator::new(&model, &tok).with_batch_size(batch);
        // Warm-up (allocator, page faults of the mapped weights).
        generator.generate(&chosen[..1], &SamplingParams::greedy(4), 1)?;
        // Median of `reps` timed runs: one tiny-model run takes well under a second.
        let mut timed = Vec::with_capacity(reps);
        let mut out = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            out = generator.generate(&chosen, &SamplingParams::greedy(max_new), 1)?;
            timed.push(t0.elapsed().as_secs_f64());
        }
        timed.sort_by(f64::total_cmp);
        let secs = timed[timed.len() / 2];
        let tokens: usize = out.iter().map(|a| a[0].token_ids.len()).sum();
        if export {
            let ids: Vec<&Vec<u32>> = out.iter().map(|a| &a[0].token_ids).collect();
            std::fs::write(
                dir.join(format!("candle_ids_b{batch}.json")),
                serde_json::to_vec(&ids)?,
            )
            .context("writing candle ids")?;
        }
        let prompt_tokens: usize = chosen.iter().map(Vec::len).sum();
        println!(
            "{}",
            serde_json::json!({
                "impl": "llamaduo", "bench": "generate", "max_new_tokens": max_new,
                "model": name, "batch": batch, "prompt_tokens": prompt_tokens,
                "new_tokens": tokens, "seconds": secs, "reps": reps,
                "tokens_per_s": tokens as f64 / secs,
                "threads": std::env::var("RAYON_NUM_THREADS").ok().unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |n| n.get()).to_string()
                }),
            })
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: first statement of main; no other thread exists yet.
    unsafe { llamaduo_model::threads::use_one_pool() };
    let questions = [
        "Write a short story about a robot who learns to paint.",
        "Explain how a bicycle works.",
        "List some tips for staying focused while studying.",
        "Describe the water cycle.",
    ];
    let export_dir = std::env::var_os("BENCH_MODEL_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir()?;
    let dir = export_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let spec: FromScratchSpec = serde_json::from_value(serde_json::json!({
        "hiddenSize": 128, "numLayers": 4, "numHeads": 4, "intermediateSize": 344, "vocabSize": 1024
    }))?;
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("Example {i}: {} {}", questions[i % 4], i * 7))
        .collect();
    if !dir.join("config.json").exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        build_from_scratch(&spec, &texts, 1, 2048, &dir).context("tiny model")?;
    }
    let max_new = match std::env::var("BENCH_NEW_TOKENS") {
        Ok(v) => v
            .parse::<usize>()
            .with_context(|| format!("BENCH_NEW_TOKENS={v:?} must be an integer"))?,
        Err(_) => 128,
    };
    bench(
        "tiny-llama",
        &dir,
        &questions,
        max_new,
        export_dir.is_some(),
    )?;
    if export_dir.is_some() {
        return Ok(());
    }
    let smol: PathBuf = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        // Where the tests' support converts the fetched GGUF (gguf::cached_hf_dir's naming).
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(format!(
            ".cache/llamaduo/models/smollm2-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53/hf/b179c9523d0e6a0f-v{}",
            llamaduo_model::gguf::CONVERSION_VERSION
        ))
    });
    if smol.join("config.json").exists() {
        bench("smollm2-135m", &smol, &questions, 64, false)?;
    } else {
        eprintln!("{} not found: skipping SmolLM2", smol.display());
    }
    Ok(())
}
