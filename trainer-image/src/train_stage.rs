//! The `train` stage: fine-tune the student on coverage train plus the synthetic samples of
//! rounds 1..n, and publish round-{n}/model (a PEFT adapter for LoRA, full weights otherwise).
//!
//! Every round starts from the same base model (LlamaDuo retrains on the accumulated data
//! rather than stacking adapters), so a round's model depends only on its data and the spec.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use llamaduo::api::{
    ArtifactLayout, DatasetRow, Progress, Stage, StageResult, TrainConfig, TrainOutcome,
    TrainingMethod,
};
use llamaduo_model::config::ModelConfig;
use llamaduo_model::device::{DeviceChoice, compute_dtype, device_name};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::lora::LoraConfig;
use llamaduo_model::models::{CausalLm, LoadOptions, Trainable};
use llamaduo_model::train::{TrainOptions, data::tokenize_rows, train};
use llamaduo_store::{Store, read_jsonl_within};
use serde::{Deserialize, Serialize};

use crate::checkpoint_mirror::CheckpointMirror;
use crate::student;

/// Written last into round-{n}/model: what the directory holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelManifest {
    /// lora (adapter files) or full (weights).
    pub method: TrainingMethod,
    /// For LoRA: the base model the adapter applies to (a URL, or the store key of a
    /// from-scratch base relative to the migration root).
    pub base: String,
    /// The training outcome that produced it.
    pub outcome: TrainOutcome,
}

/// Runs the stage; failures become a failed result with a one-line reason.
pub async fn run_train(config: &TrainConfig) -> StageResult {
    let started = Instant::now();
    let round = config.context.round;
    let mut result = match train_round(config).await {
        Ok(outcome) => StageResult {
            train: Some(outcome),
            ..StageResult::success(Stage::Train, round)
        },
        Err(e) => StageResult::failure(Stage::Train, round, format!("{e:#}"))
            .classed(crate::failure_class::of(&e)),
    };
    result.duration_seconds = started.elapsed().as_secs_f64();
    result
}

/// The training rows of round `round`: coverage train, then each round's synthetic samples,
/// none over `max_row_bytes`.
pub async fn training_rows(
    store: &Store,
    round: u32,
    max_row_bytes: u64,
) -> anyhow::Result<Vec<DatasetRow>> {
    let mut rows: Vec<DatasetRow> =
        read_jsonl_within(store, ArtifactLayout::COVERAGE_TRAIN, max_row_bytes)
            .await
            .with_context(|| {
                format!(
                    "reading {} (the synthesize stage of round 1 writes it)",
                    store.url_of(ArtifactLayout::COVERAGE_TRAIN)
                )
            })?;
    for r in 1..=round {
        let key = ArtifactLayout::synthetic(r);
        if store.exists(&key).await? {
            rows.extend(read_jsonl_within::<DatasetRow>(store, &key, max_row_bytes).await?);
        } else if let Some(stem) = key.strip_suffix(".jsonl")
            && !store.list(&format!("{stem}.parts")).await?.is_empty()
        {
            // Committed samples of a synthesis that never finished are not training data
            // yet; say so rather than train without them silently.
            tracing::warn!(
                round = r,
                parts = %store.url_of(&format!("{stem}.parts")),
                "round {r}'s synthesis left committed samples but never finished; they are not used: rerun that round's synthesize stage"
            );
        }
    }
    Ok(rows)
}

async fn train_round(config: &TrainConfig) -> anyhow::Result<TrainOutcome> {
    let ctx = &config.context;
    let store = Store::open(&ctx.artifacts)?;
    let model_key = ArtifactLayout::model(ctx.round);
    let manifest_key = format!("{model_key}/{}", ArtifactLayout::MODEL_MANIFEST);
    if let Some(bytes) = store.get_opt(&manifest_key).await? {
        let manifest: ModelManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", store.url_of(&manifest_key)))?;
        tracing::info!(
            "round {} is already trained; reporting the stored outcome",
            ctx.round
        );
        return Ok(manifest.outcome);
    }

    // Before any data moves: a pod that asked for a GPU it cannot have fails now.
    let selected = DeviceChoice::from_env()?.select()?;
    let rows = training_rows(&store, ctx.round, ctx.max_row_bytes).await?;
    // Checked before a from-scratch base is built: its tokenizer is trained on these rows and
    // then frozen for every later round.
    if rows.is_empty() {
        return Err(llamaduo_model::train::TrainError::EmptyDataset(format!(
            ": {} and the synthetic samples of rounds 1..{} hold no rows; fix coverage.source (it must hold at least two rows) or check the synthesize stage's result",
            store.url_of(ArtifactLayout::COVERAGE_TRAIN),
            ctx.round
        ))
        .into());
    }
    let training = &config.training;
    let base_dir = student::base_model_dir(
        &config.student,
        &store,
        &rows,
        training.seed,
        training.max_seq_len as usize,
    )
    .await?;
    let base_ref = match &config.student.base_model {
        Some(url) => url.clone(),
        None => ArtifactLayout::STUDENT_BASE.to_string(),
    };

    let (checkpoints, mut mirror) = match store.local_path() {
        Some(root) => (root.join(ArtifactLayout::checkpoints(ctx.round)), None),
        // Object stores: checkpoints are written on the pod's scratch disk and mirrored to
        // the store after every save, so a new pod resumes (checkpoint_mirror.rs).
        None => {
            let local = student::scratch_root()?
                .join(&ctx.namespace)
                .join(&ctx.migration)
                .join(ArtifactLayout::checkpoints(ctx.round));
            let mut mirror = CheckpointMirror::new(
                store.clone(),
                ArtifactLayout::checkpoints(ctx.round),
                &local,
            );
            let pulled = mirror.pull().await?;
            if pulled > 0 {
                tracing::info!(
                    files = pulled,
                    from = %store.url_of(&ArtifactLayout::checkpoints(ctx.round)),
                    "pulled the checkpoints of an earlier attempt"
                );
            }
            (local, Some(mirror))
        }
    };
    let out = tempfile::tempdir_in(student::scratch_root()?)?;
    let spec = config.clone();
    let out_path = out.path().to_path_buf();
    let device = selected.device;
    let checkpoints_dir = checkpoints.clone();
    let runtime = tokio::runtime::Handle::current();
    let (report, mirror) = tokio::task::spawn_blocking(move || {
        // Every save goes up before training goes on: a kill after it loses nothing.
        let mut after_checkpoint = || {
            if let Some(m) = mirror.as_mut()
                && let Err(e) = runtime.block_on(m.push())
            {
                // Training goes on; a kill before the next good push resumes from older.
                tracing::warn!(error = %format!("{e:#}"), "could not mirror the checkpoint to the artifact store");
            }
        };
        let report = fit(
            &spec,
            &rows,
            &base_dir,
            &checkpoints,
            &out_path,
            &device,
            &mut after_checkpoint,
        );
        report.map(|r| (r, mirror))
    })
    .await??;

    let outcome = report.outcome(store.url_of(&model_key));
    let manifest = ModelManifest {
        method: training.method,
        base: base_ref,
        outcome: outcome.clone(),
    };
    std::fs::write(
        out.path().join(ArtifactLayout::MODEL_MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    student::publish_dir(
        &store,
        out.path(),
        &model_key,
        ArtifactLayout::MODEL_MANIFEST,
    )
    .await?;
    // The published manifest now answers every rerun of this round, so the resume points
    // (weights plus optimizer state, up to several times the model's size) are only disk
    // taken from the claim. Failing to remove them costs space, not the round.
    match std::fs::remove_dir_all(&checkpoints_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            dir = %checkpoints_dir.display(),
            error = %e,
            "could not remove the round's checkpoints after publishing its model"
        ),
    }
    if let Some(m) = mirror
        && let Err(e) = m.remove().await
    {
        tracing::warn!(error = %format!("{e:#}"), "could not remove the round's mirrored checkpoints after publishing its model");
    }
    Ok(outcome)
}

fn fit(
    config: &TrainConfig,
    rows: &[DatasetRow],
    base_dir: &Path,
    checkpoints: &Path,
    out: &Path,
    device: &candle_core::Device,
    after_checkpoint: &mut dyn FnMut(),
) -> anyhow::Result<llamaduo_model::train::TrainReport> {
    let training = &config.training;
    let dtype = compute_dtype(training.precision, device);
    tracing::info!(device = %device_name(device), dtype = ?dtype, "training device");
    let hub = HubDir::open(base_dir)?;
    let cfg = ModelConfig::from_file(&base_dir.join("config.json"))?;
    let tokenizer = hub.tokenizer()?;
    let template = hub.chat_template(&tokenizer, config.student.chat_template.as_deref())?;
    let trainable = match training.method {
        TrainingMethod::Full => Trainable::Full,
        TrainingMethod::Lora => Trainable::Lora(LoraConfig::from(&training.lora)),
    };
    let model = CausalLm::load(
        &cfg,
        hub.var_builder(dtype, device)?,
        &LoadOptions {
            dtype,
            trainable: trainable.clone(),
            seed: training.seed,
        },
    )?;
    let mut opts = TrainOptions::from_spec(training, &config.student);
    opts.pad_id = tokenizer.pad_id();
    opts.checkpoint_dir = Some(checkpoints.to_path_buf());
    std::fs::create_dir_all(checkpoints)?;
    let data = tokenize_rows(&template, &tokenizer, rows, opts.max_seq_len)?;
    let truncated = data.truncated;
    let mut on_progress = |p: &llamaduo_model::train::Progress| {
        let line = Progress {
            done: p.step,
            total: Some(p.total_steps),
            unit: Some("steps".into()),
            loss: Some(p.loss),
            tokens_per_second: Some(p.tokens_per_second),
            eta_seconds: Some(p.eta_seconds),
            message: None,
        };
        println!("{}", line.to_line());
        if p.checkpoint {
            after_checkpoint();
        }
        ControlFlow::Continue(())
    };
    let mut report = train(&model, data, &opts, &mut on_progress)?;
    report.truncated = truncated as u64;

    match &trainable {
        Trainable::Lora(lora) => {
            llamaduo_model::peft::save_adapter(&model, lora, &base_name(config), out)?;
            if training.merge_adapter {
                llamaduo_model::peft::save_full(&model, &out.join("merged"), true)?;
                copy_tokenizer_files(base_dir, &out.join("merged"))?;
            }
        }
        _ => llamaduo_model::peft::save_full(&model, out, false)?,
    }
    copy_tokenizer_files(base_dir, out)?;
    Ok(report)
}

/// The adapter's `base_model_name_or_path`: the base's URL without credentials (the file is
/// published next to the model).
fn base_name(config: &TrainConfig) -> String {
    config
        .student
        .base_model
        .as_deref()
        .map(llamaduo_store::redact_url)
        .unwrap_or_else(|| {
            format!(
                "{}/{}",
                config.context.artifacts,
                ArtifactLayout::STUDENT_BASE
            )
        })
}

/// The files of a model directory that describe its tokenizer and chat template. Newer
/// transformers keep the template in `chat_template.jinja` rather than in
/// tokenizer_config.json: without it the published model would fall back to ChatML.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    llamaduo_model::tokenizer::CHAT_TEMPLATE_FILE,
];

/// Copies the tokenizer (and, for adapters, nothing else) so round-{n}/model is usable alone.
fn copy_tokenizer_files(base: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for name in TOKENIZER_FILES {
        let src: PathBuf = base.join(name);
        if src.is_file() && !out.join(name).exists() {
            std::fs::copy(&src, out.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tokenizer_files_keeps_the_chat_template_file() {
        let base = tempfile::tempdir().expect("tmp");
        let out = tempfile::tempdir().expect("tmp");
        for name in TOKENIZER_FILES {
            std::fs::write(base.path().join(name), name).expect("write");
        }
        std::fs::write(base.path().join("model.safetensors"), "weights").expect("write");
        let dest = out.path().join("model");
        copy_tokenizer_files(base.path(), &dest).expect("copies");
        for name in TOKENIZER_FILES {
            assert_eq!(
                std::fs::read_to_string(dest.join(name)).expect(name),
                name,
                "{name}"
            );
        }
        assert!(
            dest.join("chat_template.jinja").is_file(),
            "the model's template must travel with it"
        );
        assert!(!dest.join("model.safetensors").exists());
    }

    fn row(id: &str) -> DatasetRow {
        serde_json::from_value(serde_json::json!({
            "messages": [
                {"role": "user", "content": format!("question {id}")},
                {"role": "assistant", "content": format!("answer {id}")}
            ],
            "id": id,
        }))
        .expect("row")
    }

    fn ids(rows: &[DatasetRow]) -> Vec<String> {
        rows.iter()
            .map(|r| r.id.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn round_n_trains_on_coverage_train_and_the_synthetic_samples_of_rounds_1_to_n() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(&format!("file://{}", tmp.path().display())).expect("store");
        llamaduo_store::write_jsonl(
            &store,
            ArtifactLayout::COVERAGE_TRAIN,
            &[row("c1"), row("c2")],
        )
        .await
        .expect("coverage");
        for r in 1..=3 {
            let rows = [row(&format!("s{r}a")), row(&format!("s{r}b"))];
            llamaduo_store::write_jsonl(&store, &ArtifactLayout::synthetic(r), &rows)
                .await
                .expect("synthetic");
        }
        // Round 4's synthesis committed a part but never finished: not training data.
        store
            .put(
                &format!(
                    "{}.parts/part-00000.jsonl",
                    ArtifactLayout::synthetic(4).trim_end_matches(".jsonl")
                ),
                serde_json::to_vec(&row("s4a")).expect("json"),
            )
            .await
            .expect("part");

        let round = |n| {
            let store = &store;
            async move {
                ids(
                    &training_rows(store, n, llamaduo::api::DEFAULT_MAX_ROW_BYTES)
                        .await
                        .expect("rows"),
                )
            }
        };
        assert_eq!(round(1).await, ["c1", "c2", "s1a", "s1b"]);
        assert_eq!(
            round(2).await,
            ["c1", "c2", "s1a", "s1b", "s2a", "s2b"],
            "round 2 keeps round 1's samples: every round retrains on all of them"
        );
        assert_eq!(
            round(3).await,
            ["c1", "c2", "s1a", "s1b", "s2a", "s2b", "s3a", "s3b"]
        );
        assert_eq!(
            round(4).await.len(),
            8,
            "an unfinished synthesis adds nothing"
        );
        // Round 0 (the base student) trains on nothing but would read coverage only.
        assert_eq!(round(0).await, ["c1", "c2"]);
    }
}
