//! Webhooks (issue 17): the endpoints operators register for key events,
//! and the deliveries queued for them in the database.
//!
//! - A write's events (`key.disabled`, `key.leaked`, `key.rotated`) are
//!   queued in the write's own transaction, beside its audit record: the
//!   write and its deliveries commit together, or neither does.
//! - Events of time (`key.expiring`, `key.expired`, `credits.low`) are
//!   found by [`SqlKeyStore::scan_webhook_events`]; each is queued under a
//!   name that makes it one (the key and its expiry or credit period), and
//!   a unique index on (endpoint, name) keeps instances scanning at once
//!   from queuing it twice.
//! - A deliverer claims due deliveries ([`SqlKeyStore::claim_deliveries`]):
//!   a conditional `UPDATE` per row, which one instance wins, with a claim
//!   that lapses if its instance dies; then it records the attempt
//!   ([`SqlKeyStore::delivered`], [`SqlKeyStore::attempt_failed`]). The
//!   HTTP side is the key service's.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use auth_core::ApiKey;
use auth_core::webhook::{EventType, WebhookSecret, rfc3339};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::audit::{Action, Actor, FieldChange};
use crate::{COLUMNS, Error, KeyKind, SqlKeyStore, check_name, is_hidden, millis, secs, time};

/// The most endpoints one database holds.
pub const MAX_WEBHOOKS: usize = 50;
/// The longest endpoint URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// `key.expiring`'s notice, in days: 1 to 365.
pub const EXPIRING_DAYS: std::ops::RangeInclusive<u32> = 1..=365;
/// `key.expiring`'s notice when none is given.
pub const DEFAULT_EXPIRING_DAYS: u32 = 7;
/// `credits.low`'s threshold when none is given.
pub const DEFAULT_CREDITS_BELOW: u64 = 100;
/// The most deliveries one read returns.
pub const MAX_DELIVERY_READ: u32 = 1000;
/// How long finished deliveries are kept (pruned with the change log).
pub const DELIVERIES_KEEP: Duration = Duration::from_secs(30 * 86_400);
/// How far back a scan looks for expiries (and never before the
/// endpoint was made): a key that expired longer ago is old news.
const EXPIRED_LOOKBACK: i64 = 7 * 86_400;
/// Keys read per page of a scan.
const SCAN_BATCH: i64 = 1000;
/// Pages one scan reads per endpoint and event, at most.
const SCAN_PAGES: usize = 100;
/// Deliveries queued per transaction by a scan (the writers' lock is held
/// for each).
const SCAN_CHUNK: usize = 100;
/// What a key has left now, a due refill counted (as a spend counts it;
/// `$4` is now, Unix seconds).
const AVAILABLE: &str = "(CASE WHEN k.credits_refill_amount IS NOT NULL \
     AND $4 >= k.credits_period_start + k.credits_refill_secs \
     THEN k.credits_refill_amount ELSE k.credits_remaining END)";
/// The longest a changed secret is still signed with.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(7 * 86_400);
/// The longest error text a delivery keeps.
const MAX_ERROR_CHARS: usize = 200;

/// A new endpoint's settings (`Debug` shows the URL's origin only: a
/// receiver's URL may carry a token).
#[derive(Clone)]
pub struct NewWebhook {
    /// Where to POST: `http` or `https`, a host, no user info, no fragment,
    /// at most [`MAX_URL_CHARS`].
    pub url: String,
    /// The events it receives: at least one.
    pub events: Vec<EventType>,
    /// `key.expiring`'s notice in days ([`EXPIRING_DAYS`]).
    pub expiring_days: u32,
    /// `credits.low`: when a key's credits fall below this (1 to
    /// [`crate::MAX_CREDITS`]).
    pub credits_below: u64,
    /// A note for operators (at most 200 characters, may be empty).
    pub description: String,
}

impl NewWebhook {
    /// An endpoint for `events` at `url`, with the default notice and
    /// threshold and no description.
    pub fn new(url: impl Into<String>, events: Vec<EventType>) -> Self {
        Self {
            url: url.into(),
            events,
            expiring_days: DEFAULT_EXPIRING_DAYS,
            credits_below: DEFAULT_CREDITS_BELOW,
            description: String::new(),
        }
    }
}

/// An endpoint as operators see it: everything but its secret (`Debug`
/// shows the URL's origin only).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `wh_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The events it receives, in [`EventType::ALL`]'s order.
    pub events: Vec<EventType>,
    /// `key.expiring`'s notice in days.
    pub expiring_days: u32,
    /// `credits.low`'s threshold.
    pub credits_below: u64,
    /// The operators' note.
    pub description: String,
    /// When it was made.
    pub created_at: SystemTime,
}

/// `scheme://host:port` of a URL, for logs and `Debug`: its path and query
/// may carry a token (as chat services' incoming webhooks do).
pub fn url_origin(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "(not a URL)".to_owned(),
        |u| u.origin().ascii_serialization(),
    )
}

impl fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &url_origin(&self.url))
            .field("events", &self.events)
            .field("expiring_days", &self.expiring_days)
            .field("credits_below", &self.credits_below)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &url_origin(&self.url))
            .field("events", &self.events)
            .field("expiring_days", &self.expiring_days)
            .field("credits_below", &self.credits_below)
            .finish_non_exhaustive()
    }
}

/// An endpoint just made: its secret is here once.
#[derive(Debug)]
pub struct CreatedWebhook {
    /// The endpoint.
    pub webhook: Webhook,
    /// Its signing secret (`Debug` redacted).
    pub secret: WebhookSecret,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet accepted: due now or after a backoff.
    Pending,
    /// Accepted by the receiver (a 2xx).
    Delivered,
    /// Its retries ran out.
    Failed,
}

impl DeliveryStatus {
    /// `pending`, `delivered` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// A delivery, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `msg_…`: the `webhook-id` header.
    pub id: String,
    /// The endpoint's id.
    pub webhook_id: String,
    /// The event's name.
    pub event: String,
    /// The body sent.
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: SystemTime,
    /// When the next attempt is due (pending only).
    pub next_at: Option<SystemTime>,
    /// When it was delivered or given up.
    pub done_at: Option<SystemTime>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// What went wrong with the last attempt, if it failed.
    pub last_error: Option<String>,
}

/// A delivery this instance claimed: what it needs to make the attempt.
pub struct Claimed {
    /// `msg_…`.
    pub id: String,
    /// The endpoint's id.
    pub webhook_id: String,
    /// Where to POST.
    pub url: String,
    /// What to sign with: the endpoint's secret and, while a change of
    /// secret is under way, the previous one (one signature each).
    pub secrets: Vec<WebhookSecret>,
    /// When the claim lapses: the attempt must be over by then, or another
    /// instance may make it again.
    pub claimed_until: SystemTime,
    /// The body.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: SystemTime,
}

impl fmt::Debug for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("webhook_id", &self.webhook_id)
            .field("url", &url_origin(&self.url))
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How failed attempts are retried: after `first`, doubling each time up
/// to `max_delay`, until `give_up_after` from when the delivery was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// No attempt is scheduled past this much after the delivery was
    /// queued: it is marked failed instead.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 s, 10 s, 20 s … up to an hour apart, for a day.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }
}

/// A failed attempt: the receiver's status if it answered, and what went
/// wrong (no secret, no body).
#[derive(Clone, Debug)]
pub struct Failure {
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// Short: `status 500`, `timeout`, `connect`…
    pub error: String,
}

/// Checks an endpoint URL: `http` or `https`, a host, no user info (a
/// password would be shown), no fragment, at most [`MAX_URL_CHARS`].
///
/// # Errors
/// [`Error::Invalid`], saying why.
pub fn check_webhook_url(text: &str) -> Result<url::Url, Error> {
    let bad = |why: &str| Error::Invalid(format!("a webhook url {why}"));
    if text.chars().count() > MAX_URL_CHARS {
        return Err(bad(&format!("has at most {MAX_URL_CHARS} characters")));
    }
    if text.chars().any(|c| is_hidden(c) || c.is_whitespace()) {
        return Err(bad("has no spaces or control characters"));
    }
    let url = url::Url::parse(text).map_err(|_| bad("is an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("is an absolute http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("has no user name or password (they would be shown)"));
    }
    if url.fragment().is_some() {
        return Err(bad("has no fragment"));
    }
    Ok(url)
}

fn events_text(events: &[EventType]) -> String {
    EventType::ALL
        .into_iter()
        .filter(|e| events.contains(e))
        .map(EventType::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn events_of(text: &str) -> Vec<EventType> {
    text.split_whitespace()
        .filter_map(|e| e.parse().ok())
        .collect()
}

/// A random id: `prefix` and `hex` hex digits from the OS random source.
fn random_id(prefix: &str, hex: usize) -> Result<String, Error> {
    let random = ApiKey::generate()?;
    Ok(format!("{prefix}_{}", &random.digest().to_hex()[..hex]))
}

fn webhook_of(row: &AnyRow) -> Result<Webhook, sqlx::Error> {
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: events_of(&row.try_get::<String, _>("events")?),
        expiring_days: u32::try_from(row.try_get::<i64, _>("expiring_days")?).unwrap_or(0),
        credits_below: u64::try_from(row.try_get::<i64, _>("credits_below")?).unwrap_or(0),
        description: row.try_get("description")?,
        created_at: time(row.try_get("created_at")?),
    })
}

/// `t + d`, or the far future (a duration too large for the clock never
/// panics).
fn later(t: SystemTime, d: Duration) -> SystemTime {
    // The end of the year 9999: past any time this crate stores, and
    // within every platform's clock.
    const FAR: Duration = Duration::from_secs(253_402_300_799);
    t.checked_add(d)
        .filter(|at| *at < SystemTime::UNIX_EPOCH + FAR)
        .unwrap_or(SystemTime::UNIX_EPOCH + FAR)
}

fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn delivery_of(row: &AnyRow) -> Result<Delivery, sqlx::Error> {
    let status = DeliveryStatus::parse(&row.try_get::<String, _>("status")?);
    Ok(Delivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event: row.try_get("event")?,
        payload: row.try_get("payload")?,
        status,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        created_at: from_millis(row.try_get("created_at")?),
        next_at: (status == DeliveryStatus::Pending)
            .then(|| row.try_get("next_at").map(from_millis))
            .transpose()?,
        done_at: row.try_get::<Option<i64>, _>("done_at")?.map(from_millis),
        last_status: row
            .try_get::<Option<i64>, _>("last_status")?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error")?,
    })
}

const WEBHOOK_COLUMNS: &str =
    "id, url, events, expiring_days, credits_below, description, created_at";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event, payload, status, attempts, created_at, \
     next_at, done_at, last_status, last_error";

/// A key event's body.
fn payload(event: EventType, now: SystemTime, data: Value) -> String {
    json!({"type": event.as_str(), "timestamp": rfc3339(now), "data": data}).to_string()
}

/// `key` or `service`, as the API names kinds.
fn kind_name(kind: &str) -> &'static str {
    if kind == KeyKind::Service.as_str() {
        "service"
    } else {
        "key"
    }
}

/// The SQL of a `credits.low` event's name for key `k` and threshold
/// `below` (an SQL expression), after `credits.low:<id>:`: the credit
/// period's start — once per period — or, when the key's refill leaves it
/// below the threshold anyway, the refill itself (`r<amount>/<secs>`):
/// once until its settings change, not once a period.
fn credits_name(below: &str) -> String {
    format!(
        "(CASE WHEN k.credits_refill_amount IS NOT NULL AND k.credits_refill_amount < {below} \
         THEN 'r' || CAST(k.credits_refill_amount AS TEXT) || '/' \
           || CAST(k.credits_refill_secs AS TEXT) \
         ELSE CAST(COALESCE(k.credits_period_start, k.created_at) AS TEXT) END)"
    )
}

/// An endpoint's fields as the audit trail records them (never its
/// secret).
fn webhook_fields(w: &Webhook) -> Vec<(&'static str, Value)> {
    vec![
        // Its origin and a fingerprint, never the whole URL: its path or
        // query may hold a token, and the trail is kept for ever.
        ("url", json!(url_origin(&w.url))),
        (
            "urlFingerprint",
            json!(auth_core::Digest::of(w.url.as_bytes()).fingerprint()),
        ),
        ("events", json!(events_text(&w.events))),
        ("expiringDays", json!(w.expiring_days)),
        ("creditsBelow", json!(w.credits_below)),
        ("description", json!(w.description)),
    ]
}

impl SqlKeyStore {
    /// Registers an endpoint; its secret is in the answer and nowhere
    /// else it can be read back.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad URL, no events, a notice or threshold
    /// out of range, a bad description, or [`MAX_WEBHOOKS`] already.
    pub async fn create_webhook(&self, new: NewWebhook) -> Result<CreatedWebhook, Error> {
        check_webhook_url(&new.url)?;
        if new.events.is_empty() {
            return Err(Error::Invalid(
                "a webhook receives at least one event".into(),
            ));
        }
        if !EXPIRING_DAYS.contains(&new.expiring_days) {
            return Err(Error::Invalid(format!(
                "expiringDays is {} to {}",
                EXPIRING_DAYS.start(),
                EXPIRING_DAYS.end()
            )));
        }
        if !(1..=crate::MAX_CREDITS).contains(&new.credits_below) {
            return Err(Error::Invalid(format!(
                "creditsBelow is 1 to {}",
                crate::MAX_CREDITS
            )));
        }
        if !new.description.is_empty() {
            check_name("description", &new.description)?;
        }
        let secret = WebhookSecret::generate()
            .map_err(|e| Error::Core(auth_core::Error::Random(e.to_string())))?;
        let webhook = Webhook {
            id: random_id("wh", 16)?,
            url: new.url,
            events: events_of(&events_text(&new.events)),
            expiring_days: new.expiring_days,
            credits_below: new.credits_below,
            description: new.description,
            created_at: time(secs(SystemTime::now())),
        };
        let mut tx = self.begin_write().await?;
        // One statement, the count in its WHERE: no read to upgrade to a
        // write (SQLite), and no two instances past the limit at once.
        let made = sqlx::query(&format!(
            "INSERT INTO auth_webhooks (id, url, events, expiring_days, credits_below, secret, \
             description, created_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
             WHERE (SELECT COUNT(*) FROM auth_webhooks) < {MAX_WEBHOOKS}"
        ))
        .bind(&webhook.id)
        .bind(&webhook.url)
        .bind(events_text(&webhook.events))
        .bind(i64::from(webhook.expiring_days))
        .bind(i64::try_from(webhook.credits_below).unwrap_or(i64::MAX))
        .bind(secret.reveal().as_str())
        .bind(&webhook.description)
        .bind(secs(webhook.created_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if made == 0 {
            tx.rollback().await?;
            return Err(Error::Invalid(format!(
                "at most {MAX_WEBHOOKS} webhooks; delete one first"
            )));
        }
        let changes = webhook_fields(&webhook)
            .into_iter()
            .map(|(name, to)| {
                (
                    name.to_owned(),
                    FieldChange {
                        from: Value::Null,
                        to,
                    },
                )
            })
            .collect();
        self.append(&mut tx, Action::Create, "webhook", &webhook.id, &changes)
            .await?;
        tx.commit().await?;
        Ok(CreatedWebhook { webhook, secret })
    }

    /// Every endpoint, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM auth_webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows.iter().map(webhook_of).collect::<Result<_, _>>()?)
    }

    /// One endpoint.
    pub async fn webhook(&self, id: &str) -> Result<Option<Webhook>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM auth_webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(row.as_ref().map(webhook_of).transpose()?)
    }

    /// Deletes an endpoint and its deliveries (an attempt under way may
    /// still arrive); whether it existed. Recorded in the audit trail.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        // A write first (SQLite: the write lock, which a read could not be
        // upgraded to once another writer committed), then the read.
        sqlx::query("UPDATE auth_webhooks SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM auth_webhooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = row.as_ref().map(webhook_of).transpose()? else {
            tx.rollback().await?;
            return Ok(false);
        };
        sqlx::query("DELETE FROM auth_webhook_deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM auth_webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let changes = webhook_fields(&before)
            .into_iter()
            .map(|(name, from)| {
                (
                    name.to_owned(),
                    FieldChange {
                        from,
                        to: Value::Null,
                    },
                )
            })
            .collect();
        self.append(&mut tx, Action::Delete, "webhook", id, &changes)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives an endpoint a new secret (returned, with when the old one
    /// stops signing: shown once); deliveries are signed with the old one
    /// too, a second signature, for `overlap` (at most
    /// [`MAX_SECRET_OVERLAP`]; 0: the old one no more) — receivers switch
    /// meanwhile. While an earlier change's overlap runs, a change is
    /// refused unless `force` (which ends that overlap: the secret before
    /// stops signing at once). `None` when there is no such endpoint.
    /// Recorded in the audit trail (never the secrets).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an overlap over [`MAX_SECRET_OVERLAP`];
    /// [`Error::Conflict`] while an earlier change's overlap runs.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        overlap: Duration,
        force: bool,
    ) -> Result<Option<(WebhookSecret, SystemTime)>, Error> {
        if overlap > MAX_SECRET_OVERLAP {
            return Err(Error::Invalid(
                "the old secret's overlap is 0 s to 7 days".into(),
            ));
        }
        let secret = WebhookSecret::generate()
            .map_err(|e| Error::Core(auth_core::Error::Random(e.to_string())))?;
        let mut tx = self.begin_write().await?;
        // The row locked (a write first), then read.
        sqlx::query("UPDATE auth_webhooks SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT previous_until FROM auth_webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        // Times from after the lock: what is stored is what is said.
        let now = SystemTime::now();
        if let Some(running) = row.try_get::<Option<i64>, _>("previous_until")? {
            if running > millis(now) && !force {
                tx.rollback().await?;
                return Err(Error::Conflict(format!(
                    "the secret before the last change still signs until {}: change it again \
                     after that, or force (that secret then stops signing at once)",
                    rfc3339(from_millis(running))
                )));
            }
        }
        let until = later(now, overlap);
        let keep = !overlap.is_zero();
        sqlx::query(
            "UPDATE auth_webhooks SET previous_secret = CASE WHEN $4 THEN secret END, \
             previous_until = CASE WHEN $4 THEN $2 END, secret = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(millis(until))
        .bind(secret.reveal().as_str())
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        let changes = BTreeMap::from([(
            "previousSecretUntil".to_owned(),
            FieldChange {
                from: Value::Null,
                to: json!(secs(until)),
            },
        )]);
        self.append(&mut tx, Action::Rotate, "webhook", id, &changes)
            .await?;
        tx.commit().await?;
        Ok(Some((secret, until)))
    }

    /// Deliveries this process marked failed for being overdue (due for
    /// longer than the give-up time without an attempt), since it started.
    pub fn webhook_deliveries_given_up(&self) -> u64 {
        self.inner
            .webhooks_given_up
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deliveries pending in the database (every instance's), as this
    /// process's last [`scan_webhook_events`](Self::scan_webhook_events)
    /// counted them.
    pub fn webhook_deliveries_pending(&self) -> u64 {
        self.inner
            .webhooks_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An endpoint's deliveries, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a limit outside 1 to [`MAX_DELIVERY_READ`].
    pub async fn deliveries(&self, webhook_id: &str, limit: u32) -> Result<Vec<Delivery>, Error> {
        if !(1..=MAX_DELIVERY_READ).contains(&limit) {
            return Err(Error::Invalid(format!(
                "a deliveries read returns 1 to {MAX_DELIVERY_READ}"
            )));
        }
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM auth_webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(webhook_id)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows.iter().map(delivery_of).collect::<Result<_, _>>()?)
    }

    /// Queues, in the write's transaction, the events of the write just
    /// recorded (`key.disabled`, `key.leaked`, `key.rotated`) for every
    /// endpoint that receives them.
    pub(crate) async fn queue_write_events(
        &self,
        tx: &mut sqlx::AnyConnection,
        action: Action,
        kind: KeyKind,
        key_id: &str,
        changes: &BTreeMap<String, FieldChange>,
    ) -> Result<(), Error> {
        let mut events = Vec::new();
        match action {
            Action::Disable => {
                events.push(EventType::KeyDisabled);
                if matches!(*self.actor, Actor::SecretScanner { .. }) {
                    events.push(EventType::KeyLeaked);
                }
            }
            Action::Rotate => events.push(EventType::KeyRotated),
            Action::Create | Action::Update | Action::Delete => {}
        }
        if events.is_empty() {
            return Ok(());
        }
        let endpoints = sqlx::query("SELECT id, events FROM auth_webhooks")
            .fetch_all(&mut *tx)
            .await?;
        let endpoints: Vec<(String, Vec<EventType>)> = endpoints
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    events_of(&r.try_get::<String, _>("events")?),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        if !endpoints
            .iter()
            .any(|(_, wants)| events.iter().any(|e| wants.contains(e)))
        {
            return Ok(());
        }
        // The row as the write left it: its end and disable time (a
        // rotation keeps an expiry already earlier than the overlap's end,
        // which the changes then do not show).
        let row = sqlx::query(
            "SELECT owner, expires_at, disabled_at FROM auth_keys WHERE id = $1 AND kind = $2",
        )
        .bind(key_id)
        .bind(kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let (owner, expires_at, disabled_at) = match &row {
            Some(r) => (
                r.try_get::<String, _>("owner")?,
                r.try_get::<Option<i64>, _>("expires_at")?,
                r.try_get::<Option<i64>, _>("disabled_at")?,
            ),
            None => (String::new(), None, None),
        };
        let when = |at: Option<i64>| at.map_or(Value::Null, |s| json!(rfc3339(time(s))));
        let now = SystemTime::now();
        for event in events {
            let mut data = json!({
                "id": key_id,
                "kind": kind_name(kind.as_str()),
                "owner": owner,
                "actor": self.actor.to_string(),
            });
            match event {
                EventType::KeyDisabled | EventType::KeyLeaked => {
                    data["disabledAt"] = when(disabled_at);
                    if event == EventType::KeyLeaked {
                        data["url"] = json!(self.actor.source().unwrap_or_default());
                    }
                }
                EventType::KeyRotated => {
                    data["replacedBy"] = changes
                        .get("replacedBy")
                        .map_or(Value::Null, |c| c.to.clone());
                    data["endsAt"] = when(expires_at);
                }
                _ => {}
            }
            let body = payload(event, now, data);
            for (webhook_id, wants) in &endpoints {
                if wants.contains(&event) {
                    let id = random_id("msg", 32)?;
                    let row = Queued {
                        id: &id,
                        webhook_id,
                        event,
                        dedupe: &id,
                        body: &body,
                        key_id,
                        keep_until: 0,
                    };
                    queue(&mut *tx, &row, now).await?;
                }
            }
        }
        Ok(())
    }

    /// Queues the events of time due at `now` — `key.expiring` (within
    /// each endpoint's notice), `key.expired` (in the last 7 days, after
    /// the endpoint was made), `credits.low` (below each endpoint's
    /// threshold, a due refill counted; never for a key expired or
    /// rotated away) — each once per key and expiry or credit period,
    /// however many instances scan. Keys disabled are left out. Returns
    /// how many deliveries it queued.
    pub async fn scan_webhook_events(&self, now: SystemTime) -> Result<usize, Error> {
        let mut queued = 0;
        // What waits, for the metrics (one count a scan).
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM auth_webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.inner.pool)
        .await?
        .try_get("n")?;
        self.inner.webhooks_pending.store(
            u64::try_from(pending).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        for webhook in self.webhooks().await? {
            for event in webhook.events.iter().copied() {
                if matches!(
                    event,
                    EventType::KeyExpiring | EventType::KeyExpired | EventType::CreditsLow
                ) {
                    queued += self.scan_one(&webhook, event, now).await?;
                }
            }
        }
        Ok(queued)
    }

    /// One endpoint's events of one kind: keys read in pages (in id
    /// order, from after the last one read: a page the scan then leaves
    /// out never hides the keys after it), at most [`SCAN_PAGES`] pages.
    async fn scan_one(
        &self,
        webhook: &Webhook,
        event: EventType,
        now: SystemTime,
    ) -> Result<usize, Error> {
        let at = secs(now);
        // $2 and $3 bound the keys; `$4` is now.
        let (sql, lower, upper) = match event {
            EventType::KeyExpiring => (
                "k.expires_at > $2 AND k.expires_at <= $3".to_owned(),
                at,
                at.saturating_add(i64::from(webhook.expiring_days) * 86_400),
            ),
            EventType::KeyExpired => (
                "k.expires_at > $2 AND k.expires_at <= $3".to_owned(),
                (at - EXPIRED_LOOKBACK).max(secs(webhook.created_at)),
                at,
            ),
            _ => (
                // What is left now, a due refill counted (as a spend
                // counts it); not a key past its expiry, nor one a
                // rotation moved the credits away from.
                format!(
                    "k.credits_remaining IS NOT NULL AND $2 = 0 AND {AVAILABLE} < $3 \
                     AND (k.expires_at IS NULL OR k.expires_at > $4) \
                     AND NOT EXISTS (SELECT 1 FROM auth_audit a WHERE a.key_id = k.id \
                       AND a.action = 'rotate' AND a.resource IN ('key', 'service'))"
                ),
                0,
                i64::try_from(webhook.credits_below).unwrap_or(i64::MAX),
            ),
        };
        // The name that makes the event one, built in SQL so that keys
        // already queued are left out before they are read.
        let name = match event {
            EventType::CreditsLow => credits_name("$3"),
            _ => "CAST(k.expires_at AS TEXT)".to_owned(),
        };
        let query = format!(
            "SELECT {COLUMNS}, kind, '{event}:' || k.id || ':' || {name} AS dedupe \
             FROM auth_keys k WHERE k.disabled_at IS NULL AND {sql} AND k.id > $5 \
             AND NOT EXISTS (SELECT 1 FROM auth_webhook_deliveries d \
               WHERE d.webhook_id = $1 AND d.dedupe = '{event}:' || k.id || ':' || {name}) \
             ORDER BY k.id LIMIT {SCAN_BATCH}",
            event = event.as_str(),
        );
        let mut queued = 0;
        let mut after = String::new();
        for _ in 0..SCAN_PAGES {
            let rows = sqlx::query(&query)
                .bind(&webhook.id)
                .bind(lower)
                .bind(upper)
                .bind(at)
                .bind(&after)
                .fetch_all(&self.inner.pool)
                .await?;
            let full = rows.len() == usize::try_from(SCAN_BATCH).unwrap_or(usize::MAX);
            let mut found = Vec::new();
            for row in &rows {
                let id: String = row.try_get("id")?;
                after.clone_from(&id);
                // A row that does not read is skipped, not the scan.
                match scanned(event, row, webhook, now) {
                    Ok(Some(one)) => found.push((one, row.try_get::<String, _>("dedupe")?)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(target: "auth_sqlx", key_id = %id, error = %e,
                        "a key's row could not be read for webhook events"),
                }
            }
            // Under the writers' lock, as `delete_webhook`, in short
            // transactions (admin writes wait for none long): each insert
            // only while its endpoint exists, so no delivery outlives it.
            for chunk in found.chunks(SCAN_CHUNK) {
                let mut tx = self.begin_write().await?;
                for (one, dedupe) in chunk {
                    let id = random_id("msg", 32)?;
                    let body = payload(event, now, one.data.clone());
                    let row = Queued {
                        id: &id,
                        webhook_id: &webhook.id,
                        event,
                        dedupe,
                        body: &body,
                        key_id: &one.key_id,
                        keep_until: millis(one.keep_until),
                    };
                    queued += queue(&mut tx, &row, now).await?;
                }
                tx.commit().await?;
            }
            if !full {
                break;
            }
        }
        Ok(queued)
    }

    /// Claims up to `limit` due deliveries for `worker`, each until `claim`
    /// after its own claim is taken: each by a conditional `UPDATE` that
    /// one instance wins (a claim that lapsed — its instance died
    /// mid-attempt — is taken over). The attempt must be over by
    /// [`Claimed::claimed_until`], or another instance may make it again.
    /// First, deliveries past `policy`'s `give_up_after` that no claim
    /// holds are marked failed (whether attempted or not: a deliverer that
    /// was down for days sends no stale events).
    pub async fn claim_deliveries(
        &self,
        worker: &str,
        now: SystemTime,
        claim: Duration,
        limit: u32,
        policy: RetryPolicy,
    ) -> Result<Vec<Claimed>, Error> {
        // Times from `now`, moved on by what this call has waited (for
        // connections, for statements) when each claim is taken.
        let started = std::time::Instant::now();
        let at = millis(now);
        let oldest = now.checked_sub(policy.give_up_after).map_or(0, millis);
        // Read first: a write per poll (SQLite's one writer) only when
        // there is something to give up.
        // Due before `give_up_after` ago and still pending: no attempt was
        // made when due (a retry scheduled within the time is left be).
        const OVERDUE: &str = "status = 'pending' AND next_at < $2 \
             AND (claimed_until IS NULL OR claimed_until <= $1)";
        let overdue = sqlx::query(&format!(
            "SELECT id FROM auth_webhook_deliveries WHERE {OVERDUE} LIMIT 1"
        ))
        .bind(at)
        .bind(oldest)
        .fetch_optional(&self.inner.pool)
        .await?;
        if overdue.is_some() {
            let failed = sqlx::query(&format!(
                "UPDATE auth_webhook_deliveries SET status = 'failed', done_at = $1, \
                 last_error = COALESCE(last_error || '; ', '') || 'given up: not attempted in time', \
                 claimed_by = NULL, \
                 claimed_until = NULL WHERE {OVERDUE}"
            ))
            .bind(at)
            .bind(oldest)
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
            self.inner
                .webhooks_given_up
                .fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        }
        let due = sqlx::query(
            "SELECT id FROM auth_webhook_deliveries WHERE status = 'pending' AND next_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY next_at, id LIMIT $2",
        )
        .bind(at)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in due {
            let id: String = row.try_get("id")?;
            // The claim's time from now, each (the statements before this
            // one may have waited for a connection).
            let taken = later(now, started.elapsed());
            let until = later(taken, claim);
            let won = sqlx::query(
                "UPDATE auth_webhook_deliveries SET claimed_by = $2, claimed_until = $3 \
                 WHERE id = $1 AND status = 'pending' AND next_at <= $4 \
                 AND (claimed_until IS NULL OR claimed_until <= $4)",
            )
            .bind(&id)
            .bind(worker)
            .bind(millis(until))
            .bind(millis(taken))
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
            if won == 0 {
                continue; // another instance's
            }
            let row = sqlx::query(
                "SELECT d.id, d.webhook_id, d.payload, d.attempts, d.created_at, w.url, w.secret, \
                 w.previous_secret, w.previous_until \
                 FROM auth_webhook_deliveries d JOIN auth_webhooks w ON w.id = d.webhook_id \
                 WHERE d.id = $1 AND d.claimed_by = $2",
            )
            .bind(&id)
            .bind(worker)
            .fetch_optional(&self.inner.pool)
            .await?;
            let Some(row) = row else {
                // No endpoint (a delivery left by an older version): gone,
                // rather than claimed again and again ahead of real ones.
                sqlx::query(
                    "DELETE FROM auth_webhook_deliveries WHERE id = $1 AND claimed_by = $2",
                )
                .bind(&id)
                .bind(worker)
                .execute(&self.inner.pool)
                .await?;
                continue;
            };
            let Ok(secret) = WebhookSecret::parse(&row.try_get::<String, _>("secret")?) else {
                tracing::error!(target: "auth_sqlx", delivery = %id,
                    "a webhook's stored secret does not parse: the delivery is failed");
                sqlx::query(
                    "UPDATE auth_webhook_deliveries SET status = 'failed', done_at = $3, \
                     last_error = 'the endpoint''s secret does not parse', claimed_by = NULL, \
                     claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
                )
                .bind(&id)
                .bind(worker)
                .bind(millis(taken))
                .execute(&self.inner.pool)
                .await?;
                continue;
            };
            let mut secrets = vec![secret];
            let previous: Option<String> = row.try_get("previous_secret")?;
            let previous_until: Option<i64> = row.try_get("previous_until")?;
            if let (Some(text), Some(until)) = (previous, previous_until) {
                if until > millis(taken) {
                    secrets.extend(WebhookSecret::parse(&text).ok());
                }
            }
            claimed.push(Claimed {
                id: row.try_get("id")?,
                webhook_id: row.try_get("webhook_id")?,
                url: row.try_get("url")?,
                secrets,
                claimed_until: until,
                payload: row.try_get("payload")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                created_at: from_millis(row.try_get("created_at")?),
            });
        }
        Ok(claimed)
    }

    /// Records a delivery `worker` made, answered `status` (2xx); whether
    /// the claim was still its own (if not, it lapsed and another instance
    /// may have delivered it too, or the endpoint was deleted).
    pub async fn delivered(
        &self,
        id: &str,
        worker: &str,
        status: u16,
        now: SystemTime,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE auth_webhook_deliveries SET status = 'delivered', attempts = attempts + 1, \
             last_status = $3, last_error = NULL, done_at = $4, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $1 AND claimed_by = $2 AND status = 'pending'",
        )
        .bind(id)
        .bind(worker)
        .bind(i64::from(status))
        .bind(millis(now))
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// Records a failed attempt: the next one after `policy`'s backoff, or
    /// the delivery failed when that would be past its `give_up_after`.
    /// `None` when the claim was no longer `worker`'s.
    pub async fn attempt_failed(
        &self,
        claimed: &Claimed,
        worker: &str,
        failure: &Failure,
        now: SystemTime,
        policy: RetryPolicy,
    ) -> Result<Option<DeliveryStatus>, Error> {
        let failures = claimed.attempts.saturating_add(1);
        let next = later(now, policy.delay(failures));
        let give_up = later(claimed.created_at, policy.give_up_after);
        let status = if next > give_up {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Pending
        };
        let error: String = failure
            .error
            .chars()
            .filter(|c| !is_hidden(*c))
            .take(MAX_ERROR_CHARS)
            .collect();
        let done = sqlx::query(
            "UPDATE auth_webhook_deliveries SET status = $3, attempts = $4, next_at = $5, \
             done_at = $6, last_status = $7, last_error = $8, claimed_by = NULL, \
             claimed_until = NULL WHERE id = $1 AND claimed_by = $2 AND status = 'pending'",
        )
        .bind(&claimed.id)
        .bind(worker)
        .bind(status.as_str())
        .bind(i64::from(failures))
        .bind(millis(next))
        .bind((status == DeliveryStatus::Failed).then(|| millis(now)))
        .bind(failure.status.map(i64::from))
        .bind(error)
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        Ok((done > 0).then_some(status))
    }

    /// Deletes deliveries finished more than [`DELIVERIES_KEEP`] before
    /// `now` whose name no longer needs keeping (past `keep_until`, their
    /// key gone, or — `credits.low` — no longer the key's current name);
    /// how many. Also forgets secrets past their overlap.
    pub async fn prune_deliveries(&self, now: SystemTime) -> Result<u64, Error> {
        let before = now.checked_sub(DELIVERIES_KEEP).map_or(0, millis);
        // A `credits.low` whose name is no longer the key's current one
        // (its period passed, its refill changed) cannot come back.
        let current = credits_name("w.credits_below");
        let done = sqlx::query(&format!(
            "DELETE FROM auth_webhook_deliveries WHERE status <> 'pending' AND done_at < $1 \
             AND (keep_until < $2 OR auth_webhook_deliveries.key_id IS NULL \
               OR NOT EXISTS (SELECT 1 FROM auth_keys k \
                 WHERE k.id = auth_webhook_deliveries.key_id) \
               OR (auth_webhook_deliveries.event = 'credits.low' AND NOT EXISTS ( \
                 SELECT 1 FROM auth_keys k JOIN auth_webhooks w \
                   ON w.id = auth_webhook_deliveries.webhook_id \
                 WHERE k.id = auth_webhook_deliveries.key_id \
                   AND auth_webhook_deliveries.dedupe = 'credits.low:' || k.id || ':' || {current})))"
        ))
        .bind(before)
        .bind(millis(now))
        .execute(&self.inner.pool)
        .await?;
        // Secrets past their overlap: gone from the database too.
        sqlx::query(
            "UPDATE auth_webhooks SET previous_secret = NULL, previous_until = NULL \
             WHERE previous_until <= $1",
        )
        .bind(millis(now))
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A delivery to queue.
struct Queued<'a> {
    id: &'a str,
    webhook_id: &'a str,
    event: EventType,
    dedupe: &'a str,
    body: &'a str,
    key_id: &'a str,
    /// Unix milliseconds.
    keep_until: i64,
}

/// Inserts a delivery unless the endpoint has one of the same name, or
/// is gone; whether it did. Callers hold the writers' lock.
async fn queue(
    conn: &mut sqlx::AnyConnection,
    q: &Queued<'_>,
    now: SystemTime,
) -> Result<usize, Error> {
    let done = sqlx::query(
        "INSERT INTO auth_webhook_deliveries (id, webhook_id, event, dedupe, payload, key_id, \
         keep_until, status, attempts, created_at, next_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8 \
         WHERE EXISTS (SELECT 1 FROM auth_webhooks WHERE id = $2) \
         ON CONFLICT (webhook_id, dedupe) DO NOTHING",
    )
    .bind(q.id)
    .bind(q.webhook_id)
    .bind(q.event.as_str())
    .bind(q.dedupe)
    .bind(q.body)
    .bind(q.key_id)
    .bind(q.keep_until)
    .bind(millis(now))
    .execute(conn)
    .await?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(0))
}

/// A scanned event: its data, its key, how long its name is kept.
struct Scanned {
    data: Value,
    key_id: String,
    keep_until: SystemTime,
}

/// The event a scanned row makes, or `None` when it does not qualify
/// after all.
fn scanned(
    event: EventType,
    row: &AnyRow,
    webhook: &Webhook,
    now: SystemTime,
) -> Result<Option<Scanned>, Error> {
    let info = crate::info(row)?;
    let kind: String = row.try_get("kind")?;
    let mut data = json!({"id": info.id, "kind": kind_name(&kind), "owner": info.owner});
    // Past it, the event cannot come back: an expiry is out of both
    // windows 7 days after it; credits are low until their next refill.
    let keep_until = match event {
        EventType::KeyExpiring | EventType::KeyExpired => {
            let Some(expires) = info.expires_at else {
                return Ok(None);
            };
            data["expiresAt"] = json!(rfc3339(expires));
            if event == EventType::KeyExpiring {
                data["noticeDays"] = json!(webhook.expiring_days);
            }
            later(expires, Duration::from_secs(8 * 86_400))
        }
        EventType::CreditsLow => {
            let Some(credits) = info.credits else {
                return Ok(None);
            };
            let remaining = credits.remaining_at(now);
            if remaining >= webhook.credits_below {
                return Ok(None);
            }
            let next = credits.next_refill_at(now);
            data["remaining"] = json!(remaining);
            data["threshold"] = json!(webhook.credits_below);
            data["nextRefillAt"] = next.map_or(Value::Null, |t| json!(rfc3339(t)));
            // A refill that lifts the key over the threshold ends the
            // period's lowness: kept until it is due. Without one — or
            // with one that leaves the key low, whose stored period only
            // moves on at a spend — the same name could come back at any
            // time: kept while the key is (a deleted key's rows go).
            match (credits.refill, next) {
                (Some(r), Some(at)) if r.amount >= webhook.credits_below => at,
                _ => later(now, Duration::MAX),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(Scanned {
        data,
        key_id: info.id,
        keep_until,
    }))
}
