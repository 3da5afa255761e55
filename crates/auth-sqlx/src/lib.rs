#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "A KeyStore on SQLite and PostgreSQL.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::cache::Cache;
use auth_core::{
    Answer, ApiKey, ApiKeyFormat, Cached, Digest, KeyRecord, KeyStore, Lookup, Principal,
    RateLimitPolicy, StoreError, Verifier, VerifyError,
};
use parking_lot::Mutex;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

mod audit;
#[cfg(feature = "testing")]
pub mod testing;
mod usage;
mod webhooks;

pub use audit::{
    Action, Actor, AuditFilter, AuditRecord, FieldChange, MAX_AUDIT_READ, MAX_SOURCE_CHARS,
};
pub use usage::{KeyUsage, MAX_PENDING_USAGE, USAGE_KEEPS, UsageBucket, hour_of};
pub use webhooks::{
    Claimed, CreatedWebhook, DEFAULT_CREDITS_BELOW, DEFAULT_EXPIRING_DAYS, DELIVERIES_KEEP,
    Delivery, DeliveryStatus, EXPIRING_DAYS, Failure, MAX_DELIVERY_READ, MAX_SECRET_OVERLAP,
    MAX_URL_CHARS, MAX_WEBHOOKS, NewWebhook, RetryPolicy, Webhook, check_webhook_url, url_origin,
};

/// The PostgreSQL channel writes are announced on (a wake-up: what changed
/// is read from the change log).
pub const CHANNEL: &str = "auth_keys";

/// The PostgreSQL advisory lock every write holds until it commits: one
/// writer at a time, so the change log's order is the commit order.
const WRITE_LOCK: i64 = 0x6175_7468_6b65_7973; // "authkeys"

/// How often the log is read without a wake-up: SQLite has no
/// notifications (another process's write is seen within this), and on
/// PostgreSQL it bounds the delay when a notification is lost.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// How long the change log keeps a change (a service reconnecting after a
/// longer partition gets a reset instead of a replay).
pub const LOG_KEEPS: Duration = Duration::from_secs(24 * 3600);

/// What can go wrong in the store's own operations. Lookups made for
/// verification never fail this way: their failures are
/// [`StoreError`]s, which the guard answers with 503.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database could not be reached or refused the statement.
    #[error("auth-sqlx database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations failed.
    #[error("auth-sqlx migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A value given to an admin operation is not acceptable; the message
    /// says which and why.
    #[error("auth-sqlx: {0}")]
    Invalid(String),
    /// A key could not be generated (the OS random source failed).
    #[error("auth-sqlx: {0}")]
    Core(#[from] auth_core::Error),
    /// The write conflicts with the state it would change (a webhook
    /// secret's change while an earlier one's overlap runs); the message
    /// says how to go on.
    #[error("auth-sqlx: {0}")]
    Conflict(String),
}

/// A change other processes' caches must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key with this digest changed (disabled, deleted, rescoped…).
    Key(Digest),
    /// Anything may have changed (notifications may have been missed).
    All,
}

/// A cache's hook into the store's changes.
type Invalidator = Box<dyn Fn(Change) + Send + Sync>;

/// A change read from the change log, in commit order (see
/// [`SqlKeyStore::logged`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    /// The key with this digest changed; `seq` is its place in the log.
    Key {
        /// The change's sequence number.
        seq: u64,
        /// The changed key's digest.
        digest: Digest,
    },
    /// Changes up to `seq` could not be read one by one (they were pruned
    /// before this process read them): anything may have changed.
    Reset {
        /// The log's position after the gap.
        seq: u64,
    },
}

/// Which database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one machine; writes through the store invalidate directly.
    Sqlite,
    /// PostgreSQL: many machines; writes are announced with `NOTIFY`.
    Postgres,
}

/// Which kind of credential a row is. A boundary, not a naming convention:
/// every query names its kind, so a service credential is never found as a
/// client key and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// An API client's key (`sk_live_…`): validated for services.
    Client,
    /// A service's own credential (`sk_svc_…`): may call the key service's
    /// validate endpoint (and its changes stream), nothing else.
    Service,
}

impl KeyKind {
    /// The value of the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Service => "service",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Self::Client => "key",
            Self::Service => "svc",
        }
    }
}

/// The scope service credentials used to carry before they were a kind of
/// their own; a client key may not be given it.
pub const VALIDATE_SCOPE: &str = "keys:validate";

/// The longest a key may live: expiries further out are refused.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The longest overlap of a rotation.
pub const MAX_OVERLAP: Duration = Duration::from_secs(365 * 86_400);
/// The longest rate-limit window.
pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);
/// The longest owner or service name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The most credits a key may hold, or be refilled to.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;
/// The shortest refill interval.
pub const MIN_REFILL_EVERY: Duration = Duration::from_secs(60);
/// The longest refill interval.
pub const MAX_REFILL_EVERY: Duration = Duration::from_secs(366 * 86_400);

/// The label a client key's record — and so the principal verified from
/// it, cached with it — carries (value `limited`) when the key has usage
/// credits: the caller spends them with [`SqlKeyStore::spend`]. A principal
/// without it has no credit limit, and costs no spend.
pub const CREDITS_LABEL: &str = "auth_sqlx.credits";

/// A refill: every `every` after the period's start, a key's remaining
/// credits are *set* to `amount` (not added to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    /// What remaining is set to: 1 to [`MAX_CREDITS`].
    pub amount: u64,
    /// The interval: [`MIN_REFILL_EVERY`] to [`MAX_REFILL_EVERY`], whole
    /// seconds.
    pub every: Duration,
}

/// Usage credits to give a key: each validation spends some
/// ([`SqlKeyStore::spend`]); none left, the key is refused until its next
/// refill, if it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credits {
    /// Credits to start with: 0 to [`MAX_CREDITS`].
    pub remaining: u64,
    /// Its refill, if any.
    pub refill: Option<Refill>,
}

/// A key's credits as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCredits {
    /// Credits left at the last spend or refill: see
    /// [`remaining_at`](Self::remaining_at) for now.
    pub remaining: u64,
    /// Its refill, if any.
    pub refill: Option<Refill>,
    /// When the current refill period started: when the credits were set,
    /// advanced by whole intervals at each refill.
    pub period_start: SystemTime,
}

impl KeyCredits {
    /// Credits left at `now`, with a refill due by then applied.
    pub fn remaining_at(&self, now: SystemTime) -> u64 {
        match self.refill {
            Some(r) if periods(secs(self.period_start), every_secs(r), secs(now)) > 0 => r.amount,
            _ => self.remaining,
        }
    }

    /// When the first refill after `now` comes, if the key has a refill.
    pub fn next_refill_at(&self, now: SystemTime) -> Option<SystemTime> {
        let r = self.refill?;
        Some(time(next_refill(
            secs(self.period_start),
            every_secs(r),
            secs(now),
        )))
    }
}

/// What a [`SqlKeyStore::spend`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// The key has no credit limit: nothing spent.
    Unlimited,
    /// The key is no longer valid — deleted, disabled or expired since the
    /// caller's cache said it was: nothing spent, and the answer is this
    /// refusal (a spend is a look at the live row: it fails closed).
    Refused(VerifyError),
    /// Spent; this many are left.
    Spent {
        /// Credits left after this spend.
        remaining: u64,
    },
    /// Not enough credits: nothing spent.
    Exceeded {
        /// Until the key's next refill; `None` when it has no refill, or
        /// when its refill amount is below the cost (waiting would not help).
        retry_after: Option<Duration>,
    },
}

/// How long a lease lasts: its credits may be spent, and what is left
/// returned ([`SqlKeyStore::return_lease`]), until this long after the
/// grant. After it, what was not returned is lost to the key (never
/// gained by anyone).
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// A lease takes at most this share of what a key has left after the
/// request's own cost: `1 / LEASE_SHARE` (a tenth), so that one service
/// never holds most of a key's credits.
pub const LEASE_SHARE: u64 = 10;

/// The most credits a service may ask to lease at once (the protocol's
/// `MAX_LEASE`).
pub const MAX_LEASE: u32 = 10_000;

/// What a [`SqlKeyStore::lease`] did: a [`Spend`] of the request's cost
/// and, when the key has enough, a lease on top. Its `Debug` never shows a
/// lease's id (with it, a caller of the return route could give back
/// credits that the holder is still spending).
#[derive(Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// The key has no credit limit: nothing spent, no lease.
    Unlimited,
    /// The key is no longer valid: nothing spent, no lease (see
    /// [`Spend::Refused`]).
    Refused(VerifyError),
    /// The request's cost was spent, and maybe a lease taken.
    Leased {
        /// The key's credits left after the cost and the lease.
        remaining: u64,
        /// The lease: its id and its credits; `None` when the key had too
        /// little for one (less than [`LEASE_SHARE`] after the cost).
        lease: Option<(String, u64)>,
        /// How long the lease lasts: [`LEASE_TTL`], or less when the key's
        /// next refill comes sooner (leased credits belong to their period:
        /// never spent in the next).
        ttl: Duration,
    },
    /// Not enough credits for the cost: nothing spent, no lease.
    Exceeded {
        /// As in [`Spend::Exceeded`].
        retry_after: Option<Duration>,
    },
}

impl fmt::Debug for LeaseGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlimited => f.write_str("Unlimited"),
            Self::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            Self::Leased {
                remaining,
                lease,
                ttl,
            } => f
                .debug_struct("Leased")
                .field("remaining", remaining)
                .field("ttl", ttl)
                .field(
                    "lease",
                    &lease.as_ref().map(|(_, credits)| ("<redacted>", credits)),
                )
                .finish(),
            Self::Exceeded { retry_after } => f
                .debug_struct("Exceeded")
                .field("retry_after", retry_after)
                .finish(),
        }
    }
}

/// A spend's outcome as a lease's: what was spent, without a lease.
impl From<Spend> for LeaseGrant {
    fn from(spend: Spend) -> Self {
        match spend {
            Spend::Unlimited => Self::Unlimited,
            Spend::Refused(e) => Self::Refused(e),
            Spend::Spent { remaining } => Self::Leased {
                remaining,
                lease: None,
                ttl: LEASE_TTL,
            },
            Spend::Exceeded { retry_after } => Self::Exceeded { retry_after },
        }
    }
}

/// A key as an operator sees it: everything but the key and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The record's id.
    pub id: String,
    /// A display prefix (`sk_live_Ab3x…`).
    pub prefix: String,
    /// The owner (the principal the key authenticates as).
    pub owner: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The key's own rate limit, if any.
    pub rate_limit: Option<RateLimitPolicy>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it stops being valid, if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was disabled, if it was.
    pub disabled_at: Option<SystemTime>,
    /// When it was last used (written in batches), if ever.
    pub last_used_at: Option<SystemTime>,
    /// Its usage credits, if it has a credit limit.
    pub credits: Option<KeyCredits>,
}

/// A new key's settings.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    /// The owner.
    pub owner: String,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// Its own rate limit.
    pub rate_limit: Option<RateLimitPolicy>,
    /// When it stops being valid.
    pub expires_at: Option<SystemTime>,
    /// Its usage credits (none: no credit limit).
    pub credits: Option<Credits>,
}

/// A change to a key for [`SqlKeyStore::update`]: `None` leaves a field as
/// it is; `Some(None)` removes a rate limit, an expiry or credits.
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// A new rate limit, or none.
    pub rate_limit: Option<Option<RateLimitPolicy>>,
    /// A new expiry (in the future), or none.
    pub expires_at: Option<Option<SystemTime>>,
    /// New credits (their refill period starts now), or none (no credit
    /// limit).
    pub credits: Option<Option<Credits>>,
}

/// A key just made: the plaintext is here once and nowhere else.
#[derive(Debug)]
pub struct CreatedKey {
    /// The plaintext key (its `Debug` is redacted).
    pub key: ApiKey,
    /// Its record.
    pub info: KeyInfo,
}

/// A [`KeyStore`] on SQLite or PostgreSQL; see the crate docs.
///
/// Every admin write it makes is recorded in the audit trail as made by
/// its [`Actor`] ([`Actor::Library`] unless [`acting`](Self::acting) says
/// who).
#[derive(Clone)]
pub struct SqlKeyStore {
    inner: Arc<Inner>,
    /// Who this handle's writes are recorded as made by.
    actor: Arc<Actor>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    changes: broadcast::Sender<Change>,
    /// The change log as this process reads it, in commit order.
    logged: broadcast::Sender<Logged>,
    /// Caches kept in step, told of each change before anyone else.
    invalidators: Mutex<Vec<Invalidator>>,
    /// The change log's position applied to caches and sent to `logged`.
    applied: AtomicU64,
    /// When the log was last read successfully (ms since `epoch`, 0 never).
    followed_at: AtomicU64,
    epoch: std::time::Instant,
    /// Ids looked up since the last flush of `last_used_at`.
    used: Mutex<HashSet<String>>,
    /// Usage counts not yet written (see `usage`).
    usage: Mutex<usage::PendingUsage>,
    /// One usage flush at a time (see `flush_usage`).
    usage_flush: tokio::sync::Mutex<()>,
    /// Webhook deliveries this process failed for being overdue.
    webhooks_given_up: AtomicU64,
    /// Webhook deliveries pending, as this process's last scan counted.
    webhooks_pending: AtomicU64,
    format: ApiKeyFormat,
    service_format: ApiKeyFormat,
}

/// The service credentials in a [`SqlKeyStore`]'s database: the same
/// operations as for client keys, on rows of [`KeyKind::Service`] only. As
/// a [`KeyStore`] it finds service credentials and never a client key —
/// the verifier for a key service's validate endpoint.
#[derive(Clone)]
pub struct ServiceCredentials {
    store: SqlKeyStore,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("backend", &self.store.inner.backend)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SqlKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlKeyStore")
            .field("backend", &self.inner.backend)
            .field("actor", &self.actor.to_string())
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, prefix, owner, scopes, rate_requests, rate_window_secs, created_at, \
     expires_at, disabled_at, last_used_at, credits_remaining, credits_refill_amount, \
     credits_refill_secs, credits_period_start";

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix milliseconds (leases' times).
fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn time(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn every_secs(r: Refill) -> i64 {
    i64::try_from(r.every.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// Whole refill intervals from `start` to `now` (Unix seconds): what the
/// spend statement computes in SQL, for reads and retry times.
fn periods(start: i64, every: i64, now: i64) -> i64 {
    if now <= start || every <= 0 {
        0
    } else {
        (now - start) / every
    }
}

/// The first refill boundary after `now`.
fn next_refill(start: i64, every: i64, now: i64) -> i64 {
    start.saturating_add(every.saturating_mul(periods(start, every, now) + 1))
}

/// A key's credit columns: remaining, refill amount, refill interval
/// (seconds), period start (Unix seconds). All `None`: no credit limit.
#[derive(Clone, Copy, Debug, Default)]
struct CreditColumns([Option<i64>; 4]);

/// The spend statement (see [`SqlKeyStore::spend`]; a lease spends its
/// cost and its credits with it, [`SqlKeyStore::lease`]): `$1` the digest,
/// `$2` the kind, `$3` now (Unix seconds), `$4` the cost. It returns what
/// is left and the period it was taken in. A refill is due when
/// a whole interval has passed since the period's start; what is available
/// is then the refill amount, else what remains.
static SPEND_SQL: LazyLock<String> = LazyLock::new(|| {
    const DUE: &str = "(credits_refill_amount IS NOT NULL \
         AND $3 >= credits_period_start + credits_refill_secs)";
    let available =
        format!("(CASE WHEN {DUE} THEN credits_refill_amount ELSE credits_remaining END)");
    format!(
        "UPDATE auth_keys SET \
         credits_remaining = {available} - $4, \
         credits_period_start = CASE WHEN {DUE} THEN credits_period_start \
         + (($3 - credits_period_start) / credits_refill_secs) * credits_refill_secs \
         ELSE credits_period_start END \
         WHERE digest = $1 AND kind = $2 AND credits_remaining IS NOT NULL \
         AND disabled_at IS NULL AND (expires_at IS NULL OR expires_at > $3) \
         AND {available} >= $4 \
         RETURNING credits_remaining, credits_period_start, credits_refill_secs"
    )
});

/// A new row's settings, already checked.
struct NewRow<'a> {
    owner: &'a str,
    scopes: &'a str,
    rate: (Option<i64>, Option<i64>),
    expires_at: Option<SystemTime>,
    credits: CreditColumns,
}

/// The columns of credits moved to a rotation's new key at `now`: what is
/// left now (a refill due applied), the same refill, the current period.
fn moved_credits(c: &KeyCredits, now: SystemTime) -> CreditColumns {
    let start = secs(c.period_start);
    let (amount, every, period) = match c.refill {
        Some(r) => {
            let e = every_secs(r);
            let start = start.saturating_add(periods(start, e, secs(now)).saturating_mul(e));
            (i64::try_from(r.amount).ok(), Some(e), start)
        }
        None => (None, None, start),
    };
    CreditColumns([
        i64::try_from(c.remaining_at(now)).ok(),
        amount,
        every,
        Some(period),
    ])
}

/// Checks credits the way the store does before writing them: remaining
/// 0 to [`MAX_CREDITS`]; a refill of 1 to [`MAX_CREDITS`] every
/// [`MIN_REFILL_EVERY`] to [`MAX_REFILL_EVERY`] in whole seconds.
pub fn check_credits(credits: Option<Credits>) -> Result<(), Error> {
    credit_columns(credits, SystemTime::now()).map(drop)
}

/// The columns for `credits` set at `now` (the period starts now).
fn credit_columns(credits: Option<Credits>, now: SystemTime) -> Result<CreditColumns, Error> {
    let Some(c) = credits else {
        return Ok(CreditColumns::default());
    };
    if c.remaining > MAX_CREDITS {
        return Err(Error::Invalid(format!(
            "credits: `remaining` must be 0 to {MAX_CREDITS}"
        )));
    }
    let (amount, every) = match c.refill {
        None => (None, None),
        Some(r)
            if (1..=MAX_CREDITS).contains(&r.amount)
                && (MIN_REFILL_EVERY..=MAX_REFILL_EVERY).contains(&r.every)
                && r.every.subsec_nanos() == 0 =>
        {
            (
                i64::try_from(r.amount).ok(),
                i64::try_from(r.every.as_secs()).ok(),
            )
        }
        Some(_) => {
            return Err(Error::Invalid(format!(
                "a refill needs `amount` from 1 to {MAX_CREDITS} and `every` from {} to {} \
                 seconds (60 s to 366 days)",
                MIN_REFILL_EVERY.as_secs(),
                MAX_REFILL_EVERY.as_secs()
            )));
        }
    };
    Ok(CreditColumns([
        i64::try_from(c.remaining).ok(),
        amount,
        every,
        Some(secs(now)),
    ]))
}

/// Checks scope tokens the way the store does before writing them:
/// 1 to 64 letters, digits, `-`, `_`, `.` or `:` each.
pub fn check_scopes(scopes: &[String]) -> Result<(), Error> {
    scopes_text(scopes).map(drop)
}

fn scopes_text(scopes: &[String]) -> Result<String, Error> {
    for s in scopes {
        if s == VALIDATE_SCOPE {
            return Err(Error::Invalid(format!(
                "`{VALIDATE_SCOPE}` belongs to service credentials: \
                 create one with `auth-server services create`"
            )));
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !ok {
            return Err(Error::Invalid(format!(
                "scope `{s}`: use 1 to 64 letters, digits, `-`, `_`, `.` or `:`"
            )));
        }
    }
    Ok(scopes.join(" "))
}

fn rate_columns(limit: Option<RateLimitPolicy>) -> Result<(Option<i64>, Option<i64>), Error> {
    match limit {
        None => Ok((None, None)),
        Some(p) if p.requests == 0 || p.window.as_secs() == 0 || p.window > MAX_WINDOW => {
            Err(Error::Invalid(
                "a rate limit needs at least 1 request per window of 1 s to 365 days".into(),
            ))
        }
        Some(p) => Ok((
            Some(i64::from(p.requests)),
            Some(i64::try_from(p.window.as_secs()).unwrap_or(i64::MAX)),
        )),
    }
}

fn info(row: &AnyRow) -> Result<KeyInfo, sqlx::Error> {
    let rate = match (
        row.try_get::<Option<i64>, _>("rate_requests")?,
        row.try_get::<Option<i64>, _>("rate_window_secs")?,
    ) {
        (Some(r), Some(w)) if r > 0 && w > 0 => Some(RateLimitPolicy::new(
            u32::try_from(r).unwrap_or(u32::MAX),
            Duration::from_secs(u64::try_from(w).unwrap_or(1)),
        )),
        _ => None,
    };
    let opt_time = |name: &str| -> Result<Option<SystemTime>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(time))
    };
    let created_at: i64 = row.try_get("created_at")?;
    let credits = match row.try_get::<Option<i64>, _>("credits_remaining")? {
        None => None,
        Some(remaining) => Some(KeyCredits {
            remaining: u64::try_from(remaining).unwrap_or(0),
            refill: match (
                row.try_get::<Option<i64>, _>("credits_refill_amount")?,
                row.try_get::<Option<i64>, _>("credits_refill_secs")?,
            ) {
                (Some(a), Some(e)) if a > 0 && e > 0 => Some(Refill {
                    amount: u64::try_from(a).unwrap_or(0),
                    every: Duration::from_secs(u64::try_from(e).unwrap_or(1)),
                }),
                _ => None,
            },
            period_start: time(
                row.try_get::<Option<i64>, _>("credits_period_start")?
                    .unwrap_or(created_at),
            ),
        }),
    };
    Ok(KeyInfo {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        owner: row.try_get("owner")?,
        scopes: row
            .try_get::<String, _>("scopes")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        rate_limit: rate,
        created_at: time(created_at),
        expires_at: opt_time("expires_at")?,
        disabled_at: opt_time("disabled_at")?,
        last_used_at: opt_time("last_used_at")?,
        credits,
    })
}

/// The row of `kind` with this id as the write under way on `tx` sees it.
async fn read_row(
    tx: &mut sqlx::AnyConnection,
    kind: KeyKind,
    id: &str,
) -> Result<Option<KeyInfo>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM auth_keys WHERE id = $1 AND kind = $2"
    ))
    .bind(id)
    .bind(kind.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(info).transpose().map_err(Error::from)
}

fn new_id(kind: KeyKind) -> Result<String, Error> {
    // The key's own digest would do as an id, but ids are shown; digests are not.
    let key = ApiKey::generate()?;
    Ok(format!(
        "{}_{}",
        kind.id_prefix(),
        &key.digest().to_hex()[..16]
    ))
}

/// A new lease id: `ls_` and 32 hex digits from the OS random source.
fn lease_id() -> Result<String, Error> {
    let random = ApiKey::generate()?;
    Ok(format!("ls_{}", &random.digest().to_hex()[..32]))
}

/// Whether `id` has the form of a lease id (`ls_` and 32 lowercase hex
/// digits): anything else is refused before any statement runs.
fn is_lease_id(id: &str) -> bool {
    id.strip_prefix("ls_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How many credits a lease takes: at most `want`, and at most a
/// [`LEASE_SHARE`]th of what is left after the request's cost; 0 when the
/// cost itself is not there.
fn lease_size(available: i64, cost: u32, want: u32) -> i64 {
    let after = available - i64::from(cost);
    if after <= 0 {
        return 0;
    }
    let share = i64::try_from(LEASE_SHARE).unwrap_or(i64::MAX);
    (after / share).min(i64::from(want))
}

/// Settles the open leases of the key with this digest with nothing
/// returned (its credits were set anew or moved): their holders may spend
/// what they hold until their end, but not give it back.
async fn void_leases(tx: &mut sqlx::AnyConnection, digest: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE auth_credit_leases SET settled_at = $2, returned = 0 \
         WHERE digest = $1 AND settled_at IS NULL",
    )
    .bind(digest)
    .bind(millis(SystemTime::now()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How many times a lease is recomputed when a concurrent spend took the
/// credits it was computed from, before the request spends its cost alone.
const LEASE_ATTEMPTS: usize = 3;

/// A key's credits as a lease reads them before taking its share.
enum Seen {
    /// Deleted, disabled or expired.
    Refused(VerifyError),
    /// No credit limit.
    Unlimited,
    /// Credits available now (a refill that is due counted).
    Available(i64),
}

/// Checks an owner or a service name: 1 to [`MAX_NAME_CHARS`] characters,
/// not blank, nothing [hidden](is_hidden) (it would reach operators'
/// terminals through `keys list`, or disguise one name as another).
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "the {what} must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(is_hidden) {
        return Err(Error::Invalid(format!(
            "the {what} must be printable (no control, format or invisible characters)"
        )));
    }
    Ok(())
}

/// Whether `c` would act on a terminal or hide itself rather than show:
/// control characters, bidirectional overrides and isolates, zero-width
/// and other invisible format characters, line and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Checks an expiry: after now and at most [`MAX_LIFETIME`] ahead (a key
/// born expired is a mistake).
pub fn check_expiry(at: Option<SystemTime>) -> Result<(), Error> {
    let Some(at) = at else { return Ok(()) };
    let now = SystemTime::now();
    if at <= now {
        return Err(Error::Invalid("the expiry must be in the future".into()));
    }
    if now.checked_add(MAX_LIFETIME).is_none_or(|max| at > max) {
        return Err(Error::Invalid(
            "the expiry must be at most 100 years ahead".into(),
        ));
    }
    Ok(())
}

impl SqlKeyStore {
    /// Connects to `url`: `sqlite://path/to/keys.db` (created if missing)
    /// or `postgres://user@host/db`. Run [`migrate`](Self::migrate) next.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(Error::Invalid(format!(
                "database URL must start with sqlite: or postgres:// (got `{}`)",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let url = match backend {
            // Create the file on first use.
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // Readers do not block the writer; a writer waits its turn.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let (changes, _) = broadcast::channel(1024);
        let (logged, _) = broadcast::channel(4096);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                url,
                changes,
                logged,
                invalidators: Mutex::new(Vec::new()),
                applied: AtomicU64::new(0),
                followed_at: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                used: Mutex::new(HashSet::new()),
                usage: Mutex::new(usage::PendingUsage::default()),
                usage_flush: tokio::sync::Mutex::new(()),
                webhooks_given_up: AtomicU64::new(0),
                webhooks_pending: AtomicU64::new(0),
                format: ApiKeyFormat::default(),
                service_format: ApiKeyFormat::new("sk_svc", 256)?,
            }),
            actor: Arc::new(Actor::Library),
        })
    }

    /// The same store (the same pool, caches and change log), whose writes
    /// are recorded in the audit trail as made by `actor`.
    pub fn acting(&self, actor: Actor) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            actor: Arc::new(actor),
        }
    }

    /// Who this handle's writes are recorded as made by.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Runs the embedded migrations, then makes the audit trail
    /// append-only in the database (triggers; idempotent; safe from many
    /// instances).
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::migrate!("./migrations").run(&self.inner.pool).await?;
        self.protect_audit().await?;
        Ok(())
    }

    /// Whether the database answers (one trivial query).
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").fetch_one(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes the connections; later lookups fail (unavailable → 503).
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// The connection pool's connections now: `(open, idle)` — `open`
    /// counts both those in use and the idle ones (so in use is
    /// `open - idle`); at most the pool's maximum (4 on SQLite, 10 on
    /// PostgreSQL). Not counted: the connection that follows the change
    /// log on PostgreSQL. For metrics, read when scraped.
    pub fn pool_connections(&self) -> (u32, usize) {
        (self.inner.pool.size(), self.inner.pool.num_idle())
    }

    /// Writes a consistent, self-contained copy of a SQLite database to
    /// `to` while it is in use (`VACUUM INTO`: what is committed when it
    /// starts, the WAL included), and refuses to overwrite a file. On
    /// PostgreSQL: [`Error::Invalid`] — use the database's own tools
    /// (`pg_dump`).
    pub async fn backup_to(&self, to: &std::path::Path) -> Result<(), Error> {
        if self.inner.backend != Backend::Sqlite {
            return Err(Error::Invalid(
                "backups of PostgreSQL are made with its own tools (pg_dump)".into(),
            ));
        }
        if to.exists() {
            return Err(Error::Invalid(format!(
                "{} exists: a backup never overwrites a file",
                to.display()
            )));
        }
        // Absolute: SQLite would read a name starting `file:` as a URI
        // (`file:x?mode=memory` writes nothing lasting).
        let to =
            std::path::absolute(to).map_err(|e| Error::Invalid(format!("the backup path: {e}")))?;
        let to = to
            .to_str()
            .ok_or_else(|| Error::Invalid("the backup path must be UTF-8".into()))?;
        sqlx::query("VACUUM INTO ?")
            .bind(to)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Changes made through this store and, on PostgreSQL once
    /// [`listen`](Self::listen) runs, through any other.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Keeps `cached` in step with the store: every change drops the
    /// affected entry, [`Change::All`] (and a lagging receiver) everything.
    ///
    /// The cache hears of a change synchronously, before the change reaches
    /// [`subscribe`](Self::subscribe)rs or [`logged`](Self::logged)
    /// receivers: a changes stream never tells a service of a revocation
    /// that this process's own cache could still grant.
    pub fn invalidate_on_change<V, C>(&self, cached: Arc<Cached<V, C>>)
    where
        V: Verifier + 'static,
        C: Cache<Arc<Principal>> + 'static,
    {
        self.inner
            .invalidators
            .lock()
            .push(Box::new(move |change: Change| match change {
                Change::Key(digest) => cached.invalidate(&digest),
                Change::All => cached.clear(),
            }));
    }

    /// A change, applied: the registered caches first, then subscribers.
    fn apply(&self, change: Change) {
        for invalidate in self.inner.invalidators.lock().iter() {
            invalidate(change);
        }
        let _ = self.inner.changes.send(change);
    }

    /// The change log's position this process has applied: every change
    /// up to it has reached its caches (see [`listen`](Self::listen)).
    pub fn applied_seq(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    /// Whether this process follows the change log: its last read
    /// succeeded within a second. A changes stream served while it does
    /// not would look live and say nothing.
    pub fn following(&self) -> bool {
        let at = self.inner.followed_at.load(Ordering::Acquire);
        at != 0 && self.inner.epoch.elapsed().as_millis() < u128::from(at) + 1_000
    }

    /// The change log as this process reads it (see [`listen`](Self::listen)):
    /// every change in commit order, from this process and every other,
    /// with its sequence number — what a changes stream serves.
    pub fn logged(&self) -> broadcast::Receiver<Logged> {
        self.inner.logged.subscribe()
    }

    /// Follows the change log: every change any process commits (this one,
    /// the CLI, other instances) reaches [`subscribe`](Self::subscribe)rs
    /// (and so the caches of [`invalidate_on_change`](Self::invalidate_on_change))
    /// and [`logged`](Self::logged) receivers, in commit order, within
    /// [`POLL_EVERY`] — on PostgreSQL at once, woken by `NOTIFY`. Nothing
    /// is lost when the listening connection drops: the log is read after
    /// `LISTEN` is issued again, from where this process left it (only a gap
    /// pruned from the log, over [`LOG_KEEPS`] behind, clears everything).
    /// Also prunes the log now and then. Run once per process.
    pub async fn listen(&self) -> Result<JoinHandle<()>, Error> {
        let mut last = self.latest_seq().await?;
        self.inner.applied.store(last, Ordering::Release);
        self.followed();
        let mut wake = match self.inner.backend {
            Backend::Postgres => {
                let mut listener = sqlx::postgres::PgListener::connect(&self.inner.url).await?;
                listener.listen(CHANNEL).await?;
                Some(listener)
            }
            Backend::Sqlite => None,
        };
        let store = self.clone();
        Ok(tokio::spawn(async move {
            let mut failing = false;
            let mut pruned = std::time::Instant::now();
            loop {
                match &mut wake {
                    // A notification, or the poll's time: either way the
                    // log says what changed.
                    Some(listener) => {
                        match tokio::time::timeout(POLL_EVERY, listener.try_recv()).await {
                            Err(_) => {}
                            Ok(Ok(Some(n))) => {
                                // An instance of an older version writes no
                                // log: its notification's digest is all there is.
                                if let Ok(digest) = Digest::from_hex(n.payload()) {
                                    store.apply(Change::Key(digest));
                                }
                            }
                            Ok(Ok(None)) => {
                                // The next `try_recv` connects and listens again;
                                // the log covers the time between.
                                tracing::warn!(target: "auth_sqlx",
                                "key-change listener lost its connection; reconnecting");
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(target: "auth_sqlx", error = %e,
                                "key-change listener cannot reach the database; retrying");
                                tokio::time::sleep(POLL_EVERY).await;
                            }
                        }
                    }
                    None => tokio::time::sleep(POLL_EVERY).await,
                }
                match store.follow(last).await {
                    Ok(seq) => {
                        last = seq;
                        store.followed();
                        if failing {
                            tracing::info!(target: "auth_sqlx", "the change log is read again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(target: "auth_sqlx", error = %e,
                                "cannot read the change log; retrying");
                            failing = true;
                        }
                    }
                }
                if pruned.elapsed() > Duration::from_secs(600) {
                    pruned = std::time::Instant::now();
                    if let Err(e) = store.prune_log().await {
                        tracing::warn!(target: "auth_sqlx", error = %e, "could not prune the change log");
                    }
                    if let Err(e) = store.prune_leases(SystemTime::now()).await {
                        tracing::warn!(target: "auth_sqlx", error = %e, "could not prune old leases");
                    }
                    if let Err(e) = store.prune_usage(SystemTime::now()).await {
                        tracing::warn!(target: "auth_sqlx", error = %e, "could not prune old usage counts");
                    }
                    if let Err(e) = store.prune_deliveries(SystemTime::now()).await {
                        tracing::warn!(target: "auth_sqlx", error = %e, "could not prune old webhook deliveries");
                    }
                }
            }
        }))
    }

    /// Reads the log after `last` and passes it on; the new position.
    async fn follow(&self, mut last: u64) -> Result<u64, Error> {
        loop {
            let rows = self.changes_since(last, 1000).await?;
            let Some(&(end, _)) = rows.last() else {
                return Ok(last);
            };
            for (seq, digest) in &rows {
                if *seq != last + 1 {
                    // Pruned before we read it: anything may have changed.
                    tracing::warn!(target: "auth_sqlx", from = last, to = *seq,
                        "change log gap: clearing caches");
                    self.apply(Change::All);
                    self.inner.applied.store(seq - 1, Ordering::Release);
                    let _ = self.inner.logged.send(Logged::Reset { seq: seq - 1 });
                }
                // Caches first, then the position, then the stream's readers.
                self.apply(Change::Key(*digest));
                self.inner.applied.store(*seq, Ordering::Release);
                let _ = self.inner.logged.send(Logged::Key {
                    seq: *seq,
                    digest: *digest,
                });
                last = *seq;
            }
            if rows.len() < 1000 {
                return Ok(end);
            }
        }
    }

    /// Changes after `after`, in order, at most `limit`: sequence numbers
    /// and digests.
    pub async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<(u64, Digest)>, Error> {
        let rows = sqlx::query(
            "SELECT seq, digest FROM auth_key_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let digest: String = row.try_get("digest")?;
            if let (Ok(seq), Ok(digest)) = (u64::try_from(seq), Digest::from_hex(&digest)) {
                out.push((seq, digest));
            }
        }
        Ok(out)
    }

    /// The newest change's sequence number (0 when there is none).
    pub async fn latest_seq(&self) -> Result<u64, Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM auth_key_changes")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0))
    }

    /// The oldest change still in the log, if any: a reader at a position
    /// before `oldest - 1` has missed changes that can no longer be read.
    pub async fn oldest_seq(&self) -> Result<Option<u64>, Error> {
        let row = sqlx::query("SELECT MIN(seq) AS seq FROM auth_key_changes")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(row
            .try_get::<Option<i64>, _>("seq")?
            .and_then(|s| u64::try_from(s).ok()))
    }

    /// Drops changes older than [`LOG_KEEPS`], always keeping the newest
    /// (sequence numbers never restart).
    pub async fn prune_log(&self) -> Result<u64, Error> {
        let before = SystemTime::now().checked_sub(LOG_KEEPS).map_or(0, secs);
        let done = sqlx::query(
            "DELETE FROM auth_key_changes WHERE changed_at < $1 \
             AND seq < (SELECT MAX(seq) FROM auth_key_changes)",
        )
        .bind(before)
        .execute(&self.inner.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Drops leases that ended more than [`LOG_KEEPS`] before `now`
    /// (settled or not: past their end nothing reads them); how many.
    pub async fn prune_leases(&self, now: SystemTime) -> Result<u64, Error> {
        let keeps = i64::try_from(LOG_KEEPS.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM auth_credit_leases WHERE expires_at < $1")
            .bind(millis(now).saturating_sub(keeps))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Begins a write: on PostgreSQL it holds the writers' lock until it
    /// commits (SQLite has one writer at a time anyway), so the change
    /// log's order is the commit order.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
        let mut tx = self.inner.pool.begin().await?;
        if self.inner.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Logs a change of the key with `digest` in the write under way, and
    /// wakes other processes when it commits.
    async fn log_change(&self, tx: &mut sqlx::AnyConnection, digest: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO auth_key_changes (seq, digest, changed_at) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2 FROM auth_key_changes",
        )
        .bind(digest)
        .bind(secs(SystemTime::now()))
        .execute(&mut *tx)
        .await?;
        if self.inner.backend == Backend::Postgres {
            // Delivered on commit, to every listener: a wake-up.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// After a commit: this process's caches hear of it at once (others,
    /// and this one's log readers, through the log).
    fn announce(&self, digest: &str) {
        self.apply(Digest::from_hex(digest).map_or(Change::All, Change::Key));
    }

    /// Records a successful read of the log.
    fn followed(&self) {
        let ms = u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.followed_at.store(ms.max(1), Ordering::Release);
    }

    /// Writes `last_used_at` for the keys looked up since the last flush,
    /// every `every` (one statement per flush, never one per request).
    pub fn spawn_last_used_flush(&self, every: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = store.flush_last_used().await {
                    tracing::warn!(target: "auth_sqlx", error = %e, "could not write last-used times");
                }
            }
        })
    }

    /// Writes `last_used_at` for the keys looked up since the last flush.
    pub async fn flush_last_used(&self) -> Result<usize, Error> {
        let ids: Vec<String> = self.inner.used.lock().drain().collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let placeholders: Vec<String> = (2..ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE auth_keys SET last_used_at = $1 WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(secs(SystemTime::now()));
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&self.inner.pool).await?;
        Ok(ids.len())
    }

    /// Creates a key; the answer holds the plaintext, once.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey, Error> {
        check_name("owner", &new.owner)?;
        check_expiry(new.expires_at)?;
        let scopes = scopes_text(&new.scopes)?;
        let rate = rate_columns(new.rate_limit)?;
        let credits = credit_columns(new.credits, SystemTime::now())?;
        self.insert(
            KeyKind::Client,
            NewRow {
                owner: &new.owner,
                scopes: &scopes,
                rate,
                expires_at: new.expires_at,
                credits,
            },
        )
        .await
    }

    /// The service credentials in the same database (their writes recorded
    /// as made by this store's actor).
    pub fn services(&self) -> ServiceCredentials {
        ServiceCredentials {
            store: self.clone(),
        }
    }

    /// Inserts a row of `kind` (its input already checked), with its
    /// `create` record, in one transaction.
    async fn insert(&self, kind: KeyKind, row: NewRow<'_>) -> Result<CreatedKey, Error> {
        let mut tx = self.begin_write().await?;
        let (key, id) = self.insert_row(&mut tx, kind, row).await?;
        let new = read_row(&mut tx, kind, &id).await?;
        let changes = audit::diff(kind, None, new.as_ref(), SystemTime::now());
        self.record(&mut tx, audit::Action::Create, kind, &id, &changes)
            .await?;
        tx.commit().await?;
        self.created(kind, key, &id).await
    }

    /// Writes a new row of `kind` on `conn`; the key and the row's id.
    async fn insert_row(
        &self,
        conn: &mut sqlx::AnyConnection,
        kind: KeyKind,
        row: NewRow<'_>,
    ) -> Result<(ApiKey, String), Error> {
        let (requests, window) = row.rate;
        let [remaining, amount, every, period] = row.credits.0;
        let format = match kind {
            KeyKind::Client => &self.inner.format,
            KeyKind::Service => &self.inner.service_format,
        };
        let key = format.generate()?;
        let id = new_id(kind)?;
        sqlx::query(
            "INSERT INTO auth_keys (id, prefix, digest, owner, scopes, rate_requests, \
             rate_window_secs, created_at, expires_at, kind, credits_remaining, \
             credits_refill_amount, credits_refill_secs, credits_period_start) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&id)
        .bind(key.display_prefix())
        .bind(key.digest().to_hex())
        .bind(row.owner)
        .bind(row.scopes)
        .bind(requests)
        .bind(window)
        .bind(secs(SystemTime::now()))
        .bind(row.expires_at.map(secs))
        .bind(kind.as_str())
        .bind(remaining)
        .bind(amount)
        .bind(every)
        .bind(period)
        .execute(&mut *conn)
        .await?;
        Ok((key, id))
    }

    /// A just-written key with its record.
    async fn created(&self, kind: KeyKind, key: ApiKey, id: &str) -> Result<CreatedKey, Error> {
        let info = self
            .get_kind(kind, id)
            .await?
            .ok_or_else(|| Error::Invalid("the new key vanished".into()))?;
        Ok(CreatedKey { key, info })
    }

    /// Every key (newest first), without keys or digests.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        self.list_kind(KeyKind::Client).await
    }

    async fn list_kind(&self, kind: KeyKind) -> Result<Vec<KeyInfo>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM auth_keys WHERE kind = $1 ORDER BY created_at DESC, id"
        ))
        .bind(kind.as_str())
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(|r| info(r).map_err(Error::from)).collect()
    }

    /// One key by id.
    pub async fn get(&self, id: &str) -> Result<Option<KeyInfo>, Error> {
        self.get_kind(KeyKind::Client, id).await
    }

    async fn get_kind(&self, kind: KeyKind, id: &str) -> Result<Option<KeyInfo>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM auth_keys WHERE id = $1 AND kind = $2"
        ))
        .bind(id)
        .bind(kind.as_str())
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(info).transpose().map_err(Error::from)
    }

    /// The format of the keys of `kind` this store makes (`sk_live_…` or
    /// `sk_svc_…`): what a reported key is checked against, offline,
    /// before any lookup.
    pub fn format(&self, kind: KeyKind) -> &ApiKeyFormat {
        match kind {
            KeyKind::Client => &self.inner.format,
            KeyKind::Service => &self.inner.service_format,
        }
    }

    /// The key or credential of `kind` with this digest, as an operator
    /// sees it. A read only: unlike a validation it is not counted as a use
    /// (a secret scanner's report of a leaked key is not one).
    pub async fn get_by_digest(
        &self,
        kind: KeyKind,
        digest: &Digest,
    ) -> Result<Option<KeyInfo>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM auth_keys WHERE digest = $1 AND kind = $2"
        ))
        .bind(digest.to_hex())
        .bind(kind.as_str())
        .fetch_optional(&self.inner.pool)
        .await?;
        row.as_ref().map(info).transpose().map_err(Error::from)
    }

    /// Disables a key now; whether it existed.
    pub async fn disable(&self, id: &str) -> Result<bool, Error> {
        self.disable_kind(KeyKind::Client, id).await
    }

    async fn disable_kind(&self, kind: KeyKind, id: &str) -> Result<bool, Error> {
        let now = secs(SystemTime::now());
        self.write(
            kind,
            audit::Action::Disable,
            // The first disable's time stays (a second one — an admin and a
            // scanner's report at once — changes nothing).
            "UPDATE auth_keys SET disabled_at = COALESCE(disabled_at, $3) \
             WHERE id = $1 AND kind = $2 RETURNING digest",
            id,
            false,
            |q| q.bind(now),
        )
        .await
    }

    /// Deletes a key; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.delete_kind(KeyKind::Client, id).await
    }

    async fn delete_kind(&self, kind: KeyKind, id: &str) -> Result<bool, Error> {
        self.write(
            kind,
            audit::Action::Delete,
            "DELETE FROM auth_keys WHERE id = $1 AND kind = $2 RETURNING digest",
            id,
            false,
            |q| q,
        )
        .await
    }

    /// Changes a key's scopes, rate limit, expiry and credits in one
    /// statement (all or nothing; everything checked first); whether the
    /// key exists. New credits start a new refill period now.
    pub async fn update(&self, id: &str, change: KeyUpdate) -> Result<bool, Error> {
        let scopes = change.scopes.as_deref().map(scopes_text).transpose()?;
        let rate = change.rate_limit.map(rate_columns).transpose()?;
        if let Some(at) = change.expires_at {
            check_expiry(at)?;
        }
        let now = SystemTime::now();
        let credits = change.credits.map(|c| credit_columns(c, now)).transpose()?;
        let mut sets = Vec::new();
        let mut n = 3;
        if scopes.is_some() {
            sets.push(format!("scopes = ${n}"));
            n += 1;
        }
        if rate.is_some() {
            sets.push(format!(
                "rate_requests = ${n}, rate_window_secs = ${}",
                n + 1
            ));
            n += 2;
        }
        if change.expires_at.is_some() {
            sets.push(format!("expires_at = ${n}"));
            n += 1;
        }
        if credits.is_some() {
            sets.push(format!(
                "credits_remaining = ${n}, credits_refill_amount = ${}, \
                 credits_refill_secs = ${}, credits_period_start = ${}",
                n + 1,
                n + 2,
                n + 3
            ));
        }
        if sets.is_empty() {
            return Ok(self.get(id).await?.is_some());
        }
        let sql = format!(
            "UPDATE auth_keys SET {} WHERE id = $1 AND kind = $2 RETURNING digest",
            sets.join(", ")
        );
        // New credits (or none) void the key's open leases: a return must
        // not add the old period's credits to the new value.
        let voids = credits.is_some();
        let update = audit::Action::Update;
        self.write(KeyKind::Client, update, &sql, id, voids, |mut q| {
            if let Some(text) = scopes {
                q = q.bind(text);
            }
            if let Some((requests, window)) = rate {
                q = q.bind(requests).bind(window);
            }
            if let Some(at) = change.expires_at {
                q = q.bind(at.map(secs));
            }
            if let Some(CreditColumns(columns)) = credits {
                for c in columns {
                    q = q.bind(c);
                }
            }
            q
        })
        .await
    }

    /// Sets or removes a key's credits (a new refill period starts now).
    pub async fn set_credits(&self, id: &str, credits: Option<Credits>) -> Result<bool, Error> {
        let change = KeyUpdate {
            credits: Some(credits),
            ..KeyUpdate::default()
        };
        self.update(id, change).await
    }

    /// Replaces a key's scopes.
    pub async fn set_scopes(&self, id: &str, scopes: &[String]) -> Result<bool, Error> {
        let change = KeyUpdate {
            scopes: Some(scopes.to_vec()),
            ..KeyUpdate::default()
        };
        self.update(id, change).await
    }

    /// Sets or removes a key's own rate limit.
    pub async fn set_rate_limit(
        &self,
        id: &str,
        limit: Option<RateLimitPolicy>,
    ) -> Result<bool, Error> {
        let change = KeyUpdate {
            rate_limit: Some(limit),
            ..KeyUpdate::default()
        };
        self.update(id, change).await
    }

    /// Sets or removes a key's expiry (a new expiry must be in the future).
    pub async fn set_expiry(
        &self,
        id: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<bool, Error> {
        let change = KeyUpdate {
            expires_at: Some(expires_at),
            ..KeyUpdate::default()
        };
        self.update(id, change).await
    }

    /// Rotates a key: a new key with the same owner, scopes and limit; the
    /// old one stays valid for `overlap` (at most [`MAX_OVERLAP`]), then
    /// expires. Credits move to the new key (as they are now, with its
    /// refill and period): the old key keeps none through its overlap (no
    /// refill; it answers "exceeded"), so a rotation never doubles them.
    /// `None` when there is no such key.
    pub async fn rotate(&self, id: &str, overlap: Duration) -> Result<Option<CreatedKey>, Error> {
        self.rotate_kind(KeyKind::Client, id, overlap).await
    }

    async fn rotate_kind(
        &self,
        kind: KeyKind,
        id: &str,
        overlap: Duration,
    ) -> Result<Option<CreatedKey>, Error> {
        // Checked before anything is written: no orphan new key.
        let until = (overlap <= MAX_OVERLAP)
            .then(|| SystemTime::now().checked_add(overlap))
            .flatten()
            .ok_or_else(|| Error::Invalid("the overlap must be 0 s to 365 days".into()))?;
        // One transaction: the new key and the old one's end together, or
        // neither (a caller hanging up mid-way rolls it back).
        let mut tx = self.begin_write().await?;
        // Locks the old row before reading it (PostgreSQL: its row lock;
        // SQLite: the write lock), so that no spend changes its credits
        // between the read and the move below.
        sqlx::query("UPDATE auth_keys SET id = id WHERE id = $1 AND kind = $2")
            .bind(id)
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, digest FROM auth_keys WHERE id = $1 AND kind = $2"
        ))
        .bind(id)
        .bind(kind.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let old = info(&row)?;
        let old_digest: String = row.try_get("digest")?;
        if old.credits.is_some() {
            // Its credits move to the new key: a return to the old one
            // would give them twice. After the key's row lock (the order
            // of every writer of both).
            void_leases(&mut tx, &old_digest).await?;
        }
        let rate = rate_columns(old.rate_limit)?;
        let scopes = old.scopes.join(" ");
        // The new key keeps the old expiry only while it is still ahead.
        let now = SystemTime::now();
        let expires_at = old.expires_at.filter(|at| *at > now);
        let (credits, old_credits) = match old.credits {
            None => (CreditColumns::default(), CreditColumns::default()),
            Some(c) => (
                moved_credits(&c, now),
                CreditColumns([Some(0), None, None, Some(secs(now))]),
            ),
        };
        let (key, new_id) = self
            .insert_row(
                &mut tx,
                kind,
                NewRow {
                    owner: &old.owner,
                    scopes: &scopes,
                    rate,
                    expires_at,
                    credits,
                },
            )
            .await?;
        let ends = old.expires_at.map_or(until, |at| at.min(until));
        let [remaining, amount, every, period] = old_credits.0;
        sqlx::query(
            "UPDATE auth_keys SET expires_at = $3, credits_remaining = $4, \
             credits_refill_amount = $5, credits_refill_secs = $6, credits_period_start = $7 \
             WHERE id = $1 AND kind = $2",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(secs(ends))
        .bind(remaining)
        .bind(amount)
        .bind(every)
        .bind(period)
        .execute(&mut *tx)
        .await?;
        // Two records, one write: `rotate` on the old key (its end, its
        // credits moved, and which key replaced it) and `create` on the new
        // one (its settings, and which key it replaces).
        let old_after = read_row(&mut tx, kind, id).await?;
        let mut changes = audit::diff(kind, Some(&old), old_after.as_ref(), now);
        changes.insert("replacedBy".to_owned(), audit::set(&new_id));
        self.record(&mut tx, audit::Action::Rotate, kind, id, &changes)
            .await?;
        let new = read_row(&mut tx, kind, &new_id).await?;
        let mut changes = audit::diff(kind, None, new.as_ref(), now);
        changes.insert("replaces".to_owned(), audit::set(id));
        self.record(&mut tx, audit::Action::Create, kind, &new_id, &changes)
            .await?;
        self.log_change(&mut tx, &old_digest).await?;
        tx.commit().await?;
        self.announce(&old_digest);
        self.created(kind, key, &new_id).await.map(Some)
    }

    /// Runs a write (`$1` the id, `$2` the kind) that returns the affected
    /// key's digest, with its audit record (the fields before and after),
    /// then announces the change: locally at once, and to other processes
    /// with `NOTIFY`. With `voids_leases`, the key's open leases are
    /// settled with nothing returned, in the same transaction. No row, no
    /// write and no record; a disable of a key already disabled changes
    /// nothing and leaves no record either (`Ok(true)`: it exists).
    async fn write<'q>(
        &self,
        kind: KeyKind,
        action: audit::Action,
        sql: &'q str,
        id: &'q str,
        voids_leases: bool,
        bind: impl FnOnce(
            sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        // The row locked first (PostgreSQL: its row lock; SQLite: a write
        // first takes the write lock, which a read could not be upgraded
        // to), then read: the record's "before" is what the write changed.
        sqlx::query("UPDATE auth_keys SET id = id WHERE id = $1 AND kind = $2")
            .bind(id)
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        let Some(before) = read_row(&mut tx, kind, id).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let row = bind(sqlx::query(sql).bind(id).bind(kind.as_str()))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let digest: String = row.try_get("digest")?;
        if voids_leases {
            void_leases(&mut tx, &digest).await?;
        }
        let after = read_row(&mut tx, kind, id).await?;
        let now = SystemTime::now();
        let mut changes = audit::diff(kind, Some(&before), after.as_ref(), now);
        if voids_leases {
            // Credits set, even to what they were: a new refill period
            // starts and open leases are voided — a change to record.
            audit::credits_set(&mut changes, kind, &before, after.as_ref(), now);
        }
        if action == audit::Action::Disable && changes.is_empty() {
            // Already disabled: the key exists and nothing changed — no
            // record, no change-log entry, no announce.
            tx.rollback().await?;
            return Ok(true);
        }
        self.record(&mut tx, action, kind, id, &changes).await?;
        self.log_change(&mut tx, &digest).await?;
        tx.commit().await?;
        self.announce(&digest);
        Ok(true)
    }

    /// The lookup of the row of `kind` with this digest: an answer that
    /// waits for the database, its future owning a clone of the store (the
    /// pool and the last-used set, behind one `Arc`).
    fn lookup(&self, kind: KeyKind, digest: Digest) -> Answer<Lookup> {
        let store = self.clone();
        Answer::pending(async move { store.find(kind, &digest).await.map(|r| r.map(Arc::new)) })
    }

    /// The row of `kind` with this digest, as a record for verification
    /// (labelled [`CREDITS_LABEL`] when it has credits); a use of the key,
    /// for its last-used time.
    async fn find(&self, kind: KeyKind, digest: &Digest) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM auth_keys WHERE digest = $1 AND kind = $2"
        ))
        .bind(digest.to_hex())
        .bind(kind.as_str())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| StoreError(e.to_string()))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let info = info(&row).map_err(|e| StoreError(e.to_string()))?;
        self.inner.used.lock().insert(info.id.clone());
        let mut record = KeyRecord::new(info.id, *digest, info.owner);
        record.scopes = info.scopes;
        record.rate_limit = info.rate_limit;
        record.expires_at = info.expires_at;
        record.disabled = info.disabled_at.is_some();
        if info.credits.is_some() {
            // Handed to the principal (and cached with it): only keys with
            // credits cost a spend per validation.
            record
                .labels
                .insert(CREDITS_LABEL.to_owned(), "limited".to_owned());
        }
        Ok(Some(record))
    }

    /// Spends `cost` of the credits of the client key with this digest at
    /// `now`, in ONE statement — never a read then a write — which also
    /// applies a refill that is due (remaining set to the refill amount,
    /// the period's start moved on by whole intervals: several intervals
    /// missed make one refill). `cost` 0 spends nothing and never exceeds:
    /// one read reports what is left (a due refill counted), no write. On
    /// no row updated, one read tells a key without credits
    /// ([`Spend::Unlimited`]) from one without enough ([`Spend::Exceeded`],
    /// with the time to its next refill) or one no longer valid
    /// ([`Spend::Refused`]).
    ///
    /// It never spends what is not there, on any number of instances: the
    /// check `available >= cost` is in the `UPDATE`'s `WHERE`. On
    /// PostgreSQL (READ COMMITTED) an `UPDATE` that finds its row locked by
    /// another waits for it to commit, then evaluates the `WHERE` again on
    /// the new row version before writing; SQLite takes its one writer's
    /// lock before the statement reads anything. Either way each spend sees
    /// every spend committed before it.
    pub async fn spend(&self, digest: &Digest, cost: u32, now: SystemTime) -> Result<Spend, Error> {
        let hex = digest.to_hex();
        let now = secs(now);
        let cost = i64::from(cost);
        // Cost 0 spends nothing: a read says what is left (no write, no
        // row lock).
        let spent = if cost == 0 {
            None
        } else {
            sqlx::query(&SPEND_SQL)
                .bind(&hex)
                .bind(KeyKind::Client.as_str())
                .bind(now)
                .bind(cost)
                .fetch_optional(&self.inner.pool)
                .await?
        };
        if let Some(row) = spent {
            let remaining: i64 = row.try_get("credits_remaining")?;
            return Ok(Spend::Spent {
                remaining: u64::try_from(remaining).unwrap_or(0),
            });
        }
        // Not spent: a report (cost 0), no credits, not enough, or revoked
        // meanwhile. Only says which (and when to come back); whatever it
        // reads, nothing is spent.
        let row = sqlx::query(
            "SELECT credits_remaining, credits_refill_amount, credits_refill_secs, \
             credits_period_start, disabled_at, expires_at FROM auth_keys \
             WHERE digest = $1 AND kind = $2",
        )
        .bind(&hex)
        .bind(KeyKind::Client.as_str())
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Spend::Refused(VerifyError::Invalid));
        };
        if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Ok(Spend::Refused(VerifyError::Disabled));
        }
        if row
            .try_get::<Option<i64>, _>("expires_at")?
            .is_some_and(|at| at <= now)
        {
            return Ok(Spend::Refused(VerifyError::Expired));
        }
        let Some(remaining) = row.try_get::<Option<i64>, _>("credits_remaining")? else {
            return Ok(Spend::Unlimited);
        };
        let refill = (
            row.try_get::<Option<i64>, _>("credits_refill_amount")?,
            row.try_get::<Option<i64>, _>("credits_refill_secs")?,
            row.try_get::<Option<i64>, _>("credits_period_start")?,
        );
        if cost == 0 {
            // As the statement would see it: a refill that is due counted.
            let available = match refill {
                (Some(amount), Some(every), Some(start)) if periods(start, every, now) > 0 => {
                    amount
                }
                _ => remaining,
            };
            return Ok(Spend::Spent {
                remaining: u64::try_from(available).unwrap_or(0),
            });
        }
        let retry_after = match refill {
            (Some(amount), Some(every), Some(start)) if amount >= cost && every > 0 => {
                let wait = next_refill(start, every, now).saturating_sub(now);
                Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)))
            }
            _ => None,
        };
        Ok(Spend::Exceeded { retry_after })
    }

    /// Spends `cost` of the credits of the client key with this digest at
    /// `now` and, on top, leases up to `want` (at most [`MAX_LEASE`]) of
    /// them to `service` (the id of its credential; `None` when the
    /// validate endpoint asks for none) for [`LEASE_TTL`]. The lease takes
    /// `min(want, (available - cost) / LEASE_SHARE)`: none when that is 0
    /// (then this is [`spend`](Self::spend) of `cost`, answered as
    /// [`LeaseGrant::Leased`] without a lease).
    ///
    /// It never spends what is not there, on any number of instances: the
    /// cost and the lease are taken by ONE statement — the spend's own
    /// `UPDATE`, for `cost + lease` — whose `WHERE` checks that they are
    /// available, on the row as every committed spend left it (see
    /// [`spend`](Self::spend)). The share is computed from a read just
    /// before, which may be stale: then the statement finds too little,
    /// writes nothing, and the share is computed again (at most three
    /// times), and at last the cost is spent alone. The lease's row is
    /// written in the same transaction as the spend, so a lease exists iff
    /// its credits were taken from the key; they come back only through
    /// [`return_lease`](Self::return_lease), at most once and at most what
    /// was leased.
    ///
    /// # Errors
    /// [`Error::Invalid`] for `want` over [`MAX_LEASE`] (nothing read or
    /// written); [`Error::Database`] when the database fails (nothing
    /// taken unless the commit itself was lost on the way back).
    pub async fn lease(
        &self,
        digest: &Digest,
        cost: u32,
        want: u32,
        service: Option<&str>,
        now: SystemTime,
    ) -> Result<LeaseGrant, Error> {
        if want > MAX_LEASE {
            return Err(Error::Invalid(format!(
                "a lease is 1 to {MAX_LEASE} credits"
            )));
        }
        let hex = digest.to_hex();
        if want > 0 {
            for _ in 0..LEASE_ATTEMPTS {
                let available = match self.available(&hex, secs(now)).await? {
                    Seen::Refused(e) => return Ok(LeaseGrant::Refused(e)),
                    Seen::Unlimited => return Ok(LeaseGrant::Unlimited),
                    Seen::Available(a) => a,
                };
                let extra = lease_size(available, cost, want);
                if extra == 0 {
                    break;
                }
                if let Some(grant) = self.take_lease(&hex, cost, extra, service, now).await? {
                    return Ok(grant);
                }
                // A concurrent spend took some of what was read: again.
            }
        }
        // Too little for a lease (or lost the race every time): the cost
        // alone, answered as a spend is.
        self.spend(digest, cost, now).await.map(LeaseGrant::from)
    }

    /// What the key with this digest has at `now` (Unix seconds), as the
    /// spend statement would see it: one read, no lock.
    async fn available(&self, hex: &str, now: i64) -> Result<Seen, Error> {
        let row = sqlx::query(
            "SELECT credits_remaining, credits_refill_amount, credits_refill_secs, \
             credits_period_start, disabled_at, expires_at FROM auth_keys \
             WHERE digest = $1 AND kind = $2",
        )
        .bind(hex)
        .bind(KeyKind::Client.as_str())
        .fetch_optional(&self.inner.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Seen::Refused(VerifyError::Invalid));
        };
        if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Ok(Seen::Refused(VerifyError::Disabled));
        }
        if row
            .try_get::<Option<i64>, _>("expires_at")?
            .is_some_and(|at| at <= now)
        {
            return Ok(Seen::Refused(VerifyError::Expired));
        }
        let Some(remaining) = row.try_get::<Option<i64>, _>("credits_remaining")? else {
            return Ok(Seen::Unlimited);
        };
        let refill = (
            row.try_get::<Option<i64>, _>("credits_refill_amount")?,
            row.try_get::<Option<i64>, _>("credits_refill_secs")?,
            row.try_get::<Option<i64>, _>("credits_period_start")?,
        );
        Ok(Seen::Available(match refill {
            (Some(amount), Some(every), Some(start)) if periods(start, every, now) > 0 => amount,
            _ => remaining,
        }))
    }

    /// Spends `cost + extra` with the spend statement and records the
    /// lease of `extra`, in one transaction; `None` (nothing written) when
    /// the statement found too little.
    async fn take_lease(
        &self,
        hex: &str,
        cost: u32,
        extra: i64,
        service: Option<&str>,
        now: SystemTime,
    ) -> Result<Option<LeaseGrant>, Error> {
        let id = lease_id()?;
        let ttl = i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.inner.pool.begin().await?;
        // The transaction's first statement writes: on SQLite it takes the
        // write lock at once (a read first could not be upgraded if another
        // process wrote meanwhile); on PostgreSQL the key's row lock, held
        // until the lease row is in.
        // Never more than is there: this one statement's `WHERE` checks
        // that `cost + extra` are available on the row as it is now.
        let spent = sqlx::query(&SPEND_SQL)
            .bind(hex)
            .bind(KeyKind::Client.as_str())
            .bind(secs(now))
            .bind(i64::from(cost) + extra)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = spent else {
            tx.rollback().await?;
            return Ok(None);
        };
        let remaining: i64 = row.try_get("credits_remaining")?;
        // The period the credits were taken in (a refill the statement made
        // included): a return gives them back only within it.
        let period: Option<i64> = row.try_get("credits_period_start")?;
        let every: Option<i64> = row.try_get("credits_refill_secs")?;
        // Never past the next refill: leased credits are the period's.
        let ttl = match (period, every) {
            (Some(start), Some(every)) => {
                let next_ms = next_refill(start, every, secs(now)).saturating_mul(1000);
                ttl.min(next_ms.saturating_sub(millis(now)).max(0))
            }
            _ => ttl,
        };
        sqlx::query(
            "INSERT INTO auth_credit_leases (id, digest, service_id, granted, period_start, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(hex)
        .bind(service.filter(|s| !s.is_empty()).map(str::to_owned))
        .bind(extra)
        .bind(period)
        .bind(millis(now).saturating_add(ttl))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(LeaseGrant::Leased {
            remaining: u64::try_from(remaining).unwrap_or(0),
            lease: Some((id, u64::try_from(extra).unwrap_or(0))),
            ttl: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
        }))
    }

    /// Returns what `service` did not spend of the lease `id` at `now`:
    /// `min(unused, leased)` goes back to the key, once, and only while
    /// the lease lasts and the key's refill period is the one it was
    /// granted in (no refill since, none due, no credits set since:
    /// returned credits belong to a period that ended otherwise), and the
    /// key still has credits. The credits given back (0 for a lease that
    /// ended, was returned already, is another service's or is unknown —
    /// never an error that would tell which).
    ///
    /// One transaction: the lease is settled (`settled_at`, and `returned`:
    /// what was really given back) by an `UPDATE` whose `WHERE` requires it
    /// unsettled, unexpired and the caller's — on PostgreSQL a second return
    /// waits for the first to commit and then finds it settled; on SQLite
    /// the one writer's lock orders them — and the credits are added to the
    /// key in the same transaction, or neither is.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an id that is not of a lease's form (nothing
    /// read or written); [`Error::Database`] when the database fails.
    pub async fn return_lease(
        &self,
        id: &str,
        unused: u64,
        service: Option<&str>,
        now: SystemTime,
    ) -> Result<u64, Error> {
        if !is_lease_id(id) {
            return Err(Error::Invalid(
                "a lease id is `ls_` and 32 lowercase hex digits".into(),
            ));
        }
        // A lease's key never changes: read without a lock, to lock the key
        // first below.
        let digest: Option<String> =
            sqlx::query("SELECT digest FROM auth_credit_leases WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.inner.pool)
                .await?
                .map(|row| row.try_get("digest"))
                .transpose()?;
        let Some(digest) = digest else {
            return Ok(0);
        };
        let now_ms = millis(now);
        let unused = i64::try_from(unused).unwrap_or(i64::MAX);
        let mut tx = self.inner.pool.begin().await?;
        // The key's row first, the lease's second: the order of every
        // transaction that writes both (a grant, an admin write of
        // credits), so that none waits on another in a cycle. On SQLite
        // this first write takes the write lock at once.
        sqlx::query("UPDATE auth_keys SET id = id WHERE digest = $1 AND kind = $2")
            .bind(&digest)
            .bind(KeyKind::Client.as_str())
            .execute(&mut *tx)
            .await?;
        let settled = sqlx::query(
            "UPDATE auth_credit_leases SET settled_at = $2, \
             returned = CASE WHEN granted < $3 THEN granted ELSE $3 END \
             WHERE id = $1 AND settled_at IS NULL AND expires_at + $5 > $2 \
             AND COALESCE(service_id, '') = $4 \
             RETURNING returned, period_start",
        )
        .bind(id)
        .bind(now_ms)
        .bind(unused)
        .bind(service.unwrap_or_default())
        // A grace of one more TTL: the holder stops spending before the
        // lease's end and zeroes its count before it posts, so a late
        // return (a slow request, an instance whose clock runs ahead) is
        // still only credits nobody spent.
        .bind(i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = settled else {
            tx.rollback().await?;
            return Ok(0);
        };
        let returned: i64 = row.try_get("returned")?;
        let period: Option<i64> = row.try_get("period_start")?;
        let given = if returned > 0 {
            sqlx::query(
                "UPDATE auth_keys SET credits_remaining = credits_remaining + $3 \
                 WHERE digest = $1 AND kind = $2 AND credits_remaining IS NOT NULL \
                 AND COALESCE(credits_period_start, -1) = COALESCE($4, -1) \
                 AND NOT (credits_refill_amount IS NOT NULL \
                 AND $5 >= credits_period_start + credits_refill_secs) \
                 RETURNING credits_remaining",
            )
            .bind(&digest)
            .bind(KeyKind::Client.as_str())
            .bind(returned)
            .bind(period)
            .bind(secs(now))
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        } else {
            false
        };
        if !given && returned > 0 {
            // Settled, but the credits belonged to a period that ended:
            // recorded as nothing returned.
            sqlx::query("UPDATE auth_credit_leases SET returned = 0 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(if given {
            u64::try_from(returned).unwrap_or(0)
        } else {
            0
        })
    }
}

impl ServiceCredentials {
    /// Creates a service credential for the service `name`; the answer
    /// holds the plaintext (`sk_svc_…`), once.
    pub async fn create(&self, name: &str) -> Result<CreatedKey, Error> {
        check_name("service name", name)?;
        let row = NewRow {
            owner: name,
            scopes: "",
            rate: (None, None),
            expires_at: None,
            credits: CreditColumns::default(),
        };
        self.store.insert(KeyKind::Service, row).await
    }

    /// Every service credential (newest first), without keys or digests.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        self.store.list_kind(KeyKind::Service).await
    }

    /// One service credential by id.
    pub async fn get(&self, id: &str) -> Result<Option<KeyInfo>, Error> {
        self.store.get_kind(KeyKind::Service, id).await
    }

    /// Disables a service credential now; whether it existed.
    pub async fn disable(&self, id: &str) -> Result<bool, Error> {
        self.store.disable_kind(KeyKind::Service, id).await
    }

    /// Deletes a service credential; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        self.store.delete_kind(KeyKind::Service, id).await
    }

    /// A new credential for the same service; the old one stays valid for
    /// `overlap` (at most [`MAX_OVERLAP`]). `None` when there is no such
    /// credential.
    pub async fn rotate(&self, id: &str, overlap: Duration) -> Result<Option<CreatedKey>, Error> {
        self.store.rotate_kind(KeyKind::Service, id, overlap).await
    }

    /// The store these credentials live in.
    pub fn store(&self) -> &SqlKeyStore {
        &self.store
    }

    /// The same credentials, whose writes are recorded in the audit trail
    /// as made by `actor` (see [`SqlKeyStore::acting`]).
    pub fn acting(&self, actor: Actor) -> Self {
        Self {
            store: self.store.acting(actor),
        }
    }
}

/// Client keys only. A cache in front trusts its entries until their TTL:
/// writes reach it through [`SqlKeyStore::listen`] (and the writing
/// process's own invalidation), not through a round trip per hit.
impl KeyStore for SqlKeyStore {
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup> {
        self.lookup(KeyKind::Client, *digest)
    }
}

/// Service credentials only.
impl KeyStore for ServiceCredentials {
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup> {
        self.store.lookup(KeyKind::Service, *digest)
    }
}
