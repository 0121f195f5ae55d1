//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! act at once.
//!
//! The lease is taken or renewed with a `replace` carrying the `resourceVersion` that was read,
//! so of two replicas racing for it the API server accepts exactly one (the other gets 409
//! Conflict). A holder that stops renewing loses the lease after `leaseDurationSeconds`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

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

/// Decide, purely, what to do with `lease` as `me` at `now`.
pub fn lease_step(lease: Option<&Lease>, me: &str, now: Timestamp) -> LeaseStep {
    let Some(lease) = lease else {
        return LeaseStep::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseStep::Renew,
        None | Some("") => LeaseStep::TakeOver,
        Some(holder) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .or(spec.acquire_time)
                .map_or(0, |t| t.0.as_second());
            if renewed + duration < now.as_second() {
                LeaseStep::TakeOver
            } else {
                LeaseStep::Wait {
                    holder: holder.to_string(),
                }
            }
        }
    }
}

/// Takes and renews one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
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
        }
    }

    /// How often to renew (a third of the lease duration).
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Try once to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = lease_step(current.as_ref(), &self.identity, now);
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

    /// Block until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "leader election failed"),
            }
            tokio::time::sleep(self.renew_interval()).await;
        }
    }

    /// Renew until a renewal has not succeeded for a whole lease duration (another replica
    /// may then hold it), then return: the caller must stop acting.
    pub async fn keep_renewing(&self) {
        let mut last_success = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_interval()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_success = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "lost the leader lease to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "renewing the leader lease failed")
                }
            }
            if last_success.elapsed() >= self.duration {
                tracing::error!(lease = %self.name, "could not renew the leader lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
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
        let now = Timestamp::from_second(1_000).expect("ts");
        assert_eq!(lease_step(None, "a", now), LeaseStep::Create);
        assert_eq!(
            lease_step(Some(&lease(Some("a"), 995)), "a", now),
            LeaseStep::Renew
        );
        assert_eq!(
            lease_step(Some(&lease(Some("b"), 995)), "a", now),
            LeaseStep::Wait { holder: "b".into() }
        );
        assert_eq!(
            lease_step(Some(&lease(Some("b"), 980)), "a", now),
            LeaseStep::TakeOver
        );
        assert_eq!(
            lease_step(Some(&lease(None, 999)), "a", now),
            LeaseStep::TakeOver
        );
    }
}
