//! The whole decision for one request: public paths, preflight, mode,
//! extraction, verification, scope and rate limit → a [`Decision`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::metrics::{DecisionCounters, DecisionCounts, Outcome};
use crate::rejection::is_plain_token;
use crate::{
    Credential, CredentialSources, Error, ExtractError, GcraLimiter, Principal, RateDecision,
    RateLimitPolicy, RateLimiter, RateStatus, Rejection, RejectionKind, RequestView, StaticKey,
    Verifier, VerifyContext, VerifyError,
};

/// How a guard treats requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Refuse what fails authentication (the normal mode).
    Enforce,
    /// Shadow mode for rollout: run the whole decision, log and count what
    /// would have been refused, and let every request through.
    ReportOnly,
    /// No key configured: everything passes (logged loudly when chosen).
    Open,
    /// Not ready yet: 503 with `Retry-After` until the verifier reports
    /// ready, then [`Enforce`](Mode::Enforce).
    Uninitialised,
}

impl Mode {
    fn to_u8(self) -> u8 {
        match self {
            Self::Enforce => 0,
            Self::ReportOnly => 1,
            Self::Open => 2,
            Self::Uninitialised => 3,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::ReportOnly,
            2 => Self::Open,
            3 => Self::Uninitialised,
            _ => Self::Enforce,
        }
    }
}

/// Paths that skip authentication: exact paths and segment prefixes.
///
/// Matching is on the path as routed, and only on clean paths: a path with
/// `.` or `..` segments, `//`, `%`-escapes, `;`, `\` or control characters
/// is never public, so `/health/../admin` or `/health%2F..%2Fadmin` cannot
/// slip through. Prefixes match whole segments (`/static` matches
/// `/static/app.js`, not `/staticfiles`).
///
/// ```
/// use auth_core::PublicPaths;
///
/// let public = PublicPaths::default().prefix("/docs");
/// assert!(public.is_public("/health"));
/// assert!(public.is_public("/docs/index.html"));
/// for p in ["/health/", "/healthx", "/health/../admin", "/docs/../admin", "/docsx", "/health%2e"] {
///     assert!(!public.is_public(p), "{p}");
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicPaths {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Default for PublicPaths {
    /// Only `/health`.
    fn default() -> Self {
        Self::none().exact("/health")
    }
}

impl PublicPaths {
    /// No public path at all.
    pub fn none() -> Self {
        Self {
            exact: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    /// Adds an exact public path.
    pub fn exact(mut self, path: &str) -> Self {
        self.exact.push(path.to_owned());
        self
    }

    /// Adds a public prefix (whole segments; a trailing `/` is ignored).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefixes.push(prefix.trim_end_matches('/').to_owned());
        self
    }

    /// Whether `path` skips authentication.
    pub fn is_public(&self, path: &str) -> bool {
        if self.exact.is_empty() && self.prefixes.is_empty() {
            return false;
        }
        // Matched first, checked after: most requests match nothing, and
        // the cleanliness check is the dearer half.
        let matched = self.exact.iter().any(|p| p == path)
            || self.prefixes.iter().any(|p| {
                path.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
        matched && is_clean_path(path)
    }

    fn validate(&self) -> Result<(), Error> {
        for p in self.exact.iter().chain(&self.prefixes) {
            if !is_clean_path(p) {
                return Err(Error::Config(format!(
                    "public path `{p}` must be a clean absolute path"
                )));
            }
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(Error::Config(
                "the public prefix `/` would make every path public; use Mode::Open".into(),
            ));
        }
        Ok(())
    }
}

/// A CORS preflight as browsers send it: `OPTIONS` with a non-blank
/// `Origin` and a non-blank `Access-Control-Request-Method`. An `OPTIONS`
/// without `Origin` is no browser's preflight, so it is authenticated.
fn is_preflight<R: RequestView + ?Sized>(req: &R) -> bool {
    let non_blank = |name| {
        req.header_values(name)
            .next()
            .is_some_and(|v| !v.trim_ascii().is_empty())
    };
    req.method().eq_ignore_ascii_case("OPTIONS")
        && non_blank("origin")
        && non_blank("access-control-request-method")
}

/// An absolute path with no dot segments, empty segments, escapes or
/// characters that some router or proxy might reinterpret.
fn is_clean_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if !path
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b';' | b'\\' | b'?' | b'#'))
    {
        return false;
    }
    if path == "/" {
        return true;
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    body[1..]
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// A request that passed: who the caller is and the state of their limit.
#[derive(Clone, Debug)]
pub struct Grant {
    principal: Arc<Principal>,
    rate: Option<RateStatus>,
}

impl Grant {
    /// The authenticated caller.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The authenticated caller, taken out of the grant (no reference
    /// count traffic, for adapters that hand it on).
    pub fn into_principal(self) -> Arc<Principal> {
        self.principal
    }

    /// The caller's rate-limit state, if a limit applies.
    pub fn rate(&self) -> Option<&RateStatus> {
        self.rate.as_ref()
    }

    /// Headers to add to the response (`RateLimit`, `RateLimit-Policy`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.rate
            .as_ref()
            .map(|r| crate::rejection::rate_limit_headers(r).to_vec())
            .unwrap_or_default()
    }
}

/// Why a request passed without an authenticated principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassReason {
    /// A public path.
    PublicPath,
    /// A CORS preflight, let through by configuration.
    Preflight,
    /// The guard is in open mode.
    Open,
    /// Report-only mode let through a request it would have refused.
    ReportOnly(RejectionKind),
}

/// What the guard decided for a request. Adapters translate it: `Allow` →
/// run the handler with the principal; `Pass` → run it without one;
/// `Reject` → answer with the rejection.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Authenticated.
    Allow(Grant),
    /// Let through without authentication.
    Pass(PassReason),
    /// Refused.
    Reject(Rejection),
}

struct Shared {
    keyring: Arc<str>,
    realm: Arc<str>,
    verifier: Arc<dyn Verifier>,
    sources: CredentialSources,
    public: PublicPaths,
    allow_preflight: bool,
    limiter: Arc<dyn RateLimiter>,
    default_rate_limit: Option<RateLimitPolicy>,
    retry_unavailable: Duration,
    retry_not_ready: Duration,
    mode: AtomicU8,
    counters: DecisionCounters,
}

/// Decides requests: the one piece every adapter wraps.
///
/// Cheap to clone; clones share the verifier, mode and counters.
/// [`with_scope`](Guard::with_scope) gives a clone that also requires a scope,
/// for per-route guards.
///
/// ```
/// use auth_core::{Decision, Guard, PlainRequest, StaticKey};
///
/// let guard = Guard::builder(StaticKey::new("s3cret").unwrap()).build().unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
///
/// let ok = rt.block_on(guard.check(&PlainRequest::get("/items").header("x-api-key", "s3cret")));
/// assert!(matches!(ok, Decision::Allow(_)));
///
/// let Decision::Reject(r) = rt.block_on(guard.check(&PlainRequest::get("/items"))) else { panic!() };
/// assert_eq!(r.status(), 401);
///
/// let health = rt.block_on(guard.check(&PlainRequest::get("/health")));
/// assert!(matches!(health, Decision::Pass(_)));
/// ```
#[derive(Clone)]
pub struct Guard {
    shared: Arc<Shared>,
    scope: Option<Arc<str>>,
}

/// Builds a [`Guard`].
pub struct GuardBuilder {
    keyring: String,
    realm: Option<String>,
    verifier: Arc<dyn Verifier>,
    sources: CredentialSources,
    public: PublicPaths,
    allow_preflight: bool,
    scope: Option<String>,
    mode: Mode,
    limiter: Option<Arc<dyn RateLimiter>>,
    default_rate_limit: Option<RateLimitPolicy>,
    retry_unavailable: Duration,
    retry_not_ready: Duration,
}

/// The keyring name of a guard built without one.
pub const DEFAULT_KEYRING: &str = "default";
/// The realm of a guard built without one.
pub const DEFAULT_REALM: &str = "api";

impl Guard {
    /// A builder over `verifier`, in [`Mode::Enforce`], `/health` public.
    pub fn builder(verifier: impl Verifier + 'static) -> GuardBuilder {
        GuardBuilder::new(Arc::new(verifier))
    }

    /// A guard in open mode: everything passes. Logs a loud warning.
    pub fn open() -> Self {
        let deny_all = crate::verifier_fn(|_: &Credential| Err(VerifyError::Unavailable));
        Guard::builder(deny_all)
            .mode(Mode::Open)
            .build()
            .expect("the open guard's configuration is valid")
    }

    /// The internal-service-key pattern with rollout: a [`StaticKey`] from
    /// the environment variable `var`, or [`open`](Guard::open) mode with a
    /// loud warning when `var` is unset. A variable that is set but blank is
    /// an error, never open mode.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        Self::from_env_value(var, std::env::var_os(var))
    }

    pub(crate) fn from_env_value(
        var: &str,
        value: Option<std::ffi::OsString>,
    ) -> Result<Self, Error> {
        match StaticKey::from_env_value(var, value)? {
            Some(key) => Guard::builder(key).build(),
            None => {
                tracing::warn!(
                    target: "auth_core",
                    variable = var,
                    "{var} is not set: OPEN MODE, every request passes without authentication"
                );
                Ok(Self::open())
            }
        }
    }

    /// A clone that also requires `scope` (valid key without it → 403).
    pub fn with_scope(&self, scope: &str) -> Result<Self, Error> {
        check_scope_token(scope)?;
        Ok(Self {
            shared: Arc::clone(&self.shared),
            scope: Some(scope.into()),
        })
    }

    /// The scope this guard requires, if any.
    pub fn required_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The keyring (trust boundary) this guard checks.
    pub fn keyring(&self) -> &str {
        &self.shared.keyring
    }

    /// Where this guard reads credentials from.
    pub fn sources(&self) -> &CredentialSources {
        &self.shared.sources
    }

    /// The realm of the `WWW-Authenticate` challenge.
    pub fn realm(&self) -> &str {
        &self.shared.realm
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.shared.mode.load(Ordering::Acquire))
    }

    /// Changes the mode at run time (shared by all clones).
    pub fn set_mode(&self, mode: Mode) {
        if mode == Mode::Open {
            tracing::warn!(target: "auth_core", keyring = %self.shared.keyring,
                "OPEN MODE: every request passes without authentication");
        }
        self.shared.mode.store(mode.to_u8(), Ordering::Release);
    }

    /// Counts of decisions so far, by outcome.
    pub fn counts(&self) -> DecisionCounts {
        self.shared.counters.snapshot()
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<dyn Verifier> {
        &self.shared.verifier
    }

    /// Checks that `principal` holds `scope`; the rejection (403) otherwise.
    /// For scope extractors and guards in adapters.
    pub fn check_scope(&self, principal: &Principal, scope: &str) -> Result<(), Rejection> {
        if principal.has_scope(scope) {
            Ok(())
        } else {
            self.shared.counters.count(Outcome::Forbidden);
            Err(
                Rejection::new(RejectionKind::InsufficientScope, self.shared.realm.clone())
                    .with_scope(scope.into()),
            )
        }
    }

    /// The decision for a route that requires `scope`, for a request this
    /// guard already let through: `principal` if it was authenticated, else
    /// `passed`, why it passed without one. A public path, open mode and
    /// report-only passes need no scope; in report-only mode a missing scope
    /// is logged and counted, not refused. A request that reached the route
    /// without either was never checked: 401.
    ///
    /// A CORS preflight never satisfies a scope: it is answered as a request
    /// without a credential, 401 and counted as missing, except in open mode
    /// (let through) and report-only mode (logged and counted, let through).
    /// Put the CORS layer in front of a scoped route.
    pub fn route_scope(
        &self,
        principal: Option<&Principal>,
        passed: Option<PassReason>,
        scope: &str,
    ) -> Result<(), Rejection> {
        match (principal, passed) {
            (Some(p), _) => match self.check_scope(p, scope) {
                Err(rejection) if self.mode() == Mode::ReportOnly => {
                    self.shared.counters.count(Outcome::ReportOnly);
                    tracing::warn!(target: "auth_core", keyring = %self.shared.keyring,
                        principal = p.id(), scope, "report-only: request would have been refused (scope)");
                    drop(rejection);
                    Ok(())
                }
                decided => decided,
            },
            // The preflight pass skipped authentication, not the mode: decide
            // it as the request without a credential it is.
            (None, Some(PassReason::Preflight)) => match self.mode() {
                Mode::Open => Ok(()),
                Mode::ReportOnly => {
                    self.shared.counters.count(Outcome::ReportOnly);
                    tracing::warn!(target: "auth_core", keyring = %self.shared.keyring,
                        scope, "report-only: request would have been refused (preflight on a scoped route)");
                    Ok(())
                }
                Mode::Enforce | Mode::Uninitialised => {
                    self.shared.counters.count(Outcome::Missing);
                    Err(self.rejection(RejectionKind::Missing))
                }
            },
            (None, Some(_)) => Ok(()),
            (None, None) => {
                self.shared.counters.count(Outcome::Missing);
                Err(self.rejection(RejectionKind::Missing))
            }
        }
    }

    /// The check for a route that requires `scope`, built once at start
    /// (an invalid scope token is refused here, not per request).
    pub fn scope_for_route(&self, scope: &str) -> Result<RouteScope, Error> {
        check_scope_token(scope)?;
        Ok(RouteScope {
            guard: self.clone(),
            scope: scope.into(),
        })
    }

    /// A rejection of `kind` with this guard's realm and retry hints. For
    /// adapters that must refuse on their own grounds (none should need to).
    pub fn rejection(&self, kind: RejectionKind) -> Rejection {
        let r = Rejection::new(kind, self.shared.realm.clone());
        match kind {
            RejectionKind::Unavailable => r.with_retry_after(self.shared.retry_unavailable),
            RejectionKind::NotReady => r.with_retry_after(self.shared.retry_not_ready),
            _ => r,
        }
    }

    /// Decides `req` without waiting, where the decision needs no I/O
    /// (in-memory keys, cache hits, in-memory rate limits): no future is
    /// made. `None` means the verifier or the rate limiter would have to
    /// wait: use [`check`](Guard::check) (nothing was counted yet).
    ///
    /// Adapters call this first and allocate a future only on `None`.
    pub fn check_now<R: RequestView + ?Sized>(&self, req: &R) -> Option<Decision> {
        let mode = match self.before(req) {
            Ok(mode) => mode,
            Err(decided) => return Some(decided),
        };
        let s = &*self.shared;
        let credential = match self.extract(req) {
            Ok(c) => c,
            Err(rejection) => return Some(self.after(mode, req, Err(rejection))),
        };
        let ctx = self.context(req);
        let principal = match self.verified(&credential, s.verifier.verify_now(&credential, &ctx)?)
        {
            Ok(p) => p,
            Err(rejection) => return Some(self.after(mode, req, Err(rejection))),
        };
        let rate = match self.rate_policy(&principal) {
            Some((key, policy)) => Some(s.limiter.check_now(key, &policy)?),
            None => None,
        };
        Some(self.after(mode, req, self.grant(&credential, principal, rate)))
    }

    /// Decides `req`.
    pub async fn check<R: RequestView + ?Sized>(&self, req: &R) -> Decision {
        let mode = match self.before(req) {
            Ok(mode) => mode,
            Err(decided) => return decided,
        };
        let result = self.authenticate(req).await;
        self.after(mode, req, result)
    }

    /// Public paths, preflight and modes: a decision, or the mode to
    /// authenticate in.
    fn before<R: RequestView + ?Sized>(&self, req: &R) -> Result<Mode, Decision> {
        let s = &*self.shared;
        if s.public.is_public(req.path()) {
            s.counters.count(Outcome::Passed);
            return Err(Decision::Pass(PassReason::PublicPath));
        }
        // A guard that requires a scope never lets a preflight through: a
        // preflight carries no credential, so it cannot hold the scope.
        if s.allow_preflight && self.scope.is_none() && is_preflight(req) {
            s.counters.count(Outcome::Passed);
            return Err(Decision::Pass(PassReason::Preflight));
        }
        match self.mode() {
            Mode::Open => {
                s.counters.count(Outcome::Passed);
                Err(Decision::Pass(PassReason::Open))
            }
            Mode::Uninitialised if s.verifier.is_ready() => {
                // Only the first request after readiness flips the mode;
                // a mode set meanwhile by an operator is kept.
                if s.mode
                    .compare_exchange(
                        Mode::Uninitialised.to_u8(),
                        Mode::Enforce.to_u8(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    tracing::info!(target: "auth_core", keyring = %s.keyring, "verifier ready: enforcing");
                }
                Ok(self.mode())
            }
            Mode::Uninitialised => {
                s.counters.count(Outcome::NotReady);
                Err(Decision::Reject(self.rejection(RejectionKind::NotReady)))
            }
            mode => Ok(mode),
        }
    }

    /// The decision from the authentication's result, in `mode`.
    fn after<R: RequestView + ?Sized>(
        &self,
        mode: Mode,
        req: &R,
        result: Result<Grant, Rejection>,
    ) -> Decision {
        let s = &*self.shared;
        match result {
            Ok(grant) => {
                s.counters.count(Outcome::Allowed);
                Decision::Allow(grant)
            }
            Err(rejection) if mode == Mode::ReportOnly => {
                s.counters.count(Outcome::ReportOnly);
                tracing::warn!(target: "auth_core", keyring = %s.keyring,
                    outcome = rejection.kind().outcome(), path = req.path(),
                    "report-only: request would have been refused");
                Decision::Pass(PassReason::ReportOnly(rejection.kind()))
            }
            Err(rejection) => Decision::Reject(rejection),
        }
    }

    async fn authenticate<R: RequestView + ?Sized>(&self, req: &R) -> Result<Grant, Rejection> {
        let s = &*self.shared;
        let credential = self.extract(req)?;
        let ctx = self.context(req);
        let answer = match s.verifier.verify_now(&credential, &ctx) {
            Some(answer) => answer,
            None => s.verifier.verify(&credential, &ctx).await,
        };
        let principal = self.verified(&credential, answer)?;
        let rate = match self.rate_policy(&principal) {
            Some((key, policy)) => Some(match s.limiter.check_now(key, &policy) {
                Some(decided) => decided,
                None => s.limiter.check(key, &policy).await,
            }),
            None => None,
        };
        self.grant(&credential, principal, rate)
    }

    fn context<'r, R: RequestView + ?Sized>(&'r self, req: &'r R) -> VerifyContext<'r> {
        VerifyContext {
            path: req.path(),
            required_scope: self.scope.as_deref(),
        }
    }

    /// The one credential of `req`, or the rejection (counted and logged).
    fn extract<R: RequestView + ?Sized>(&self, req: &R) -> Result<Credential, Rejection> {
        let s = &*self.shared;
        s.sources.extract(req).map_err(|e| {
            let (kind, outcome) = match e {
                ExtractError::Missing => (RejectionKind::Missing, Outcome::Missing),
                e => (RejectionKind::Malformed(e), Outcome::Malformed),
            };
            s.counters.count(outcome);
            tracing::info!(target: "auth_core", keyring = %s.keyring,
                outcome = kind.outcome(), reason = e.describe(), "denied");
            self.rejection(kind)
        })
    }

    /// The verifier's answer as a principal, or the rejection (counted and
    /// logged with the credential's fingerprint, never the credential).
    fn verified(
        &self,
        credential: &Credential,
        answer: crate::VerifyResult,
    ) -> Result<Arc<Principal>, Rejection> {
        let s = &*self.shared;
        answer.map_err(|e| {
            let fingerprint = credential.digest();
            let (kind, outcome) = match e {
                VerifyError::Unavailable => (RejectionKind::Unavailable, Outcome::Unavailable),
                VerifyError::RateLimited => (RejectionKind::RateLimited, Outcome::Limited),
                e => (RejectionKind::Invalid(e), Outcome::Invalid),
            };
            s.counters.count(outcome);
            if e == VerifyError::Unavailable {
                tracing::warn!(target: "auth_core", keyring = %s.keyring,
                    fingerprint = %fingerprint, "verifier unavailable: refusing (503)");
            } else {
                tracing::info!(target: "auth_core", keyring = %s.keyring,
                    fingerprint = %fingerprint, reason = e.reason(), "denied");
            }
            if kind == RejectionKind::RateLimited {
                // The verifier's limit gives no wait: a second, then ask again.
                return Rejection::new(kind, s.realm.clone())
                    .with_retry_after(std::time::Duration::from_secs(1));
            }
            self.rejection(kind)
        })
    }

    /// The key and policy to rate-limit `principal` under, if any.
    fn rate_policy<'p>(&self, principal: &'p Principal) -> Option<(&'p str, RateLimitPolicy)> {
        let policy = principal.rate_limit().or(self.shared.default_rate_limit)?;
        Some((principal.key_id().unwrap_or(principal.id()), policy))
    }

    /// The guard's scope and the limiter's answer applied to `principal`.
    fn grant(
        &self,
        credential: &Credential,
        principal: Arc<Principal>,
        rate: Option<RateDecision>,
    ) -> Result<Grant, Rejection> {
        let s = &*self.shared;
        let fingerprint = credential.digest();
        if let Some(scope) = &self.scope {
            if !principal.has_scope(scope) {
                s.counters.count(Outcome::Forbidden);
                tracing::info!(target: "auth_core", keyring = %s.keyring,
                    principal = principal.id(), fingerprint = %fingerprint,
                    scope = &**scope, "denied: missing scope");
                return Err(
                    Rejection::new(RejectionKind::InsufficientScope, s.realm.clone())
                        .with_scope(scope.clone()),
                );
            }
        }
        let rate = match rate {
            None => None,
            Some(RateDecision::Allowed(status)) => Some(status),
            Some(RateDecision::Limited {
                status,
                retry_after,
            }) => {
                s.counters.count(Outcome::Limited);
                tracing::info!(target: "auth_core", keyring = %s.keyring,
                    principal = principal.id(), fingerprint = %fingerprint, "denied: rate limited");
                return Err(Rejection::new(RejectionKind::RateLimited, s.realm.clone())
                    .with_retry_after(retry_after)
                    .with_rate(status));
            }
            Some(_) => {
                s.counters.count(Outcome::Unavailable);
                tracing::warn!(target: "auth_core", keyring = %s.keyring,
                    "rate limiter unavailable: refusing (503)");
                return Err(self.rejection(RejectionKind::Unavailable));
            }
        };
        tracing::debug!(target: "auth_core", keyring = %s.keyring,
            principal = principal.id(), fingerprint = %fingerprint, "allowed");
        Ok(Grant { principal, rate })
    }
}

/// A route's scope requirement, decided against what its guard let through
/// (see [`Guard::route_scope`]). Adapters hold one per scoped route.
///
/// ```
/// use auth_core::{Guard, Principal, StaticKey};
///
/// let guard = Guard::builder(StaticKey::new("k").unwrap()).build().unwrap();
/// let stt = guard.scope_for_route("stt").unwrap();
/// let caller = Principal::new("svc").with_scopes(["tts"]);
/// assert_eq!(stt.check(Some(&caller), None).unwrap_err().status(), 403);
/// assert!(guard.scope_for_route("bad scope\"").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct RouteScope {
    guard: Guard,
    scope: Arc<str>,
}

impl RouteScope {
    /// Decides a request that reached the route: `principal` if it was
    /// authenticated, else `passed`, why it passed without one.
    pub fn check(
        &self,
        principal: Option<&Principal>,
        passed: Option<PassReason>,
    ) -> Result<(), Rejection> {
        self.guard.route_scope(principal, passed, &self.scope)
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("keyring", &self.shared.keyring)
            .field("mode", &self.mode())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn check_scope_token(scope: &str) -> Result<(), Error> {
    // RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E.
    if scope.is_empty()
        || !scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(Error::Config(format!(
            "scope `{}` must be visible ASCII without quotes or backslashes",
            scope.escape_debug()
        )));
    }
    Ok(())
}

impl GuardBuilder {
    fn new(verifier: Arc<dyn Verifier>) -> Self {
        Self {
            keyring: DEFAULT_KEYRING.to_owned(),
            realm: None,
            verifier,
            sources: CredentialSources::default(),
            public: PublicPaths::default(),
            allow_preflight: false,
            scope: None,
            mode: Mode::Enforce,
            limiter: None,
            default_rate_limit: None,
            retry_unavailable: Duration::from_secs(5),
            retry_not_ready: Duration::from_secs(1),
        }
    }

    /// Names the keyring (trust boundary) for logs.
    pub fn keyring(mut self, name: &str) -> Self {
        self.keyring = name.to_owned();
        self
    }

    /// The realm of the challenge (default `api`).
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Some(realm.to_owned());
        self
    }

    /// Where credentials are read from.
    pub fn sources(mut self, sources: CredentialSources) -> Self {
        self.sources = sources;
        self
    }

    /// Paths that skip authentication (default: `/health`).
    pub fn public_paths(mut self, public: PublicPaths) -> Self {
        self.public = public;
        self
    }

    /// Lets CORS preflights through unauthenticated (default: off).
    ///
    /// A preflight is an `OPTIONS` request with both a non-blank `Origin`
    /// and a non-blank `Access-Control-Request-Method` header; any other
    /// `OPTIONS` request needs a key. A preflight passes with
    /// [`PassReason::Preflight`] and no principal, and never satisfies a
    /// scope: a guard that [requires a scope](GuardBuilder::require_scope)
    /// does not let it through, and [`Guard::route_scope`] refuses it (401).
    /// Answer preflights for scoped routes with a CORS layer in front of
    /// the guard.
    pub fn allow_preflight(mut self, on: bool) -> Self {
        self.allow_preflight = on;
        self
    }

    /// Requires a scope on every route this guard covers.
    pub fn require_scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// The starting mode (default: [`Mode::Enforce`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The rate limiter (default: an in-memory [`GcraLimiter`]). It is only
    /// asked for principals with a rate-limit policy.
    pub fn rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// A policy for principals that carry none.
    pub fn default_rate_limit(mut self, policy: RateLimitPolicy) -> Self {
        self.default_rate_limit = Some(policy);
        self
    }

    /// `Retry-After` for 503 when a backend is unavailable (default 5 s).
    pub fn retry_after_unavailable(mut self, after: Duration) -> Self {
        self.retry_unavailable = after;
        self
    }

    /// `Retry-After` for 503 while not ready (default 1 s).
    pub fn retry_after_not_ready(mut self, after: Duration) -> Self {
        self.retry_not_ready = after;
        self
    }

    /// Checks the configuration and builds the guard.
    pub fn build(self) -> Result<Guard, Error> {
        let realm = self.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
        if !is_plain_token(&realm) {
            return Err(Error::Config(
                "the realm must be visible ASCII or spaces, without quotes or backslashes".into(),
            ));
        }
        if !self.sources.is_enabled() {
            return Err(Error::Config(
                "no credential source enabled: turn on a key header or bearer".into(),
            ));
        }
        if let Some(scope) = &self.scope {
            check_scope_token(scope)?;
        }
        self.public.validate()?;
        if self.mode == Mode::Open {
            tracing::warn!(target: "auth_core", keyring = %self.keyring,
                "OPEN MODE: every request passes without authentication");
        }
        Ok(Guard {
            shared: Arc::new(Shared {
                keyring: self.keyring.into(),
                realm: realm.into(),
                verifier: self.verifier,
                sources: self.sources,
                public: self.public,
                allow_preflight: self.allow_preflight,
                limiter: self.limiter.unwrap_or_else(|| Arc::new(GcraLimiter::new())),
                default_rate_limit: self.default_rate_limit,
                retry_unavailable: self.retry_unavailable,
                retry_not_ready: self.retry_not_ready,
                mode: AtomicU8::new(self.mode.to_u8()),
                counters: DecisionCounters::default(),
            }),
            scope: self.scope.map(Into::into),
        })
    }
}

/// Named keyrings, one per trust boundary (e.g. `internal` for
/// service-to-service, `hub` for a central caller).
///
/// Adding a keyring whose keys overlap another's is refused, so a key leaked
/// on one boundary cannot drive another. Overlaps are found through
/// [`Verifier::known_digests`]; verifiers that cannot list their keys (a
/// remote service, a database) are not compared.
///
/// ```
/// use auth_core::{Error, Keyrings, StaticKey};
///
/// let rings = Keyrings::new()
///     .with("internal", StaticKey::new("trust-key").unwrap()).unwrap()
///     .with("hub", StaticKey::new("hub-key").unwrap()).unwrap();
/// let internal = rings.guard("internal").unwrap().build().unwrap();
/// assert_eq!(internal.keyring(), "internal");
///
/// let reused = Keyrings::new()
///     .with("internal", StaticKey::new("same").unwrap()).unwrap()
///     .with("hub", StaticKey::new("same").unwrap());
/// assert!(matches!(reused, Err(Error::KeyShared { .. })));
/// ```
#[derive(Clone, Default)]
pub struct Keyrings {
    rings: HashMap<String, Arc<dyn Verifier>>,
    order: Vec<String>,
}

impl Keyrings {
    /// No keyrings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a keyring; refuses a duplicate name or a key another keyring
    /// already accepts.
    pub fn with(mut self, name: &str, verifier: impl Verifier + 'static) -> Result<Self, Error> {
        if self.rings.contains_key(name) {
            return Err(Error::DuplicateKeyring(name.to_owned()));
        }
        if let Some(new) = verifier.known_digests() {
            let new: HashSet<_> = new.into_iter().collect();
            for other in &self.order {
                let Some(theirs) = self.rings[other].known_digests() else {
                    continue;
                };
                if let Some(shared) = theirs.iter().find(|d| new.contains(*d)) {
                    return Err(Error::KeyShared {
                        fingerprint: shared.fingerprint(),
                        first: other.clone(),
                        second: name.to_owned(),
                    });
                }
            }
        }
        self.rings.insert(name.to_owned(), Arc::new(verifier));
        self.order.push(name.to_owned());
        Ok(self)
    }

    /// A guard builder for keyring `name` (keyring and realm set to `name`).
    pub fn guard(&self, name: &str) -> Result<GuardBuilder, Error> {
        let verifier = self
            .rings
            .get(name)
            .ok_or_else(|| Error::UnknownKeyring(name.to_owned()))?;
        Ok(GuardBuilder::new(Arc::clone(verifier))
            .keyring(name)
            .realm(name))
    }

    /// The keyring names, in the order added.
    pub fn names(&self) -> &[String] {
        &self.order
    }
}

impl fmt::Debug for Keyrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyrings")
            .field("names", &self.order)
            .finish()
    }
}

impl fmt::Debug for GuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("keyring", &self.keyring)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
