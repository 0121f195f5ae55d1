//! The official `openai` Python client (PyPI, installed into .venv by scripts/test.sh) talks
//! to `llamaduo-trainer serve` on a tiny model: models, chat, streaming, completions, errors.

mod serve_support;

use std::path::Path;

#[tokio::test]
async fn the_openai_python_client_talks_to_the_server() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} is missing; run scripts/test.sh (it creates .venv with requirements-test.txt)",
            python.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = serve_support::tiny_model(&tmp.path().join("tiny"));
    let server = serve_support::spawn(&["--model", dir.to_str().expect("utf8")]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let base_url = server.base_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base_url)
            .output()
            .expect("runs python")
    })
    .await
    .expect("joins");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: tiny answered"), "{stdout}");
}
