//! PEFT output: adapter files carry PEFT's names and shapes and load back with the same
//! logits; the merged export and the full-weight output reload as plain models with the same
//! logits.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use llamaduo::api::Architecture;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::models::{CausalLm, LoadOptions, Trainable};
use llamaduo_model::peft;

fn perturb_adapters(model: &CausalLm) {
    for (_, var) in model.trainable() {
        let t = Tensor::randn(0f32, 0.2, var.shape(), var.device()).expect("randn");
        var.set(&t).expect("set");
    }
}

fn reload(dir: &std::path::Path, trainable: Trainable) -> CausalLm {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors = candle_core::safetensors::load(dir.join(peft::MODEL_WEIGHTS), &Device::Cpu)
        .expect("weights");
    let opts = LoadOptions {
        dtype: DType::F32,
        trainable,
        seed: 0,
    };
    CausalLm::from_tensors(&cfg, tensors, &Device::Cpu, &opts).expect("model")
}

#[test]
fn adapter_has_peft_names_shapes_and_round_trips() {
    let cfg = tiny_config(Architecture::Llama);
    let mut lora = lora_all(4, 0.05);
    lora.target_modules = vec!["q_proj".into(), "v_proj".into(), "down_proj".into()];
    let model = build(&cfg, Trainable::Lora(lora.clone()), 3);
    perturb_adapters(&model);
    let tmp = tempfile::tempdir().expect("tmp");
    peft::save_adapter(&model, &lora, "org/base", tmp.path()).expect("save");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join(peft::ADAPTER_CONFIG)).expect("read"),
    )
    .expect("json");
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "CAUSAL_LM");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 8.0);
    assert_eq!(json["bias"], "none");
    assert_eq!(json["fan_in_fan_out"], false);
    assert_eq!(json["base_model_name_or_path"], "org/base");
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["down_proj", "q_proj", "v_proj"])
    );

    let st = candle_core::safetensors::load(tmp.path().join(peft::ADAPTER_WEIGHTS), &Device::Cpu)
        .expect("adapter file");
    assert_eq!(st.len(), 2 * 3 * 2);
    let q_a = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let q_b = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(
        (q_a.dims(), q_b.dims()),
        (&[4usize, 32][..], &[32usize, 4][..])
    );
    let v_b = &st["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"];
    assert_eq!(v_b.dims(), &[16, 4], "v_proj out = 2 kv heads x 8");
    let d_a = &st["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(d_a.dims(), &[4, 64]);

    let read = peft::read_adapter_config(tmp.path()).expect("config back");
    assert_eq!(read.rank, 4);
    // Same base (seed 3); the adapter values come from the file.
    let back = build(&cfg, Trainable::Lora(read), 3);
    peft::load_adapter_weights(&back, tmp.path()).expect("load");
    let x = ids(&[vec![1, 9, 3, 4, 20, 6]]);
    let d = max_abs_diff(
        &model.forward(&x, 0, None).expect("a"),
        &back.forward(&x, 0, None).expect("b"),
    );
    assert_eq!(d, 0.0);

    // An adapter with fewer modules than the model expects is refused, naming the tensor.
    let mut more = lora.clone();
    more.target_modules.push("k_proj".into());
    let wrong = build(&cfg, Trainable::Lora(more), 1);
    let e = peft::load_adapter_weights(&wrong, tmp.path()).expect_err("missing k_proj");
    assert!(e.to_string().contains("k_proj.lora_A"), "{e}");
}

#[test]
fn merged_and_full_exports_reload_with_the_same_logits() {
    for arch in FAMILIES {
        let cfg = tiny_config(arch);
        let lora = lora_all(2, 0.0);
        let model = build(&cfg, Trainable::Lora(lora), 5);
        perturb_adapters(&model);
        let tmp = tempfile::tempdir().expect("tmp");
        peft::save_full(&model, tmp.path(), true).expect("merged");
        let merged = reload(tmp.path(), Trainable::None);
        let x = ids(&[vec![1, 9, 3, 4, 20, 6, 7, 8]]);
        let want = model.forward(&x, 0, None).expect("lora");
        let d = max_abs_diff(&want, &merged.forward(&x, 0, None).expect("merged"));
        assert!(d < 1e-4, "{arch:?}: merged differs by {d}");

        let full = build(&cfg, Trainable::Full, 6);
        let tmp = tempfile::tempdir().expect("tmp");
        peft::save_full(&full, tmp.path(), false).expect("full");
        let again = reload(tmp.path(), Trainable::Full);
        let d = max_abs_diff(
            &full.forward(&x, 0, None).expect("full"),
            &again.forward(&x, 0, None).expect("again"),
        );
        assert_eq!(d, 0.0, "{arch:?}");
    }
}

#[test]
fn full_export_keeps_rope_parameters_and_states_the_written_dtype() {
    // A transformers-5 config: the base and scaling in rope_parameters, `dtype` for the
    // stored weights (bf16 in the source, f32 in what save_full writes).
    let mut cfg = tiny_config(Architecture::Llama);
    cfg.rope_theta = None;
    cfg.torch_dtype = None;
    cfg.dtype = Some("bfloat16".into());
    cfg.rope_parameters = Some(
        serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0,
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    );
    let model = build(&cfg, Trainable::Full, 6);
    let tmp = tempfile::tempdir().expect("tmp");
    peft::save_full(&model, tmp.path(), false).expect("full");
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(written["dtype"], "float32", "{written}");
    assert!(written.get("torch_dtype").is_none(), "{written}");
    assert!(written.get("rope_theta").is_none(), "{written}");
    assert_eq!(
        written["rope_parameters"],
        cfg.rope_parameters.clone().expect("set")
    );
    let header =
        llamaduo_model::hub_dir::read_safetensors_header(&tmp.path().join(peft::MODEL_WEIGHTS))
            .expect("header");
    assert!(header.values().all(|(dtype, _)| dtype == "F32"));
    let again = reload(tmp.path(), Trainable::None);
    assert_eq!(
        again.config().rope().expect("rope"),
        cfg.rope().expect("rope")
    );
    let x = ids(&[vec![1, 9, 3, 4, 20, 6, 7, 8]]);
    let d = max_abs_diff(
        &model.forward(&x, 0, None).expect("model"),
        &again.forward(&x, 0, None).expect("again"),
    );
    assert_eq!(d, 0.0);
}
