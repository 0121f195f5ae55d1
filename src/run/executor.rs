//! The local executor: a stage run is a `llamaduo-trainer <stage>` child process, observed
//! through the result file it writes (`DIR/runs/{run}.result.json`) and its exit status.
//!
//! The result file is the record: a run with a result file has finished, whoever started it
//! and whenever. A run without one is `Missing` and is started again under the same name
//! (the stages resume from what they already stored), unless this process saw it exit, in
//! which case it failed. A run interrupted by Ctrl-C leaves no result, so a rerun repeats the
//! same attempt instead of counting a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::api::{RESULT_PATH_ENV, STAGE_CONFIG_ENV, StageConfig, StageResult, StageRun};
use crate::plan::Observation;

use super::display::Display;
use super::process::{StopSignal, child_command, run_child};
use super::teacher::{SimulatedTeacher, needs_simulated_teacher, point_at};
use super::trainer::{api_keys, find_trainer};
use crate::api::Progress;

/// How a started stage run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// It exited; observe it for the result.
    Exited,
    /// A stop request terminated it; its result (if any) was discarded.
    Interrupted,
}

/// Settings of the local executor.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// The work directory.
    pub workdir: PathBuf,
    /// The trainer binary; found on first use when unset (see [`find_trainer`]).
    pub trainer: Option<PathBuf>,
    /// Time a stage gets between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// Runs stage runs as child processes.
pub struct LocalExecutor {
    config: ExecutorConfig,
    spec: crate::api::LlamaDuoMigrationSpec,
    runs_dir: PathBuf,
    trainer: Option<PathBuf>,
    keys: Option<Vec<(&'static str, String)>>,
    teacher: Option<SimulatedTeacher>,
    exits: HashMap<String, Option<String>>,
}

impl LocalExecutor {
    /// An executor for `spec` working in `config.workdir` (creates `runs/` there).
    pub fn new(
        config: ExecutorConfig,
        spec: crate::api::LlamaDuoMigrationSpec,
    ) -> anyhow::Result<Self> {
        let runs_dir = config.workdir.join("runs");
        std::fs::create_dir_all(&runs_dir)
            .with_context(|| format!("creating {}", runs_dir.display()))?;
        Ok(Self {
            trainer: config.trainer.clone(),
            config,
            spec,
            runs_dir,
            keys: None,
            teacher: None,
            exits: HashMap::new(),
        })
    }

    /// Where a run's result goes.
    pub fn result_path(&self, run: &StageRun) -> PathBuf {
        self.runs_dir.join(format!("{}.result.json", run.name))
    }

    /// Where a run's output goes.
    pub fn log_path(&self, run: &StageRun) -> PathBuf {
        self.runs_dir.join(format!("{}.log", run.name))
    }

    /// What is known of `run`.
    pub fn observe(&self, run: &StageRun) -> Observation {
        let path = self.result_path(run);
        let exit = self.exits.get(&run.name);
        let failed_exit = exit.and_then(|e| e.clone());
        match std::fs::read_to_string(&path) {
            Ok(text) => match StageResult::from_json(&text) {
                Ok(r) if r.succeeded && failed_exit.is_none() => Observation::Succeeded(r),
                Ok(r) => Observation::Failed {
                    reason: failed_exit
                        .or_else(|| r.message.clone())
                        .unwrap_or_else(|| format!("{} failed without a reason", run.stage)),
                    result: Some(r),
                },
                Err(e) => Observation::Failed {
                    reason: format!("its result {} is not valid: {e}", path.display()),
                    result: None,
                },
            },
            Err(_) => match exit {
                None => missing_local_input(&self.spec, run).unwrap_or(Observation::Missing),
                Some(reason) => Observation::Failed {
                    reason: format!(
                        "{} wrote no result to {}; see {}",
                        reason.as_deref().unwrap_or("exited with status 0 but"),
                        path.display(),
                        self.log_path(run).display()
                    ),
                    result: None,
                },
            },
        }
    }

    /// Runs `run` with `config` to its end, showing its progress and handing every progress
    /// line to `on_progress` (which records it in status.yaml).
    pub async fn start(
        &mut self,
        run: &StageRun,
        mut config: StageConfig,
        display: &mut Display,
        stop: &mut StopSignal,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> anyhow::Result<RunEnd> {
        let trainer = match &self.trainer {
            // An explicit --trainer / LLAMADUO_TRAINER must be an executable file.
            Some(t) => {
                super::trainer::find_trainer_in(Some(t.clone().into_os_string()), None, None)?
            }
            None => {
                let t = find_trainer()?;
                self.trainer = Some(t.clone());
                t
            }
        };
        let keys = match &self.keys {
            Some(k) => k.clone(),
            None => {
                let k = api_keys(&self.spec, |name| std::env::var(name).ok())?;
                self.keys = Some(k.clone());
                k
            }
        };
        if needs_simulated_teacher(&self.spec) && !matches!(config, StageConfig::Train(_)) {
            if self.teacher.is_none() {
                display.line("starting simulate-teacher (the offline teacher) on 127.0.0.1");
                let log = self.runs_dir.join("simulate-teacher.log");
                self.teacher = Some(SimulatedTeacher::start(&trainer, &log).await?);
            }
            if let Some(t) = &self.teacher {
                point_at(&mut config, t.base_url());
            }
        }
        let result_path = self.result_path(run);
        match std::fs::remove_file(&result_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", result_path.display())),
        }
        let json = serde_json::to_string(&config).context("serializing the stage config")?;
        let config_path = self.runs_dir.join(format!("{}.config.json", run.name));
        std::fs::write(&config_path, &json)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = child_command(&trainer);
        cmd.arg(run.stage.as_str())
            .env(STAGE_CONFIG_ENV, &json)
            .env(RESULT_PATH_ENV, &result_path);
        for (name, value) in &keys {
            cmd.env(name, value);
        }
        display.stage_started(run);
        let log = self.log_path(run);
        let end = run_child(
            cmd,
            &log,
            |line| {
                if let Some(p) = Progress::from_line(line) {
                    display.progress(&p);
                    on_progress(&p);
                }
            },
            stop,
            self.config.grace,
        )
        .await
        .with_context(|| format!("running {} {}", trainer.display(), run.stage))?;
        if end.interrupted {
            // The run did not finish: whatever it wrote on its way out is not its result.
            let _ = std::fs::remove_file(&result_path);
            display.stage_ended(&format!(
                "  round {} {}: stopped ({}); run again to resume",
                run.round, run.stage, run.name
            ));
            return Ok(RunEnd::Interrupted);
        }
        let failure = (!end.status.success()).then(|| end.describe());
        self.exits.insert(run.name.clone(), failure);
        Ok(RunEnd::Exited)
    }

    /// Stops the simulated teacher, if one was started.
    pub async fn shutdown(&mut self) {
        if let Some(t) = self.teacher.take() {
            t.stop().await;
        }
    }

    /// The runs directory.
    pub fn runs_dir(&self) -> &Path {
        &self.runs_dir
    }
}

/// Blocked when a local file the run reads does not exist, as the operator blocks on a
/// missing Secret: a wrong path is then one clear message instead of a stage failing its
/// retries. Coverage is read (and frozen into the artifacts) in the first round only (0 or
/// 1), so later rounds do not need the source any more; a local base model is read by every
/// train and evaluate.
fn missing_local_input(
    spec: &crate::api::LlamaDuoMigrationSpec,
    run: &StageRun,
) -> Option<Observation> {
    let mut inputs: Vec<(&str, &str)> = Vec::new();
    if run.round <= 1 {
        inputs.push(("spec.coverage.source", spec.coverage.source.as_str()));
        if let Some(t) = &spec.coverage.test_source {
            inputs.push(("spec.coverage.testSource", t.as_str()));
        }
    }
    if matches!(
        run.stage,
        crate::api::Stage::Train | crate::api::Stage::Evaluate
    ) && let Some(base) = &spec.student.base_model
    {
        inputs.push(("spec.student.baseModel", base.as_str()));
    }
    inputs.into_iter().find_map(|(field, url)| {
        let path = Path::new(url.strip_prefix("file://")?);
        (!path.exists()).then(|| Observation::Blocked {
            reason: "LocalFileNotFound".into(),
            message: format!(
                "{field} {url}: {} does not exist; fix the path (a relative file:// URL is resolved against the manifest's directory)",
                path.display()
            ),
        })
    })
}
