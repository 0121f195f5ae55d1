//! How long a round trains and which epoch it keeps: with `epochs` unset the run trains for
//! enough epochs to reach `min_steps` optimizer steps (within `max_epochs`); with best-epoch
//! selection the published weights are those of the epoch with the lowest held-out loss, also
//! when the run was killed after that epoch and resumed.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use common::*;
use llamaduo::api::Architecture;
use llamaduo_model::models::{CausalLm, Trainable};
use llamaduo_model::rng::SplitMix;
use llamaduo_model::train::data::{prepare, split};
use llamaduo_model::train::trainer::eval_loss;
use llamaduo_model::train::{Dataset, Epochs, Sample, TrainOptions, train};

fn digits_data(n: usize) -> Dataset {
    let mut rng = SplitMix::new(3);
    prepare(
        (0..n)
            .map(|_| reverse_sample(&random_digits(&mut rng, 2, 6)))
            .collect(),
        16,
    )
}

/// Rows whose answers are random tokens: nothing generalizes, so a model that keeps training
/// memorizes its training rows and its held-out loss rises after the first epochs.
fn noise_data(n: usize) -> Dataset {
    let mut rng = SplitMix::new(11);
    let samples = (0..n)
        .map(|_| {
            let mut input_ids = vec![BOS];
            input_ids.extend((0..4).map(|_| DIGIT0 + rng.below(10) as u32));
            input_ids.push(SEP);
            let answer_from = input_ids.len();
            input_ids.extend((0..4).map(|_| DIGIT0 + rng.below(10) as u32));
            input_ids.push(EOS);
            let loss_mask = (0..input_ids.len()).map(|i| i >= answer_from).collect();
            Sample {
                input_ids,
                loss_mask,
            }
        })
        .collect();
    prepare(samples, 16)
}

fn no_progress(_: &llamaduo_model::train::Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn trainable(model: &CausalLm) -> HashMap<String, Vec<f32>> {
    model
        .trainable()
        .iter()
        .map(|(n, v)| {
            let values = v
                .as_tensor()
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            (n.clone(), values)
        })
        .collect()
}

#[test]
fn unset_epochs_train_at_least_min_steps_within_max_epochs() {
    let cfg = tiny_config(Architecture::Llama);
    let opts = |min_steps, max_epochs| TrainOptions {
        epochs: Epochs::MinSteps {
            min_steps,
            max_epochs,
        },
        batch_size: 4,
        gradient_accumulation: 1,
        max_seq_len: 16,
        eval_fraction: 0.1,
        ..TrainOptions::default()
    };
    // 40 samples, 4 held out: 36 train in 9 batches per epoch.
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 1);
    let r = train(&m, digits_data(40), &opts(30, 10), &mut no_progress).expect("trains");
    assert_eq!((r.eval_samples, r.training_samples), (4, 36));
    assert_eq!(r.epochs, 4, "ceil(30 / 9) epochs");
    assert_eq!(r.total_steps, 36);
    assert!(r.total_steps >= 30);
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 1);
    let r = train(&m, digits_data(40), &opts(30, 2), &mut no_progress).expect("trains");
    assert_eq!((r.epochs, r.total_steps), (2, 18), "maxEpochs caps it");
    assert!(
        r.warnings.iter().any(|w| w.contains("training.minSteps")),
        "18 steps are too few and the result says which setting to raise: {:?}",
        r.warnings
    );
    // Fewer rows than one batch: trained, with a warning naming the settings to change.
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 1);
    let tiny = TrainOptions {
        batch_size: 16,
        ..opts(30, 10)
    };
    let r = train(&m, digits_data(9), &tiny, &mut no_progress).expect("trains");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("fewer than one batch") && w.contains("training.batchSize")),
        "{:?}",
        r.warnings
    );
    // A large set reaches the minimum within one epoch.
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 1);
    let r = train(&m, digits_data(200), &opts(30, 10), &mut no_progress).expect("trains");
    assert_eq!(r.epochs, 1);
    assert!(r.total_steps >= 30);
}

fn best_epoch_opts(dir: Option<&std::path::Path>) -> TrainOptions {
    TrainOptions {
        epochs: Epochs::Fixed(12),
        select_best_epoch: true,
        learning_rate: 2e-2,
        warmup_ratio: 0.0,
        batch_size: 4,
        gradient_accumulation: 1,
        max_seq_len: 16,
        seed: 5,
        eval_fraction: 0.2,
        min_eval_samples: 8,
        checkpoint_every: 7,
        checkpoint_dir: dir.map(|d| d.to_path_buf()),
        ..TrainOptions::default()
    }
}

#[test]
fn the_epoch_with_the_lowest_held_out_loss_is_kept() {
    let cfg = tiny_config(Architecture::Llama);
    let data = noise_data(40);
    let opts = best_epoch_opts(None);
    let model = build(&cfg, Trainable::Full, 3);
    let r = train(&model, data.clone(), &opts, &mut no_progress).expect("trains");
    assert_eq!(r.epoch_eval_losses.len(), 12);
    assert_eq!(r.eval_samples, 8);
    let best = r.best_epoch.expect("a best epoch");
    let lowest = r
        .epoch_eval_losses
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    assert_eq!(r.eval_loss, Some(lowest));
    assert_eq!(r.epoch_eval_losses[best as usize - 1], lowest);
    assert!(
        (best as usize) < r.epoch_eval_losses.len(),
        "noise must overfit, so an earlier epoch wins: {:?}",
        r.epoch_eval_losses
    );
    // The model holds the best epoch's weights, not the last epoch's.
    let (_, held_out) = split(data.samples.len(), 0.2, 8, 200, opts.seed);
    let now = eval_loss(&model, &data, &held_out, &opts).expect("eval");
    assert!((now - lowest).abs() < 1e-6, "{now} vs {lowest}");
    // Without selection (same held-out slice) the last epoch's weights stay.
    let mut last = opts.clone();
    last.select_best_epoch = false;
    let model = build(&cfg, Trainable::Full, 3);
    let r2 = train(&model, data, &last, &mut no_progress).expect("trains");
    assert_eq!(r2.best_epoch, None);
    assert!(r2.eval_loss.expect("eval loss") > lowest);
}

#[test]
fn a_run_killed_after_its_best_epoch_still_publishes_it() {
    let cfg = tiny_config(Architecture::Llama);
    let data = noise_data(40);
    let whole_dir = tempfile::tempdir().expect("tmp");
    let whole = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 3);
    let mut opts = best_epoch_opts(Some(whole_dir.path()));
    opts.learning_rate = 5e-2;
    let ra = train(&whole, data.clone(), &opts, &mut no_progress).expect("whole run");
    let best = ra.best_epoch.expect("best");
    assert!(
        (best as usize) < ra.epoch_eval_losses.len(),
        "{:?}",
        ra.epoch_eval_losses
    );
    // Stop two checkpoints after the best epoch's end (8 steps per epoch), as a kill would.
    let stop_at = (best as u64 + 2) * 8;
    let dir = tempfile::tempdir().expect("tmp");
    let opts_b = best_epoch_opts(Some(dir.path()));
    let opts_b = TrainOptions {
        learning_rate: 5e-2,
        ..opts_b
    };
    let first = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 3);
    let part = train(&first, data.clone(), &opts_b, &mut |p| {
        if p.step == stop_at {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("first part");
    assert!(part.stopped_early);
    let resumed = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 3);
    let rb = train(&resumed, data, &opts_b, &mut no_progress).expect("resumed");
    assert!(rb.resumed_from.is_some());
    assert_eq!(rb.best_epoch, ra.best_epoch);
    assert_eq!(rb.epoch_eval_losses, ra.epoch_eval_losses);
    assert_eq!(rb.eval_loss, ra.eval_loss);
    assert_eq!(
        trainable(&resumed),
        trainable(&whole),
        "the resumed run publishes the best epoch's adapters"
    );
}
