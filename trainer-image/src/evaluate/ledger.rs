//! A resumable JSONL file of keyed records: rows already stored (committed parts or the final
//! file) are loaded at open, new rows are committed in atomic parts, and the file is
//! finalized at the end. A key already done is never written twice; a key whose stored row is
//! a failure (a judgement whose reply could not be read) is not done: a rerun tries it again,
//! and the newer row replaces the failure.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use llamaduo_store::{JsonlParts, Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A keyed, resumable JSONL file.
pub struct Ledger<T, K> {
    parts: JsonlParts,
    rows: Vec<T>,
    /// Keys whose row is done (not a failure).
    keys: HashSet<K>,
    /// Where each key's row is in `rows`.
    index: HashMap<K, usize>,
    key_of: fn(&T) -> K,
    failed: fn(&T) -> bool,
}

impl<T, K> Ledger<T, K>
where
    T: Serialize + DeserializeOwned + Clone,
    K: Eq + Hash + Clone,
{
    /// Opens `key` in `store`, loading what earlier runs stored. `failed` tells a stored row
    /// that is a failure to try again.
    pub async fn open(
        store: &Store,
        key: &str,
        key_of: fn(&T) -> K,
        failed: fn(&T) -> bool,
    ) -> Result<Self, StoreError> {
        let parts = JsonlParts::open(store, key).await?;
        let stored: Vec<T> = parts.read_rows().await?;
        // A finalized file is a finished evaluation: its failures stay what they were, so a
        // rerun gives the same summary.
        let failed = if parts.is_finalized() {
            |_: &T| false
        } else {
            failed
        };
        let mut ledger = Self {
            parts,
            rows: Vec::new(),
            keys: HashSet::new(),
            index: HashMap::new(),
            key_of,
            failed,
        };
        for r in stored {
            ledger.remember(r);
        }
        Ok(ledger)
    }

    /// Takes `r` into the rows unless its key is done; a failure is replaced by a later row.
    fn remember(&mut self, r: T) {
        let k = (self.key_of)(&r);
        if self.keys.contains(&k) {
            return;
        }
        if !(self.failed)(&r) {
            self.keys.insert(k.clone());
        }
        match self.index.get(&k) {
            Some(&i) => self.rows[i] = r,
            None => {
                self.index.insert(k, self.rows.len());
                self.rows.push(r);
            }
        }
    }

    /// Whether a row with this key is stored and done.
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    /// The keys that are done.
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
        let n = fresh.len();
        for r in fresh {
            self.remember(r);
        }
        Ok(n)
    }

    /// Writes the final file: one row per key (a failure retried since is replaced by its
    /// newer row), then removes the parts.
    pub async fn finalize(&mut self) -> Result<usize, StoreError> {
        self.parts.finalize_with(&self.rows).await
    }
}
