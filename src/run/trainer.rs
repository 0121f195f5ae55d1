//! Finding the `llamaduo-trainer` binary that runs the stages, and the API keys handed to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::api::{
    JUDGE_API_KEY_ENV, LlamaDuoMigrationSpec, ProviderSpec, SecretKeyRef, TEACHER_API_KEY_ENV,
};

/// Environment variable naming the trainer binary explicitly.
pub const TRAINER_ENV: &str = "LLAMADUO_TRAINER";
/// The trainer's file name.
pub const TRAINER_NAME: &str = "llamaduo-trainer";

/// Why the local run cannot start a stage.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// No trainer binary was found.
    #[error(
        "cannot find {TRAINER_NAME}: looked at ${TRAINER_ENV}, next to {exe} and on PATH. Build it with `cargo build --release -p llamaduo-trainer` (scripts/quickstart.sh does) or set {TRAINER_ENV}=/path/to/llamaduo-trainer"
    )]
    NotFound {
        /// The running executable's directory.
        exe: String,
    },
    /// `LLAMADUO_TRAINER` names something that is not a file.
    #[error("{TRAINER_ENV}={0} is not an executable file")]
    BadOverride(String),
    /// A provider needs an API key that is not in the environment.
    #[error(
        "the {role} ({provider}) needs an API key: export {env}{secret_hint} before `llamaduo run`"
    )]
    MissingKey {
        /// "teacher" or "judge".
        role: &'static str,
        /// The provider.
        provider: crate::api::ProviderKind,
        /// The stage-contract variable.
        env: &'static str,
        /// The alternatives derived from apiKeySecretRef.
        secret_hint: String,
    },
}

/// Finds the trainer: `$LLAMADUO_TRAINER`, else next to the running executable (or one
/// directory up, for binaries run from `target/*/deps`), else on `PATH`.
pub fn find_trainer() -> Result<PathBuf, TrainerError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    find_trainer_in(
        std::env::var_os(TRAINER_ENV),
        exe_dir.as_deref(),
        std::env::var_os("PATH"),
    )
}

/// [`find_trainer`] with its inputs passed in (for tests).
pub fn find_trainer_in(
    override_path: Option<OsString>,
    exe_dir: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<PathBuf, TrainerError> {
    if let Some(p) = override_path.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(TrainerError::BadOverride(p.display().to_string()))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = exe_dir {
        candidates.push(dir.join(TRAINER_NAME));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(TRAINER_NAME));
        }
    }
    if let Some(paths) = path_var {
        candidates.extend(std::env::split_paths(&paths).map(|d| d.join(TRAINER_NAME)));
    }
    candidates
        .into_iter()
        .find(|c| is_executable(c))
        .ok_or_else(|| TrainerError::NotFound {
            exe: exe_dir
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "the llamaduo binary".into()),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Environment variable names, in lookup order, that may hold the key of `secret`:
/// `{NAME}_{KEY}` and `{NAME}`, upper-cased with non-alphanumerics as `_` (Secret `openai`,
/// key `api-key` -> `OPENAI_API_KEY`, then `OPENAI`).
pub fn secret_env_names(secret: &SecretKeyRef) -> Vec<String> {
    let env = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    vec![
        format!("{}_{}", env(&secret.name), env(&secret.key)),
        env(&secret.name),
    ]
}

/// The API keys the stage processes get: `(LLAMADUO_TEACHER_API_KEY, value)` and
/// `(LLAMADUO_JUDGE_API_KEY, value)` where known. A key comes from the stage-contract variable
/// itself, else from a variable named after the provider's `apiKeySecretRef` (see
/// [`secret_env_names`]). A provider that needs a key and has none is an error naming the
/// variables to set. Values are never logged.
pub fn api_keys(
    spec: &LlamaDuoMigrationSpec,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, TrainerError> {
    let mut keys = Vec::new();
    let judge_is_teacher = spec.judge.is_none();
    for (role, env, provider) in [
        ("teacher", TEACHER_API_KEY_ENV, &spec.teacher),
        ("judge", JUDGE_API_KEY_ENV, spec.judge()),
    ] {
        let mut found = lookup(env).filter(|v| !v.is_empty());
        if found.is_none() && judge_is_teacher && role == "judge" {
            found = lookup(TEACHER_API_KEY_ENV).filter(|v| !v.is_empty());
        }
        let names = secret_names(provider);
        if found.is_none() {
            found = names
                .iter()
                .find_map(|n| lookup(n).filter(|v| !v.is_empty()));
        }
        match found {
            Some(v) => keys.push((env, v)),
            None if provider.provider.needs_api_key() => {
                let secret_hint = if names.is_empty() {
                    String::new()
                } else {
                    format!(" (or {})", names.join(" or "))
                };
                return Err(TrainerError::MissingKey {
                    role,
                    provider: provider.provider,
                    env,
                    secret_hint,
                });
            }
            None => {}
        }
    }
    Ok(keys)
}

fn secret_names(p: &ProviderSpec) -> Vec<String> {
    p.api_key_secret_ref
        .as_ref()
        .map(secret_env_names)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProviderKind;
    use std::collections::HashMap;

    fn spec_with(teacher: ProviderKind, secret: Option<SecretKeyRef>) -> LlamaDuoMigrationSpec {
        let yaml = include_str!("../../examples/quickstart/migration.yaml");
        let mut m = super::super::manifest::parse(yaml, Path::new("m"), Path::new("/"))
            .expect("quickstart")
            .spec;
        m.teacher.provider = teacher;
        m.teacher.api_key_secret_ref = secret;
        m
    }

    #[test]
    fn keys_come_from_the_contract_variable_or_the_secret_name() {
        let secret = SecretKeyRef {
            name: "openai".into(),
            key: "api-key".into(),
        };
        assert_eq!(secret_env_names(&secret), ["OPENAI_API_KEY", "OPENAI"]);
        let spec = spec_with(ProviderKind::Openai, Some(secret));
        let env: HashMap<&str, &str> = [("OPENAI_API_KEY", "sk-1")].into();
        let keys = api_keys(&spec, |k| env.get(k).map(|v| v.to_string())).expect("found");
        assert_eq!(
            keys,
            vec![
                (TEACHER_API_KEY_ENV, "sk-1".to_string()),
                (JUDGE_API_KEY_ENV, "sk-1".to_string())
            ]
        );
        let env: HashMap<&str, &str> = [(TEACHER_API_KEY_ENV, "sk-2")].into();
        let keys = api_keys(&spec, |k| env.get(k).map(|v| v.to_string())).expect("found");
        assert_eq!(keys[1], (JUDGE_API_KEY_ENV, "sk-2".to_string()));
    }

    #[test]
    fn a_missing_key_names_what_to_export() {
        let spec = spec_with(
            ProviderKind::Anthropic,
            Some(SecretKeyRef {
                name: "anthropic".into(),
                key: "key".into(),
            }),
        );
        let err = api_keys(&spec, |_| None).expect_err("no key");
        let text = err.to_string();
        assert!(text.contains("LLAMADUO_TEACHER_API_KEY"), "{text}");
        assert!(text.contains("ANTHROPIC_KEY"), "{text}");
    }

    #[test]
    fn simulated_needs_no_key() {
        let spec = spec_with(ProviderKind::Simulated, None);
        assert!(api_keys(&spec, |_| None).expect("fine").is_empty());
    }

    #[test]
    fn trainer_is_found_by_override_next_to_exe_or_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let t = bin.join(TRAINER_NAME);
        std::fs::write(&t, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let elsewhere = dir.path().join("elsewhere");
        assert_eq!(
            find_trainer_in(None, Some(&bin), None).expect("next to exe"),
            t
        );
        assert_eq!(
            find_trainer_in(None, Some(&bin.join("deps")), None).expect("one up"),
            t
        );
        assert_eq!(
            find_trainer_in(None, Some(&elsewhere), Some(bin.clone().into_os_string()))
                .expect("on PATH"),
            t
        );
        assert_eq!(
            find_trainer_in(Some(t.clone().into_os_string()), None, None).expect("override"),
            t
        );
        let err = find_trainer_in(None, Some(&elsewhere), None).expect_err("nowhere");
        assert!(
            err.to_string()
                .contains("cargo build --release -p llamaduo-trainer")
        );
        assert!(matches!(
            find_trainer_in(Some("/nonexistent/x".into()), None, None),
            Err(TrainerError::BadOverride(_))
        ));
    }
}
