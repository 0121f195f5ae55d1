//! The stage contract at the process boundary (docs/stage-contract.md): read the stage config
//! from `LLAMADUO_STAGE_CONFIG`, write the result to `LLAMADUO_RESULT_PATH` (the container's
//! termination message in Kubernetes) and beside the artifacts, and map it to an exit code.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use llamaduo::api::{
    ArtifactLayout, DEFAULT_RESULT_PATH, RESULT_PATH_ENV, STAGE_CONFIG_ENV, Stage, StageConfig,
    StageResult,
};

/// Reads and parses the stage config, from `--config FILE` when given, else the environment.
pub fn read_config(file: Option<&Path>) -> anyhow::Result<StageConfig> {
    let json = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the stage config {}", path.display()))?,
        None => std::env::var(STAGE_CONFIG_ENV).with_context(|| {
            format!("{STAGE_CONFIG_ENV} is not set: it must hold the stage config JSON (docs/stage-contract.md)")
        })?,
    };
    let source = match file {
        Some(path) => format!("the stage config {}", path.display()),
        None => STAGE_CONFIG_ENV.to_string(),
    };
    StageConfig::from_json(&json).with_context(|| format!("{source} is not a valid stage config"))
}

/// Where the result goes: `LLAMADUO_RESULT_PATH`, else `/dev/termination-log`.
pub fn result_path() -> PathBuf {
    std::env::var_os(RESULT_PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RESULT_PATH))
}

/// Writes the result so that a reader sees all of it or nothing: through a temporary file and
/// a rename where the path allows it. Kubernetes' `/dev/termination-log` is a bind-mounted
/// file that cannot be replaced by rename, so there the bytes are written in place (the
/// kubelet reads it only after the container exits).
pub fn write_result(path: &Path, result: &StageResult) -> anyhow::Result<()> {
    let json = result.to_termination_message();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("result"),
            std::process::id()
        ));
        let attempt = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if attempt.is_ok() {
            return Ok(());
        }
        let _ = std::fs::remove_file(&tmp);
    }
    std::fs::write(path, json.as_bytes())
        .with_context(|| format!("writing the stage result to {}", path.display()))
}

/// Keeps a copy of the result beside the round's artifacts (`round-{n}/{stage}.result.json`),
/// so the record survives the Job. Best effort: the termination message is authoritative.
pub async fn store_result(config: &StageConfig, result: &StageResult) {
    let ctx = config.context();
    let key = ArtifactLayout::result(ctx.round, config.stage());
    match llamaduo_store::Store::open(&ctx.artifacts) {
        Ok(store) => {
            if let Err(e) = store.put_json(&key, result).await {
                tracing::warn!(error = %e, key, "could not keep a copy of the stage result");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not open the artifact store"),
    }
}

/// Exit code of a stage run: 0 on success, 1 on failure.
pub fn exit_code(result: &StageResult) -> std::process::ExitCode {
    if result.succeeded {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// A failed result for a stage that could not even start (bad config, wrong subcommand).
pub fn early_failure(stage: Stage, round: u32, error: &anyhow::Error) -> StageResult {
    StageResult::failure(stage, round, format!("{error:#}"))
        .classed(crate::failure_class::of(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_is_written_whole_and_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("result.json");
        let r = StageResult::failure(Stage::Train, 3, "out of memory");
        write_result(&path, &r).expect("written");
        let back =
            StageResult::from_json(&std::fs::read_to_string(&path).expect("read")).expect("parses");
        assert_eq!(back, r);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn config_file_errors_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"stage":"train"}"#).expect("write");
        let err = read_config(Some(&path)).expect_err("incomplete config");
        assert!(
            format!("{err:#}").contains("not a valid stage config"),
            "{err:#}"
        );
    }
}
