//! One rejection model for every framework (RFC 6750, RFC 9110): status,
//! headers and a small JSON body. Adapters copy these into their response
//! type and decide nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{ExtractError, RateStatus, VerifyError};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// No credential (401, challenge without an error parameter).
    Missing,
    /// A malformed credential, or one sent more than once (400,
    /// `invalid_request`).
    Malformed(ExtractError),
    /// Unknown, expired or revoked (401, `invalid_token`).
    Invalid(VerifyError),
    /// Valid, but lacking the route's scope (403, `insufficient_scope`).
    InsufficientScope,
    /// Over the principal's rate limit (429).
    RateLimited,
    /// A backend could not decide (503).
    Unavailable,
    /// The guard is not initialised yet (503).
    NotReady,
}

impl RejectionKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Self::Missing | Self::Invalid(_) => 401,
            Self::Malformed(_) => 400,
            Self::InsufficientScope => 403,
            Self::RateLimited => 429,
            Self::Unavailable | Self::NotReady => 503,
        }
    }

    /// The `error` code of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_credential",
            Self::Malformed(_) => "invalid_request",
            Self::Invalid(_) => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::NotReady => "not_ready",
        }
    }

    /// The `message` of the JSON body: fixed text, never request data.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "authentication required: send X-Api-Key or Authorization: Bearer",
            Self::Malformed(e) => e.describe(),
            // One message for unknown, expired and revoked: the body must not
            // help anyone sort keys.
            Self::Invalid(_) => "the credential is invalid, expired or revoked",
            Self::InsufficientScope => "the credential lacks the scope this route requires",
            Self::RateLimited => "rate limit exceeded; retry later",
            Self::Unavailable => "authentication is temporarily unavailable; retry later",
            Self::NotReady => "the service is starting; retry later",
        }
    }

    /// The RFC 6750 `error` parameter of the challenge, if any.
    fn challenge_error(self) -> Option<&'static str> {
        match self {
            Self::Missing => Some(""),
            Self::Malformed(_) => Some("invalid_request"),
            Self::Invalid(_) => Some("invalid_token"),
            Self::InsufficientScope => Some("insufficient_scope"),
            _ => None,
        }
    }

    /// The name of the outcome for logs and counters.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Invalid(_) => "invalid",
            Self::InsufficientScope => "forbidden",
            Self::RateLimited => "limited",
            Self::Unavailable => "unavailable",
            Self::NotReady => "not_ready",
        }
    }
}

/// A refused request: everything an adapter needs to answer it.
///
/// ```
/// use auth_core::{Rejection, RejectionKind};
///
/// let r = Rejection::new(RejectionKind::Missing, "api".into());
/// assert_eq!(r.status(), 401);
/// assert_eq!(r.headers()[0], ("www-authenticate", "Bearer realm=\"api\"".to_owned()));
/// assert_eq!(
///     r.body(),
///     r#"{"error":"missing_credential","message":"authentication required: send X-Api-Key or Authorization: Bearer"}"#
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    realm: Arc<str>,
    scope: Option<Arc<str>>,
    retry_after: Option<Duration>,
    rate: Option<RateStatus>,
}

/// The `Content-Type` of [`Rejection::body`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

impl Rejection {
    /// A rejection of this kind for `realm` (the realm must be a valid
    /// quoted-string; guards check it when built).
    pub fn new(kind: RejectionKind, realm: Arc<str>) -> Self {
        Self {
            kind,
            realm,
            scope: None,
            retry_after: None,
            rate: None,
        }
    }

    /// Names the missing scope (for `insufficient_scope`).
    pub fn with_scope(mut self, scope: Arc<str>) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Sets `Retry-After` (rounded up to whole seconds, at least 1).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds the `RateLimit` / `RateLimit-Policy` headers.
    pub fn with_rate(mut self, rate: RateStatus) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Why.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The response headers, lowercase names. `content-type` is included.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(5);
        if let Some(error) = self.kind.challenge_error() {
            let mut challenge = format!("Bearer realm=\"{}\"", self.realm);
            if !error.is_empty() {
                challenge.push_str(&format!(", error=\"{error}\""));
            }
            if let (RejectionKind::InsufficientScope, Some(scope)) = (self.kind, &self.scope) {
                challenge.push_str(&format!(", scope=\"{scope}\""));
            }
            headers.push(("www-authenticate", challenge));
        }
        if let Some(after) = self.retry_after {
            headers.push(("retry-after", retry_after_secs(after).to_string()));
        }
        if let Some(rate) = &self.rate {
            headers.extend(rate_limit_headers(rate));
        }
        headers.push(("content-type", JSON_CONTENT_TYPE.to_owned()));
        headers.push(("cache-control", "no-store".to_owned()));
        headers
    }

    /// The JSON body: `{"error": "<code>", "message": "<text>"}`, plus
    /// `"scope"` for `insufficient_scope`. Never contains the credential.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"",
            self.kind.code(),
            self.kind.message()
        );
        if let (RejectionKind::InsufficientScope, Some(scope)) = (self.kind, &self.scope) {
            body.push_str(",\"scope\":\"");
            push_json_escaped(&mut body, scope);
            body.push('"');
        }
        body.push('}');
        body
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("kind", &self.kind)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            self.kind.code(),
            self.kind.message()
        )
    }
}

impl std::error::Error for Rejection {}

/// Whole seconds, rounded up, at least 1 (`Retry-After: 0` invites a storm).
pub fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

/// The IETF draft `RateLimit-Policy` and `RateLimit` headers for `rate`
/// (draft-ietf-httpapi-ratelimit-headers, structured-field form).
pub fn rate_limit_headers(rate: &RateStatus) -> [(&'static str, String); 2] {
    let window = retry_after_secs(rate.policy.window);
    let reset = rate.reset.as_secs() + u64::from(rate.reset.subsec_nanos() > 0);
    [
        (
            "ratelimit-policy",
            format!("\"default\";q={};w={window}", rate.policy.requests),
        ),
        (
            "ratelimit",
            format!("\"default\";r={};t={reset}", rate.remaining),
        ),
    ]
}

/// Whether `s` can stand inside a quoted-string of a challenge and in a JSON
/// string without escaping: visible ASCII except `"` and `\`.
pub(crate) fn is_plain_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RateLimitPolicy;

    fn header(r: &Rejection, name: &str) -> Option<String> {
        r.headers()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn statuses_and_challenges() {
        let realm: Arc<str> = "api".into();
        let cases = [
            (RejectionKind::Missing, 401, Some("Bearer realm=\"api\"")),
            (
                RejectionKind::Invalid(VerifyError::Expired),
                401,
                Some("Bearer realm=\"api\", error=\"invalid_token\""),
            ),
            (
                RejectionKind::Malformed(ExtractError::Duplicate),
                400,
                Some("Bearer realm=\"api\", error=\"invalid_request\""),
            ),
            (RejectionKind::RateLimited, 429, None),
            (RejectionKind::Unavailable, 503, None),
            (RejectionKind::NotReady, 503, None),
        ];
        for (kind, status, challenge) in cases {
            let r = Rejection::new(kind, realm.clone());
            assert_eq!(r.status(), status, "{kind:?}");
            assert_eq!(header(&r, "www-authenticate").as_deref(), challenge);
            assert_eq!(header(&r, "content-type").unwrap(), "application/json");
        }
        let r = Rejection::new(RejectionKind::InsufficientScope, realm).with_scope("stt".into());
        assert_eq!(r.status(), 403);
        assert_eq!(
            header(&r, "www-authenticate").unwrap(),
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"stt\""
        );
        assert_eq!(
            r.body(),
            r#"{"error":"insufficient_scope","message":"the credential lacks the scope this route requires","scope":"stt"}"#
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
        let r = Rejection::new(RejectionKind::Unavailable, "x".into())
            .with_retry_after(Duration::from_millis(2500));
        assert_eq!(header(&r, "retry-after").unwrap(), "3");
    }

    #[test]
    fn rate_limit_headers_shape() {
        let rate = RateStatus {
            policy: RateLimitPolicy::new(60, Duration::from_secs(60)),
            remaining: 0,
            reset: Duration::from_millis(1500),
        };
        let r = Rejection::new(RejectionKind::RateLimited, "x".into())
            .with_retry_after(Duration::from_secs(1))
            .with_rate(rate);
        assert_eq!(
            header(&r, "ratelimit-policy").unwrap(),
            "\"default\";q=60;w=60"
        );
        assert_eq!(header(&r, "ratelimit").unwrap(), "\"default\";r=0;t=2");
        assert_eq!(header(&r, "retry-after").unwrap(), "1");
    }

    #[test]
    fn bodies_are_valid_json_with_fixed_codes() {
        for kind in [
            RejectionKind::Missing,
            RejectionKind::Malformed(ExtractError::NotVisibleAscii),
            RejectionKind::Invalid(VerifyError::Invalid),
            RejectionKind::RateLimited,
            RejectionKind::Unavailable,
            RejectionKind::NotReady,
        ] {
            let body = Rejection::new(kind, "x".into()).body();
            assert!(body.starts_with(&format!("{{\"error\":\"{}\"", kind.code())));
            assert!(!body.contains('\n'));
            assert_eq!(body.matches('"').count() % 2, 0);
        }
        let mut s = String::new();
        push_json_escaped(&mut s, "a\"b\\c\n");
        assert_eq!(s, "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn plain_tokens() {
        assert!(is_plain_token("api"));
        assert!(is_plain_token("my realm"));
        assert!(!is_plain_token(""));
        assert!(!is_plain_token("a\"b"));
        assert!(!is_plain_token("a\\b"));
        assert!(!is_plain_token("a\nb"));
    }
}
