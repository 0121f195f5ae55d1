//! The `synthesize` stage: the teacher writes synthetic (instruction, response) pairs like
//! the coverage seeds, which are validated, deduplicated against everything the student
//! trains on, decontaminated against the test prompts, and committed to
//! `round-{n}/synthetic.jsonl` in atomic parts, so a killed run resumes where it stopped.
//!
//! Calls are dispatched so that committed rows plus the pairs asked of calls in flight never
//! exceed the requested count: the run ends with exactly `samples` rows and no call whose
//! reply would be thrown away.

pub mod coverage;
pub mod dedup;
pub mod prompt;

use std::sync::Arc;
use std::time::Instant;

use llamaduo::api::{
    ArtifactLayout, DatasetRow, FailureClass, Message, Role, RowSource, Stage, StageResult,
    SynthesizeConfig, SynthesizeOutcome,
};
use llamaduo_store::{JsonlParts, Store, StoreError, read_jsonl_within, to_jsonl};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::error::LlmError;
use crate::flow::{ClientConfig, DEFAULT_MAX_TOKENS, LlmClient, TokenBudget};
use crate::provider::{ChatResponse, provider_for};
use crate::secret::Secret;
use crate::spend::{self, SpendLog};
use dedup::{DedupIndex, Verdict};
use prompt::{Pair, parse_pairs, synthesis_request};

/// Malformed replies in a row after which the teacher is declared unusable.
pub const MAX_CONSECUTIVE_MALFORMED: u32 = 20;
/// Calls in a row that failed after all their retries before the stage gives up.
pub const MAX_CONSECUTIVE_FAILED_CALLS: u32 = 3;
/// Valid replies in a row that added nothing (all duplicates) before the stage gives up.
pub const MAX_CALLS_WITHOUT_PROGRESS: u32 = 50;

/// Why the synthesis stage failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The coverage data is unusable.
    #[error("{0}")]
    Coverage(String),
    /// The teacher failed in a way retries did not fix.
    #[error("teacher: {0}")]
    Teacher(#[from] LlmError),
    /// The teacher's replies are unusable.
    #[error("{0}")]
    Unproductive(String),
    /// A worker task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SynthError {
    /// Whether another attempt can succeed: not with unusable coverage data or a teacher that
    /// refuses the requests as invalid; yes after store, network or service trouble, and with
    /// unproductive replies (another attempt samples again).
    pub fn failure_class(&self) -> FailureClass {
        match self {
            SynthError::Store(e) if e.is_permanent() => FailureClass::Permanent,
            SynthError::Store(_) => FailureClass::Transient,
            SynthError::Coverage(_) => FailureClass::Permanent,
            SynthError::Teacher(e) => e.failure_class(),
            SynthError::Unproductive(_) | SynthError::Internal(_) => FailureClass::Transient,
        }
    }
}

/// Runs the stage: builds the teacher client from the config (API key from the environment,
/// passed in) and writes the result. Never panics; a failure is a failed [`StageResult`] with
/// a one-line reason, still carrying the tokens spent and the counts so far.
pub async fn run_synthesis(config: &SynthesizeConfig, api_key: Option<Secret>) -> StageResult {
    let started = Instant::now();
    let provider = match provider_for(&config.teacher, api_key) {
        Ok(p) => p,
        Err(e) => {
            let mut r =
                StageResult::failure(Stage::Synthesize, config.context.round, e.to_string())
                    .classed(e.failure_class());
            r.duration_seconds = started.elapsed().as_secs_f64();
            return r;
        }
    };
    let ctx = &config.context;
    let log = match Store::open(&ctx.artifacts) {
        Ok(store) => SpendLog::open(&store, ctx.round, Stage::Synthesize, ctx.attempt).await,
        Err(e) => Err(e),
    };
    let log = match log {
        Ok(log) => log,
        Err(e) => {
            let mut r = StageResult::failure(
                Stage::Synthesize,
                ctx.round,
                format!("opening the spend log in the artifact store: {e}"),
            );
            r.duration_seconds = started.elapsed().as_secs_f64();
            return r;
        }
    };
    let carried = log.carried();
    let budget = Arc::new(TokenBudget::new(spend::remaining(
        config.token_budget,
        carried,
    )));
    let client = Arc::new(LlmClient::new(
        provider,
        ClientConfig::from_spec(&config.teacher),
        Arc::clone(&budget),
    ));
    let flusher = log.keep_written(Arc::clone(&budget));
    let mut result = synthesize_with(config, client).await;
    if let Err(e) = log.write(result.service_tokens, true).await {
        tracing::warn!(error = %e, "marking the spend log reported failed");
    }
    // It sees the log closed within a tick and ends.
    let _ = flusher.await;
    result.service_tokens += carried;
    result
}

/// Runs the stage with a prepared client (tests and benchmarks tune its flow control).
/// `config.token_budget` is enforced by the client's budget, not here.
pub async fn synthesize_with(config: &SynthesizeConfig, client: Arc<LlmClient>) -> StageResult {
    let started = Instant::now();
    let mut outcome = SynthesizeOutcome {
        requested: u64::from(config.samples),
        ..SynthesizeOutcome::default()
    };
    let run = Synthesis::run(config, &client, &mut outcome).await;
    let stats = client.stats();
    outcome.retries = stats.retries;
    let mut result = match run {
        Ok(()) => StageResult::success(Stage::Synthesize, config.context.round),
        Err(e) => {
            tracing::error!(error = %e, class = %e.failure_class(), "synthesis failed");
            StageResult::failure(Stage::Synthesize, config.context.round, e.to_string())
                .classed(e.failure_class())
        }
    };
    result.service_tokens = stats.usage;
    result.duration_seconds = started.elapsed().as_secs_f64();
    result.synthesize = Some(outcome);
    result
}

/// One run's state.
struct Synthesis<'a> {
    config: &'a SynthesizeConfig,
    parts: JsonlParts,
    /// Instructions the student already trains on (and this round's rows).
    train_index: DedupIndex,
    /// Test prompts (None when decontamination is off).
    test_index: Option<DedupIndex>,
    committed: u64,
}

/// What one dispatched call returns.
struct CallOutcome {
    asked: u64,
    seed_id: String,
    result: Result<ChatResponse, LlmError>,
}

impl<'a> Synthesis<'a> {
    async fn run(
        config: &'a SynthesizeConfig,
        client: &Arc<LlmClient>,
        outcome: &mut SynthesizeOutcome,
    ) -> Result<(), SynthError> {
        let store = Store::open(&config.context.artifacts)?;
        let coverage = coverage::materialize(
            &store,
            &config.coverage,
            config.synthesis.seed,
            &llamaduo_store::cache_dir(),
        )
        .await?;
        let seeds: Vec<&DatasetRow> = coverage
            .train
            .iter()
            .filter(|r| r.instruction().is_some() && r.answer().is_some())
            .collect();
        if seeds.is_empty() {
            return Err(SynthError::Coverage(
                "coverage train holds no row with an instruction and an answer to use as a seed"
                    .into(),
            ));
        }
        let round = config.context.round;
        let key = ArtifactLayout::synthetic(round);
        let (parts, existing) = open_parts(&store, &key, outcome.requested).await?;
        let threshold = config.synthesis.dedup.threshold;
        let mut train_index = DedupIndex::new(threshold);
        for row in &coverage.train {
            if let Some(i) = row.instruction() {
                train_index.insert(i);
            }
        }
        for earlier in 1..round {
            let k = ArtifactLayout::synthetic(earlier);
            if store.exists(&k).await? {
                let rows: Vec<DatasetRow> =
                    read_jsonl_within(&store, &k, config.context.max_row_bytes).await?;
                for row in rows {
                    if let Some(i) = row.instruction() {
                        train_index.insert(i);
                    }
                }
            }
        }
        for row in &existing {
            if let Some(i) = row.instruction() {
                train_index.insert(i);
            }
        }
        let test_index = config.synthesis.decontaminate.then(|| {
            let mut idx = DedupIndex::new(threshold);
            for row in &coverage.test {
                if let Some(i) = row.instruction() {
                    idx.insert(i);
                }
            }
            idx
        });
        let mut state = Synthesis {
            config,
            parts,
            train_index,
            test_index,
            committed: existing.len() as u64,
        };
        outcome.produced = state.committed;
        if state.committed < outcome.requested {
            tracing::info!(
                committed = state.committed,
                requested = outcome.requested,
                "synthesizing"
            );
            state.generate(client, &seeds, outcome).await?;
        }
        state.parts.finalize().await?;
        Ok(())
    }

    /// Dispatches teacher calls until the requested count is committed, the budget stops
    /// the run, or the teacher proves unusable.
    async fn generate(
        &mut self,
        client: &Arc<LlmClient>,
        seeds: &[&DatasetRow],
        outcome: &mut SynthesizeOutcome,
    ) -> Result<(), SynthError> {
        let cfg = self.config;
        let requested = outcome.requested;
        let per_call = u64::from(cfg.synthesis.pairs_per_call.max(1));
        let concurrency = client.config().concurrency.max(1);
        let max_tokens = cfg
            .teacher
            .generation
            .max_tokens
            .unwrap_or(DEFAULT_MAX_TOKENS);
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            cfg.synthesis.seed
                ^ (u64::from(cfg.context.round) << 48)
                ^ self.committed.wrapping_mul(0x9e37_79b9),
        );
        let mut calls: JoinSet<CallOutcome> = JoinSet::new();
        let mut in_flight_pairs = 0u64;
        let mut stop: Option<SynthError> = None;
        let mut budget_hit = false;
        let (mut malformed_streak, mut failed_streak, mut idle_streak) = (0u32, 0u32, 0u32);
        loop {
            while stop.is_none()
                && !budget_hit
                && calls.len() < concurrency
                && self.committed + in_flight_pairs < requested
            {
                let asked = per_call.min(requested - self.committed - in_flight_pairs);
                let seed = seeds[rng.random_range(0..seeds.len())];
                let request = synthesis_request(
                    &cfg.task.description,
                    seed.instruction().unwrap_or_default(),
                    seed.answer().unwrap_or_default(),
                    asked as u32,
                    cfg.teacher.generation.temperature,
                    max_tokens,
                );
                let seed_id = seed.id.clone().unwrap_or_default();
                let client = Arc::clone(client);
                in_flight_pairs += asked;
                calls.spawn(async move {
                    let result = client.chat(&request).await;
                    CallOutcome {
                        asked,
                        seed_id,
                        result,
                    }
                });
            }
            let Some(joined) = calls.join_next().await else {
                break;
            };
            let call = joined
                .map_err(|e| SynthError::Internal(format!("a teacher call task died: {e}")))?;
            in_flight_pairs -= call.asked;
            match call.result {
                Ok(reply) => match parse_pairs(&reply.text) {
                    Ok(parsed) => {
                        malformed_streak = 0;
                        failed_streak = 0;
                        outcome.rejected_malformed += parsed.invalid as u64;
                        let pairs: Vec<Pair> =
                            parsed.pairs.into_iter().take(call.asked as usize).collect();
                        let added = self.accept(pairs, &call.seed_id, outcome).await?;
                        idle_streak = if added == 0 { idle_streak + 1 } else { 0 };
                        if idle_streak >= MAX_CALLS_WITHOUT_PROGRESS && stop.is_none() {
                            stop = Some(SynthError::Unproductive(format!(
                                "the last {idle_streak} teacher replies were all duplicates or test-set matches; lower synthesis.dedup.threshold, raise the teacher's temperature or ask for fewer samples"
                            )));
                        }
                    }
                    Err(reason) => {
                        // Say why when the provider cut or withheld the reply: a JSON error
                        // alone would send the user looking at the teacher's formatting.
                        let reason = match reply
                            .incomplete_reason(max_tokens, "teacher.generation.maxTokens")
                        {
                            Some(why) => format!("{why}; {reason}"),
                            None => reason,
                        };
                        outcome.rejected_malformed += 1;
                        malformed_streak += 1;
                        tracing::debug!(%reason, finish = ?reply.finish_reason, "malformed teacher reply");
                        if malformed_streak >= MAX_CONSECUTIVE_MALFORMED && stop.is_none() {
                            stop = Some(SynthError::Unproductive(format!(
                                "{malformed_streak} teacher replies in a row were malformed (last: {reason}); check the teacher model and generation.maxTokens"
                            )));
                        }
                    }
                },
                Err(LlmError::BudgetExhausted {
                    used,
                    budget,
                    needed,
                }) => {
                    if !budget_hit {
                        tracing::warn!(
                            used,
                            budget,
                            needed,
                            "token budget reached: no more teacher calls"
                        );
                    }
                    budget_hit = true;
                }
                Err(e) if e.is_retryable() => {
                    failed_streak += 1;
                    if failed_streak >= MAX_CONSECUTIVE_FAILED_CALLS && stop.is_none() {
                        stop = Some(SynthError::Teacher(e));
                    }
                }
                Err(e) => {
                    if stop.is_none() {
                        stop = Some(SynthError::Teacher(e));
                    }
                }
            }
            outcome.produced = self.committed;
        }
        if let Some(e) = stop {
            return Err(e);
        }
        outcome.budget_exhausted = budget_hit && self.committed < requested;
        Ok(())
    }

    /// Filters a reply's pairs and commits the survivors as one part; returns how many.
    async fn accept(
        &mut self,
        pairs: Vec<Pair>,
        seed_id: &str,
        outcome: &mut SynthesizeOutcome,
    ) -> Result<u64, SynthError> {
        let mut rows = Vec::new();
        for pair in pairs {
            if let Some(test) = &self.test_index
                && test.check(&pair.instruction) != Verdict::Unique
            {
                outcome.decontaminated += 1;
                continue;
            }
            if self.train_index.check_and_insert(&pair.instruction) != Verdict::Unique {
                outcome.deduplicated += 1;
                continue;
            }
            let id = format!(
                "r{}-s{:06}",
                self.config.context.round,
                self.committed + rows.len() as u64
            );
            rows.push(DatasetRow {
                messages: vec![
                    Message {
                        role: Role::User,
                        content: pair.instruction,
                    },
                    Message {
                        role: Role::Assistant,
                        content: pair.response,
                    },
                ],
                id: Some(id),
                source: Some(RowSource::Synthetic),
                generator: Some(self.config.teacher.model.clone()),
                seed_id: Some(seed_id.to_string()),
            });
        }
        self.parts.commit(&rows).await?;
        self.committed += rows.len() as u64;
        tracing::debug!(committed = self.committed, "rows committed");
        Ok(rows.len() as u64)
    }
}

/// Opens the round's parts writer and the rows already committed. A final file from an
/// earlier run that stopped short (the budget) is reopened: its rows become part 0 before the
/// final file is removed, so a crash at any point loses or duplicates nothing (finalize() on
/// a finalized file only clears leftover parts, which are copies).
async fn open_parts(
    store: &Store,
    key: &str,
    requested: u64,
) -> Result<(JsonlParts, Vec<DatasetRow>), SynthError> {
    let mut parts = JsonlParts::open(store, key).await?;
    if !parts.is_finalized() {
        let rows = parts.read_rows().await?;
        return Ok((parts, rows));
    }
    parts.finalize().await?;
    let rows: Vec<DatasetRow> = parts.read_rows().await?;
    if rows.len() as u64 >= requested {
        return Ok((parts, rows));
    }
    let stem = key.strip_suffix(".jsonl").unwrap_or(key);
    let part0 = format!("{stem}.parts/part-00000.jsonl");
    store
        .put(&part0, to_jsonl(&rows, &store.url_of(&part0))?)
        .await?;
    store.delete(key).await?;
    let parts = JsonlParts::open(store, key).await?;
    let reread = parts.read_rows().await?;
    Ok((parts, reread))
}
