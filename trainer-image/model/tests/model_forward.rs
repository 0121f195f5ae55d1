//! Forward-pass properties of the trainable decoder for every family: gradients reach every
//! trainable tensor (full and LoRA), the KV cache and left padding give the same logits as a
//! plain forward, and LoRA starts from the base exactly.

mod common;

use candle_core::{DType, IndexOp, Tensor};
use common::*;
use llamaduo_model::models::Trainable;

fn loss_of(model: &llamaduo_model::models::CausalLm) -> Tensor {
    let x = ids(&[
        vec![1, 5, 9, 2, 7, 7, 3, 4, 11, 30],
        vec![4, 4, 8, 1, 0, 2, 6, 9, 10, 12],
    ]);
    let logits = model.forward(&x, 0, None).expect("forward");
    let (b, s, v) = logits.dims3().expect("dims");
    let targets = x
        .narrow(1, 1, s - 1)
        .expect("targets")
        .flatten_all()
        .expect("flat");
    let logits = logits
        .narrow(1, 0, s - 1)
        .expect("narrow")
        .reshape((b * (s - 1), v))
        .expect("reshape");
    candle_nn::loss::cross_entropy(&logits, &targets).expect("loss")
}

#[test]
fn every_trainable_tensor_gets_a_nonzero_gradient() {
    for arch in FAMILIES {
        let cfg = tiny_config(arch);
        for trainable in [Trainable::Full, Trainable::Lora(lora_all(4, 0.1))] {
            let model = build(&cfg, trainable.clone(), 3);
            // LoRA B starts at zero, so A's gradient is zero at init by construction; give B
            // a value first, as after one optimizer step.
            for (name, var) in model.trainable() {
                if name.contains("lora_B") {
                    let t = Tensor::randn(0f32, 0.1, var.shape(), var.device()).expect("randn");
                    var.set(&t).expect("set");
                }
            }
            model.set_dropout_seed(Some(9));
            let grads = loss_of(&model).backward().expect("backward");
            let expected = match &trainable {
                Trainable::Full => {
                    // 9 weights per layer (+3 q/k/v biases for Qwen2, +2 head norms for Qwen3, +2 head norms and 2
                    // layer norms for Gemma 3), embed, norm, lm_head.
                    let per_layer = match arch {
                        llamaduo::api::Architecture::Qwen2 => 12,
                        llamaduo::api::Architecture::Qwen3 => 11,
                        llamaduo::api::Architecture::Gemma3 => 13,
                        _ => 9,
                    };
                    2 * per_layer + 2 + usize::from(!cfg.tied_embeddings())
                }
                _ => 2 * 7 * 2,
            };
            assert_eq!(model.trainable().len(), expected, "{arch:?} {trainable:?}");
            for (name, var) in model.trainable() {
                let g = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
                let n = g
                    .abs()
                    .expect("abs")
                    .sum_all()
                    .expect("sum")
                    .to_scalar::<f32>()
                    .expect("f32");
                assert!(
                    n > 0.0 && n.is_finite(),
                    "{arch:?}: zero gradient for {name}"
                );
            }
        }
    }
}

#[test]
fn kv_cache_forward_equals_full_forward() {
    for arch in FAMILIES {
        let model = build(&tiny_config(arch), Trainable::None, 5);
        let seq: Vec<u32> = vec![1, 7, 3, 9, 12, 4, 4, 20, 31, 2];
        let full = model
            .forward(&ids(std::slice::from_ref(&seq)), 0, None)
            .expect("full");
        let mut cache = llamaduo_model::models::KvCache::new(2);
        let a = model
            .forward(&ids(&[seq[..4].to_vec()]), 0, Some(&mut cache))
            .expect("prefill");
        let mut parts = vec![a];
        for &tok in &seq[4..] {
            parts.push(
                model
                    .forward(&ids(&[vec![tok]]), cache.len(), Some(&mut cache))
                    .expect("step"),
            );
        }
        let inc = Tensor::cat(&parts, 1).expect("cat");
        let d = max_abs_diff(&full, &inc);
        assert!(d < 1e-4, "{arch:?}: cache differs by {d}");
        assert_eq!(cache.len(), seq.len());
        // A wrong start_pos is an error, not silent garbage.
        assert!(
            model
                .forward(&ids(&[vec![1]]), 3, Some(&mut cache))
                .is_err()
        );
    }
}

#[test]
fn left_padded_batch_matches_single_rows() {
    for arch in FAMILIES {
        let model = build(&tiny_config(arch), Trainable::None, 6);
        let a: Vec<u32> = vec![1, 7, 3, 9, 12, 4, 8];
        let b: Vec<u32> = vec![1, 5, 6];
        let pad = a.len() - b.len();
        let mut b_padded = vec![0u32; pad];
        b_padded.extend(&b);
        let mut cache = llamaduo_model::models::KvCache::new(2);
        let batch = model
            .forward_padded(&ids(&[a.clone(), b_padded]), 0, &[0, pad], Some(&mut cache))
            .expect("batch");
        let next = model
            .forward_padded(
                &ids(&[vec![3], vec![3]]),
                cache.len(),
                &[0, pad],
                Some(&mut cache),
            )
            .expect("next");
        let mut b_next = b.clone();
        b_next.push(3);
        let single_b = model.forward(&ids(&[b_next]), 0, None).expect("single");
        let got = Tensor::cat(
            &[
                batch.i((1, pad..)).expect("slice"),
                next.i((1, ..)).expect("slice"),
            ],
            0,
        )
        .expect("cat");
        let d = max_abs_diff(&single_b.squeeze(0).expect("squeeze"), &got);
        assert!(d < 1e-4, "{arch:?}: padded row differs by {d}");
        let single_a = model.forward(&ids(&[a]), 0, None).expect("single a");
        let d = max_abs_diff(
            &single_a.squeeze(0).expect("sq"),
            &batch.i(0).expect("row 0"),
        );
        assert!(d < 1e-4, "{arch:?}: unpadded row differs by {d}");
    }
}

#[test]
fn fresh_lora_equals_the_base_model() {
    let cfg = tiny_config(llamaduo::api::Architecture::Llama);
    let base = build(&cfg, Trainable::None, 8);
    let lora = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 8);
    let x = ids(&[vec![1, 2, 3, 4, 5]]);
    let d = max_abs_diff(
        &base.forward(&x, 0, None).expect("base"),
        &lora.forward(&x, 0, None).expect("lora"),
    );
    assert_eq!(d, 0.0);
    assert_eq!(base.dtype(), DType::F32);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let cfg = tiny_config(llamaduo::api::Architecture::Llama);
    let mut lora = lora_all(4, 0.0);
    lora.target_modules = vec!["q_proj".into(), "attn_q".into()];
    let weights = llamaduo_model::models::init::random_weights(&cfg, 1, &candle_core::Device::Cpu)
        .expect("weights");
    let opts = llamaduo_model::models::LoadOptions {
        dtype: DType::F32,
        trainable: Trainable::Lora(lora),
        seed: 1,
    };
    let e = llamaduo_model::models::CausalLm::from_tensors(
        &cfg,
        weights.clone(),
        &candle_core::Device::Cpu,
        &opts,
    )
    .expect_err("unknown module");
    assert!(
        e.to_string().contains("attn_q") && e.to_string().contains("gate_proj"),
        "{e}"
    );
    let mut missing = weights;
    missing.remove("model.layers.1.mlp.up_proj.weight");
    let e = llamaduo_model::models::CausalLm::from_tensors(
        &cfg,
        missing,
        &candle_core::Device::Cpu,
        &llamaduo_model::models::LoadOptions::inference(DType::F32),
    )
    .expect_err("missing tensor");
    assert!(
        e.to_string().contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

fn logits_of(cfg: &llamaduo_model::config::ModelConfig) -> Tensor {
    let x = ids(&[vec![1, 7, 3, 9, 12, 4, 4, 20, 31, 2, 5, 17]]);
    build(cfg, Trainable::None, 5)
        .forward(&x, 0, None)
        .expect("forward")
}

/// A tiny Qwen2 with `use_sliding_window: true` and a window of 3 keys.
fn qwen2_windowed(
    max_window_layers: Option<usize>,
    layer_types: Option<[&str; 2]>,
) -> llamaduo_model::config::ModelConfig {
    let mut c = tiny_config(llamaduo::api::Architecture::Qwen2);
    c.sliding_window = Some(3);
    c.extra
        .insert("use_sliding_window".into(), serde_json::json!(true));
    if let Some(n) = max_window_layers {
        c.extra
            .insert("max_window_layers".into(), serde_json::json!(n));
    }
    if let Some(t) = layer_types {
        c.extra.insert("layer_types".into(), serde_json::json!(t));
    }
    c.validate().expect("valid");
    c
}

#[test]
fn qwen2_sliding_window_applies_only_from_max_window_layers() {
    let full = logits_of(&tiny_config(llamaduo::api::Architecture::Qwen2));
    let scale = full
        .abs()
        .and_then(|a| a.max_all())
        .and_then(|a| a.to_scalar::<f32>())
        .expect("scale");
    let differs = |a: &Tensor, b: &Tensor| max_abs_diff(a, b) > 1e-4 * scale;
    // transformers: only layers >= max_window_layers slide; with max_window_layers >= the
    // layer count (and with the default 28) no layer does.
    assert_eq!(
        max_abs_diff(&full, &logits_of(&qwen2_windowed(Some(2), None))),
        0.0
    );
    assert_eq!(
        max_abs_diff(&full, &logits_of(&qwen2_windowed(None, None))),
        0.0
    );
    let from1 = logits_of(&qwen2_windowed(Some(1), None));
    let all = logits_of(&qwen2_windowed(Some(0), None));
    assert!(
        differs(&full, &from1),
        "the window of layer 1 changes nothing"
    );
    assert!(differs(&from1, &all), "layer 0 must keep full attention");
    // layer_types (transformers 5) says the same per layer.
    let typed = logits_of(&qwen2_windowed(
        Some(0),
        Some(["full_attention", "sliding_attention"]),
    ));
    assert_eq!(max_abs_diff(&from1, &typed), 0.0);
    // Without use_sliding_window nothing slides, whatever max_window_layers says.
    let mut off = qwen2_windowed(Some(0), None);
    off.extra
        .insert("use_sliding_window".into(), serde_json::json!(false));
    assert_eq!(max_abs_diff(&full, &logits_of(&off)), 0.0);
    // The KV cache path windows the same layers.
    let model = build(&qwen2_windowed(Some(1), None), Trainable::None, 5);
    let seq: Vec<u32> = vec![1, 7, 3, 9, 12, 4, 4, 20, 31, 2, 5, 17];
    let mut cache = llamaduo_model::models::KvCache::new(2);
    let mut parts = vec![
        model
            .forward(&ids(&[seq[..2].to_vec()]), 0, Some(&mut cache))
            .expect("prefill"),
    ];
    for &tok in &seq[2..] {
        parts.push(
            model
                .forward(&ids(&[vec![tok]]), cache.len(), Some(&mut cache))
                .expect("step"),
        );
    }
    let inc = Tensor::cat(&parts, 1).expect("cat");
    assert!(max_abs_diff(&from1, &inc) < 1e-5 * scale.max(1.0));
}

#[test]
fn rope_parameters_and_llama3_scaling_reach_the_model() {
    use llamaduo::api::Architecture;
    let base = tiny_config(Architecture::Llama);
    let mut top = base.clone();
    top.rope_theta = Some(500_000.0);
    let mut v5 = base.clone();
    v5.rope_theta = None;
    v5.rope_parameters = Some(serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}));
    let plain = logits_of(&base);
    let scale = plain
        .abs()
        .and_then(|a| a.max_all())
        .and_then(|a| a.to_scalar::<f32>())
        .expect("scale");
    let top = logits_of(&top);
    assert_eq!(max_abs_diff(&top, &logits_of(&v5)), 0.0);
    assert!(
        max_abs_diff(&plain, &top) > 1e-4 * scale,
        "theta has no effect"
    );
    // llama3 scaling with a short original context so the tiny model's frequencies move.
    let mut scaled = base.clone();
    scaled.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}));
    assert!(
        max_abs_diff(&plain, &logits_of(&scaled)) > 1e-4 * scale,
        "scaling ignored"
    );
    // A scaling that is not implemented is refused by the model too.
    let mut yarn = base.clone();
    yarn.rope_scaling = Some(serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    let weights = llamaduo_model::models::init::random_weights(&base, 5, &candle_core::Device::Cpu)
        .expect("weights");
    let err = llamaduo_model::models::CausalLm::from_tensors(
        &yarn,
        weights,
        &candle_core::Device::Cpu,
        &llamaduo_model::models::LoadOptions::inference(DType::F32),
    )
    .expect_err("yarn");
    assert!(err.to_string().contains("rope_scaling.rope_type"), "{err}");
}

#[test]
fn llama_mlp_bias_is_loaded_and_used() {
    use candle_core::Device;
    use llamaduo_model::models::{CausalLm, LoadOptions, init::random_weights};
    let mut cfg = tiny_config(llamaduo::api::Architecture::Llama);
    cfg.mlp_bias = Some(true);
    let mut weights = random_weights(&cfg, 5, &Device::Cpu).expect("weights");
    for p in ["gate_proj", "up_proj", "down_proj"] {
        assert!(
            weights.contains_key(&format!("model.layers.0.mlp.{p}.bias")),
            "{p}"
        );
    }
    let opts = LoadOptions::inference(DType::F32);
    let x = ids(&[vec![1, 7, 3, 9]]);
    let run = |w: &std::collections::HashMap<String, Tensor>| {
        CausalLm::from_tensors(&cfg, w.clone(), &Device::Cpu, &opts)
            .and_then(|m| m.forward(&x, 0, None))
    };
    let zero = run(&weights).expect("zero biases");
    weights.insert(
        "model.layers.0.mlp.down_proj.bias".into(),
        Tensor::full(0.5f32, 32, &Device::Cpu).expect("bias"),
    );
    let biased = run(&weights).expect("biased");
    assert!(max_abs_diff(&zero, &biased) > 1e-3, "the bias was dropped");
    weights.remove("model.layers.1.mlp.up_proj.bias");
    let err = run(&weights).expect_err("missing bias");
    assert!(
        err.to_string().contains("model.layers.1.mlp.up_proj.bias"),
        "{err}"
    );
}
