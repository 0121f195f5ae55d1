//! Benchmark for issue 3 (not a timed test): the simulated teacher adds 200 ms latency and
//! refuses requests beyond 600 per minute; llamaduo's client (smooth token bucket at 600 RPM,
//! concurrency 8) is measured for the achieved request rate as a share of the limit and its
//! CPU time per request (getrusage of the client's own thread), beside the LlamaDuo
//! reference's scheme: fixed batches of `concurrency` calls, then a fixed sleep sized for
//! 20 s calls (at 60 RPM and 4 workers: 4 calls then 12 s, i.e. 180·W/RPM seconds).
//!
//! Run: `cargo run --release -p llamaduo-service-llm --example synthesis_bench -- [SECONDS]`

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llamaduo::api::ProviderSpec;
use llamaduo_service_llm::error::LlmError;
use llamaduo_service_llm::flow::{ClientConfig, LlmClient, TokenBudget};
use llamaduo_service_llm::provider::{ChatRequest, ChatResponse, provider_for};
use llamaduo_service_llm::simulate::{Family, SimulateOptions, spawn_simulated_teacher};
use llamaduo_service_llm::synth::prompt::synthesis_request;
use serde_json::json;

const RPM: u32 = 600;
const CONCURRENCY: usize = 8;
const LATENCY_MS: u64 = 200;

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_THREAD is Linux's per-thread usage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The reference's pattern for `seconds`: `CONCURRENCY` calls at once, then `sleep`.
/// Returns requests per minute and the calling thread's CPU seconds per request.
async fn batch_and_sleep<F, Fut>(
    seconds: u64,
    sleep: Duration,
    call: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<ChatResponse, LlmError>> + Send + 'static,
{
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut done = 0usize;
    while t0.elapsed() < Duration::from_secs(seconds) {
        let batch: Vec<_> = (0..CONCURRENCY).map(|_| tokio::spawn(call())).collect();
        for t in batch {
            t.await??;
            done += 1;
        }
        tokio::time::sleep(sleep).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok((
        done as f64 / elapsed * 60.0,
        (thread_cpu() - cpu0) / done as f64,
    ))
}

fn request() -> ChatRequest {
    synthesis_request(
        Family::Arithmetic.description(),
        "What is 23 + 58?",
        "81",
        5,
        Some(1.0),
        400,
    )
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    // The teacher runs on its own threads, so the client's thread measures only client work.
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let teacher = sim_rt.block_on(spawn_simulated_teacher(SimulateOptions {
        latency_ms: LATENCY_MS,
        enforce_rpm: Some(RPM),
        seed: 1,
        ..SimulateOptions::ephemeral()
    }))?;
    let spec: ProviderSpec = serde_json::from_value(json!({
        "provider": "simulated", "model": "arithmetic", "baseUrl": teacher.base_url(),
        "limits": {"concurrency": CONCURRENCY, "requestsPerMinute": RPM}
    }))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // llamaduo: all requests of the window queued at once; the limiter paces them.
    let n = (u64::from(RPM) * seconds / 60) as usize;
    let (ours_rate, cpu_per_req, ours_429) = rt.block_on(async {
        let provider = provider_for(&spec, None)?;
        let client = Arc::new(LlmClient::new(
            provider,
            ClientConfig::from_spec(&spec),
            Arc::new(TokenBudget::new(None)),
        ));
        let before_429 = teacher.stats().over_limit.load(Ordering::Relaxed);
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let c = Arc::clone(&client);
                tokio::spawn(async move { c.chat(&request()).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = thread_cpu() - cpu0;
        let refused = teacher.stats().over_limit.load(Ordering::Relaxed) - before_429;
        anyhow::Ok((n as f64 / elapsed * 60.0, cpu / n as f64, refused))
    })?;

    // Reference scheme: batches of CONCURRENCY, then sleep 180·W/RPM seconds.
    let sleep = Duration::from_secs_f64(180.0 * CONCURRENCY as f64 / f64::from(RPM));
    let (ref_rate, ref_cpu) = rt.block_on(async {
        let provider = provider_for(&spec, None)?;
        batch_and_sleep(seconds, sleep, move || {
            let p = Arc::clone(&provider);
            async move { p.chat(&request()).await }
        })
        .await
    })?;
    // The same batch-and-sleep pattern through llamaduo's client (no rate limit: the sleep
    // paces it): the client's own CPU per request, apart from what smooth pacing costs (a
    // wake-up per request instead of one per batch).
    let (batched_rate, batched_cpu) = rt.block_on(async {
        let mut config = ClientConfig::from_spec(&spec);
        config.requests_per_minute = None;
        let client = Arc::new(LlmClient::new(
            provider_for(&spec, None)?,
            config,
            Arc::new(TokenBudget::new(None)),
        ));
        batch_and_sleep(seconds, sleep, move || {
            let c = Arc::clone(&client);
            async move { c.chat(&request()).await }
        })
        .await
    })?;
    let ref_computed =
        CONCURRENCY as f64 / (LATENCY_MS as f64 / 1000.0 + sleep.as_secs_f64()) * 60.0;

    println!(
        "synthesis request rate, simulated teacher with {LATENCY_MS} ms latency, limit {RPM} RPM, concurrency {CONCURRENCY}, {seconds} s window"
    );
    println!(
        "| scheme | requests/min | share of limit | client CPU per request | 429 from the server |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| llamaduo (token bucket) | {ours_rate:.1} | {:.1}% | {:.0} µs | {ours_429} |",
        100.0 * ours_rate / f64::from(RPM),
        cpu_per_req * 1e6
    );
    println!(
        "| reference (batch of {CONCURRENCY}, sleep {:.1} s), measured | {ref_rate:.1} | {:.1}% | {:.0} µs | 0 |",
        sleep.as_secs_f64(),
        100.0 * ref_rate / f64::from(RPM),
        ref_cpu * 1e6
    );
    println!(
        "| llamaduo client in the reference's pattern (batch of {CONCURRENCY}, sleep {:.1} s) | {batched_rate:.1} | {:.1}% | {:.0} µs | |",
        sleep.as_secs_f64(),
        100.0 * batched_rate / f64::from(RPM),
        batched_cpu * 1e6
    );
    println!(
        "| reference, computed W/(latency+sleep) | {ref_computed:.1} | {:.1}% | | |",
        100.0 * ref_computed / f64::from(RPM)
    );
    Ok(())
}
