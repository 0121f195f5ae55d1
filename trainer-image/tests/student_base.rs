//! The student's base model as the train stage resolves it (`src/student.rs`): a GGUF base is
//! converted once into a cache keyed by the file's checksum (not its name), a broken GGUF
//! leaves no cache entry, a missing file names `student.baseModel`, and a from-scratch base
//! is built once and reused by later rounds whatever their data.
//!
//! One test function: it points `LLAMADUO_CACHE_DIR` at a temporary directory before
//! anything else runs in this process.

#[allow(dead_code)]
#[path = "../src/student.rs"]
mod student;

#[path = "../model/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::SystemTime;

use llamaduo::api::{ArtifactLayout, DatasetRow, StudentSpec};
use llamaduo_store::Store;
use serde_json::json;

fn spec(value: serde_json::Value) -> StudentSpec {
    serde_json::from_value(value).expect("student spec")
}

fn rows(word: &str) -> Vec<DatasetRow> {
    (0..40)
        .map(|i| DatasetRow::single_turn(format!("{word} {i}?"), format!("{word} answer {i}")))
        .collect()
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bases_are_resolved_once_and_cached_by_content() {
    let cache = tempfile::tempdir().expect("cache");
    // SAFETY: the only test in this binary, and it sets the variable before any other code
    // (or thread of its own) reads the environment.
    unsafe { std::env::set_var("LLAMADUO_CACHE_DIR", cache.path()) };
    let artifacts = tempfile::tempdir().expect("artifacts");
    let store = Store::open(&format!("file://{}", artifacts.path().display())).expect("store");
    let files = tempfile::tempdir().expect("files");

    // A GGUF base: converted once, into the cache, under the file's checksum.
    let gguf = support::smollm2_gguf();
    let a = files.path().join("a/SmolLM2.gguf");
    std::fs::create_dir_all(a.parent().expect("parent")).expect("dir");
    std::fs::copy(&gguf, &a).expect("copy");
    let base = spec(json!({"baseModel": format!("file://{}", a.display())}));
    let dir = student::base_model_dir(&base, &store, &[], 1, 128)
        .await
        .expect("converts the GGUF");
    assert!(
        dir.starts_with(cache.path()),
        "{} is not in the cache",
        dir.display()
    );
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
    let converted_at = modified(&dir.join("model.safetensors"));

    // The same bytes under another path and name: the same directory, not converted again.
    let b = files.path().join("b/other-name.gguf");
    std::fs::create_dir_all(b.parent().expect("parent")).expect("dir");
    std::fs::copy(&gguf, &b).expect("copy");
    let again = student::base_model_dir(
        &spec(json!({"baseModel": format!("file://{}", b.display())})),
        &store,
        &[],
        1,
        128,
    )
    .await
    .expect("reuses the conversion");
    assert_eq!(again, dir);
    assert_eq!(modified(&dir.join("model.safetensors")), converted_at);

    // Different bytes under the first file's name: never the first file's conversion.
    let c = files.path().join("c/SmolLM2.gguf");
    std::fs::create_dir_all(c.parent().expect("parent")).expect("dir");
    std::fs::write(&c, b"GGUF but not really").expect("write");
    let err = student::base_model_dir(
        &spec(json!({"baseModel": format!("file://{}", c.display())})),
        &store,
        &[],
        1,
        128,
    )
    .await
    .expect_err("a broken GGUF is refused");
    let message = format!("{err:#}");
    assert!(message.contains(&c.display().to_string()), "{message}");
    let entries = std::fs::read_dir(dir.parent().expect("gguf cache"))
        .expect("cache")
        .count();
    assert_eq!(
        entries, 1,
        "the failed conversion left nothing in the cache"
    );

    // A base that does not exist names the field.
    let missing = files.path().join("missing.gguf");
    let err = student::base_model_dir(
        &spec(json!({"baseModel": format!("file://{}", missing.display())})),
        &store,
        &[],
        1,
        128,
    )
    .await
    .expect_err("a missing base is refused");
    assert!(format!("{err:#}").contains("student.baseModel"), "{err:#}");

    // A from-scratch base: built in round 1 from its data, then reused as it is.
    let scratch = spec(
        json!({"fromScratch": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "vocabSize": 300}}),
    );
    let first = student::base_model_dir(&scratch, &store, &rows("alpha"), 1, 64)
        .await
        .expect("builds");
    let tokenizer = std::fs::read(first.join("tokenizer.json")).expect("tokenizer");
    assert!(
        artifacts
            .path()
            .join(ArtifactLayout::STUDENT_BASE)
            .join("config.json")
            .is_file()
    );
    let later = student::base_model_dir(&scratch, &store, &rows("omega"), 1, 64)
        .await
        .expect("reuses");
    assert_eq!(later, first);
    assert_eq!(
        std::fs::read(later.join("tokenizer.json")).expect("tokenizer"),
        tokenizer,
        "a later round keeps round 1's vocabulary"
    );
}
