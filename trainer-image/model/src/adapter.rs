//! Reading a Hugging Face PEFT LoRA adapter (`adapter_config.json` +
//! `adapter_model.safetensors`): one parser of the config and one rule for each module's
//! scale, whichever way the adapter is used:
//! - folded into the base weights ([`merge_adapter`]: evaluation and serving), or
//! - loaded as a trainable LoRA ([`read_adapter_config`] + [`load_adapter_weights`]).
//!
//! A module's update is `scale · B·A` with `scale = alpha / r` (PEFT's formula), or
//! `alpha / sqrt(r)` with `use_rslora`; r and alpha are the module's entries in
//! `rank_pattern` and `alpha_pattern` when a key there matches it, else `r` and
//! `lora_alpha` ([`AdapterConfig::scale_of`]). A pattern key matches a module as PEFT
//! matches it: the module's whole name, or a suffix of it that starts after a `.`
//! (`q_proj`, `layers.1.self_attn.q_proj`); the first matching key in file order wins.
//! PEFT's keys are regular expressions: keys using regex syntax beyond `.` are refused.
//!
//! The trainable LoRA has one rank and one alpha for every module and scales by alpha / r:
//! [`AdapterConfig::lora_config`] turns `use_rslora` into the alpha with the same scale
//! (alpha · sqrt(r)) and refuses non-empty patterns, so both readers give the same forward.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::lora::LoraConfig;
use crate::models::CausalLm;
use crate::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, PeftError};

/// A PEFT `rank_pattern` or `alpha_pattern`: keys naming modules, with their values, in the
/// order of the file (PEFT uses the first key that matches a module).
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern<T>(pub Vec<(String, T)>);

impl<T> Default for Pattern<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Pattern<T> {
    /// Whether the pattern has no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of the first key matching `module` (see [`key_matches`]).
    pub fn get(&self, module: &str) -> Option<&T> {
        self.0
            .iter()
            .find(|(k, _)| key_matches(k, module))
            .map(|(_, v)| v)
    }

    /// The first key that uses regular-expression syntax (beyond `.`), which is not supported.
    fn regex_key(&self) -> Option<&str> {
        const META: &[char] = &[
            '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\',
        ];
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| k.contains(META) || k.is_empty())
    }
}

/// Whether a pattern key names `module` (a module name without PEFT's prefix, e.g.
/// `model.layers.0.self_attn.q_proj`): the whole name, or a suffix after a `.`.
pub fn key_matches(key: &str, module: &str) -> bool {
    module == key
        || module
            .strip_suffix(key)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl<T: Serialize> Serialize for Pattern<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Pattern<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Pattern<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object from module names to values, or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Pattern::default())
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Pattern::default())
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<String, T>()? {
                    out.push(entry);
                }
                Ok(Pattern(out))
            }
        }
        d.deserialize_option(V(PhantomData))
    }
}

/// adapter_config.json as PEFT writes it for a LoRA adapter of a causal LM. Fields PEFT
/// always writes default to PEFT's own defaults when absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Always `CAUSAL_LM`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model (hub id or path).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank of every module not in `rank_pattern` (PEFT's default 8).
    #[serde(default = "peft_default_rank")]
    pub r: usize,
    /// alpha of every module not in `alpha_pattern` (PEFT's default 8).
    #[serde(default = "peft_default_alpha")]
    pub lora_alpha: f64,
    /// Dropout.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Target module names (a list or `all-linear`; a regex string is not supported as a
    /// trainable LoRA, and not needed to merge).
    #[serde(default)]
    pub target_modules: serde_json::Value,
    /// `none` (no bias training).
    #[serde(default = "none")]
    pub bias: String,
    /// false for Linear layers (true is GPT-2's Conv1D, not supported).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// rsLoRA scaling: alpha / sqrt(r) instead of alpha / r.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA; not supported.
    #[serde(default)]
    pub use_dora: bool,
    /// Per-module ranks (module key → r).
    #[serde(default)]
    pub rank_pattern: Pattern<usize>,
    /// Per-module alphas (module key → alpha).
    #[serde(default)]
    pub alpha_pattern: Pattern<f64>,
    /// Modules trained in full and saved beside the adapter; only null or `[]` is supported.
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    /// Every other field, kept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

fn peft_default_rank() -> usize {
    8
}

fn peft_default_alpha() -> f64 {
    8.0
}

/// PEFT's scale of a LoRA update: alpha / r, or alpha / sqrt(r) with rsLoRA.
pub fn lora_scale(alpha: f64, rank: usize, use_rslora: bool) -> f64 {
    let r = rank as f64;
    if use_rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}

impl AdapterConfig {
    /// The config for a LoRA adapter of `base`.
    pub fn for_lora(cfg: &LoraConfig, base: &str) -> Self {
        let mut extra = serde_json::Map::new();
        for (k, v) in [
            ("inference_mode", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!(true)),
            ("layers_to_transform", serde_json::Value::Null),
            ("layers_pattern", serde_json::Value::Null),
            ("revision", serde_json::Value::Null),
        ] {
            extra.insert(k.into(), v);
        }
        let mut targets = crate::lora::expand_targets(&cfg.target_modules);
        targets.sort();
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base.into()),
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            target_modules: serde_json::json!(targets),
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            rank_pattern: Pattern::default(),
            alpha_pattern: Pattern::default(),
            modules_to_save: None,
            extra,
        }
    }

    /// adapter_config.json of the adapter directory `dir`.
    pub fn read(dir: &Path) -> Result<Self, PeftError> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| PeftError::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The rank of `module` (a module name without PEFT's prefix): its `rank_pattern` entry,
    /// else `r`.
    pub fn rank_of(&self, module: &str) -> usize {
        self.rank_pattern.get(module).copied().unwrap_or(self.r)
    }

    /// The alpha of `module`: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha_of(&self, module: &str) -> f64 {
        self.alpha_pattern
            .get(module)
            .copied()
            .unwrap_or(self.lora_alpha)
    }

    /// The scale of `module`'s update B·A, as PEFT computes it (see the module docs).
    pub fn scale_of(&self, module: &str) -> f64 {
        lora_scale(self.alpha_of(module), self.rank_of(module), self.use_rslora)
    }

    /// What of this adapter neither reader supports, if anything.
    fn unsupported(&self) -> Option<String> {
        if self.peft_type != "LORA" {
            return Some(format!(
                "peft_type {} is not supported (only LORA)",
                self.peft_type
            ));
        }
        if self.fan_in_fan_out {
            return Some(
                "fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported by Llama-family models"
                    .into(),
            );
        }
        if self.use_dora {
            return Some("DoRA adapters (use_dora) are not supported".into());
        }
        if self.bias != "none" {
            return Some(format!(
                "bias {:?} is not supported (only \"none\": no trained biases)",
                self.bias
            ));
        }
        if let Some(m) = &self.modules_to_save
            && !(m.is_null() || m.as_array().is_some_and(Vec::is_empty))
        {
            return Some(
                "modules_to_save is not supported: train without it, or export merged full weights"
                    .into(),
            );
        }
        for (field, key) in [
            ("rank_pattern", self.rank_pattern.regex_key()),
            ("alpha_pattern", self.alpha_pattern.regex_key()),
        ] {
            if let Some(key) = key {
                return Some(format!(
                    "{field} key {key:?} is a regular expression; only module names (or their suffixes after a \".\") are supported"
                ));
            }
        }
        None
    }

    /// The settings of a trainable LoRA with the same forward, or an error for what the
    /// trainable LoRA cannot express. `use_rslora` becomes alpha · sqrt(r) (the same scale
    /// under alpha / r); `rank_pattern` and `alpha_pattern` must be empty (one rank and one
    /// alpha for every module). `path` names the config in errors.
    pub fn lora_config(&self, path: &str) -> Result<LoraConfig, PeftError> {
        let bad = |m: String| PeftError::Config {
            path: path.to_string(),
            message: m,
        };
        if let Some(m) = self.unsupported() {
            return Err(bad(m));
        }
        for (field, empty) in [
            ("rank_pattern", self.rank_pattern.is_empty()),
            ("alpha_pattern", self.alpha_pattern.is_empty()),
        ] {
            if !empty {
                return Err(bad(format!(
                    "{field} is not supported for an adapter loaded to train (one rank and alpha for every module); it can be merged into its base instead"
                )));
            }
        }
        // PEFT accepts "all-linear" as a plain string; any other string is a regex.
        let targets: Vec<String> = match &self.target_modules {
            serde_json::Value::String(s) if s == llamaduo::api::ALL_LINEAR => vec![s.clone()],
            other => serde_json::from_value(other.clone()).map_err(|_| {
                bad("target_modules must be a list of module names or \"all-linear\" (regex strings are not supported)".into())
            })?,
        };
        let alpha = if self.use_rslora {
            self.lora_alpha * (self.r as f64).sqrt()
        } else {
            self.lora_alpha
        };
        let cfg = LoraConfig {
            rank: self.r,
            alpha,
            dropout: self.lora_dropout,
            target_modules: targets,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Reads adapter_config.json of a PEFT adapter directory as the settings of a trainable
/// LoRA (see [`AdapterConfig::lora_config`]).
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, PeftError> {
    AdapterConfig::read(dir)?.lora_config(&dir.join(ADAPTER_CONFIG).display().to_string())
}

/// The `base_model_name_or_path` of the adapter in `dir`, if it names one.
pub fn adapter_base_name(dir: &Path) -> Result<Option<String>, PeftError> {
    Ok(AdapterConfig::read(dir)?
        .base_model_name_or_path
        .filter(|s| !s.trim().is_empty()))
}

/// Loads adapter_model.safetensors of `dir` into a model built with
/// `Trainable::Lora(read_adapter_config(dir)?)`. Every adapter of the model must be in the
/// file with the right shape, and the file must hold no adapter the model lacks.
pub fn load_adapter_weights(model: &CausalLm, dir: &Path) -> Result<(), PeftError> {
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        return Err(PeftError::Config {
            path: path.display().to_string(),
            message: "missing".into(),
        });
    }
    let tensors = candle_core::safetensors::load(&path, model.device())
        .map_err(|e| PeftError::Tensor(format!("{}: {e}", path.display())))?;
    let mut used = 0;
    for (prefix, a) in model.adapters() {
        for (suffix, var) in [("lora_A", &a.a), ("lora_B", &a.b)] {
            let name = format!("{PEFT_PREFIX}{prefix}.{suffix}.weight");
            let t = tensors.get(&name).ok_or_else(|| PeftError::Config {
                path: path.display().to_string(),
                message: format!("lacks tensor {name}"),
            })?;
            if t.shape() != var.shape() {
                return Err(PeftError::Config {
                    path: path.display().to_string(),
                    message: format!(
                        "tensor {name} has shape {:?}, expected {:?}",
                        t.shape().dims(),
                        var.shape().dims()
                    ),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
            used += 1;
        }
    }
    if used != tensors.len() {
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| {
                !model
                    .adapters()
                    .iter()
                    .any(|(p, _)| k.starts_with(&format!("{PEFT_PREFIX}{p}.")))
            })
            .take(3)
            .collect();
        return Err(PeftError::Config {
            path: path.display().to_string(),
            message: format!(
                "holds tensors for modules the model has no adapter on, e.g. {extra:?}"
            ),
        });
    }
    Ok(())
}

/// Folds the PEFT adapter in `dir` into `tensors` (base weights by Hugging Face name), in
/// f32: W += scale · B·A for every `lora_A`/`lora_B` pair, with each module's scale from
/// [`AdapterConfig::scale_of`]. Each weight keeps its dtype. Returns the number of modules
/// merged.
///
/// Refused, naming the problem: features neither reader supports (fan_in_fan_out, DoRA,
/// trained biases, modules_to_save, regex pattern keys), tensors other than lora_A/lora_B
/// weights, a lora_A without its lora_B or the other way round, a module the base lacks, a
/// rank other than the config's for the module, an update whose shape is not the weight's,
/// and an adapter with no pairs at all.
pub fn merge_adapter(
    tensors: &mut HashMap<String, Tensor>,
    dir: &Path,
) -> Result<usize, PeftError> {
    let err = |message: String| PeftError::Adapter {
        dir: dir.to_owned(),
        message,
    };
    let cfg = AdapterConfig::read(dir)?;
    if let Some(m) = cfg.unsupported() {
        return Err(err(m));
    }
    let weights = dir.join(ADAPTER_WEIGHTS);
    let adapter = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| err(format!("cannot read {ADAPTER_WEIGHTS}: {e}")))?;
    // Sorted, so the first error reported does not depend on hash order.
    let mut names: Vec<&String> = adapter.keys().collect();
    names.sort();
    let mut merged = 0usize;
    for name in names {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            let Some(module) = name.strip_suffix(".lora_B.weight") else {
                return Err(err(format!(
                    "unexpected tensor {name} (only lora_A/lora_B weights are supported)"
                )));
            };
            let a_name = format!("{module}.lora_A.weight");
            if !adapter.contains_key(&a_name) {
                return Err(err(format!("{name} has no matching {a_name}")));
            }
            continue;
        };
        let a = &adapter[name];
        let b_name = format!("{module}.lora_B.weight");
        let b = adapter
            .get(&b_name)
            .ok_or_else(|| err(format!("{name} has no matching {b_name}")))?;
        let module = module.strip_prefix(PEFT_PREFIX).unwrap_or(module);
        let w_name = format!("{module}.weight");
        let w = tensors.get(&w_name).ok_or_else(|| {
            err(format!(
                "the adapter targets {module}, which the base model does not have"
            ))
        })?;
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        let expected = cfg.rank_of(module);
        if r != rb || r != expected {
            return Err(err(format!(
                "{module}: lora_A has rank {r} and lora_B rank {rb}, but {ADAPTER_CONFIG} gives the module r {expected} (r or rank_pattern)"
            )));
        }
        let delta = b
            .to_dtype(DType::F32)?
            .matmul(&a.to_dtype(DType::F32)?)?
            .affine(cfg.scale_of(module), 0.0)?;
        if delta.dims() != w.dims() {
            return Err(err(format!(
                "{module}: adapter update {:?} does not match the base weight {:?}",
                delta.dims(),
                w.dims()
            )));
        }
        let dtype = w.dtype();
        let new_w = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        tensors.insert(w_name, new_w);
        merged += 1;
    }
    if merged == 0 {
        return Err(err("the adapter holds no lora_A/lora_B pairs".into()));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::models::init::random_weights;
    use crate::models::{LoadOptions, Trainable};
    use llamaduo::api::Architecture;
    use serde_json::json;

    const Q0: &str = "model.layers.0.self_attn.q_proj";
    const Q1: &str = "model.layers.1.self_attn.q_proj";
    const V0: &str = "model.layers.0.self_attn.v_proj";
    const V1: &str = "model.layers.1.self_attn.v_proj";

    /// vocab 40, hidden 16, 2 layers, 4 heads / 2 KV heads (head 4): q_proj (16, 16),
    /// v_proj (8, 16).
    fn tiny() -> ModelConfig {
        let mut c = ModelConfig::new(Architecture::Llama, 40, 16, 2, 4, 2, 32, 64);
        c.tie_word_embeddings = Some(false);
        c
    }

    fn out_features(module: &str) -> usize {
        if module.ends_with("v_proj") { 8 } else { 16 }
    }

    fn randn(shape: (usize, usize), seed: u64) -> Tensor {
        let mut rng = crate::rng::SplitMix::new(seed);
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.normal() * 0.3) as f32)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
    }

    /// Random lora_A (rank, 16) / lora_B (out, rank) for each (module, rank), PEFT-named.
    fn pairs(modules: &[(&str, usize)]) -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        for (i, (m, r)) in modules.iter().enumerate() {
            let seed = 100 + 2 * i as u64;
            t.insert(
                format!("{PEFT_PREFIX}{m}.lora_A.weight"),
                randn((*r, 16), seed),
            );
            t.insert(
                format!("{PEFT_PREFIX}{m}.lora_B.weight"),
                randn((out_features(m), *r), seed + 1),
            );
        }
        t
    }

    fn write(dir: &Path, cfg: &serde_json::Value, tensors: &HashMap<String, Tensor>) {
        std::fs::write(dir.join(ADAPTER_CONFIG), cfg.to_string()).expect("config");
        candle_core::safetensors::save(tensors, dir.join(ADAPTER_WEIGHTS)).expect("weights");
    }

    fn cfg_json(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
                           "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0,
                           "bias": "none", "modules_to_save": null,
                           "rank_pattern": {}, "alpha_pattern": {}});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    fn logits(model: &CausalLm) -> Tensor {
        let ids = Tensor::new(&[[1u32, 7, 3, 22, 9, 30]], &Device::Cpu).expect("ids");
        model.forward(&ids, 0, None).expect("forward")
    }

    fn model(tensors: HashMap<String, Tensor>, trainable: Trainable) -> CausalLm {
        let opts = LoadOptions {
            dtype: DType::F32,
            trainable,
            seed: 0,
        };
        CausalLm::from_tensors(&tiny(), tensors, &Device::Cpu, &opts).expect("model")
    }

    /// The update the merge added to `module`'s weight, divided by B·A.
    fn factor(
        merged: &HashMap<String, Tensor>,
        base: &HashMap<String, Tensor>,
        ad: &HashMap<String, Tensor>,
        module: &str,
    ) -> f32 {
        let a = &ad[&format!("{PEFT_PREFIX}{module}.lora_A.weight")];
        let b = &ad[&format!("{PEFT_PREFIX}{module}.lora_B.weight")];
        let ba = b.matmul(a).expect("ba");
        let w = format!("{module}.weight");
        let delta = (&merged[&w] - &base[&w]).expect("delta");
        // The largest entry of B·A, so the ratio is well conditioned.
        let flat_ba = ba
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("ba");
        let flat_d = delta
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("d");
        let (i, _) = flat_ba
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .expect("non-empty");
        let f = flat_d[i] / flat_ba[i];
        let scaled = (ba * f as f64).expect("scaled");
        assert!(
            max_diff(&delta, &scaled) < 1e-4,
            "{module}: delta is not a multiple of B·A"
        );
        f
    }

    #[test]
    fn rslora_merged_equals_rslora_loaded_as_trainable_lora() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ad = pairs(&[(Q0, 4), (V0, 4), (Q1, 4), (V1, 4)]);
        write(tmp.path(), &cfg_json(json!({"use_rslora": true})), &ad);
        let base = random_weights(&tiny(), 11, &Device::Cpu).expect("base");

        let lora = read_adapter_config(tmp.path()).expect("rsLoRA is read");
        // alpha 8 / sqrt(4) = 4, expressed as alpha 16 / r 4.
        assert_eq!(lora.rank, 4);
        assert!((lora.scale() - 4.0).abs() < 1e-12, "{}", lora.scale());
        let trainable = model(base.clone(), Trainable::Lora(lora));
        load_adapter_weights(&trainable, tmp.path()).expect("loads");

        let mut merged = base.clone();
        assert_eq!(merge_adapter(&mut merged, tmp.path()).expect("merges"), 4);
        let folded = model(merged, Trainable::None);

        let plain = logits(&model(base, Trainable::None));
        let (l_t, l_m) = (logits(&trainable), logits(&folded));
        assert!(
            max_diff(&l_t, &plain) > 1e-2,
            "the adapter changes the logits"
        );
        let d = max_diff(&l_t, &l_m);
        assert!(d < 1e-4, "merged and trainable rsLoRA differ by {d}");
    }

    #[test]
    fn saved_adapter_merges_to_the_models_own_merged_weights() {
        let cfg = LoraConfig {
            rank: 2,
            alpha: 6.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
        };
        let base = random_weights(&tiny(), 3, &Device::Cpu).expect("base");
        let m = model(base.clone(), Trainable::Lora(cfg.clone()));
        for (i, (_, a)) in m.adapters().iter().enumerate() {
            let shape = a.b.as_tensor().dims2().expect("dims");
            a.b.set(&randn(shape, 500 + i as u64)).expect("set");
        }
        let tmp = tempfile::tempdir().expect("tmp");
        crate::peft::save_adapter(&m, &cfg, "base", tmp.path()).expect("save");
        let mut merged = base;
        let n = merge_adapter(&mut merged, tmp.path()).expect("merges");
        assert_eq!(n, m.adapters().len());
        let ours = crate::peft::named_weights(&m, true).expect("named");
        for (name, t) in &ours {
            assert!(max_diff(t, &merged[name]) < 1e-6, "{name}");
        }
    }

    #[test]
    fn alpha_and_rank_patterns_scale_their_modules() {
        let tmp = tempfile::tempdir().expect("tmp");
        // v_proj at rank 2 by rank_pattern; layer 1's q_proj at alpha 32 by alpha_pattern.
        let ad = pairs(&[(Q0, 4), (Q1, 4), (V0, 2), (V1, 2)]);
        let extra = json!({"rank_pattern": {"v_proj": 2},
                           "alpha_pattern": {"layers.1.self_attn.q_proj": 32}});
        write(tmp.path(), &cfg_json(extra.clone()), &ad);
        let base = random_weights(&tiny(), 5, &Device::Cpu).expect("base");
        let mut merged = base.clone();
        merge_adapter(&mut merged, tmp.path()).expect("merges");
        let near = |x: f32, y: f32| (x - y).abs() < 1e-3 * y.abs();
        let f = |m| factor(&merged, &base, &ad, m);
        assert!(near(f(Q0), 2.0), "q0 {}", f(Q0)); // 8 / 4
        assert!(near(f(Q1), 8.0), "q1 {}", f(Q1)); // 32 / 4
        assert!(near(f(V0), 4.0), "v0 {}", f(V0)); // 8 / 2
        assert!(near(f(V1), 4.0), "v1 {}", f(V1));

        // rsLoRA with the patterns: alpha / sqrt(the module's own rank).
        let mut rs = cfg_json(extra);
        rs["use_rslora"] = json!(true);
        write(tmp.path(), &rs, &ad);
        let mut merged = base.clone();
        merge_adapter(&mut merged, tmp.path()).expect("merges");
        let f = |m| factor(&merged, &base, &ad, m);
        assert!(near(f(Q1), 16.0), "q1 {}", f(Q1)); // 32 / sqrt(4)
        assert!(near(f(V0), 8.0 / 2f32.sqrt()), "v0 {}", f(V0)); // 8 / sqrt(2)

        // A rank_pattern that disagrees with the tensors names the module.
        write(tmp.path(), &cfg_json(json!({})), &ad);
        let e = merge_adapter(&mut base.clone(), tmp.path()).expect_err("v_proj is rank 2");
        assert!(
            e.to_string().contains(V0) && e.to_string().contains("rank_pattern"),
            "{e}"
        );
    }

    #[test]
    fn pattern_keys_match_as_peft_matches_them() {
        assert!(key_matches("q_proj", Q0));
        assert!(key_matches("self_attn.q_proj", Q0));
        assert!(key_matches(Q0, Q0));
        assert!(!key_matches("proj", Q0), "a suffix must start after a dot");
        assert!(!key_matches("q_proj", "model.layers.0.self_attn.xq_proj"));
        assert!(!key_matches("layers.0.self_attn.q_proj", Q1));
        // The first matching key in file order wins (PEFT's dict order), whatever its length.
        // (Parsed from text: a serde_json::Value would sort the keys.)
        let text = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "alpha_pattern": {"q_proj": 2, "layers.0.self_attn.q_proj": 64, "a_proj": 1}}"#;
        let c: AdapterConfig = serde_json::from_str(text).expect("config");
        assert_eq!(c.alpha_of(Q0), 2.0);
        assert_eq!(c.alpha_of(V0), 8.0);
        let keys: Vec<&str> = c.alpha_pattern.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["q_proj", "layers.0.self_attn.q_proj", "a_proj"]);
        // Written back in the same order.
        let back = serde_json::to_string(&c).expect("json");
        assert!(
            back.contains(
                r#""alpha_pattern":{"q_proj":2.0,"layers.0.self_attn.q_proj":64.0,"a_proj":1.0}"#
            ),
            "{back}"
        );
        // null reads as empty, and an absent field too.
        let c: AdapterConfig =
            serde_json::from_value(cfg_json(json!({"rank_pattern": null}))).expect("null");
        assert!(c.rank_pattern.is_empty());
        let c: AdapterConfig =
            serde_json::from_value(json!({"peft_type": "LORA", "target_modules": ["q_proj"]}))
                .expect("minimal");
        assert!(c.alpha_pattern.is_empty() && c.r == 8 && c.lora_alpha == 8.0);
    }

    #[test]
    fn lora_config_refuses_patterns_by_name_and_converts_rslora() {
        let read = |extra| {
            let c: AdapterConfig = serde_json::from_value(cfg_json(extra)).expect("config");
            c.lora_config("adapter_config.json")
        };
        let e = read(json!({"alpha_pattern": {"q_proj": 16}})).expect_err("alpha_pattern");
        assert!(e.to_string().contains("alpha_pattern"), "{e}");
        let e = read(json!({"rank_pattern": {"v_proj": 2}})).expect_err("rank_pattern");
        assert!(e.to_string().contains("rank_pattern"), "{e}");
        let plain = read(json!({})).expect("empty patterns are fine");
        assert_eq!((plain.rank, plain.alpha), (4, 8.0));
        let rs =
            read(json!({"use_rslora": true, "r": 16, "lora_alpha": 4})).expect("rsLoRA converts");
        assert_eq!((rs.rank, rs.alpha), (16, 16.0));
        let c: AdapterConfig = serde_json::from_value(cfg_json(
            json!({"use_rslora": true, "r": 16, "lora_alpha": 4}),
        ))
        .expect("config");
        assert!((rs.scale() - c.scale_of(Q0)).abs() < 1e-12);
        for (extra, needle) in [
            (json!({"use_dora": true}), "DoRA"),
            (json!({"fan_in_fan_out": true}), "fan_in_fan_out"),
            (json!({"bias": "all"}), "bias"),
            (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
            (json!({"peft_type": "IA3"}), "peft_type"),
            (json!({"target_modules": ".*proj"}), "target_modules"),
        ] {
            let e = read(extra.clone()).expect_err("unsupported");
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn merge_refuses_what_it_cannot_fold_and_names_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = random_weights(&tiny(), 1, &Device::Cpu).expect("base");
        let good = pairs(&[(Q0, 4), (V0, 4)]);
        let refused = |cfg: serde_json::Value, tensors: &HashMap<String, Tensor>| {
            write(tmp.path(), &cfg, tensors);
            let mut t = base.clone();
            let e = merge_adapter(&mut t, tmp.path()).expect_err("refused");
            assert!(matches!(e, PeftError::Adapter { .. }), "{e:?}");
            e.to_string()
        };
        for (extra, needle) in [
            (json!({"fan_in_fan_out": true}), "fan_in_fan_out"),
            (json!({"use_dora": true}), "DoRA"),
            (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
            (
                json!({"alpha_pattern": {".*q_proj": 4}}),
                "regular expression",
            ),
        ] {
            let e = refused(cfg_json(extra.clone()), &good);
            assert!(e.contains(needle), "{extra}: {e}");
        }
        // An unexpected tensor.
        let mut t = good.clone();
        t.insert(
            format!("{PEFT_PREFIX}{Q0}.lora_magnitude_vector"),
            randn((16, 1), 1),
        );
        let e = refused(cfg_json(json!({})), &t);
        assert!(
            e.contains("unexpected tensor") && e.contains("lora_magnitude_vector"),
            "{e}"
        );
        // lora_B without lora_A.
        let mut t = good.clone();
        t.remove(&format!("{PEFT_PREFIX}{V0}.lora_A.weight"));
        let e = refused(cfg_json(json!({})), &t);
        assert!(e.contains("no matching") && e.contains(V0), "{e}");
        // A module the base does not have.
        let t = pairs(&[(Q0, 4), ("model.layers.7.mlp.up_proj", 4)]);
        let e = refused(cfg_json(json!({})), &t);
        assert!(e.contains("model.layers.7.mlp.up_proj"), "{e}");
        // An update of the wrong shape names the module.
        let mut t = good.clone();
        t.insert(
            format!("{PEFT_PREFIX}{V0}.lora_B.weight"),
            randn((12, 4), 9),
        );
        let e = refused(cfg_json(json!({})), &t);
        assert!(e.contains(V0) && e.contains("does not match"), "{e}");
        // No pairs at all.
        let e = refused(cfg_json(json!({})), &HashMap::new());
        assert!(e.contains("no lora_A/lora_B pairs"), "{e}");
        // A missing config names the file.
        let empty = tempfile::tempdir().expect("tmp");
        let e = merge_adapter(&mut base.clone(), empty.path()).expect_err("no config");
        assert!(e.to_string().contains(ADAPTER_CONFIG), "{e}");
        // base_model_name_or_path: blank is none.
        write(
            tmp.path(),
            &cfg_json(json!({"base_model_name_or_path": " "})),
            &good,
        );
        assert_eq!(adapter_base_name(tmp.path()).expect("reads"), None);
        write(
            tmp.path(),
            &cfg_json(json!({"base_model_name_or_path": "org/m"})),
            &good,
        );
        assert_eq!(
            adapter_base_name(tmp.path()).expect("reads").as_deref(),
            Some("org/m")
        );
    }
}
