//! The Kubernetes operator (`llamaduo operator`): watches `LlamaDuoMigration`s and the Jobs
//! they own, and per reconcile observes the current stage run, asks [`crate::plan::plan`]
//! what to do, and acts (status first, then the Job, then an Event).
//!
//! When `spec.serving.enabled` and the migration has succeeded, it also runs the best model
//! behind an OpenAI-compatible Deployment and Service ([`serving`]), watching the Deployments
//! it owns.
//!
//! Around the loop: leader election through a Lease, `/metrics`, `/healthz` and `/readyz` on
//! one port, and JSON logs filtered by `--log-filter` / `RUST_LOG`.

mod error;
mod http;
pub mod job;
mod leader;
mod metrics;
mod observe;
pub mod pod;
mod progress;
mod reconcile;
pub mod serving;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};

pub use error::Error;
pub use http::{HttpState, router};
pub use job::{JobInputs, Prerequisite, build_job, prerequisites};
pub use leader::{LeaderElector, LeaseStep, SeenRecord, lease_step};
pub use metrics::Metrics;
pub use observe::observation_from;
pub use reconcile::{error_policy, parse_spec, reconcile};

/// Command-line options of `llamaduo operator` (each with an environment fallback).
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Image that runs the stages when a migration sets no spec.image.
    #[arg(
        long,
        env = "LLAMADUO_TRAINER_IMAGE",
        default_value = "ghcr.io/llamaduo/llamaduo-trainer:latest"
    )]
    pub trainer_image: String,
    /// Watch only these namespaces (comma-separated: `team-a,team-b`), each with its own
    /// watches, so the operator needs Roles only there. Unset or empty: all namespaces.
    #[arg(long, env = "LLAMADUO_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Check before a stage starts that the Secrets it references exist and hold their keys
    /// (needs `get` on Secrets). Off: no Secret is ever read; a missing one is reported from
    /// the pod's own CreateContainerConfigError instead, naming the Secret and key.
    #[arg(long, env = "LLAMADUO_SECRET_CHECKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub secret_checks: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LLAMADUO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run only while holding a Lease, so replicas never act at once.
    #[arg(long, env = "LLAMADUO_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "LLAMADUO_LEASE_NAME", default_value = "llamaduo-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease. Unset: POD_NAMESPACE, else "default".
    #[arg(long, env = "LLAMADUO_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "LLAMADUO_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This replica's identity (Lease holder, Event reporting instance). Unset: the hostname.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace this pod runs in (default namespace of the Lease).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Migrations reconciled at once.
    #[arg(long, env = "LLAMADUO_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Seconds between reads of a running stage's progress (the last progress line of its
    /// pod log, into status.current.progress): at most one pod log read, one pod list and one
    /// status write per running migration per interval. 0 turns progress off.
    #[arg(long, env = "LLAMADUO_PROGRESS_INTERVAL_SECONDS", default_value_t = 30)]
    pub progress_interval_seconds: u64,
    /// Log filter (tracing EnvFilter syntax, e.g. "info,llamaduo=debug"). Unset: RUST_LOG,
    /// else "info,kube=warn".
    #[arg(long, env = "LLAMADUO_LOG")]
    pub log_filter: Option<String>,
}

impl OperatorArgs {
    /// The namespaces to watch, in the order given, without blanks or repeats; empty (also
    /// for an unset or blank value) watches all namespaces.
    pub fn watch_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ns in self.namespace.iter().flat_map(|n| n.split(',')) {
            let ns = ns.trim();
            if !ns.is_empty() && !out.iter().any(|o| o == ns) {
                out.push(ns.to_string());
            }
        }
        out
    }

    /// The log filter: `--log-filter` / LLAMADUO_LOG, else RUST_LOG, else "info,kube=warn".
    pub fn log_filter(&self) -> String {
        self.log_filter
            .clone()
            .filter(|f| !f.is_empty())
            .or_else(|| std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty()))
            .unwrap_or_else(|| "info,kube=warn".into())
    }
}

/// Settings the reconciler reads.
#[derive(Clone, Debug)]
pub struct Config {
    /// The default stage image.
    pub trainer_image: String,
    /// How often a running stage's progress is read (zero: never).
    pub progress_interval: std::time::Duration,
    /// Whether Secrets named by a spec are checked (read) before a stage starts.
    pub secret_checks: bool,
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// The migration resource as a dynamic type (it is watched untyped, see [`reconcile`]).
    pub api_resource: ApiResource,
    /// Consecutive stalls or failures per migration, for the requeue backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`, reporting Events as `instance` (a pod name).
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: job::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            config,
            api_resource: ApiResource::erase::<crate::api::LlamaDuoMigration>(&()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The next requeue delay for `key`: 5 s doubling to at most 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 5u64.saturating_mul(1 << (*n - 1).min(6));
        Duration::from_secs(secs.min(300))
    }

    /// Forget `key`'s failures after progress.
    pub fn reset_backoff(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }

    /// Forget the failures of migrations `exists` no longer knows (deleted while stalled or
    /// failing: never reconciled again, so never reset).
    pub fn forget_deleted(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|key, _| {
            key.split_once('/')
                .is_some_and(|(namespace, name)| exists(namespace, name))
        });
    }
}

/// Once the cache of migrations is complete, makes /metrics drop the series of deleted
/// migrations and, every minute, the requeue backoff forget them: without a finalizer a deleted
/// migration is never reconciled again.
async fn forget_deleted_migrations(store: Store<DynamicObject>, ctx: Arc<Context>) {
    // `wait_until_ready` wakes only the last task that polled it (kube-runtime 5 keeps one
    // waker per store), and the controller's runner waits on the same store: poll again every
    // second instead of waiting for a wake-up that may go to the runner.
    let ready = loop {
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await
        {
            break r;
        }
    };
    if ready.is_err() {
        return;
    }
    tracing::info!(
        migrations = store.len(),
        "migration cache complete; /metrics drops series of deleted migrations"
    );
    let dyntype = ctx.api_resource.clone();
    let exists = move |ns: &str, name: &str| {
        store
            .get(&ObjectRef::new_with(name, dyntype.clone()).within(ns))
            .is_some()
    };
    ctx.metrics.prune_with(exists.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        ctx.forget_deleted(&exists);
    }
}

/// Install the JSON log subscriber with `filter` (EnvFilter syntax). A second call is a
/// no-op.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log-filter / RUST_LOG {filter:?} is not a valid filter"))?;
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
    Ok(())
}

/// The controller of one scope: the migrations, and the Jobs, Deployments and Services it
/// owns, of `namespace` (or of every namespace).
fn controller_for(
    client: &Client,
    ctx: &Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
) -> Controller<DynamicObject> {
    let (migrations, jobs, deployments, services) = match namespace {
        Some(ns) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ctx.api_resource),
            Api::<Job>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<DynamicObject>::all_with(client.clone(), &ctx.api_resource),
            Api::<Job>::all(client.clone()),
            Api::<Deployment>::all(client.clone()),
            Api::<Service>::all(client.clone()),
        ),
    };
    let owned =
        || watcher::Config::default().labels("app.kubernetes.io/managed-by=llamaduo-operator");
    Controller::new_with(
        migrations,
        watcher::Config::default(),
        ctx.api_resource.clone(),
    )
    .owns(jobs, owned())
    // Serving Deployments: availability changes update the Serving condition.
    .owns(deployments, owned())
    // Serving Services: one deleted by hand is re-created at once, not at the next requeue.
    .owns(services, owned())
    .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
    .shutdown_on_signal()
}

/// Run the operator until it is stopped (SIGTERM / Ctrl-C) or loses its leader lease.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    init_logging(&args.log_filter())?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let addr = args.metrics_addr;
    let server = tokio::spawn(async move { http::serve(addr, http_state).await });

    let identity = match &args.pod_name {
        Some(p) => p.clone(),
        None => std::env::var("HOSTNAME").unwrap_or_else(|_| "llamaduo-operator".into()),
    };
    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    // A standby replica is healthy and ready: it serves metrics and waits for the lease.
    ready.store(true, Ordering::Relaxed);

    let elector = if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .or(args.pod_namespace.clone())
            .unwrap_or_else(|| "default".into());
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_duration_seconds.max(3)),
        );
        let renewed = elector.acquire().await;
        Some((elector, renewed))
    } else {
        None
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        Config {
            trainer_image: args.trainer_image.clone(),
            progress_interval: std::time::Duration::from_secs(args.progress_interval_seconds),
            secret_checks: args.secret_checks,
        },
        metrics,
        Some(identity),
    ));
    let namespaces = args.watch_namespaces();
    for ns in &namespaces {
        // A namespace that does not exist yet is watched all the same (it may be created
        // later); say so, since a typo would otherwise look like an idle operator.
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        if let Ok(None) = api.get_opt(ns).await {
            tracing::warn!(namespace = %ns, "watched namespace does not exist (yet)");
        }
    }
    tracing::info!(namespaces = ?namespaces, image = %args.trainer_image, secret_checks = args.secret_checks, "operator started");
    // One controller per watched namespace (or one for the cluster): each watches only
    // where the operator's Roles let it, and they share the context and its metrics.
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let runs = scopes.into_iter().map(|scope| {
        let controller = controller_for(&client, &ctx, scope.as_deref(), args.concurrency);
        tokio::spawn(forget_deleted_migrations(controller.store(), ctx.clone()));
        controller
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|res| async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(migration = %obj, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile error"),
                }
            })
    });
    let run = futures::future::join_all(runs);
    let run = async move {
        run.await;
    };
    let Some((elector, renewed)) = elector else {
        run.await;
        server.abort();
        return Ok(());
    };
    tokio::select! {
        // Stopped by SIGTERM / Ctrl-C: in-flight reconciles finished; hand the lease over.
        () = run => {
            elector.release().await;
            server.abort();
        }
        // The lease may be someone else's soon: stop acting now. Dropping the controller
        // cancels the reconciles in flight at their next await instead of letting them write.
        () = elector.keep_renewing(renewed) => {
            server.abort();
            anyhow::bail!("lost the leader lease; exiting so a fresh replica can take over");
        }
    }
    Ok(())
}
