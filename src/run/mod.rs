//! `llamaduo run FILE.yaml`: the whole migration on one machine.
//!
//! The same manifest and the same decisions (`crate::plan`) as the operator; stage runs are
//! `llamaduo-trainer <stage>` child processes, status lives in `DIR/status.yaml` in the
//! resource's status format, and running the command again resumes where it stopped. Work
//! directory layout:
//!
//! ```text
//! DIR/status.yaml                      the status (atomic writes)
//! DIR/artifacts/{namespace}/{name}/    the artifacts (§5 layout) unless spec.storage is set
//! DIR/runs/{run}.log|.result.json|.config.json   each stage run's output, result and config
//! DIR/report.html, DIR/report.png      score and tokens per round, best model
//! ```

mod display;
mod driver;
mod executor;
mod generation;
mod manifest;
mod process;
mod report;
mod status_file;
mod summary;
mod teacher;
mod trainer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::api::{LlamaDuoMigrationStatus, Phase};
use crate::plan::MigrationId;

pub use display::Mode;
pub use driver::{Driven, Ending, drive};
pub use executor::{ExecutorConfig, LocalExecutor, RunEnd};
pub use manifest::{LOCAL_NAMESPACE, LocalMigration, ManifestError, parse as parse_manifest};
pub use process::{StopHandle, StopSignal, forward_signals, stop_channel};
pub use report::{render_html, render_png, write_reports};
pub use status_file::{STATUS_FILE, StatusFile};
pub use summary::rounds_table;
pub use trainer::{TRAINER_ENV, find_trainer, secret_env_names};

const AFTER_HELP: &str = "\
API keys: stage processes get the teacher's key as LLAMADUO_TEACHER_API_KEY and the judge's as
LLAMADUO_JUDGE_API_KEY (the judge defaults to the teacher's key). Export those, or a variable named
after the provider's apiKeySecretRef: {name: openai, key: api-key} is looked up as OPENAI_API_KEY,
then OPENAI. Keys are passed to the stage processes only, never written or logged.

A simulated teacher or judge without baseUrl is served by `llamaduo-trainer simulate-teacher` on a
free 127.0.0.1 port for the duration of the run.

Ctrl-C stops the running stage (SIGTERM, SIGKILL after --grace-seconds) and keeps the status;
running the same command again resumes. Exit status: 0 succeeded (or suspended), 1 failed,
2 stalled (the message says what to change), 130 interrupted.";

/// Arguments of `llamaduo run`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = AFTER_HELP)]
pub struct RunArgs {
    /// The LlamaDuoMigration manifest: the same YAML the operator takes (spec.storage may be
    /// omitted; relative file:// paths are relative to the manifest).
    pub file: PathBuf,
    /// Work directory: status.yaml, artifacts/, runs/ (stage logs and results), report.html
    /// and report.png. Default: ./llamaduo-runs/NAME.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Print the final status as JSON on stdout; events go to stderr, without progress bars.
    #[arg(long)]
    pub json: bool,
    /// Seconds a stage process gets to exit after SIGTERM on Ctrl-C before it is killed.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub grace_seconds: u64,
    /// The llamaduo-trainer binary. Default: next to llamaduo, else on PATH.
    #[arg(long, env = TRAINER_ENV, value_name = "PATH")]
    pub trainer: Option<PathBuf>,
}

/// Runs `llamaduo run`; see [`RunArgs`].
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mode = if args.json {
        Mode::Json
    } else {
        Mode::Terminal
    };
    let (handle, stop) = stop_channel();
    tokio::spawn(forward_signals(handle));
    let done = run_with(&args, mode, stop).await?;
    Ok(ExitCode::from(done.exit_code()))
}

/// What a finished `llamaduo run` knows.
#[derive(Debug)]
pub struct Finished {
    /// The migration run.
    pub migration: LocalMigration,
    /// The work directory (absolute).
    pub workdir: PathBuf,
    /// How it ended.
    pub driven: Driven,
}

impl Finished {
    /// The process exit status: 0 succeeded or suspended, 1 failed, 2 stalled, 130 interrupted.
    pub fn exit_code(&self) -> u8 {
        match (&self.driven.ending, self.driven.status.phase) {
            (Ending::Interrupted, _) => 130,
            (Ending::Stalled(_), _) => 2,
            (Ending::Suspended, _) => 0,
            (_, Some(Phase::Succeeded)) => 0,
            _ => 1,
        }
    }
}

/// [`run`] with the display mode and stop signal given (tests drive it directly).
pub async fn run_with(
    args: &RunArgs,
    mode: Mode,
    mut stop: StopSignal,
) -> anyhow::Result<Finished> {
    let migration = manifest::load(&args.file)?;
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => Path::new("llamaduo-runs").join(&migration.name),
    };
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("creating the work directory {}", workdir.display()))?;
    let workdir = std::path::absolute(&workdir)?;
    let _lock = lock(&workdir)?;
    let id = MigrationId::new(&migration.namespace, &migration.name)
        .with_default_storage(format!("file://{}", workdir.join("artifacts").display()));
    let file = StatusFile::in_dir(&workdir);
    let mut display = display::Display::new(mode);
    display.line(&format!(
        "llamaduo run {}/{} in {}",
        migration.namespace,
        migration.name,
        workdir.display()
    ));
    let mut exec = LocalExecutor::new(
        ExecutorConfig {
            workdir: workdir.clone(),
            trainer: args.trainer.clone(),
            grace: Duration::from_secs(args.grace_seconds),
        },
        migration.spec.clone(),
    )?;
    let generation = generation::spec_generation(&workdir, &migration.spec).with_context(|| {
        format!(
            "recording the spec's generation in {}",
            workdir.join(generation::GENERATION_FILE).display()
        )
    })?;
    let driven = drive(
        &migration,
        &id,
        generation,
        &file,
        &mut exec,
        &mut display,
        &mut stop,
    )
    .await;
    exec.shutdown().await;
    let driven = driven?;
    let reports = report::paths(&workdir);
    if driven.changed || !reports.0.exists() || !reports.1.exists() {
        write_reports(&migration, &driven.status, &workdir)?;
    }
    let finished = Finished {
        migration,
        workdir,
        driven,
    };
    match mode {
        Mode::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json_summary(&finished))?
        ),
        Mode::Terminal => print_summary(&finished, &display),
        Mode::Silent => {}
    }
    Ok(finished)
}

/// Holds the work directory's lock for the life of the returned file.
fn lock(workdir: &Path) -> anyhow::Result<File> {
    let path = workdir.join(".lock");
    let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `llamaduo run` is using {}; wait for it or stop it first",
            workdir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The filesystem path of a `file://` URI (other URIs unchanged).
pub fn display_uri(uri: &str) -> String {
    uri.strip_prefix("file://").unwrap_or(uri).to_string()
}

fn ending_name(e: &Ending) -> &'static str {
    match e {
        Ending::Finished => "finished",
        Ending::AlreadyFinished => "alreadyFinished",
        Ending::Interrupted => "interrupted",
        Ending::Suspended => "suspended",
        Ending::Stalled(_) => "stalled",
    }
}

/// The `--json` document.
pub fn json_summary(f: &Finished) -> serde_json::Value {
    let (html, png) = report::paths(&f.workdir);
    let status: &LlamaDuoMigrationStatus = &f.driven.status;
    json!({
        "name": f.migration.name,
        "namespace": f.migration.namespace,
        "workdir": f.workdir,
        "ending": ending_name(&f.driven.ending),
        "stalled": match &f.driven.ending { Ending::Stalled(m) => Some(m), _ => None },
        "exitCode": f.exit_code(),
        "bestModel": status.best.as_ref().map(|b| display_uri(&b.model_uri)),
        "report": {"html": html, "png": png},
        "status": status,
    })
}

fn print_summary(f: &Finished, display: &display::Display) {
    let s = &f.driven.status;
    match &f.driven.ending {
        Ending::AlreadyFinished => display.line(&format!(
            "the migration in {} already ended (phase {:?}); nothing to do. A finished migration stays finished: to run it again with changed settings, use a new --workdir",
            f.workdir.display(),
            s.phase.unwrap_or_default()
        )),
        Ending::Interrupted => display.line(&format!(
            "stopped; run `llamaduo run {} --workdir {}` again to resume",
            f.migration.path.display(),
            f.workdir.display()
        )),
        Ending::Suspended => display.line("spec.suspend is set: no stage was started"),
        Ending::Stalled(m) => display.line(&format!("stalled: {m}")),
        Ending::Finished => {}
    }
    if !s.rounds.is_empty() {
        display.line("");
        display.line(rounds_table(s).trim_end());
    }
    display.line("");
    if let Some(m) = &s.message {
        display.line(&format!("{:?}: {m}", s.phase.unwrap_or_default()));
    }
    if let Some(b) = &s.best {
        display.line(&format!(
            "best model: round {} (mean score {:.1}) at {}",
            b.round,
            b.mean_score,
            display_uri(&b.model_uri)
        ));
    }
    let (html, png) = report::paths(&f.workdir);
    display.line(&format!("report: {} and {}", html.display(), png.display()));
}
