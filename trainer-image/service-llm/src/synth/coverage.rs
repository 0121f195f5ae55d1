//! Round 1 freezes the coverage dataset into `coverage/train.jsonl` and `coverage/test.jsonl`:
//! rows from `coverage.source` (any URL the store resolves: file://, s3://, gs://, az://,
//! hf://datasets/...), validated, given stable ids, and split deterministically by
//! `synthesis.seed` (each row's place is a hash of seed and id, so the split does not depend
//! on a random number generator's version) unless `coverage.testSource` names the test set.
//! Later rounds, and reruns, read the frozen files.

use std::collections::HashSet;
use std::path::Path;

use llamaduo::api::{ArtifactLayout, CoverageSpec, DatasetRow, RowSource};
use llamaduo_store::{
    Store, TailPolicy, parse_jsonl_within, read_jsonl_within, resolve_to_local, write_jsonl,
};
use sha2::{Digest, Sha256};

use super::SynthError;

/// The frozen coverage split.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    /// Seeds for synthesis (and training data).
    pub train: Vec<DatasetRow>,
    /// The frozen test set.
    pub test: Vec<DatasetRow>,
}

/// Reads the frozen split, creating it from the coverage source first if it is not there.
pub async fn materialize(
    store: &Store,
    spec: &CoverageSpec,
    seed: u64,
    cache_dir: &Path,
) -> Result<Coverage, SynthError> {
    let (train_key, test_key) = (
        ArtifactLayout::COVERAGE_TRAIN,
        ArtifactLayout::COVERAGE_TEST,
    );
    let max_row = spec.max_row_bytes();
    if store.exists(train_key).await? && store.exists(test_key).await? {
        return Ok(Coverage {
            train: read_jsonl_within(store, train_key, max_row).await?,
            test: read_jsonl_within(store, test_key, max_row).await?,
        });
    }
    let source = load_rows(&spec.source, "coverage.source", "c", max_row, cache_dir).await?;
    let coverage = match &spec.test_source {
        Some(test_url) => Coverage {
            train: source,
            test: load_rows(test_url, "coverage.testSource", "t", max_row, cache_dir).await?,
        },
        None => split(source, spec.test_fraction, seed)?,
    };
    let (coverage, leaked) = without_test_prompts(coverage);
    if leaked > 0 {
        tracing::warn!(
            dropped = leaked,
            "coverage rows whose prompt is also a test prompt were left out of coverage/train.jsonl: training on (or synthesizing from) them would inflate the test score"
        );
    }
    if coverage.train.is_empty() {
        return Err(SynthError::Coverage(format!(
            "every prompt of coverage.source is also in the test set ({leaked} rows): nothing is left to train on; use a test set that does not repeat the training prompts"
        )));
    }
    let mut ids = HashSet::new();
    for row in coverage.train.iter().chain(&coverage.test) {
        let id = row.id.as_deref().unwrap_or_default();
        if !ids.insert(id.to_string()) {
            return Err(SynthError::Coverage(format!(
                "row id {id:?} appears twice in the coverage data: ids must be unique"
            )));
        }
    }
    // Test first: train's presence is what a later run checks last.
    write_jsonl(store, test_key, &coverage.test).await?;
    write_jsonl(store, train_key, &coverage.train).await?;
    tracing::info!(
        train = coverage.train.len(),
        test = coverage.test.len(),
        "coverage split frozen"
    );
    Ok(coverage)
}

/// Reads and validates rows from a source URL; rows without an id get `{prefix}{line}`.
async fn load_rows(
    url: &str,
    field: &str,
    id_prefix: &str,
    max_row_bytes: u64,
    cache_dir: &Path,
) -> Result<Vec<DatasetRow>, SynthError> {
    // Messages and the parser name the URL without credentials (user:password@, a signed
    // query): they end up in the result, the migration's status and Events.
    let shown = llamaduo_store::redact_url(url);
    if url.starts_with("configmap://") {
        return Err(SynthError::Coverage(format!(
            "{field} {shown}: configmap:// sources are mounted into the stage as files by the operator; the stage was given the unresolved URL"
        )));
    }
    let path = resolve_to_local(url, cache_dir)
        .await
        .map_err(|e| SynthError::Coverage(format!("{field} {shown}: {e}")))?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        SynthError::Coverage(format!(
            "{field} {shown}: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let rows =
        parse_jsonl_within::<DatasetRow>(&bytes, &shown, TailPolicy::Strict, max_row_bytes)?.rows;
    if rows.is_empty() {
        return Err(SynthError::Coverage(format!(
            "{field} {shown} holds no rows"
        )));
    }
    rows.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row.validate()
                .map_err(|e| SynthError::Coverage(format!("{field} {shown} row {}: {e}", i + 1)))?;
            if row.id.as_deref().is_none_or(str::is_empty) {
                row.id = Some(format!("{id_prefix}{:06}", i + 1));
            }
            row.source = Some(RowSource::Coverage);
            Ok(row)
        })
        .collect()
}

/// Holds out `fraction` of the rows (at least one, leaving at least one) as the test set,
/// choosing by a hash of seed and id; both sides keep the source order.
pub fn split(rows: Vec<DatasetRow>, fraction: f64, seed: u64) -> Result<Coverage, SynthError> {
    if rows.len() < 2 {
        return Err(SynthError::Coverage(format!(
            "coverage.source has {} row(s): at least 2 are needed to hold out a test set (or set coverage.testSource)",
            rows.len()
        )));
    }
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(SynthError::Coverage(format!(
            "coverage.testFraction {fraction} must be greater than 0 and less than 1"
        )));
    }
    let n_test = ((rows.len() as f64 * fraction).round() as usize).clamp(1, rows.len() - 1);
    let mut order: Vec<(u64, usize)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (rank(seed, r.id.as_deref().unwrap_or_default()), i))
        .collect();
    order.sort_unstable();
    let test_idx: HashSet<usize> = order.iter().take(n_test).map(|&(_, i)| i).collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, row) in rows.into_iter().enumerate() {
        if test_idx.contains(&i) {
            test.push(row);
        } else {
            train.push(row);
        }
    }
    Ok(Coverage { train, test })
}

/// Drops train rows whose prompt (normalized as for deduplication) is also a test prompt, so
/// a test prompt is never trained on: a `coverage.testSource` that overlaps `coverage.source`,
/// or a source that repeats a prompt under two ids (one of which the split held out). Returns
/// the split and how many rows were dropped.
pub fn without_test_prompts(coverage: Coverage) -> (Coverage, usize) {
    let test: HashSet<String> = coverage.test.iter().map(prompt_key).collect();
    let before = coverage.train.len();
    let train: Vec<DatasetRow> = coverage
        .train
        .into_iter()
        .filter(|r| !test.contains(&prompt_key(r)))
        .collect();
    let dropped = before - train.len();
    (
        Coverage {
            train,
            test: coverage.test,
        },
        dropped,
    )
}

/// The prompt of a row (every message before the answer, with its role), normalized.
fn prompt_key(row: &DatasetRow) -> String {
    row.prompt_messages()
        .iter()
        .map(|m| format!("{:?}: {}", m.role, super::dedup::normalize(&m.content)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rank(seed: u64, id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamaduo::api::FailureClass;

    fn rows(n: usize) -> Vec<DatasetRow> {
        (0..n)
            .map(|i| {
                let mut r = DatasetRow::single_turn(format!("q{i}"), format!("a{i}"));
                r.id = Some(format!("c{i:06}"));
                r
            })
            .collect()
    }

    #[test]
    fn a_test_prompt_is_never_a_training_row() {
        // A separate test set repeating two training prompts (one differing only in case and
        // spacing), and a prompt the source holds twice under two ids.
        let mut train = rows(5);
        train[4] = DatasetRow::single_turn("q0", "another answer");
        train[4].id = Some("c000099".into());
        let mut test = vec![
            DatasetRow::single_turn("Q1 ", "a1"),
            DatasetRow::single_turn("q0", "a0"),
            DatasetRow::single_turn("new", "x"),
        ];
        for (i, t) in test.iter_mut().enumerate() {
            t.id = Some(format!("t{i}"));
        }
        let (clean, dropped) = without_test_prompts(Coverage { train, test });
        assert_eq!(dropped, 3);
        let ids: Vec<&str> = clean.train.iter().filter_map(|r| r.id.as_deref()).collect();
        assert_eq!(ids, ["c000002", "c000003"]);
        assert_eq!(clean.test.len(), 3, "the test set is never changed");
    }

    #[test]
    fn split_is_deterministic_and_sized() {
        let a = split(rows(100), 0.1, 42).expect("splits");
        let b = split(rows(100), 0.1, 42).expect("splits");
        assert_eq!(a, b);
        assert_eq!((a.train.len(), a.test.len()), (90, 10));
        let c = split(rows(100), 0.1, 7).expect("splits");
        assert_ne!(a.test, c.test, "another seed holds out other rows");
        let tiny = split(rows(2), 0.01, 1).expect("splits");
        assert_eq!((tiny.train.len(), tiny.test.len()), (1, 1));
        assert!(split(rows(1), 0.5, 1).is_err());
    }

    #[tokio::test]
    async fn a_row_over_the_limit_is_refused_naming_its_line_and_the_setting() {
        let dir = tempfile::tempdir().expect("dir");
        let row = |answer: &str| {
            format!(
                "{{\"messages\":[{{\"role\":\"user\",\"content\":\"q\"}},{{\"role\":\"assistant\",\"content\":\"{answer}\"}}]}}\n"
            )
        };
        let path = dir.path().join("c.jsonl");
        let text = format!("{}{}{}", row("4"), row(&"x".repeat(5000)), row("5"));
        std::fs::write(&path, text).expect("write");
        let url = format!("file://{}", path.display());
        let err = load_rows(&url, "coverage.source", "c", 4096, dir.path())
            .await
            .expect_err("refused");
        assert_eq!(err.failure_class(), FailureClass::Permanent);
        let text = err.to_string();
        assert!(
            text.contains("line 2 is 5078 bytes, over the 4096-byte limit")
                && text.contains("coverage.maxRowBytes"),
            "{text}"
        );
        // Under a limit it fits, every row is read.
        let rows = load_rows(&url, "coverage.source", "c", 8192, dir.path())
            .await
            .expect("reads");
        assert_eq!(rows.len(), 3);
    }

    #[tokio::test]
    async fn errors_never_show_credentials_of_the_source_url() {
        let cache = tempfile::tempdir().expect("cache");
        for url in [
            // Nothing listens on port 9: the fetch fails.
            "http://alice:s3cr3tT0ken@127.0.0.1:9/coverage.jsonl?sig=SASSIG123",
            "configmap://alice:s3cr3tT0ken@cm/rows.jsonl",
        ] {
            let err = load_rows(url, "coverage.source", "c", 1 << 20, cache.path())
                .await
                .expect_err("fails");
            let text = err.to_string();
            assert!(text.contains("coverage.source"), "{text}");
            for secret in ["s3cr3tT0ken", "SASSIG123"] {
                assert!(!text.contains(secret), "{secret} leaked: {text}");
            }
        }
    }
}
