//! Batched text generation with a KV cache: left-padded batches, greedy or
//! temperature/top-p sampling (seeded per answer, so results do not depend on how prompts are
//! batched), stop on an end-of-sequence id or a stop string, at most `max_new_tokens`, and
//! several answers per prompt. [`Generator::decode_rows`] decodes rows with their own settings
//! together and reports every new token (for servers: streaming and cancellation).

use candle_core::{DType, Device, Tensor};
use llamaduo::api::migration::EvalGeneration;

use crate::models::{CausalLm, KvCache};
use crate::rng::{SplitMix, derive};
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model failed.
    #[error("model forward failed: {0}")]
    Model(#[from] candle_core::Error),
    /// Decoding failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Bad arguments.
    #[error("invalid generation request: {0}")]
    Invalid(String),
}

/// Sampling parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) is greedy decoding.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 samples from the whole distribution.
    pub top_p: f64,
    /// Most tokens per answer.
    pub max_new_tokens: usize,
    /// Base seed; each answer draws from its own stream derived from (seed, prompt, answer).
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding of at most `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens,
            seed: 0,
        }
    }

    /// The evaluation spec's sampling parameters.
    pub fn from_spec(g: &EvalGeneration, seed: u64) -> Self {
        Self {
            temperature: g.temperature,
            top_p: g.top_p,
            max_new_tokens: g.max_new_tokens as usize,
            seed,
        }
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    fn validate(&self) -> Result<(), GenerateError> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenerateError::Invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !self.temperature.is_finite() {
            return Err(GenerateError::Invalid("temperature must be finite".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(GenerateError::Invalid(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// A stop string appeared (the text is cut before it).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The caller's step callback ended the row early (a server's client went away or its
    /// deadline passed).
    Cancelled,
}

/// One generated answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Index of the prompt.
    pub prompt_index: usize,
    /// Index of the answer among that prompt's answers.
    pub answer_index: usize,
    /// Generated ids, without the end-of-sequence token.
    pub token_ids: Vec<u32>,
    /// Decoded text (special tokens skipped; cut before a stop string).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// One row of a batch for [`Generator::decode_rows`]: its own prompt, sampling and stop
/// strings, so requests with different settings can share a batch.
#[derive(Clone, Debug)]
pub struct RowRequest {
    /// Prompt token ids (not empty).
    pub prompt: Vec<u32>,
    /// Sampling for this row (`seed` is used as is, not derived).
    pub params: SamplingParams,
    /// Extra stop strings for this row (on top of the generator's own).
    pub stop_strings: Vec<String>,
}

/// What the step callback of [`Generator::decode_rows`] sees after each new token of a row.
#[derive(Debug)]
pub struct RowStep<'s> {
    /// Index of the row in the request slice.
    pub row: usize,
    /// Generated ids so far (end-of-sequence excluded).
    pub token_ids: &'s [u32],
    /// Set when this token ended the row.
    pub finished: Option<FinishReason>,
}

/// Generates with a model and its tokenizer.
pub struct Generator<'a> {
    model: &'a CausalLm,
    tokenizer: &'a TextTokenizer,
    stop_ids: Vec<u32>,
    stop_strings: Vec<String>,
    batch_size: usize,
    use_cache: bool,
}

struct Row {
    prompt_index: usize,
    answer_index: usize,
    params: SamplingParams,
    stops: Vec<String>,
    rng: SplitMix,
    out: Vec<u32>,
    done: Option<FinishReason>,
    text: Option<String>,
}

impl<'a> Generator<'a> {
    /// A generator stopping on the tokenizer's end-of-sequence ids, batches of 8, KV cache on.
    pub fn new(model: &'a CausalLm, tokenizer: &'a TextTokenizer) -> Self {
        Self {
            model,
            tokenizer,
            stop_ids: tokenizer.eos_ids().to_vec(),
            stop_strings: Vec::new(),
            batch_size: 8,
            use_cache: true,
        }
    }

    /// Also stop when the decoded text contains one of these strings.
    pub fn with_stop_strings(mut self, stops: Vec<String>) -> Self {
        self.stop_strings = stops.into_iter().filter(|s| !s.is_empty()).collect();
        self
    }

    /// Rows decoded together (at least 1).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Recompute the whole sequence at every step instead of using a KV cache (slow; for
    /// checking the cache).
    pub fn without_kv_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }

    /// Generates `answers_per_prompt` answers for each prompt (token ids, e.g. from
    /// [`crate::chat_template::ChatTemplate::prompt_ids`]). Returns, per prompt, its answers
    /// in order. Greedy decoding computes one answer per prompt and repeats it.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        answers_per_prompt: usize,
    ) -> Result<Vec<Vec<Generation>>, GenerateError> {
        params.validate()?;
        if answers_per_prompt == 0 {
            return Err(GenerateError::Invalid(
                "answers_per_prompt must be at least 1".into(),
            ));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(GenerateError::Invalid(format!("prompt {i} is empty")));
        }
        let distinct = if params.is_greedy() {
            1
        } else {
            answers_per_prompt
        };
        // Longest prompts first, so each batch holds similar lengths (less padding).
        let mut jobs: Vec<(usize, usize)> = (0..prompts.len())
            .flat_map(|p| (0..distinct).map(move |a| (p, a)))
            .collect();
        jobs.sort_by_key(|&(p, a)| (std::cmp::Reverse(prompts[p].len()), p, a));
        let mut results: Vec<Vec<Option<Generation>>> =
            vec![vec![None; answers_per_prompt]; prompts.len()];
        for chunk in jobs.chunks(self.batch_size) {
            for g in self.generate_batch(prompts, chunk, params)? {
                let (p, a) = (g.prompt_index, g.answer_index);
                results[p][a] = Some(g);
            }
        }
        let mut out = Vec::with_capacity(prompts.len());
        for answers in results {
            let first = answers[0].clone();
            let mut v = Vec::with_capacity(answers_per_prompt);
            for (a, g) in answers.into_iter().enumerate() {
                match g.or_else(|| first.clone()) {
                    Some(mut g) => {
                        g.answer_index = a;
                        v.push(g);
                    }
                    None => {
                        return Err(GenerateError::Invalid("an answer was not generated".into()));
                    }
                }
            }
            out.push(v);
        }
        Ok(out)
    }

    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        jobs: &[(usize, usize)],
        params: &SamplingParams,
    ) -> Result<Vec<Generation>, GenerateError> {
        let rows: Vec<Row> = jobs
            .iter()
            .map(|&(p, a)| Row {
                prompt_index: p,
                answer_index: a,
                params: params.clone(),
                stops: Vec::new(),
                rng: SplitMix::new(derive(params.seed, &[p as u64, a as u64])),
                out: Vec::new(),
                done: None,
                text: None,
            })
            .collect();
        let seqs: Vec<&[u32]> = jobs.iter().map(|&(p, _)| prompts[p].as_slice()).collect();
        self.decode(&seqs, rows, &mut |_| true)
    }

    /// Decodes `rows` together as one batch, each with its own sampling, token limit and
    /// stop strings. After every new token of a row, `on_step` sees it; returning `false`
    /// ends that row with [`FinishReason::Cancelled`]. Results come back in `rows` order,
    /// with `prompt_index` the row's index. Rows should number at most the batch size the
    /// caller wants: they are not split.
    pub fn decode_rows(
        &self,
        rows: &[RowRequest],
        mut on_step: impl FnMut(RowStep<'_>) -> bool,
    ) -> Result<Vec<Generation>, GenerateError> {
        for (i, r) in rows.iter().enumerate() {
            r.params.validate()?;
            if r.prompt.is_empty() {
                return Err(GenerateError::Invalid(format!("prompt {i} is empty")));
            }
        }
        let state: Vec<Row> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| Row {
                prompt_index: i,
                answer_index: 0,
                params: r.params.clone(),
                stops: r
                    .stop_strings
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                rng: SplitMix::new(r.params.seed),
                out: Vec::new(),
                done: None,
                text: None,
            })
            .collect();
        let seqs: Vec<&[u32]> = rows.iter().map(|r| r.prompt.as_slice()).collect();
        self.decode(&seqs, state, &mut on_step)
    }

    /// The decoding loop shared by [`Self::generate`] and [`Self::decode_rows`].
    fn decode(
        &self,
        prompts: &[&[u32]],
        mut rows: Vec<Row>,
        on_step: &mut dyn FnMut(RowStep<'_>) -> bool,
    ) -> Result<Vec<Generation>, GenerateError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.model.device().clone();
        let pad = self.tokenizer.pad_id();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let left_pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let max_steps = rows
            .iter()
            .map(|r| r.params.max_new_tokens)
            .max()
            .unwrap_or(0);
        let mut seqs: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&left_pad)
            .map(|(p, &n)| {
                let mut s = vec![pad; n];
                s.extend_from_slice(p);
                s
            })
            .collect();
        let mut cache = KvCache::new(self.model.config().num_hidden_layers);
        let mut logits = self.last_logits(&seqs, &left_pad, 0, Some(&mut cache), &device)?;
        for step in 0..max_steps {
            let next = self.pick(&logits, &mut rows)?;
            for (i, ((row, seq), &tok)) in rows.iter_mut().zip(&mut seqs).zip(&next).enumerate() {
                seq.push(tok);
                if row.done.is_some() {
                    continue;
                }
                if self.stop_ids.contains(&tok) {
                    row.done = Some(FinishReason::Eos);
                } else {
                    row.out.push(tok);
                    self.check_stop_strings(row)?;
                    if row.done.is_none() && row.out.len() >= row.params.max_new_tokens {
                        row.done = Some(FinishReason::Length);
                    }
                }
                let keep = on_step(RowStep {
                    row: i,
                    token_ids: &row.out,
                    finished: row.done,
                });
                if !keep && row.done.is_none() {
                    row.done = Some(FinishReason::Cancelled);
                }
            }
            if rows.iter().all(|r| r.done.is_some()) || step + 1 == max_steps {
                break;
            }
            logits = if self.use_cache {
                let ids: Vec<u32> = next
                    .iter()
                    .zip(&rows)
                    .map(|(&t, r)| if r.done.is_some() { pad } else { t })
                    .collect();
                let start = cache.len();
                self.last_logits(
                    &ids.into_iter().map(|t| vec![t]).collect::<Vec<_>>(),
                    &left_pad,
                    start,
                    Some(&mut cache),
                    &device,
                )?
            } else {
                self.last_logits(&seqs, &left_pad, 0, None, &device)?
            };
        }
        rows.into_iter()
            .map(|r| {
                let text = match r.text {
                    Some(t) => t,
                    None => self.tokenizer.decode(&r.out, true)?,
                };
                Ok(Generation {
                    prompt_index: r.prompt_index,
                    answer_index: r.answer_index,
                    token_ids: r.out,
                    text,
                    finish_reason: r.done.unwrap_or(FinishReason::Length),
                })
            })
            .collect()
    }

    /// Ends `row` with [`FinishReason::Stop`] when its text contains one of the generator's
    /// or the row's stop strings, keeping the text before the earliest one.
    fn check_stop_strings(&self, row: &mut Row) -> Result<(), GenerateError> {
        if self.stop_strings.is_empty() && row.stops.is_empty() {
            return Ok(());
        }
        let text = self.tokenizer.decode(&row.out, true)?;
        if let Some(cut) = self
            .stop_strings
            .iter()
            .chain(&row.stops)
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            row.text = Some(text[..cut].to_owned());
            row.done = Some(FinishReason::Stop);
        }
        Ok(())
    }

    /// Runs the model on `seqs` (equal lengths) and returns the last position's logits as
    /// f32 rows.
    fn last_logits(
        &self,
        seqs: &[Vec<u32>],
        left_pad: &[usize],
        start: usize,
        cache: Option<&mut KvCache>,
        device: &Device,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let b = seqs.len();
        let s = seqs.first().map_or(0, Vec::len);
        let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (b, s), device)?;
        let hidden = self
            .model
            .hidden_states(&ids, start, Some(left_pad), cache)?;
        // Only the last position is needed: project just it onto the vocabulary.
        let last = hidden.narrow(1, s - 1, 1)?.squeeze(1)?;
        let logits = self.model.logits(&last)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    fn pick(&self, logits: &[Vec<f32>], rows: &mut [Row]) -> Result<Vec<u32>, GenerateError> {
        logits
            .iter()
            .zip(rows.iter_mut())
            .map(|(l, row)| {
                if row.params.is_greedy() {
                    Ok(argmax(l))
                } else {
                    Ok(sample_top_p(
                        l,
                        row.params.temperature,
                        row.params.top_p,
                        &mut row.rng,
                    ))
                }
            })
            .collect()
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples from softmax(logits / temperature) restricted to the smallest set of most likely
/// tokens whose mass reaches `top_p`.
pub fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, rng: &mut SplitMix) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((f64::from(x) - f64::from(max)) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let kept_total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.next_f64() * kept_total;
    for &(i, p) in probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs.last().map_or(0, |p| p.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, -1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p = softmax([2, 1, 0, -5]) ~ [0.66, 0.24, 0.09, 0.0006]
        let logits = [2.0f32, 1.0, 0.0, -5.0];
        let mut rng = SplitMix::new(7);
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[sample_top_p(&logits, 1.0, 0.8, &mut rng) as usize] += 1;
        }
        // 0.66 < 0.8 so the nucleus is {0, 1}.
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share0 = counts[0] as f64 / 2000.0;
        assert!((share0 - 0.731).abs() < 0.04, "{share0}");
        // top_p 1: every token can appear; low temperature concentrates on the best.
        let mut rng = SplitMix::new(7);
        let cold = (0..500)
            .filter(|_| sample_top_p(&logits, 0.1, 1.0, &mut rng) == 0)
            .count();
        assert!(cold > 495, "{cold}");
    }

    #[test]
    fn params_are_checked() {
        let mut p = SamplingParams::greedy(4);
        p.top_p = 0.0;
        assert!(p.validate().is_err());
        assert!(SamplingParams::greedy(0).validate().is_err());
        assert!(SamplingParams::greedy(1).validate().is_ok());
    }
}
