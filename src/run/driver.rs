//! The local control loop: observe -> [`plan`] -> [`apply`] -> write status -> act, until the
//! migration ends or the user stops it. The decisions are the operator's (`crate::plan`); only
//! the acting differs: a stage run is a child process that this loop waits for.

use anyhow::bail;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{LlamaDuoMigrationStatus, Progress};
use crate::plan::{
    Decision, Finish, MigrationId, Observation, apply, plan, progress_due, record_progress,
    run_to_observe,
};

use super::display::Display;
use super::executor::{LocalExecutor, RunEnd};
use super::manifest::LocalMigration;
use super::process::StopSignal;
use super::status_file::StatusFile;
use super::summary::stage_line;

/// How a call of [`drive`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// The migration ended during this call (Succeeded or Failed; see the status).
    Finished,
    /// The migration had already ended; nothing was done.
    AlreadyFinished,
    /// The user stopped the run; running it again resumes.
    Interrupted,
    /// `spec.suspend` is set.
    Suspended,
    /// Something outside the migration must change (the message says what).
    Stalled(String),
}

/// The result of [`drive`].
#[derive(Clone, Debug)]
pub struct Driven {
    /// How it ended.
    pub ending: Ending,
    /// The status as last written.
    pub status: LlamaDuoMigrationStatus,
    /// Whether this call wrote the status at least once.
    pub changed: bool,
}

/// Header comment of the status file.
pub fn status_header(m: &LocalMigration) -> String {
    format!(
        "Status of LlamaDuoMigration {}/{} run by `llamaduo run {}`.\nThe resource's status format; written by llamaduo run, do not edit while it runs.",
        m.namespace,
        m.name,
        m.path.display()
    )
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the migration from its recorded status until it ends or `stop` fires; `generation`
/// is the spec's local generation ([`super::generation`]).
pub async fn drive(
    m: &LocalMigration,
    id: &MigrationId,
    generation: i64,
    file: &StatusFile,
    exec: &mut LocalExecutor,
    display: &mut Display,
    stop: &mut StopSignal,
) -> anyhow::Result<Driven> {
    let mut status = file.load()?;
    let header = status_header(m);
    let generation = Some(generation);
    let mut changed = false;
    loop {
        if stop.is_stopped() {
            return interrupted(status, file, &header);
        }
        let run = run_to_observe(id, &m.spec, &status, generation);
        let observation = match &run {
            Some(r) => exec.observe(r),
            None => Observation::Missing,
        };
        let decision = plan(id, &m.spec, &status, generation, &observation);
        let next = apply(&status, &decision, generation, &now());
        if next != status {
            file.save(&next, &header)?;
            status = next;
            changed = true;
        }
        let ending = match decision {
            Decision::RecordResult { run, result } => {
                display.stage_ended(&stage_line(&run, &result));
                continue;
            }
            Decision::StartStage { run, config } => {
                let mut recorder = ProgressRecorder::new(&mut status, file, &header);
                let end = exec
                    .start(&run, *config, display, stop, &mut |p| recorder.record(p))
                    .await?;
                match end {
                    RunEnd::Exited => continue,
                    RunEnd::Interrupted => return interrupted(status, file, &header),
                }
            }
            Decision::Finish(f) => {
                display.line(&match &f {
                    Finish::Succeeded { round, mean_score } => format!(
                        "succeeded: round {round} reached the target with mean score {mean_score:.1}"
                    ),
                    Finish::Failed(reason) => format!("failed: {reason}"),
                });
                Ending::Finished
            }
            Decision::Idle => Ending::AlreadyFinished,
            Decision::Suspend => Ending::Suspended,
            Decision::Stall(s) => Ending::Stalled(format!("{}: {}", s.reason, s.message)),
            Decision::Wait { run } => {
                // The local executor waits for every run it starts, so a run can only be seen
                // running if another process started it.
                bail!(
                    "{} is reported running but this process did not start it",
                    run.name
                )
            }
        };
        return Ok(Driven {
            ending,
            status,
            changed,
        });
    }
}

/// How often `llamaduo run` writes a running stage's progress into status.yaml: often enough
/// for a watcher (`watch cat status.yaml`, a dashboard), rarely enough that a stage printing a
/// progress line per step does not turn into a file write per step.
pub const LOCAL_PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes progress lines into `status.current.progress` and status.yaml, at most once per
/// [`LOCAL_PROGRESS_INTERVAL`] (the first line at once).
struct ProgressRecorder<'a> {
    status: &'a mut LlamaDuoMigrationStatus,
    file: &'a StatusFile,
    header: &'a str,
}

impl<'a> ProgressRecorder<'a> {
    fn new(status: &'a mut LlamaDuoMigrationStatus, file: &'a StatusFile, header: &'a str) -> Self {
        Self {
            status,
            file,
            header,
        }
    }

    fn record(&mut self, progress: &Progress) {
        let now = now();
        if !progress_due(self.status, &now, LOCAL_PROGRESS_INTERVAL) {
            return;
        }
        record_progress(self.status, Some(progress), &now);
        if let Err(e) = self.file.save(self.status, self.header) {
            // Progress is advisory: the run goes on, the next write may succeed.
            tracing::warn!(error = %e, "could not write progress into the status file");
        }
    }
}

/// Records in the status file that this process stopped (the file would otherwise still say
/// "running" after the process is gone); the recorded run is kept, so a rerun resumes it.
fn interrupted(
    mut status: LlamaDuoMigrationStatus,
    file: &StatusFile,
    header: &str,
) -> anyhow::Result<Driven> {
    let what = status
        .message
        .as_deref()
        .map(|m| m.trim_end_matches('.').to_string())
        .unwrap_or_else(|| "the migration".into());
    status.message = Some(format!(
        "interrupted ({what}); run `llamaduo run` again with the same --workdir to resume"
    ));
    file.save(&status, header)?;
    Ok(Driven {
        ending: Ending::Interrupted,
        status,
        changed: true,
    })
}
