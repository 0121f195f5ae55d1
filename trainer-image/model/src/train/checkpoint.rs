//! Resume points: `step-NNNNNNNN/` directories under round-{n}/checkpoints holding the trained
//! tensors (adapter or full weights, f32), the optimizer state and `state.json` (step, loss
//! history, a fingerprint of the run's config). Each is written into a temporary directory
//! and renamed into place, so a run killed at any moment leaves either a complete checkpoint
//! or none; the newest `keep` are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::models::CausalLm;
use crate::optim::AdamW;

const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const TMP_PREFIX: &str = ".tmp-";

/// What a checkpoint records besides tensors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointState {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Identifies the config and data the run was started with.
    pub fingerprint: String,
    /// Loss of every step so far (for mean and final loss after a resume).
    pub step_losses: Vec<f64>,
    /// The RNG state: every draw derives from (seed, step), so this is the seed; the step
    /// above is the counter.
    pub seed: u64,
    /// Held-out loss after each finished epoch (best-epoch selection).
    #[serde(default)]
    pub epoch_eval_losses: Vec<f64>,
    /// The epoch (from 1) with the lowest held-out loss so far; its weights are in
    /// `best-epoch-N/` next to the checkpoints.
    #[serde(default)]
    pub best_epoch: Option<u32>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> TrainError {
    move |source| TrainError::Io { context, source }
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Completed checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|n| n.parse::<u64>().ok())
            && entry.path().join(STATE).is_file()
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a checkpoint atomically and prunes old ones (and leftovers of killed writes).
pub fn save(
    dir: &Path,
    model: &CausalLm,
    opt: &AdamW,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    remove_leftovers(dir)?;
    let final_dir = dir.join(step_dir_name(state.step));
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}",
        step_dir_name(state.step),
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let tensors: HashMap<String, Tensor> = model
        .trainable()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, tmp.join(TRAINABLE))?;
    opt.save(&tmp.join(OPTIMIZER))?;
    let json = serde_json::to_vec(state).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    std::fs::write(tmp.join(STATE), json).map_err(io(format!("writing {}", tmp.display())))?;
    sync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .map_err(io(format!("replacing {}", final_dir.display())))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .map_err(io(format!("renaming into {}", final_dir.display())))?;
    sync_dir(dir);
    let all = list(dir)?;
    if all.len() > keep.max(1) {
        for (_, old) in &all[..all.len() - keep.max(1)] {
            std::fs::remove_dir_all(old).map_err(io(format!("pruning {}", old.display())))?;
        }
    }
    Ok(final_dir)
}

/// fsync of the files in a directory and the directory itself (best effort: a failed sync
/// only weakens durability across power loss, not correctness after a process kill).
fn sync_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_file()
                && let Ok(f) = std::fs::File::open(e.path())
            {
                let _ = f.sync_all();
            }
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn best_dir_name(epoch: u32) -> String {
    format!("best-epoch-{epoch:04}")
}

/// Keeps the trained tensors of the best epoch so far (`best-epoch-N/`, written atomically;
/// other epochs' copies are removed), so a resumed run can still publish them.
pub fn save_best(
    dir: &Path,
    epoch: u32,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let name = best_dir_name(epoch);
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    candle_core::safetensors::save(tensors, tmp.join(TRAINABLE))?;
    sync_dir(&tmp);
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .map_err(io(format!("replacing {}", final_dir.display())))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .map_err(io(format!("renaming into {}", final_dir.display())))?;
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let n = entry.file_name().to_string_lossy().to_string();
        if n.starts_with("best-epoch-") && n != name {
            std::fs::remove_dir_all(entry.path())
                .map_err(io(format!("removing {}", entry.path().display())))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// The tensors [`save_best`] kept for `epoch`.
pub fn load_best(
    dir: &Path,
    epoch: u32,
    device: &candle_core::Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let path = dir.join(best_dir_name(epoch)).join(TRAINABLE);
    candle_core::safetensors::load(&path, device).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: the weights of best epoch {epoch} cannot be read ({e}); delete {} to start the round over",
            path.display(),
            dir.display()
        ))
    })
}

/// Deletes temporary directories of interrupted writes.
pub fn remove_leftovers(dir: &Path) -> Result<(), TrainError> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            std::fs::remove_dir_all(entry.path())
                .map_err(io(format!("removing {}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Loads the newest checkpoint in `dir` into `model` and `opt`; checks it belongs to this run.
pub fn restore_latest(
    dir: &Path,
    fingerprint: &str,
    model: &CausalLm,
    opt: &mut AdamW,
) -> Result<Option<CheckpointState>, TrainError> {
    let Some((_, path)) = list(dir)?.pop() else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path.join(STATE))
        .map_err(io(format!("reading {}", path.join(STATE).display())))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| {
        TrainError::Checkpoint(format!("{}: corrupt state.json: {e}", path.display()))
    })?;
    if state.fingerprint != fingerprint {
        return Err(TrainError::Checkpoint(format!(
            "{} was written by a run with another config or dataset; delete {} to start over",
            path.display(),
            dir.display()
        )));
    }
    let tensors = candle_core::safetensors::load(path.join(TRAINABLE), model.device())
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.join(TRAINABLE).display())))?;
    for (name, var) in model.trainable() {
        let t = tensors.get(name).ok_or_else(|| {
            TrainError::Checkpoint(format!("{} lacks tensor {name}", path.display()))
        })?;
        if t.shape() != var.shape() {
            return Err(TrainError::Checkpoint(format!(
                "{}: tensor {name} has shape {:?}, the model {:?}",
                path.display(),
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    opt.load(&path.join(OPTIMIZER))
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.join(OPTIMIZER).display())))?;
    if opt.step_count() != state.step {
        return Err(TrainError::Checkpoint(format!(
            "{}: optimizer at step {} but state.json says {}",
            path.display(),
            opt.step_count(),
            state.step
        )));
    }
    Ok(Some(state))
}
