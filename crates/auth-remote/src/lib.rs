#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(any(doc, test)),
    doc = "Verify API keys against a central key service."
)]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod breaker;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auth_core::{
    Cache, CacheConfig, CacheEntry, Clock, CoarseClock, Credential, Denial, Digest, Principal,
    RateLimitPolicy, TtlCache, Verifier, VerifyContext, VerifyError, VerifyResult,
};
use breaker::{Breaker, Permit};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

/// The path of the validate endpoint on central key services.
pub const DEFAULT_PATH: &str = "/api/v1/api-keys/validate";

/// What can go wrong building a [`RemoteVerifier`] (requests never fail:
/// their failures are answers — unavailable — see [`RemoteVerifier`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or malformed; the message names it
    /// and says what is expected.
    #[error("auth-remote configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("auth-remote HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The JSON field names of the protocol, for services that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    /// Request: the key (default `apiKey`).
    pub api_key: String,
    /// Request: the scope asked for (default `scope`).
    pub scope: String,
    /// Answer: whether the key is valid (default `valid`).
    pub valid: String,
    /// Answer: the key's owner (default `userId`).
    pub user_id: String,
    /// Answer: the key's scopes (default `scopes`).
    pub scopes: String,
    /// Answer: the rate limit object (default `rateLimit`).
    pub rate_limit: String,
    /// In the rate limit: requests per window (default `requests`).
    pub requests: String,
    /// In the rate limit: the window in seconds (default `window`).
    pub window: String,
    /// Answer: why not valid (default `error`).
    pub error: String,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            api_key: "apiKey".into(),
            scope: "scope".into(),
            valid: "valid".into(),
            user_id: "userId".into(),
            scopes: "scopes".into(),
            rate_limit: "rateLimit".into(),
            requests: "requests".into(),
            window: "window".into(),
            error: "error".into(),
        }
    }
}

/// Builds a [`RemoteVerifier`]. Defaults: path [`DEFAULT_PATH`], timeout
/// 5 s, valid answers cached 5 minutes and invalid ones 10 seconds (at most
/// 100,000 and 10,000), breaker opening after 5 consecutive failures for
/// 30 s, no serve-stale.
pub struct RemoteVerifierBuilder {
    base_url: String,
    path: String,
    fields: Fields,
    credential: Option<(String, String)>,
    scope: Option<String>,
    timeout: Duration,
    cache: CacheConfig,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    serve_stale: Option<Duration>,
    scope_error_marker: String,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for RemoteVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteVerifierBuilder")
            .field("url", &format_args!("{}{}", self.base_url, self.path))
            .field(
                "credential_header",
                &self.credential.as_ref().map(|(h, _)| h),
            )
            .finish_non_exhaustive()
    }
}

impl RemoteVerifierBuilder {
    /// The endpoint's path (default [`DEFAULT_PATH`]).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// The protocol's field names.
    pub fn fields(mut self, fields: Fields) -> Self {
        self.fields = fields;
        self
    }

    /// Our own credential for the key service (this call is itself
    /// service-to-service): sent as `header: value` on every call.
    pub fn service_credential(mut self, header: &str, value: &str) -> Self {
        self.credential = Some((header.to_owned(), value.to_owned()));
        self
    }

    /// The scope to ask for when the route requires none (a route's own
    /// scope always wins).
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// How long a call may take before the service counts as unavailable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a valid answer is used.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache.ttl = ttl;
        self
    }

    /// How long an invalid answer is used.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.cache.negative_ttl = ttl;
        self
    }

    /// Most cached valid answers (invalid ones: a tenth, at least 1,000).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache.capacity = entries;
        self.cache.negative_capacity = (entries / 10).max(1_000);
        self
    }

    /// Opens the circuit after `failures` consecutive unavailable answers,
    /// for `cooldown`.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// While the service is unavailable, a valid answer that expired less
    /// than `grace` ago is used (logged). Off by default.
    pub fn serve_stale(mut self, grace: Duration) -> Self {
        self.serve_stale = Some(grace);
        self
    }

    /// How an answer says "invalid only for this scope": a text its `error`
    /// contains (case-insensitive; default `scope`). Such answers are not
    /// cached as an invalid key.
    pub fn scope_error_marker(mut self, marker: &str) -> Self {
        self.scope_error_marker = marker.to_ascii_lowercase();
        self
    }

    /// Another clock for the cache's TTLs and the breaker (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The verifier.
    pub fn build(self) -> Result<RemoteVerifier, Error> {
        let url = format!("{}{}", self.base_url.trim_end_matches('/'), self.path);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "the key service URL must start with http:// or https:// (got `{}`)",
                self.base_url
            )));
        }
        let credential = match self.credential {
            Some((header, value)) => Some((
                reqwest::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| Error::Config(format!("`{header}` is not a valid header name")))?,
                reqwest::header::HeaderValue::from_str(&value)
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| {
                        Error::Config("the service credential is not a valid header value".into())
                    })?,
            )),
            None => None,
        };
        let client = reqwest::Client::builder().timeout(self.timeout).build()?;
        let clock: Arc<dyn Clock> = self.clock.unwrap_or_else(|| Arc::new(CoarseClock));
        // Entries live for the TTL plus the serve-stale grace; freshness is
        // decided from the time each answer came in.
        let mut cache_config = self.cache.clone();
        cache_config.ttl += self.serve_stale.unwrap_or_default();
        Ok(RemoteVerifier {
            inner: Arc::new(Inner {
                url,
                fields: self.fields,
                credential,
                scope: self.scope,
                client,
                cache: TtlCache::with_clock(cache_config, Arc::clone(&clock)),
                fresh_for: self.cache.ttl,
                serve_stale: self.serve_stale,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                inflight: Mutex::new(HashMap::new()),
                scope_error_marker: self.scope_error_marker,
                clock,
            }),
        })
    }
}

/// A verifier that asks a central key service (see the crate docs).
///
/// Every outcome is one of: a principal (the service said valid; its
/// scopes and rate limit ride along, and the guard checks them), a denial
/// (the service said invalid), or [`VerifyError::Unavailable`] — connect
/// errors, timeouts, 5xx, 429, a refused service credential, a malformed
/// answer, an open circuit — which the guard answers with 503 and which a
/// [`Fallback`](auth_core::Fallback) hands to a local verifier. Errors are
/// never cached.
#[derive(Clone)]
pub struct RemoteVerifier {
    inner: Arc<Inner>,
}

/// A valid answer in the cache, with the time it stops being fresh.
#[derive(Clone)]
struct Fresh {
    principal: Arc<Principal>,
    until: Duration,
}

type Inflight = Arc<OnceCell<Outcome>>;

struct Inner {
    url: String,
    fields: Fields,
    credential: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    scope: Option<String>,
    client: reqwest::Client,
    cache: TtlCache<Fresh>,
    fresh_for: Duration,
    serve_stale: Option<Duration>,
    breaker: Breaker,
    /// Calls under way, by digest and scope asked: later callers wait for
    /// the first one's answer.
    inflight: Mutex<HashMap<(Digest, Option<String>), Inflight>>,
    scope_error_marker: String,
    clock: Arc<dyn Clock>,
}

/// What one call to the service came to.
#[derive(Clone, Debug)]
enum Outcome {
    Valid(Arc<Principal>),
    /// Invalid only for the scope asked: not cached as an invalid key.
    LacksScope(Arc<Principal>),
    Invalid,
    Unavailable,
}

impl fmt::Debug for RemoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteVerifier")
            .field("url", &self.inner.url)
            .field("cached", &self.inner.cache.len())
            .field("circuit_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

impl RemoteVerifier {
    /// A builder for the service at `base_url` (`http://host:port`).
    pub fn builder(base_url: &str) -> RemoteVerifierBuilder {
        RemoteVerifierBuilder {
            base_url: base_url.to_owned(),
            path: DEFAULT_PATH.to_owned(),
            fields: Fields::default(),
            credential: None,
            scope: None,
            timeout: Duration::from_secs(5),
            cache: CacheConfig {
                ttl: Duration::from_secs(300),
                negative_ttl: Duration::from_secs(10),
                ..CacheConfig::default()
            },
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            serve_stale: None,
            scope_error_marker: "scope".into(),
            clock: None,
        }
    }

    /// The builder from the environment, or `None` when
    /// `AUTH_REMOTE_ENABLED` is unset or `false`: `AUTH_REMOTE_URL`
    /// (required when enabled), `AUTH_REMOTE_CACHE_TTL` and
    /// `AUTH_REMOTE_TIMEOUT` (seconds).
    pub fn from_env() -> Result<Option<RemoteVerifierBuilder>, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup (tests, config files).
    ///
    /// ```
    /// use auth_remote::RemoteVerifier;
    ///
    /// let env = |name: &str| match name {
    ///     "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
    ///     "AUTH_REMOTE_URL" => Some("http://127.0.0.1:8080".to_owned()),
    ///     "AUTH_REMOTE_TIMEOUT" => Some("soon".to_owned()),
    ///     _ => None,
    /// };
    /// let err = RemoteVerifier::from_lookup(env).unwrap_err();
    /// assert!(err.to_string().contains("AUTH_REMOTE_TIMEOUT"));
    /// ```
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<RemoteVerifierBuilder>, Error> {
        let enabled = match lookup("AUTH_REMOTE_ENABLED").as_deref().map(str::trim) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                return Err(Error::Config(format!(
                    "AUTH_REMOTE_ENABLED must be true or false (got `{v}`)"
                )));
            }
        };
        if !enabled {
            return Ok(None);
        }
        let url = lookup("AUTH_REMOTE_URL")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "AUTH_REMOTE_URL is required when AUTH_REMOTE_ENABLED=true \
                     (e.g. http://127.0.0.1:8080)"
                        .into(),
                )
            })?;
        let seconds = |name: &str| -> Result<Option<Duration>, Error> {
            let Some(raw) = lookup(name) else {
                return Ok(None);
            };
            raw.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(|s| Some(Duration::from_secs_f64(s)))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{name} must be a positive number of seconds (got `{raw}`)"
                    ))
                })
        };
        let mut builder = Self::builder(url.trim());
        if let Some(ttl) = seconds("AUTH_REMOTE_CACHE_TTL")? {
            builder = builder.cache_ttl(ttl);
        }
        if let Some(timeout) = seconds("AUTH_REMOTE_TIMEOUT")? {
            builder = builder.timeout(timeout);
        }
        Ok(Some(builder))
    }

    /// Drops the cached answer for a key (after revoking it upstream).
    pub fn invalidate(&self, digest: &Digest) {
        self.inner.cache.invalidate(digest);
    }

    /// Drops every cached answer.
    pub fn clear(&self) {
        self.inner.cache.clear();
    }

    /// Whether the circuit is open (calls are not being made).
    pub fn circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The cached answer, fresh or (for serve-stale) not.
    fn cached(&self, digest: &Digest) -> Option<CacheEntry<Fresh>> {
        self.inner.cache.get(digest)
    }

    fn now(&self) -> Duration {
        self.inner.clock.now()
    }
}

impl Inner {
    /// One call to the service.
    async fn call(&self, credential: &Credential, scope: Option<&str>) -> Outcome {
        let fingerprint = credential.fingerprint();
        let Ok(key) = std::str::from_utf8(credential.expose()) else {
            // Extraction admits only visible ASCII; anything else is no key.
            return Outcome::Invalid;
        };
        let mut body = Map::new();
        body.insert(self.fields.api_key.clone(), Value::from(key));
        if let Some(scope) = scope {
            body.insert(self.fields.scope.clone(), Value::from(scope));
        }
        let mut request = self.client.post(&self.url).json(&body);
        if let Some((name, value)) = &self.credential {
            request = request.header(name.clone(), value.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect error"
                } else {
                    "request error"
                };
                tracing::warn!(target: "auth_remote", fingerprint = %fingerprint, why,
                    "key service unavailable");
                return Outcome::Unavailable;
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            tracing::error!(target: "auth_remote", status = status.as_u16(),
                "the key service refused our service credential: check its configuration");
            return Outcome::Unavailable;
        }
        if !status.is_success() {
            tracing::warn!(target: "auth_remote", fingerprint = %fingerprint,
                status = status.as_u16(), "key service unavailable");
            return Outcome::Unavailable;
        }
        let Ok(answer) = response.json::<Value>().await else {
            tracing::warn!(target: "auth_remote", fingerprint = %fingerprint,
                "key service answered with malformed JSON");
            return Outcome::Unavailable;
        };
        self.read(&answer, credential.digest())
    }

    /// The service's answer as an outcome.
    fn read(&self, answer: &Value, digest: &Digest) -> Outcome {
        let f = &self.fields;
        let Some(valid) = answer.get(&f.valid).and_then(Value::as_bool) else {
            tracing::warn!(target: "auth_remote", "key service answer lacks `{}`", f.valid);
            return Outcome::Unavailable;
        };
        // A per-key limit bucket: 64 bits of the digest, not the key.
        let key_id = format!("remote:{}", &digest.to_hex()[..16]);
        let user = answer
            .get(&f.user_id)
            .and_then(Value::as_str)
            .map_or_else(|| key_id.clone(), str::to_owned);
        let mut principal = Principal::new(user).with_key_id(key_id);
        if !valid {
            let lacks_scope = answer
                .get(&f.error)
                .and_then(Value::as_str)
                .is_some_and(|e| e.to_ascii_lowercase().contains(&self.scope_error_marker));
            return if lacks_scope {
                Outcome::LacksScope(Arc::new(principal))
            } else {
                Outcome::Invalid
            };
        }
        if let Some(scopes) = answer.get(&f.scopes).and_then(Value::as_array) {
            principal = principal.with_scopes(scopes.iter().filter_map(Value::as_str));
        }
        if let Some(limit) = answer.get(&f.rate_limit) {
            let requests = limit.get(&f.requests).and_then(Value::as_u64);
            let window = limit.get(&f.window).and_then(Value::as_u64);
            if let (Some(requests), Some(window)) = (requests, window) {
                if requests > 0 && window > 0 {
                    principal = principal.with_rate_limit(RateLimitPolicy::new(
                        u32::try_from(requests).unwrap_or(u32::MAX),
                        Duration::from_secs(window),
                    ));
                }
            }
        }
        Outcome::Valid(Arc::new(principal))
    }
}

#[async_trait]
impl Verifier for RemoteVerifier {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        if let Some(answer) = self.verify_now(credential, ctx) {
            return answer;
        }
        let inner = &*self.inner;
        let digest = *credential.digest();
        tracing::trace!(target: "auth_remote", fingerprint = %digest.fingerprint(), "cache miss");
        let scope = ctx
            .required_scope
            .map(str::to_owned)
            .or_else(|| inner.scope.clone());
        // One call per key (and scope) at a time; the others wait for it.
        let slot = Arc::clone(
            inner
                .inflight
                .lock()
                .entry((digest, scope.clone()))
                .or_default(),
        );
        let outcome = slot
            .get_or_init(|| self.ask(credential, scope.as_deref()))
            .await
            .clone();
        {
            let mut inflight = inner.inflight.lock();
            let key = (digest, scope);
            if inflight.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                inflight.remove(&key);
            }
        }
        match outcome {
            Outcome::Valid(p) | Outcome::LacksScope(p) => Ok(p),
            Outcome::Invalid => Err(VerifyError::Invalid),
            Outcome::Unavailable => self.stale(&digest),
        }
    }

    fn verify_now(
        &self,
        credential: &Credential,
        _ctx: &VerifyContext<'_>,
    ) -> Option<VerifyResult> {
        match self.cached(credential.digest())? {
            CacheEntry::Granted(fresh) if self.now() < fresh.until => {
                tracing::trace!(target: "auth_remote", "cache hit");
                Some(Ok(fresh.principal))
            }
            // Stale: used only while the service is unavailable.
            CacheEntry::Granted(_) => None,
            CacheEntry::Denied(denial) => Some(Err(denial.into())),
        }
    }
}

impl RemoteVerifier {
    /// Asks the service unless the circuit is open, and records the answer
    /// (the cache for valid and invalid ones, the breaker for all).
    async fn ask(&self, credential: &Credential, scope: Option<&str>) -> Outcome {
        let inner = &*self.inner;
        // A caller that missed the cache just before another's call filled
        // it and left: the answer is there now.
        match self.verify_now(credential, &VerifyContext::default()) {
            Some(Ok(principal)) => return Outcome::Valid(principal),
            Some(Err(_)) => return Outcome::Invalid,
            None => {}
        }
        if inner.breaker.permit(self.now()) == Permit::Refused {
            return Outcome::Unavailable;
        }
        let digest = credential.digest();
        // Taken before the call: an invalidation meanwhile voids the fill.
        let ticket = inner.cache.ticket(digest);
        let outcome = inner.call(credential, scope).await;
        match &outcome {
            Outcome::Unavailable => inner.breaker.failure(self.now()),
            _ => inner.breaker.success(),
        }
        match &outcome {
            Outcome::Valid(p) => {
                let fresh = Fresh {
                    principal: Arc::clone(p),
                    until: self.now() + inner.fresh_for,
                };
                inner.cache.fill(ticket, CacheEntry::Granted(fresh));
            }
            Outcome::Invalid => {
                inner
                    .cache
                    .fill(ticket, CacheEntry::Denied(Denial::Invalid));
            }
            Outcome::LacksScope(_) | Outcome::Unavailable => {}
        }
        tracing::debug!(target: "auth_remote", fingerprint = %digest.fingerprint(),
            outcome = outcome_name(&outcome), "key service answered");
        outcome
    }

    /// The answer while the service is unavailable: a recently expired
    /// valid answer where serve-stale allows it, else unavailable.
    fn stale(&self, digest: &Digest) -> VerifyResult {
        if let (Some(grace), Some(CacheEntry::Granted(fresh))) =
            (self.inner.serve_stale, self.cached(digest))
        {
            if self.now() < fresh.until + grace {
                tracing::warn!(target: "auth_remote", fingerprint = %digest.fingerprint(),
                    "key service unavailable: serving a stale valid answer");
                return Ok(fresh.principal);
            }
        }
        Err(VerifyError::Unavailable)
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Valid(_) => "valid",
        Outcome::LacksScope(_) => "lacks scope",
        Outcome::Invalid => "invalid",
        Outcome::Unavailable => "unavailable",
    }
}
