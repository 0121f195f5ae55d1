//! Rendering the [`StageConfig`] of a stage run from the spec: the one place that maps spec
//! fields onto the stage contract, shared by every executor.

use crate::api::{
    ArtifactLayout, EvaluateConfig, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, Stage,
    StageConfig, StageContext, StageRun, SynthesizeConfig, TrainConfig,
};

use super::MigrationId;

/// The spec cannot be turned into a stage config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No storage is configured and the executor has no fallback.
    #[error(
        "spec.storage is required in a cluster: set storage.url (file:///artifacts with storage.volume.claimName, or s3://, gs://, az://)"
    )]
    StorageRequired,
}

/// Synthetic samples round `round` asks for: none in round 0 (the base student: its
/// synthesize stage only freezes the coverage split), `synthesis.initialSamples` in round 1,
/// `synthesis.samplesPerRound` later. Zero skips the synthesize stage after round 1.
pub fn samples_for_round(spec: &LlamaDuoMigrationSpec, round: u32) -> u32 {
    match round {
        0 => 0,
        1 => spec.synthesis.initial_samples,
        _ => spec.synthesis.samples_per_round,
    }
}

/// Service tokens still allowed by `stop.maxServiceTokens`; `None` when there is no budget.
pub fn token_budget(spec: &LlamaDuoMigrationSpec, status: &LlamaDuoMigrationStatus) -> Option<u64> {
    spec.stop
        .max_service_tokens
        .map(|max| max.saturating_sub(status.service_tokens.total()))
}

/// The root URL of the migration's artifacts. In a cluster: the one `status.artifacts`
/// recorded when the first stage started (so a later change of `spec.storage` cannot split a
/// migration over two places), else `{storage}/{namespace}/{name}/{uid}`; a migration that
/// started rounds before the root was recorded (an older operator) keeps the root it had,
/// without the uid. Locally (no uid) it is always derived again, so a work directory that was
/// moved still resumes from its own files.
pub fn artifacts_root(
    id: &MigrationId,
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
) -> Result<String, RenderError> {
    if let (Some(_), Some(root)) = (&id.uid, &status.artifacts) {
        return Ok(root.clone());
    }
    let url = spec
        .storage
        .as_ref()
        .map(|s| s.url.as_str())
        .or(id.default_storage_url.as_deref())
        .ok_or(RenderError::StorageRequired)?;
    let layout = ArtifactLayout::new(url, &id.namespace, &id.name);
    Ok(match &id.uid {
        Some(uid) if status.rounds.is_empty() => layout.url(uid),
        _ => layout.root().to_string(),
    })
}

/// The config of `run`, rendered from the current spec (a spec change applies from the next
/// run on). `token_budget` is what is left of `stop.maxServiceTokens`.
pub fn stage_config(
    id: &MigrationId,
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    run: &StageRun,
    token_budget: Option<u64>,
) -> Result<StageConfig, RenderError> {
    let context = StageContext {
        namespace: id.namespace.clone(),
        migration: id.name.clone(),
        round: run.round,
        attempt: run.attempt,
        artifacts: artifacts_root(id, spec, status)?,
        max_row_bytes: spec.coverage.max_row_bytes(),
    };
    Ok(match run.stage {
        Stage::Synthesize => StageConfig::Synthesize(SynthesizeConfig {
            context,
            task: spec.task.clone(),
            coverage: spec.coverage.clone(),
            teacher: spec.teacher.clone(),
            synthesis: spec.synthesis.clone(),
            samples: samples_for_round(spec, run.round),
            token_budget,
        }),
        Stage::Train => StageConfig::Train(TrainConfig {
            context,
            student: spec.student.clone(),
            training: spec.training.clone(),
        }),
        Stage::Evaluate => StageConfig::Evaluate(EvaluateConfig {
            context,
            task: spec.task.clone(),
            student: spec.student.clone(),
            training: spec.training.clone(),
            judge: spec.judge().clone(),
            teacher: spec.teacher.clone(),
            evaluation: spec.evaluation.clone(),
            token_budget,
        }),
    })
}
