//! Signed webhooks, in the [Standard Webhooks](https://www.standardwebhooks.com)
//! format: what a key service signs its event deliveries with, and what a
//! receiver checks them with — written once, so the two cannot drift.
//!
//! A delivery carries three headers: `webhook-id` (the message id, the same
//! on every retry: a receiver de-duplicates on it), `webhook-timestamp`
//! (Unix seconds of this attempt) and `webhook-signature` (`v1,` and the
//! base64 HMAC-SHA256, keyed with the endpoint's secret, of
//! `{id}.{timestamp}.{body}`; several space-separated while a secret is
//! being changed). The body is a [`WebhookPayload`].
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use auth_core::webhook::{WebhookError, WebhookHeaders, WebhookSecret};
//!
//! // The secret, as the key service showed it once when the endpoint was made.
//! let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let body = br#"{"test": 2432232314}"#;
//! let headers = WebhookHeaders {
//!     id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
//!     timestamp: "1614265330",
//!     signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
//! };
//! let now = UNIX_EPOCH + Duration::from_secs(1614265330 + 10);
//! assert_eq!(secret.verify(&headers, body, now), Ok(()));
//!
//! // One byte changed, or an old delivery played again: refused.
//! assert_eq!(secret.verify(&headers, br#"{"test": 2432232315}"#, now), Err(WebhookError::Mismatch));
//! let later = now + Duration::from_secs(3600);
//! assert_eq!(secret.verify(&headers, body, later), Err(WebhookError::Stale));
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The message id header: the same on every attempt of one delivery.
pub const ID_HEADER: &str = "webhook-id";
/// The attempt's time header, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The signatures header: `v1,<base64>`, space-separated.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a delivery's timestamp may be from the receiver's clock, either
/// way: an older one is refused as a replay.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What a secret's text starts with.
const PREFIX: &str = "whsec_";
/// The bytes of a secret made by [`WebhookSecret::generate`].
const GENERATED_BYTES: usize = 32;
/// The bytes a parsed secret may have (the standard's examples have 24).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Signatures in one header, at most (a header is not a work list).
const MAX_SIGNATURES: usize = 8;

/// Why a delivery or a secret was refused: a receiver answers 400 or 401
/// whichever it is, and never says more to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A secret's text is not `whsec_` and base64 of 16 to 64 bytes.
    #[error("a webhook secret is `whsec_` and the base64 of 16 to 64 bytes")]
    MalformedSecret,
    /// The timestamp header is not Unix seconds.
    #[error("the webhook-timestamp header is not Unix seconds")]
    MalformedTimestamp,
    /// The timestamp is further than [`TOLERANCE`] from now.
    #[error("the webhook-timestamp is too far from now (a replay?)")]
    Stale,
    /// No `v1` signature in the header matches the body.
    #[error("no webhook signature matches")]
    Mismatch,
    /// The random number generator failed.
    #[error("no randomness for a webhook secret")]
    Random,
}

/// An endpoint's signing secret: `whsec_` and base64 (its `Debug` shows
/// nothing of it; its bytes are wiped when dropped).
#[derive(Clone)]
pub struct WebhookSecret {
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// A delivery's three headers, as the receiver got them.
#[derive(Clone, Copy, Debug)]
pub struct WebhookHeaders<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-timestamp`.
    pub timestamp: &'a str,
    /// `webhook-signature`.
    pub signature: &'a str,
}

impl WebhookSecret {
    /// A new random secret (32 bytes from the operating system).
    ///
    /// # Errors
    /// [`WebhookError::Random`] when the system has no randomness to give.
    pub fn generate() -> Result<Self, WebhookError> {
        let mut bytes = Zeroizing::new(vec![0u8; GENERATED_BYTES]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|_| WebhookError::Random)?;
        Ok(Self { bytes })
    }

    /// Reads a secret: `whsec_` (which the standard's libraries also let a
    /// secret go without) and the base64 of 16 to 64 bytes.
    ///
    /// # Errors
    /// [`WebhookError::MalformedSecret`].
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let b64 = text.trim().strip_prefix(PREFIX).unwrap_or(text.trim());
        let bytes = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|_| WebhookError::MalformedSecret)?,
        );
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(WebhookError::MalformedSecret);
        }
        Ok(Self { bytes })
    }

    /// The secret's text, `whsec_…`: for the one answer that shows it, and
    /// for the store that must keep it to sign with. Never log it.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{PREFIX}{}",
            STANDARD.encode(self.bytes.as_slice())
        ))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.bytes).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` header's value for a delivery of `body` as
    /// message `id`, attempted at `timestamp` (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mac = self.mac(id, &timestamp.to_string(), body);
        format!("v1,{}", STANDARD.encode(mac))
    }

    /// Checks a delivery as a receiver must, before reading its body as
    /// anything: the timestamp within [`TOLERANCE`] of `now`, then one of
    /// the header's `v1` signatures equal — in constant time — to the
    /// body's. Other versions are ignored.
    ///
    /// # Errors
    /// [`WebhookError::MalformedTimestamp`], [`WebhookError::Stale`] or
    /// [`WebhookError::Mismatch`].
    pub fn verify(
        &self,
        headers: &WebhookHeaders<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), WebhookError> {
        let sent: u64 = headers
            .timestamp
            .trim()
            .parse()
            .map_err(|_| WebhookError::MalformedTimestamp)?;
        let sent = UNIX_EPOCH
            .checked_add(Duration::from_secs(sent))
            .ok_or(WebhookError::MalformedTimestamp)?;
        let apart = now.duration_since(sent).unwrap_or_else(|e| e.duration());
        if apart > TOLERANCE {
            return Err(WebhookError::Stale);
        }
        let expected = self.mac(headers.id, headers.timestamp.trim(), body);
        let mut matched = subtle::Choice::from(0);
        for candidate in headers.signature.split_whitespace().take(MAX_SIGNATURES) {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            if let Ok(given) = STANDARD.decode(b64) {
                // Every candidate compared whichever matched (no early out).
                matched |= given.as_slice().ct_eq(&expected);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(WebhookError::Mismatch)
        }
    }
}

/// The events a key service sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventType {
    /// A key expires within the endpoint's number of days (once per key
    /// and expiry).
    KeyExpiring,
    /// A key's expiry has passed (once per key and expiry).
    KeyExpired,
    /// A key was disabled (by an admin, the CLI or a secret scanner's
    /// report).
    KeyDisabled,
    /// A key was rotated: a new key replaces it, it ends after the overlap.
    KeyRotated,
    /// A secret scanner reported the key leaked; it was disabled.
    KeyLeaked,
    /// A key's credits fell below the endpoint's threshold (once per refill
    /// period).
    CreditsLow,
}

impl EventType {
    /// Every event, in a fixed order.
    pub const ALL: [EventType; 6] = [
        Self::KeyExpiring,
        Self::KeyExpired,
        Self::KeyDisabled,
        Self::KeyRotated,
        Self::KeyLeaked,
        Self::CreditsLow,
    ];

    /// Its name on the wire: `key.expiring`, `key.expired`,
    /// `key.disabled`, `key.rotated`, `key.leaked`, `credits.low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyExpiring => "key.expiring",
            Self::KeyExpired => "key.expired",
            Self::KeyDisabled => "key.disabled",
            Self::KeyRotated => "key.rotated",
            Self::KeyLeaked => "key.leaked",
            Self::CreditsLow => "credits.low",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event name that is none of [`EventType::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event; the events are key.expiring, key.expired, key.disabled, key.rotated, key.leaked, credits.low"
)]
pub struct UnknownEvent;

impl FromStr for EventType {
    type Err = UnknownEvent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or(UnknownEvent)
    }
}

/// A delivery's body: `{"type", "timestamp", "data"}`, the standard's
/// shape. `data` describes the key — its id, kind, owner and what happened
/// — never the key or its digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// The event's name (see [`EventType::as_str`]).
    #[serde(rename = "type")]
    pub event: String,
    /// When the event was queued, RFC 3339 in UTC (see [`rfc3339`]).
    pub timestamp: String,
    /// What happened.
    pub data: serde_json::Value,
}

/// `at` as RFC 3339 in UTC to the millisecond: `2026-12-02T01:02:03.456Z`.
/// Times before 1970 show as 1970.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (H. Hinnant's algorithm), for days ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: u64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn signs_the_standard_webhooks_published_vector() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        assert_eq!(secret.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        // The prefix is optional, as in the standard's libraries.
        let bare = WebhookSecret::parse(&VECTOR_SECRET[6..]).unwrap();
        assert_eq!(bare.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        assert_eq!(secret.reveal().as_str(), VECTOR_SECRET);
    }

    #[test]
    fn verify_takes_any_matching_v1_signature_and_nothing_else() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        let check = |sig: &str, body: &[u8], id: &str, ts: &str, now: u64| {
            secret.verify(
                &WebhookHeaders {
                    id,
                    timestamp: ts,
                    signature: sig,
                },
                body,
                at(now),
            )
        };
        let ts = "1614265330";
        assert_eq!(
            check(VECTOR_SIG, VECTOR_BODY, VECTOR_ID, ts, VECTOR_TS),
            Ok(())
        );
        // Several signatures (a secret being changed): one match is enough.
        let several = format!("v1,bm9wZQ== v2,abc {VECTOR_SIG}");
        assert_eq!(
            check(&several, VECTOR_BODY, VECTOR_ID, ts, VECTOR_TS),
            Ok(())
        );
        // Another id, body, timestamp or version: refused.
        let refused = [
            check(VECTOR_SIG, VECTOR_BODY, "msg_other", ts, VECTOR_TS),
            check(VECTOR_SIG, b"{\"test\": 1}", VECTOR_ID, ts, VECTOR_TS),
            check(VECTOR_SIG, VECTOR_BODY, VECTOR_ID, "1614265331", VECTOR_TS),
            check(
                &VECTOR_SIG.replace("v1,", "v2,"),
                VECTOR_BODY,
                VECTOR_ID,
                ts,
                VECTOR_TS,
            ),
            check("", VECTOR_BODY, VECTOR_ID, ts, VECTOR_TS),
            check("v1,", VECTOR_BODY, VECTOR_ID, ts, VECTOR_TS),
            check("v1,not base64!", VECTOR_BODY, VECTOR_ID, ts, VECTOR_TS),
        ];
        for r in refused {
            assert_eq!(r, Err(WebhookError::Mismatch));
        }
        // Another secret: refused.
        let other = WebhookSecret::generate().unwrap();
        let headers = WebhookHeaders {
            id: VECTOR_ID,
            timestamp: ts,
            signature: VECTOR_SIG,
        };
        assert_eq!(
            other.verify(&headers, VECTOR_BODY, at(VECTOR_TS)),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_or_unreadable_is_refused() {
        let secret = WebhookSecret::parse(VECTOR_SECRET).unwrap();
        let headers = WebhookHeaders {
            id: VECTOR_ID,
            timestamp: "1614265330",
            signature: VECTOR_SIG,
        };
        let tol = TOLERANCE.as_secs();
        assert_eq!(
            secret.verify(&headers, VECTOR_BODY, at(VECTOR_TS + tol)),
            Ok(())
        );
        assert_eq!(
            secret.verify(&headers, VECTOR_BODY, at(VECTOR_TS - tol)),
            Ok(())
        );
        for now in [VECTOR_TS + tol + 1, VECTOR_TS - tol - 1] {
            assert_eq!(
                secret.verify(&headers, VECTOR_BODY, at(now)),
                Err(WebhookError::Stale)
            );
        }
        for ts in ["", "-1", "1.5", "abc", "99999999999999999999999"] {
            let h = WebhookHeaders {
                timestamp: ts,
                ..headers
            };
            assert_eq!(
                secret.verify(&h, VECTOR_BODY, at(VECTOR_TS)),
                Err(WebhookError::MalformedTimestamp),
                "{ts}"
            );
        }
    }

    #[test]
    fn secrets_are_checked_redacted_and_random() {
        for bad in [
            "",
            "whsec_",
            "whsec_!!!!",
            "whsec_c2hvcnQ=",
            &format!("whsec_{}", STANDARD.encode([0u8; 65])),
        ] {
            assert_eq!(
                WebhookSecret::parse(bad).unwrap_err(),
                WebhookError::MalformedSecret,
                "{bad}"
            );
        }
        let a = WebhookSecret::generate().unwrap();
        let b = WebhookSecret::generate().unwrap();
        assert_ne!(a.reveal(), b.reveal());
        assert!(a.reveal().starts_with("whsec_"));
        assert_eq!(
            WebhookSecret::parse(&a.reveal()).unwrap().reveal(),
            a.reveal()
        );
        assert_eq!(format!("{a:?}"), "WebhookSecret(…)");
        assert!(!format!("{a:?}").contains(&a.reveal()[6..12]));
    }

    #[test]
    fn event_names_round_trip() {
        for e in EventType::ALL {
            assert_eq!(e.as_str().parse::<EventType>(), Ok(e));
        }
        assert_eq!("key.created".parse::<EventType>(), Err(UnknownEvent));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(VECTOR_TS)), "2021-02-25T15:02:10.000Z");
        // A leap day, and a millisecond.
        assert_eq!(
            rfc3339(at(1_709_164_800) + Duration::from_millis(7)),
            "2024-02-29T00:00:00.007Z"
        );
        assert_eq!(rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }
}
