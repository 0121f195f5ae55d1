//! `llamaduo validate DIR` reads each manifest once, whatever symbolic links lead to it, and
//! says which link it skipped; an over-long field fails the run naming it.

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Output};

fn quickstart() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart/migration.yaml"
    );
    std::fs::read_to_string(path).expect("the quickstart")
}

fn validate(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llamaduo"))
        .args(["validate", "--local"])
        .arg(dir)
        .output()
        .expect("llamaduo runs")
}

#[test]
fn a_link_to_the_parent_is_skipped_with_a_warning_and_the_manifest_checked_once() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("migration.yaml"), quickstart()).expect("manifest");
    std::fs::create_dir(dir.path().join("nested")).expect("nested");
    std::os::unix::fs::symlink("..", dir.path().join("nested/parent")).expect("link");
    let out = validate(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches(": valid").count(), 1, "{stdout}");
    assert!(
        stdout.contains("1 LlamaDuoMigration(s) checked, 0 with problems"),
        "{stdout}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let link = dir.path().join("nested/parent");
    assert!(
        warnings[0].contains(&link.display().to_string()) && warnings[0].contains("loop"),
        "{stderr}"
    );
}

#[test]
fn a_50_mb_description_fails_the_run_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let long = "x".repeat(50 * 1024 * 1024);
    let manifest = quickstart().replacen(
        "description: Route the customer message",
        &format!("description: {long} Route the customer message"),
        1,
    );
    assert!(manifest.len() > 50 * 1024 * 1024, "the quickstart changed");
    std::fs::write(dir.path().join("migration.yaml"), manifest).expect("manifest");
    let out = validate(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("spec.task.description: is ")
            && stdout.contains("characters long, over the limit of 16384: shorten it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 LlamaDuoMigration(s) checked, 1 with problems"),
        "{stdout}"
    );
}
