//! Fine-tuning: tokenised chat samples in, a trained [`crate::models::CausalLm`] and a
//! [`TrainReport`] out.
//!
//! ```text
//! let data = data::tokenize_rows(&template, &tokenizer, &rows, opts.max_seq_len)?;
//! let model = CausalLm::load(&cfg, vb, &LoadOptions { dtype, trainable, seed })?;
//! let report = train(&model, data, &opts, &mut |p| { println!("{}", p.to_json()); ControlFlow::Continue(()) })?;
//! peft::save_adapter(&model, &lora, base_name, &out_dir)?;   // or peft::save_full
//! ```
//!
//! Order of work: the data is split once (seeded) into a training set and a held-out slice;
//! every epoch visits the training set in a seeded permutation, in micro-batches of
//! `batch_size`, right-padded to the longest sample of the batch; every
//! `gradient_accumulation` micro-batches (counted across epoch boundaries) make one optimizer
//! step. All randomness is a function of (seed, step), so a run resumed from a checkpoint
//! continues exactly as the uninterrupted run would have.

pub mod checkpoint;
pub mod data;
pub mod trainer;

pub use data::{Batch, Dataset, Sample};
pub use trainer::{Progress, TrainReport, train};

use std::path::PathBuf;

use llamaduo::api::{StudentSpec, TrainingSpec};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Nothing to train on.
    #[error("the training set is empty{0}")]
    EmptyDataset(String),
    /// A row could not be rendered or tokenised.
    #[error("row {index}{id}: {message}")]
    Row {
        /// Position in the input.
        index: usize,
        /// `(id X)` when the row has one.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// Bad options.
    #[error("invalid training options: {0}")]
    Options(String),
    /// Reading or writing checkpoints or outputs.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint that cannot be resumed from.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// The loss or the gradient norm stopped being a finite number: the optimizer step would
    /// write NaN into the weights.
    #[error(
        "training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; training.learningRate {learning_rate} is too high for this student: set it lower (e.g. {half}), or use precision: f32; no checkpoint or model was written from this step",
        half = learning_rate / 2.0
    )]
    Diverged {
        /// The peak learning rate of the run.
        learning_rate: f64,
        /// The step (from 1) whose loss or gradients were not finite.
        step: u64,
        /// Its mean loss.
        loss: f64,
        /// Its gradient norm before clipping.
        grad_norm: f64,
    },
}

/// How many epochs a run trains for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epochs {
    /// Exactly this many (`training.epochs`).
    Fixed(usize),
    /// As many as reach `min_steps` optimizer steps, between 1 and `max_epochs`
    /// (`training.epochs` unset).
    MinSteps {
        /// Fewest optimizer steps.
        min_steps: u64,
        /// Most epochs.
        max_epochs: usize,
    },
}

impl Epochs {
    /// The epoch count for epochs of `steps_per_epoch` optimizer steps.
    pub fn resolve(self, steps_per_epoch: u64) -> usize {
        match self {
            Self::Fixed(n) => n.max(1),
            Self::MinSteps {
                min_steps,
                max_epochs,
            } => (min_steps.div_ceil(steps_per_epoch.max(1)) as usize).clamp(1, max_epochs.max(1)),
        }
    }
}

/// Training options (the trainer-side view of the CRD's `TrainingSpec`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// How many passes over the training set.
    pub epochs: Epochs,
    /// Evaluate the held-out slice after every epoch and keep the weights of the epoch with
    /// the lowest loss (needs `eval_fraction > 0`).
    pub select_best_epoch: bool,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Share of steps spent in linear warmup.
    pub warmup_ratio: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation: usize,
    /// Longest sample in tokens (longer ones are truncated by [`data::prepare`]).
    pub max_seq_len: usize,
    /// Seed of the split, shuffling and dropout.
    pub seed: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    /// Share of samples held out for the eval loss (0: none).
    pub eval_fraction: f64,
    /// At least this many held-out samples (but never more than a fifth of the data).
    pub min_eval_samples: usize,
    /// At most this many held-out samples.
    pub max_eval_samples: usize,
    /// Token id written into pad positions (masked from the loss either way).
    pub pad_id: u32,
    /// Optimizer steps between checkpoints (0: never).
    pub checkpoint_every: u64,
    /// Where checkpoints go (round-{n}/checkpoints); None: no checkpoints, no resume.
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoints kept (oldest deleted first).
    pub keep_checkpoints: usize,
    /// Steps between progress reports (the last step is always reported).
    pub log_every: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: Epochs::Fixed(3),
            select_best_epoch: false,
            learning_rate: 2e-4,
            warmup_ratio: 0.1,
            batch_size: 4,
            gradient_accumulation: 2,
            max_seq_len: 1024,
            seed: 42,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            eval_fraction: 0.05,
            min_eval_samples: 16,
            max_eval_samples: 200,
            pad_id: 0,
            checkpoint_every: 50,
            checkpoint_dir: None,
            keep_checkpoints: 2,
            log_every: 1,
        }
    }
}

impl TrainOptions {
    /// Options from the CRD's training spec (checkpoint dir and pad id are the caller's);
    /// the student decides the default learning rate.
    pub fn from_spec(spec: &TrainingSpec, student: &StudentSpec) -> Self {
        Self {
            epochs: match spec.epochs {
                Some(n) => Epochs::Fixed(n as usize),
                None => Epochs::MinSteps {
                    min_steps: u64::from(spec.min_steps),
                    max_epochs: spec.max_epochs as usize,
                },
            },
            select_best_epoch: spec.selects_best_epoch(student),
            learning_rate: spec.effective_learning_rate(student),
            warmup_ratio: spec.warmup_ratio,
            batch_size: spec.batch_size as usize,
            gradient_accumulation: spec.gradient_accumulation as usize,
            max_seq_len: spec.max_seq_len as usize,
            seed: spec.seed,
            checkpoint_every: spec.checkpoint_every as u64,
            ..Self::default()
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Options(m.to_string()));
        match self.epochs {
            Epochs::Fixed(0) => return bad("training.epochs must be >= 1"),
            Epochs::MinSteps { min_steps: 0, .. } => return bad("training.minSteps must be >= 1"),
            Epochs::MinSteps { max_epochs: 0, .. } => {
                return bad("training.maxEpochs must be >= 1");
            }
            _ => {}
        }
        if self.batch_size == 0 || self.gradient_accumulation == 0 {
            return bad("batchSize and gradientAccumulation must be >= 1");
        }
        if self.max_seq_len < 2 {
            return bad("maxSeqLen must be >= 2");
        }
        if !self.learning_rate.is_finite() || self.learning_rate <= 0.0 {
            return bad("learningRate must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmupRatio must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad("eval fraction must be in [0, 1)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> TrainingSpec {
        serde_json::from_value(v).expect("training spec")
    }

    fn student(v: serde_json::Value) -> StudentSpec {
        serde_json::from_value(v).expect("student spec")
    }

    #[test]
    fn unset_fields_take_the_measured_defaults_for_the_student() {
        let pretrained = student(serde_json::json!({"baseModel": "file:///m.gguf"}));
        let scratch = student(serde_json::json!({"fromScratch": {}}));
        let lora = TrainOptions::from_spec(&spec(serde_json::json!({})), &pretrained);
        assert_eq!(lora.learning_rate, 1e-3);
        assert_eq!(
            lora.epochs,
            Epochs::MinSteps {
                min_steps: 100,
                max_epochs: 10
            }
        );
        assert!(lora.select_best_epoch);
        let full =
            TrainOptions::from_spec(&spec(serde_json::json!({"method": "full"})), &pretrained);
        assert_eq!(full.learning_rate, 2e-5);
        let toy = TrainOptions::from_spec(&spec(serde_json::json!({"method": "full"})), &scratch);
        assert_eq!(toy.learning_rate, 3e-3);
        assert!(
            !toy.select_best_epoch,
            "a from-scratch student keeps its last epoch unless told otherwise"
        );
        let set = TrainOptions::from_spec(
            &spec(serde_json::json!({"epochs": 2, "learningRate": 5e-4, "selectBestEpoch": true})),
            &scratch,
        );
        assert_eq!(
            (set.epochs, set.learning_rate, set.select_best_epoch),
            (Epochs::Fixed(2), 5e-4, true)
        );
    }
}
