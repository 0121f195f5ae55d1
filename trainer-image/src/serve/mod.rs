//! `llamaduo-trainer serve`: an OpenAI-compatible server for a trained model (full weights or
//! base + LoRA adapter): `/v1/chat/completions` (JSON or SSE streaming), `/v1/completions`,
//! `/v1/models`, `/health` (readiness: 200 once the model is loaded), `/livez` (liveness),
//! `/metrics` (Prometheus). One worker thread owns the model and decodes queued requests in
//! batches. SIGTERM or Ctrl-C stops accepting connections, finishes in-flight requests and
//! exits 0.
//!
//! Against abusive clients (`http.rs`, `conn.rs`): header, body and idle timeouts, a cap on
//! open connections sized below the descriptor limit (raised to its hard limit at start), and
//! accept errors that back off instead of spinning.
//!
//! Once it listens it prints `{"baseUrl": "http://ADDR/v1"}` on stdout (so tests and scripts
//! can use port 0).

pub mod accept;
pub mod args;
pub mod body;
pub mod conn;
pub mod delta;
pub mod engine;
pub mod error;
pub mod http;
pub mod load;
pub mod metrics;
pub mod nofile;
pub mod request;
pub mod response;
pub mod routes;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;

pub use args::ServeArgs;
use engine::{Engine, EngineConfig};
use metrics::Metrics;
use request::Limits;
use routes::AppState;

/// Queue slots per batch slot: requests beyond this wait list get 503.
const QUEUE_PER_BATCH: usize = 32;

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let model_name = args
        .served_model_name
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| load::default_model_name(&args.model));
    let dirs = load::resolve_dirs(&args.model, args.base.as_deref()).await?;
    let base = dirs
        .base
        .as_ref()
        .map_or_else(|| "none (full weights)".into(), |b| b.display().to_string());
    tracing::info!(model = %dirs.model.display(), %base, name = %model_name, "serving");
    let max_connections = connection_cap(args.max_connections);
    let metrics = Arc::new(Metrics::default());
    metrics.connection_cap(max_connections);
    let max_batch = args.max_batch as usize;
    let started = Engine::start(
        dirs,
        EngineConfig {
            max_batch,
            queue_capacity: max_batch * QUEUE_PER_BATCH,
        },
        metrics.clone(),
    )
    .context("cannot start the generation worker")?;
    let listener = http::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    let state = Arc::new(AppState {
        engine: started.engine,
        limits: Limits {
            model_name,
            max_tokens: args.max_tokens as usize,
        },
        metrics: metrics.clone(),
        timeout_seconds: args.request_timeout_seconds,
        body_timeout: Duration::from_secs(args.body_timeout_seconds),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ids: AtomicU64::new(0),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "baseUrl": format!("http://{addr}/v1") })
        )?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening; /health answers 503 until the model is loaded");
    let app = routes::router(state);
    let config = http::Config {
        max_connections,
        timeouts: conn::Timeouts {
            header: Duration::from_secs(args.header_timeout_seconds),
            idle: Duration::from_secs(args.idle_timeout_seconds),
        },
    };
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let loaded = started.loaded;
    tokio::spawn(async move {
        match loaded.await {
            Ok(Ok(source)) => tracing::info!(%source, "model loaded; ready"),
            Ok(Err(e)) => {
                let _ = fail_tx.send(e);
            }
            Err(_) => {
                let _ = fail_tx.send("the generation worker ended while loading".into());
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, app, config, metrics, async {
        let _ = stop_rx.await;
    }));
    // `fail_rx` errs (its sender dropped) once the model has loaded: that branch is then
    // disabled and only a signal ends the server.
    let load_failed = tokio::select! {
        s = shutdown_signal() => { s?; None }
        Ok(e) = fail_rx => Some(e),
    };
    if let Some(e) = &load_failed {
        tracing::error!(error = %e, "the model failed to load");
    } else {
        tracing::info!("shutting down: finishing in-flight requests");
    }
    let _ = stop_tx.send(());
    server.await.context("the server task failed")?;
    // The router (and with it the queue's sender) is gone: the worker finishes its batch and
    // stops. It is not joined while still loading, so a stop during load is immediate.
    if load_failed.is_none() && started.worker.is_finished() {
        let _ = started.worker.join();
    }
    match load_failed {
        Some(e) => Err(anyhow::anyhow!("cannot load the model: {e}")),
        None => Ok(()),
    }
}

/// Raises the descriptor limit and picks the connection cap below it (see `nofile.rs`).
fn connection_cap(requested: Option<u32>) -> usize {
    let requested = requested.map(|n| n as usize);
    let limit = match nofile::raise_to_hard() {
        Ok(n) => {
            if let Some(e) = n.refused {
                tracing::warn!(error = %e, "cannot raise the open-file limit to its hard limit");
            }
            tracing::info!(
                soft = n.limit,
                hard = n.hard,
                before = n.before,
                "open-file limit (RLIMIT_NOFILE)"
            );
            n.limit
        }
        Err(e) => {
            // Without the limit the cap cannot be checked against it: assume the soft default
            // most systems have.
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    let (cap, lowered) = nofile::connection_cap(requested, limit);
    if lowered {
        tracing::warn!(
            requested = requested.unwrap_or_default(),
            max_connections = cap,
            limit,
            "--max-connections lowered to leave descriptors for the server itself"
        );
    }
    tracing::info!(max_connections = cap, "connection cap");
    cap
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
