//! One rejection model for every framework (RFC 6750, RFC 9110): status,
//! headers and a small JSON body. Adapters copy these into their response
//! type and decide nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{CredentialSources, ExtractError, RateStatus, VerifyError};

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
    /// Out of usage credits (429 `usage_exceeded`).
    UsageExceeded,
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
            Self::RateLimited | Self::UsageExceeded => 429,
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
            Self::UsageExceeded => "usage_exceeded",
            Self::Unavailable => "unavailable",
            Self::NotReady => "not_ready",
        }
    }

    /// The `message` of the JSON body: fixed text, never request data. A
    /// guard's rejection for [`Missing`](Self::Missing) also names the
    /// headers it reads ([`Rejection::message`]).
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "authentication required",
            Self::Malformed(e) => e.describe(),
            // One message for unknown, expired and revoked: the body must not
            // help anyone sort keys.
            Self::Invalid(_) => "the credential is invalid, expired or revoked",
            Self::InsufficientScope => "the credential lacks the scope this route requires",
            Self::RateLimited => "rate limit exceeded; retry later",
            Self::UsageExceeded => "usage credits exhausted; retry after the next refill",
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
            Self::UsageExceeded => "usage_exceeded",
            Self::Unavailable => "unavailable",
            Self::NotReady => "not_ready",
        }
    }
}

/// How a guard asks for a credential: its realm and the sources it reads.
/// Built once per guard and shared by its rejections, so that a 401 names
/// exactly the headers that guard accepts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    realm: Box<str>,
    /// The key headers, as written in messages (`X-Service-Token`).
    headers: Vec<String>,
    bearer: bool,
    /// The message of a 401 for a missing credential.
    missing: String,
}

impl Challenge {
    /// The challenge of a guard with this realm and these sources (both
    /// checked when the guard is built).
    pub(crate) fn new(realm: &str, sources: &CredentialSources) -> Self {
        let headers: Vec<String> = sources
            .key_header_names()
            .iter()
            .map(|h| display_name(h))
            .collect();
        let mut ways = headers.clone();
        if sources.reads_bearer() {
            ways.push("Authorization: Bearer".to_owned());
        }
        Self {
            realm: realm.into(),
            missing: format!("authentication required: send {}", ways.join(" or ")),
            headers,
            bearer: sources.reads_bearer(),
        }
    }

    /// The `WWW-Authenticate` value: `Bearer` where the guard reads bearer
    /// tokens, else `ApiKey` naming the key header(s).
    fn header(&self, error: &str, scope: Option<&str>) -> String {
        let mut challenge = if self.bearer {
            format!("Bearer realm=\"{}\"", self.realm)
        } else {
            format!(
                "ApiKey realm=\"{}\", header=\"{}\"",
                self.realm,
                self.headers.join(" ")
            )
        };
        if !error.is_empty() {
            challenge.push_str(&format!(", error=\"{error}\""));
        }
        if let Some(scope) = scope {
            challenge.push_str(&format!(", scope=\"{scope}\""));
        }
        challenge
    }
}

/// `x-service-token` → `X-Service-Token`, as people write header names.
fn display_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A refused request: everything an adapter needs to answer it — status,
/// headers and a small JSON body, all decided by the guard that refused.
///
/// ```
/// use auth_core::{CredentialSources, Decision, Guard, PlainRequest, StaticKey};
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let guard = Guard::builder(StaticKey::new("k").unwrap()).build().unwrap();
/// let Decision::Reject(r) = rt.block_on(guard.check(&PlainRequest::get("/items"))) else { panic!() };
/// assert_eq!(r.status(), 401);
/// assert_eq!(r.headers()[0], ("www-authenticate", "Bearer realm=\"api\"".to_owned()));
/// assert_eq!(
///     r.body(),
///     r#"{"error":"missing_credential","message":"authentication required: send X-Api-Key or Authorization: Bearer"}"#
/// );
///
/// // A guard that reads only X-Service-Token says so, and sends no bearer challenge.
/// let token_only = Guard::builder(StaticKey::new("k").unwrap())
///     .sources(CredentialSources::default().key_header("X-Service-Token").bearer(false))
///     .build()
///     .unwrap();
/// let Decision::Reject(r) = rt.block_on(token_only.check(&PlainRequest::get("/items"))) else { panic!() };
/// assert_eq!(r.headers()[0].1, "ApiKey realm=\"api\", header=\"X-Service-Token\"");
/// assert_eq!(r.message(), "authentication required: send X-Service-Token");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    challenge: Arc<Challenge>,
    scope: Option<Arc<str>>,
    retry_after: Option<Duration>,
    rate: Option<RateStatus>,
}

/// The `Content-Type` of [`Rejection::body`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

impl Rejection {
    /// A rejection of this kind from the guard whose challenge this is.
    pub(crate) fn new(kind: RejectionKind, challenge: Arc<Challenge>) -> Self {
        Self {
            kind,
            challenge,
            scope: None,
            retry_after: None,
            rate: None,
        }
    }

    /// Names the missing scope (for `insufficient_scope`).
    pub(crate) fn with_scope(mut self, scope: Arc<str>) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Sets `Retry-After` (rounded up to whole seconds, at least 1).
    pub(crate) fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds the `RateLimit` / `RateLimit-Policy` headers.
    pub(crate) fn with_rate(mut self, rate: RateStatus) -> Self {
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

    /// The `message` of the body: fixed text, never request data; for a
    /// missing credential it names the headers the guard reads.
    pub fn message(&self) -> &str {
        match self.kind {
            RejectionKind::Missing => &self.challenge.missing,
            kind => kind.message(),
        }
    }

    /// The response headers, lowercase names. `content-type` is included.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(5);
        if let Some(error) = self.kind.challenge_error() {
            let scope = match self.kind {
                RejectionKind::InsufficientScope => self.scope.as_deref(),
                _ => None,
            };
            headers.push(("www-authenticate", self.challenge.header(error, scope)));
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
        let mut body = format!("{{\"error\":\"{}\",\"message\":\"", self.kind.code());
        // Fixed text and header names (tokens): nothing to escape.
        body.push_str(self.message());
        body.push('"');
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
            self.message()
        )
    }
}

impl std::error::Error for Rejection {}

/// Whole seconds, rounded up, at least 1 (`Retry-After: 0` invites a storm).
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

/// The IETF draft `RateLimit-Policy` and `RateLimit` headers for `rate`
/// (draft-ietf-httpapi-ratelimit-headers, structured-field form).
pub(crate) fn rate_limit_headers(rate: &RateStatus) -> [(&'static str, String); 2] {
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

    fn challenge(sources: CredentialSources) -> Arc<Challenge> {
        Arc::new(Challenge::new("api", &sources))
    }

    #[test]
    fn statuses_and_challenges() {
        let realm = challenge(CredentialSources::default());
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
        let r = Rejection::new(
            RejectionKind::Unavailable,
            challenge(CredentialSources::default()),
        )
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
        let r = Rejection::new(
            RejectionKind::RateLimited,
            challenge(CredentialSources::default()),
        )
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
            let body = Rejection::new(kind, challenge(CredentialSources::default())).body();
            assert!(body.starts_with(&format!("{{\"error\":\"{}\"", kind.code())));
            assert!(!body.contains('\n'));
            assert_eq!(body.matches('"').count() % 2, 0);
        }
        let mut s = String::new();
        push_json_escaped(&mut s, "a\"b\\c\n");
        assert_eq!(s, "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn a_guard_without_bearer_names_its_headers() {
        let c = challenge(
            CredentialSources::default()
                .key_headers(["X-Service-Token", "x-api-key"])
                .bearer(false),
        );
        let r = Rejection::new(RejectionKind::Missing, c.clone());
        assert_eq!(
            header(&r, "www-authenticate").unwrap(),
            "ApiKey realm=\"api\", header=\"X-Service-Token X-Api-Key\""
        );
        assert_eq!(
            r.body(),
            r#"{"error":"missing_credential","message":"authentication required: send X-Service-Token or X-Api-Key"}"#
        );
        let r = Rejection::new(RejectionKind::Invalid(VerifyError::Invalid), c);
        assert_eq!(
            header(&r, "www-authenticate").unwrap(),
            "ApiKey realm=\"api\", header=\"X-Service-Token X-Api-Key\", error=\"invalid_token\""
        );
        let bearer_only = challenge(CredentialSources::default().no_key_header());
        let r = Rejection::new(RejectionKind::Missing, bearer_only);
        assert_eq!(
            r.message(),
            "authentication required: send Authorization: Bearer"
        );
        assert_eq!(
            header(&r, "www-authenticate").unwrap(),
            "Bearer realm=\"api\""
        );
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
