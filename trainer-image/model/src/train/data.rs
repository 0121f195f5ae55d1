//! Training data: chat rows → token ids with an assistant-only loss mask, truncation to
//! maxSeqLen, the seeded held-out split and epoch order, and right-padded micro-batches.

use candle_core::{Device, Tensor};
use llamaduo::api::DatasetRow;

use super::TrainError;
use crate::chat_template::ChatTemplate;
use crate::rng::{SplitMix, derive};
use crate::tokenizer::TextTokenizer;

/// One tokenised conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// True on the tokens the model learns to predict (the assistant's answers).
    pub loss_mask: Vec<bool>,
}

impl Sample {
    /// Tokens that count in the loss (the first token is never predicted).
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m).count()
    }
}

/// Samples ready for training.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Samples cut to maxSeqLen.
    pub truncated: u64,
    /// Samples dropped because truncation left no answer token.
    pub dropped: u64,
}

/// Truncates samples to `max_seq_len` tokens (counting them) and drops those left without
/// an answer token.
pub fn prepare(samples: Vec<Sample>, max_seq_len: usize) -> Dataset {
    let mut out = Dataset::default();
    for mut s in samples {
        if s.input_ids.len() > max_seq_len {
            s.input_ids.truncate(max_seq_len);
            s.loss_mask.truncate(max_seq_len);
            out.truncated += 1;
        }
        if s.loss_tokens() == 0 {
            out.dropped += 1;
            continue;
        }
        out.samples.push(s);
    }
    out
}

/// Renders rows with the chat template, tokenises them (loss on assistant tokens only) and
/// [`prepare`]s them. Rows are validated first; a bad row is an error naming it.
pub fn tokenize_rows(
    template: &ChatTemplate,
    tokenizer: &TextTokenizer,
    rows: &[DatasetRow],
    max_seq_len: usize,
) -> Result<Dataset, TrainError> {
    if rows.is_empty() {
        return Err(TrainError::EmptyDataset(
            ": coverage train and the synthetic rounds hold no rows".into(),
        ));
    }
    let mut samples = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let err = |message: String| TrainError::Row {
            index,
            id: row
                .id
                .as_ref()
                .map(|i| format!(" (id {i})"))
                .unwrap_or_default(),
            message,
        };
        row.validate().map_err(|e| err(e.to_string()))?;
        let t = template
            .tokenize_conversation(tokenizer, &row.messages)
            .map_err(|e| err(e.to_string()))?;
        samples.push(Sample {
            input_ids: t.input_ids,
            loss_mask: t.loss_mask,
        });
    }
    let data = prepare(samples, max_seq_len);
    if data.samples.is_empty() {
        return Err(TrainError::EmptyDataset(format!(
            ": all {} rows lost their answers to truncation at maxSeqLen {max_seq_len}",
            rows.len()
        )));
    }
    Ok(data)
}

/// The seeded split: (training indices, held-out indices). Holds out
/// `round(n · fraction)` samples, raised to `min_eval` (but never more than a fifth of the
/// samples) so the held-out loss that picks the best epoch is not decided by a handful of
/// rows, at most `max_eval`; none when the fraction is 0 or fewer than 10 samples exist.
pub fn split(
    n: usize,
    fraction: f64,
    min_eval: usize,
    max_eval: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let eval_n = if n >= 10 && fraction > 0.0 {
        ((n as f64 * fraction).round() as usize)
            .max(min_eval.min(n / 5))
            .clamp(1, max_eval.max(1))
    } else {
        0
    };
    SplitMix::new(derive(seed, &[0x5917])).shuffle(&mut idx);
    let eval = idx.split_off(n - eval_n);
    idx.sort_unstable();
    (idx, eval)
}

/// The order in which epoch `epoch` visits `n` training samples.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix::new(derive(seed, &[0xe90c, epoch])).shuffle(&mut idx);
    idx
}

/// A right-padded micro-batch.
#[derive(Debug)]
pub struct Batch {
    /// (batch, seq) u32 ids; pads hold the pad id.
    pub input_ids: Tensor,
    /// Flat positions (row · seq + col) whose next token is a loss target.
    pub positions: Tensor,
    /// The targets at those positions.
    pub targets: Tensor,
    /// Real (non-pad) tokens in the batch.
    pub tokens: usize,
    /// Loss targets in the batch.
    pub loss_tokens: usize,
}

/// A right-padded batch in host memory: what [`make_batch`] puts into tensors, and what the
/// hand-written training pass reads directly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostBatch {
    /// (batch, seq) ids, row-major; pads hold the pad id.
    pub input_ids: Vec<u32>,
    /// Batch size.
    pub batch: usize,
    /// Sequence length (the longest sample).
    pub seq: usize,
    /// Flat positions (row · seq + col) whose next token is a loss target.
    pub positions: Vec<u32>,
    /// The targets at those positions.
    pub targets: Vec<u32>,
    /// Real (non-pad) tokens in the batch.
    pub tokens: usize,
}

impl HostBatch {
    /// Right-pads `samples` to the longest one with `pad_id`.
    pub fn new(samples: &[&Sample], pad_id: u32) -> Self {
        let b = samples.len();
        let s = samples.iter().map(|x| x.input_ids.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; b * s];
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut tokens = 0;
        for (r, sample) in samples.iter().enumerate() {
            let n = sample.input_ids.len();
            ids[r * s..r * s + n].copy_from_slice(&sample.input_ids);
            tokens += n;
            for i in 1..n {
                if sample.loss_mask[i] {
                    positions.push((r * s + i - 1) as u32);
                    targets.push(sample.input_ids[i]);
                }
            }
        }
        Self {
            input_ids: ids,
            batch: b,
            seq: s,
            positions,
            targets,
            tokens,
        }
    }

    /// The batch as the hand-written training pass takes it.
    pub fn hand(&self) -> crate::models::HandBatch<'_> {
        crate::models::HandBatch {
            input_ids: &self.input_ids,
            batch: self.batch,
            seq: self.seq,
            positions: &self.positions,
            targets: &self.targets,
        }
    }
}

/// Builds a right-padded batch of `samples` (padded to the longest).
pub fn make_batch(samples: &[&Sample], pad_id: u32, device: &Device) -> candle_core::Result<Batch> {
    let h = HostBatch::new(samples, pad_id);
    let loss_tokens = h.targets.len();
    Ok(Batch {
        input_ids: Tensor::from_vec(h.input_ids, (h.batch, h.seq), device)?,
        positions: Tensor::from_vec(h.positions, loss_tokens, device)?,
        targets: Tensor::from_vec(h.targets, loss_tokens, device)?,
        tokens: h.tokens,
        loss_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, answer_from: usize) -> Sample {
        Sample {
            input_ids: (1..=n as u32).collect(),
            loss_mask: (0..n).map(|i| i >= answer_from).collect(),
        }
    }

    #[test]
    fn truncation_is_counted_and_answerless_samples_dropped() {
        let d = prepare(vec![sample(10, 3), sample(4, 2), sample(10, 9)], 6);
        assert_eq!(d.truncated, 2);
        assert_eq!(d.dropped, 1);
        assert_eq!(d.samples.len(), 2);
        assert_eq!(d.samples[0].input_ids.len(), 6);
    }

    #[test]
    fn batches_are_right_padded_and_mask_pads_and_prompts() -> candle_core::Result<()> {
        let (a, b) = (sample(5, 3), sample(3, 1));
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu)?;
        assert_eq!(
            batch.input_ids.to_vec2::<u32>()?,
            vec![vec![1, 2, 3, 4, 5], vec![1, 2, 3, 0, 0]]
        );
        // Row 0 predicts tokens 4, 5 from positions 2, 3; row 1 tokens 2, 3 from 5, 6.
        assert_eq!(batch.positions.to_vec1::<u32>()?, vec![2, 3, 5, 6]);
        assert_eq!(batch.targets.to_vec1::<u32>()?, vec![4, 5, 2, 3]);
        assert_eq!(batch.loss_tokens, 4);
        assert_eq!(batch.tokens, 8);
        Ok(())
    }

    #[test]
    fn split_and_order_are_seeded() {
        let (t1, e1) = split(100, 0.05, 0, 200, 7);
        let (t2, e2) = split(100, 0.05, 0, 200, 7);
        assert_eq!((t1.len(), e1.len()), (95, 5));
        assert_eq!((&t1, &e1), (&t2, &e2));
        assert!(e1.iter().all(|i| !t1.contains(i)));
        assert_eq!(split(9, 0.5, 0, 200, 7).1.len(), 0);
        // The floor for best-epoch selection, capped at a fifth of small datasets.
        assert_eq!(split(200, 0.05, 16, 200, 7).1.len(), 16);
        assert_eq!(split(40, 0.05, 16, 200, 7).1.len(), 8);
        assert_eq!(split(1000, 0.05, 16, 200, 7).1.len(), 50);
        assert_eq!(epoch_order(20, 1, 0), epoch_order(20, 1, 0));
        assert_ne!(epoch_order(20, 1, 0), epoch_order(20, 1, 1));
    }
}
