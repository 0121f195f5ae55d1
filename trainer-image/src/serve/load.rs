//! Finding and loading the model to serve: `--model` is a round's model location (a URL the
//! store resolves, or a local path) holding full weights or a PEFT LoRA adapter; an adapter's
//! base is `--base`, else the adapter's own `base_model_name_or_path`. Loading reuses the
//! evaluate stage's loaders, so serving and evaluation see the same model.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use llamaduo::api::Precision;
use llamaduo_model::adapter::adapter_base_name;
use llamaduo_model::peft::ADAPTER_CONFIG;
use llamaduo_store::{HfConfig, Resolver, Store};

use crate::evaluate::load::{
    LoadedModel, cache_dir, device_and_dtype, load_full, load_with_adapter, local_model_dir,
};

/// Local directories of the model to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDirs {
    /// The `--model` directory (full weights or an adapter).
    pub model: PathBuf,
    /// The base for an adapter; `None` for full weights.
    pub base: Option<PathBuf>,
}

/// The artifact root of a migration when `url` is `{root}/round-{n}/model`: relative
/// `base_model_name_or_path` values (like `student/base`) are keys under it.
pub fn migration_root(url: &str) -> Option<&str> {
    let trimmed = url.trim_end_matches('/');
    let parent = trimmed.strip_suffix("/model")?;
    let (root, round) = parent.rsplit_once('/')?;
    let n = round.strip_prefix("round-")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(root)
}

/// The name served by default: the model directory's name, or, for a round's `model`
/// directory, `{migration}-round-{n}`.
pub fn default_model_name(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if let Some(root) = migration_root(url) {
        let round = trimmed
            .trim_end_matches("/model")
            .rsplit('/')
            .next()
            .unwrap_or("round");
        // A cluster root ends in the object's uid ({ns}/{name}/{uid}): name it by the migration.
        let mut segments = root.rsplit('/');
        let last = segments.next().unwrap_or("model");
        let migration = if is_uid(last) {
            segments.next().unwrap_or(last)
        } else {
            last
        };
        return format!("{migration}-{round}");
    }
    trimmed
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("model")
        .to_owned()
}

/// Whether `s` is a Kubernetes object uid (an RFC 4122 UUID in its 8-4-4-4-12 form).
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A relative path that exists here (`quickstart-run/artifacts/.../model`) made absolute, so
/// the store resolves it; URLs and absolute paths unchanged.
fn absolute_if_local(arg: &str) -> String {
    let path = std::path::Path::new(arg);
    if arg.contains("://") || path.is_absolute() || !path.exists() {
        return arg.to_string();
    }
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| arg.to_string())
}

/// Resolves `--model` and, for an adapter, its base to local directories (downloading
/// through the store when needed).
pub async fn resolve_dirs(model: &str, base: Option<&str>) -> anyhow::Result<ModelDirs> {
    let model = &absolute_if_local(model);
    let base = base.map(absolute_if_local);
    let base = base.as_deref();
    let resolver = Resolver::new(cache_dir(), HfConfig::from_env());
    let model_dir = resolver
        .resolve(model)
        .await
        .with_context(|| format!("--model {model}: cannot resolve the model"))?;
    if !model_dir.join(ADAPTER_CONFIG).exists() {
        if !model_dir.join("config.json").exists() {
            bail!(
                "--model {model}: {} holds neither config.json (full weights) nor {ADAPTER_CONFIG} (a LoRA adapter); point it at a round's model directory",
                model_dir.display()
            );
        }
        return Ok(ModelDirs {
            model: model_dir,
            base: None,
        });
    }
    let base = match base {
        Some(url) => resolver
            .resolve(url)
            .await
            .with_context(|| format!("--base {url}: cannot resolve the base model"))?,
        None => adapter_base(&resolver, model, &model_dir).await?,
    };
    let base = local_model_dir(base).context("preparing the base model")?;
    Ok(ModelDirs {
        model: model_dir,
        base: Some(base),
    })
}

/// The base named by the adapter itself.
async fn adapter_base(
    resolver: &Resolver,
    model_url: &str,
    adapter_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let fix =
        "pass --base (or LLAMADUO_SERVE_BASE) with the base model's directory, URL or hf:// id";
    let Some(named) = adapter_base_name(adapter_dir)? else {
        bail!(
            "--model {model_url} is a LoRA adapter whose {ADAPTER_CONFIG} names no base_model_name_or_path; {fix}"
        );
    };
    let attempt = if named.contains("://") {
        resolver.resolve(&named).await
    } else if Path::new(&named).is_absolute() {
        Ok(PathBuf::from(&named))
    } else if let Some(root) = migration_root(model_url) {
        match Store::open(root) {
            Ok(store) => {
                resolver
                    .resolve_in(&store, named.trim_start_matches("./"))
                    .await
            }
            Err(e) => Err(e),
        }
    } else {
        Ok(adapter_dir.join(&named))
    };
    match attempt {
        Ok(p) if p.exists() => Ok(p),
        Ok(p) => bail!(
            "--model {model_url} is a LoRA adapter on base {named:?}, which is not at {}; {fix}",
            p.display()
        ),
        Err(e) => bail!(
            "--model {model_url} is a LoRA adapter on base {named:?}, which cannot be resolved ({e}); {fix}"
        ),
    }
}

/// Loads the model (blocking: run on a blocking thread). The dtype is bf16 on a GPU, f32 on
/// the CPU.
pub fn load(dirs: &ModelDirs) -> anyhow::Result<LoadedModel> {
    let (device, dtype) = device_and_dtype(Precision::Auto)?;
    let (model, tokenizer, source) = match &dirs.base {
        None => load_full(&dirs.model, &device, dtype)?,
        Some(base) => {
            let tok_dir = if dirs.model.join("tokenizer.json").exists() {
                &dirs.model
            } else {
                base
            };
            load_with_adapter(base, &dirs.model, tok_dir, &device, dtype)?
        }
    };
    let template = llamaduo_model::chat_template::ChatTemplate::for_tokenizer(&tokenizer, None)
        .context("the model's chat template")?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_urls_give_a_root_and_a_name() {
        let u = "file:///artifacts/ns/triage/round-3/model";
        assert_eq!(migration_root(u), Some("file:///artifacts/ns/triage"));
        assert_eq!(default_model_name(u), "triage-round-3");
        let in_cluster =
            "file:///artifacts/ns/triage/0b6f3a52-5f1e-4c4e-9d3a-2f1c8e7a9b10/round-3/model";
        assert_eq!(default_model_name(in_cluster), "triage-round-3");
        assert_eq!(
            migration_root("s3://b/p/m/round-12/model/"),
            Some("s3://b/p/m")
        );
        assert_eq!(migration_root("/models/round-x/model"), None);
        assert_eq!(migration_root("/models/smollm2"), None);
        assert_eq!(default_model_name("/models/smollm2/"), "smollm2");
        assert_eq!(
            default_model_name("hf://HuggingFaceTB/SmolLM2-135M"),
            "SmolLM2-135M"
        );
    }
}
