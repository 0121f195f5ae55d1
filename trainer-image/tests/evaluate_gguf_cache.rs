//! The GGUF conversion cache behind evaluation and serving (`evaluate::load::local_model_dir`,
//! which `serve` calls too) is keyed by the file's content, not its name: two different
//! GGUFs both called `model.gguf` convert into two directories whose models differ, and the
//! same bytes again reuse their directory.
//!
//! One test function: it points `LLAMADUO_CACHE_DIR` at a temporary directory before
//! anything else runs in this process.

#[allow(dead_code)]
#[path = "../src/evaluate/mod.rs"]
mod evaluate;
#[allow(dead_code)]
#[path = "../src/failure_class.rs"]
mod failure_class;

#[path = "../model/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use evaluate::load::{load_full, local_model_dir};
use llamaduo::api::DatasetRow;
use llamaduo::api::migration::FromScratchSpec;
use llamaduo_model::from_scratch::{build_from_scratch, tokenizer_corpus};

fn rows() -> Vec<DatasetRow> {
    (0..40)
        .map(|i| DatasetRow::single_turn(format!("What is {i} + {i}?"), format!("{}", 2 * i)))
        .collect()
}

/// A from-scratch Llama of `seed` written as `{parent}/model.gguf`.
fn gguf(parent: &Path, seed: u64) -> PathBuf {
    let spec: FromScratchSpec = serde_json::from_value(serde_json::json!(
        {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}
    ))
    .expect("spec");
    let hf = parent.join("hf");
    build_from_scratch(&spec, &tokenizer_corpus(&rows()), seed, 128, &hf).expect("builds");
    let out = parent.join("model.gguf");
    support::gguf_write::write_gguf(&hf, "llama", &out);
    out
}

fn logits(dir: &Path) -> Vec<f32> {
    let (model, tokenizer, _) = load_full(dir, &Device::Cpu, DType::F32).expect("loads");
    let ids = tokenizer.encode("What is 3 + 3?").expect("encodes");
    Tensor::new(ids.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .and_then(|t| model.forward(&t, 0, None))
        .and_then(|l| l.flatten_all())
        .and_then(|l| l.to_vec1::<f32>())
        .expect("forward")
}

#[test]
fn gguf_cache_is_keyed_by_content_not_file_name() {
    let cache = tempfile::tempdir().expect("cache");
    // SAFETY: the only test in this binary, and it sets the variable before any other code
    // (or thread of its own) reads the environment.
    unsafe { std::env::set_var("LLAMADUO_CACHE_DIR", cache.path()) };
    let files = tempfile::tempdir().expect("files");
    let a = gguf(&files.path().join("a"), 1);
    let b = gguf(&files.path().join("b"), 2);
    assert_eq!(a.file_name(), b.file_name());
    assert_ne!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));

    let dir_a = local_model_dir(a.clone()).expect("converts a");
    let dir_b = local_model_dir(b.clone()).expect("converts b");
    for d in [&dir_a, &dir_b] {
        assert!(
            d.starts_with(cache.path()),
            "{} is not in the cache",
            d.display()
        );
    }
    assert_ne!(
        dir_a, dir_b,
        "two GGUFs named model.gguf share a cache entry"
    );
    assert_ne!(logits(&dir_a), logits(&dir_b));

    // The same bytes under yet another directory: a's conversion, reused.
    let c = files.path().join("c/model.gguf");
    std::fs::create_dir_all(c.parent().expect("parent")).expect("dir");
    std::fs::copy(&a, &c).expect("copy");
    assert_eq!(local_model_dir(c).expect("reuses"), dir_a);
    // A directory passes through unchanged.
    assert_eq!(
        local_model_dir(files.path().join("a/hf")).expect("dir"),
        files.path().join("a/hf")
    );
}
