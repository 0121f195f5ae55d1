//! The offline teacher of a local run: when the teacher or judge is `simulated` without a
//! `baseUrl`, `llamaduo run` starts `llamaduo-trainer simulate-teacher` on a free loopback
//! port, points the stage configs at the `baseUrl` it reports, and stops it at the end.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::api::{LlamaDuoMigrationSpec, ProviderKind, ProviderSpec, StageConfig};

use super::process::{child_command, terminate};

/// How long the teacher may take to report its address.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a provider is simulated and has no server of its own.
fn needs_local(p: &ProviderSpec) -> bool {
    p.provider == ProviderKind::Simulated && p.base_url.is_none()
}

/// Whether the migration needs a local simulated teacher.
pub fn needs_simulated_teacher(spec: &LlamaDuoMigrationSpec) -> bool {
    needs_local(&spec.teacher) || needs_local(spec.judge())
}

/// Points every simulated provider of `config` that has no base URL at `base_url`.
pub fn point_at(config: &mut StageConfig, base_url: &str) {
    let providers: Vec<&mut ProviderSpec> = match config {
        StageConfig::Synthesize(c) => vec![&mut c.teacher],
        StageConfig::Train(_) => vec![],
        StageConfig::Evaluate(c) => vec![&mut c.judge, &mut c.teacher],
    };
    for p in providers {
        if needs_local(p) {
            p.base_url = Some(base_url.to_string());
        }
    }
}

/// A running `simulate-teacher`.
pub struct SimulatedTeacher {
    child: Child,
    base_url: String,
}

impl SimulatedTeacher {
    /// Starts `trainer simulate-teacher --listen 127.0.0.1:0` (the kernel picks a free port)
    /// and waits for the `{"baseUrl": ...}` line it prints once it listens. Its output goes to
    /// `log`.
    pub async fn start(trainer: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = child_command(trainer);
        cmd.arg("simulate-teacher")
            .arg("--listen")
            .arg("127.0.0.1:0");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} simulate-teacher", trainer.display()))?;
        let mut log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        if let Some(err) = child.stderr.take() {
            let mut file = log_file.try_clone()?;
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).split(b'\n');
                while let Ok(Some(l)) = lines.next_segment().await {
                    let _ = writeln!(file, "{}", String::from_utf8_lossy(&l));
                }
            });
        }
        let Some(out) = child.stdout.take() else {
            bail!("simulate-teacher has no stdout");
        };
        let mut lines = tokio::io::BufReader::new(out).split(b'\n');
        let found = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(l)) = lines.next_segment().await {
                let line = String::from_utf8_lossy(&l).to_string();
                let _ = writeln!(log_file, "{line}");
                if let Some(url) = base_url_of(&line) {
                    return Some(url);
                }
            }
            None
        })
        .await;
        let base_url = match found {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = child.wait().await?;
                bail!(
                    "simulate-teacher exited ({status}) before it listened; see {}",
                    log.display()
                );
            }
            Err(_) => {
                let _ = terminate(&mut child, Duration::from_secs(2)).await;
                bail!(
                    "simulate-teacher did not report its address within {}s; see {}",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_segment().await {
                let _ = writeln!(log_file, "{}", String::from_utf8_lossy(&l));
            }
        });
        Ok(Self { child, base_url })
    }

    /// The OpenAI-compatible base URL (`http://127.0.0.1:P/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops the server (SIGTERM, then SIGKILL after two seconds).
    pub async fn stop(mut self) {
        let _ = terminate(&mut self.child, Duration::from_secs(2)).await;
    }
}

/// The `baseUrl` of simulate-teacher's ready line `{"baseUrl": "http://127.0.0.1:P/v1"}`.
fn base_url_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get("baseUrl")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StageContext;

    fn spec() -> LlamaDuoMigrationSpec {
        let yaml = include_str!("../../examples/quickstart/migration.yaml");
        super::super::manifest::parse(yaml, Path::new("m"), Path::new("/"))
            .expect("quickstart")
            .spec
    }

    #[test]
    fn only_simulated_providers_without_url_need_a_local_teacher() {
        let mut s = spec();
        assert!(needs_simulated_teacher(&s));
        s.teacher.base_url = Some("http://t:1/v1".into());
        assert!(
            !needs_simulated_teacher(&s),
            "judge defaults to the teacher"
        );
    }

    #[test]
    fn configs_are_pointed_at_the_local_teacher() {
        let s = spec();
        let ctx = StageContext {
            namespace: "local".into(),
            migration: "q".into(),
            round: 1,
            attempt: 1,
            artifacts: "file:///a".into(),
            max_row_bytes: crate::api::DEFAULT_MAX_ROW_BYTES,
        };
        let mut c = StageConfig::Synthesize(crate::api::SynthesizeConfig {
            context: ctx,
            task: s.task.clone(),
            coverage: s.coverage.clone(),
            teacher: s.teacher.clone(),
            synthesis: s.synthesis.clone(),
            samples: 4,
            token_budget: None,
        });
        point_at(&mut c, "http://127.0.0.1:9/v1");
        let StageConfig::Synthesize(c) = c else {
            unreachable!()
        };
        assert_eq!(c.teacher.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
    }

    #[test]
    fn the_ready_line_gives_the_address() {
        assert_eq!(
            base_url_of(r#"{"baseUrl": "http://127.0.0.1:4242/v1"}"#).as_deref(),
            Some("http://127.0.0.1:4242/v1")
        );
        assert_eq!(base_url_of("listening"), None);
    }

    #[tokio::test]
    async fn a_teacher_that_dies_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = SimulatedTeacher::start(Path::new("/bin/false"), &dir.path().join("t.log"))
            .await
            .err()
            .expect("fails");
        assert!(err.to_string().contains("t.log"), "{err}");
    }
}
