//! Usage counts: every decision about a key, per key, hour and code,
//! gathered in memory and written in batches — one statement per flush
//! (per 1,000 key-hour-codes), never one per request.
//!
//! Counts are kept by the key's digest until they are written: a refusal
//! (disabled, expired) has no record id at hand, a service's report names
//! keys by digest, and the flush resolves digests to ids in the statement
//! itself (counts for digests no key has are dropped there).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use auth_core::Digest;
use auth_core::protocol::{Code, UsageCounts};
use sqlx::Row;
use tokio::task::JoinHandle;

use crate::{Error, KeyKind, SqlKeyStore, secs};

/// Counts waiting to be written, at most this many key-hours (a report or
/// decision that finds it full is dropped, and said so).
pub const MAX_PENDING_USAGE: usize = 100_000;

/// How long usage counts are kept (pruned with the change log).
pub const USAGE_KEEPS: Duration = Duration::from_secs(400 * 86_400);

/// Rows per statement: 4 parameters each, well under SQLite's limit.
const ROWS_PER_STATEMENT: usize = 1_000;

/// Counts waiting to be written, by key digest and hour.
pub(crate) type Pending = HashMap<(Digest, i64), UsageCounts>;

/// The start of the hour `at` is in, Unix seconds.
pub fn hour_of(at: SystemTime) -> i64 {
    let s = secs(at);
    s - s.rem_euclid(3600)
}

/// One hour of a key's usage: counts by code (each at least 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    /// The hour's start, Unix seconds.
    pub hour: u64,
    /// Decisions by code.
    pub counts: UsageCounts,
}

impl UsageBucket {
    /// All decisions in the hour.
    pub fn total(&self) -> u64 {
        self.counts
            .by_code()
            .iter()
            .map(|(_, n)| n.max(&0).unsigned_abs())
            .sum()
    }
}

/// A key's usage since some time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key's record id.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// Hours with decisions, oldest first.
    pub buckets: Vec<UsageBucket>,
}

fn code_of(text: &str) -> Option<Code> {
    Some(match text {
        "valid" => Code::Valid,
        "disabled" => Code::Disabled,
        "expired" => Code::Expired,
        "insufficient_scope" => Code::InsufficientScope,
        "rate_limited" => Code::RateLimited,
        "usage_exceeded" => Code::UsageExceeded,
        _ => return None,
    })
}

/// Adds `counts` to `pending` at `(digest, hour)`; false when that needs a
/// new entry and `pending` is full.
fn merge(pending: &mut Pending, digest: Digest, hour: i64, counts: &UsageCounts) -> bool {
    if !pending.contains_key(&(digest, hour)) && pending.len() >= MAX_PENDING_USAGE {
        return false;
    }
    let entry = pending.entry((digest, hour)).or_default();
    for (code, n) in counts.by_code() {
        entry.add(code, n);
    }
    true
}

impl SqlKeyStore {
    /// Counts one decision `code` about the key with this digest at `at`
    /// (written by the next flush). `Code::Invalid` is not counted: no key.
    /// False when the pending counts are full and it was dropped.
    pub fn count_usage(&self, digest: &Digest, at: SystemTime, code: Code) -> bool {
        if code == Code::Invalid {
            return true;
        }
        let mut counts = UsageCounts::default();
        counts.add(code, 1);
        self.add_usage(digest, hour_of(at), &counts)
    }

    /// Adds counts reported for the key with this digest in the hour
    /// starting at `hour` (Unix seconds; the caller checked the ranges).
    /// False when the pending counts are full and they were dropped.
    pub fn add_usage(&self, digest: &Digest, hour: i64, counts: &UsageCounts) -> bool {
        if counts.is_empty() {
            return true;
        }
        merge(&mut self.inner.usage.lock(), *digest, hour, counts)
    }

    /// Adds a whole report's counts, or none of them when the pending
    /// counts have no room for all (so that a report refused for want of
    /// room can be sent again without counting twice): whether added.
    pub fn add_usage_all(&self, entries: &[(Digest, i64, UsageCounts)]) -> bool {
        let mut pending = self.inner.usage.lock();
        let new = entries
            .iter()
            .filter(|(digest, hour, _)| !pending.contains_key(&(*digest, *hour)))
            .count();
        if pending.len().saturating_add(new) > MAX_PENDING_USAGE {
            return false;
        }
        for (digest, hour, counts) in entries {
            merge(&mut pending, *digest, *hour, counts);
        }
        true
    }

    /// Key-hours waiting to be written.
    pub fn pending_usage(&self) -> usize {
        self.inner.usage.lock().len()
    }

    /// Writes the pending counts: one statement per 1,000 key-hour-codes,
    /// adding to what is stored (digests resolved to ids in the
    /// statement; those of no key dropped). On a failure what was not
    /// written goes back to the pending counts (as room allows) for the
    /// next flush. The number of key-hours written.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let pending = std::mem::take(&mut *self.inner.usage.lock());
        if pending.is_empty() {
            return Ok(0);
        }
        let rows: Vec<(String, i64, &'static str, i64)> = pending
            .iter()
            .flat_map(|((digest, hour), counts)| {
                let hex = digest.to_hex();
                counts
                    .by_code()
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .map(move |(code, n)| (hex.clone(), *hour, code.as_str(), n))
            })
            .collect();
        let mut tx = match self.inner.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                self.restore_usage(pending);
                return Err(e.into());
            }
        };
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = 4 * i + 2;
                    format!("(${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
                })
                .collect();
            // `WHERE true`: SQLite reads an `ON` after a join as the
            // join's otherwise.
            let sql = format!(
                "INSERT INTO auth_key_usage (key_id, hour, code, count) \
                 SELECT k.id, v.column2, v.column3, v.column4 \
                 FROM (VALUES {}) AS v JOIN auth_keys k ON k.digest = v.column1 AND k.kind = $1 \
                 WHERE true \
                 ON CONFLICT (key_id, hour, code) \
                 DO UPDATE SET count = auth_key_usage.count + excluded.count",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(KeyKind::Client.as_str());
            for (digest, hour, code, n) in chunk {
                q = q.bind(digest).bind(*hour).bind(*code).bind(*n);
            }
            if let Err(e) = q.execute(&mut *tx).await {
                drop(tx);
                self.restore_usage(pending);
                return Err(e.into());
            }
        }
        if let Err(e) = tx.commit().await {
            self.restore_usage(pending);
            return Err(e.into());
        }
        Ok(pending.len())
    }

    /// Puts counts that could not be written back with the pending ones.
    fn restore_usage(&self, unwritten: Pending) {
        let mut pending = self.inner.usage.lock();
        let mut dropped = 0usize;
        for ((digest, hour), counts) in unwritten {
            if !merge(&mut pending, digest, hour, &counts) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(target: "auth_sqlx", dropped, "usage counts dropped: too many waiting");
        }
    }

    /// Writes the pending usage counts every `every`.
    pub fn spawn_usage_flush(&self, every: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.flush_usage().await {
                    tracing::warn!(target: "auth_sqlx", error = %e, "could not write usage counts");
                }
            }
        })
    }

    /// A client key's usage since `since`, by hour (this process's pending
    /// counts written first); `None` when there is no such key.
    pub async fn key_usage(&self, id: &str, since: SystemTime) -> Result<Option<KeyUsage>, Error> {
        let Some(info) = self.get(id).await? else {
            return Ok(None);
        };
        self.flush_usage().await?;
        let rows = sqlx::query(
            "SELECT key_id, hour, code, count FROM auth_key_usage \
             WHERE key_id = $1 AND hour >= $2 ORDER BY hour",
        )
        .bind(id)
        .bind(hour_of(since))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut usage = KeyUsage {
            id: info.id,
            owner: info.owner,
            buckets: Vec::new(),
        };
        for row in rows {
            add_row(&mut usage.buckets, &row)?;
        }
        usage.buckets.retain(|b| b.total() > 0);
        Ok(Some(usage))
    }

    /// The usage since `since` of every client key (of `owner`'s, when
    /// given) that has any, by key and hour (this process's pending counts
    /// written first). Keys deleted since are left out.
    pub async fn usage(
        &self,
        owner: Option<&str>,
        since: SystemTime,
    ) -> Result<Vec<KeyUsage>, Error> {
        self.flush_usage().await?;
        let rows = sqlx::query(
            "SELECT u.key_id, u.hour, u.code, u.count, k.owner FROM auth_key_usage u \
             JOIN auth_keys k ON k.id = u.key_id AND k.kind = $1 \
             WHERE u.hour >= $2 AND ($3 IS NULL OR k.owner = $3) \
             ORDER BY k.owner, u.key_id, u.hour",
        )
        .bind(KeyKind::Client.as_str())
        .bind(hour_of(since))
        .bind(owner)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut keys: Vec<KeyUsage> = Vec::new();
        for row in rows {
            let id: String = row.try_get("key_id")?;
            if keys.last().is_none_or(|k| k.id != id) {
                keys.push(KeyUsage {
                    id,
                    owner: row.try_get("owner")?,
                    buckets: Vec::new(),
                });
            }
            if let Some(key) = keys.last_mut() {
                add_row(&mut key.buckets, &row)?;
            }
        }
        for key in &mut keys {
            key.buckets.retain(|b| b.total() > 0);
        }
        keys.retain(|k| !k.buckets.is_empty());
        Ok(keys)
    }

    /// Drops usage counts older than [`USAGE_KEEPS`] before `now`; how
    /// many rows.
    pub async fn prune_usage(&self, now: SystemTime) -> Result<u64, Error> {
        let before = now.checked_sub(USAGE_KEEPS).map_or(0, hour_of);
        let done = sqlx::query("DELETE FROM auth_key_usage WHERE hour < $1")
            .bind(before)
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Adds one stored row (ordered by hour) to `buckets`; a count below 0
/// (a move from `valid` that came before the grant it moves) reads as 0.
fn add_row(buckets: &mut Vec<UsageBucket>, row: &sqlx::any::AnyRow) -> Result<(), Error> {
    let hour: i64 = row.try_get("hour")?;
    let code: String = row.try_get("code")?;
    let count: i64 = row.try_get("count")?;
    let Some(code) = code_of(&code) else {
        return Ok(());
    };
    let hour = u64::try_from(hour).unwrap_or(0);
    if buckets.last().is_none_or(|b| b.hour != hour) {
        buckets.push(UsageBucket {
            hour,
            counts: UsageCounts::default(),
        });
    }
    if let Some(bucket) = buckets.last_mut() {
        bucket.counts.add(code, count.max(0));
    }
    Ok(())
}
