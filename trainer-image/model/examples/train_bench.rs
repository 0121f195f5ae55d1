//! Training throughput and peak memory of the candle trainer on the tiny Llama of FINDINGS
//! (vocab 1024, hidden 128, 4 layers, 4 heads, intermediate 344, f32, batch 8 x 128).
//!
//! `cargo run --release -p llamaduo-model --example train_bench -- full|lora [steps] [--no-mallopt]`
//! prints one JSON line: mode, tokens/s over the timed steps (after 3 warm-up steps), and the
//! process's peak RSS (VmHWM). Run each mode in its own process so peak RSS is its own.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device};
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::init::random_weights;
use llamaduo_model::models::{CausalLm, LoadOptions, Trainable};
use llamaduo_model::rng::SplitMix;
use llamaduo_model::train::{Dataset, Sample, TrainOptions, train};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args
        .first()
        .map(String::as_str)
        .unwrap_or("lora")
        .to_string();
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let mallopt = !args.iter().any(|a| a == "--no-mallopt");
    if mallopt {
        llamaduo_model::alloc::tune_malloc();
    }
    let (batch, seq) = (8usize, 128usize);
    let mut cfg = ModelConfig::new(Architecture::Llama, 1024, 128, 4, 4, 4, 344, 512);
    cfg.tie_word_embeddings = Some(false);
    let trainable = match mode.as_str() {
        "full" => Trainable::Full,
        "lora" => Trainable::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }),
        other => anyhow::bail!("mode must be full or lora, not {other}"),
    };
    let device = Device::Cpu;
    let weights = random_weights(&cfg, 1, &device)?;
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed: 1,
    };
    let model = CausalLm::from_tensors(&cfg, weights, &device, &opts)?;
    // Random tokens, loss on every position (as a plain causal-LM benchmark).
    let warmup = 3u64;
    let total = warmup + steps;
    let mut rng = SplitMix::new(7);
    let samples: Vec<Sample> = (0..batch * total as usize)
        .map(|_| Sample {
            input_ids: (0..seq).map(|_| rng.below(1024) as u32).collect(),
            loss_mask: vec![true; seq],
        })
        .collect();
    let data = Dataset {
        samples,
        truncated: 0,
        dropped: 0,
    };
    let topts = TrainOptions {
        epochs: 1,
        learning_rate: 1e-4,
        warmup_ratio: 0.0,
        batch_size: batch,
        gradient_accumulation: 1,
        max_seq_len: seq,
        eval_fraction: 0.0,
        checkpoint_every: 0,
        ..TrainOptions::default()
    };
    let mut t0 = None;
    let mut last_loss = 0.0;
    let report = train(&model, data, &topts, &mut |p| {
        if p.step == warmup {
            t0 = Some(Instant::now());
        }
        last_loss = p.loss;
        ControlFlow::Continue(())
    })?;
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let tokens = (steps as usize * batch * seq) as f64;
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "mallopt": mallopt,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "steps_timed": steps,
            "tokens_per_second": (tokens / secs).round(),
            "peak_rss_mib": peak_rss_mib().round(),
            "final_loss": last_loss,
            "steps": report.steps,
        })
    );
    Ok(())
}
