//! Training throughput and peak memory on a real model and real chat rows: what a train stage
//! does per step, without the stage around it. The peer is bench/torch_train_real.py
//! (transformers + PEFT on the same directory and the very same token ids, batches and order).
//!
//! `cargo run --release -p llamaduo-model --example train_real -- MODEL_DIR ROWS.jsonl MODE STEPS [IDS_OUT.json]`
//!
//! MODE: `qv` (LoRA r16 alpha 32 dropout 0.05 on q_proj, v_proj), `all` (the same on every
//! linear layer, the default adapter) or `full`. Rows are rendered with the model's chat
//! template and tokenised as the train stage does (loss on the answer tokens only), in batches
//! of BENCH_BATCH (8) padded to their longest row. Two warm-up steps, then STEPS timed steps;
//! tokens/s counts real tokens only (no padding). IDS_OUT gets the batches' token ids and loss
//! masks in training order, for the PyTorch side. Prints one JSON line.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use llamaduo::api::DatasetRow;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::{CausalLm, LoadOptions, Trainable};
use llamaduo_model::train::data::{epoch_order, tokenize_rows};
use llamaduo_model::train::{Dataset, Epochs, TrainOptions, train};

fn main() -> anyhow::Result<()> {
    // SAFETY: first statement of main; no other thread exists yet.
    unsafe { llamaduo_model::threads::use_one_pool() };
    llamaduo_model::alloc::tune_malloc();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, rows_path, mode, steps, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: train_real MODEL_DIR ROWS.jsonl qv|all|full STEPS [IDS_OUT.json]");
    };
    let steps: u64 = steps.parse().context("STEPS must be a number")?;
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = PathBuf::from(dir);
    let hub = HubDir::open(&dir)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let tokenizer = hub.tokenizer()?;
    let template = hub.chat_template(&tokenizer, None)?;
    let text = std::fs::read_to_string(rows_path).with_context(|| rows_path.clone())?;
    let rows: Vec<DatasetRow> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let warmup = 2u64;
    let needed = batch * (warmup + steps) as usize;
    anyhow::ensure!(
        rows.len() >= needed,
        "{} rows, {needed} needed for {steps} steps of {batch}",
        rows.len()
    );
    let data = tokenize_rows(&template, &tokenizer, &rows[..needed], 512)?;
    let lora = |targets: &[&str]| LoraConfig {
        rank: 16,
        alpha: 32.0,
        dropout: 0.05,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
    };
    let trainable = match mode.as_str() {
        "qv" => Trainable::Lora(lora(&["q_proj", "v_proj"])),
        "all" => Trainable::Lora(lora(&["all-linear"])),
        "full" => Trainable::Full,
        other => anyhow::bail!("MODE must be qv, all or full, not {other}"),
    };
    let opts = TrainOptions {
        epochs: Epochs::Fixed(1),
        learning_rate: 1e-4,
        warmup_ratio: 0.0,
        batch_size: batch,
        gradient_accumulation: 1,
        max_seq_len: 512,
        eval_fraction: 0.0,
        checkpoint_every: 0,
        pad_id: tokenizer.pad_id(),
        ..TrainOptions::default()
    };
    // The order train() visits the samples in (no held-out slice: all of them, epoch 0).
    let order = epoch_order(data.samples.len(), opts.seed, 0);
    if let Some(out) = rest.first() {
        let batches: Vec<serde_json::Value> = order
            .chunks(batch)
            .map(|c| {
                serde_json::json!(
                    c.iter()
                        .map(|i| serde_json::json!({
                            "ids": data.samples[*i].input_ids,
                            "loss": data.samples[*i].loss_mask,
                        }))
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        std::fs::write(
            out,
            serde_json::to_vec(&serde_json::json!({"batches": batches, "pad": opts.pad_id}))?,
        )?;
    }
    let timed_tokens: usize = order
        .chunks(batch)
        .skip(warmup as usize)
        .flatten()
        .map(|i| data.samples[*i].input_ids.len())
        .sum();
    let loss_tokens: usize = data.samples.iter().map(|s| s.loss_tokens()).sum();
    let all_tokens: usize = data.samples.iter().map(|s| s.input_ids.len()).sum();
    let model = CausalLm::load(
        &cfg,
        hub.var_builder(DType::F32, &Device::Cpu)?,
        &LoadOptions {
            dtype: DType::F32,
            trainable,
            seed: 1,
        },
    )?;
    let mut t0 = None;
    let mut last_loss = 0.0;
    train(&model, Dataset { ..data }, &opts, &mut |p| {
        if p.step == warmup {
            t0 = Some(Instant::now());
        }
        last_loss = p.loss;
        ControlFlow::Continue(())
    })?;
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "impl": "llamaduo",
            "bench": "train_real",
            "model": dir.file_name().map(|n| n.to_string_lossy().to_string()),
            "mode": mode,
            "batch": batch,
            "steps_timed": steps,
            "mean_tokens_per_row": all_tokens as f64 / needed as f64,
            "loss_share": loss_tokens as f64 / all_tokens as f64,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "tokens_per_second": (timed_tokens as f64 / secs).round(),
            "step_seconds": secs / steps as f64,
            "peak_rss_mib": llamaduo_model::alloc::peak_rss_mib().round(),
            "final_loss": last_loss,
        })
    );
    Ok(())
}
