//! The hand-written training pass (CPU, f32) against candle's autograd: the same loss and the
//! same gradient for every trainable tensor, for each family it covers (Llama with an untied
//! head, Qwen2 with q/k/v biases and a tied head, Mistral with a sliding window shorter than
//! the batch, Qwen2 windowing only its second layer, Llama with MLP biases, Gemma with its
//! GELU, (1 + w) norms and scaled embeddings, Gemma 3 with q/k head norms, norms on the
//! attention and MLP outputs, a sliding layer with its own RoPE base and a global one, and
//! its query_pre_attn_scalar), full fine-tuning and LoRA with dropout, on a right-padded
//! batch whose loss covers only some positions, as the trainer builds it. The Gemma models
//! get random norm weights, so that (1 + w) and every norm's weight gradient are really
//! checked.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use llamaduo::api::Architecture;
use llamaduo_model::kernels::cross_entropy::cross_entropy;
use llamaduo_model::models::{CausalLm, Trainable};
use llamaduo_model::train::Sample;
use llamaduo_model::train::data::{HostBatch, make_batch};

/// Three samples of different lengths; the loss covers each one's second half.
fn samples() -> Vec<Sample> {
    [11usize, 7, 9]
        .iter()
        .enumerate()
        .map(|(r, &n)| Sample {
            input_ids: (0..n)
                .map(|i| ((i * 7 + r * 5 + 3) % 31) as u32 + 1)
                .collect(),
            loss_mask: (0..n).map(|i| i >= n / 2).collect(),
        })
        .collect()
}

/// The trainer's autograd loss for the batch.
fn autograd_loss(model: &CausalLm, samples: &[&Sample]) -> Tensor {
    let batch = make_batch(samples, 0, model.device()).expect("batch");
    let (b, s) = batch.input_ids.dims2().expect("dims");
    let h = model
        .hidden_states(&batch.input_ids, 0, None, None)
        .expect("hidden");
    let h = h
        .reshape((b * s, h.dim(2).expect("h")))
        .expect("reshape")
        .index_select(&batch.positions, 0)
        .expect("select");
    let logits = model.logits(&h).expect("logits");
    cross_entropy(&logits, &batch.targets).expect("loss")
}

/// Gives every LoRA B a value (B starts at zero, which would leave A's gradient zero).
fn perturb_lora_b(model: &CausalLm) {
    for (name, var) in model.trainable() {
        if name.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.2, var.shape(), var.device()).expect("randn");
            var.set(&t).expect("set");
        }
    }
}

#[test]
fn loss_and_every_gradient_match_autograd() {
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    // Also: Llama with MLP biases and llama3 RoPE scaling, and Qwen2 with a sliding window
    // on its second layer only (max_window_layers 1), shorter than the batch.
    let mut llama_bias = tiny_config(Architecture::Llama);
    llama_bias.mlp_bias = Some(true);
    llama_bias.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}));
    let mut qwen_window = tiny_config(Architecture::Qwen2);
    qwen_window.sliding_window = Some(4);
    qwen_window
        .extra
        .insert("use_sliding_window".into(), serde_json::json!(true));
    qwen_window
        .extra
        .insert("max_window_layers".into(), serde_json::json!(1));
    for (arch, cfg) in [
        (Architecture::Llama, tiny_config(Architecture::Llama)),
        (Architecture::Qwen2, tiny_config(Architecture::Qwen2)),
        (Architecture::Mistral, tiny_config(Architecture::Mistral)),
        (Architecture::Llama, llama_bias),
        (Architecture::Qwen2, qwen_window),
        (Architecture::Qwen3, tiny_config(Architecture::Qwen3)),
        (Architecture::Gemma, tiny_config(Architecture::Gemma)),
        (Architecture::Gemma3, tiny_config(Architecture::Gemma3)),
    ] {
        for trainable in [Trainable::Full, Trainable::Lora(lora_all(4, 0.1))] {
            // Random norm weights where the family has head norms or (1 + w) norms, so a norm
            // applied wrongly in either pass shows.
            let model = if matches!(
                arch,
                Architecture::Gemma | Architecture::Gemma3 | Architecture::Qwen3
            ) {
                build_random_norms(&cfg, trainable.clone(), 5)
            } else {
                build(&cfg, trainable.clone(), 5)
            };
            perturb_lora_b(&model);
            assert!(model.hand_pass_supported(), "{arch:?}");

            model.set_dropout_seed(Some(17));
            let loss = autograd_loss(&model, &refs);
            let grads = loss.backward().expect("backward");
            model.set_dropout_seed(Some(17));
            let batch = HostBatch::new(&refs, 0);
            let (hand_loss, hand_grads) = model.hand_loss_and_grads(&batch.hand()).expect("hand");

            let loss = loss.to_scalar::<f32>().expect("loss");
            assert!(
                (loss - hand_loss).abs() < 1e-5 * loss.abs().max(1.0),
                "{arch:?} {loss} vs {hand_loss}"
            );
            assert_eq!(hand_grads.len(), model.trainable().len());
            for ((name, var), hand) in model.trainable().iter().zip(&hand_grads) {
                let auto = grads.get(var).expect("autograd gradient");
                assert_eq!(auto.dims(), hand.dims(), "{name}");
                let scale = auto
                    .abs()
                    .and_then(|a| a.flatten_all())
                    .and_then(|a| a.max(0))
                    .and_then(|a| a.to_scalar::<f32>())
                    .expect("max");
                assert!(scale > 0.0, "{arch:?} {name}: zero gradient");
                let diff = max_abs_diff(auto, hand);
                assert!(
                    diff <= 1e-4 * scale.max(1e-3),
                    "{arch:?} {trainable:?} {name}: max diff {diff} (gradient scale {scale})"
                );
            }
        }
    }
}

#[test]
fn lora_gradients_cover_only_the_adapters() {
    let model = build(
        &tiny_config(Architecture::Llama),
        Trainable::Lora(lora_all(2, 0.0)),
        1,
    );
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let (_, grads) = model
        .hand_loss_and_grads(&HostBatch::new(&refs, 0).hand())
        .expect("hand");
    assert_eq!(grads.len(), model.trainable().len());
    assert!(model.trainable().iter().all(|(n, _)| n.contains("lora_")));
}

#[test]
fn half_precision_models_are_left_to_autograd() {
    let cfg = tiny_config(Architecture::Llama);
    let weights = llamaduo_model::models::init::random_weights(&cfg, 1, &candle_core::Device::Cpu)
        .expect("weights");
    let opts = llamaduo_model::models::LoadOptions {
        dtype: DType::BF16,
        trainable: Trainable::Lora(lora_all(2, 0.0)),
        seed: 1,
    };
    let bf16 =
        CausalLm::from_tensors(&cfg, weights, &candle_core::Device::Cpu, &opts).expect("model");
    assert!(!bf16.hand_pass_supported());
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let err = bf16
        .hand_loss_and_grads(&HostBatch::new(&refs, 0).hand())
        .expect_err("bf16");
    assert!(err.to_string().contains("not supported"), "{err}");
}

#[test]
fn bad_batches_are_refused() {
    let model = build(&tiny_config(Architecture::Llama), Trainable::Full, 1);
    let samples = samples();
    let refs: Vec<&Sample> = samples.iter().collect();
    let mut batch = HostBatch::new(&refs, 0);
    batch.input_ids[3] = 10_000;
    let err = model.hand_loss_and_grads(&batch.hand()).expect_err("id");
    assert!(err.to_string().contains("outside a vocabulary"), "{err}");
    let mut batch = HostBatch::new(&refs, 0);
    batch.positions[0] = 999;
    let err = model
        .hand_loss_and_grads(&batch.hand())
        .expect_err("position");
    assert!(err.to_string().contains("position 999"), "{err}");
}
