#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(any(doc, test)),
    doc = "Verify API keys against a central key service."
)]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod breaker;
mod budget;
mod inflight;
mod lease;
mod metrics;
mod stream;
mod usage;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::cache::{Cache, CacheEntry, CacheStats, Denial, FillTicket, TtlCache};
use auth_core::clock::{Clock, CoarseClock};
use auth_core::protocol::{
    Code, Lease, MAX_LEASE, RateLimit, ValidateRequest, ValidateResponse, Verdict,
};
use auth_core::{
    Answer, CacheConfig, Credential, Digest, Principal, RateLimitPolicy, RefusedAfter, Verifier,
    VerifyContext, VerifyError, VerifyResult,
};
use breaker::Breaker;
use budget::Budget;
use inflight::Inflight;
use lease::{LocalLease, Returns};
use metrics::{Call, CallCounts, LeaseCounts};
use parking_lot::Mutex;
use stream::{StreamConfig, StreamState};
use usage::Usage;

/// The path of the validate endpoint on central key services
/// ([`auth_core::protocol::VALIDATE_PATH`]).
pub const DEFAULT_PATH: &str = auth_core::protocol::VALIDATE_PATH;

/// The largest answer read from the key service.
const MAX_ANSWER: usize = 64 * 1024;

/// The label on every principal a verifier builds from the key service's
/// answers: its instance id (16 random hex digits made at `build()`), by
/// which `refused_after` tells its own grants from another verifier's.
const VERIFIER_LABEL: &str = "auth_remote.verifier";

/// The label on a principal the key service answered other than `valid`
/// for: `insufficient_scope` (granted without the scope asked, counted as
/// refused there already).
const ANSWER_LABEL: &str = "auth_remote.answer";

/// The shortest and longest interval between usage reports.
const USAGE_EVERY: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

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

/// Builds a [`RemoteVerifier`]. Defaults: path [`DEFAULT_PATH`], timeout
/// 5 s, valid answers cached 5 minutes and invalid ones 10 seconds (at most
/// 100,000 and 10,000), breaker opening after 5 consecutive failures and
/// probing 1 s later, then after doubling waits up to 30 s, at most 100
/// upstream calls a second, no serve-stale, the changes stream on (grants
/// used at most 5 s while it is down, a stream silent for 3 s reconnected),
/// credit leases of up to 100 credits, usage reported every 10 s.
pub struct RemoteVerifierBuilder {
    base_url: String,
    path: String,
    credential: Option<(String, String)>,
    scope: Option<String>,
    timeout: Duration,
    cache: CacheConfig,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    probe_backoff: Duration,
    upstream_budget: u32,
    serve_stale: Option<Duration>,
    clock: Option<Arc<dyn Clock>>,
    /// Extra trusted roots (PEM), for a key service with a private CA.
    roots: Vec<Vec<u8>>,
    changes_stream: bool,
    stream_down_ttl: Duration,
    stream_idle_timeout: Duration,
    credit_leases: u32,
    usage_every: Option<Duration>,
}

impl fmt::Debug for RemoteVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteVerifierBuilder")
            .field("url", &redacted(&format!("{}{}", self.base_url, self.path)))
            .field(
                "credential_header",
                &self.credential.as_ref().map(|(h, _)| h),
            )
            .field("changes_stream", &self.changes_stream)
            .field("credit_leases", &self.credit_leases)
            .field("usage_every", &self.usage_every)
            .finish_non_exhaustive()
    }
}

impl RemoteVerifierBuilder {
    /// The endpoint's path (default [`DEFAULT_PATH`]).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// Our own credential for the key service (this call is itself
    /// service-to-service): sent as `header: value` on every call (the
    /// protocol's header is [`auth_core::protocol::SERVICE_TOKEN_HEADER`]).
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

    /// How long a call may take before the service counts as unavailable
    /// (also how long the changes stream may take to connect and answer).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a valid answer is used (never past the key's own
    /// `expiresAt`).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache.ttl = ttl;
        self
    }

    /// How long an invalid, expired or disabled answer is used.
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

    /// Opens the circuit after `failures` consecutive unavailable answers;
    /// while open, one probe goes out after the
    /// [`probe_backoff`](Self::probe_backoff), then after twice the
    /// previous wait each time it fails, at most `cooldown` (default 30 s).
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// The wait before the first probe of an open circuit (default 1 s;
    /// capped at the breaker's cool-down).
    pub fn probe_backoff(mut self, first: Duration) -> Self {
        self.probe_backoff = first;
        self
    }

    /// At most `per_second` calls to the service a second, in bursts of
    /// up to `per_second` (default 100; `0`: no budget). Cache misses
    /// beyond it are answered unavailable (503) at once, for that request
    /// only: a flood of random keys cannot become a flood of calls, and it
    /// neither opens the circuit nor is cached.
    pub fn upstream_budget(mut self, per_second: u32) -> Self {
        self.upstream_budget = per_second;
        self
    }

    /// While the service is unavailable, a valid answer that expired less
    /// than `grace` ago is used (never past the key's own `expiresAt`).
    /// Off by default.
    pub fn serve_stale(mut self, grace: Duration) -> Self {
        self.serve_stale = Some(grace);
        self
    }

    /// Trusts this CA certificate (PEM) for `https://` besides the
    /// platform's roots: for a key service whose certificate a private CA
    /// signed. Without it, the platform's roots only.
    pub fn tls_root_certificate(mut self, pem: &[u8]) -> Self {
        self.roots.push(pem.to_vec());
        self
    }

    /// Whether to subscribe to the service's changes stream
    /// ([`auth_core::protocol::EVENTS_PATH`]; default `true`): a key
    /// disabled, deleted or changed there is dropped from the cache at once
    /// instead of at the end of its TTL. A service that answers the stream
    /// request with 404 or 405 offers none: the verifier works as without
    /// it, and asks again every minute. See the crate docs.
    pub fn changes_stream(mut self, on: bool) -> Self {
        self.changes_stream = on;
        self
    }

    /// How long a cached grant is used at most while the changes stream is
    /// down — counted from when the grant came in, or when the stream went
    /// down if that was later (default 5 s). Down: the service is known to
    /// offer the stream (its last telling answer to the stream request was
    /// an event stream or a 401/403) and no `ready` came on the current
    /// connection. When it is live again, grants are used for the whole
    /// TTL again. Denials keep their own TTL.
    pub fn stream_down_ttl(mut self, ttl: Duration) -> Self {
        self.stream_down_ttl = ttl;
        self
    }

    /// How long the changes stream may stay silent — the service pings
    /// about every 15 s — before it counts as dead and is reconnected
    /// (default 3 s; auth-server sends a heartbeat every second while it follows its change log).
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle_timeout = idle;
        self
    }

    /// Asks for up to `credits` of a key's credits to be leased to this
    /// service with each call about a key with credits (default 100; at
    /// most [`MAX_LEASE`], more is capped; `0` switches leases off). The
    /// grant is then cached with its lease, and each request on it spends
    /// one leased credit here, without a call, until they run out or the
    /// lease nears its end; what is not spent goes back to the service.
    /// Without leases every request on a key with credits is a call. Keys
    /// without credits are not affected (the service ignores the ask). See
    /// the crate docs.
    pub fn credit_leases(mut self, credits: u32) -> Self {
        self.credit_leases = credits.min(MAX_LEASE);
        self
    }

    /// How often the decisions this verifier makes without a call — cache
    /// hits, leased credits, callers served by another's call, stale
    /// grants — are reported to the key service, counted per key and hour
    /// ([`auth_core::protocol::USAGE_PATH`]; default every 10 s; from 1 s
    /// to 1 h, else [`build`](Self::build) fails). `None` switches counting
    /// and reporting off. See the crate docs.
    pub fn usage_reports(mut self, every: Option<Duration>) -> Self {
        self.usage_every = every;
        self
    }

    /// Another clock for the cache's TTLs, the breaker, the budget, the
    /// stream-down bound and the leases' deadlines (tests).
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
                redacted(&self.base_url)
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
        let mut roots = Vec::with_capacity(self.roots.len());
        for pem in &self.roots {
            // A text without one certificate in it is a mistake, not "none".
            match reqwest::Certificate::from_pem_bundle(pem) {
                Ok(certs) if !certs.is_empty() => roots.extend(certs),
                _ => {
                    return Err(Error::Config(
                        "the TLS root certificate is not a PEM certificate".into(),
                    ));
                }
            }
        }
        // One client for validate calls and the stream (one pool, and the
        // roots loaded once). No total timeout here: validate calls set
        // theirs per request, the stream has none (it lasts).
        let client = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            // A redirect would re-send the key, in the body, to wherever
            // the service points: a 3xx is unavailable instead.
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(roots)
            .build()?;
        let stream = if self.changes_stream {
            Some(StreamConfig {
                url: format!(
                    "{}{}",
                    self.base_url.trim_end_matches('/'),
                    auth_core::protocol::EVENTS_PATH
                ),
                credential: credential.clone(),
                // A silent stream is caught by the idle timeout instead of a
                // total timeout.
                client: client.clone(),
                answer_within: self.timeout,
                idle: self.stream_idle_timeout,
                down_ttl: self.stream_down_ttl,
            })
        } else {
            None
        };
        if let Some(every) = self
            .usage_every
            .filter(|every| !USAGE_EVERY.contains(every))
        {
            return Err(Error::Config(format!(
                "usage reports need an interval from 1 s to 1 h, or None: off (got {every:?})"
            )));
        }
        let clock: Arc<dyn Clock> = self.clock.unwrap_or_else(|| Arc::new(CoarseClock));
        // Entries live for the TTL plus the serve-stale grace; freshness is
        // decided from the time each answer came in.
        let mut cache_config = self.cache.clone();
        cache_config.ttl = cache_config
            .ttl
            .saturating_add(self.serve_stale.unwrap_or_default());
        let returns = Arc::new(Returns {
            client: client.clone(),
            url: format!(
                "{}{}",
                self.base_url.trim_end_matches('/'),
                auth_core::protocol::LEASE_RETURN_PATH
            ),
            credential: credential.clone(),
            timeout: self.timeout,
            clock: Arc::clone(&clock),
            counts: LeaseCounts::default(),
            warned: AtomicU64::new(0),
        });
        let usage = self.usage_every.map(|every| {
            Arc::new(Usage::new(
                every,
                usage::MAX_PENDING,
                Arc::clone(&clock),
                usage::Endpoint {
                    client: client.clone(),
                    url: usage::url(&self.base_url),
                    credential: credential.clone(),
                    timeout: self.timeout,
                },
            ))
        });
        let inner = Arc::new(Inner {
            instance: instance_id(),
            shown_url: redacted(&url),
            url,
            credential,
            scope: self.scope,
            client,
            timeout: self.timeout,
            cache: TtlCache::with_clock(cache_config, Arc::clone(&clock)),
            fresh_for: self.cache.ttl,
            serve_stale: self.serve_stale,
            breaker: Breaker::new(
                self.breaker_threshold,
                self.probe_backoff,
                self.breaker_cooldown,
                Arc::clone(&clock),
            ),
            budget: Budget::new(self.upstream_budget, Arc::clone(&clock)),
            budget_per_second: self.upstream_budget,
            inflight: Inflight::new(),
            health: Health::default(),
            clock,
            stream_state: StreamState::new(),
            stream_down_ttl: self.stream_down_ttl,
            stream,
            subscriber: Mutex::new(None),
            calls: CallCounts::default(),
            stats: CacheStats::default(),
            lease_want: self.credit_leases,
            leases: Mutex::new(HashMap::new()),
            returns,
            usage,
            reporter: Mutex::new(None),
        });
        // Within a runtime, subscribe now; else on the first cache miss
        // (likewise the usage reporter).
        inner.subscribe();
        inner.start_reporter();
        Ok(RemoteVerifier { inner })
    }
}

/// A verifier's instance id: 16 random hex digits (should the system's
/// random source fail, a number no other verifier of the process has).
fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        bytes = NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// The URL for `Debug` and errors: userinfo and query hidden
/// (`http://***@host:port/path?***`).
fn redacted(url: &str) -> String {
    let parsed = match reqwest::Url::parse(url) {
        // `admin:secret@host` parses with `admin` as its scheme: only an
        // http(s) URL with a host is shown at all.
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        // Nothing of it: a malformed URL may hold a password anywhere.
        _ => return "<not an http(s) URL>".to_owned(),
    };
    let mut shown = format!("{}://", parsed.scheme());
    if !parsed.username().is_empty() || parsed.password().is_some() {
        shown.push_str("***@");
    }
    shown.push_str(parsed.host_str().unwrap_or_default());
    if let Some(port) = parsed.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(parsed.path());
    if parsed.query().is_some() {
        shown.push_str("?***");
    }
    shown
}

/// A [`RemoteVerifier`]'s state, for readiness checks and dashboards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteState {
    /// The circuit is open: keys not in the cache cannot be validated now.
    pub circuit_open: bool,
    /// The changes stream is live: revocations reach the cache at once.
    pub stream_live: bool,
    /// When the key service last answered a validate call.
    pub last_answer: Option<SystemTime>,
    /// Requests answered unavailable so far.
    pub unavailable: u64,
}

impl RemoteState {
    /// Whether keys not in the cache can be validated now: the answer a
    /// service's `/ready` gives its orchestrator (503 while not).
    pub fn can_validate_new_keys(&self) -> bool {
        !self.circuit_open
    }
}

/// A verifier that asks a central key service (see the crate docs).
///
/// Every outcome is one of: a principal (the service said valid; its
/// scopes and rate limit ride along, and the guard checks them), a denial
/// (the service said invalid, expired or disabled), or
/// [`VerifyError::Unavailable`] — connect errors, timeouts, 5xx, 429, 3xx,
/// a refused service credential, a malformed or inconsistent answer, an
/// open circuit, a spent upstream budget — which the guard answers with
/// 503 and which a [`Fallback`](auth_core::Fallback) hands to a local
/// verifier. Errors are never cached.
///
/// By default it also follows the service's changes stream (see
/// [`RemoteVerifierBuilder::changes_stream`]) in a background task, which
/// ends when the last clone of the verifier is dropped.
///
/// [`verify`](Verifier::verify) answers from the cache where it can: a
/// fresh valid answer (for a key with credits, with a credit of its lease:
/// see [`RemoteVerifierBuilder::credit_leases`]) or a cached denial is
/// [`Answer::Ready`] (no future, nothing allocated); anything else is
/// [`Answer::Pending`], a future that owns what it needs (a clone of the
/// verifier, of the credential and the scope) and asks the service when
/// awaited.
///
/// ```
/// use auth_core::{Credential, Verifier, VerifyContext, VerifyError};
///
/// // Nothing listens on port 1: the service is unavailable.
/// let v = auth_remote::RemoteVerifier::builder("http://127.0.0.1:1").build()?;
/// let key = Credential::new("sk_live_not_cached_0123456789");
/// let answer = v.verify(&key, &VerifyContext::default());
/// assert!(!answer.is_ready(), "not in the cache: the service must be asked");
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// assert_eq!(rt.block_on(answer).unwrap_err(), VerifyError::Unavailable);
/// // Errors are never cached: the next request asks again.
/// assert!(v.verify(&key, &VerifyContext::default()).now().is_none());
/// # Ok::<(), auth_remote::Error>(())
/// ```
#[derive(Clone)]
pub struct RemoteVerifier {
    inner: Arc<Inner>,
}

/// A valid answer in the cache, with the time it stops being fresh.
struct Fresh {
    principal: Arc<Principal>,
    /// When the answer came in (the stream-down bound counts from it).
    filled: Duration,
    until: Duration,
    /// When the key itself expires (its `expiresAt`): not even serve-stale
    /// uses the answer after that.
    key_expires: Duration,
    /// A key with credits: the credits leased with the answer, one taken
    /// per request it answers. `None` for keys without credits.
    lease: Option<Arc<LocalLease>>,
}

impl Clone for Fresh {
    /// Every cache hit clones one: kept inline (out of line, the copy
    /// through the stack cost a hit ~10 ns).
    #[inline(always)]
    fn clone(&self) -> Self {
        Self {
            principal: Arc::clone(&self.principal),
            filled: self.filled,
            until: self.until,
            key_expires: self.key_expires,
            lease: self.lease.clone(),
        }
    }
}

struct Inner {
    /// This verifier's id, a label on the principals it builds
    /// ([`VERIFIER_LABEL`]).
    instance: String,
    url: String,
    /// `url` without userinfo and query, for `Debug`.
    shown_url: String,
    credential: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    scope: Option<String>,
    /// Without a total timeout (see `build`).
    client: reqwest::Client,
    /// A validate call's total timeout.
    timeout: Duration,
    cache: TtlCache<Fresh>,
    fresh_for: Duration,
    serve_stale: Option<Duration>,
    breaker: Breaker,
    budget: Option<Budget>,
    budget_per_second: u32,
    inflight: Inflight<Outcome>,
    health: Health,
    clock: Arc<dyn Clock>,
    /// Whether the changes stream is live, and since when it is down.
    stream_state: StreamState,
    stream_down_ttl: Duration,
    /// `None`: the stream is switched off.
    stream: Option<StreamConfig>,
    /// The subscriber's task, aborted when the verifier goes.
    subscriber: Mutex<Option<tokio::task::AbortHandle>>,
    /// Calls to the service by how they ended, and calls not made.
    calls: CallCounts,
    /// Requests answered from the cache, and those that had to ask
    /// (counted with the `prometheus` feature).
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    stats: CacheStats,
    /// Credits to ask to lease with each call (0: none).
    lease_want: u32,
    /// The lease of each cached grant that has one, kept in step with the
    /// cache under this lock (taken before a shard's), so that a lease
    /// whose grant is replaced, invalidated or cleared is ended at once.
    /// One whose grant is evicted stays until its deadline.
    leases: Mutex<HashMap<Digest, Arc<LocalLease>>>,
    /// Gives leases back (shared with the return tasks).
    returns: Arc<Returns>,
    /// Decisions made here, counted and reported; `None`: off.
    usage: Option<Arc<Usage>>,
    /// The usage reporter's task and its runtime (for a last report when
    /// the verifier goes).
    reporter: Mutex<Option<(tokio::task::AbortHandle, tokio::runtime::Handle)>>,
}

impl Inner {
    /// Until when a cached grant is used: its freshness, bounded while the
    /// changes stream is down. One atomic load on top of the hit.
    #[inline]
    fn served_until(&self, fresh: &Fresh) -> Duration {
        self.stream_state
            .served_until(fresh.filled, fresh.until, self.stream_down_ttl)
    }

    /// Starts the stream's subscriber unless it runs, is switched off, or
    /// there is no runtime to run it on. A subscriber whose runtime shut
    /// down is replaced.
    fn subscribe(self: &Arc<Self>) {
        let Some(config) = &self.stream else {
            return;
        };
        let mut task = self.subscriber.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Weak: the task must not keep the verifier alive.
        let handle = runtime.spawn(stream::run(Arc::downgrade(self), config.clone()));
        *task = Some(handle.abort_handle());
    }

    /// Starts the usage reporter unless it runs, counting is off, or there
    /// is no runtime to run it on (as the stream's subscriber).
    fn start_reporter(&self) {
        let Some(usage) = &self.usage else {
            return;
        };
        let mut task = self.reporter.lock();
        if task.as_ref().is_some_and(|(t, _)| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Weak: the task must not keep the counts alive past the verifier.
        let handle = runtime.spawn(usage::run(Arc::downgrade(usage), usage.every));
        *task = Some((handle.abort_handle(), runtime));
    }

    /// Counts a decision made here about `digest` (nothing while counting
    /// is off).
    #[inline]
    fn count(&self, digest: &Digest, now: Duration, code: Code) {
        if let Some(usage) = &self.usage {
            usage.count(digest, now, code);
        }
    }

    /// Counts `outcome`, taken here from another caller's call, if it is a
    /// decision about the key.
    fn count_taken(&self, digest: &Digest, outcome: &Outcome) {
        let code = match outcome {
            Outcome::Valid(_) | Outcome::Leased(..) => Code::Valid,
            Outcome::Denied(Denial::Disabled) => Code::Disabled,
            Outcome::Denied(Denial::Expired) => Code::Expired,
            Outcome::LacksScope(_) => Code::InsufficientScope,
            Outcome::KeyLimited => Code::RateLimited,
            Outcome::OutOfCredits(_) => Code::UsageExceeded,
            // An unknown key is no key to count; the rest decide nothing
            // about the key (a charged grant is asked again).
            Outcome::Denied(_)
            | Outcome::Charged(_)
            | Outcome::Unavailable
            | Outcome::Throttled
            | Outcome::Shed => return,
        };
        self.count(digest, self.clock.now(), code);
    }

    /// Counts a cached denial answered here (an unknown key is not
    /// counted: there is no key).
    #[inline]
    fn count_denial(&self, digest: &Digest, denial: Denial) {
        let code = match denial {
            Denial::Disabled => Code::Disabled,
            Denial::Expired => Code::Expired,
            _ => return,
        };
        self.count(digest, self.clock.now(), code);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.subscriber.get_mut().take() {
            task.abort();
        }
        // What is counted and not yet reported goes in a last report, on
        // the runtime the reporter ran on. A report under way is cut short:
        // its request under way counted lost, the rest of its batch put
        // back — after this, as the task ends — so the last report always
        // goes (it waits for the one cut short, and sends nothing if
        // nothing is left).
        if let (Some((task, runtime)), Some(usage)) =
            (self.reporter.get_mut().take(), self.usage.take())
        {
            task.abort();
            drop(runtime.spawn(async move { usage.report().await }));
        }
        // What is left of our leases goes back; their timers end.
        for (_, lease) in self.leases.get_mut().drain() {
            let _ = self.returns.end(&lease);
        }
    }
}

impl stream::Target for Inner {
    fn stream(&self) -> &StreamState {
        &self.stream_state
    }

    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn invalidate(&self, digest: &Digest) {
        self.drop_entry(digest);
    }

    fn clear(&self) {
        self.drop_all();
    }
}

/// What one call to the service came to.
#[derive(Clone, Debug)]
enum Outcome {
    Valid(Arc<Principal>),
    /// Valid, with one request's credits spent by the service, and no
    /// lease to spend from: for the caller whose call it was only, never
    /// cached nor shared (each request on it is charged).
    Charged(Arc<Principal>),
    /// Valid, cached with a lease: the caller whose call it was is paid
    /// for (by the service, or with a credit it took from the lease);
    /// every other caller waiting on the call takes a credit of its own
    /// from the lease, or asks again.
    Leased(Arc<Principal>, Arc<LocalLease>),
    /// Valid, but not for the scope asked: not cached as an invalid key.
    LacksScope(Arc<Principal>),
    Denied(Denial),
    /// The service is down, or the circuit is open.
    Unavailable,
    /// The service asked us to slow down (HTTP 429): unavailable for this
    /// request.
    Throttled,
    /// The key is over a limit the service enforces (`rate_limited`): 429
    /// for this request, not cached.
    KeyLimited,
    /// The key is out of usage credits (`usage_exceeded`): 429 for this
    /// request, with the wait until its next refill; not cached.
    OutOfCredits(Option<Duration>),
    /// Our own upstream budget is spent.
    Shed,
}

/// What came back from one HTTP exchange.
enum Reply {
    Answer(ValidateResponse, Verdict),
    /// HTTP 429: the service is up, but busy.
    TooManyRequests,
    Failed(Failure),
}

/// Why the service counts as unavailable, for the log.
#[derive(Clone, Copy, Debug)]
struct Failure {
    why: &'static str,
    status: Option<u16>,
}

impl Failure {
    const fn new(why: &'static str) -> Self {
        Self { why, status: None }
    }
}

/// The service's health as logs tell it: one WARN when an outage starts,
/// one INFO when it ends, a counter for everything between.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// Requests answered unavailable, ever.
    unavailable: AtomicU64,
    /// `unavailable` when the current outage started.
    down_since: AtomicU64,
    /// When the last "budget spent" / "service throttles" WARN was logged
    /// (nanoseconds of the clock, plus one; 0: never).
    shed_logged: AtomicU64,
    throttle_logged: AtomicU64,
    /// When the service last answered (Unix milliseconds; 0: never).
    last_answer: AtomicU64,
}

/// How often a "budget spent" or "throttled" WARN is repeated at most.
const REPEAT_WARN: Duration = Duration::from_secs(10);

impl Health {
    fn failed(&self, failure: Failure) {
        if self.down.swap(true, Ordering::AcqRel) {
            tracing::debug!(target: "auth_remote", why = failure.why, status = failure.status,
                "key service still unavailable");
            return;
        }
        self.down_since
            .store(self.unavailable.load(Ordering::Relaxed), Ordering::Relaxed);
        if failure.status == Some(401) || failure.status == Some(403) {
            tracing::error!(target: "auth_remote", why = failure.why, status = failure.status,
                "key service unavailable: check our service credential's configuration");
        } else {
            tracing::warn!(target: "auth_remote", why = failure.why, status = failure.status,
                "key service unavailable");
        }
    }

    fn answered(&self) {
        // On the miss path only (after an HTTP exchange): a store is nothing.
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_answer.store(ms, Ordering::Relaxed);
        // A load first: no write on the common path.
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            let answered_unavailable = self
                .unavailable
                .load(Ordering::Relaxed)
                .saturating_sub(self.down_since.load(Ordering::Relaxed));
            tracing::info!(target: "auth_remote", answered_unavailable,
                "key service available again");
        }
    }

    /// Whether a repeated WARN is due (at most one per [`REPEAT_WARN`]).
    fn due(last: &AtomicU64, now: Duration) -> bool {
        let now = u64::try_from(now.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let before = last.load(Ordering::Relaxed);
        let period = u64::try_from(REPEAT_WARN.as_nanos()).unwrap_or(u64::MAX);
        (before == 0 || now.saturating_sub(before) >= period)
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl fmt::Debug for RemoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteVerifier")
            .field("url", &self.inner.shown_url)
            .field("cached", &self.inner.cache.len())
            .field("circuit_open", &self.inner.breaker.is_open())
            .field("unavailable_count", &self.unavailable_count())
            .field("stream_live", &self.stream_live())
            .finish_non_exhaustive()
    }
}

impl RemoteVerifier {
    /// A builder for the service at `base_url` (`http://host:port`).
    pub fn builder(base_url: &str) -> RemoteVerifierBuilder {
        RemoteVerifierBuilder {
            base_url: base_url.to_owned(),
            path: DEFAULT_PATH.to_owned(),
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
            probe_backoff: Duration::from_secs(1),
            upstream_budget: 100,
            serve_stale: None,
            clock: None,
            roots: Vec::new(),
            changes_stream: true,
            stream_down_ttl: Duration::from_secs(5),
            stream_idle_timeout: Duration::from_secs(3),
            credit_leases: 100,
            usage_every: Some(Duration::from_secs(10)),
        }
    }

    /// The builder from the environment, or `None` when
    /// `AUTH_REMOTE_ENABLED` is unset or `false`: `AUTH_REMOTE_URL`
    /// (required when enabled), `AUTH_REMOTE_SERVICE_TOKEN` (our own
    /// credential, sent as
    /// [`SERVICE_TOKEN_HEADER`](auth_core::protocol::SERVICE_TOKEN_HEADER);
    /// set but blank is an error), `AUTH_REMOTE_CACHE_TTL` and
    /// `AUTH_REMOTE_TIMEOUT` (seconds), `AUTH_REMOTE_CREDIT_LEASE` (credits
    /// to lease, 0 – 10,000; 0 switches leases off — see
    /// [`credit_leases`](RemoteVerifierBuilder::credit_leases)),
    /// `AUTH_REMOTE_USAGE_EVERY` (seconds between usage reports, 1 – 3600;
    /// `off` or 0 switches counting off — see
    /// [`usage_reports`](RemoteVerifierBuilder::usage_reports)). Errors name
    /// the variable, never a token's value.
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
    ///     "AUTH_REMOTE_SERVICE_TOKEN" => Some("our-own-service-key".to_owned()),
    ///     _ => None,
    /// };
    /// let remote = RemoteVerifier::from_lookup(env)?.expect("enabled").build()?;
    /// assert!(!format!("{remote:?}").contains("our-own-service-key"));
    ///
    /// // Mistakes are named, never echoed when they are secrets.
    /// for (name, bad) in [
    ///     ("AUTH_REMOTE_SERVICE_TOKEN", " "),
    ///     ("AUTH_REMOTE_TIMEOUT", "soon"),
    ///     ("AUTH_REMOTE_CREDIT_LEASE", "10001"),
    ///     ("AUTH_REMOTE_USAGE_EVERY", "0.5"),
    /// ] {
    ///     let env = |n: &str| match n {
    ///         "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
    ///         "AUTH_REMOTE_URL" => Some("http://127.0.0.1:8080".to_owned()),
    ///         n if n == name => Some(bad.to_owned()),
    ///         _ => None,
    ///     };
    ///     let err = RemoteVerifier::from_lookup(env).unwrap_err();
    ///     assert!(err.to_string().contains(name));
    /// }
    /// # Ok::<(), auth_remote::Error>(())
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
        if let Some(token) = lookup("AUTH_REMOTE_SERVICE_TOKEN") {
            // The value is a secret: never in the message.
            if token.trim().is_empty() {
                return Err(Error::Config(
                    "AUTH_REMOTE_SERVICE_TOKEN is set but blank (unset it, or give our \
                     service credential)"
                        .into(),
                ));
            }
            builder =
                builder.service_credential(auth_core::protocol::SERVICE_TOKEN_HEADER, token.trim());
        }
        if let Some(ttl) = seconds("AUTH_REMOTE_CACHE_TTL")? {
            builder = builder.cache_ttl(ttl);
        }
        if let Some(timeout) = seconds("AUTH_REMOTE_TIMEOUT")? {
            builder = builder.timeout(timeout);
        }
        if let Some(raw) = lookup("AUTH_REMOTE_CREDIT_LEASE") {
            let credits = raw
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_LEASE)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "AUTH_REMOTE_CREDIT_LEASE must be a whole number of credits from 0 \
                         (leases off) to {MAX_LEASE} (got `{raw}`)"
                    ))
                })?;
            builder = builder.credit_leases(credits);
        }
        if let Some(raw) = lookup("AUTH_REMOTE_USAGE_EVERY") {
            let every = match raw.trim() {
                "0" => None,
                off if off.eq_ignore_ascii_case("off") => None,
                seconds => Some(
                    seconds
                        .parse::<f64>()
                        .ok()
                        .filter(|s| (1.0..=3600.0).contains(s))
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "AUTH_REMOTE_USAGE_EVERY must be seconds between usage reports, \
                                 from 1 to 3600, or off (got `{raw}`)"
                            ))
                        })?,
                ),
            };
            builder = builder.usage_reports(every);
        }
        Ok(Some(builder))
    }

    /// Drops the cached answer for a key (after revoking it upstream); a
    /// credit lease that came with it is given back.
    pub fn invalidate(&self, digest: &Digest) {
        self.inner.drop_entry(digest);
    }

    /// Drops every cached answer, and gives every credit lease back.
    pub fn clear(&self) {
        self.inner.drop_all();
    }

    /// Whether the changes stream is live: connected, its `ready` received,
    /// key changes reaching the cache as they happen. `false` while it
    /// connects or is down, when the service offers none, and when it is
    /// switched off.
    pub fn stream_live(&self) -> bool {
        self.inner.stream_state.live()
    }

    /// Whether the circuit is open (calls are not being made).
    pub fn circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// What a readiness check needs: whether new keys can be validated,
    /// whether revocations arrive as they happen, when the service last
    /// answered.
    ///
    /// ```
    /// let v = auth_remote::RemoteVerifier::builder("http://127.0.0.1:1").build().unwrap();
    /// let state = v.state();
    /// assert!(state.can_validate_new_keys());
    /// assert_eq!(state.last_answer, None);
    /// ```
    pub fn state(&self) -> RemoteState {
        let ms = self.inner.health.last_answer.load(Ordering::Relaxed);
        RemoteState {
            circuit_open: self.circuit_open(),
            stream_live: self.stream_live(),
            last_answer: (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms)),
            unavailable: self.unavailable_count(),
        }
    }

    /// How many requests were answered unavailable so far (outages, an
    /// open circuit, throttling, the upstream budget). An outage is logged
    /// once when it starts and once when it ends; this counts the rest.
    pub fn unavailable_count(&self) -> u64 {
        self.inner.health.unavailable.load(Ordering::Relaxed)
    }

    /// Gives back what is left of every credit lease this verifier holds,
    /// and waits for the key service's answers (each within the call
    /// timeout). Call it before a graceful shutdown: a runtime that stops
    /// first drops the returns, and their credits are lost. The verifier
    /// keeps working: a key with credits takes a new lease when next asked.
    pub async fn return_leases(&self) {
        let leases: Vec<_> = self
            .inner
            .leases
            .lock()
            .drain()
            .map(|(_, lease)| lease)
            .collect();
        let returns: Vec<_> = leases
            .iter()
            .filter_map(|lease| self.inner.returns.end(lease))
            .collect();
        for task in returns {
            let _ = task.await;
        }
    }

    /// Reports the decisions counted so far and not yet reported (see
    /// [`RemoteVerifierBuilder::usage_reports`]), and waits for the key
    /// service's answers (after a report under way, if any; each request
    /// within the call timeout). Call it before a graceful shutdown, with
    /// [`return_leases`](Self::return_leases): a process that stops
    /// without it loses what was counted since the last report the service
    /// accepted. A report the service certainly did not take stays
    /// pending. Cut short (a timeout around it, its caller gone), the
    /// request under way is counted lost and what was not sent yet stays
    /// pending. Nothing happens while counting is off.
    pub async fn report_usage(&self) {
        if let Some(usage) = &self.inner.usage {
            usage.report().await;
        }
    }

    /// How many calls are under way (distinct keys and scopes being asked
    /// about); for tests and metrics.
    #[doc(hidden)]
    pub fn inflight_len(&self) -> usize {
        self.inner.inflight.len()
    }

    /// How many credit leases are held (one per key with credits in use);
    /// for tests and metrics.
    #[doc(hidden)]
    pub fn leases_len(&self) -> usize {
        self.inner.leases.lock().len()
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
    async fn call(&self, key: &str, scope: Option<&str>) -> Reply {
        let body = ValidateRequest {
            api_key: key.to_owned(),
            scope: scope.map(str::to_owned),
            cost: None,
            // The service ignores it for keys without credits. Not while
            // it is failing: a lease taken by a call whose answer is lost
            // is lost with it (at most one per outage).
            lease: (self.lease_want > 0 && !self.health.down.load(Ordering::Relaxed))
                .then_some(self.lease_want),
        };
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&body);
        // The request holds the serialised body: one copy of the key fewer.
        drop(body);
        if let Some((name, value)) = &self.credential {
            request = request.header(name.clone(), value.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Reply::Failed(Failure::new(if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect error"
                } else {
                    "request error"
                }));
            }
        };
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Reply::TooManyRequests;
        }
        if !status.is_success() {
            let why = match status.as_u16() {
                401 | 403 => "the key service refused our service credential",
                300..=399 => "redirected (not followed: it would re-send the key)",
                _ => "error status",
            };
            return Reply::Failed(Failure {
                why,
                status: Some(status.as_u16()),
            });
        }
        let bytes = match read_limited(response).await {
            Ok(bytes) => bytes,
            Err(why) => return Reply::Failed(Failure::new(why)),
        };
        // An unknown or missing `code` fails here: never decided from text.
        let Ok(answer) = serde_json::from_slice::<ValidateResponse>(&bytes) else {
            return Reply::Failed(Failure::new("malformed answer"));
        };
        match answer.verdict() {
            Ok(verdict) => Reply::Answer(answer, verdict),
            Err(_) => Reply::Failed(Failure::new(
                "inconsistent answer (`valid` contradicts `code`)",
            )),
        }
    }
}

/// An answer's body, at most [`MAX_ANSWER`] bytes (an answer is a few
/// hundred); why not, for the log.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, &'static str> {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER => {
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => return Err("the answer is too large"),
            Ok(None) => return Ok(bytes),
            Err(_) => return Err("the answer was cut off"),
        }
    }
}

/// What a well-formed answer means, and for a valid one how long the key
/// has left (its `expiresAt`). The principals are labelled with the verifier's `instance` id
/// ([`VERIFIER_LABEL`]) — once per answer, never per cache hit.
fn read(
    answer: ValidateResponse,
    verdict: Verdict,
    digest: &Digest,
    instance: &str,
) -> (Outcome, Option<Duration>) {
    let key_id = key_id(digest);
    let principal = |user: Option<String>| {
        Principal::new(user.unwrap_or_else(|| key_id.clone()))
            .with_key_id(key_id.clone())
            .with_label(VERIFIER_LABEL, instance)
    };
    // A key with credits: this answer spent one request's worth.
    let charged = answer.credits_remaining.is_some();
    let code = match verdict {
        Verdict::Valid => {
            let left = match answer.expires_at {
                None => None,
                Some(at) => match time_left(at) {
                    Some(left) => Some(left),
                    // Valid, says the service, but past its own expiry.
                    None => return (Outcome::Denied(Denial::Expired), None),
                },
            };
            let mut p = principal(answer.user_id);
            if let Some(scopes) = answer.scopes {
                p = p.with_scopes(scopes);
            }
            if let Some(RateLimit { requests, window }) = answer.rate_limit {
                if requests > 0 && window > 0 {
                    p = p.with_rate_limit(RateLimitPolicy::new(
                        requests,
                        Duration::from_secs(window),
                    ));
                }
            }
            let p = Arc::new(p);
            return if charged {
                (Outcome::Charged(p), left)
            } else {
                (Outcome::Valid(p), left)
            };
        }
        Verdict::Refused(code) => code,
    };
    let outcome = match code {
        Code::Invalid => Outcome::Denied(Denial::Invalid),
        Code::Expired => Outcome::Denied(Denial::Expired),
        Code::Disabled => Outcome::Denied(Denial::Disabled),
        // Counted as refused by the service (or here, for callers joined on
        // the call): a guard refusing it moves nothing.
        Code::InsufficientScope => Outcome::LacksScope(Arc::new(
            principal(answer.user_id).with_label(ANSWER_LABEL, "insufficient_scope"),
        )),
        Code::RateLimited => Outcome::KeyLimited,
        // Until the next refill, as the service says (bounded: a year).
        Code::UsageExceeded => Outcome::OutOfCredits(
            answer
                .retry_after
                .map(|s| Duration::from_secs(s.min(366 * 24 * 3600))),
        ),
        // `verdict` never refuses with `valid`; if it did, decide nothing.
        Code::Valid => Outcome::Unavailable,
    };
    (outcome, None)
}

/// The key id of this verifier's principals: a per-key limit bucket, 64
/// bits of the digest, not the key.
fn key_id(digest: &Digest) -> String {
    format!("remote:{}", &digest.to_hex()[..16])
}

/// Time until `expires_at` (Unix seconds), `None` when it has passed.
fn time_left(expires_at: u64) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Duration::from_secs(expires_at)
        .checked_sub(now)
        .filter(|left| !left.is_zero())
}

impl Inner {
    /// One call unless the circuit is open or the budget spent, and its
    /// answer recorded: the breaker for all, the cache for valid and
    /// refused keys.
    async fn upstream(
        self: &Arc<Self>,
        key: &str,
        scope: Option<&str>,
        digest: &Digest,
    ) -> Outcome {
        let Some(attempt) = self.breaker.permit() else {
            self.calls.count(Call::CircuitOpen);
            return Outcome::Unavailable;
        };
        if self.budget.as_ref().is_some_and(|b| !b.try_take()) {
            attempt.release();
            self.calls.count(Call::OverBudget);
            if Health::due(&self.health.shed_logged, self.clock.now()) {
                tracing::warn!(target: "auth_remote", per_second = self.budget_per_second,
                    "upstream call budget spent: cache misses answered unavailable");
            }
            return Outcome::Shed;
        }
        // Taken before the call: an invalidation meanwhile voids the fill.
        let ticket = self.cache.ticket(digest);
        // Dropped mid-call (only when the runtime shuts down), `attempt`
        // counts as failed.
        let mut keep = true;
        let mut lease = None;
        let asked = self.clock.now();
        let reply = self.call(key, scope).await;
        let took = self.clock.now().saturating_sub(asked);
        let (mut outcome, key_left) = match reply {
            Reply::Answer(mut answer, verdict) => {
                attempt.success();
                self.health.answered();
                // From an instance that had not heard of a change this
                // verifier has seen: used for this request, not kept.
                if answer.seq.is_some_and(|seq| seq < self.stream_state.seen()) {
                    keep = false;
                }
                lease = answer.lease.take();
                read(answer, verdict, digest, &self.instance)
            }
            Reply::TooManyRequests => {
                // Busy, not down: this request only.
                attempt.throttled();
                if Health::due(&self.health.throttle_logged, self.clock.now()) {
                    tracing::warn!(target: "auth_remote",
                        "the key service answers 429: cache misses answered unavailable");
                }
                (Outcome::Throttled, None)
            }
            Reply::Failed(failure) => {
                attempt.failure();
                self.health.failed(failure);
                (Outcome::Unavailable, None)
            }
        };
        self.calls.count(match &outcome {
            Outcome::Valid(_) | Outcome::Charged(_) | Outcome::Leased(..) => Call::Valid,
            Outcome::Denied(Denial::Expired) => Call::Expired,
            Outcome::Denied(Denial::Disabled) => Call::Disabled,
            Outcome::Denied(_) => Call::Invalid,
            Outcome::LacksScope(_) => Call::InsufficientScope,
            Outcome::KeyLimited => Call::RateLimited,
            Outcome::OutOfCredits(_) => Call::UsageExceeded,
            Outcome::Throttled => Call::Throttled,
            Outcome::Unavailable | Outcome::Shed => Call::Failed,
        });
        match &outcome {
            _ if !keep => {}
            Outcome::Valid(p) => {
                let fresh = self.fresh(Arc::clone(p), key_left);
                self.fill(digest, ticket, CacheEntry::Granted(fresh));
            }
            Outcome::Charged(p) => {
                if let Some(granted) = lease.take() {
                    if let Some(local) = self.adopt(granted, took, p, key_left, digest, ticket) {
                        outcome = Outcome::Leased(Arc::clone(p), local);
                    }
                }
            }
            Outcome::Denied(denial) => {
                self.fill(digest, ticket, CacheEntry::Denied(*denial));
            }
            Outcome::Leased(..)
            | Outcome::LacksScope(_)
            | Outcome::Unavailable
            | Outcome::Throttled
            | Outcome::KeyLimited
            | Outcome::OutOfCredits(_)
            | Outcome::Shed => {}
        }
        // A lease on an answer that is not kept, or not a charged grant
        // (the service should send none): all of it goes back.
        if let Some(granted) = lease {
            self.returns.leased(granted.credits);
            let _ = self.returns.end(&LocalLease::new(
                granted.id,
                granted.credits,
                Duration::ZERO,
                tokio::runtime::Handle::current(),
            ));
        }
        tracing::debug!(target: "auth_remote", fingerprint = %digest.fingerprint(),
            outcome = outcome_name(&outcome), "key service answered");
        outcome
    }

    /// A valid answer as cached, fresh from now: never past the key's own
    /// expiry.
    fn fresh(&self, principal: Arc<Principal>, key_left: Option<Duration>) -> Fresh {
        let now = self.clock.now();
        let key_expires = key_left.map_or(Duration::MAX, |left| now.saturating_add(left));
        Fresh {
            principal,
            filled: now,
            until: now.saturating_add(self.fresh_for).min(key_expires),
            key_expires,
            lease: None,
        }
    }

    /// A charged grant that came with a lease: cached with it (the lease
    /// registered, a timer set for its deadline), unless nothing of it can
    /// be spent or the fill is voided — then it goes back whole and the
    /// grant stays the caller's alone (`None`).
    fn adopt(
        self: &Arc<Self>,
        granted: Lease,
        took: Duration,
        principal: &Arc<Principal>,
        key_left: Option<Duration>,
        digest: &Digest,
        ticket: FillTicket,
    ) -> Option<Arc<LocalLease>> {
        self.returns.leased(granted.credits);
        let mut fresh = self.fresh(Arc::clone(principal), key_left);
        let now = fresh.filled;
        // The service's end is `ttlMs` after it granted the lease, which
        // was somewhere within the call: spent until the call's own time
        // and a margin (for the return to arrive) before that — and never
        // past the grant's freshness (nothing is spent from a stale grant;
        // the timer returns the lease then).
        let deadline = now
            .saturating_add(
                Duration::from_millis(granted.ttl_ms)
                    .saturating_sub(took.saturating_add(lease::MARGIN)),
            )
            .min(fresh.until);
        // Called within the call's own task: on the verifier's runtime.
        let lease = LocalLease::new(
            granted.id,
            granted.credits,
            deadline,
            tokio::runtime::Handle::current(),
        );
        if granted.credits == 0 || deadline <= now {
            let _ = self.returns.end(&lease);
            return None;
        }
        self.schedule(*digest, &lease);
        fresh.lease = Some(Arc::clone(&lease));
        if !self.fill(digest, ticket, CacheEntry::Granted(fresh)) {
            // An invalidation came meanwhile (or a newer answer is held).
            let _ = self.returns.end(&lease);
            return None;
        }
        Some(lease)
    }

    /// Ends `lease` at its deadline (a task holding the verifier weakly:
    /// aborted when the lease ends sooner, and by the verifier's drop).
    fn schedule(self: &Arc<Self>, digest: Digest, lease: &Arc<LocalLease>) {
        let wait = lease.deadline().saturating_sub(self.clock.now());
        let inner = Arc::downgrade(self);
        let held = Arc::clone(lease);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Gone: its drop ended the lease.
            if let Some(inner) = inner.upgrade() {
                inner.lapsed(&digest, &held);
            }
        });
        lease.set_timer(timer.abort_handle());
    }

    /// A lease's deadline came: out of the registry (unless replaced
    /// meanwhile), and what is left goes back.
    fn lapsed(&self, digest: &Digest, lease: &Arc<LocalLease>) {
        let mut leases = self.leases.lock();
        if leases.get(digest).is_some_and(|l| Arc::ptr_eq(l, lease)) {
            leases.remove(digest);
        }
        drop(leases);
        let _ = self.returns.end(lease);
    }

    /// Fills the cache, keeping the leases in step: a grant with a lease
    /// registers it, and the lease held for the digest before (if any)
    /// ends — replaced by a new lease, a grant without credits or a denial.
    fn fill(&self, digest: &Digest, ticket: FillTicket, entry: CacheEntry<Fresh>) -> bool {
        let lease = match &entry {
            CacheEntry::Granted(fresh) => fresh.lease.clone(),
            CacheEntry::Denied(_) => None,
        };
        let mut leases = self.leases.lock();
        if !self.cache.fill(ticket, entry) {
            return false;
        }
        let before = match lease {
            Some(lease) => leases.insert(*digest, lease),
            None => leases.remove(digest),
        };
        drop(leases);
        if let Some(before) = before {
            let _ = self.returns.end(&before);
        }
        true
    }

    /// Drops what is cached for `digest`; its lease goes back.
    fn drop_entry(&self, digest: &Digest) {
        let mut leases = self.leases.lock();
        self.cache.invalidate(digest);
        let before = leases.remove(digest);
        drop(leases);
        if let Some(before) = before {
            let _ = self.returns.end(&before);
        }
    }

    /// Drops everything cached; every lease goes back.
    fn drop_all(&self) {
        let mut leases = self.leases.lock();
        self.cache.clear();
        let before: Vec<_> = leases.drain().map(|(_, lease)| lease).collect();
        drop(leases);
        for lease in before {
            let _ = self.returns.end(&lease);
        }
    }

    /// Whether a fresh grant answers a request: at once for a key without
    /// credits; for a key with them, with one leased credit — except a
    /// request for a route scope the key lacks, which the guard refuses
    /// (403) and which spends nothing, as at the service.
    #[inline]
    fn admits(&self, fresh: &Fresh, route_scope: Option<&str>, now: Duration) -> bool {
        match &fresh.lease {
            None => true,
            Some(lease) => {
                route_scope.is_some_and(|scope| !fresh.principal.has_scope(scope))
                    || lease.take(now)
            }
        }
    }
}

impl Verifier for RemoteVerifier {
    /// One cache look-up: a fresh grant (for a key with credits, with a
    /// credit taken from its lease) or a cached denial is answered at once;
    /// anything else (a miss, a stale grant, a grant bounded by the changes
    /// stream being down, a lease spent or at its deadline) is a future
    /// that asks the service.
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        match self.cached(credential.digest()) {
            Some(CacheEntry::Granted(fresh)) => {
                let now = self.now();
                // Keys without credits: one branch more than before.
                if now < self.inner.served_until(&fresh)
                    && self.inner.admits(&fresh, ctx.required_scope, now)
                {
                    tracing::trace!(target: "auth_remote", "cache hit");
                    #[cfg(feature = "prometheus")]
                    self.inner.stats.hit();
                    // Decided here: counted, at the clock reading above.
                    self.inner.count(credential.digest(), now, Code::Valid);
                    return Answer::Ready(Ok(fresh.principal));
                }
                // Stale (or the changes stream is down): used only while
                // the service is unavailable. A spent lease: ask again.
            }
            Some(CacheEntry::Denied(denial)) => {
                #[cfg(feature = "prometheus")]
                self.inner.stats.hit();
                self.inner.count_denial(credential.digest(), denial);
                return Answer::Ready(Err(denial.into()));
            }
            None => {}
        }
        #[cfg(feature = "prometheus")]
        self.inner.stats.miss();
        // The future owns what it needs: the verifier (an `Arc` inside),
        // the credential and the route's scope.
        let this = self.clone();
        let credential = credential.clone();
        let required_scope = ctx.required_scope.map(str::to_owned);
        Answer::pending(async move { this.missed(&credential, required_scope).await })
    }

    /// Moves the grant's count (see
    /// [`RemoteVerifierBuilder::usage_reports`]): in the current hour's
    /// pending counts for `digest`, `valid` − 1 and `why` + 1 — so `valid`
    /// may be negative in a report when the grant was the key service's
    /// answer, counted there. Only for a principal this verifier built
    /// (labelled with its instance id: not another verifier's, such as a
    /// [`Fallback`](auth_core::Fallback)'s other one, another
    /// `RemoteVerifier` included), and not for one the service answered
    /// `insufficient_scope` for (counted as that already).
    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        let Some(usage) = &self.inner.usage else {
            return;
        };
        let code = match why {
            RefusedAfter::RateLimited => Code::RateLimited,
            RefusedAfter::InsufficientScope => Code::InsufficientScope,
            _ => return,
        };
        if principal.label(VERIFIER_LABEL) != Some(self.inner.instance.as_str())
            || principal.label(ANSWER_LABEL).is_some()
        {
            return;
        }
        usage.moved(digest, self.now(), code);
    }
}

impl RemoteVerifier {
    /// A cache miss: joins or makes the one call for this key and scope.
    async fn missed(
        &self,
        credential: &Credential,
        required_scope: Option<String>,
    ) -> VerifyResult {
        self.inner.subscribe();
        self.inner.start_reporter();
        let inner = &*self.inner;
        let digest = *credential.digest();
        tracing::trace!(target: "auth_remote", fingerprint = %digest.fingerprint(), "cache miss");
        let scope = required_scope.or_else(|| inner.scope.clone());
        // With whether the outcome was decided here (taken from another
        // caller's call): counted here. A caller's own call was counted by
        // the service (or, answered from the cache, by `ask`).
        let (outcome, here) = loop {
            // One call per key (and scope) at a time; the others wait for
            // it. The guard leaves the map clean however this future ends.
            let joined = inner.inflight.join((digest, scope.clone()));
            // Whether the call is this caller's own (exactly one caller's
            // closure runs per completed call).
            let mut own = false;
            let outcome = joined
                .cell()
                .get_or_init(|| {
                    own = true;
                    self.ask(credential, joined.scope())
                })
                .await
                .clone();
            match outcome {
                // One request's credits were spent: the grant is the
                // caller's who made the call; the others are charged with
                // calls of their own.
                Outcome::Charged(_) if !own => {
                    break (self.ask(credential, joined.scope()).await, false);
                }
                // The call's owner is paid for; the others take a leased
                // credit each, or join the next call (one call a round, so
                // every round lets its owner through: this ends).
                Outcome::Leased(p, lease) if !own => {
                    if lease.take(self.now()) {
                        break (Outcome::Valid(p), true);
                    }
                }
                outcome => break (outcome, !own),
            }
        };
        // Counted once the answer is in: a future dropped while it waits
        // counts nothing.
        if here {
            inner.count_taken(&digest, &outcome);
        }
        match outcome {
            Outcome::Valid(p)
            | Outcome::Charged(p)
            | Outcome::Leased(p, _)
            | Outcome::LacksScope(p) => Ok(p),
            Outcome::Denied(denial) => Err(denial.into()),
            Outcome::Unavailable | Outcome::Shed => self.stale(&digest),
            Outcome::Throttled => Err(self.unavailable()),
            Outcome::KeyLimited => Err(VerifyError::RateLimited),
            Outcome::OutOfCredits(retry_after) => Err(VerifyError::UsageExceeded { retry_after }),
        }
    }

    /// Asks the service unless the circuit is open or the budget spent,
    /// and records the answer (the cache for valid and refused keys, the
    /// breaker for all).
    async fn ask(&self, credential: &Credential, scope: Option<&str>) -> Outcome {
        let digest = credential.digest();
        // A caller that missed the cache just before another's call filled
        // it and left: the answer is there now (with a lease: if a credit
        // is left for this caller).
        // Decided here, so counted here.
        match self.cached(digest) {
            Some(CacheEntry::Granted(fresh)) => {
                let now = self.now();
                if now < self.inner.served_until(&fresh) {
                    match fresh.lease {
                        None => {
                            self.inner.count(digest, now, Code::Valid);
                            return Outcome::Valid(fresh.principal);
                        }
                        Some(lease) if lease.take(now) => {
                            self.inner.count(digest, now, Code::Valid);
                            return Outcome::Leased(fresh.principal, lease);
                        }
                        Some(_) => {}
                    }
                }
            }
            Some(CacheEntry::Denied(denial)) => {
                self.inner.count_denial(digest, denial);
                return Outcome::Denied(denial);
            }
            None => {}
        }
        let Ok(key) = std::str::from_utf8(credential.expose()) else {
            // Extraction admits only visible ASCII; anything else is no key.
            return Outcome::Denied(Denial::Invalid);
        };
        // The breaker's permit, the call and its recording run in a task of
        // their own: a caller that hangs up (or a timeout layer) cannot cut
        // them short, so every permitted call ends with the service's real
        // answer — recorded in the breaker and the cache — within the
        // timeout. Were the call dropped with its caller, a client hanging
        // up would count as the service failing, and a few of them could
        // hold the circuit open.
        let task = tokio::spawn({
            let inner = Arc::clone(&self.inner);
            let (key, scope, digest) = (key.to_owned(), scope.map(str::to_owned), *digest);
            async move { inner.upstream(&key, scope.as_deref(), &digest).await }
        });
        // Only a runtime shutting down ends the task early: unavailable (and
        // the attempt's guard counts it as a failure).
        task.await.unwrap_or(Outcome::Unavailable)
    }

    /// The answer while the service is unavailable: a recently expired
    /// valid answer where serve-stale allows it, else unavailable.
    fn stale(&self, digest: &Digest) -> VerifyResult {
        if let (Some(grace), Some(CacheEntry::Granted(fresh))) =
            (self.inner.serve_stale, self.cached(digest))
        {
            let now = self.now();
            // The grace counts from when the answer stopped being used,
            // the stream-down bound included.
            let served_until = self.inner.served_until(&fresh);
            // A key with credits: only with a leased credit.
            if now < served_until.saturating_add(grace)
                && now < fresh.key_expires
                && fresh.lease.as_ref().is_none_or(|lease| lease.take(now))
            {
                tracing::debug!(target: "auth_remote", fingerprint = %digest.fingerprint(),
                    "key service unavailable: serving a stale valid answer");
                self.inner.count(digest, now, Code::Valid);
                return Ok(fresh.principal);
            }
        }
        Err(self.unavailable())
    }

    /// Counts an unavailable answer.
    fn unavailable(&self) -> VerifyError {
        self.inner
            .health
            .unavailable
            .fetch_add(1, Ordering::Relaxed);
        VerifyError::Unavailable
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Valid(_) => "valid",
        Outcome::Charged(_) => "valid, credits spent",
        Outcome::Leased(..) => "valid, credits leased",
        Outcome::LacksScope(_) => "lacks scope",
        Outcome::Denied(Denial::Expired) => "expired",
        Outcome::Denied(Denial::Disabled) => "disabled",
        Outcome::Denied(_) => "invalid",
        Outcome::Unavailable => "unavailable",
        Outcome::Throttled => "throttled",
        Outcome::KeyLimited => "rate limited",
        Outcome::OutOfCredits(_) => "usage exceeded",
        Outcome::Shed => "over budget",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_userinfo_or_query() {
        for (url, shown) in [
            ("http://127.0.0.1:8080/v", "http://127.0.0.1:8080/v"),
            (
                "http://u:p@[::1]:8080/v?k=s#f",
                "http://***@[::1]:8080/v?***",
            ),
            (
                "https://only-user@keys.internal/v",
                "https://***@keys.internal/v",
            ),
            ("http://u:p@host:notaport/v", "<not an http(s) URL>"),
            // A scheme forgotten: `admin` would be read as the scheme.
            ("admin:hunter2@keys.internal:8080", "<not an http(s) URL>"),
            ("postgres://u:p@db/x", "<not an http(s) URL>"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }

    /// A key service's usage endpoint that takes its first request (the
    /// body read) and never answers it, and accepts the others; the digests
    /// of every request.
    struct Stub {
        got: Mutex<Vec<Vec<String>>>,
    }

    impl Stub {
        async fn start() -> (Arc<Self>, String) {
            use auth_core::protocol::{USAGE_PATH, UsageAccepted, UsageReport};
            use axum::Json;
            use axum::extract::State;

            async fn usage(
                State(stub): State<Arc<Stub>>,
                Json(report): Json<UsageReport>,
            ) -> Json<UsageAccepted> {
                let first = {
                    let mut got = stub.got.lock();
                    got.push(report.entries.iter().map(|e| e.digest.clone()).collect());
                    got.len() == 1
                };
                if first {
                    std::future::pending::<()>().await;
                }
                Json(UsageAccepted {
                    accepted: report.entries.len() as u64,
                })
            }
            let stub = Arc::new(Self {
                got: Mutex::new(Vec::new()),
            });
            let app = axum::Router::new()
                .route(USAGE_PATH, axum::routing::post(usage))
                .with_state(Arc::clone(&stub));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (stub, format!("http://{addr}"))
        }

        fn requests(&self) -> usize {
            self.got.lock().len()
        }

        /// Every one of `n` digests arrived, none twice.
        fn each_once(&self, n: usize) {
            let got = self.got.lock();
            let all: Vec<&String> = got.iter().flatten().collect();
            let unique: std::collections::HashSet<&&String> = all.iter().collect();
            assert_eq!((all.len(), unique.len()), (n, n));
        }
    }

    /// A verifier reporting to `base`, its counts, and `n` keys counted
    /// once each: three requests' worth.
    fn counted(base: &str, every: Duration, n: usize) -> (RemoteVerifier, Arc<Usage>) {
        let v = RemoteVerifier::builder(base)
            .changes_stream(false)
            .timeout(Duration::from_secs(30))
            .usage_reports(Some(every))
            .build()
            .unwrap();
        let usage = Arc::clone(v.inner.usage.as_ref().unwrap());
        let now = v.now();
        for i in 0..n {
            usage.count(&Digest::of(&i.to_le_bytes()), now, Code::Valid);
        }
        (v, usage)
    }

    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const CHUNK: usize = auth_core::protocol::MAX_USAGE_ENTRIES;

    /// `report_usage` cut short by a timeout while its first request
    /// stalls: that request is counted lost (it arrived), the two it never
    /// sent go with the next report — nothing twice, nothing lost besides.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_cut_short_puts_back_what_it_never_sent() {
        let (stub, base) = Stub::start().await;
        let n = 2 * CHUNK + 1;
        let (v, usage) = counted(&base, Duration::from_secs(3600), n);
        let cut = tokio::time::timeout(Duration::from_secs(1), v.report_usage()).await;
        assert!(cut.is_err(), "the first request stalls");
        assert_eq!(stub.requests(), 1);
        assert_eq!(usage.tally.all(), [0, 0, CHUNK as u64, 0]);
        assert!(usage.pending(), "the rest was put back");
        v.report_usage().await;
        assert_eq!(stub.requests(), 3);
        stub.each_once(n);
        assert_eq!(usage.tally.all(), [(n - CHUNK) as u64, 0, CHUNK as u64, 0]);
        assert!(!usage.pending());
    }

    /// A verifier dropped while its reporter's report stalls: the last
    /// report sends what that one never did.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verifier_dropped_mid_report_sends_the_rest() {
        let (stub, base) = Stub::start().await;
        let n = 2 * CHUNK + 1;
        let (v, usage) = counted(&base, Duration::from_secs(1), n);
        eventually("the reporter's first request", || stub.requests() == 1).await;
        drop(v);
        eventually("the last report", || stub.requests() == 3).await;
        eventually("its answers", || {
            usage.tally.all() == [(n - CHUNK) as u64, 0, CHUNK as u64, 0]
        })
        .await;
        stub.each_once(n);
        assert!(!usage.pending());
    }
}
