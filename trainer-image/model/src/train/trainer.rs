//! The training loop: micro-batches → loss on the assistant tokens → backward → gradient
//! accumulation → clipping → AdamW with warmup + cosine; progress reports, checkpoints,
//! resume, and the held-out loss at the end.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor};
use llamaduo::api::TrainOutcome;
use serde::Serialize;

use super::checkpoint::{self, CheckpointState};
use super::data::{HostBatch, Sample, epoch_order, make_batch, split};
use super::{Dataset, TrainError, TrainOptions};
use crate::models::CausalLm;
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, clip_grad_norm};
use crate::rng::derive;
use crate::schedule::CosineSchedule;

/// One progress report (a JSON line on the trainer's stdout).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps of the run.
    pub total_steps: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean loss of this step's micro-batches.
    pub loss: f64,
    /// Learning rate used by this step.
    pub learning_rate: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens per second in this process so far.
    pub tokens_per_second: f64,
    /// Estimated seconds left.
    pub eta_seconds: f64,
    /// Whether a checkpoint was written after this step.
    pub checkpoint: bool,
}

impl Progress {
    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a run did.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainReport {
    /// Optimizer steps done (including those before a resume).
    pub steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Samples trained on.
    pub training_samples: u64,
    /// Held-out samples.
    pub eval_samples: u64,
    /// Samples truncated to maxSeqLen.
    pub truncated: u64,
    /// Samples dropped (no answer token left after truncation).
    pub dropped: u64,
    /// Mean loss of the last (up to) 10 steps.
    pub final_loss: f64,
    /// Mean loss over all steps.
    pub mean_loss: f64,
    /// Loss per token on the held-out slice, of the weights the model holds at the end (the
    /// best epoch's under best-epoch selection).
    pub eval_loss: Option<f64>,
    /// Epochs trained for.
    pub epochs: u64,
    /// The epoch (from 1) whose weights the model holds at the end, when best-epoch
    /// selection chose it.
    pub best_epoch: Option<u32>,
    /// Held-out loss after each epoch (best-epoch selection).
    pub epoch_eval_losses: Vec<f64>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Advice about the data or settings, each naming the setting to change.
    pub warnings: Vec<String>,
    /// Training tokens per second in this process.
    pub tokens_per_second: f64,
    /// Seconds spent in this process.
    pub duration_seconds: f64,
    /// The step resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Whether the progress callback stopped the run before the last step.
    pub stopped_early: bool,
}

impl TrainReport {
    /// The stage contract's outcome (`model_uri`: where round-{n}/model was written).
    pub fn outcome(&self, model_uri: impl Into<String>) -> TrainOutcome {
        TrainOutcome {
            steps: self.steps,
            training_samples: self.training_samples + self.eval_samples,
            truncated: self.truncated,
            final_loss: self.final_loss,
            mean_loss: self.mean_loss,
            eval_loss: self.eval_loss,
            epochs: Some(self.epochs as u32),
            best_epoch: self.best_epoch,
            epoch_eval_losses: self.epoch_eval_losses.clone(),
            learning_rate: Some(self.learning_rate),
            warnings: self.warnings.clone(),
            tokens_per_second: self.tokens_per_second,
            resumed_from_step: self.resumed_from,
            model_uri: model_uri.into(),
        }
    }
}

/// A fingerprint of everything that shapes the run, so a checkpoint of another run is never
/// resumed by mistake.
fn fingerprint(model: &CausalLm, data: &Dataset, opts: &TrainOptions, total: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut o = opts.clone();
    o.checkpoint_dir = None;
    o.log_every = 0;
    o.checkpoint_every = 0;
    o.keep_checkpoints = 0;
    h.update(format!("{o:?}|{total}|{}", data.samples.len()));
    for s in &data.samples {
        for id in &s.input_ids {
            h.update(id.to_le_bytes());
        }
        h.update([0xff]);
    }
    for (n, v) in model.trainable() {
        h.update(format!("{n}{:?}", v.shape().dims()));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Mean cross-entropy over the batch's loss targets (f32).
fn batch_loss(
    model: &CausalLm,
    samples: &[&Sample],
    pad: u32,
) -> candle_core::Result<(Tensor, usize, usize)> {
    let batch = make_batch(samples, pad, model.device())?;
    let (b, s) = batch.input_ids.dims2()?;
    let h = model.hidden_states(&batch.input_ids, 0, None, None)?;
    let hidden = h.dim(2)?;
    // lm_head only where a loss is taken: prompt and pad positions never reach the vocab
    // projection (often the largest matmul of a small model).
    let h = h
        .reshape((b * s, hidden))?
        .index_select(&batch.positions, 0)?;
    let logits = model.logits(&h)?.to_dtype(DType::F32)?;
    let loss = crate::kernels::cross_entropy::cross_entropy(&logits, &batch.targets)?;
    Ok((loss, batch.tokens, batch.loss_tokens))
}

/// Trains the model's trainable tensors on `data`; see the module docs of [`super`].
/// `progress` is called after every `log_every`-th step and the last one; returning
/// `ControlFlow::Break` stops the run (what is checkpointed stays).
pub fn train(
    model: &CausalLm,
    data: Dataset,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    if data.samples.is_empty() {
        return Err(TrainError::EmptyDataset(String::new()));
    }
    if model.trainable().is_empty() {
        return Err(TrainError::Options(
            "the model has no trainable tensors (load it with Trainable::Full or Trainable::Lora)"
                .into(),
        ));
    }
    let started = Instant::now();
    let (train_idx, eval_idx) = split(
        data.samples.len(),
        opts.eval_fraction,
        if opts.select_best_epoch {
            opts.min_eval_samples
        } else {
            0
        },
        opts.max_eval_samples,
        opts.seed,
    );
    let n = train_idx.len();
    let batches_per_epoch = n.div_ceil(opts.batch_size) as u64;
    let accum = opts.gradient_accumulation as u64;
    let epochs = opts
        .epochs
        .resolve((batches_per_epoch as f64 / accum as f64).ceil() as u64) as u64;
    let micro_total = batches_per_epoch * epochs;
    let total_steps = micro_total.div_ceil(accum);
    let warnings = advice(opts, n, &data, total_steps);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let schedule = CosineSchedule::with_ratio(opts.learning_rate, opts.warmup_ratio, total_steps);
    let params = model.trainable().to_vec();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: opts.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let fp = fingerprint(model, &data, opts, total_steps);
    let mut step_losses: Vec<f64> = Vec::new();
    let mut best = BestEpoch::default();
    let mut resumed_from = None;
    if let Some(dir) = &opts.checkpoint_dir {
        checkpoint::remove_leftovers(dir)?;
        if let Some(state) = checkpoint::restore_latest(dir, &fp, model, &mut opt)? {
            resumed_from = Some(state.step);
            step_losses = state.step_losses;
            best.losses = state.epoch_eval_losses;
            best.epoch = state.best_epoch;
        }
    }
    let selecting = opts.select_best_epoch && !eval_idx.is_empty();
    let first_step = opt.step_count();
    let mut tokens_this_run = 0usize;
    let mut order_epoch = u64::MAX;
    let mut order: Vec<usize> = Vec::new();
    let mut stopped_early = false;
    let train_started = Instant::now();
    for step in first_step..total_steps {
        let mut acc = GradAccumulator::new(params.len());
        let mut loss_sum = 0.0;
        let micro_end = ((step + 1) * accum).min(micro_total);
        for micro in step * accum..micro_end {
            let epoch = micro / batches_per_epoch;
            if epoch != order_epoch {
                order = epoch_order(n, opts.seed, epoch);
                order_epoch = epoch;
            }
            let bi = (micro % batches_per_epoch) as usize * opts.batch_size;
            let samples: Vec<&Sample> = order[bi..(bi + opts.batch_size).min(n)]
                .iter()
                .map(|i| &data.samples[train_idx[*i]])
                .collect();
            model.set_dropout_seed(Some(derive(opts.seed, &[0xd409, micro])));
            if model.hand_pass_supported() {
                let batch = HostBatch::new(&samples, opts.pad_id);
                let (loss, grads) = model.hand_loss_and_grads(&batch.hand())?;
                acc.add_in_order(grads)?;
                loss_sum += loss as f64;
                tokens_this_run += batch.tokens;
            } else {
                let (loss, tokens, _) = batch_loss(model, &samples, opts.pad_id)?;
                let grads = loss.backward()?;
                acc.add(&params, &grads)?;
                loss_sum += loss.to_scalar::<f32>()? as f64;
                tokens_this_run += tokens;
            }
        }
        model.set_dropout_seed(None);
        let micro_count = acc.micro_batches().max(1) as f64;
        let mut grads = acc.take_mean()?;
        let grad_norm = clip_grad_norm(&mut grads, opts.max_grad_norm)?;
        let loss = loss_sum / micro_count;
        // Stop before the optimizer writes NaN into the weights (and into a checkpoint or a
        // published model that nothing could read back).
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
                grad_norm,
                learning_rate: opts.learning_rate,
            });
        }
        let lr = schedule.lr(step);
        opt.step(&grads, lr)?;
        step_losses.push(loss);
        let done = step + 1;
        // Epochs this step finished (several only when one step spans more than an epoch).
        let epochs_done = micro_end / batches_per_epoch;
        if selecting && epochs_done > best.losses.len() as u64 {
            let held_out = eval_loss(model, &data, &eval_idx, opts)?;
            best.record(model, epochs_done, held_out, opts.checkpoint_dir.as_deref())?;
        }
        let mut saved = false;
        if let Some(dir) = &opts.checkpoint_dir
            && opts.checkpoint_every > 0
            && (done % opts.checkpoint_every == 0 || done == total_steps)
        {
            let state = CheckpointState {
                step: done,
                total_steps,
                fingerprint: fp.clone(),
                step_losses: step_losses.clone(),
                seed: opts.seed,
                epoch_eval_losses: best.losses.clone(),
                best_epoch: best.epoch,
            };
            checkpoint::save(dir, model, &opt, &state, opts.keep_checkpoints)?;
            saved = true;
        }
        // A step that saved always reports, so the caller can ship the checkpoint on.
        if saved || done == total_steps || opts.log_every == 0 || done % opts.log_every.max(1) == 0
        {
            let elapsed = train_started.elapsed().as_secs_f64().max(1e-9);
            let per_step = elapsed / (done - first_step) as f64;
            let p = Progress {
                step: done,
                total_steps,
                epoch: (done * accum).min(micro_total) as f64 / batches_per_epoch as f64,
                loss,
                learning_rate: lr,
                grad_norm,
                tokens_per_second: tokens_this_run as f64 / elapsed,
                eta_seconds: per_step * (total_steps - done) as f64,
                checkpoint: saved,
            };
            if progress(&p).is_break() {
                stopped_early = done < total_steps;
                break;
            }
        }
    }
    let train_secs = train_started.elapsed().as_secs_f64().max(1e-9);
    let (eval_loss, best_epoch) = if eval_idx.is_empty() || stopped_early {
        (None, None)
    } else if selecting && let Some(epoch) = best.epoch {
        best.restore(model, epoch, opts.checkpoint_dir.as_deref())?;
        (best.losses.get(epoch as usize - 1).copied(), Some(epoch))
    } else {
        (Some(eval_loss(model, &data, &eval_idx, opts)?), None)
    };
    let last = &step_losses[step_losses.len().saturating_sub(10)..];
    Ok(TrainReport {
        steps: step_losses.len() as u64,
        total_steps,
        training_samples: n as u64,
        eval_samples: eval_idx.len() as u64,
        truncated: data.truncated,
        dropped: data.dropped,
        final_loss: mean(last),
        mean_loss: mean(&step_losses),
        eval_loss,
        epochs,
        best_epoch,
        epoch_eval_losses: best.losses,
        learning_rate: opts.learning_rate,
        warnings,
        tokens_per_second: tokens_this_run as f64 / train_secs,
        duration_seconds: started.elapsed().as_secs_f64(),
        resumed_from,
        stopped_early,
    })
}

/// The epoch with the lowest held-out loss so far and a copy of its trained tensors.
#[derive(Default)]
struct BestEpoch {
    /// Held-out loss after each finished epoch.
    losses: Vec<f64>,
    /// The best epoch (from 1).
    epoch: Option<u32>,
    /// Its tensors, in `trainable()` order (None after a resume: on disk only).
    tensors: Option<Vec<Tensor>>,
}

impl BestEpoch {
    /// Records the held-out loss measured once `epochs_done` epochs are finished; a new best
    /// copies the trained tensors (and keeps them next to the checkpoints, for a resume).
    fn record(
        &mut self,
        model: &CausalLm,
        epochs_done: u64,
        loss: f64,
        dir: Option<&std::path::Path>,
    ) -> Result<(), TrainError> {
        while (self.losses.len() as u64) < epochs_done {
            self.losses.push(loss);
        }
        let best_so_far = self
            .epoch
            .and_then(|e| self.losses.get(e as usize - 1))
            .copied();
        if best_so_far.is_some_and(|b| b <= loss) {
            return Ok(());
        }
        let epoch = epochs_done as u32;
        let tensors: Vec<Tensor> = model
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        if let Some(dir) = dir {
            let named = model
                .trainable()
                .iter()
                .zip(&tensors)
                .map(|((n, _), t)| (n.clone(), t.clone()))
                .collect();
            checkpoint::save_best(dir, epoch, &named)?;
        }
        self.epoch = Some(epoch);
        self.tensors = Some(tensors);
        Ok(())
    }

    /// Puts the best epoch's tensors back into the model.
    fn restore(
        &mut self,
        model: &CausalLm,
        epoch: u32,
        dir: Option<&std::path::Path>,
    ) -> Result<(), TrainError> {
        if self.losses.len() == epoch as usize {
            // The last epoch won: the model already holds its weights.
            return Ok(());
        }
        let tensors = match self.tensors.take() {
            Some(t) => t,
            None => {
                let dir = dir.ok_or_else(|| {
                    TrainError::Checkpoint(format!("the weights of best epoch {epoch} are gone"))
                })?;
                let mut named = checkpoint::load_best(dir, epoch, model.device())?;
                model
                    .trainable()
                    .iter()
                    .map(|(n, _)| {
                        named.remove(n).ok_or_else(|| {
                            TrainError::Checkpoint(format!(
                                "best epoch {epoch} in {} lacks tensor {n}",
                                dir.display()
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        for ((_, var), t) in model.trainable().iter().zip(&tensors) {
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// Warnings about a run's data and settings that training goes on with.
fn advice(opts: &TrainOptions, n: usize, data: &Dataset, total_steps: u64) -> Vec<String> {
    let mut out = Vec::new();
    if n < opts.batch_size {
        out.push(format!(
            "the training set has {n} samples, fewer than one batch (training.batchSize {}): every step sees all of them; add coverage rows or synthetic samples, or lower training.batchSize",
            opts.batch_size
        ));
    }
    let all = data.samples.len() as u64 + data.dropped;
    if all > 0 && data.truncated * 4 > all {
        out.push(format!(
            "{} of {all} samples were cut to training.maxSeqLen {} tokens: the student learns truncated answers; raise training.maxSeqLen",
            data.truncated, opts.max_seq_len
        ));
    }
    if data.dropped > 0 {
        out.push(format!(
            "{} samples had no answer token left after truncation to training.maxSeqLen {} and were dropped; raise training.maxSeqLen",
            data.dropped, opts.max_seq_len
        ));
    }
    if total_steps < 20 {
        out.push(format!(
            "only {total_steps} optimizer steps: too few for most students to learn a task; raise training.minSteps (or training.epochs), or lower training.batchSize or training.gradientAccumulation"
        ));
    }
    out
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Loss per answer token on the held-out samples (no dropout).
pub fn eval_loss(
    model: &CausalLm,
    data: &Dataset,
    idx: &[usize],
    opts: &TrainOptions,
) -> Result<f64, TrainError> {
    model.set_dropout_seed(None);
    let mut sum = 0.0;
    let mut count = 0usize;
    for chunk in idx.chunks(opts.batch_size) {
        let samples: Vec<&Sample> = chunk.iter().map(|i| &data.samples[*i]).collect();
        let (loss, _, loss_tokens) = batch_loss(model, &samples, opts.pad_id)?;
        sum += loss.detach().to_scalar::<f32>()? as f64 * loss_tokens as f64;
        count += loss_tokens;
    }
    Ok(if count == 0 { 0.0 } else { sum / count as f64 })
}
