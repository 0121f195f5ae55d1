//! LoRA training leaves the base bit-identical and changes only adapters; a run stopped after
//! a checkpoint (as by SIGKILL: a half-written checkpoint directory left behind) and started
//! again with the same config resumes and ends bit-identical to an uninterrupted run.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use common::*;
use llamaduo::api::Architecture;
use llamaduo_model::models::{CausalLm, Trainable};
use llamaduo_model::rng::SplitMix;
use llamaduo_model::train::{Dataset, Epochs, TrainOptions, checkpoint, data::prepare, train};

fn digits_data(n: usize) -> Dataset {
    let mut rng = SplitMix::new(3);
    // Token ids must fit the tiny vocab (32): digits are 4..13.
    prepare(
        (0..n)
            .map(|_| reverse_sample(&random_digits(&mut rng, 2, 6)))
            .collect(),
        16,
    )
}

fn snapshot(model: &CausalLm) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for (n, w) in model.weights() {
        out.insert(
            n.clone(),
            w.tensor()
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec"),
        );
    }
    for (n, v) in model.trainable() {
        out.insert(
            n.clone(),
            v.as_tensor()
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec"),
        );
    }
    out
}

fn opts(dir: &std::path::Path) -> TrainOptions {
    TrainOptions {
        epochs: Epochs::Fixed(2),
        learning_rate: 1e-2,
        warmup_ratio: 0.2,
        batch_size: 4,
        gradient_accumulation: 2,
        max_seq_len: 16,
        seed: 17,
        eval_fraction: 0.1,
        checkpoint_every: 2,
        checkpoint_dir: Some(dir.to_path_buf()),
        ..TrainOptions::default()
    }
}

#[test]
fn lora_changes_only_adapters() {
    let cfg = tiny_config(Architecture::Qwen2);
    let model = build(&cfg, Trainable::Lora(lora_all(4, 0.1)), 2);
    let before = snapshot(&model);
    let tmp = tempfile::tempdir().expect("tmp");
    let report = train(&model, digits_data(40), &opts(tmp.path()), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("trains");
    assert_eq!(report.steps, report.total_steps);
    let after = snapshot(&model);
    for (name, _) in model.weights() {
        assert_eq!(before[name], after[name], "frozen {name} changed");
    }
    for (name, _) in model.trainable() {
        assert!(name.contains(".lora_"), "{name} is not an adapter");
        assert_ne!(before[name], after[name], "adapter {name} did not train");
    }
}

#[test]
fn killed_run_resumes_to_the_same_end() {
    let cfg = tiny_config(Architecture::Llama);
    let data = digits_data(40);
    // Uninterrupted.
    let dir_a = tempfile::tempdir().expect("tmp");
    let a = build(&cfg, Trainable::Lora(lora_all(4, 0.1)), 4);
    let ra = train(&a, data.clone(), &opts(dir_a.path()), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("run a");
    // Interrupted after step 5 (last checkpoint at step 4), with a half-written checkpoint
    // of step 6 left behind as a kill during the write would leave it.
    let dir_b = tempfile::tempdir().expect("tmp");
    let b1 = build(&cfg, Trainable::Lora(lora_all(4, 0.1)), 4);
    let first = train(&b1, data.clone(), &opts(dir_b.path()), &mut |p| {
        if p.step == 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("run b, first part");
    assert!(first.stopped_early);
    let junk = dir_b.path().join(".tmp-step-00000006-999");
    std::fs::create_dir_all(&junk).expect("junk");
    std::fs::write(junk.join("trainable.safetensors"), b"partial").expect("junk");
    let steps: Vec<u64> = checkpoint::list(dir_b.path())
        .expect("list")
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, vec![2, 4], "keeps the last two");
    // A fresh process: the model is rebuilt from the same base and seed.
    let b2 = build(&cfg, Trainable::Lora(lora_all(4, 0.1)), 4);
    let rb = train(&b2, data, &opts(dir_b.path()), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("run b, resumed");
    assert_eq!(rb.resumed_from, Some(4));
    assert!(!junk.exists(), "leftover of the killed write is removed");
    assert_eq!((rb.steps, rb.total_steps), (ra.steps, ra.total_steps));
    assert_eq!(rb.mean_loss, ra.mean_loss);
    assert_eq!(rb.final_loss, ra.final_loss);
    assert_eq!(rb.eval_loss, ra.eval_loss);
    assert_eq!(
        snapshot(&a),
        snapshot(&b2),
        "resumed weights differ from the uninterrupted run"
    );
}

#[test]
fn checkpoint_of_another_config_is_refused() {
    let cfg = tiny_config(Architecture::Llama);
    let dir = tempfile::tempdir().expect("tmp");
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 4);
    train(&m, digits_data(20), &opts(dir.path()), &mut |p| {
        if p.step == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("first");
    let mut other = opts(dir.path());
    other.learning_rate = 5e-3;
    let m = build(&cfg, Trainable::Lora(lora_all(4, 0.0)), 4);
    let e = train(&m, digits_data(20), &other, &mut |_| {
        ControlFlow::Continue(())
    })
    .expect_err("refused");
    assert!(e.to_string().contains("another config"), "{e}");
}

#[test]
fn empty_dataset_and_bad_options_are_errors() {
    let cfg = tiny_config(Architecture::Llama);
    let m = build(&cfg, Trainable::Full, 1);
    let e = train(
        &m,
        Dataset::default(),
        &TrainOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("empty");
    assert!(e.to_string().contains("empty"), "{e}");
    let bad = TrainOptions {
        batch_size: 0,
        ..TrainOptions::default()
    };
    let e = train(
        &m,
        digits_data(10),
        &bad,
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("bad");
    assert!(e.to_string().contains("batchSize"), "{e}");
    let frozen = build(&cfg, Trainable::None, 1);
    let e = train(
        &frozen,
        digits_data(10),
        &TrainOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect_err("nothing trainable");
    assert!(e.to_string().contains("no trainable"), "{e}");
}
