//! Live progress of the stage run in flight, in `status.current.progress`: when the executor
//! should read it again, and how a reading lands in the status. Pure, like the rest of the
//! planner; the operator reads the pod log and the local runner the process's stdout.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{LlamaDuoMigrationStatus, Progress, RunProgress};

/// Whether the run in flight should have its progress read at `now`: there is one, and its
/// progress was never read or was read `interval` ago or longer. A zero interval turns
/// reading off. This is what bounds progress reads and the status writes they cause to one
/// per migration per interval, whatever wakes the reconciler.
pub fn progress_due(status: &LlamaDuoMigrationStatus, now: &Time, interval: Duration) -> bool {
    if interval.is_zero() {
        return false;
    }
    let Some(current) = &status.current else {
        return false;
    };
    match &current.progress {
        None => true,
        Some(p) => {
            let age = now.0.as_second() - p.observed_time.0.as_second();
            age < 0 || age as u64 >= interval.as_secs()
        }
    }
}

/// Records `progress` (read at `now`) on the run in flight; nothing when no run is in flight.
/// `None` (no progress line yet, an unreadable log, a pod that is gone) keeps what the status
/// already says, so a transient read failure never erases a good figure.
pub fn record_progress(
    status: &mut LlamaDuoMigrationStatus,
    progress: Option<&Progress>,
    now: &Time,
) {
    if let (Some(current), Some(p)) = (status.current.as_mut(), progress) {
        current.progress = Some(RunProgress::new(p, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Stage, StageRun};

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("time"))
    }

    fn running() -> LlamaDuoMigrationStatus {
        LlamaDuoMigrationStatus {
            current: Some(StageRun {
                round: 1,
                stage: Stage::Train,
                attempt: 1,
                name: "m-r1-train".into(),
                generation: Some(1),
                progress: None,
            }),
            ..LlamaDuoMigrationStatus::default()
        }
    }

    fn step(done: u64) -> Progress {
        Progress {
            done,
            total: Some(100),
            unit: Some("steps".into()),
            ..Progress::default()
        }
    }

    #[test]
    fn reads_are_due_once_per_interval_and_only_while_a_run_is_in_flight() {
        let every = Duration::from_secs(30);
        let mut s = running();
        assert!(progress_due(&s, &at(1000), every), "never read");
        record_progress(&mut s, Some(&step(10)), &at(1000));
        assert!(!progress_due(&s, &at(1029), every));
        assert!(progress_due(&s, &at(1030), every));
        // A clock that went back (another operator replica) reads again rather than never.
        assert!(progress_due(&s, &at(900), every));
        assert!(
            !progress_due(&s, &at(5000), Duration::ZERO),
            "0 turns it off"
        );
        assert!(!progress_due(
            &LlamaDuoMigrationStatus::default(),
            &at(1000),
            every
        ));
    }

    #[test]
    fn a_failed_read_keeps_the_last_figures() {
        let mut s = running();
        record_progress(&mut s, Some(&step(40)), &at(1000));
        record_progress(&mut s, None, &at(1060));
        let p = s
            .current
            .as_ref()
            .and_then(|c| c.progress.clone())
            .expect("kept");
        assert_eq!((p.done, p.percent), (40, Some(40)));
        assert_eq!(p.observed_time, at(1000));
        // No run in flight: nothing to record on.
        let mut idle = LlamaDuoMigrationStatus::default();
        record_progress(&mut idle, Some(&step(1)), &at(1));
        assert!(idle.current.is_none());
    }
}
