//! The local runner end to end against `fake_trainer.sh`, a shell stage that honours the
//! stage contract: the loop, the status file, retries, Ctrl-C and resume, the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::{LlamaDuoMigrationStatus, Phase, RoundOutcome, Stage};

use super::{Ending, Finished, Mode, RunArgs, StatusFile, run_with, stop_channel};

const FAKE: &str = include_str!("fake_trainer.sh");

/// A work area: the manifest (quickstart with an external teacher URL, so no simulated teacher
/// is started), the fake trainer wrapped with `knobs`, and the invocation log.
struct Fixture {
    dir: tempfile::TempDir,
    manifest: PathBuf,
    trainer: PathBuf,
}

impl Fixture {
    fn new(extra_spec: &str, knobs: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = include_str!("../../examples/quickstart/migration.yaml").replace(
            "    model: triage\n",
            "    model: triage\n    baseUrl: http://127.0.0.1:9/v1\n",
        ) + extra_spec;
        assert!(
            yaml.contains("baseUrl"),
            "the quickstart's teacher block changed"
        );
        let manifest = dir.path().join("migration.yaml");
        std::fs::write(&manifest, yaml).expect("manifest");
        std::fs::write(
            dir.path().join("coverage.jsonl"),
            include_str!("../../examples/quickstart/coverage.jsonl"),
        )
        .expect("coverage");
        let fake = dir.path().join("fake-trainer.sh");
        std::fs::write(&fake, FAKE).expect("fake");
        let mut wrapper = String::from("#!/bin/sh\n");
        wrapper.push_str(&format!(
            "export FAKE_TRAINER_LOG='{}'\n",
            dir.path().join("calls.log").display()
        ));
        for (k, v) in knobs {
            wrapper.push_str(&format!("export {k}='{v}'\n"));
        }
        wrapper.push_str(&format!("exec /bin/sh '{}' \"$@\"\n", fake.display()));
        let trainer = dir.path().join("llamaduo-trainer");
        std::fs::write(&trainer, wrapper).expect("wrapper");
        std::fs::set_permissions(&trainer, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self {
            dir,
            manifest,
            trainer,
        }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn args(&self) -> RunArgs {
        RunArgs {
            file: self.manifest.clone(),
            workdir: Some(self.workdir()),
            json: false,
            grace_seconds: 5,
            trainer: Some(self.trainer.clone()),
        }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn status(&self) -> LlamaDuoMigrationStatus {
        StatusFile::in_dir(&self.workdir()).load().expect("status")
    }

    async fn run(&self) -> Finished {
        let (_h, stop) = stop_channel();
        run_with(&self.args(), Mode::Silent, stop)
            .await
            .expect("runs")
    }
}

fn artifacts(f: &Fixture) -> PathBuf {
    f.workdir().join("artifacts/local/quickstart")
}

#[tokio::test]
async fn a_migration_runs_to_its_target_and_a_rerun_does_nothing() {
    let f = Fixture::new("", &[]);
    let done = f.run().await;
    assert_eq!(done.driven.ending, Ending::Finished);
    assert_eq!(done.exit_code(), 0);
    let s = f.status();
    assert_eq!(s.phase, Some(Phase::Succeeded));
    assert_eq!(s.rounds.len(), 2, "65 < 80 in round 1, 90 in round 2");
    assert_eq!(s.rounds[0].outcome, Some(RoundOutcome::BelowTarget));
    assert_eq!(s.rounds[1].outcome, Some(RoundOutcome::TargetReached));
    let best = s.best.as_ref().expect("best");
    assert_eq!(best.round, 2);
    assert_eq!(
        best.model_uri,
        format!("file://{}/round-2/model", artifacts(&f).display())
    );
    assert_eq!(s.service_tokens.total(), 2 * (600 + 200));
    assert_eq!(
        f.calls(),
        [
            "synthesize round=1 attempt=1",
            "train round=1 attempt=1",
            "evaluate round=1 attempt=1",
            "synthesize round=2 attempt=1",
            "train round=2 attempt=1",
            "evaluate round=2 attempt=1"
        ]
    );
    for p in [
        "round-1/synthetic.jsonl",
        "round-2/model",
        "round-2/eval/summary.json",
    ] {
        assert!(artifacts(&f).join(p).exists(), "{p}");
    }
    let html = std::fs::read_to_string(f.workdir().join("report.html")).expect("html");
    assert!(html.contains("round-2/model"));
    assert!(f.workdir().join("report.png").exists());

    let status_path = f.workdir().join("status.yaml");
    let before = (
        std::fs::read(&status_path).expect("read"),
        std::fs::metadata(&status_path)
            .expect("meta")
            .modified()
            .expect("mtime"),
    );
    let again = f.run().await;
    assert_eq!(again.driven.ending, Ending::AlreadyFinished);
    assert!(!again.driven.changed);
    assert_eq!(again.exit_code(), 0);
    assert_eq!(f.calls().len(), 6, "no stage ran again");
    let after = (
        std::fs::read(&status_path).expect("read"),
        std::fs::metadata(&status_path)
            .expect("meta")
            .modified()
            .expect("mtime"),
    );
    assert_eq!(before, after, "status.yaml untouched");
}

#[tokio::test]
async fn a_stop_during_training_terminates_the_stage_and_a_rerun_resumes() {
    let f = Fixture::new("", &[("FAKE_SLEEP_STAGE", "train"), ("FAKE_SLEEP", "30")]);
    let (handle, stop) = stop_channel();
    let calls = f.dir.path().join("calls.log");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .contains("train")
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
                handle.stop();
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let done = run_with(&f.args(), Mode::Silent, stop).await.expect("runs");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped, not finished"
    );
    assert_eq!(done.driven.ending, Ending::Interrupted);
    assert_eq!(done.exit_code(), 130);
    assert!(
        f.calls().iter().any(|c| c == "terminated train round=1"),
        "{:?}",
        f.calls()
    );
    let s = f.status();
    let current = s.current.as_ref().expect("the run in flight is kept");
    assert_eq!(
        (current.round, current.stage, current.attempt),
        (1, Stage::Train, 1)
    );
    // The first progress line reached status.yaml as status.current.progress does in a
    // cluster (later ones within LOCAL_PROGRESS_INTERVAL did not).
    let progress = current.progress.as_ref().expect("progress in status.yaml");
    assert_eq!(
        (progress.unit.as_deref(), progress.total, progress.loss),
        (Some("steps"), Some(300), Some(1.5))
    );
    assert!(
        progress.done >= 1 && progress.percent.is_some(),
        "{progress:?}"
    );
    assert!(
        s.rounds[0].stage(Stage::Train).is_none(),
        "no failure recorded"
    );
    let message = s.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with("interrupted (")
            && message.contains("train")
            && message.contains("resume"),
        "the status says the process stopped, not that it runs: {message}"
    );

    // The rerun (no sleep this time) repeats the same attempt and finishes.
    let f2 = Fixture {
        trainer: {
            let p = f.dir.path().join("plain-trainer");
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\nexport FAKE_TRAINER_LOG='{}'\nexec /bin/sh '{}' \"$@\"\n",
                    f.dir.path().join("calls.log").display(),
                    f.dir.path().join("fake-trainer.sh").display()
                ),
            )
            .expect("write");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            p
        },
        manifest: f.manifest.clone(),
        dir: f.dir,
    };
    let done = f2.run().await;
    assert_eq!(done.driven.status.phase, Some(Phase::Succeeded));
    let trains: Vec<_> = f2
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("train round=1"))
        .collect();
    assert_eq!(
        trains,
        ["train round=1 attempt=1", "train round=1 attempt=1"]
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_and_recorded() {
    let f = Fixture::new(
        "",
        &[
            ("FAKE_FAIL_STAGE", "evaluate"),
            ("FAKE_CRASH_STAGE", "train"),
        ],
    );
    let done = f.run().await;
    assert_eq!(done.driven.status.phase, Some(Phase::Succeeded));
    let r1 = &f.status().rounds[0];
    let train = r1.stage(Stage::Train).expect("train");
    assert_eq!((train.attempts, train.succeeded), (2, true));
    let eval = r1.stage(Stage::Evaluate).expect("evaluate");
    assert_eq!((eval.attempts, eval.succeeded), (2, true));
    let log =
        std::fs::read_to_string(f.workdir().join("runs/quickstart-r1-train.log")).expect("log");
    assert!(log.contains("simulated crash"), "{log}");
}

#[tokio::test]
async fn a_stage_failing_past_its_retries_fails_the_migration() {
    let f = Fixture::new("", &[("FAKE_CRASH_STAGE", "train")]);
    // stop.stageRetries 0: the first crash is final.
    std::fs::write(
        &f.manifest,
        std::fs::read_to_string(&f.manifest)
            .expect("read")
            .replace("maxRounds: 6", "maxRounds: 6\n    stageRetries: 0"),
    )
    .expect("write");
    let done = f.run().await;
    assert_eq!(done.exit_code(), 1);
    let s = f.status();
    assert_eq!(s.phase, Some(Phase::Failed));
    let msg = s.message.unwrap_or_default();
    assert!(
        msg.contains("exited with status 3: fake train: simulated crash"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_edited_manifest_gives_a_stage_that_failed_on_every_attempt_one_more() {
    let f = Fixture::new("", &[("FAKE_CRASH_STAGE", "train")]);
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&f.manifest).expect("read");
        assert!(text.contains(from), "{from}");
        std::fs::write(&f.manifest, text.replace(from, to)).expect("write");
    };
    edit("maxRounds: 6", "maxRounds: 6\n    stageRetries: 0");
    assert_eq!(f.run().await.exit_code(), 1);
    assert_eq!(f.status().phase, Some(Phase::Failed));
    // Run again unchanged: still failed, nothing started.
    let before = f.calls().len();
    assert_eq!(f.run().await.exit_code(), 1);
    assert_eq!(f.calls().len(), before);
    // The cause is fixed (the trainer no longer crashes) and the manifest edited: train gets
    // attempt 2 in round 1, and the migration goes on to its target.
    let wrapper = std::fs::read_to_string(&f.trainer).expect("wrapper");
    std::fs::write(
        &f.trainer,
        wrapper.replace("export FAKE_CRASH_STAGE='train'\n", ""),
    )
    .expect("wrapper");
    // Not the retries: any edit is presumed to be the fix (stageRetries stays 0).
    edit("meanScore: 80", "meanScore: 79");
    let done = f.run().await;
    assert_eq!(done.exit_code(), 0, "{:?}", done.driven.ending);
    let s = f.status();
    assert_eq!(s.phase, Some(Phase::Succeeded));
    let train = s.rounds[0].stage(Stage::Train).expect("train");
    assert_eq!((train.attempts, train.succeeded), (2, true));
    assert!(
        f.calls().contains(&"train round=1 attempt=2".to_string()),
        "{:?}",
        f.calls()
    );
}

#[tokio::test]
async fn a_missing_coverage_file_stalls_at_once_naming_the_field() {
    let f = Fixture::new("", &[]);
    std::fs::remove_file(f.dir.path().join("coverage.jsonl")).expect("remove");
    let done = f.run().await;
    assert_eq!(done.exit_code(), 2, "{:?}", done.driven.ending);
    assert!(f.calls().is_empty(), "no stage ran: {:?}", f.calls());
    let s = f.status();
    let stalled = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .expect("Stalled");
    assert_eq!(stalled.status, "True");
    assert_eq!(stalled.reason, "LocalFileNotFound");
    assert!(
        stalled.message.contains("spec.coverage.source")
            && stalled.message.contains("coverage.jsonl"),
        "{}",
        stalled.message
    );
    // Put the file back: the same workdir resumes and runs.
    std::fs::write(
        f.dir.path().join("coverage.jsonl"),
        include_str!("../../examples/quickstart/coverage.jsonl"),
    )
    .expect("coverage");
    let done = f.run().await;
    assert_eq!(done.exit_code(), 0, "{:?}", done.driven.ending);
}

#[tokio::test]
async fn an_invalid_manifest_lists_every_problem_and_runs_nothing() {
    let f = Fixture::new("", &[]);
    std::fs::write(
        &f.manifest,
        std::fs::read_to_string(&f.manifest)
            .expect("read")
            .replace("meanScore: 80", "meanScore: 800")
            .replace("hiddenSize: 128", "hiddenSize: 130"),
    )
    .expect("write");
    let (_h, stop) = stop_channel();
    let err = run_with(&f.args(), Mode::Silent, stop)
        .await
        .expect_err("invalid");
    let text = format!("{err:#}");
    assert!(
        text.contains("target.meanScore") && text.contains("hiddenSize"),
        "{text}"
    );
    assert!(f.calls().is_empty());
    assert!(!Path::new(&f.workdir()).join("status.yaml").exists());
}

#[tokio::test]
async fn a_missing_trainer_is_a_clear_error_and_keeps_status_resumable() {
    let f = Fixture::new("", &[]);
    let mut args = f.args();
    args.trainer = Some(f.dir.path().join("nowhere/llamaduo-trainer"));
    let (_h, stop) = stop_channel();
    let err = run_with(&args, Mode::Silent, stop)
        .await
        .expect_err("no trainer");
    assert!(format!("{err:#}").contains("llamaduo-trainer"), "{err:#}");
    let s = f.status();
    assert_eq!(s.current.as_ref().map(|c| c.stage), Some(Stage::Synthesize));
    let done = f.run().await;
    assert_eq!(done.driven.status.phase, Some(Phase::Succeeded));
}
