//! The repository's `.venv` Python with torch and transformers, for tests that compare with
//! transformers. scripts/test.sh creates it and sets `LLAMADUO_REQUIRE_PEFT=1`; there, and
//! under `CI=true`, a missing venv fails the test; elsewhere the test skips, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python when it can import `modules`, else `None` after printing why `what` is
/// skipped (or panicking where the venv is required).
pub fn venv_python(what: &str, modules: &[&str]) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join(".venv/bin/python");
    let list = modules
        .iter()
        .map(|m| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let ok = py.is_file()
        && Command::new(&py)
            // find_spec, not import: importing torch costs seconds on every run.
            .args([
                "-c",
                &format!(
                    "import importlib.util as u, sys; \
                     sys.exit(any(u.find_spec(m) is None for m in ({list},)))"
                ),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if ok {
        return Some(py);
    }
    let msg = format!(
        "{} lacks {}: run scripts/test.sh (it installs requirements-torch.txt into .venv)",
        py.display(),
        modules.join(", ")
    );
    let required = std::env::var_os("LLAMADUO_REQUIRE_PEFT").is_some()
        || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if required {
        panic!("{what}: {msg}");
    }
    eprintln!("SKIPPED {what}: {msg}");
    None
}

/// Runs `script` (under tests/python/) with `args` in the venv's Python, panicking with its
/// output when it fails; returns its stdout.
pub fn run_script(py: &Path, script: &str, args: &[&Path]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(py)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
