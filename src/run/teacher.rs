//! The offline teacher of a local run: when the teacher or judge is `simulated` without a
//! `baseUrl`, `llamaduo run` starts `llamaduo-trainer simulate-teacher --port P` on a free
//! loopback port, points the stage configs at `http://127.0.0.1:P/v1`, and stops it at the end.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::api::{LlamaDuoMigrationSpec, ProviderKind, ProviderSpec, StageConfig};

use super::process::{child_command, terminate};

/// How long the teacher may take to accept connections.
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
    /// Starts `trainer simulate-teacher --port P` on a free loopback port and waits until it
    /// accepts connections. Its output goes to `log`.
    pub async fn start(trainer: &Path, log: &Path) -> anyhow::Result<Self> {
        let port = free_port().context("reserving a loopback port for simulate-teacher")?;
        let mut cmd = child_command(trainer);
        cmd.arg("simulate-teacher")
            .arg("--port")
            .arg(port.to_string());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} simulate-teacher", trainer.display()))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let mut file = log_file.try_clone()?;
            tokio::spawn(async move {
                use std::io::Write;
                let mut lines = tokio::io::BufReader::new(stream).split(b'\n');
                while let Ok(Some(l)) = lines.next_segment().await {
                    let _ = writeln!(file, "{}", String::from_utf8_lossy(&l));
                }
            });
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "simulate-teacher exited with {status} before accepting connections; see {}",
                    log.display()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = terminate(&mut child, Duration::from_secs(2)).await;
                bail!(
                    "simulate-teacher did not accept connections on {addr} within {}s; see {}",
                    READY_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            child,
            base_url: format!("http://{addr}/v1"),
        })
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

/// A loopback port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
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
