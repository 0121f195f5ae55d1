//! Training throughput and peak memory of the candle trainer on the tiny Llama of FINDINGS
//! (vocab 1024, hidden 128, 4 layers, 4 heads, intermediate 344, f32, batch 8 x 128).
//!
//! `cargo run --release -p llamaduo-model --example train_bench -- full|lora [steps] [--no-mallopt]`
//! prints one JSON line: mode, tokens/s over the timed steps (after 3 warm-up steps), and the
//! process's peak RSS (VmHWM). Run each mode in its own process so peak RSS is its own.
//!
//! The shape can be changed through the environment, so bench/torch_train.py builds the same
//! model from the same variables: BENCH_VOCAB, BENCH_HIDDEN, BENCH_LAYERS, BENCH_HEADS,
//! BENCH_INTERMEDIATE, BENCH_BATCH, BENCH_SEQ (defaults: the tiny Llama above).
//! BENCH_ARCH picks the family of the same shape (`llama` default, `qwen2`, `qwen3`,
//! `mistral`, `gemma`, `gemma3`: config.json's model_type, `gemma3` for gemma3_text), so the
//! families' training speed compares on one config.
//!
//! BENCH_DEVICE `cpu` (default) or `cuda` (GPU 0; needs a build with `--features
//! llamaduo-model/cuda`, see bench/gpu.sh) and BENCH_DTYPE `f32` or `bf16` (default: f32 on the
//! CPU, bf16 on CUDA) pick where and in what the model computes; trained weights keep f32
//! masters either way, as in the train stage. BENCH_LORA_DROPOUT (default 0) sets the LoRA
//! dropout.

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

/// A positive integer from the environment variable `name`, or `default` when it is unset.
fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("{name}={v:?} must be a positive integer"),
        },
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first statement of main; no other thread exists yet.
    let candle_threads = unsafe { llamaduo_model::threads::use_one_pool() };
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
    let vocab = env_usize("BENCH_VOCAB", 1024)?;
    let hidden = env_usize("BENCH_HIDDEN", 128)?;
    let layers = env_usize("BENCH_LAYERS", 4)?;
    let heads = env_usize("BENCH_HEADS", 4)?;
    let intermediate = env_usize("BENCH_INTERMEDIATE", 344)?;
    let batch = env_usize("BENCH_BATCH", 8)?;
    let seq = env_usize("BENCH_SEQ", 128)?;
    let max_pos = seq.max(512);
    let arch = match std::env::var("BENCH_ARCH") {
        Err(_) => Architecture::Llama,
        Ok(name) => Architecture::ALL
            .into_iter()
            .find(|a| a.hf_model_type().trim_end_matches("_text") == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "BENCH_ARCH={name:?} must be one of llama, qwen2, qwen3, mistral, gemma, gemma3"
                )
            })?,
    };
    let mut cfg = ModelConfig::new(
        arch,
        vocab,
        hidden,
        layers,
        heads,
        heads,
        intermediate,
        max_pos,
    );
    cfg.tie_word_embeddings = Some(false);
    let lora_dropout: f64 = match std::env::var("BENCH_LORA_DROPOUT") {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("BENCH_LORA_DROPOUT={v:?} must be a number"))?,
        Err(_) => 0.0,
    };
    let trainable = match mode.as_str() {
        "full" => Trainable::Full,
        "lora" => Trainable::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: lora_dropout,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }),
        other => anyhow::bail!("mode must be full or lora, not {other}"),
    };
    let device = match std::env::var("BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok("cuda") => Device::new_cuda(0)?,
        Ok(other) => anyhow::bail!("BENCH_DEVICE={other:?} must be cpu or cuda"),
    };
    let dtype = match std::env::var("BENCH_DTYPE").as_deref() {
        Err(_) if device.is_cpu() => DType::F32,
        Err(_) | Ok("bf16") => DType::BF16,
        Ok("f32") => DType::F32,
        Ok(other) => anyhow::bail!("BENCH_DTYPE={other:?} must be f32 or bf16"),
    };
    let weights = random_weights(&cfg, 1, &device)?;
    let opts = LoadOptions {
        dtype,
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
            input_ids: (0..seq).map(|_| rng.below(vocab) as u32).collect(),
            loss_mask: vec![true; seq],
        })
        .collect();
    let data = Dataset {
        samples,
        truncated: 0,
        dropped: 0,
    };
    let topts = TrainOptions {
        epochs: llamaduo_model::train::Epochs::Fixed(1),
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
            "impl": "llamaduo",
            "bench": "train",
            "config": {"vocab": vocab, "hidden": hidden, "layers": layers, "heads": heads,
                       "intermediate": intermediate, "batch": batch, "seq": seq},
            "arch": arch.hf_model_type(),
            "hand_pass": model.hand_pass_supported(),
            "mode": mode,
            "lora_dropout": lora_dropout,
            "device": if device.is_cpu() { "cpu" } else { "cuda" },
            "dtype": format!("{dtype:?}").to_lowercase(),
            "trainable_params": model.trainable().iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
            "mallopt": mallopt,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "candle_threads": candle_threads,
            "kernel_pool": format!("{:?}", llamaduo_model::kernels::cpu_pool()),
            "steps_timed": steps,
            "tokens_per_second": (tokens / secs).round(),
            "peak_rss_mib": llamaduo_model::alloc::peak_rss_mib().round(),
            "final_loss": last_loss,
            "steps": report.steps,
        })
    );
    Ok(())
}
