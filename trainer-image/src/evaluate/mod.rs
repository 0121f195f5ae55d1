//! The `evaluate` stage (ARCHITECTURE §5): the round's student answers every test prompt
//! `answersPerPrompt` times (batched generation with a KV cache), each answer is scored by the
//! LLM judge `judgeSamples` times (or by an offline metric), and the scores are aggregated
//! into the round's [`Scores`]. With `evaluation.baseline` the teacher answers the same
//! prompts and is scored the same way, giving the performance-matching ratio.
//!
//! Artifacts: `round-{n}/eval/answers.jsonl`, `judgements.jsonl` (committed in atomic parts as
//! work completes, so a killed run resumes without regenerating or re-judging anything stored)
//! and `summary.json`. Judge and teacher tokens count against `token_budget`.

pub mod aggregate;
pub mod baseline;
pub mod judging;
pub mod ledger;
pub mod load;
pub mod meter;
pub mod metrics;
pub mod records;
pub mod student;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use llamaduo::api::dataset::DatasetRow;
use llamaduo::api::{
    ArtifactLayout, EvaluateConfig, EvaluateOutcome, FailureClass, Metric, Scores, Stage,
    StageResult, TokenUsage,
};
use llamaduo_service_llm::flow::{ClientConfig, DEFAULT_MAX_TOKENS, LlmClient, TokenBudget};
use llamaduo_service_llm::judge::answer_request;
use llamaduo_service_llm::provider::provider_for;
use llamaduo_service_llm::spend::{self, SpendLog};
use llamaduo_service_llm::{LlmError, Secret};
use llamaduo_store::{Store, StoreError, read_jsonl_within};
use tokio::sync::mpsc;

use aggregate::{SummarySettings, summarize};
use judging::{JudgeInput, judge_sample, judge_temperature};
use ledger::Ledger;
use records::{
    ANSWERS_FILE, AnswerRecord, Answerer, JUDGEMENTS_FILE, JudgementKey, JudgementRecord,
    SUMMARY_FILE, SideSummary, Summary, answer_id,
};
use student::{PromptJob, generate_chunks, missing_chunks};

/// Judgements committed together (the most work a kill can lose).
const JUDGEMENT_COMMIT_EVERY: usize = 16;

/// Least share of a side's answers that must be scored for its mean to stand. The answers
/// the judge could not read (or refused) are left out of the mean, and they are rarely a
/// random sample: often the longest, oddest or worst ones. Below this share the round's score
/// would be decided by the rest, so the stage fails (nothing frozen) and a rerun judges the
/// failures again.
const MIN_SCORED_SHARE: f64 = 0.9;

/// Why the stage failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing artifacts failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The test set is unusable.
    #[error("coverage/test.jsonl: {0}")]
    TestSet(String),
    /// The round's model could not be loaded.
    #[error("loading the round's model: {0}")]
    Load(#[from] load::LoadError),
    /// Generation failed.
    #[error("generating the student's answers: {0}")]
    Generate(String),
    /// The judge failed in a way its retries did not fix.
    #[error("judge: {0}")]
    Judge(LlmError),
    /// The teacher (baseline) failed in a way its retries did not fix.
    #[error("teacher (baseline answers): {0}")]
    Teacher(LlmError),
    /// The embedding model failed.
    #[error("embedding metric: {0}")]
    Embedding(String),
    /// Too few answers could be scored for the mean to stand ([`MIN_SCORED_SHARE`]).
    #[error("{0}")]
    TooFewScored(String),
    /// The config is inconsistent.
    #[error("{0}")]
    Config(String),
}

/// The service clients evaluation uses (both share the stage's token budget).
#[derive(Clone, Debug, Default)]
pub struct EvalServices {
    /// The judge (metric judge).
    pub judge: Option<Arc<LlmClient>>,
    /// The teacher (evaluation.baseline).
    pub teacher: Option<Arc<LlmClient>>,
}

impl EvalServices {
    fn usage(&self) -> TokenUsage {
        let mut u = TokenUsage::default();
        for c in [&self.judge, &self.teacher].into_iter().flatten() {
            u += c.stats().usage;
        }
        u
    }
}

/// Runs the stage: builds the judge and teacher clients from the config (API keys from the
/// environment, passed in) and evaluates. Never panics; a failure is a failed
/// [`StageResult`] with a one-line reason and the tokens spent.
pub async fn run_evaluate(
    config: &EvaluateConfig,
    judge_key: Option<Secret>,
    teacher_key: Option<Secret>,
) -> StageResult {
    let started = Instant::now();
    let round = config.context.round;
    let ctx = &config.context;
    // Tokens of earlier attempts that died without reporting them (llamaduo_service_llm::spend).
    let log = match Store::open(&ctx.artifacts) {
        Ok(store) => SpendLog::open(&store, round, Stage::Evaluate, ctx.attempt).await,
        Err(e) => Err(e),
    };
    let log = match log {
        Ok(log) => log,
        Err(e) => {
            return failed(
                round,
                started,
                format!("opening the spend log in the artifact store: {e}"),
                crate::failure_class::of_error(&e),
                TokenUsage::default(),
            );
        }
    };
    let carried = log.carried();
    let budget = Arc::new(TokenBudget::new(spend::remaining(
        config.token_budget,
        carried,
    )));
    let client = |spec, key| -> Result<Arc<LlmClient>, LlmError> {
        let provider = provider_for(spec, key)?;
        Ok(Arc::new(LlmClient::new(
            provider,
            ClientConfig::from_spec(spec),
            Arc::clone(&budget),
        )))
    };
    let mut services = EvalServices::default();
    if config.evaluation.metric == Metric::Judge {
        match client(&config.judge, judge_key) {
            Ok(c) => services.judge = Some(c),
            Err(e) => {
                return failed(
                    round,
                    started,
                    format!("judge: {e}"),
                    e.failure_class(),
                    TokenUsage::default(),
                );
            }
        }
    }
    if config.evaluation.baseline {
        match client(&config.teacher, teacher_key) {
            Ok(c) => services.teacher = Some(c),
            Err(e) => {
                return failed(
                    round,
                    started,
                    format!("teacher: {e}"),
                    e.failure_class(),
                    TokenUsage::default(),
                );
            }
        }
    }
    let flusher = log.keep_written(Arc::clone(&budget));
    let mut result = evaluate_with(config, &services).await;
    if let Err(e) = log.write(result.service_tokens, true).await {
        tracing::warn!(error = %e, "marking the spend log reported failed");
    }
    // It sees the log closed within a tick and ends.
    let _ = flusher.await;
    result.service_tokens += carried;
    result
}

fn failed(
    round: u32,
    started: Instant,
    message: String,
    class: FailureClass,
    tokens: TokenUsage,
) -> StageResult {
    let mut r = StageResult::failure(Stage::Evaluate, round, message).classed(class);
    r.service_tokens = tokens;
    r.duration_seconds = started.elapsed().as_secs_f64();
    r
}

/// Runs the stage with prepared clients (tests tune their flow control).
pub async fn evaluate_with(config: &EvaluateConfig, services: &EvalServices) -> StageResult {
    let started = Instant::now();
    let round = config.context.round;
    let outcome = evaluate_inner(config, services).await;
    let tokens = services.usage();
    match outcome {
        Ok(summary) => {
            let mut r = StageResult::success(Stage::Evaluate, round);
            r.service_tokens = tokens;
            r.duration_seconds = started.elapsed().as_secs_f64();
            r.evaluate = Some(EvaluateOutcome {
                scores: summary.scores(),
                prompts: summary.prompts,
                answers: summary.student.scored_answers,
                failed_judgements: summary.student.failed_judgements
                    + summary.teacher.as_ref().map_or(0, |t| t.failed_judgements),
            });
            r
        }
        Err(e) => {
            let class = crate::failure_class::of_error(&e);
            tracing::error!(error = %e, %class, "evaluation failed");
            let mut r = failed(round, started, e.to_string(), class, tokens);
            r.budget_exhausted = matches!(
                e,
                EvalError::Judge(LlmError::BudgetExhausted { .. })
                    | EvalError::Teacher(LlmError::BudgetExhausted { .. })
            );
            r
        }
    }
}

/// A validated test prompt.
struct TestPrompt {
    id: String,
    row: DatasetRow,
}

fn test_prompts(rows: Vec<DatasetRow>) -> Result<Vec<TestPrompt>, EvalError> {
    if rows.is_empty() {
        return Err(EvalError::TestSet("the test set is empty".into()));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        row.validate()
            .map_err(|e| EvalError::TestSet(format!("row {}: {e}", i + 1)))?;
        let id = row.id.clone().unwrap_or_else(|| format!("test-{i}"));
        if !seen.insert(id.clone()) {
            return Err(EvalError::TestSet(format!(
                "row {}: id {id:?} appears twice; test ids must be unique",
                i + 1
            )));
        }
        out.push(TestPrompt { id, row });
    }
    Ok(out)
}

async fn evaluate_inner(
    config: &EvaluateConfig,
    services: &EvalServices,
) -> Result<Summary, EvalError> {
    let eval = &config.evaluation;
    if eval.answers_per_prompt == 0 || eval.judge_samples == 0 {
        return Err(EvalError::Config(
            "evaluation.answersPerPrompt and evaluation.judgeSamples must be at least 1".into(),
        ));
    }
    let store = Store::open(&config.context.artifacts)?;
    let rows: Vec<DatasetRow> = read_jsonl_within(
        &store,
        ArtifactLayout::COVERAGE_TEST,
        config.context.max_row_bytes,
    )
    .await?;
    let prompts = test_prompts(rows)?;
    let prompt_ids: Vec<String> = prompts.iter().map(|p| p.id.clone()).collect();
    let dir = ArtifactLayout::eval_dir(config.context.round);
    let mut answers: Ledger<AnswerRecord, String> = Ledger::open(
        &store,
        &format!("{dir}/{ANSWERS_FILE}"),
        |a: &AnswerRecord| a.id.clone(),
        |_| false,
    )
    .await?;
    let mut judgements: Ledger<JudgementRecord, JudgementKey> = Ledger::open(
        &store,
        &format!("{dir}/{JUDGEMENTS_FILE}"),
        JudgementRecord::key,
        // A judgement whose replies could not be read is judged again by a rerun (the judge
        // may have been down, or judge.generation.maxTokens too low).
        |j: &JudgementRecord| j.score.is_none(),
    )
    .await?;
    tracing::info!(
        prompts = prompts.len(),
        stored_answers = answers.rows().len(),
        stored_judgements = judgements.rows().len(),
        "evaluation starting"
    );

    student_answers(config, &store, &prompts, &mut answers).await?;
    let baseline_from_round = if eval.baseline {
        baseline::reuse(&store, config, &mut answers, &mut judgements).await?
    } else {
        None
    };
    if eval.baseline {
        let teacher = services.teacher.as_ref().ok_or_else(|| {
            EvalError::Config("evaluation.baseline is on but no teacher client was given".into())
        })?;
        teacher_answers(config, teacher, &prompts, &mut answers).await?;
    }
    let samples = if eval.metric == Metric::Judge {
        eval.judge_samples
    } else {
        1
    };
    score_answers(
        config,
        services,
        &prompts,
        &answers,
        &mut judgements,
        samples,
    )
    .await?;

    let mut summary = summarize(
        &prompt_ids,
        answers.rows(),
        judgements.rows(),
        &SummarySettings {
            metric: eval.metric,
            pass_score: eval.pass_score,
            answers_per_prompt: eval.answers_per_prompt,
            judge_samples: samples,
            baseline: eval.baseline,
        },
    );
    summary.baseline_from_round = baseline_from_round;
    let last_error = || {
        judgements
            .rows()
            .iter()
            .rev()
            .find_map(|j| j.error.clone())
            .unwrap_or_default()
    };
    // Nothing is finalized on failure: the answers stay, and a rerun judges the failures again.
    enough_scored("student", &summary.student, last_error)?;
    if let Some(teacher) = &summary.teacher {
        enough_scored("teacher (baseline)", teacher, last_error)?;
    }
    answers.finalize().await?;
    judgements.finalize().await?;
    store
        .put_json(&format!("{dir}/{SUMMARY_FILE}"), &summary)
        .await?;
    if eval.baseline {
        baseline::record(&store, config).await?;
    }
    let Scores {
        mean, pass_rate, ..
    } = summary.scores();
    tracing::info!(
        mean,
        pass_rate,
        failed_judgements = summary.student.failed_judgements,
        performance_matching = summary.performance_matching,
        "evaluation finished"
    );
    Ok(summary)
}

/// Fails unless at least [`MIN_SCORED_SHARE`] of `side`'s answers were scored.
fn enough_scored(
    who: &str,
    side: &SideSummary,
    last_error: impl Fn() -> String,
) -> Result<(), EvalError> {
    let share = side.scored_answers as f64 / side.answers.max(1) as f64;
    if side.scored_answers > 0 && share >= MIN_SCORED_SHARE {
        return Ok(());
    }
    Err(EvalError::TooFewScored(format!(
        "only {} of {} {who} answers could be scored ({} judgements failed; last: {}); at least \
         {:.0}% must be, or the mean would leave out the answers the judge could not read; a \
         rerun judges them again (if the judge keeps failing, raise judge.generation.maxTokens \
         or use another judge model)",
        side.scored_answers,
        side.answers,
        side.failed_judgements,
        last_error(),
        MIN_SCORED_SHARE * 100.0
    )))
}

/// Generates and stores the student answers that are missing.
async fn student_answers(
    config: &EvaluateConfig,
    store: &Store,
    prompts: &[TestPrompt],
    answers: &mut Ledger<AnswerRecord, String>,
) -> Result<(), EvalError> {
    let ids: Vec<String> = prompts.iter().map(|p| p.id.clone()).collect();
    let k = config.evaluation.answers_per_prompt;
    let chunks = missing_chunks(&ids, k, answers.keys());
    if chunks.is_empty() {
        return Ok(());
    }
    let loaded = load::load_round_model(config, store).await?;
    tracing::info!(model = %loaded.source, chunks = chunks.len(), "generating student answers");
    let jobs: Vec<PromptJob> = prompts
        .iter()
        .map(|p| PromptJob {
            id: p.id.clone(),
            messages: p.row.prompt_messages().to_vec(),
        })
        .collect();
    let stored = answers.keys().clone();
    let stored_student = answers
        .rows()
        .iter()
        .filter(|a| a.answerer == records::Answerer::Student)
        .count() as u64;
    let generation = config.evaluation.generation.clone();
    let seed =
        llamaduo_model::rng::derive(config.training.seed, &[u64::from(config.context.round)]);
    let (tx, mut rx) = mpsc::channel::<Vec<AnswerRecord>>(2);
    let worker = tokio::task::spawn_blocking(move || {
        generate_chunks(&loaded, &jobs, &chunks, &generation, k, seed, &stored, &tx)
            .map_err(|e| e.to_string())
    });
    let total = (prompts.len() * k as usize) as u64;
    let mut meter = meter::Meter::start("answers", "generating answers", stored_student, total);
    while let Some(batch) = rx.recv().await {
        let n = batch.len() as u64;
        answers.commit(batch).await?;
        meter.advance(n);
    }
    worker
        .await
        .map_err(|e| EvalError::Generate(format!("generation task failed: {e}")))?
        .map_err(EvalError::Generate)
}

/// Asks the teacher for the baseline answers that are missing.
async fn teacher_answers(
    config: &EvaluateConfig,
    teacher: &LlmClient,
    prompts: &[TestPrompt],
    answers: &mut Ledger<AnswerRecord, String>,
) -> Result<(), EvalError> {
    let k = config.evaluation.answers_per_prompt;
    let temperature = config
        .teacher
        .generation
        .temperature
        .or(Some(config.evaluation.generation.temperature));
    let max_tokens = config
        .teacher
        .generation
        .max_tokens
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let todo: Vec<(&TestPrompt, u32)> = prompts
        .iter()
        .flat_map(|p| (0..k).map(move |a| (p, a)))
        .filter(|(p, a)| !answers.contains(&answer_id(Answerer::Teacher, &p.id, *a)))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let concurrency = teacher.config().concurrency.max(1);
    let mut stream = futures::stream::iter(todo)
        .map(|(p, a)| async move {
            let request = answer_request(p.row.prompt_messages(), temperature, max_tokens);
            teacher.chat(&request).await.map(|r| {
                let incomplete = r.incomplete_reason(max_tokens, "teacher.generation.maxTokens");
                let record = AnswerRecord {
                    id: answer_id(Answerer::Teacher, &p.id, a),
                    answerer: Answerer::Teacher,
                    prompt_id: p.id.clone(),
                    answer_index: a,
                    text: r.text,
                    finish_reason: r.finish_reason,
                    tokens: r.usage.output,
                    service_tokens: r.usage,
                };
                (record, incomplete)
            })
        })
        .buffer_unordered(concurrency);
    let mut pending = Vec::new();
    // Baseline answers the provider cut off or withheld are judged as they are (the student's
    // answers are too, at maxNewTokens); say how many, since they lower the teacher's score.
    let mut incomplete: (u64, Option<String>) = (0, None);
    while let Some(result) = stream.next().await {
        match result {
            Ok((rec, why)) => {
                if let Some(why) = why {
                    incomplete.0 += 1;
                    incomplete.1.get_or_insert(why);
                }
                pending.push(rec);
                if pending.len() >= JUDGEMENT_COMMIT_EVERY {
                    answers.commit(std::mem::take(&mut pending)).await?;
                }
            }
            Err(e) => {
                drop(stream);
                answers.commit(pending).await?;
                return Err(EvalError::Teacher(e));
            }
        }
    }
    answers.commit(pending).await?;
    if let (count, Some(first)) = incomplete {
        tracing::warn!(
            count,
            first = %first,
            "baseline teacher answers were cut off or withheld; they are judged as they are, which lowers the teacher's baseline score"
        );
    }
    Ok(())
}

/// Scores every stored answer that lacks a judgement sample.
async fn score_answers(
    config: &EvaluateConfig,
    services: &EvalServices,
    prompts: &[TestPrompt],
    answers: &Ledger<AnswerRecord, String>,
    judgements: &mut Ledger<JudgementRecord, JudgementKey>,
    samples: u32,
) -> Result<(), EvalError> {
    let by_id: std::collections::HashMap<&str, &TestPrompt> =
        prompts.iter().map(|p| (p.id.as_str(), p)).collect();
    let todo: Vec<(&AnswerRecord, &TestPrompt, u32)> = answers
        .rows()
        .iter()
        .filter_map(|a| by_id.get(a.prompt_id.as_str()).map(|p| (a, *p)))
        .flat_map(|(a, p)| (0..samples).map(move |s| (a, p, s)))
        .filter(|(a, _, s)| !judgements.contains(&(a.id.clone(), *s, config.evaluation.metric)))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let metric = config.evaluation.metric;
    if metric != Metric::Judge {
        let records = offline_scores(config, &todo).await?;
        judgements.commit(records).await?;
        return Ok(());
    }
    let judge = services
        .judge
        .as_ref()
        .ok_or_else(|| EvalError::Config("metric judge needs a judge client".into()))?;
    let temperature = judge_temperature(config.judge.generation.temperature, samples);
    let max_tokens = config.judge.generation.max_tokens;
    let task = config.task.description.as_str();
    tracing::info!(judgements = todo.len(), "judging answers");
    let scorable = answers
        .rows()
        .iter()
        .filter(|a| by_id.contains_key(a.prompt_id.as_str()))
        .count();
    let total = (scorable * samples as usize) as u64;
    let mut meter = meter::Meter::start(
        "judgements",
        "judging answers",
        total.saturating_sub(todo.len() as u64),
        total,
    );
    let concurrency = judge.config().concurrency.max(1);
    let mut stream = futures::stream::iter(todo)
        .map(|(a, p, s)| async move {
            let input = JudgeInput {
                task,
                instruction: p.row.instruction().unwrap_or_default(),
                reference: p.row.answer().unwrap_or_default(),
                candidate: &a.text,
                answer_id: &a.id,
                sample: s,
                temperature,
                max_tokens,
            };
            judge_sample(judge, &input).await
        })
        .buffer_unordered(concurrency);
    let mut pending = Vec::new();
    while let Some(result) = stream.next().await {
        match result {
            Ok(rec) => {
                meter.advance(1);
                pending.push(rec);
                if pending.len() >= JUDGEMENT_COMMIT_EVERY {
                    judgements.commit(std::mem::take(&mut pending)).await?;
                }
            }
            Err((e, _)) => {
                drop(stream);
                judgements.commit(pending).await?;
                return Err(EvalError::Judge(e));
            }
        }
    }
    judgements.commit(pending).await?;
    Ok(())
}

/// exactMatch, rougeL or embedding scores for the answers in `todo`.
async fn offline_scores(
    config: &EvaluateConfig,
    todo: &[(&AnswerRecord, &TestPrompt, u32)],
) -> Result<Vec<JudgementRecord>, EvalError> {
    let metric = config.evaluation.metric;
    let pairs: Vec<(String, String)> = todo
        .iter()
        .map(|(a, p, _)| {
            (
                a.text.clone(),
                p.row.answer().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let scores: Vec<f64> = match metric {
        Metric::ExactMatch => pairs
            .iter()
            .map(|(c, r)| metrics::exact_match(c, r))
            .collect(),
        Metric::RougeL => pairs.iter().map(|(c, r)| metrics::rouge_l(c, r)).collect(),
        Metric::Embedding => {
            let source = config.evaluation.embedding_model.clone().ok_or_else(|| {
                EvalError::Config(
                    "metric embedding needs evaluation.embeddingModel (a path or URL of an all-MiniLM-L6-v2 style model directory)".into(),
                )
            })?;
            let dir = llamaduo_store::resolve_to_local(&source, &load::cache_dir())
                .await
                .map_err(|e| EvalError::Embedding(e.to_string()))?;
            tokio::task::spawn_blocking(move || -> Result<Vec<f64>, String> {
                let embedder = llamaduo_model::embedding::SentenceEmbedder::load(
                    &dir,
                    &candle_core::Device::Cpu,
                )
                .map_err(|e| e.to_string())?;
                let mut out = Vec::with_capacity(pairs.len());
                for chunk in pairs.chunks(32) {
                    let texts: Vec<&str> = chunk
                        .iter()
                        .flat_map(|(c, r)| [c.as_str(), r.as_str()])
                        .collect();
                    let v = embedder.embed(&texts).map_err(|e| e.to_string())?;
                    for pair in v.chunks(2) {
                        out.push(metrics::cosine_score(&pair[0], &pair[1]));
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| EvalError::Embedding(format!("embedding task failed: {e}")))?
            .map_err(EvalError::Embedding)?
        }
        Metric::Judge => {
            return Err(EvalError::Config(
                "the judge is not an offline metric".into(),
            ));
        }
    };
    Ok(todo
        .iter()
        .zip(scores)
        .map(|((a, _, s), score)| JudgementRecord {
            answer_id: a.id.clone(),
            sample: *s,
            metric,
            score: Some(score),
            similarity: None,
            precision: None,
            reason: None,
            error: None,
            attempts: 0,
            service_tokens: TokenUsage::default(),
        })
        .collect())
}
