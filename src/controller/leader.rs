//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! act at once.
//!
//! The lease is taken or renewed with a `replace` carrying the `resourceVersion` that was read,
//! so of two replicas racing for it the API server accepts exactly one (the other gets 409
//! Conflict). Like client-go's elector, no replica compares another's clock with its own:
//! - a candidate takes the lease over only when the lease record (its `resourceVersion`) has
//!   not changed for `leaseDurationSeconds` *as measured on the candidate's own monotonic
//!   clock* since it first saw that record, so clock skew between nodes cannot make it steal a
//!   live lease;
//! - the holder stops acting when no renewal has succeeded within the renew deadline (two
//!   thirds of the lease duration) counted from when the last successful request was *sent*,
//!   which is before the API server stamped the record a candidate measures from: the holder
//!   always gives up before any candidate may take over. Every request has that deadline as
//!   its timeout, so a hung connection cannot keep a stale leader acting.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

/// What to do with the lease, given what was read.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Wait {
        /// The current holder.
        holder: String,
    },
}

/// A lease record as a candidate last saw it: its `resourceVersion` and when (on the
/// candidate's clock) that version was first seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRecord {
    /// The lease's `metadata.resourceVersion` (changes on every write, renewals included).
    pub resource_version: String,
    /// When this replica first saw that version.
    pub since: Instant,
}

/// Decide, purely, what to do with `lease` as `me` at `now` (this replica's monotonic clock),
/// given what was seen before. Returns the step and the record to remember.
pub fn lease_step(
    lease: Option<&Lease>,
    me: &str,
    seen: Option<&SeenRecord>,
    now: Instant,
) -> (LeaseStep, Option<SeenRecord>) {
    let Some(lease) = lease else {
        return (LeaseStep::Create, None);
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    let record = match seen {
        Some(s) if s.resource_version == version => s.clone(),
        _ => SeenRecord {
            resource_version: version,
            since: now,
        },
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let step = match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseStep::Renew,
        None | Some("") => LeaseStep::TakeOver,
        Some(holder) => {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
            );
            if now.saturating_duration_since(record.since) >= duration {
                LeaseStep::TakeOver
            } else {
                LeaseStep::Wait {
                    holder: holder.to_string(),
                }
            }
        }
    };
    (step, Some(record))
}

/// Takes and renews one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease record last seen while waiting for it.
    seen: Mutex<Option<SeenRecord>>,
}

impl LeaderElector {
    /// An elector for Lease `name` in `api`'s namespace, holding it as `identity` for
    /// `duration` per renewal.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            seen: Mutex::new(None),
        }
    }

    /// How often to renew or retry: client-go's 2 s for the default 15 s lease.
    pub fn retry_period(&self) -> Duration {
        self.duration * 2 / 15
    }

    /// How long the holder may go without a successful renewal before it stops acting: two
    /// thirds of the lease (client-go's 10 s of 15 s).
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Try once to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = {
            let mut seen = match self.seen.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let (step, record) = lease_step(
                current.as_ref(),
                &self.identity,
                seen.as_ref(),
                Instant::now(),
            );
            *seen = record;
            step
        };
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let result = match step {
            LeaseStep::Wait { holder } => {
                tracing::debug!(%holder, lease = %self.name, "another replica leads");
                return Ok(false);
            }
            LeaseStep::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            LeaseStep::Renew | LeaseStep::TakeOver => {
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if step == LeaseStep::TakeOver {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // metadata.resourceVersion is kept: the write fails with 409 if anyone wrote
                // the lease since we read it.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt bounded by `limit`: a request that hangs counts as failed.
    async fn attempt(&self, limit: Duration) -> Result<bool, String> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Block until this replica holds the lease; returns when the successful request was sent
    /// (the start of the first renew deadline).
    pub async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.attempt(self.renew_deadline()).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                    return sent;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "leader election failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renew every retry period until the lease is lost or no renewal succeeded within the
    /// renew deadline of the last successful one (sent at `renewed`), then return: the caller
    /// must stop acting at once.
    pub async fn keep_renewing(&self, mut renewed: Instant) {
        loop {
            tokio::time::sleep(self.retry_period()).await;
            let sent = Instant::now();
            let deadline = renewed + self.renew_deadline();
            if sent >= deadline {
                break;
            }
            match self.attempt(deadline - sent).await {
                Ok(true) => renewed = sent,
                Ok(false) => {
                    tracing::error!(lease = %self.name, "lost the leader lease to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "renewing the leader lease failed")
                }
            }
        }
        tracing::error!(
            lease = %self.name,
            deadline = ?self.renew_deadline(),
            "could not renew the leader lease within the renew deadline"
        );
    }

    /// Hands the lease back on a clean shutdown (holder cleared, 1 s duration), so another
    /// replica takes over at once instead of after a whole lease duration.
    pub async fn release(&self) {
        let result = tokio::time::timeout(self.renew_deadline(), async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "released the leader lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %self.name, "releasing the leader lease failed")
            }
            Err(_) => tracing::warn!(lease = %self.name, "releasing the leader lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, version: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("ts"))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn lease_steps() {
        let t0 = Instant::now();
        assert_eq!(lease_step(None, "a", None, t0).0, LeaseStep::Create);
        let (step, _) = lease_step(Some(&lease(Some("a"), "1", 995)), "a", None, t0);
        assert_eq!(step, LeaseStep::Renew);
        let (step, _) = lease_step(Some(&lease(None, "1", 999)), "a", None, t0);
        assert_eq!(step, LeaseStep::TakeOver);
    }

    #[test]
    fn takeover_waits_a_lease_duration_on_the_candidates_own_clock() {
        let t0 = Instant::now();
        // A renewTime far in the past (a holder whose clock is behind, or a crashed one) is
        // not enough: the candidate first has to watch the record stay unchanged.
        let held = lease(Some("b"), "7", 0);
        let (step, seen) = lease_step(Some(&held), "a", None, t0);
        assert_eq!(step, LeaseStep::Wait { holder: "b".into() });
        let seen = seen.expect("record");
        assert_eq!(seen.since, t0);
        let (step, seen) = lease_step(Some(&held), "a", Some(&seen), t0 + Duration::from_secs(14));
        assert_eq!(step, LeaseStep::Wait { holder: "b".into() });
        let seen = seen.expect("record");
        assert_eq!(seen.since, t0, "same record, same first sighting");
        let (step, _) = lease_step(Some(&held), "a", Some(&seen), t0 + Duration::from_secs(15));
        assert_eq!(step, LeaseStep::TakeOver);

        // A renewal (new resourceVersion) restarts the wait, whatever its renewTime says: a
        // holder whose clock runs 10 minutes behind keeps its lease.
        let renewed = lease(Some("b"), "8", -600);
        let (step, seen) = lease_step(
            Some(&renewed),
            "a",
            Some(&seen),
            t0 + Duration::from_secs(15),
        );
        assert_eq!(step, LeaseStep::Wait { holder: "b".into() });
        assert_eq!(seen.expect("record").since, t0 + Duration::from_secs(15));
    }

    #[tokio::test]
    async fn the_holder_gives_up_before_a_candidate_may_take_over() {
        let api: Api<Lease> = Api::namespaced(
            kube::Client::try_from(kube::Config::new(
                "http://127.0.0.1:1".parse().expect("url"),
            ))
            .expect("client"),
            "ns",
        );
        let e = LeaderElector::new(api, "l", "a", Duration::from_secs(15));
        assert_eq!(e.retry_period(), Duration::from_secs(2));
        assert_eq!(e.renew_deadline(), Duration::from_secs(10));
        assert!(e.renew_deadline() + e.retry_period() < Duration::from_secs(15));
    }
}
