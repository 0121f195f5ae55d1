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
    /// Loss per token on the held-out slice.
    pub eval_loss: Option<f64>,
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
            tokens_per_second: self.tokens_per_second,
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
        opts.max_eval_samples,
        opts.seed,
    );
    let n = train_idx.len();
    let batches_per_epoch = n.div_ceil(opts.batch_size) as u64;
    let micro_total = batches_per_epoch * opts.epochs as u64;
    let accum = opts.gradient_accumulation as u64;
    let total_steps = micro_total.div_ceil(accum);
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
    let mut resumed_from = None;
    if let Some(dir) = &opts.checkpoint_dir {
        checkpoint::remove_leftovers(dir)?;
        if let Some(state) = checkpoint::restore_latest(dir, &fp, model, &mut opt)? {
            resumed_from = Some(state.step);
            step_losses = state.step_losses;
        }
    }
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
            });
        }
        let lr = schedule.lr(step);
        opt.step(&grads, lr)?;
        step_losses.push(loss);
        let done = step + 1;
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
            };
            checkpoint::save(dir, model, &opt, &state, opts.keep_checkpoints)?;
            saved = true;
        }
        if done == total_steps || opts.log_every == 0 || done % opts.log_every.max(1) == 0 {
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
    let eval_loss = if eval_idx.is_empty() || stopped_early {
        None
    } else {
        Some(eval_loss(model, &data, &eval_idx, opts)?)
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
        tokens_per_second: tokens_this_run as f64 / train_secs,
        duration_seconds: started.elapsed().as_secs_f64(),
        resumed_from,
        stopped_early,
    })
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
