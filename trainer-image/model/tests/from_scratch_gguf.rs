//! fromScratch model directories (every family loads through the normal HF path, builds are
//! reproducible) and GGUF conversion checked end to end on small files written the way
//! llama.cpp's converter writes them (permuted Q/K for Llama, "1 +" norms for Gemma).

mod support;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use llamaduo::api::Architecture;
use llamaduo::api::dataset::DatasetRow;
use llamaduo::api::migration::FromScratchSpec;
use llamaduo_model::chat_template::ChatTemplate;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::from_scratch::{build_from_scratch, tokenizer_corpus};
use llamaduo_model::gguf::{GgufFile, convert_to_hf_dir};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};
use support::gguf_write::{write_gguf, write_gguf_with};

fn rows() -> Vec<DatasetRow> {
    (0..120)
        .map(|i| {
            DatasetRow::single_turn(
                format!("Classify ticket {i}: printer {} is offline.", i % 6),
                if i % 2 == 0 { "hardware" } else { "network" },
            )
        })
        .collect()
}

fn spec(arch: Architecture) -> FromScratchSpec {
    FromScratchSpec {
        architecture: arch,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: Some(2),
        intermediate_size: None,
        vocab_size: 320,
    }
}

fn load(dir: &Path) -> (CausalLm, ModelConfig) {
    let hub = HubDir::open(dir).expect("opens");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let vb = hub.var_builder(DType::F32, &Device::Cpu).expect("maps");
    let model = CausalLm::load(&cfg, vb, &LoadOptions::inference(DType::F32)).expect("loads");
    (model, cfg)
}

fn logits(model: &CausalLm, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    model
        .forward(&t, 0, None)
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_vec1::<f32>())
        .expect("forward")
}

#[test]
fn every_family_builds_and_loads_through_the_hf_path() {
    let texts = tokenizer_corpus(&rows());
    for arch in Architecture::ALL {
        let tmp = tempfile::tempdir().expect("tmp");
        let built = build_from_scratch(&spec(arch), &texts, 3, 256, tmp.path()).expect("builds");
        let (model, cfg) = load(tmp.path());
        assert_eq!(cfg.architecture().expect("arch"), arch);
        assert_eq!(cfg.vocab_size, built.config.vocab_size);
        let hub = HubDir::open(tmp.path()).expect("opens");
        let tok = hub.tokenizer().expect("tokenizer");
        assert_eq!(tok.vocab_size(), cfg.vocab_size);
        let tmpl = hub.chat_template(&tok, None).expect("template");
        let t = tmpl
            .tokenize_conversation(&tok, &rows()[0].messages)
            .expect("tokenizes");
        let answer: Vec<u32> = t
            .input_ids
            .iter()
            .zip(&t.loss_mask)
            .filter(|(_, m)| **m)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            tok.decode(&answer, false).expect("decodes"),
            "hardware<|im_end|>"
        );
        let l = logits(&model, &t.input_ids);
        assert_eq!(l.len(), t.input_ids.len() * cfg.vocab_size, "{arch:?}");
        assert!(l.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn builds_are_reproducible_in_the_seed() {
    let texts = tokenizer_corpus(&rows());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for (d, seed) in dirs.iter().zip([7, 7, 8]) {
        build_from_scratch(&spec(Architecture::Llama), &texts, seed, 256, d.path())
            .expect("builds");
    }
    let read = |d: &tempfile::TempDir, f: &str| std::fs::read(d.path().join(f)).expect("reads");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "tokenizer_config.json",
    ] {
        assert_eq!(
            read(&dirs[0], f),
            read(&dirs[1], f),
            "{f} differs for one seed"
        );
    }
    assert_ne!(
        read(&dirs[0], "model.safetensors"),
        read(&dirs[2], "model.safetensors")
    );
    let empty: Vec<String> = vec![];
    let err = build_from_scratch(&spec(Architecture::Llama), &empty, 1, 256, dirs[2].path())
        .expect_err("no data");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn gguf_conversion_restores_the_hf_checkpoint() {
    let texts = tokenizer_corpus(&rows());
    for (arch, gguf_arch) in [
        (Architecture::Llama, "llama"),
        (Architecture::Qwen2, "qwen2"),
        (Architecture::Qwen3, "qwen3"),
        (Architecture::Gemma, "gemma"),
    ] {
        let src = tempfile::tempdir().expect("tmp");
        build_from_scratch(&spec(arch), &texts, 21, 256, src.path()).expect("builds");
        // Random norm weights, so the Gemma offset and the norm mapping are really checked.
        let mut weights: HashMap<String, Tensor> =
            candle_core::safetensors::load(src.path().join("model.safetensors"), &Device::Cpu)
                .expect("weights");
        for (name, t) in weights.iter_mut() {
            if name.ends_with("norm.weight") || name.ends_with(".bias") {
                *t = t.rand_like(0.5, 1.5).expect("rand");
            }
        }
        candle_core::safetensors::save(&weights, src.path().join("model.safetensors"))
            .expect("save");
        let gguf = src.path().join("model.gguf");
        write_gguf(src.path(), gguf_arch, &gguf);
        let out = tempfile::tempdir().expect("tmp");
        let conv = convert_to_hf_dir(&gguf, out.path()).expect("converts");
        assert_eq!(
            conv.parameters,
            weights.values().map(Tensor::elem_count).sum::<usize>()
        );
        let back =
            candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu)
                .expect("converted weights");
        assert_eq!(back.len(), weights.len(), "{arch:?}");
        for (name, t) in &weights {
            let b = back
                .get(name)
                .unwrap_or_else(|| panic!("{arch:?}: {name} missing"));
            let diff = (t - b)
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
                .expect("diff");
            assert!(diff < 1e-6, "{arch:?} {name}: max diff {diff}");
        }
        // Same logits through the normal loader, same tokens from the rebuilt tokenizer.
        let (m_src, _) = load(src.path());
        let (m_out, cfg_out) = load(out.path());
        assert_eq!(cfg_out.architecture().expect("arch"), arch);
        let tok_src = HubDir::open(src.path())
            .and_then(|h| h.tokenizer())
            .expect("tok");
        let tok_out = HubDir::open(out.path())
            .and_then(|h| h.tokenizer())
            .expect("tok");
        let text = "Classify ticket 99: printer 3 is offline. ✓";
        let ids = tok_src.encode(text).expect("encodes");
        assert_eq!(ids, tok_out.encode(text).expect("encodes"), "{arch:?}");
        assert_eq!(tok_out.eos_ids()[0], 2);
        assert_eq!(logits(&m_src, &ids), logits(&m_out, &ids), "{arch:?}");
        let tmpl = ChatTemplate::for_tokenizer(&tok_out, None).expect("template");
        assert!(tmpl.source().contains("<|im_start|>"));
        let file = GgufFile::open(&gguf).expect("opens");
        assert_eq!(
            file.hf_config().expect("config")["tie_word_embeddings"],
            arch == Architecture::Gemma
        );
    }
}

#[test]
fn gguf_rope_scaling_is_applied_or_refused_never_dropped() {
    let texts = tokenizer_corpus(&rows());
    let src = tempfile::tempdir().expect("tmp");
    build_from_scratch(&spec(Architecture::Llama), &texts, 21, 256, src.path()).expect("builds");
    let scaled = |kind: &str| {
        let gguf = src.path().join(format!("{kind}.gguf"));
        write_gguf_with(
            src.path(),
            "llama",
            &gguf,
            vec![
                ("llama.rope.scaling.type".into(), Value::String(kind.into())),
                ("llama.rope.scaling.factor".into(), Value::F32(4.0)),
            ],
        );
        let cfg = GgufFile::open(&gguf)
            .and_then(|f| f.hf_config())
            .expect("config");
        ModelConfig::from_json(&cfg.to_string()).and_then(|c| c.rope().map(|_| c))
    };
    let linear = scaled("linear").expect("linear is supported");
    let plain = ModelConfig::from_file(&src.path().join("config.json")).expect("config");
    assert_ne!(
        linear.rope().expect("linear is supported"),
        plain.rope().expect("plain"),
        "the scaling reached the model"
    );
    let err = scaled("yarn").expect_err("yarn is refused");
    assert!(err.to_string().contains("rope_scaling"), "{err}");
}

#[test]
fn bad_gguf_files_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00 not really").expect("write");
    let err = GgufFile::open(&path).expect_err("corrupt");
    assert!(err.to_string().contains("broken.gguf"), "{err}");
    let err = GgufFile::open(&tmp.path().join("absent.gguf")).expect_err("missing");
    assert!(err.to_string().contains("absent.gguf"), "{err}");
}
