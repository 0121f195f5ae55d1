//! Which stage failures another attempt can fix. The operator and the local runner retry a
//! failed stage up to `stop.stageRetries` times; a failure no retry can fix (the student's
//! architecture is unsupported, a tensor is missing, a dataset row is malformed, the options
//! are invalid) is marked `permanent` in the stage result so the migration fails at once
//! instead of spending two more pods, or two more hours of a GPU, on the same error.
//!
//! The class is read off the error chain: the outermost error of a known type decides, and
//! anything unknown (I/O, a CUDA error, a panic turned into an error) is transient, because
//! wrongly retrying costs an attempt while wrongly giving up costs the migration.

use std::error::Error as StdError;

use llamaduo::api::{FailureClass, RowError};
use llamaduo_model::chat_template::ChatTemplateError;
use llamaduo_model::config::ConfigError;
use llamaduo_model::device::DeviceError;
use llamaduo_model::from_scratch::FromScratchError;
use llamaduo_model::gguf::GgufError;
use llamaduo_model::hub_dir::HubDirError;
use llamaduo_model::lora::LoraError;
use llamaduo_model::peft::PeftError;
use llamaduo_model::tokenizer::TokenizerError;
use llamaduo_model::train::TrainError;
use llamaduo_service_llm::LlmError;
use llamaduo_store::StoreError;

use crate::evaluate::EvalError;
use crate::evaluate::load::LoadError;

use FailureClass::{Permanent, Transient};

/// The class of a stage's error.
pub fn of(error: &anyhow::Error) -> FailureClass {
    if error.downcast_ref::<PermanentError>().is_some() {
        return Permanent;
    }
    error
        .chain()
        .find_map(known)
        .unwrap_or(FailureClass::Transient)
}

/// The class of a typed error, read down its `source()` chain as [`of`] does.
pub fn of_error(error: &(dyn StdError + 'static)) -> FailureClass {
    std::iter::successors(Some(error), |e: &&(dyn StdError + 'static)| (*e).source())
        .find_map(known)
        .unwrap_or(FailureClass::Transient)
}

/// An error the stage itself knows no retry can fix (a check of its inputs failed), for the
/// places that have no typed error to say so: `Err(PermanentError::new("..."))?` or
/// `.context(PermanentError::new("..."))`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PermanentError(String);

impl PermanentError {
    /// A permanent error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The class of one error of the chain, when its type is known.
fn known(e: &(dyn StdError + 'static)) -> Option<FailureClass> {
    if e.is::<PermanentError>()
        || e.is::<RowError>()
        || e.is::<LoraError>()
        || e.is::<ChatTemplateError>()
    {
        return Some(Permanent);
    }
    // Wrapping variants are classed by what they wrap, explicitly: a `#[error(transparent)]`
    // variant's source() skips the wrapped error itself.
    if let Some(e) = e.downcast_ref::<EvalError>() {
        return match e {
            EvalError::Store(inner) => Some(of_error(inner)),
            EvalError::Load(inner) => Some(of_error(inner)),
            EvalError::TestSet(_) | EvalError::Config(_) => Some(Permanent),
            EvalError::Judge(e) | EvalError::Teacher(e) => Some(e.failure_class()),
            // Generation and the embedding model may fail on resources; the judge may parse
            // better on another attempt.
            EvalError::Generate(_) | EvalError::Embedding(_) | EvalError::TooFewScored(_) => {
                Some(Transient)
            }
        };
    }
    if let Some(e) = e.downcast_ref::<LoadError>() {
        return match e {
            LoadError::NoBase(_) | LoadError::Gguf(_) => Some(Permanent),
            LoadError::Device(DeviceError::CudaUnavailable { .. }) => Some(Transient),
            LoadError::Device(_) => Some(Permanent),
            LoadError::Store(inner) => Some(of_error(inner)),
            LoadError::HubDir(inner) => Some(of_error(inner)),
            LoadError::Config(inner) => Some(of_error(inner)),
            LoadError::Adapter(inner) => Some(of_error(inner)),
            LoadError::Candle(inner) => Some(of_error(inner)),
        };
    }
    if let Some(e) = e.downcast_ref::<ConfigError>() {
        return Some(match e {
            ConfigError::Read { source, .. } => io(source),
            ConfigError::Parse { .. }
            | ConfigError::UnknownArchitecture { .. }
            | ConfigError::Invalid(_) => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<HubDirError>() {
        return Some(match e {
            HubDirError::Io { source, .. } => io(source),
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<TokenizerError>() {
        return Some(match e {
            TokenizerError::Io { source, .. } => io(source),
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<GgufError>() {
        return Some(match e {
            GgufError::Io { source, .. } => io(source),
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<FromScratchError>() {
        return Some(match e {
            FromScratchError::Io { source, .. } => io(source),
            FromScratchError::Tokenizer(inner) => of_error(inner),
            FromScratchError::Config(inner) => of_error(inner),
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<PeftError>() {
        return Some(match e {
            PeftError::Io { source, .. } => io(source),
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<TrainError>() {
        return match e {
            TrainError::Candle(c) => Some(candle(c)),
            TrainError::EmptyDataset(_)
            | TrainError::Row { .. }
            | TrainError::Options(_)
            // Training is deterministic: the same learning rate diverges at the same step.
            | TrainError::Diverged { .. } => Some(Permanent),
            TrainError::Io { source, .. } => Some(io(source)),
            TrainError::Checkpoint(_) => Some(Transient),
        };
    }
    if let Some(e) = e.downcast_ref::<candle_core::Error>() {
        return Some(candle(e));
    }
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return Some(if e.is_permanent() {
            Permanent
        } else {
            Transient
        });
    }
    if let Some(e) = e.downcast_ref::<LlmError>() {
        return Some(e.failure_class());
    }
    // Plain errors at the bottom of a chain (the stage config, a file a stage reads itself).
    if e.is::<std::env::VarError>() {
        return Some(Permanent);
    }
    if let Some(e) = e.downcast_ref::<serde_json::Error>() {
        return Some(match e.classify() {
            serde_json::error::Category::Io => Transient,
            _ => Permanent,
        });
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return Some(io(e));
    }
    None
}

/// A missing or unreadable file stays missing; other I/O errors may pass.
fn io(e: &std::io::Error) -> FailureClass {
    match e.kind() {
        std::io::ErrorKind::NotFound
        | std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::InvalidData => Permanent,
        _ => Transient,
    }
}

/// Checkpoint contents that do not fit the model stay that way; device and allocation
/// errors (a CUDA OOM, a driver hiccup) may pass on another node or attempt.
fn candle(e: &candle_core::Error) -> FailureClass {
    use candle_core::Error as C;
    match e {
        C::CannotFindTensor { .. }
        | C::UnexpectedShape { .. }
        | C::ShapeMismatchBinaryOp { .. }
        | C::UnexpectedDType { .. }
        | C::DTypeMismatchBinaryOp { .. }
        | C::SafeTensor(_) => Permanent,
        C::Io(e) => io(e),
        C::WithBacktrace { inner, .. } | C::Context { inner, .. } | C::WithPath { inner, .. } => {
            candle(inner)
        }
        _ => Transient,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn unsupported_architecture_is_permanent_under_context() {
        let e = anyhow::Error::new(ConfigError::UnknownArchitecture {
            found: "Phi3ForCausalLM".into(),
        })
        .context("loading the student base")
        .context("round 1");
        assert_eq!(of(&e), Permanent);
    }

    #[test]
    fn typed_errors_are_classed_by_what_they_say() {
        let missing = anyhow::Error::new(candle_core::Error::CannotFindTensor {
            path: "model.layers.0.mlp.up_proj.weight".into(),
        })
        .context("loading weights");
        assert_eq!(of(&missing), Permanent);
        let row = anyhow::Error::new(TrainError::Row {
            index: 3,
            id: " (id x)".into(),
            message: "no answer".into(),
        });
        assert_eq!(of(&row), Permanent);
        let oom = anyhow::Error::new(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()));
        assert_eq!(of(&oom), Transient);
        let reset = anyhow::Error::new(LlmError::Connection("reset by peer".into()));
        assert_eq!(of(&reset), Transient);
        let gone = anyhow::Error::new(StoreError::NotFound {
            url: "file:///data/coverage.jsonl".into(),
        })
        .context("reading coverage");
        assert_eq!(of(&gone), Permanent);
        let flaky = anyhow::Error::new(StoreError::Io {
            op: "reading",
            path: "/artifacts/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        });
        assert_eq!(of(&flaky), Transient);
    }

    #[test]
    fn the_outermost_known_error_decides_and_unknown_ones_are_transient() {
        // A permanent marker put around an I/O error by a stage check.
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let marked = Err::<(), _>(io)
            .context(PermanentError::new("the base has no tokenizer"))
            .unwrap_err();
        assert_eq!(of(&marked), Permanent);
        assert_eq!(of(&anyhow::anyhow!("something odd")), Transient);
        let timeout = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(of(&timeout), Transient);
        let no_config = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("reading the stage config /etc/llamaduo/stage.json");
        assert_eq!(of(&no_config), Permanent);
        let bad_json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(
            of(&anyhow::Error::new(bad_json).context("stage config")),
            Permanent
        );
    }
}
