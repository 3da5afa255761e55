//! The key-service protocol, written once: what a service sends to a central
//! key service's validate endpoint and what it gets back. auth-server answers
//! with these types and auth-remote reads them, so the two cannot drift.
//!
//! Wire-compatible with the seed services' client, which sends
//! `{"apiKey", "scope"}` and reads `valid`, `userId`, `scopes`,
//! `rateLimit.requests`, `rateLimit.window` and `error`. On top of that every
//! answer carries a [`Code`]: a client decides from the code alone, never by
//! searching the `error` text, and an answer whose code it cannot read, or
//! whose code disagrees with `valid`, is *unavailable* — never allowed.
//!
//! ```
//! use auth_core::protocol::{Code, ValidateResponse, Verdict};
//!
//! let answer: ValidateResponse = serde_json::from_str(
//!     r#"{"valid":true,"code":"valid","userId":"svc-a","scopes":["stt"]}"#,
//! ).unwrap();
//! assert!(matches!(answer.verdict(), Ok(Verdict::Valid)));
//!
//! // Another key service's free text decides nothing.
//! let odd = r#"{"valid":false,"error":"key not valid for this scope"}"#;
//! assert!(serde_json::from_str::<ValidateResponse>(odd).is_err());
//!
//! // A code that contradicts `valid` is not an answer.
//! let liar: ValidateResponse =
//!     serde_json::from_str(r#"{"valid":true,"code":"disabled"}"#).unwrap();
//! assert!(liar.verdict().is_err());
//! assert_eq!(ValidateResponse::refusal(Code::Disabled).error.as_deref(), Some("API key is disabled"));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The validate endpoint's path on a key service.
pub const VALIDATE_PATH: &str = "/api/v1/api-keys/validate";

/// The header a service sends its own credential in.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// The changes stream's path on a key service: Server-Sent Events for
/// services holding a service credential (see [`ChangeEvent`]).
pub const EVENTS_PATH: &str = "/api/v1/api-keys/events";

/// One event of the changes stream, as the SSE `event:` name and its `data:`
/// (JSON). Every event carries the stream's sequence number as its SSE `id:`
/// too, which a client sends back as `Last-Event-ID` when it reconnects.
///
/// - `ready` — first on every connection: the stream is live from `seq` on
///   (after any events replayed for `Last-Event-ID`).
/// - `key` — the key with this SHA-256 digest changed (disabled, deleted,
///   rotated out, its scopes, limit or expiry changed): drop what is cached
///   for it. Sent in commit order, from every instance of the key service.
/// - `reset` — what was missed cannot be replayed: drop every cached grant.
///
/// ```
/// use auth_core::protocol::ChangeEvent;
///
/// let e = ChangeEvent::Key { seq: 7, digest: "ab".repeat(32) };
/// assert_eq!(e.name(), "key");
/// assert_eq!(e.seq(), 7);
/// let back = ChangeEvent::parse("key", &e.data()).unwrap();
/// assert_eq!(back, e);
/// assert!(ChangeEvent::parse("key", "{}").is_none());
/// assert!(ChangeEvent::parse("party", &e.data()).is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeEvent {
    /// The stream is live from `seq` on.
    Ready {
        /// The last sequence number already sent or replayed.
        seq: u64,
    },
    /// A key changed.
    Key {
        /// Its sequence number.
        seq: u64,
        /// The key's SHA-256 digest, lowercase hex (never the key).
        digest: String,
    },
    /// Drop every cached grant; the stream goes on from `seq`.
    Reset {
        /// The sequence number the stream goes on from.
        seq: u64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    seq: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChanged {
    seq: u64,
    digest: String,
}

impl ChangeEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "ready",
            Self::Key { .. } => "key",
            Self::Reset { .. } => "reset",
        }
    }

    /// The sequence number (also the SSE `id:`).
    pub fn seq(&self) -> u64 {
        match self {
            Self::Ready { seq } | Self::Key { seq, .. } | Self::Reset { seq } => *seq,
        }
    }

    /// The SSE `data:` line's JSON.
    pub fn data(&self) -> String {
        let json = match self {
            Self::Ready { seq } | Self::Reset { seq } => {
                serde_json::to_string(&Position { seq: *seq })
            }
            Self::Key { seq, digest } => serde_json::to_string(&KeyChanged {
                seq: *seq,
                digest: digest.clone(),
            }),
        };
        json.unwrap_or_default()
    }

    /// An event from its SSE name and data; `None` for anything else (a
    /// client ignores unknown event names, and treats unreadable data of a
    /// known one as a broken stream).
    pub fn parse(name: &str, data: &str) -> Option<Self> {
        match name {
            "ready" => serde_json::from_str::<Position>(data)
                .ok()
                .map(|p| Self::Ready { seq: p.seq }),
            "reset" => serde_json::from_str::<Position>(data)
                .ok()
                .map(|p| Self::Reset { seq: p.seq }),
            "key" => serde_json::from_str::<KeyChanged>(data)
                .ok()
                .filter(|k| k.digest.len() == 64 && k.digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|k| Self::Key {
                    seq: k.seq,
                    digest: k.digest,
                }),
            _ => None,
        }
    }
}

/// A validate request: the key to check and, optionally, the scope the
/// calling route needs. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ValidateRequest {
    /// The client's key, as the client sent it.
    pub api_key: String,
    /// The scope the route needs; absent when it needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// How many of the key's credits this request spends (absent: 1; 0
    /// checks without spending; at most [`MAX_COST`]). Keys without
    /// credits ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    /// Asks for up to this many of the key's credits to be leased to the
    /// calling service for a short time, so that it can spend them without
    /// asking per request (1 ..= [`MAX_LEASE`]; keys with credits only —
    /// others answer as without it). This request's `cost` is taken first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u32>,
}

/// The most credits one validate request may spend.
pub const MAX_COST: u32 = 1_000_000;

/// The most credits a service may ask to lease at once.
pub const MAX_LEASE: u32 = 10_000;

/// Where a service returns what it did not spend of a lease.
pub const LEASE_RETURN_PATH: &str = "/api/v1/api-keys/lease/return";

/// Credits leased to the calling service: its to spend, one per request,
/// until they run out or `ttlMs` has passed, whichever comes first; what is
/// left it returns ([`ReturnLease`]) before then.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The lease's id, for returning it.
    pub id: String,
    /// Credits leased (this request's cost already taken).
    pub credits: u64,
    /// How long the lease may be spent from, in milliseconds from the
    /// answer (relative: the two clocks need not agree).
    pub ttl_ms: u64,
}

/// A service returning what it did not spend of a lease
/// (`POST` [`LEASE_RETURN_PATH`]). Accepted once per lease, before it ends,
/// for at most what was leased; the credits go back to the key unless a
/// refill came meanwhile (they belonged to the period that ended).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReturnLease {
    /// The lease's id.
    pub lease_id: String,
    /// Credits not spent.
    pub unused: u64,
}

// A lease's id is what returns it: never shown.
impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &"<redacted>")
            .field("credits", &self.credits)
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

impl fmt::Debug for ReturnLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturnLease")
            .field("lease_id", &"<redacted>")
            .field("unused", &self.unused)
            .finish()
    }
}

/// The answer to a [`ReturnLease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LeaseReturned {
    /// Credits given back to the key (0: too late, already returned, or a
    /// refill came meanwhile).
    pub returned: u64,
}

/// Where a service reports the decisions it made about keys without asking
/// the key service (answers from its cache, credits spent from a lease,
/// callers served by another caller's call): `POST` a [`UsageReport`].
pub const USAGE_PATH: &str = "/api/v1/api-keys/usage";

/// The most entries one [`UsageReport`] may carry (a service with more
/// sends several).
pub const MAX_USAGE_ENTRIES: usize = 5_000;

/// The largest count (or, for `valid`, the largest magnitude) one entry
/// may carry for one code.
pub const MAX_USAGE_COUNT: u64 = 1_000_000_000;

/// Decisions a service made about keys on its own, counted per key, hour
/// and code, sent in one batch. The key service adds them to its own
/// counts of what it answered. Keys are named by their SHA-256 digest
/// (lowercase hex), never by the key.
///
/// A grant the service's guard refused afterwards (over its rate limit,
/// or a route's scope the key lacks) moves one count from `valid` to that
/// code — so `valid` may be negative when the grant itself was the key
/// service's answer, counted there.
///
/// ```
/// use auth_core::protocol::{UsageCounts, UsageEntry, UsageReport};
///
/// let report = UsageReport {
///     entries: vec![UsageEntry {
///         digest: "ab".repeat(32),
///         hour: 1_796_083_200,
///         counts: UsageCounts { valid: 41, rate_limited: 1, ..UsageCounts::default() },
///     }],
/// };
/// let text = serde_json::to_string(&report).unwrap();
/// assert!(text.contains(r#""counts":{"valid":41,"rate_limited":1}"#), "{text}");
/// assert!(report.check().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// One entry per key and hour (at most [`MAX_USAGE_ENTRIES`]).
    pub entries: Vec<UsageEntry>,
}

/// One key's decisions in one hour. Its `Debug` shows the digest's first
/// 8 hex digits only (as `Digest`'s does).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageEntry {
    /// The key's SHA-256 digest, 64 lowercase hex digits.
    pub digest: String,
    /// The hour's start, in Unix seconds (a multiple of 3600).
    pub hour: u64,
    /// Decisions by code.
    pub counts: UsageCounts,
}

impl fmt::Debug for UsageEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.digest.get(..8).unwrap_or("");
        f.debug_struct("UsageEntry")
            .field("digest", &format_args!("{shown}…"))
            .field("hour", &self.hour)
            .field("counts", &self.counts)
            .finish()
    }
}

/// Decisions by code; codes with none are left out on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageCounts {
    /// Grants (negative: grants counted by the key service that the
    /// service's guard then refused, moved to another code here).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub valid: i64,
    /// Refused: the key is disabled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disabled: u64,
    /// Refused: the key has expired.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: u64,
    /// Refused: the key lacks the scope asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub insufficient_scope: u64,
    /// Refused: over the key's rate limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limited: u64,
    /// Refused: out of credits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage_exceeded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

impl UsageCounts {
    /// The counted codes, in a fixed order, with their counts (`valid`
    /// signed).
    pub fn by_code(&self) -> [(Code, i64); 6] {
        let n = |c: u64| i64::try_from(c).unwrap_or(i64::MAX);
        [
            (Code::Valid, self.valid),
            (Code::Disabled, n(self.disabled)),
            (Code::Expired, n(self.expired)),
            (Code::InsufficientScope, n(self.insufficient_scope)),
            (Code::RateLimited, n(self.rate_limited)),
            (Code::UsageExceeded, n(self.usage_exceeded)),
        ]
    }

    /// Adds `n` to `code`'s count (`Code::Invalid` is not counted: no
    /// key to count it for); saturating.
    pub fn add(&mut self, code: Code, n: i64) {
        let up = |c: &mut u64| *c = c.saturating_add(n.max(0).unsigned_abs());
        match code {
            Code::Valid => self.valid = self.valid.saturating_add(n),
            Code::Disabled => up(&mut self.disabled),
            Code::Expired => up(&mut self.expired),
            Code::InsufficientScope => up(&mut self.insufficient_scope),
            Code::RateLimited => up(&mut self.rate_limited),
            Code::UsageExceeded => up(&mut self.usage_exceeded),
            Code::Invalid => {}
        }
    }

    /// Whether every count is 0.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a [`UsageReport`] is refused (400), before anything is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadUsage {
    /// More than [`MAX_USAGE_ENTRIES`] entries.
    #[error("a usage report carries at most 5000 entries")]
    TooManyEntries,
    /// A digest that is not 64 lowercase hex digits.
    #[error("a usage entry's digest must be 64 lowercase hex digits")]
    Digest,
    /// An hour that is not a multiple of 3600, or out of range.
    #[error("a usage entry's hour must be Unix seconds of an hour's start")]
    Hour,
    /// A count over [`MAX_USAGE_COUNT`] in magnitude.
    #[error("a usage count must be at most 1000000000")]
    Count,
}

/// The latest hour a report may name: the year 9999 (as expiries).
const MAX_HOUR: u64 = 253_402_300_799;

impl UsageReport {
    /// Checks every entry's range; the key service refuses the whole
    /// report on the first entry out of range.
    pub fn check(&self) -> Result<(), BadUsage> {
        if self.entries.len() > MAX_USAGE_ENTRIES {
            return Err(BadUsage::TooManyEntries);
        }
        for e in &self.entries {
            let hex = e.digest.as_bytes();
            if hex.len() != 64 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(BadUsage::Digest);
            }
            if e.hour % 3600 != 0 || e.hour > MAX_HOUR {
                return Err(BadUsage::Hour);
            }
            if e.counts
                .by_code()
                .iter()
                .any(|(_, n)| n.unsigned_abs() > MAX_USAGE_COUNT)
            {
                return Err(BadUsage::Count);
            }
        }
        Ok(())
    }
}

/// The answer to a [`UsageReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UsageAccepted {
    /// Entries taken (all of them; entries of keys the service does not
    /// know are dropped when it writes them).
    pub accepted: u64,
}

impl fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateRequest")
            .field("api_key", &"<redacted>")
            .field("scope", &self.scope)
            .field("cost", &self.cost)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Why a key is or is not valid: the one field a client decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The key is valid (for the scope asked, if any).
    Valid,
    /// Not a key the service knows (or not a client key at all).
    Invalid,
    /// A known key past its expiry.
    Expired,
    /// A known key that was disabled.
    Disabled,
    /// A valid key without the scope asked for.
    InsufficientScope,
    /// A valid key over the limit the key service enforces itself.
    RateLimited,
    /// A valid key without the credits the request costs (until its next
    /// refill, if it has one: `retryAfter`).
    UsageExceeded,
}

impl Code {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited => "rate_limited",
            Self::UsageExceeded => "usage_exceeded",
        }
    }

    /// The fixed `error` text that goes with a refusal (the seed's clients
    /// show it); `None` for [`Code::Valid`].
    pub fn message(self) -> Option<&'static str> {
        match self {
            Self::Valid => None,
            Self::Invalid => Some("invalid API key"),
            Self::Expired => Some("API key has expired"),
            Self::Disabled => Some("API key is disabled"),
            Self::InsufficientScope => Some("API key does not have the required scope"),
            Self::RateLimited => Some("API key is over its rate limit"),
            Self::UsageExceeded => Some("API key has no credits left"),
        }
    }
}

/// A key's own rate limit: `requests` per `window` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window, in seconds.
    pub window: u64,
}

/// A validate answer. Absent fields are left out on the wire (the seed's
/// client reads a missing `rateLimit` as its default, a `null` as an error).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ValidateResponse {
    /// Whether the key is valid for the scope asked; always agrees with
    /// `code` (see [`verdict`](Self::verdict)).
    pub valid: bool,
    /// Why.
    pub code: Code,
    /// The key's owner (on valid and insufficient-scope answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The key's scopes (on valid answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The key's own rate limit, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// When the key expires, in Unix seconds, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// A short text for people; never decides anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The changes stream's position this answer reflects: every change up
    /// to it had reached the answering instance. A client that has seen a
    /// later change on the stream does not cache the answer (it may come
    /// from an instance that has not heard of that change yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The key's credits left after this request, when it has credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_remaining: Option<u64>,
    /// On `usage_exceeded`: seconds until the key's next refill (absent
    /// when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Credits leased to the calling service (when it asked for a lease
    /// and the key has credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// What a well-formed answer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: `userId`, `scopes`, `rateLimit` and `expiresAt` describe it.
    Valid,
    /// Not valid, for this reason (never [`Code::Valid`]).
    Refused(Code),
}

/// An answer that is not one: its `code` contradicts `valid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key-service answer is inconsistent: valid={valid} with code `{code}`")]
pub struct Inconsistent {
    /// The answer's `valid`.
    pub valid: bool,
    /// The answer's `code`.
    pub code: &'static str,
}

impl ValidateResponse {
    /// A valid answer for `user_id` with `scopes`.
    pub fn valid(user_id: impl Into<String>, scopes: Vec<String>) -> Self {
        Self {
            valid: true,
            code: Code::Valid,
            user_id: Some(user_id.into()),
            scopes: Some(scopes),
            rate_limit: None,
            expires_at: None,
            error: None,
            seq: None,
            credits_remaining: None,
            retry_after: None,
            lease: None,
        }
    }

    /// A refusal for `code`, with its fixed message. `Code::Valid` makes an
    /// answer whose [`verdict`](Self::verdict) is an error: do not.
    pub fn refusal(code: Code) -> Self {
        Self {
            valid: false,
            code,
            user_id: None,
            scopes: None,
            rate_limit: None,
            expires_at: None,
            error: code.message().map(str::to_owned),
            seq: None,
            credits_remaining: None,
            retry_after: None,
            lease: None,
        }
    }

    /// What the answer says, or [`Inconsistent`] when `valid` and `code`
    /// disagree (such an answer is unavailable to a client, never valid).
    pub fn verdict(&self) -> Result<Verdict, Inconsistent> {
        match (self.valid, self.code) {
            (true, Code::Valid) => Ok(Verdict::Valid),
            (false, code) if code != Code::Valid => Ok(Verdict::Refused(code)),
            (valid, code) => Err(Inconsistent {
                valid,
                code: code.as_str(),
            }),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_unreadable() {
        for code in [
            Code::Valid,
            Code::Invalid,
            Code::Expired,
            Code::Disabled,
            Code::InsufficientScope,
            Code::RateLimited,
            Code::UsageExceeded,
        ] {
            let text = serde_json::to_string(&code).unwrap();
            assert_eq!(text, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<Code>(&text).unwrap(), code);
        }
        assert!(serde_json::from_str::<ValidateResponse>(r#"{"valid":true}"#).is_err());
        assert!(
            serde_json::from_str::<ValidateResponse>(r#"{"valid":true,"code":"maybe"}"#).is_err()
        );
    }

    #[test]
    fn absent_fields_are_left_out_for_the_seeds_client() {
        let text = serde_json::to_string(&ValidateResponse::refusal(Code::Invalid)).unwrap();
        assert_eq!(
            text,
            r#"{"valid":false,"code":"invalid","error":"invalid API key"}"#
        );
        let mut ok = ValidateResponse::valid("svc-a", vec!["stt".into()]);
        ok.rate_limit = Some(RateLimit {
            requests: 60,
            window: 60,
        });
        let v: serde_json::Value = serde_json::to_value(&ok).unwrap();
        assert_eq!(v["rateLimit"]["requests"], 60);
        assert_eq!(v["rateLimit"]["window"], 60);
        assert_eq!(v["userId"], "svc-a");
        assert!(v.get("error").is_none() && v.get("expiresAt").is_none());
    }

    #[test]
    fn the_request_reads_the_seeds_body_and_hides_the_key() {
        let r: ValidateRequest =
            serde_json::from_str(r#"{"apiKey":"sk_live_secret","scope":"stt"}"#).unwrap();
        assert_eq!(r.scope.as_deref(), Some("stt"));
        assert_eq!(r.cost, None, "absent: the server spends 1");
        let lease = Lease {
            id: "ls_0123456789abcdef0123456789abcdef".into(),
            credits: 5,
            ttl_ms: 10_000,
        };
        let back = ReturnLease {
            lease_id: lease.id.clone(),
            unused: 5,
        };
        let mut answer = ValidateResponse::valid("u", vec![]);
        answer.lease = Some(lease.clone());
        for shown in [
            format!("{lease:?}"),
            format!("{back:?}"),
            format!("{answer:?}"),
        ] {
            assert!(!shown.contains("0123456789abcdef"), "{shown}");
        }
        assert!(!format!("{r:?}").contains("sk_live_secret"));
        let r: ValidateRequest = serde_json::from_str(r#"{"apiKey":"k","cost":0}"#).unwrap();
        assert_eq!(r.cost, Some(0));
        assert!(serde_json::from_str::<ValidateRequest>(r#"{"apiKey":"k","cost":-1}"#).is_err());
    }

    #[test]
    fn usage_reports_are_range_checked_whole() {
        let entry = |digest: String, hour: u64, valid: i64| UsageEntry {
            digest,
            hour,
            counts: UsageCounts {
                valid,
                ..UsageCounts::default()
            },
        };
        let ok = |e: UsageEntry| UsageReport { entries: vec![e] }.check();
        let d = "0f".repeat(32);
        assert_eq!(ok(entry(d.clone(), 3600, -5)), Ok(()));
        assert_eq!(ok(entry("0F".repeat(32), 3600, 1)), Err(BadUsage::Digest));
        assert_eq!(ok(entry("0f".repeat(31), 3600, 1)), Err(BadUsage::Digest));
        assert_eq!(ok(entry(d.clone(), 3601, 1)), Err(BadUsage::Hour));
        assert_eq!(
            ok(entry(d.clone(), 253_402_304_400, 1)),
            Err(BadUsage::Hour)
        );
        assert_eq!(
            ok(entry(d.clone(), 0, -1_000_000_001)),
            Err(BadUsage::Count)
        );
        let mut big = entry(d.clone(), 0, 0);
        big.counts.disabled = MAX_USAGE_COUNT + 1;
        assert_eq!(ok(big), Err(BadUsage::Count));
        let many = UsageReport {
            entries: vec![entry(d, 0, 1); MAX_USAGE_ENTRIES + 1],
        };
        assert_eq!(many.check(), Err(BadUsage::TooManyEntries));
        // Unknown codes or fields are no report.
        let odd = r#"{"entries":[{"digest":"x","hour":0,"counts":{"invalid":1}}]}"#;
        assert!(serde_json::from_str::<UsageReport>(odd).is_err());
        let shown = format!("{:?}", entry("0f".repeat(32), 0, 1));
        assert!(
            shown.contains("0f0f0f0f…") && !shown.contains(&"0f".repeat(5)),
            "{shown}"
        );
        let mut c = UsageCounts::default();
        c.add(Code::Invalid, 3);
        assert!(c.is_empty(), "unknown keys are not counted");
        c.add(Code::Valid, -2);
        c.add(Code::RateLimited, 2);
        assert_eq!(c.valid, -2);
        assert_eq!(c.rate_limited, 2);
    }

    #[test]
    fn verdicts() {
        let mut a = ValidateResponse::refusal(Code::InsufficientScope);
        assert_eq!(a.verdict(), Ok(Verdict::Refused(Code::InsufficientScope)));
        a.valid = true;
        assert!(a.verdict().is_err());
        let mut b = ValidateResponse::valid("u", vec![]);
        b.valid = false;
        assert!(b.verdict().is_err());
    }
}
