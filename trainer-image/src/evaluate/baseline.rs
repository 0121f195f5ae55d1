//! Reusing the teacher's baseline across rounds. With `evaluation.baseline` every round scores
//! the teacher's answers to the frozen test set; they do not depend on the round's student, so
//! once a round has scored them, later rounds take its teacher answers and judgements instead
//! of paying the teacher and the judge for the same work again (and the performance-matching
//! ratio of every round is measured against the same baseline, not a resampled one).
//!
//! A round's baseline is reused only when everything that shapes it is unchanged: the task
//! (the judge prompt is built from it), the teacher and the judge (provider, model, endpoint,
//! generation settings), the metric, the judge
//! samples, the answers per prompt and the evaluation temperature. `round-{n}/eval/baseline.json`
//! records that fingerprint once the round's evaluation is finalized.

use llamaduo::api::{ArtifactLayout, EvaluateConfig, ProviderSpec};
use llamaduo_store::{JsonlParts, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ledger::Ledger;
use super::records::{
    ANSWERS_FILE, AnswerRecord, Answerer, JUDGEMENTS_FILE, JudgementKey, JudgementRecord,
};

/// Version of the judge prompt's wording (`llamaduo_service_llm::judge`): a baseline judged
/// with another wording is not reused.
const JUDGE_PROMPT_VERSION: u32 = 1;

/// Written next to a finalized round's summary when it scored a baseline.
pub const BASELINE_FILE: &str = "baseline.json";

/// What `baseline.json` says.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct BaselineRecord {
    /// [`fingerprint`] of the settings the baseline was made with.
    fingerprint: String,
}

/// A digest of every setting that shapes the baseline's answers and scores.
pub fn fingerprint(config: &EvaluateConfig) -> String {
    let provider = |p: &ProviderSpec| {
        json!({
            "provider": p.provider,
            "model": p.model,
            "baseUrl": p.base_url,
            "generation": p.generation,
        })
    };
    let eval = &config.evaluation;
    let shape = json!({
        // The judge prompt is built from the task; bump the version when its wording changes.
        "judgePrompt": JUDGE_PROMPT_VERSION,
        "task": config.task,
        "teacher": provider(&config.teacher),
        "judge": provider(&config.judge),
        "metric": eval.metric,
        "judgeSamples": eval.judge_samples,
        "answersPerPrompt": eval.answers_per_prompt,
        "temperature": eval.generation.temperature,
        "embeddingModel": eval.embedding_model,
    });
    let digest = Sha256::digest(shape.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records that this round's finalized evaluation holds a baseline made with `config`.
pub async fn record(store: &Store, config: &EvaluateConfig) -> Result<(), StoreError> {
    let key = format!(
        "{}/{BASELINE_FILE}",
        ArtifactLayout::eval_dir(config.context.round)
    );
    store
        .put_json(
            &key,
            &BaselineRecord {
                fingerprint: fingerprint(config),
            },
        )
        .await
}

/// Copies into this round's ledgers the teacher answers and judgements of the latest earlier
/// round whose baseline was made with the same settings; returns that round. Copied rows carry
/// no service tokens (they were counted in their own round). Judgements that round could not
/// read stay failures here, so they are judged again.
pub async fn reuse(
    store: &Store,
    config: &EvaluateConfig,
    answers: &mut Ledger<AnswerRecord, String>,
    judgements: &mut Ledger<JudgementRecord, JudgementKey>,
) -> Result<Option<u32>, StoreError> {
    let wanted = fingerprint(config);
    // Round 0 (the base student) judges the same baseline: it may be reused as well.
    for round in (0..config.context.round).rev() {
        let dir = ArtifactLayout::eval_dir(round);
        let key = format!("{dir}/{BASELINE_FILE}");
        if !store.exists(&key).await? {
            continue;
        }
        let found: BaselineRecord = store.get_json(&key).await?;
        if found.fingerprint != wanted {
            tracing::info!(
                round,
                "baseline of round {round} was made with other settings; scoring the teacher again"
            );
            return Ok(None);
        }
        let old_answers: Vec<AnswerRecord> = finalized(store, &format!("{dir}/{ANSWERS_FILE}"))
            .await?
            .into_iter()
            .filter(|a: &AnswerRecord| a.answerer == Answerer::Teacher && !answers.contains(&a.id))
            .map(|mut a| {
                a.service_tokens = Default::default();
                a
            })
            .collect();
        let teacher_ids: std::collections::HashSet<String> =
            old_answers.iter().map(|a| a.id.clone()).collect();
        let old_judgements: Vec<JudgementRecord> =
            finalized(store, &format!("{dir}/{JUDGEMENTS_FILE}"))
                .await?
                .into_iter()
                .filter(|j: &JudgementRecord| {
                    teacher_ids.contains(&j.answer_id) && !judgements.contains(&j.key())
                })
                .map(|mut j| {
                    j.service_tokens = Default::default();
                    j
                })
                .collect();
        let (a, j) = (old_answers.len(), old_judgements.len());
        answers.commit(old_answers).await?;
        judgements.commit(old_judgements).await?;
        tracing::info!(
            from_round = round,
            answers = a,
            judgements = j,
            "baseline reused: the teacher's answers and their scores do not depend on the student"
        );
        return Ok(Some(round));
    }
    Ok(None)
}

/// The rows of a finalized JSONL file (nothing when the file was never finalized).
async fn finalized<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Vec<T>, StoreError> {
    let parts = JsonlParts::open(store, key).await?;
    if !parts.is_finalized() {
        return Ok(Vec::new());
    }
    parts.read_rows().await
}
