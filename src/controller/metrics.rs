//! Prometheus metrics of the operator: reconcile counts, durations and failures, decisions,
//! and per-migration round, best score and service tokens.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::LlamaDuoMigrationStatus;

/// Labels naming a migration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error variant ([`super::Error::reason`]).
    pub error: String,
}

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// [`crate::plan::Decision::kind`].
    pub decision: String,
}

/// Whether a migration (namespace, name) still exists.
type Exists = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// All operator metrics, registered in one registry served at /metrics.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    reconciliations: Counter,
    failures: Family<ErrorLabels, Counter>,
    stale_writes: Counter,
    duration: Histogram,
    decisions: Family<DecisionLabels, Counter>,
    round: Family<MigrationLabels, Gauge>,
    best_score: Family<MigrationLabels, Gauge<f64, AtomicU64>>,
    tokens: Family<MigrationLabels, Gauge>,
    /// The migrations that have per-migration series.
    tracked: Mutex<HashSet<MigrationLabels>>,
    /// Set once the operator's cache of migrations is complete (see [`Self::prune_with`]).
    exists: OnceLock<Exists>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("llamaduo");
        let reconciliations = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let stale_writes = Counter::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let decisions = Family::<DecisionLabels, Counter>::default();
        let round = Family::<MigrationLabels, Gauge>::default();
        let best_score = Family::<MigrationLabels, Gauge<f64, AtomicU64>>::default();
        let tokens = Family::<MigrationLabels, Gauge>::default();
        registry.register("reconciliations", "Reconciles run", reconciliations.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error",
            failures.clone(),
        );
        registry.register(
            "stale_status_writes",
            "Status writes the API server refused because the migration changed since the \
             read they were decided from (requeued, not failures)",
            stale_writes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register("decisions", "Decisions taken by plan()", decisions.clone());
        registry.register(
            "migration_round",
            "Current round of a migration",
            round.clone(),
        );
        registry.register(
            "migration_best_score",
            "Best mean score of a migration",
            best_score.clone(),
        );
        registry.register(
            "migration_service_tokens",
            "Service LLM tokens a migration spent",
            tokens.clone(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            stale_writes,
            duration,
            decisions,
            round,
            best_score,
            tokens,
            tracked: Mutex::default(),
            exists: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Count one reconcile and its duration.
    pub fn reconciled(&self, seconds: f64) {
        self.reconciliations.inc();
        self.duration.observe(seconds);
    }

    /// Count a failed reconcile.
    pub fn failed(&self, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.into(),
            })
            .inc();
    }

    /// Count a status write refused as stale (409 Conflict on its resourceVersion).
    pub fn stale_status_write(&self) {
        self.stale_writes.inc();
    }

    /// Count a decision.
    pub fn decided(&self, kind: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: kind.into(),
            })
            .inc();
    }

    /// Publish a migration's progress.
    pub fn migration(&self, namespace: &str, name: &str, status: &LlamaDuoMigrationStatus) {
        let labels = MigrationLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.round
            .get_or_create(&labels)
            .set(i64::from(status.round));
        if let Some(best) = &status.best {
            self.best_score.get_or_create(&labels).set(best.mean_score);
        }
        self.tokens
            .get_or_create(&labels)
            .set(i64::try_from(status.service_tokens.total()).unwrap_or(i64::MAX));
        if let Ok(mut tracked) = self.tracked.lock() {
            tracked.insert(labels);
        }
    }

    /// From now on every [`Self::encode`] first drops the series of migrations `exists` no
    /// longer knows. A deleted migration is never reconciled again (no finalizer), so without
    /// this its round, score and tokens would be scraped forever and pile up with churn.
    pub fn prune_with(&self, exists: impl Fn(&str, &str) -> bool + Send + Sync + 'static) {
        let _ = self.exists.set(Box::new(exists));
    }

    fn prune(&self) {
        let (Some(exists), Ok(mut tracked)) = (self.exists.get(), self.tracked.lock()) else {
            return;
        };
        tracked.retain(|l| {
            let keep = exists(&l.namespace, &l.name);
            if !keep {
                self.round.remove(l);
                self.best_score.remove(l);
                self.tokens.remove(l);
            }
            keep
        });
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.prune();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn status(round: u32) -> LlamaDuoMigrationStatus {
        LlamaDuoMigrationStatus {
            round,
            ..LlamaDuoMigrationStatus::default()
        }
    }

    #[test]
    fn series_of_deleted_migrations_are_dropped_once_the_cache_is_complete() {
        let m = Metrics::default();
        m.migration("team-a", "kept", &status(2));
        m.migration("team-a", "deleted", &status(3));
        let text = m.encode().expect("encode");
        assert!(
            text.contains("name=\"deleted\""),
            "nothing pruned before the cache is ready"
        );
        let deleted_exists = Arc::new(AtomicBool::new(true));
        let flag = deleted_exists.clone();
        m.prune_with(move |ns, name| {
            ns == "team-a" && (name == "kept" || flag.load(Ordering::Relaxed))
        });
        assert!(m.encode().expect("encode").contains("name=\"deleted\""));
        deleted_exists.store(false, Ordering::Relaxed);
        let text = m.encode().expect("encode");
        assert!(!text.contains("name=\"deleted\""), "{text}");
        assert!(
            text.contains("llamaduo_migration_round{namespace=\"team-a\",name=\"kept\"} 2"),
            "{text}"
        );
        // A migration created again under the same name is published again.
        deleted_exists.store(true, Ordering::Relaxed);
        m.migration("team-a", "deleted", &status(1));
        assert!(m.encode().expect("encode").contains("name=\"deleted\"} 1"));
    }
}
