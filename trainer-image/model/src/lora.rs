//! LoRA: low-rank adapters `y = W x + (alpha / r) · B (A dropout(x))` on chosen linear layers,
//! with the base weight W frozen. A starts uniform in ±1/sqrt(in) (PEFT's kaiming-uniform
//! bound), B starts at zero so training begins from the base model exactly. A and B are f32
//! [`Var`]s (master weights also under bf16 compute) and are the only trained tensors.

use candle_core::{DType, Device, Result, Tensor, Var};
use llamaduo::api::{ALL_LINEAR, LoraSpec};

use crate::rng::{SplitMix, derive_str};

/// Linear layers of a Llama-family decoder that can carry an adapter (Hugging Face names).
pub use llamaduo::api::LORA_TARGET_MODULES as TARGET_MODULES;

/// Bad LoRA settings.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoraError {
    /// A target module that the model does not have.
    #[error("training.lora.targetModules: unknown module(s) {unknown:?}; valid are {valid:?} or \"all-linear\"", valid = TARGET_MODULES)]
    UnknownModules {
        /// The names not found.
        unknown: Vec<String>,
    },
    /// No target module at all.
    #[error("training.lora.targetModules is empty; name at least one of {valid:?}, or \"all-linear\"", valid = TARGET_MODULES)]
    NoModules,
    /// Rank zero, negative alpha or dropout outside [0, 1).
    #[error("invalid LoRA hyperparameters: {0}")]
    Invalid(String),
}

/// LoRA hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// alpha; the update is scaled by alpha / r.
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    pub dropout: f64,
    /// Module names (see [`TARGET_MODULES`]); `all-linear` stands for all of them.
    pub target_modules: Vec<String>,
}

/// `names` with `all-linear` replaced by every module of [`TARGET_MODULES`], in that order,
/// without repeats: PEFT's spelling, resolved as PEFT resolves it for a decoder (every linear
/// layer but the output head).
pub fn expand_targets(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let group: Vec<String> = if name == ALL_LINEAR {
            TARGET_MODULES.iter().map(|m| m.to_string()).collect()
        } else {
            vec![name.clone()]
        };
        for m in group {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

impl LoraConfig {
    /// Checks rank, alpha, dropout and the module names.
    pub fn validate(&self) -> std::result::Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Invalid("lora.rank must be >= 1".into()));
        }
        if self.alpha.is_nan() || self.alpha <= 0.0 {
            return Err(LoraError::Invalid("lora.alpha must be > 0".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Invalid("lora.dropout must be in [0, 1)".into()));
        }
        if self.target_modules.is_empty() {
            return Err(LoraError::NoModules);
        }
        let unknown: Vec<String> = self
            .target_modules
            .iter()
            .filter(|m| !TARGET_MODULES.contains(&m.as_str()) && m.as_str() != ALL_LINEAR)
            .cloned()
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(LoraError::UnknownModules { unknown })
        }
    }

    /// alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether a module (by its short name, e.g. `q_proj`) gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|m| m == module || (m == ALL_LINEAR && TARGET_MODULES.contains(&module)))
    }

    /// The same settings with `all-linear` spelled out (what adapter_config.json records).
    pub fn resolved(&self) -> Self {
        Self {
            target_modules: expand_targets(&self.target_modules),
            ..self.clone()
        }
    }
}

impl From<&LoraSpec> for LoraConfig {
    fn from(s: &LoraSpec) -> Self {
        Self {
            rank: s.rank as usize,
            alpha: s.alpha,
            dropout: s.dropout,
            target_modules: expand_targets(&s.target_modules),
        }
    }
}

/// The two adapter matrices of one linear layer.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// A: (r, in).
    pub a: Var,
    /// B: (out, r).
    pub b: Var,
    /// alpha / r.
    pub scale: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
}

impl LoraAdapter {
    /// A fresh adapter for a (out, in) weight; `name` (the module's tensor prefix) and `seed`
    /// determine A, so the same seed gives the same adapter.
    pub fn init(
        cfg: &LoraConfig,
        name: &str,
        out_features: usize,
        in_features: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut rng = SplitMix::new(derive_str(seed, name));
        let a: Vec<f32> = (0..cfg.rank * in_features)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (cfg.rank, in_features), device)?;
        let b = Tensor::zeros((out_features, cfg.rank), DType::F32, device)?;
        Ok(Self {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        })
    }

    /// An adapter from given A (r, in) and B (out, r) (e.g. loaded from PEFT files).
    pub fn from_tensors(a: &Tensor, b: &Tensor, scale: f64, dropout: f64) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!("lora_A has rank {r} but lora_B has rank {rb}");
        }
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            dropout,
        })
    }

    /// scale · B @ A, the (out, in) update folded into W by a merge.
    pub fn delta(&self) -> Result<Tensor> {
        self.b
            .as_tensor()
            .matmul(self.a.as_tensor())?
            .affine(self.scale, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mods: &[&str]) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: mods.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_modules_are_named_with_the_valid_ones() {
        let e = cfg(&["q_proj", "qkv"]).validate().expect_err("unknown");
        let msg = e.to_string();
        assert!(
            msg.contains("\"qkv\"") && msg.contains("gate_proj"),
            "{msg}"
        );
        assert_eq!(cfg(&[]).validate(), Err(LoraError::NoModules));
        cfg(&["q_proj", "down_proj"]).validate().expect("valid");
    }

    #[test]
    fn all_linear_stands_for_every_decoder_projection() {
        let c = cfg(&["all-linear"]);
        c.validate().expect("PEFT's spelling is accepted");
        assert!(TARGET_MODULES.iter().all(|m| c.targets(m)));
        assert!(!c.targets("lm_head"));
        assert_eq!(c.resolved().target_modules, TARGET_MODULES.to_vec());
        assert_eq!(
            expand_targets(&["v_proj".into(), "all-linear".into()]),
            [
                "v_proj",
                "q_proj",
                "k_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj"
            ]
        );
        let spec = LoraSpec::default();
        assert_eq!(
            LoraConfig::from(&spec).target_modules,
            TARGET_MODULES.to_vec(),
            "the default adapts every linear layer"
        );
    }

    #[test]
    fn init_is_seeded_bounded_and_starts_at_zero() -> Result<()> {
        let c = cfg(&["q_proj"]);
        let a1 = LoraAdapter::init(&c, "m.q_proj", 6, 16, 1, &Device::Cpu)?;
        let a2 = LoraAdapter::init(&c, "m.q_proj", 6, 16, 1, &Device::Cpu)?;
        let a3 = LoraAdapter::init(&c, "m.v_proj", 6, 16, 1, &Device::Cpu)?;
        let v1 = a1.a.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(v1, a2.a.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        assert_ne!(v1, a3.a.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        assert!(v1.iter().all(|x| x.abs() <= 0.25));
        assert_eq!(a1.delta()?.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!(a1.scale, 2.0);
        Ok(())
    }
}
