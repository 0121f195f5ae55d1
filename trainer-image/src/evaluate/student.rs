//! The student's answers: the test prompts in fixed chunks, each chunk generated as one
//! batched job with a seed derived from (seed, round, chunk index). Chunking is a function of
//! the test set alone, so a resumed run regenerates a missing chunk exactly as the first run
//! would have, and skips chunks already stored.

use std::collections::HashSet;

use llamaduo::api::EvalGeneration;
use llamaduo::api::dataset::Message;
use llamaduo_model::generate::{FinishReason, GenerateError, Generator, SamplingParams};
use llamaduo_model::rng::derive;
use tokio::sync::mpsc;

use super::load::LoadedModel;
use super::records::{AnswerRecord, Answerer, answer_id};

/// Test prompts per generation chunk (the unit of resumption).
pub const PROMPTS_PER_CHUNK: usize = 8;
/// Rows decoded together.
pub const GENERATION_BATCH: usize = 16;

/// One test prompt to answer.
#[derive(Clone, Debug)]
pub struct PromptJob {
    /// Test prompt id.
    pub id: String,
    /// The conversation before the reference answer.
    pub messages: Vec<Message>,
}

/// Which chunks still miss an answer: chunk index and its prompt range.
pub fn missing_chunks(
    prompt_ids: &[String],
    answers_per_prompt: u32,
    stored: &HashSet<String>,
) -> Vec<(usize, std::ops::Range<usize>)> {
    (0..prompt_ids.len())
        .step_by(PROMPTS_PER_CHUNK)
        .enumerate()
        .map(|(c, start)| (c, start..(start + PROMPTS_PER_CHUNK).min(prompt_ids.len())))
        .filter(|(_, range)| {
            prompt_ids[range.clone()].iter().any(|p| {
                (0..answers_per_prompt)
                    .any(|a| !stored.contains(&answer_id(Answerer::Student, p, a)))
            })
        })
        .collect()
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// Generates the chunks (blocking; run it on a blocking thread) and sends each chunk's new
/// answers to `tx` as soon as it is done. Answers already in `stored` are not sent again.
/// Stops early, without error, when the receiver is gone.
#[allow(clippy::too_many_arguments)]
pub fn generate_chunks(
    loaded: &LoadedModel,
    prompts: &[PromptJob],
    chunks: &[(usize, std::ops::Range<usize>)],
    generation: &EvalGeneration,
    answers_per_prompt: u32,
    seed: u64,
    stored: &HashSet<String>,
    tx: &mpsc::Sender<Vec<AnswerRecord>>,
) -> Result<(), GenerateError> {
    let generator =
        Generator::new(&loaded.model, &loaded.tokenizer).with_batch_size(GENERATION_BATCH);
    for (chunk, range) in chunks {
        let jobs = &prompts[range.clone()];
        let mut ids = Vec::with_capacity(jobs.len());
        for j in jobs {
            let p = loaded
                .template
                .prompt_ids(&loaded.tokenizer, &j.messages)
                .map_err(|e| GenerateError::Invalid(format!("test prompt {}: {e}", j.id)))?;
            ids.push(p);
        }
        let params = SamplingParams::from_spec(generation, derive(seed, &[*chunk as u64]));
        let started = std::time::Instant::now();
        let out = generator.generate(&ids, &params, answers_per_prompt as usize)?;
        let mut records = Vec::new();
        let mut tokens = 0usize;
        for (job, answers) in jobs.iter().zip(out) {
            for g in answers {
                tokens += g.token_ids.len();
                let id = answer_id(Answerer::Student, &job.id, g.answer_index as u32);
                if stored.contains(&id) {
                    continue;
                }
                records.push(AnswerRecord {
                    id,
                    answerer: Answerer::Student,
                    prompt_id: job.id.clone(),
                    answer_index: g.answer_index as u32,
                    text: g.text,
                    finish_reason: Some(finish_name(g.finish_reason).to_string()),
                    tokens: g.token_ids.len() as u64,
                    service_tokens: Default::default(),
                });
            }
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            chunk,
            prompts = jobs.len(),
            tokens,
            seconds = secs,
            tokens_per_second = tokens as f64 / secs.max(1e-9),
            "student answers generated"
        );
        if tx.blocking_send(records).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_test_set_and_skip_complete_ones() {
        let ids: Vec<String> = (0..19).map(|i| format!("p{i}")).collect();
        let none = HashSet::new();
        let all = missing_chunks(&ids, 2, &none);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], (2, 16..19));
        let mut stored: HashSet<String> = ids[..8]
            .iter()
            .flat_map(|p| (0..2).map(move |a| answer_id(Answerer::Student, p, a)))
            .collect();
        // Chunk 1 has one answer of one prompt: still missing the rest.
        stored.insert(answer_id(Answerer::Student, "p9", 0));
        let left = missing_chunks(&ids, 2, &stored);
        assert_eq!(left.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
