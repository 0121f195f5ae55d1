//! `llamaduo-trainer`: one subcommand per stage of a LlamaDuo round (`synthesize`, `train`,
//! `evaluate`), plus `serve` and `simulate-teacher`.
//!
//! Stage subcommands follow the stage contract (docs/stage-contract.md): config from
//! `LLAMADUO_STAGE_CONFIG`, API keys from `LLAMADUO_TEACHER_API_KEY` /
//! `LLAMADUO_JUDGE_API_KEY`, result JSON to `LLAMADUO_RESULT_PATH`; logs are JSON lines on
//! stderr, progress JSON lines on stdout.

mod checkpoint_mirror;
mod evaluate;
mod failure_class;
mod serve;
mod stage_io;
mod student;
mod train_stage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use llamaduo::api::{JUDGE_API_KEY_ENV, Stage, StageConfig, StageResult, TEACHER_API_KEY_ENV};
use llamaduo_service_llm::Secret;

/// llamaduo's stage runner.
#[derive(Parser, Debug)]
#[command(name = "llamaduo-trainer", version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info,llamaduo_model=debug`.
    #[arg(long, env = "LLAMADUO_LOG", default_value = "info", global = true)]
    log_filter: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate this round's synthetic samples with the teacher.
    Synthesize(StageArgs),
    /// Fine-tune the student on coverage train plus all synthetic samples so far.
    Train(StageArgs),
    /// Score the round's model on the frozen test set.
    Evaluate(StageArgs),
    /// Serve an OpenAI-compatible stand-in for a service LLM that knows a few task families
    /// (arithmetic, reverse, sort, triage, dates, updates), for trials and tests without API keys. Prints
    /// `{"baseUrl": ...}` on stdout once it listens; stops on Ctrl-C or SIGTERM.
    SimulateTeacher(llamaduo_service_llm::simulate::SimulateOptions),
    /// Serve a trained model (full weights or base + LoRA adapter) behind an OpenAI-compatible
    /// API. Prints `{"baseUrl": ...}` on stdout once it listens; SIGTERM or Ctrl-C finishes
    /// in-flight requests and exits 0.
    Serve(serve::ServeArgs),
    /// Write a coverage dataset of a simulated task family as JSONL on stdout.
    SampleDataset {
        /// Task family: arithmetic, reverse, sort, triage, dates or updates.
        #[arg(long)]
        family: String,
        /// Number of rows.
        #[arg(long, default_value_t = 100)]
        rows: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(clap::Args, Debug)]
struct StageArgs {
    /// Read the stage config from this file instead of LLAMADUO_STAGE_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

fn main() -> ExitCode {
    // SAFETY: first statement of a sync main; no other thread exists yet.
    unsafe { llamaduo_model::threads::use_one_pool() };
    let cli = Cli::parse();
    init_logging(&cli.log_filter);
    llamaduo_model::alloc::tune_malloc();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Synthesize(args) => run_stage(Stage::Synthesize, args).await,
            Command::Train(args) => run_stage(Stage::Train, args).await,
            Command::Evaluate(args) => run_stage(Stage::Evaluate, args).await,
            Command::Serve(args) => report(serve::run(args).await),
            Command::SimulateTeacher(opts) => report(simulate_teacher(opts).await),
            Command::SampleDataset { family, rows, seed } => {
                report(sample_dataset(&family, rows, seed))
            }
        }
    })
}

/// Runs one stage per the contract: a result is written whatever happens.
async fn run_stage(stage: Stage, args: StageArgs) -> ExitCode {
    let path = stage_io::result_path();
    let config = match stage_io::read_config(args.config.as_deref()) {
        Ok(c) if c.stage() == stage => c,
        Ok(c) => {
            let e = anyhow::Error::new(failure_class::PermanentError::new(format!(
                "the stage config is for {}, but `llamaduo-trainer {stage}` was run",
                c.stage()
            )));
            return finish(
                None,
                &path,
                stage_io::early_failure(stage, c.context().round, &e),
            )
            .await;
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "bad stage config");
            return finish(None, &path, stage_io::early_failure(stage, 0, &e)).await;
        }
    };
    let ctx = config.context();
    tracing::info!(stage = %stage, round = ctx.round, attempt = ctx.attempt, migration = %ctx.migration, "stage starting");
    let result = match &config {
        StageConfig::Synthesize(c) => {
            llamaduo_service_llm::run_synthesis(c, Secret::from_env(TEACHER_API_KEY_ENV)).await
        }
        StageConfig::Train(c) => train_stage::run_train(c).await,
        StageConfig::Evaluate(c) => {
            evaluate::run_evaluate(
                c,
                Secret::from_env(JUDGE_API_KEY_ENV),
                Secret::from_env(TEACHER_API_KEY_ENV),
            )
            .await
        }
    };
    finish(Some(&config), &path, result).await
}

async fn finish(
    config: Option<&StageConfig>,
    path: &std::path::Path,
    result: StageResult,
) -> ExitCode {
    if result.succeeded {
        tracing::info!(stage = %result.stage, round = result.round, seconds = result.duration_seconds, "stage succeeded");
    } else {
        tracing::error!(stage = %result.stage, round = result.round, reason = result.message.as_deref().unwrap_or(""), "stage failed");
    }
    if let Some(config) = config {
        stage_io::store_result(config, &result).await;
    }
    if let Err(e) = stage_io::write_result(path, &result) {
        tracing::error!(error = %format!("{e:#}"), "could not write the stage result");
        return ExitCode::FAILURE;
    }
    stage_io::exit_code(&result)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate_teacher(
    opts: llamaduo_service_llm::simulate::SimulateOptions,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let teacher = llamaduo_service_llm::simulate::spawn_simulated_teacher(opts).await?;
    tracing::info!(base_url = %teacher.base_url(), "simulate-teacher listening (a trial and test tool, not a provider to deploy)");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        serde_json::json!({ "baseUrl": teacher.base_url() })
    )?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    teacher.shutdown().await
}

fn sample_dataset(family: &str, rows: usize, seed: u64) -> anyhow::Result<()> {
    use llamaduo_service_llm::simulate::{FAMILY_NAMES, Family, sample_dataset};
    use rand::SeedableRng;
    use std::io::Write;
    let family = Family::from_model(family).ok_or_else(|| {
        anyhow::anyhow!(
            "--family {family:?} is not one of {}",
            FAMILY_NAMES.join(", ")
        )
    })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = std::io::stdout().lock();
    for row in sample_dataset(family, rows, &mut rng) {
        writeln!(out, "{}", serde_json::to_string(&row)?)?;
    }
    Ok(())
}
