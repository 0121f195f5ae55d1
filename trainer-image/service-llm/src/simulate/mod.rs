//! `simulate-teacher`: an offline stand-in for a service LLM, for trials and tests only (it is
//! not a provider to deploy). It speaks OpenAI chat completions for the built-in task families
//! ([`tasks::Family`]: arithmetic, reverse, sort, triage, dates, updates; the request's `model` picks one), writes
//! synthetic pairs for synthesis prompts, judges answers for judge prompts, and answers plain
//! instructions correctly. It can inject faults at set rates (429 with Retry-After, 500,
//! delays beyond the client's timeout, malformed JSON, truncated bodies) and add latency; all
//! randomness is seeded.

pub mod server;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use server::{SimStats, count_tokens};
pub use tasks::{FAMILY_NAMES, Family, sample_dataset};

/// Settings of the simulated teacher (also its command-line flags).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct SimulateOptions {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Seed of every random choice (pairs, faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    pub fault_429: f64,
    /// Retry-After of injected 429s, in seconds (sent as whole seconds in Retry-After and
    /// exactly in retry-after-ms).
    #[arg(long, default_value_t = 1.0)]
    pub retry_after: f64,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    pub fault_500: f64,
    /// Share of requests delayed by --timeout-delay-ms before answering.
    #[arg(long, default_value_t = 0.0)]
    pub fault_timeout: f64,
    /// Delay of --fault-timeout requests, in milliseconds (beyond the client's timeout).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_delay_ms: u64,
    /// Share of replies whose content is malformed (cut-off) JSON.
    #[arg(long, default_value_t = 0.0)]
    pub fault_malformed: f64,
    /// Share of replies whose body is cut off mid-stream.
    #[arg(long, default_value_t = 0.0)]
    pub fault_truncated: f64,
    /// Refuse requests beyond this many per minute with 429 (sliding window), like a real
    /// provider's limit.
    #[arg(long)]
    pub enforce_rpm: Option<u32>,
    /// Answer 401 unless a request carries `Authorization: Bearer KEY`, as OpenAI does. The
    /// 401 echoes the key the request presented, as a careless service might, so tests can
    /// check that clients keep it out of their errors.
    #[arg(long, value_name = "KEY", env = "LLAMADUO_SIMULATE_REQUIRE_API_KEY")]
    pub require_api_key: Option<String>,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            seed: 0,
            latency_ms: 0,
            fault_429: 0.0,
            retry_after: 1.0,
            fault_500: 0.0,
            fault_timeout: 0.0,
            timeout_delay_ms: 30_000,
            fault_malformed: 0.0,
            fault_truncated: 0.0,
            enforce_rpm: None,
            require_api_key: None,
        }
    }
}

impl SimulateOptions {
    /// Options on a free loopback port.
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// Checks rates are shares (0–1) that sum to at most 1.
    pub fn validate(&self) -> anyhow::Result<()> {
        let rates = [
            ("--fault-429", self.fault_429),
            ("--fault-500", self.fault_500),
            ("--fault-timeout", self.fault_timeout),
            ("--fault-malformed", self.fault_malformed),
            ("--fault-truncated", self.fault_truncated),
        ];
        for (flag, r) in rates {
            anyhow::ensure!(
                (0.0..=1.0).contains(&r),
                "{flag} {r} must be a share between 0 and 1"
            );
        }
        let sum: f64 = rates.iter().map(|(_, r)| r).sum();
        anyhow::ensure!(
            sum <= 1.0 + 1e-9,
            "the fault rates add up to {sum}: at most 1"
        );
        anyhow::ensure!(
            self.retry_after.is_finite() && self.retry_after >= 0.0,
            "--retry-after {} must be a non-negative number of seconds",
            self.retry_after
        );
        Ok(())
    }
}

/// A simulated teacher running in the background.
#[derive(Debug)]
pub struct SimulatedTeacher {
    addr: SocketAddr,
    stats: Arc<SimStats>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimulatedTeacher {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for a provider spec (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<SimStats> {
        &self.stats
    }

    /// Stops accepting requests and waits for the server task to end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("the simulated teacher task died")??;
        }
        Ok(())
    }
}

impl Drop for SimulatedTeacher {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the simulated teacher in the background on `opts.listen` (port 0: a free port) and
/// returns once it accepts connections.
pub async fn spawn_simulated_teacher(opts: SimulateOptions) -> anyhow::Result<SimulatedTeacher> {
    opts.validate()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(SimStats::default());
    let app = server::router(Arc::new(server::Shared::new(opts, Arc::clone(&stats))));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(SimulatedTeacher {
        addr,
        stats,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Runs the simulated teacher in the foreground until Ctrl-C or SIGTERM; once it listens it
/// prints `{"baseUrl": "http://ADDR/v1"}` on a line of stdout (the line `llamaduo run` waits
/// for).
pub async fn serve_simulated_teacher(opts: SimulateOptions) -> anyhow::Result<()> {
    use std::io::Write;
    let teacher = spawn_simulated_teacher(opts).await?;
    tracing::info!(
        base_url = %teacher.base_url(),
        "simulate-teacher listening (a trial and test tool, not a provider to deploy)"
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({"baseUrl": teacher.base_url()})
    )?;
    out.flush()?;
    drop(out);
    wait_for_signal().await?;
    teacher.shutdown().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}
