//! Keys: `/`-separated paths relative to a store's root (`round-1/model/config.json`).
//!
//! One validation for every backend, so a key that works on a laptop's `file://` store works
//! unchanged on S3, and no key can escape its root (`..`) or collide with in-flight temp files.

use crate::error::{Result, StoreError};

/// The marker in the names of temp files of in-flight local writes; listings skip them.
pub(crate) const TMP_MARKER: &str = ".llamaduo-tmp.";

/// Checks a key naming an object (non-empty) and returns it without a trailing `/`.
pub(crate) fn object_key(key: &str) -> Result<&str> {
    let key = prefix_key(key)?;
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason: "empty: name an object, e.g. \"round-1/synthetic.jsonl\"",
        });
    }
    Ok(key)
}

/// Checks a key used as a prefix (may be empty: the whole store) and trims a trailing `/`.
pub(crate) fn prefix_key(key: &str) -> Result<&str> {
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    if trimmed.is_empty() {
        return Ok(trimmed);
    }
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if trimmed.starts_with('/') {
        return bad("starts with '/': keys are relative to the store root");
    }
    if trimmed.contains('\\') {
        return bad("contains '\\': use '/' between path segments");
    }
    for segment in trimmed.split('/') {
        match segment {
            "" => return bad("has an empty segment ('//')"),
            "." | ".." => {
                return bad("has a '.' or '..' segment: keys cannot leave the store root");
            }
            s if s.contains(TMP_MARKER) => {
                return bad("contains the reserved temp-file marker \".llamaduo-tmp.\"");
            }
            s if s.chars().any(char::is_control) => {
                return bad("contains a control character");
            }
            _ => {}
        }
    }
    Ok(trimmed)
}

/// `a` + `/` + `b`, for non-empty parts.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_or_be_ambiguous() {
        assert_eq!(object_key("round-1/model/").unwrap(), "round-1/model");
        assert_eq!(prefix_key("").unwrap(), "");
        assert_eq!(prefix_key("/").unwrap(), "");
        for bad in [
            "/abs",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "a/.x.llamaduo-tmp.1.2",
            "a\nb",
        ] {
            assert!(prefix_key(bad).is_err(), "{bad} should be rejected");
        }
        assert!(object_key("").is_err());
        assert_eq!(join("", "b"), "b");
        assert_eq!(join("a", ""), "a");
        assert_eq!(join("a", "b"), "a/b");
    }
}
