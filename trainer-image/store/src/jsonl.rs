//! JSONL: strict reading and writing of any serde type, and [`JsonlParts`], the resumable
//! writer of the stage contract (ARCHITECTURE.md §5).
//!
//! A stage that produces rows over a long time (synthesis, evaluation answers) commits them in
//! numbered part files next to the final file, each written atomically:
//!
//! ```text
//! round-1/synthetic.parts/part-00000.jsonl
//! round-1/synthetic.parts/part-00001.jsonl
//! round-1/synthetic.jsonl                   <- written by finalize(), then the parts go
//! ```
//!
//! A crash loses at most the uncommitted rows; the rerun reopens the parts, reads what is
//! committed (to skip work already done) and continues numbering after the last part, so
//! nothing is duplicated or torn. Reading never skips a bad line silently.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StoreError};
use crate::store::Store;

/// What to do with a final line that has no newline and does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailPolicy {
    /// It is an error like any other bad line. Right for files this crate wrote (atomically).
    Strict,
    /// It is reported in [`JsonlRows::truncated_tail`] and not returned as a row. Right for
    /// files written non-atomically by other tools (an interrupted append).
    ReportTruncatedTail,
}

/// A final line cut short by an interrupted, non-atomic write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The file (redacted URL).
    pub url: String,
    /// Its 1-based line number.
    pub line: usize,
    /// How many bytes it had.
    pub bytes: usize,
}

/// Rows read from a JSONL file.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonlRows<T> {
    /// Every row, in file order.
    pub rows: Vec<T>,
    /// Set only with [`TailPolicy::ReportTruncatedTail`] when the last line was cut short.
    pub truncated_tail: Option<TruncatedTail>,
}

/// Parses JSONL bytes; `url` names the file in errors.
///
/// Lines may end in `\n` or `\r\n`; whitespace-only lines carry no row and are passed over.
/// Any other line that is not a valid `T` is a [`StoreError::JsonlLine`] naming file and line,
/// except as `policy` allows for an unterminated final line.
pub fn parse_jsonl<T: DeserializeOwned>(
    data: &[u8],
    url: &str,
    policy: TailPolicy,
) -> Result<JsonlRows<T>> {
    parse_jsonl_within(data, url, policy, u64::MAX)
}

/// [`parse_jsonl`] refusing any line over `max_line_bytes` with [`StoreError::RowTooLarge`]
/// before it is parsed: parsing and then tokenizing a row costs many times its size, so one
/// pasted 60 MB document would otherwise cost gigabytes in every stage that reads it.
pub fn parse_jsonl_within<T: DeserializeOwned>(
    data: &[u8],
    url: &str,
    policy: TailPolicy,
    max_line_bytes: u64,
) -> Result<JsonlRows<T>> {
    let mut rows = Vec::new();
    let mut truncated_tail = None;
    let ends_with_newline = data.last() == Some(&b'\n');
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let count = lines.len();
    for (i, raw) in lines.into_iter().enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() as u64 > max_line_bytes {
            return Err(StoreError::RowTooLarge {
                url: url.to_string(),
                line: i + 1,
                bytes: line.len(),
                limit: max_line_bytes,
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(row) => rows.push(row),
            Err(source) => {
                let is_unterminated_tail = i + 1 == count && !ends_with_newline;
                if is_unterminated_tail && policy == TailPolicy::ReportTruncatedTail {
                    tracing::warn!(
                        url,
                        line = i + 1,
                        bytes = raw.len(),
                        "truncated final JSONL line not read"
                    );
                    truncated_tail = Some(TruncatedTail {
                        url: url.to_string(),
                        line: i + 1,
                        bytes: raw.len(),
                    });
                } else {
                    return Err(StoreError::JsonlLine {
                        url: url.to_string(),
                        line: i + 1,
                        source,
                    });
                }
            }
        }
    }
    Ok(JsonlRows {
        rows,
        truncated_tail,
    })
}

/// Serializes rows as JSONL: one compact JSON document per line, each ending in `\n`.
pub fn to_jsonl<T: Serialize>(rows: &[T], url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row).map_err(|source| StoreError::Json {
            url: url.to_string(),
            source,
        })?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Reads a JSONL file of `T` strictly (every non-blank line must be a valid `T`).
pub async fn read_jsonl<T: DeserializeOwned>(store: &Store, key: &str) -> Result<Vec<T>> {
    Ok(read_jsonl_with(store, key, TailPolicy::Strict).await?.rows)
}

/// [`read_jsonl`] refusing any row over `max_row_bytes` ([`parse_jsonl_within`]).
pub async fn read_jsonl_within<T: DeserializeOwned>(
    store: &Store,
    key: &str,
    max_row_bytes: u64,
) -> Result<Vec<T>> {
    let bytes = store.get(key).await?;
    Ok(parse_jsonl_within(
        &bytes,
        &store.url_of(key),
        TailPolicy::Strict,
        max_row_bytes,
    )?
    .rows)
}

/// Reads a JSONL file of `T` with an explicit [`TailPolicy`].
pub async fn read_jsonl_with<T: DeserializeOwned>(
    store: &Store,
    key: &str,
    policy: TailPolicy,
) -> Result<JsonlRows<T>> {
    let bytes = store.get(key).await?;
    parse_jsonl(&bytes, &store.url_of(key), policy)
}

/// Writes rows as a JSONL file atomically; returns the number of rows.
pub async fn write_jsonl<T: Serialize>(store: &Store, key: &str, rows: &[T]) -> Result<usize> {
    let bytes = to_jsonl(rows, &store.url_of(key))?;
    store.put(key, bytes).await?;
    Ok(rows.len())
}

/// The resumable JSONL writer: rows committed in atomic numbered parts, then finalized.
///
/// One writer per final file at a time (a stage run is the only writer of its round).
#[derive(Debug)]
pub struct JsonlParts {
    store: Store,
    final_key: String,
    parts_dir: String,
    /// Committed part numbers, ascending.
    parts: Vec<u32>,
    finalized: bool,
}

const PART_PREFIX: &str = "part-";
const PART_SUFFIX: &str = ".jsonl";

impl JsonlParts {
    /// Opens the writer for `final_key` (e.g. `round-1/synthetic.jsonl`), picking up the parts
    /// committed by earlier runs from `round-1/synthetic.parts/`.
    pub async fn open(store: &Store, final_key: &str) -> Result<JsonlParts> {
        let final_key = final_key.trim_end_matches('/').to_string();
        let stem = final_key
            .strip_suffix(".jsonl")
            .ok_or_else(|| StoreError::InvalidKey {
                key: final_key.clone(),
                reason: "a JSONL parts file must end in \".jsonl\"",
            })?;
        let parts_dir = format!("{stem}.parts");
        let finalized = store.exists(&final_key).await?;
        let mut parts = Vec::new();
        for key in store.list(&parts_dir).await? {
            let name = key.rsplit('/').next().unwrap_or(&key);
            let number = name
                .strip_prefix(PART_PREFIX)
                .and_then(|n| n.strip_suffix(PART_SUFFIX))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|_| key == format!("{parts_dir}/{name}"));
            match number {
                Some(n) => parts.push(n),
                None => {
                    return Err(StoreError::Parts {
                        url: store.url_of(&key),
                        reason: format!(
                            "unexpected object in the parts directory {parts_dir}: only {PART_PREFIX}NNNNN{PART_SUFFIX} files belong there; remove it"
                        ),
                    });
                }
            }
        }
        parts.sort_unstable();
        Ok(JsonlParts {
            store: store.clone(),
            final_key,
            parts_dir,
            parts,
            finalized,
        })
    }

    /// Whether the final file exists (no more rows can be committed).
    pub fn is_finalized(&self) -> bool {
        self.finalized
    }

    /// How many parts are committed (and not yet folded into the final file).
    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// The key of the final file.
    pub fn final_key(&self) -> &str {
        &self.final_key
    }

    fn part_key(&self, n: u32) -> String {
        format!("{}/{PART_PREFIX}{n:05}{PART_SUFFIX}", self.parts_dir)
    }

    /// Commits `rows` as the next part, atomically; returns its key (`None` for no rows).
    /// Once this returns, the rows survive a crash.
    pub async fn commit<T: Serialize>(&mut self, rows: &[T]) -> Result<Option<String>> {
        if self.finalized {
            return Err(StoreError::Parts {
                url: self.store.url_of(&self.final_key),
                reason: "already finalized: rows can no longer be added (delete the final file to reopen it)".into(),
            });
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let n = match self.parts.last() {
            Some(last) => last.checked_add(1).ok_or_else(|| StoreError::Parts {
                url: self.store.url_of(&self.parts_dir),
                reason: "part numbers exhausted: commit bigger batches".into(),
            })?,
            None => 0,
        };
        let key = self.part_key(n);
        let bytes = to_jsonl(rows, &self.store.url_of(&key))?;
        self.store.put(&key, bytes).await?;
        self.parts.push(n);
        Ok(Some(key))
    }

    /// Every committed row so far, in commit order (the final file's once finalized).
    pub async fn read_rows<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        if self.finalized {
            return read_jsonl(&self.store, &self.final_key).await;
        }
        let mut rows = Vec::new();
        for &n in &self.parts {
            rows.extend(read_jsonl::<T>(&self.store, &self.part_key(n)).await?);
        }
        Ok(rows)
    }

    /// Writes `rows` (the caller's view of every committed row, e.g. with superseded rows left
    /// out) as the final file atomically, then deletes the parts; returns the number of rows.
    /// Idempotent like [`JsonlParts::finalize`]: once the final file exists it is kept.
    pub async fn finalize_with<T: Serialize>(&mut self, rows: &[T]) -> Result<usize> {
        if !self.finalized {
            let bytes = to_jsonl(rows, &self.store.url_of(&self.final_key))?;
            self.store.put(&self.final_key, bytes).await?;
            self.finalized = true;
        }
        self.finalize().await
    }

    /// Concatenates the parts into the final file atomically, then deletes the parts; returns
    /// the number of rows in the final file. Idempotent: finalizing again (for instance after
    /// a crash between the two steps) only removes leftover parts.
    pub async fn finalize(&mut self) -> Result<usize> {
        if !self.finalized {
            let mut all = Vec::new();
            for &n in &self.parts {
                let key = self.part_key(n);
                let bytes = self.store.get(&key).await?;
                // Checked again here: the final file must not inherit a damaged part.
                parse_jsonl::<serde_json::Value>(
                    &bytes,
                    &self.store.url_of(&key),
                    TailPolicy::Strict,
                )?;
                all.extend_from_slice(&bytes);
                if !all.is_empty() && all.last() != Some(&b'\n') {
                    all.push(b'\n');
                }
            }
            self.store.put(&self.final_key, all).await?;
            self.finalized = true;
        }
        self.store.delete_prefix(&self.parts_dir).await?;
        self.parts.clear();
        let rows = self.store.get(&self.final_key).await?;
        Ok(parse_jsonl::<serde_json::Value>(
            &rows,
            &self.store.url_of(&self.final_key),
            TailPolicy::Strict,
        )?
        .rows
        .len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn bad_lines_name_file_and_line() {
        let data = b"{\"a\":1}\n\n{\"a\":2}\r\n{oops}\n{\"a\":3}\n";
        let err = parse_jsonl::<Value>(data, "file:///x.jsonl", TailPolicy::Strict).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("file:///x.jsonl line 4"), "{msg}");
    }

    #[test]
    fn truncated_tail_is_reported_or_rejected() {
        let data = b"{\"a\":1}\n{\"a\":2}\n{\"a\":";
        let strict = parse_jsonl::<Value>(data, "u", TailPolicy::Strict).unwrap_err();
        assert!(strict.to_string().contains("u line 3"));
        let lenient = parse_jsonl::<Value>(data, "u", TailPolicy::ReportTruncatedTail).unwrap();
        assert_eq!(lenient.rows.len(), 2);
        assert_eq!(
            lenient.truncated_tail,
            Some(TruncatedTail {
                url: "u".into(),
                line: 3,
                bytes: 5
            })
        );
        // A bad line in the middle is an error under either policy.
        let mid = b"{\"a\":\n{\"a\":2}\n";
        assert!(parse_jsonl::<Value>(mid, "u", TailPolicy::ReportTruncatedTail).is_err());
        // A terminated bad last line is damage, not truncation.
        let terminated = b"{\"a\":1}\n{\"a\":\n";
        assert!(parse_jsonl::<Value>(terminated, "u", TailPolicy::ReportTruncatedTail).is_err());
    }

    #[test]
    fn unterminated_valid_last_line_is_a_row() {
        let rows = parse_jsonl::<Value>(b"{\"a\":1}\n{\"a\":2}", "u", TailPolicy::Strict).unwrap();
        assert_eq!(rows.rows.len(), 2);
        assert!(rows.truncated_tail.is_none());
    }

    #[test]
    fn round_trips() {
        let rows = vec![
            serde_json::json!({"t": "line\nbreak"}),
            serde_json::json!([1, 2]),
        ];
        let bytes = to_jsonl(&rows, "u").unwrap();
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 2);
        let back = parse_jsonl::<Value>(&bytes, "u", TailPolicy::Strict).unwrap();
        assert_eq!(back.rows, rows);
    }
}
