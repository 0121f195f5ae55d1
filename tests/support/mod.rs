//! The binaries the end-to-end tests run: `llamaduo` (this package's, built for the test) and
//! the `llamaduo-trainer` next to it, built when missing (a package cannot depend on another
//! package's binary).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The `llamaduo` binary cargo built for this test.
pub fn llamaduo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llamaduo"))
}

/// The trainer next to `llamaduo`, built (in the same profile) when missing.
pub fn ensure_trainer() -> PathBuf {
    let dir = llamaduo().parent().expect("bin dir").to_path_buf();
    let trainer = dir.join("llamaduo-trainer");
    if !trainer.exists() {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "llamaduo-trainer"]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo build");
        assert!(status.success(), "building llamaduo-trainer failed");
    }
    assert!(trainer.exists(), "{} missing", trainer.display());
    trainer
}
