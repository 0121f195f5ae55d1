//! Reading the migration a local run executes: the same `LlamaDuoMigration` YAML the operator
//! takes, validated exactly as `llamaduo validate --local` does, with relative `file://` paths
//! resolved against the manifest's directory (so `file://coverage.jsonl` next to the manifest
//! works from any current directory).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::api::{LlamaDuoMigration, LlamaDuoMigrationSpec};
use crate::validate::{Target, validate_object, without_pruned_nulls, yaml_documents};

/// Namespace used for the artifact layout and stage configs when the manifest names none.
pub const LOCAL_NAMESPACE: &str = "local";

/// Why a manifest cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{path} is not valid YAML: {message}")]
    Yaml {
        /// The manifest.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file holds no migration, or more than one.
    #[error(
        "{path} must hold exactly one LlamaDuoMigration (apiVersion llamaduo.dev/v1alpha1), found {found}"
    )]
    Count {
        /// The manifest.
        path: PathBuf,
        /// How many it holds.
        found: usize,
    },
    /// Validation found problems; every one is listed, one per line.
    #[error("{path} is not a valid LlamaDuoMigration:\n{}", problems.join("\n"))]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// `field: problem` lines.
        problems: Vec<String>,
    },
    /// A source that only a cluster can read.
    #[error("{field}: {message}")]
    Unsupported {
        /// Field path.
        field: &'static str,
        /// What to do instead.
        message: String,
    },
}

/// A migration ready to run locally.
#[derive(Clone, Debug)]
pub struct LocalMigration {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, or [`LOCAL_NAMESPACE`].
    pub namespace: String,
    /// The spec with relative `file://` URLs made absolute.
    pub spec: LlamaDuoMigrationSpec,
    /// The manifest's path.
    pub path: PathBuf,
}

/// Reads, validates (Local target) and resolves the manifest at `path`.
pub fn load(path: &Path) -> Result<LocalMigration, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(base).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, &base)
}

/// Parses a manifest's text; `base` is the directory relative `file://` URLs resolve against.
pub fn parse(text: &str, path: &Path, base: &Path) -> Result<LocalMigration, ManifestError> {
    let docs: Vec<Value> = yaml_documents(text).map_err(|e| ManifestError::Yaml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let migrations: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("LlamaDuoMigration"))
        .collect();
    let [doc] = migrations.as_slice() else {
        return Err(ManifestError::Count {
            path: path.to_path_buf(),
            found: migrations.len(),
        });
    };
    let mut problems: Vec<String> = Vec::new();
    if doc.get("apiVersion").and_then(Value::as_str) != Some("llamaduo.dev/v1alpha1") {
        problems.push("apiVersion: must be llamaduo.dev/v1alpha1".into());
    }
    problems.extend(
        validate_object(doc, Target::Local)
            .iter()
            .map(ToString::to_string),
    );
    if !problems.is_empty() {
        return Err(ManifestError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    let migration: LlamaDuoMigration =
        serde_json::from_value(without_pruned_nulls(doc)).map_err(|e| ManifestError::Invalid {
            path: path.to_path_buf(),
            problems: vec![e.to_string()],
        })?;
    let name = migration.metadata.name.clone().unwrap_or_default();
    let namespace = migration
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| LOCAL_NAMESPACE.to_string());
    let mut spec = migration.spec;
    resolve_paths(&mut spec, base)?;
    Ok(LocalMigration {
        name,
        namespace,
        spec,
        path: path.to_path_buf(),
    })
}

/// Makes relative `file://` URLs absolute against `base` and refuses sources that need a
/// cluster.
fn resolve_paths(spec: &mut LlamaDuoMigrationSpec, base: &Path) -> Result<(), ManifestError> {
    for (field, url) in [
        ("spec.coverage.source", Some(&mut spec.coverage.source)),
        (
            "spec.coverage.testSource",
            spec.coverage.test_source.as_mut(),
        ),
    ] {
        let Some(url) = url else { continue };
        if url.starts_with("configmap://") {
            return Err(ManifestError::Unsupported {
                field,
                message: format!(
                    "{url} names a ConfigMap, which only exists in a cluster; for `llamaduo run` point it at a file (file://coverage.jsonl, relative to the manifest)"
                ),
            });
        }
        *url = absolute_file_url(url, base);
    }
    if let Some(m) = spec.student.base_model.as_mut() {
        *m = absolute_file_url(m, base);
    }
    if let Some(m) = spec.evaluation.embedding_model.as_mut() {
        *m = absolute_file_url(m, base);
    }
    if let Some(s) = spec.storage.as_mut() {
        s.url = absolute_file_url(&s.url, base);
    }
    Ok(())
}

/// `file://rel/path` -> `file:///base/rel/path`; absolute file URLs and other schemes are kept.
pub fn absolute_file_url(url: &str, base: &Path) -> String {
    match url.strip_prefix("file://") {
        Some(rest) if !rest.starts_with('/') => {
            format!("file://{}", base.join(rest).display())
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICKSTART: &str = include_str!("../../examples/quickstart/migration.yaml");

    #[test]
    fn quickstart_loads_with_its_coverage_next_to_it() {
        let m = parse(QUICKSTART, Path::new("m.yaml"), Path::new("/data/qs")).expect("valid");
        assert_eq!(m.name, "quickstart");
        assert_eq!(m.namespace, LOCAL_NAMESPACE);
        assert_eq!(m.spec.coverage.source, "file:///data/qs/coverage.jsonl");
    }

    #[test]
    fn relative_and_absolute_urls() {
        let base = Path::new("/w");
        assert_eq!(
            absolute_file_url("file://a/b.jsonl", base),
            "file:///w/a/b.jsonl"
        );
        assert_eq!(
            absolute_file_url("file:///abs.jsonl", base),
            "file:///abs.jsonl"
        );
        assert_eq!(
            absolute_file_url("hf://datasets/x/y", base),
            "hf://datasets/x/y"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = QUICKSTART
            .replace("meanScore: 80", "meanScore: 180")
            .replace("maxRounds: 6", "maxRounds: 0");
        let err = parse(&bad, Path::new("m.yaml"), Path::new("/")).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("target.meanScore"), "{text}");
        assert!(text.contains("stop.maxRounds"), "{text}");
    }

    /// Found by tests/fuzz_parsers.rs: a key with no value validated (the API server prunes
    /// the null), then failed to load.
    #[test]
    fn a_key_without_a_value_loads_as_it_validates() {
        let empty = QUICKSTART.replace("plateauRounds: 3", "plateauRounds:");
        assert!(
            validate_object(
                &serde_saphyr::from_str::<Value>(&empty).expect("yaml"),
                Target::Local
            )
            .is_empty()
        );
        let m = parse(&empty, Path::new("m.yaml"), Path::new("/")).expect("loads");
        assert_eq!(m.spec.stop.max_rounds, 6);
        assert_eq!(
            m.spec.stop.plateau_rounds,
            crate::api::StopSpec::default().plateau_rounds
        );
    }

    #[test]
    fn configmap_sources_are_refused_with_the_fix() {
        let cm = QUICKSTART.replace("file://coverage.jsonl", "configmap://cov/coverage.jsonl");
        let err = parse(&cm, Path::new("m.yaml"), Path::new("/")).expect_err("cluster only");
        assert!(err.to_string().contains("spec.coverage.source"), "{err}");
    }

    #[test]
    fn a_file_without_a_migration_is_refused() {
        let err =
            parse("kind: ConfigMap\n", Path::new("m.yaml"), Path::new("/")).expect_err("none");
        assert!(
            matches!(err, ManifestError::Count { found: 0, .. }),
            "{err}"
        );
    }
}
