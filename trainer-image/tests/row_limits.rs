//! Bounded memory for any row: a coverage file with one 60 MB row (a pasted document) makes
//! synthesize, train and evaluate fail at once, naming the file, the line, its size and
//! `coverage.maxRowBytes`, as a permanent failure, while the stage process's peak RSS stays
//! under [`PEAK_RSS_BOUND`]. Before the limit the evaluate stage reached 10.1 GB on such a row
//! (tokenizing and templating it), an OOM kill in any pod with a memory limit.
//!
//! The peak is the stage process's own `ru_maxrss`, read with wait4(2) when it exits.

mod stage_support;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use stage_support::{read_result, stage_command, stage_config};

/// The big row's size.
const ROW_BYTES: usize = 60 * 1024 * 1024;
/// What a stage may reach while refusing it: the file held once (60 MiB) plus the process's
/// baseline (25-35 MiB for these configs; 83-85 MiB peaks measured in all), with room to
/// spare; far under the gigabytes that parsing and tokenizing the row would take.
const PEAK_RSS_BOUND: u64 = ROW_BYTES as u64 + 96 * 1024 * 1024;

fn row(user: &str, answer: &str) -> String {
    json!({"messages": [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]})
    .to_string()
}

/// Writes two ordinary rows, the 60 MB one (line 3) and one more to `path`, streaming: the
/// test process never holds the big row, so its memory cannot inflate the stage's measured
/// peak (a child's ru_maxrss includes what it shared with its parent before exec).
fn write_jsonl_with_a_huge_row(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    writeln!(f, "{}\n{}", row("2+2?", "4"), row("3+3?", "6")).expect("write");
    write!(f, "{{\"messages\":[{{\"role\":\"user\",\"content\":\"").expect("write");
    let chunk = "lorem ipsum ".repeat(1024);
    for _ in 0..ROW_BYTES / chunk.len() {
        f.write_all(chunk.as_bytes()).expect("write");
    }
    writeln!(
        f,
        "\"}},{{\"role\":\"assistant\",\"content\":\"ok\"}}]}}\n{}",
        row("4+4?", "8")
    )
    .expect("write");
    f.flush().expect("flush");
}

/// Runs a stage as the operator does, and returns its result and peak RSS in bytes.
fn run_measured(root: &Path, stage: &str, config: &Value) -> (Value, u64) {
    let (mut cmd, result_path) = stage_command(root, stage, stage, config, "cpu", root);
    // Reaped by wait4 below, which std's Child::wait cannot do (it returns no rusage).
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("trainer starts");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, fully written by wait4 on success.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers to locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let exit = std::process::ExitStatus::from_raw(status);
    assert!(!exit.success(), "{stage} should fail on the huge row");
    // Linux reports ru_maxrss in KiB.
    let peak = u64::try_from(usage.ru_maxrss).expect("rss") * 1024;
    (read_result(&result_path), peak)
}

fn assert_refused(stage: &str, result: &Value, peak: u64) {
    let message = result["message"].as_str().expect("message");
    eprintln!(
        "{stage}: peak RSS {:.0} MiB on a {} MiB row: {message}",
        peak as f64 / (1024.0 * 1024.0),
        ROW_BYTES / (1024 * 1024)
    );
    assert!(
        message.contains("line 3 is ")
            && message.contains("over the 1048576-byte limit")
            && message.contains("coverage.maxRowBytes"),
        "{stage}: {message}"
    );
    assert_eq!(result["failureClass"], "permanent", "{stage}: {result}");
    assert!(
        peak < PEAK_RSS_BOUND,
        "{stage}: peak RSS {peak} bytes is over {PEAK_RSS_BOUND}"
    );
}

/// A service nobody answers at: each stage must fail before it would call one.
const NOWHERE: &str = "http://127.0.0.1:9/v1";

#[test]
fn synthesize_refuses_a_huge_coverage_row_in_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let source = root.join("coverage-source.jsonl");
    write_jsonl_with_a_huge_row(&source);
    let config = json!({
        "stage": "synthesize", "namespace": "local", "migration": "m", "round": 1,
        "artifacts": format!("file://{}", root.join("artifacts").display()),
        "task": {"description": "Add the numbers."},
        "coverage": {"source": format!("file://{}", source.display()), "testFraction": 0.25},
        "teacher": {"provider": "simulated", "model": "arithmetic", "baseUrl": NOWHERE},
        "synthesis": {"pairsPerCall": 2},
        "samples": 4,
    });
    let (result, peak) = run_measured(root, "synthesize", &config);
    assert_refused("synthesize", &result, peak);
    assert!(
        !root.join("artifacts/coverage/test.jsonl").exists(),
        "no test set is frozen from a source that was refused"
    );
}

#[test]
fn train_refuses_a_huge_training_row_in_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    write_jsonl_with_a_huge_row(&root.join("coverage/train.jsonl"));
    let config = stage_config(root, "train", json!({"training": {"method": "full"}}));
    let (result, peak) = run_measured(root, "train", &config);
    assert_refused("train", &result, peak);
}

#[test]
fn evaluate_refuses_a_huge_test_row_in_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    write_jsonl_with_a_huge_row(&root.join("coverage/test.jsonl"));
    let mut config = stage_config(
        root,
        "evaluate",
        json!({
            "task": {"description": "Add the numbers."},
            "training": {"method": "full"},
            "judge": {"provider": "simulated", "model": "arithmetic", "baseUrl": NOWHERE},
            "teacher": {"provider": "simulated", "model": "arithmetic", "baseUrl": NOWHERE},
            "evaluation": {},
        }),
    );
    config["round"] = json!(1);
    let (result, peak) = run_measured(root, "evaluate", &config);
    assert_refused("evaluate", &result, peak);
}

#[test]
fn a_raised_limit_lets_a_long_row_through() {
    // 2 MiB of answer: refused by default, read with coverage.maxRowBytes raised (the train
    // stage then trains on it, truncated to maxSeqLen).
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("coverage")).expect("dir");
    let long = row("Say many words.", &"word ".repeat(400_000));
    std::fs::write(
        root.join("coverage/train.jsonl"),
        format!("{}\n{long}\n", row("2+2?", "4")),
    )
    .expect("write");
    let mut config = stage_config(
        root,
        "train",
        json!({"training": {"method": "full", "epochs": 1, "maxSeqLen": 32}}),
    );
    let (out, result) = stage_support::run_stage(root, "train", &config, "cpu");
    assert!(!out.status.success());
    let message = result["message"].as_str().expect("message");
    assert!(message.contains("line 2 is 2000"), "{message}");
    config["maxRowBytes"] = json!(4 * 1024 * 1024);
    let (out, result) = stage_support::run_stage(root, "train", &config, "cpu");
    assert!(
        out.status.success(),
        "{result}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        result["train"]["truncated"].as_u64().unwrap_or(0) >= 1,
        "{result}"
    );
}
