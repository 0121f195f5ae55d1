//! The local counterpart of `metadata.generation`: `llamaduo run` has no API server to count
//! spec changes, so the work directory keeps the spec's digest and a counter that moves when
//! the manifest's spec changes between runs. The rules that react to a spec change (a stage
//! that failed on every attempt gets one more after an edit) then work the same on one machine
//! as in a cluster.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::LlamaDuoMigrationSpec;

use super::status_file::write_atomically;

/// File in the work directory.
pub const GENERATION_FILE: &str = "spec-generation.json";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    generation: i64,
    spec_sha256: String,
}

/// The generation of `spec` in `workdir`: 1 the first time, the recorded one while the spec
/// is unchanged, one more after each change. A file that does not parse starts again at 1.
pub fn spec_generation(workdir: &Path, spec: &LlamaDuoMigrationSpec) -> std::io::Result<i64> {
    let path = workdir.join(GENERATION_FILE);
    let digest = digest(spec)?;
    let previous: Option<Recorded> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let generation = match previous {
        Some(r) if r.spec_sha256 == digest => return Ok(r.generation),
        Some(r) => r.generation + 1,
        None => 1,
    };
    let record = Recorded {
        generation,
        spec_sha256: digest,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    write_atomically(&path, &bytes)?;
    Ok(generation)
}

fn digest(spec: &LlamaDuoMigrationSpec) -> std::io::Result<String> {
    // The typed spec, so formatting, comments and key order in the YAML do not count.
    let json = serde_json::to_vec(spec).map_err(std::io::Error::other)?;
    Ok(Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: f64) -> LlamaDuoMigrationSpec {
        serde_json::from_value(serde_json::json!({
            "task": {"description": "Add"},
            "coverage": {"source": "file:///c.jsonl"},
            "teacher": {"provider": "simulated", "model": "arithmetic"},
            "student": {"fromScratch": {}},
            "target": {"meanScore": target}
        }))
        .expect("spec")
    }

    #[test]
    fn the_generation_moves_only_when_the_spec_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(spec_generation(dir.path(), &spec(80.0)).expect("gen"), 1);
        assert_eq!(spec_generation(dir.path(), &spec(80.0)).expect("gen"), 1);
        assert_eq!(spec_generation(dir.path(), &spec(70.0)).expect("gen"), 2);
        assert_eq!(spec_generation(dir.path(), &spec(70.0)).expect("gen"), 2);
        assert_eq!(spec_generation(dir.path(), &spec(80.0)).expect("gen"), 3);
        std::fs::write(dir.path().join(GENERATION_FILE), "not json").expect("write");
        assert_eq!(spec_generation(dir.path(), &spec(80.0)).expect("gen"), 1);
    }
}
