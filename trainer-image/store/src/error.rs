//! The crate's one error type.
//!
//! Every variant names the URL (credentials and query strings removed, see [`redact_url`]) or
//! the local path it concerns, and says what to fix where a fix is known.

use std::path::PathBuf;

/// What went wrong in a store, JSONL or resolution operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL cannot be used as a store or source.
    #[error("invalid store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A key (a path relative to the store root) is not usable.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why, and what to write instead.
        reason: &'static str,
    },
    /// The object or file does not exist.
    #[error("{url} does not exist")]
    NotFound {
        /// The URL, redacted.
        url: String,
    },
    /// A local filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("write", "rename", ...).
        op: &'static str,
        /// The local path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An object store request failed.
    #[error(
        "{op} {url}: {source} (check the credentials in the environment and that the bucket exists)"
    )]
    ObjectStore {
        /// What was being done.
        op: &'static str,
        /// The URL, redacted.
        url: String,
        /// The object store's error.
        #[source]
        source: object_store::Error,
    },
    /// Writing data failed because its source failed (the destination is left untouched).
    #[error("writing {url}: the source failed: {source}")]
    Source {
        /// The destination URL, redacted.
        url: String,
        /// The source's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSONL line is not valid JSON of the expected type.
    #[error("{url} line {line}: {source}")]
    JsonlLine {
        /// The file's URL, redacted.
        url: String,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document (not JSONL) could not be read or written.
    #[error("{url}: {source}")]
    Json {
        /// The file's URL, redacted.
        url: String,
        /// The parse or serialization error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSONL line longer than the reader's limit (`coverage.maxRowBytes`): refused before
    /// it is parsed, so a huge row costs its bytes and no more.
    #[error(
        "{url} line {line} is {bytes} bytes, over the {limit}-byte limit on one row (coverage.maxRowBytes): shorten or remove that row, or raise coverage.maxRowBytes if the stage has the memory for it"
    )]
    RowTooLarge {
        /// The file, redacted.
        url: String,
        /// 1-based line number.
        line: usize,
        /// The line's length.
        bytes: usize,
        /// The limit.
        limit: u64,
    },
    /// A JSONL parts directory is inconsistent (for example a finalized file is being written to).
    #[error("{url}: {reason}")]
    Parts {
        /// The parts directory or final file, redacted.
        url: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An HTTP request to the Hugging Face Hub failed.
    #[error("{url}: {reason}")]
    Hub {
        /// The request URL (never carries the token).
        url: String,
        /// The status or transport error, and the fix.
        reason: String,
    },
    /// A blocking helper was called from inside a tokio runtime.
    #[error("{0}")]
    Runtime(String),
}

impl StoreError {
    /// Whether this is a "does not exist" error (as opposed to a failure to find out).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether no other stage attempt can succeed: an invalid URL or key, an input that does
    /// not exist, or a file that does not parse (a malformed dataset stays malformed), as
    /// opposed to I/O, object store, hub, parts or runtime trouble, which may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::InvalidUrl { .. }
            | StoreError::InvalidKey { .. }
            | StoreError::NotFound { .. }
            | StoreError::JsonlLine { .. }
            | StoreError::RowTooLarge { .. }
            | StoreError::Json { .. } => true,
            // An inconsistent parts directory is a run that died mid-write: the next one
            // starts its parts over.
            StoreError::Parts { .. }
            | StoreError::Io { .. }
            | StoreError::ObjectStore { .. }
            | StoreError::Source { .. }
            | StoreError::Hub { .. }
            | StoreError::Runtime(_) => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The URL without user info, password or query string, so it can go into errors and logs.
///
/// Azure SAS tokens and presigned URLs carry secrets in the query; `https://user:pw@host` in
/// the user info. Both are cut; anything unparseable is cut at the first `?` and `@`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            // abfs[s]://container@account... carries the container, not a secret, there.
            if !matches!(u.scheme(), "abfs" | "abfss") {
                let _ = u.set_username("");
            }
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let s = u.to_string();
            // Url adds a trailing slash to bare hosts; keep the caller's form.
            if !url.ends_with('/') && s.ends_with('/') && u.path() == "/" {
                s.trim_end_matches('/').to_string()
            } else {
                s
            }
        }
        _ => {
            let no_query = url.split(['?', '#']).next().unwrap_or_default();
            match no_query.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://{host}"),
                    None => no_query.to_string(),
                },
                None => no_query.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_secrets() {
        assert_eq!(
            redact_url("az://container/p?sv=2020&sig=SECRET"),
            "az://container/p"
        );
        assert_eq!(redact_url("https://user:SECRET@host/x"), "https://host/x");
        assert_eq!(redact_url("s3://bucket"), "s3://bucket");
        assert_eq!(
            redact_url("abfss://data@acct.dfs.core.windows.net/p"),
            "abfss://data@acct.dfs.core.windows.net/p"
        );
        assert_eq!(redact_url("s3://bucket/a/b"), "s3://bucket/a/b");
        assert_eq!(redact_url("/tmp/x"), "/tmp/x");
        assert!(!redact_url("hf://a:SECRET@org/name").contains("SECRET"));
        // URLs without credentials are names that must survive unchanged (an adapter's
        // base_model_name_or_path is one).
        for plain in [
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main",
            "file:///models/base",
            "s3://bucket/models/base",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
    }
}
