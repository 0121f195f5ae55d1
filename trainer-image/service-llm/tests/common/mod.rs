//! Helpers shared by the integration tests: coverage files, stage configs, fast clients.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use llamaduo::api::{DatasetRow, SynthesizeConfig};
use llamaduo_service_llm::flow::{Backoff, ClientConfig, LlmClient, TokenBudget};
use llamaduo_service_llm::provider::provider_for;
use llamaduo_service_llm::simulate::{Family, sample_dataset};
use rand::SeedableRng;
use serde_json::json;

/// Writes `n` coverage rows of a family to `dir/coverage.jsonl`; returns its file:// URL.
pub fn coverage_file(dir: &Path, family: Family, n: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rows = sample_dataset(family, n, &mut rng);
    let text: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).expect("row serializes") + "\n")
        .collect();
    let path = dir.join("coverage.jsonl");
    std::fs::write(&path, text).expect("write coverage");
    format!("file://{}", path.display())
}

/// A synthesize config against a simulated teacher.
pub fn config(artifacts: &Path, coverage: &str, base_url: &str, samples: u32) -> SynthesizeConfig {
    serde_json::from_value(json!({
        "namespace": "test",
        "migration": "arith",
        "round": 1,
        "artifacts": format!("file://{}", artifacts.display()),
        "task": {"description": Family::Arithmetic.description()},
        "coverage": {"source": coverage, "testFraction": 0.2},
        "teacher": {
            "provider": "simulated",
            "model": "arithmetic",
            "baseUrl": base_url,
            "limits": {"concurrency": 4},
            "generation": {"maxTokens": 400},
            "timeoutSeconds": 5,
            "maxRetries": 12
        },
        "synthesis": {"pairsPerCall": 5, "seed": 7, "dedup": {"threshold": 0.9}},
        "samples": samples
    }))
    .expect("valid config")
}

/// The client a config asks for, with short backoff and timeout so fault tests run fast.
pub fn fast_client(config: &SynthesizeConfig, timeout: Duration) -> Arc<LlmClient> {
    let provider = provider_for(&config.teacher, None).expect("provider");
    let mut cc = ClientConfig::from_spec(&config.teacher);
    cc.timeout = timeout;
    cc.backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(100),
        max_retry_after: Duration::from_millis(200),
    };
    Arc::new(LlmClient::new(
        provider,
        cc,
        Arc::new(TokenBudget::new(config.token_budget)),
    ))
}

/// Reads a JSONL file of rows, asserting every line is complete and valid.
pub fn read_rows(path: &Path) -> Vec<DatasetRow> {
    let text = std::fs::read_to_string(path).expect("read rows");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "torn last line in {}",
        path.display()
    );
    text.lines()
        .map(|l| {
            let row: DatasetRow = serde_json::from_str(l).expect("every line is a row");
            row.validate().expect("every row is valid");
            row
        })
        .collect()
}

/// Asserts synthetic rows carry unique ids and the §5 provenance.
pub fn assert_synthetic(rows: &[DatasetRow], generator: &str) {
    let mut ids = std::collections::HashSet::new();
    for r in rows {
        assert!(
            ids.insert(r.id.clone().expect("id")),
            "duplicate id {:?}",
            r.id
        );
        assert_eq!(r.source, Some(llamaduo::api::RowSource::Synthetic));
        assert_eq!(r.generator.as_deref(), Some(generator));
        assert!(r.seed_id.as_deref().is_some_and(|s| !s.is_empty()));
        // The simulated teacher's pairs are correct.
        let instruction = r.instruction().expect("instruction");
        assert_eq!(
            Family::Arithmetic.solve(instruction).as_deref(),
            r.answer(),
            "{instruction}"
        );
    }
}
