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

/// Counts waiting to be written, by key digest and hour. Keyed by the
/// digest's bytes, all of them hashed: reported digests are the sender's
/// choice, and `Digest`'s own hash (its first 8 bytes, made for digests
/// this process computed) would let a report pile thousands into one
/// bucket.
pub(crate) type Pending = HashMap<([u8; 32], i64), UsageCounts>;

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
        self.counts.by_code().iter().fold(0u64, |sum, (_, n)| {
            sum.saturating_add(n.max(&0).unsigned_abs())
        })
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
fn merge(pending: &mut Pending, digest: [u8; 32], hour: i64, counts: &UsageCounts) -> bool {
    if !pending.contains_key(&(digest, hour)) && pending.len() >= MAX_PENDING_USAGE {
        return false;
    }
    let entry = pending.entry((digest, hour)).or_default();
    for (code, n) in counts.by_code() {
        entry.add(code, n);
    }
    true
}

/// Counts waiting to be written: the service's own decisions and what
/// services reported, each bounded on its own (reports, however many,
/// never crowd out the service's own counts), and the decisions dropped.
#[derive(Default)]
pub(crate) struct PendingUsage {
    own: Pending,
    reported: Pending,
    dropped: u64,
}

/// A stored count never goes past this (a sum that would is left as it
/// is); one flush adds at most `MAX_DELTA` to it.
const MAX_STORED: i64 = 1_000_000_000_000_000_000;
const MAX_DELTA: i64 = 1_000_000_000_000_000;

fn decisions(counts: &UsageCounts) -> u64 {
    counts
        .by_code()
        .iter()
        .fold(0u64, |sum, (_, n)| sum.saturating_add(n.unsigned_abs()))
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
        let mut pending = self.inner.usage.lock();
        let added = merge(&mut pending.own, *digest.as_bytes(), hour_of(at), &counts);
        if !added {
            pending.dropped += 1;
        }
        added
    }

    /// Adds a service's report — entries of (digest, hour start in Unix
    /// seconds, counts), ranges checked by the caller — whole, or none of
    /// it when the reports' pending counts have no room for all (so that a
    /// report refused for want of room can be sent again without counting
    /// twice): whether added. Entries without counts take no room.
    pub fn add_usage(&self, entries: &[(Digest, i64, UsageCounts)]) -> bool {
        let mut pending = self.inner.usage.lock();
        let pending = &mut *pending;
        let mut new = std::collections::HashSet::new();
        for (digest, hour, counts) in entries {
            let key = (*digest.as_bytes(), *hour);
            if !counts.is_empty() && !pending.reported.contains_key(&key) {
                new.insert(key);
            }
        }
        if pending.reported.len().saturating_add(new.len()) > MAX_PENDING_USAGE {
            let lost = entries.iter().map(|(_, _, c)| decisions(c));
            pending.dropped = pending.dropped.saturating_add(lost.sum());
            return false;
        }
        for (digest, hour, counts) in entries.iter().filter(|(_, _, c)| !c.is_empty()) {
            merge(&mut pending.reported, *digest.as_bytes(), *hour, counts);
        }
        true
    }

    /// Key-hours waiting to be written (the service's own and reported).
    pub fn pending_usage(&self) -> usize {
        let pending = self.inner.usage.lock();
        pending.own.len() + pending.reported.len()
    }

    /// Decisions not counted since the start: too many waiting to be
    /// written (when counted or reported, or put back after a failed
    /// write).
    pub fn usage_dropped(&self) -> u64 {
        self.inner.usage.lock().dropped
    }

    /// Writes the pending counts: one statement per 1,000 key-hour-codes,
    /// adding to what is stored (digests resolved to ids in the
    /// statement; those of no key dropped), in one transaction. The number
    /// of key-hours written.
    ///
    /// The write runs in a task of its own, one at a time per process: a
    /// caller that goes away (an HTTP client hanging up on a read that
    /// flushes first) cannot cut it short, and a flush waits for the one
    /// under way — so a read after it sees everything counted before it.
    /// On a failure the counts go back to be written by the next flush
    /// (as room allows; what does not fit is dropped and counted). A
    /// commit whose answer is lost (the connection cut after PostgreSQL
    /// committed) counts that batch twice: the one case.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let store = self.clone();
        tokio::spawn(async move { store.write_usage().await })
            .await
            .unwrap_or_else(|_| Err(Error::Invalid("the usage flush stopped".into())))
    }

    async fn write_usage(&self) -> Result<usize, Error> {
        let _one_at_a_time = self.inner.usage_flush.lock().await;
        let mut batch = {
            let mut pending = self.inner.usage.lock();
            let mut batch = std::mem::take(&mut pending.own);
            for ((digest, hour), counts) in std::mem::take(&mut pending.reported) {
                let entry = batch.entry((digest, hour)).or_default();
                for (code, n) in counts.by_code() {
                    entry.add(code, n);
                }
            }
            batch
        };
        batch.retain(|_, counts| !counts.is_empty());
        if batch.is_empty() {
            return Ok(0);
        }
        match self.write_batch(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                self.restore_usage(batch);
                Err(e)
            }
        }
    }

    /// One transaction; rows in (digest, hour, code) order, so that
    /// instances flushing the same key-hours lock them in the same order
    /// (never a deadlock). Rows are made a statement's worth at a time.
    async fn write_batch(&self, batch: &Pending) -> Result<(), Error> {
        let mut keys: Vec<([u8; 32], i64)> = batch.keys().copied().collect();
        keys.sort_unstable();
        let mut tx = self.inner.pool.begin().await?;
        let mut rows: Vec<NewRow> = Vec::with_capacity(ROWS_PER_STATEMENT);
        for key in &keys {
            let hex = Digest::from_bytes(key.0).to_hex();
            for (code, n) in batch[key].by_code() {
                if n != 0 {
                    rows.push((
                        hex.clone(),
                        key.1,
                        code.as_str(),
                        n.clamp(-MAX_DELTA, MAX_DELTA),
                    ));
                }
            }
            // Room for one more key-hour's six codes.
            if rows.len() + 6 > ROWS_PER_STATEMENT {
                write_rows(&mut tx, &rows).await?;
                rows.clear();
            }
        }
        if !rows.is_empty() {
            write_rows(&mut tx, &rows).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Puts counts that could not be written back with the service's own
    /// pending ones; what does not fit is dropped, and counted.
    fn restore_usage(&self, unwritten: Pending) {
        let mut pending = self.inner.usage.lock();
        let mut dropped = 0u64;
        for ((digest, hour), counts) in unwritten {
            if !merge(&mut pending.own, digest, hour, &counts) {
                dropped = dropped.saturating_add(decisions(&counts));
            }
        }
        if dropped > 0 {
            pending.dropped = pending.dropped.saturating_add(dropped);
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

/// A row to add: digest (hex), hour, code, count.
type NewRow = (String, i64, &'static str, i64);

/// One statement adding `rows` (ordered) to what is stored.
async fn write_rows(tx: &mut sqlx::AnyConnection, rows: &[NewRow]) -> Result<(), Error> {
    let values: Vec<String> = (0..rows.len())
        .map(|i| {
            let p = 4 * i + 3;
            format!("(${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
        })
        .collect();
    // `WHERE true`: SQLite reads an `ON` after a join as the join's
    // otherwise. A sum past `MAX_STORED` stays as it is (never an overflow
    // that would fail every later flush).
    let sql = format!(
        "INSERT INTO auth_key_usage (key_id, hour, code, count) \
         SELECT k.id, v.column2, v.column3, v.column4 \
         FROM (VALUES {}) AS v JOIN auth_keys k ON k.digest = v.column1 AND k.kind = $1 \
         WHERE true ORDER BY v.column1, v.column2, v.column3 \
         ON CONFLICT (key_id, hour, code) DO UPDATE SET count = CASE \
         WHEN auth_key_usage.count > $2 THEN auth_key_usage.count \
         ELSE auth_key_usage.count + excluded.count END",
        values.join(", ")
    );
    let mut q = sqlx::query(&sql)
        .bind(KeyKind::Client.as_str())
        .bind(MAX_STORED);
    for (digest, hour, code, n) in rows {
        q = q.bind(digest).bind(*hour).bind(*code).bind(*n);
    }
    q.execute(tx).await?;
    Ok(())
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
