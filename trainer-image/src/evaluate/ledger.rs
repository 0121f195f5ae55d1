//! A resumable JSONL file of keyed records: rows already stored (committed parts or the final
//! file) are loaded at open, new rows are committed in atomic parts, and the file is
//! finalized at the end. A key already present is never written twice.

use std::collections::HashSet;
use std::hash::Hash;

use llamaduo_store::{JsonlParts, Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A keyed, resumable JSONL file.
pub struct Ledger<T, K> {
    parts: JsonlParts,
    rows: Vec<T>,
    keys: HashSet<K>,
    key_of: fn(&T) -> K,
}

impl<T, K> Ledger<T, K>
where
    T: Serialize + DeserializeOwned + Clone,
    K: Eq + Hash + Clone,
{
    /// Opens `key` in `store`, loading what earlier runs stored.
    pub async fn open(store: &Store, key: &str, key_of: fn(&T) -> K) -> Result<Self, StoreError> {
        let parts = JsonlParts::open(store, key).await?;
        let stored: Vec<T> = parts.read_rows().await?;
        let mut keys = HashSet::new();
        let mut rows = Vec::new();
        for r in stored {
            if keys.insert(key_of(&r)) {
                rows.push(r);
            }
        }
        Ok(Self {
            parts,
            rows,
            keys,
            key_of,
        })
    }

    /// Whether a row with this key is stored.
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    /// The stored keys.
    pub fn keys(&self) -> &HashSet<K> {
        &self.keys
    }

    /// Every stored row.
    pub fn rows(&self) -> &[T] {
        &self.rows
    }

    /// Commits the rows whose keys are new, atomically; returns how many were new.
    pub async fn commit(&mut self, rows: Vec<T>) -> Result<usize, StoreError> {
        let mut fresh = Vec::new();
        let mut batch_keys = HashSet::new();
        for r in rows {
            let k = (self.key_of)(&r);
            if !self.keys.contains(&k) && batch_keys.insert(k) {
                fresh.push(r);
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        if self.parts.is_finalized() {
            return Err(StoreError::Parts {
                url: self.parts.final_key().to_string(),
                reason: "the evaluation was finalized with other settings; delete the round's eval/ folder to evaluate again".into(),
            });
        }
        self.parts.commit(&fresh).await?;
        for r in &fresh {
            self.keys.insert((self.key_of)(r));
        }
        let n = fresh.len();
        self.rows.extend(fresh);
        Ok(n)
    }

    /// Folds the parts into the final file.
    pub async fn finalize(&mut self) -> Result<usize, StoreError> {
        self.parts.finalize().await
    }
}
