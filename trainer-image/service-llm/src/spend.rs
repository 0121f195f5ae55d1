//! Service tokens spent by stage attempts that never reported them.
//!
//! A stage reports the tokens it spent in its result, and the migration's status (and so
//! `stop.maxServiceTokens`) counts what results report. A pod that is OOM-killed, evicted or
//! lost with its node reports nothing, yet its teacher and judge calls were billed. So every
//! attempt keeps a spend log in the artifact store, `round-{n}/spent/{stage}-a{attempt}.json`,
//! rewritten every few seconds while it runs and marked `reported` just before its result is
//! written. The next attempt of the stage (or the same attempt run again in a new pod) adds the
//! tokens of every unreported log to its own result and takes them off its budget, then marks
//! those logs reported so no later attempt counts them twice.
//!
//! The log errs on the side of counting: tokens spent in the last seconds before a kill may be
//! missed (the flush interval), and a kill in the instant between two writes of the start-up
//! may count a log twice, but a budget is never silently overspent by a crash loop.

use std::sync::Arc;
use std::time::Duration;

use llamaduo::api::{Stage, TokenUsage};
use llamaduo_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::flow::TokenBudget;

/// How often, at most, a running attempt rewrites its log.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How often it looks whether tokens were spent.
const TICK: Duration = Duration::from_millis(200);

/// One attempt's log.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpendRecord {
    /// Tokens spent, as the providers reported them (including any carried from attempts that
    /// never reported theirs).
    pub service_tokens: TokenUsage,
    /// Whether these tokens reached a stage result (or a later attempt's).
    pub reported: bool,
}

/// This attempt's spend log.
#[derive(Clone)]
pub struct SpendLog {
    store: Store,
    key: String,
    carried: TokenUsage,
    /// Held across each write; true once the log was written as reported. A periodic write
    /// still in flight finishes before the final one starts, and none follows it (a late
    /// `reported: false` would have the next attempt count these tokens again).
    closed: Arc<tokio::sync::Mutex<bool>>,
}

/// The directory of the spend logs of round `round`.
fn dir(round: u32) -> String {
    format!("round-{round}/spent")
}

fn key(round: u32, stage: Stage, attempt: u32) -> String {
    format!("{}/{stage}-a{attempt}.json", dir(round))
}

impl SpendLog {
    /// Opens the log of `attempt` and carries over the tokens of every unreported log of the
    /// stage in this round (earlier attempts, or this attempt in a pod that died).
    pub async fn open(
        store: &Store,
        round: u32,
        stage: Stage,
        attempt: u32,
    ) -> Result<Self, StoreError> {
        let own = key(round, stage, attempt);
        let prefix = format!("{}/{stage}-a", dir(round));
        let mut carried = TokenUsage::default();
        let mut unreported = Vec::new();
        for k in store.list(&dir(round)).await? {
            if !k.starts_with(&prefix) || !k.ends_with(".json") {
                continue;
            }
            let record: SpendRecord = match store.get_json(&k).await {
                Ok(r) => r,
                // A torn or foreign file: count nothing rather than fail the stage.
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "unreadable spend log ignored");
                    continue;
                }
            };
            if !record.reported {
                carried += record.service_tokens;
                unreported.push(k);
            }
        }
        let log = Self {
            store: store.clone(),
            key: own.clone(),
            carried,
            closed: Arc::default(),
        };
        // Own log first, holding what was carried: a kill from here on loses nothing.
        log.write(TokenUsage::default(), false).await?;
        for k in unreported.into_iter().filter(|k| *k != own) {
            let record: SpendRecord = store.get_json(&k).await?;
            store
                .put_json(
                    &k,
                    &SpendRecord {
                        reported: true,
                        ..record
                    },
                )
                .await?;
        }
        if carried.total() > 0 {
            tracing::warn!(
                input = carried.input,
                output = carried.output,
                "service tokens of earlier attempts that never reported them are counted in this one"
            );
        }
        Ok(log)
    }

    /// Tokens of earlier attempts that this one reports.
    pub fn carried(&self) -> TokenUsage {
        self.carried
    }

    /// Records `own` (this attempt's tokens so far; the carried ones are added). Once a write
    /// with `reported` is done, later writes do nothing.
    pub async fn write(&self, own: TokenUsage, reported: bool) -> Result<(), StoreError> {
        let mut closed = self.closed.lock().await;
        if *closed {
            return Ok(());
        }
        self.store
            .put_json(
                &self.key,
                &SpendRecord {
                    service_tokens: own + self.carried,
                    reported,
                },
            )
            .await?;
        *closed = reported;
        Ok(())
    }

    /// Rewrites the log from `budget` until it is written as reported: as soon as the first
    /// tokens are spent, then at most every [`FLUSH_EVERY`] while they change. The task is
    /// never aborted (an aborted store write could still land after the final one); it ends
    /// by itself within a tick of the final write.
    pub fn keep_written(&self, budget: Arc<TokenBudget>) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut last = TokenUsage::default();
            let mut written_at: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(TICK).await;
                if *log.closed.lock().await {
                    return;
                }
                let used = budget.used();
                let due = written_at.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
                if used != last && due {
                    if let Err(e) = log.write(used, false).await {
                        tracing::warn!(error = %e, "writing the spend log failed");
                    }
                    last = used;
                    written_at = Some(tokio::time::Instant::now());
                }
            }
        })
    }
}

/// What is left of `budget` once `carried` is spent.
pub fn remaining(budget: Option<u64>, carried: TokenUsage) -> Option<u64> {
    budget.map(|b| b.saturating_sub(carried.total()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(n: u64) -> TokenUsage {
        TokenUsage {
            input: n,
            output: 0,
        }
    }

    #[tokio::test]
    async fn unreported_spend_is_carried_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::local(dir.path());
        // Attempt 1 is killed after spending 500: its log is never marked reported.
        let first = SpendLog::open(&store, 1, Stage::Synthesize, 1)
            .await
            .expect("open");
        assert_eq!(first.carried(), TokenUsage::default());
        first.write(usage(500), false).await.expect("write");
        // Attempt 2 carries it and marks it reported.
        let second = SpendLog::open(&store, 1, Stage::Synthesize, 2)
            .await
            .expect("open");
        assert_eq!(second.carried(), usage(500));
        let old: SpendRecord = store
            .get_json("round-1/spent/synthesize-a1.json")
            .await
            .expect("log 1");
        assert!(old.reported);
        // Attempt 2 reports 200 of its own (700 in its log) and ends normally.
        second.write(usage(200), true).await.expect("write");
        let own: SpendRecord = store
            .get_json("round-1/spent/synthesize-a2.json")
            .await
            .expect("log 2");
        assert_eq!(own.service_tokens, usage(700));
        // Nothing is left to carry; other stages and rounds never count.
        let third = SpendLog::open(&store, 1, Stage::Synthesize, 3)
            .await
            .expect("open");
        assert_eq!(third.carried(), TokenUsage::default());
        let eval = SpendLog::open(&store, 1, Stage::Evaluate, 1)
            .await
            .expect("open");
        assert_eq!(eval.carried(), TokenUsage::default());
        // The same attempt run again in a new pod (an eviction) carries its own dead log.
        third.write(usage(40), false).await.expect("write");
        let again = SpendLog::open(&store, 1, Stage::Synthesize, 3)
            .await
            .expect("open");
        assert_eq!(again.carried(), usage(40));
        assert_eq!(remaining(Some(100), again.carried()), Some(60));
        assert_eq!(remaining(None, again.carried()), None);
    }
}
