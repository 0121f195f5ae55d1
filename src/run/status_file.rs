//! `DIR/status.yaml`: the local run's record of progress, in the resource's status format
//! (what `kubectl get ldm NAME -o yaml` shows under `status:`), written atomically so a crash
//! at any moment leaves either the old or the new status, never a torn file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::LlamaDuoMigrationStatus;

/// The status file's name inside the work directory.
pub const STATUS_FILE: &str = "status.yaml";

/// Reading or writing the status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusFileError {
    /// I/O on the file.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold a status.
    #[error(
        "{path} is not a llamaduo status file ({message}); move it away to start the migration afresh"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The status could not be serialized.
    #[error("serializing the status: {0}")]
    Serialize(String),
}

/// The status file of a work directory.
#[derive(Clone, Debug)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    /// The status file in `workdir`.
    pub fn in_dir(workdir: &Path) -> Self {
        Self {
            path: workdir.join(STATUS_FILE),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded status; the empty status when the file does not exist yet.
    pub fn load(&self) -> Result<LlamaDuoMigrationStatus, StatusFileError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LlamaDuoMigrationStatus::default());
            }
            Err(source) => {
                return Err(StatusFileError::Io {
                    action: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if text.trim().lines().all(|l| l.trim_start().starts_with('#')) {
            return Ok(LlamaDuoMigrationStatus::default());
        }
        serde_saphyr::from_str(&text).map_err(|e| StatusFileError::Parse {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Writes `status` atomically: a temporary file in the same directory, flushed to disk,
    /// then renamed over the old one. `header` becomes a YAML comment on top.
    pub fn save(
        &self,
        status: &LlamaDuoMigrationStatus,
        header: &str,
    ) -> Result<(), StatusFileError> {
        let body = serde_saphyr::to_string(status)
            .map_err(|e| StatusFileError::Serialize(e.to_string()))?;
        let mut text = String::new();
        for line in header.lines() {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&body);
        write_atomically(&self.path, text.as_bytes()).map_err(|source| StatusFileError::Io {
            action: "writing",
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, syncing the file and
/// its directory so the rename survives a power loss.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so this is
        // best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BestRound, Phase, RoundOutcome, RoundStatus, Scores, Stage, StageRecord, StageRun,
        TokenUsage,
    };

    fn sample() -> LlamaDuoMigrationStatus {
        LlamaDuoMigrationStatus {
            phase: Some(Phase::Training),
            round: 2,
            message: Some("round 2: train started".into()),
            current: Some(StageRun {
                round: 2,
                stage: Stage::Train,
                attempt: 1,
                name: "q-r2-train".into(),
                generation: None,
                progress: None,
            }),
            rounds: vec![RoundStatus {
                round: 1,
                synthesized: Some(400),
                training_samples: Some(454),
                train_loss: Some(0.75),
                eval_loss: Some(0.8),
                best_epoch: Some(2),
                scores: Some(Scores {
                    mean: 61.5,
                    pass_rate: 0.5,
                    ..Scores::default()
                }),
                failed_judgements: Some(1),
                service_tokens: TokenUsage {
                    input: 1000,
                    output: 2000,
                },
                model_uri: Some("file:///w/artifacts/local/q/round-1/model".into()),
                stages: vec![StageRecord {
                    stage: Stage::Synthesize,
                    attempts: 1,
                    succeeded: true,
                    message: None,
                    duration_seconds: Some(3.5),
                    budget_exhausted: false,
                    failure_class: None,
                    generation: None,
                }],
                outcome: Some(RoundOutcome::BelowTarget),
            }],
            best: Some(BestRound {
                round: 1,
                mean_score: 61.5,
                model_uri: "file:///w/artifacts/local/q/round-1/model".into(),
            }),
            service_tokens: TokenUsage {
                input: 1000,
                output: 2000,
            },
            ..LlamaDuoMigrationStatus::default()
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StatusFile::in_dir(dir.path());
        assert_eq!(file.load().expect("missing is empty"), Default::default());
        let status = sample();
        file.save(&status, "llamaduo run status of local/q\nsecond line")
            .expect("saved");
        assert_eq!(file.load().expect("loads"), status);
        let text = std::fs::read_to_string(file.path()).expect("read");
        assert!(text.starts_with("# llamaduo run status of local/q\n# second line\n"));
        assert!(text.contains("phase: Training"), "{text}");
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temporary file is left");
    }

    #[test]
    fn a_foreign_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StatusFile::in_dir(dir.path());
        std::fs::write(file.path(), "rounds: twelve\n").expect("write");
        let err = file.load().expect_err("not a status");
        assert!(err.to_string().contains("move it away"), "{err}");
    }
}
