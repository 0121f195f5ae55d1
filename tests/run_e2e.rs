//! End to end on one machine: the real `llamaduo` and `llamaduo-trainer` binaries run a small
//! variant of the quickstart (simulated teacher and judge, a from-scratch student) in a few
//! minutes: killed (SIGKILL) during training, rerun to completion, then rerun again to prove a
//! finished migration does nothing.
//!
//! The trainer is taken from next to the `llamaduo` test binary (target/debug), built with
//! `cargo build -p llamaduo-trainer` first when it is missing.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{ensure_trainer, llamaduo};

use llamaduo::api::{ArtifactLayout, LlamaDuoMigrationStatus, Phase, RoundOutcome, Stage};

const QUICKSTART: &str = include_str!("../examples/quickstart/migration.yaml");
const COVERAGE: &str = include_str!("../examples/quickstart/coverage.jsonl");

/// The quickstart with fewer initial samples (round 1 scores about 35), a lower target
/// (reached in round 3, about 65) and at most 4 rounds, so the test sees the score rise and
/// fits in the time limit. Checkpoints every 5 steps so a kill during training leaves
/// a resume point.
fn small_variant() -> String {
    let yaml = QUICKSTART
        .replace("name: quickstart", "name: quickstart-small")
        .replace("initialSamples: 100", "initialSamples: 40")
        .replace("maxSeqLen: 64", "maxSeqLen: 64\n    checkpointEvery: 5")
        .replace("meanScore: 80", "meanScore: 55")
        .replace("maxRounds: 6", "maxRounds: 4");
    assert!(
        yaml.contains("checkpointEvery: 5")
            && yaml.contains("meanScore: 55")
            && yaml.contains("maxRounds: 4")
            && yaml.contains("initialSamples: 40")
    );
    yaml
}

fn run_cmd(manifest: &Path, workdir: &Path) -> Command {
    let mut c = Command::new(llamaduo());
    c.arg("run")
        .arg(manifest)
        .arg("--workdir")
        .arg(workdir)
        .env_remove("LLAMADUO_TRAINER")
        .stdin(Stdio::null());
    c
}

fn load_status(workdir: &Path) -> LlamaDuoMigrationStatus {
    let text = std::fs::read_to_string(workdir.join("status.yaml")).unwrap_or_default();
    serde_saphyr::from_str(&text).unwrap_or_default()
}

/// Processes (other than zombies) whose environment mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if state.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && String::from_utf8_lossy(&env).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn small_quickstart_killed_in_training_resumes_and_reaches_its_target() {
    let started = Instant::now();
    ensure_trainer();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("migration.yaml");
    std::fs::write(&manifest, small_variant()).expect("manifest");
    std::fs::write(dir.path().join("coverage.jsonl"), COVERAGE).expect("coverage");
    let workdir = dir.path().join("work");
    let train_log = workdir.join("runs/quickstart-small-r1-train.log");

    // 1. Start, and SIGKILL llamaduo once training reports progress.
    let mut child = run_cmd(&manifest, &workdir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llamaduo");
    loop {
        let log = std::fs::read_to_string(&train_log).unwrap_or_default();
        if log.contains("\"progress\"") {
            break;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("llamaduo ended ({status}) before training reported progress");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training did not start within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let s = load_status(&workdir);
    assert_eq!(s.phase, Some(Phase::Training), "{s:?}");
    assert_eq!(s.current.as_ref().map(|c| c.stage), Some(Stage::Train));
    // The stage processes die with llamaduo (PR_SET_PDEATHSIG); nothing keeps writing.
    let needle = workdir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<u32>::new(),
        "orphaned stage processes"
    );

    // 2. Rerun to the end.
    let out = run_cmd(&manifest, &workdir)
        .arg("--json")
        .output()
        .expect("rerun");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json");
    assert_eq!(v["ending"], "finished", "{v}");
    let s = load_status(&workdir);
    assert_eq!(s.phase, Some(Phase::Succeeded), "{:?}", s.message);
    assert!(s.rounds.len() >= 2, "at least two rounds: {:?}", s.rounds);
    let last = s.rounds.last().expect("rounds");
    assert_eq!(last.outcome, Some(RoundOutcome::TargetReached));
    let first_score = s.rounds[0].scores.expect("round 1 scored").mean;
    let last_score = last.scores.expect("last round scored").mean;
    assert!(
        first_score < 55.0,
        "round 1 is below the target: {first_score}"
    );
    assert!(
        last_score > first_score,
        "the score rose: {first_score} -> {last_score}"
    );
    for r in &s.rounds {
        for stage in Stage::ALL {
            let rec = r.stage(stage).expect("every stage recorded");
            assert!(
                rec.succeeded,
                "round {} {stage}: {:?}",
                r.round, rec.message
            );
        }
        assert!(r.synthesized.is_some() && r.train_loss.is_some() && r.scores.is_some());
    }
    assert!(s.service_tokens.total() > 0);

    // 3. The §5 layout.
    let root = workdir.join("artifacts/local/quickstart-small");
    let mut expected = vec![
        ArtifactLayout::COVERAGE_TRAIN.to_string(),
        ArtifactLayout::COVERAGE_TEST.to_string(),
    ];
    for r in &s.rounds {
        let n = r.round;
        expected.push(ArtifactLayout::synthetic(n));
        expected.push(ArtifactLayout::model(n));
        expected.push(format!("{}/summary.json", ArtifactLayout::eval_dir(n)));
        expected.push(format!("{}/answers.jsonl", ArtifactLayout::eval_dir(n)));
        for stage in Stage::ALL {
            expected.push(ArtifactLayout::result(n, stage));
        }
    }
    for p in &expected {
        assert!(
            root.join(p).exists(),
            "{p} missing under {}",
            root.display()
        );
    }
    // A published model makes its round's resume points useless: they are removed.
    for r in &s.rounds {
        assert!(
            !root.join(ArtifactLayout::checkpoints(r.round)).exists(),
            "round {} kept its checkpoints",
            r.round
        );
    }
    let best = s.best.as_ref().expect("best");
    assert_eq!(best.round, last.round);
    assert!(Path::new(&best.model_uri.replace("file://", "")).is_dir());
    assert!(workdir.join("report.html").exists() && workdir.join("report.png").exists());

    // 4. A rerun after completion does nothing.
    let status_before = std::fs::read(workdir.join("status.yaml")).expect("status");
    let runs_before = std::fs::read_dir(workdir.join("runs"))
        .expect("runs")
        .count();
    let out = run_cmd(&manifest, &workdir)
        .arg("--json")
        .output()
        .expect("third run");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json");
    assert_eq!(v["ending"], "alreadyFinished", "{v}");
    assert_eq!(
        std::fs::read(workdir.join("status.yaml")).expect("status"),
        status_before
    );
    assert_eq!(
        std::fs::read_dir(workdir.join("runs"))
            .expect("runs")
            .count(),
        runs_before,
        "no stage ran"
    );
    eprintln!(
        "small quickstart: {} rounds, mean {first_score:.1} -> {last_score:.1}, {:.0}s in all",
        s.rounds.len(),
        started.elapsed().as_secs_f64()
    );
}
