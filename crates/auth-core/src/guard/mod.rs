//! The whole decision for one request — public paths, preflight, mode,
//! extraction, verification, scope and rate limit — made once: a
//! [`Decision`] now, or a future that resumes at the step that waits.
//!
//! - `builder.rs`: the configuration ([`GuardBuilder`], [`Guard::from_env`]);
//! - `paths.rs`: [`PublicPaths`] and the CORS preflight;
//! - `scope.rs`: [`RouteScope`], the one way to require a scope per route;
//! - `keyrings.rs`: [`Keyrings`], one per trust boundary;
//! - `decide.rs`: the one place that counts, logs, applies the mode and
//!   builds the rejection.

mod builder;
mod decide;
mod keyrings;
mod paths;
mod scope;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub use builder::{DEFAULT_KEYRING, DEFAULT_REALM, GuardBuilder};
use decide::{Refusal, Verdict};
pub use keyrings::Keyrings;
pub use paths::PublicPaths;
pub use scope::RouteScope;

use crate::metrics::{DecisionCounters, DecisionCounts};
use crate::rejection::{Challenge, rate_limit_headers};
use crate::{
    Answer, CredentialSources, Digest, Principal, RateDecision, RateLimitPolicy, RateLimiter,
    RateStatus, Rejection, RejectionKind, RequestView, Verifier, VerifyContext, VerifyResult,
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

/// A request that was authenticated: who the caller is and the state of
/// their limit.
#[derive(Clone, Debug)]
pub struct Grant {
    principal: Arc<Principal>,
    rate: Option<RateStatus>,
    /// The credential's, for the verifier should a route refuse the grant
    /// ([`Verifier::refused_after`]); shown in `Debug` as its fingerprint.
    digest: Digest,
}

impl Grant {
    /// The authenticated caller.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The caller's rate-limit state, if a limit applies.
    pub fn rate(&self) -> Option<&RateStatus> {
        self.rate.as_ref()
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

/// What the guard decided for a request.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Authenticated.
    Allow(Grant),
    /// Let through without authentication.
    Pass(PassReason),
    /// Refused.
    Reject(Rejection),
}

impl Decision {
    /// The authenticated caller, if the request was allowed.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        match self {
            Self::Allow(grant) => Some(&grant.principal),
            _ => None,
        }
    }

    /// The rejection, if the request was refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Reject(r) => Some(r),
            _ => None,
        }
    }
}

/// What a guard let through, as one of two states.
#[derive(Clone, Debug)]
pub enum Admitted {
    /// An authenticated caller.
    Authenticated(Arc<Principal>),
    /// Let through without authentication, and why.
    Passed(PassReason),
}

/// What a guard let through, as adapters store it on the request: the
/// caller (or why it passed without one), its rate-limit state and the
/// guard that decided — which per-route [`RouteScope`] checks and the
/// handlers' extractors read. Made by [`Guard::admit`].
#[derive(Clone, Debug)]
pub struct Admission {
    guard: Guard,
    admitted: Admitted,
    rate: Option<RateStatus>,
    /// The credential's, of an authenticated caller: for the verifier
    /// when a route's scope refuses the grant.
    digest: Option<Digest>,
}

impl Admission {
    /// The caller, or why the request passed without one.
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }

    /// The authenticated caller, if any.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        match &self.admitted {
            Admitted::Authenticated(p) => Some(p),
            Admitted::Passed(_) => None,
        }
    }

    /// Why the request passed without a caller, if it did.
    pub fn passed(&self) -> Option<PassReason> {
        match self.admitted {
            Admitted::Authenticated(_) => None,
            Admitted::Passed(reason) => Some(reason),
        }
    }

    /// The caller's rate-limit state, if a limit applies.
    pub fn rate(&self) -> Option<&RateStatus> {
        self.rate.as_ref()
    }

    /// Headers for the response (`RateLimit`, `RateLimit-Policy`): adapters
    /// add them to whatever the handler answers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.rate
            .as_ref()
            .map(|r| rate_limit_headers(r).to_vec())
            .unwrap_or_default()
    }

    /// The guard that decided.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The credential's digest, of an authenticated caller.
    pub(super) fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The authenticated caller of a request, for the handlers' extractors:
    /// a request its guard let through without one (public path, preflight,
    /// open or report-only mode) is refused 401 by that guard — already
    /// counted when it passed, so not counted again; a request no guard
    /// checked (`None`) is refused 401 too, with the default realm and
    /// sources.
    pub fn authenticated(admission: Option<&Self>) -> Result<Arc<Principal>, Rejection> {
        match admission {
            Some(a) => match &a.admitted {
                Admitted::Authenticated(p) => Ok(Arc::clone(p)),
                Admitted::Passed(_) => Err(a.guard.rejection(RejectionKind::Missing)),
            },
            None => Err(Rejection::new(
                RejectionKind::Missing,
                Arc::new(Challenge::new(DEFAULT_REALM, &CredentialSources::default())),
            )),
        }
    }
}

struct Shared {
    keyring: Arc<str>,
    realm: Arc<str>,
    challenge: Arc<Challenge>,
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
/// [`check`](Guard::check) decides a request in one pass: the decision at
/// once when nothing has to wait (keys in memory, cache hits, in-memory
/// rate limits) — no future, no allocation — or a future that owns what it
/// needs and resumes at the step that waits.
///
/// Cheap to clone; clones share the verifier, mode and counters.
///
/// ```
/// use auth_core::{Decision, Guard, PlainRequest, StaticKey};
///
/// let guard = Guard::builder(StaticKey::new("s3cret").unwrap()).build().unwrap();
///
/// // A key in memory: decided at once.
/// let ok = guard.check(&PlainRequest::get("/items").header("x-api-key", "s3cret"));
/// assert!(matches!(ok.now(), Some(Decision::Allow(_))));
///
/// // Awaiting the answer works whether it is ready or not.
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let Decision::Reject(r) = rt.block_on(guard.check(&PlainRequest::get("/items"))) else { panic!() };
/// assert_eq!(r.status(), 401);
///
/// let health = rt.block_on(guard.check(&PlainRequest::get("/health")));
/// assert!(matches!(health, Decision::Pass(_)));
/// ```
#[derive(Clone)]
pub struct Guard {
    shared: Arc<Shared>,
    /// Required of every request ([`GuardBuilder::require_scope`]).
    scope: Option<Arc<str>>,
}

impl Guard {
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

    /// The scope this guard requires of every request, if any.
    pub fn required_scope(&self) -> Option<&str> {
        self.scope.as_deref()
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

    /// The address of what clones share (metrics count a guard once).
    #[cfg(feature = "prometheus")]
    pub(crate) fn shared_address(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Counts of decisions so far, by outcome.
    pub fn counts(&self) -> DecisionCounts {
        self.shared.counters.snapshot()
    }

    /// The check for a route that requires `scope`, built once at start (an
    /// invalid scope token is refused here, not per request).
    pub fn route_scope(&self, scope: &str) -> Result<RouteScope, crate::Error> {
        RouteScope::new(self.clone(), scope)
    }

    /// `admission` if this guard made it (or a clone of it: clones share
    /// their configuration); otherwise this guard's 401, counted as missing —
    /// a request that reached a route without this guard in front, or
    /// through another guard (another keyring's principal is not this
    /// one's), was never checked by it.
    pub fn admitted<'a>(
        &self,
        admission: Option<&'a Admission>,
    ) -> Result<&'a Admission, Rejection> {
        match admission {
            Some(a) if Arc::ptr_eq(&a.guard.shared, &self.shared) => Ok(a),
            _ => Err(self.refuse(Refusal::new(RejectionKind::Missing))),
        }
    }

    /// What an adapter stores for a decision: the [`Admission`] of an
    /// allowed or passed request, or the rejection to answer with.
    pub fn admit(&self, decision: Decision) -> Result<Admission, Rejection> {
        let (admitted, rate, digest) = match decision {
            Decision::Allow(grant) => (
                Admitted::Authenticated(grant.principal),
                grant.rate,
                Some(grant.digest),
            ),
            Decision::Pass(reason) => (Admitted::Passed(reason), None, None),
            Decision::Reject(rejection) => return Err(rejection),
        };
        Ok(Admission {
            guard: self.clone(),
            admitted,
            rate,
            digest,
        })
    }

    /// Decides `req` in one pass: [`Answer::Ready`] when nothing had to
    /// wait, else [`Answer::Pending`] with a future that resumes where the
    /// verifier or the rate limiter waits (it owns what it needs, so it is
    /// `'static`). Awaiting the answer gives the decision either way.
    pub fn check<R: RequestView + ?Sized>(&self, req: &R) -> Answer<Decision> {
        let mode = match self.before(req) {
            Ok(mode) => mode,
            Err(decided) => return Answer::Ready(decided),
        };
        let path = req.path();
        let credential = match self.shared.sources.extract(req) {
            Ok(c) => c,
            Err(e) => {
                let refused = Verdict::Refused(Refusal::extraction(e));
                return Answer::Ready(self.conclude(mode, refused, path));
            }
        };
        let fingerprint = *credential.digest();
        let ctx = VerifyContext {
            path,
            required_scope: self.scope.as_deref(),
        };
        match self.shared.verifier.verify(&credential, &ctx) {
            Answer::Ready(answer) => self.verified(mode, fingerprint, answer, path),
            Answer::Pending(answer) => {
                // The verifier's future owns what it needs; this one owns
                // the rest, and resumes with its answer.
                let guard = self.clone();
                let path: Box<str> = path.into();
                Answer::pending(async move {
                    let answer = answer.await;
                    guard.verified(mode, fingerprint, answer, &path).await
                })
            }
        }
    }

    /// Public paths, preflight and modes: a decision, or the mode to
    /// authenticate in.
    fn before<R: RequestView + ?Sized>(&self, req: &R) -> Result<Mode, Decision> {
        let s = &*self.shared;
        let pass = |reason| Err(self.conclude(Mode::Enforce, Verdict::Passed(reason), ""));
        if s.public.is_public(req.path()) {
            return pass(PassReason::PublicPath);
        }
        // A guard that requires a scope never lets a preflight through: a
        // preflight carries no credential, so it cannot hold the scope.
        if s.allow_preflight && self.scope.is_none() && paths::is_preflight(req) {
            return pass(PassReason::Preflight);
        }
        match self.mode() {
            Mode::Open => pass(PassReason::Open),
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
                let refused = Verdict::Refused(Refusal::new(RejectionKind::NotReady));
                Err(self.conclude(Mode::Uninitialised, refused, req.path()))
            }
            mode => Ok(mode),
        }
    }

    /// From the verifier's answer: the guard's scope, then the rate limit.
    fn verified(
        &self,
        mode: Mode,
        fingerprint: Digest,
        answer: VerifyResult,
        path: &str,
    ) -> Answer<Decision> {
        let principal = match answer {
            Ok(p) => p,
            Err(e) => {
                let refused = Verdict::Refused(Refusal::verification(e, fingerprint));
                return Answer::Ready(self.conclude(mode, refused, path));
            }
        };
        // The scope before the limit: a request refused for its scope does
        // not spend the caller's allowance.
        if let Some(scope) = &self.scope {
            if !principal.has_scope(scope) {
                let refusal = Refusal::new(RejectionKind::InsufficientScope)
                    .forbidden(&principal, scope.clone())
                    .with_fingerprint(fingerprint);
                return Answer::Ready(self.conclude(mode, Verdict::Refused(refusal), path));
            }
        }
        let Some(policy) = principal.rate_limit().or(self.shared.default_rate_limit) else {
            let grant = Grant {
                principal,
                rate: None,
                digest: fingerprint,
            };
            return Answer::Ready(self.conclude(mode, Verdict::Allowed(grant), path));
        };
        let key = principal.key_id().unwrap_or(principal.id());
        match self.shared.limiter.check(key, &policy) {
            Answer::Ready(rate) => {
                Answer::Ready(self.limited(mode, fingerprint, principal, rate, path))
            }
            Answer::Pending(rate) => {
                let guard = self.clone();
                let path: Box<str> = path.into();
                Answer::pending(async move {
                    let rate = rate.await;
                    guard.limited(mode, fingerprint, principal, rate, &path)
                })
            }
        }
    }

    /// From the rate limiter's answer: the decision.
    fn limited(
        &self,
        mode: Mode,
        fingerprint: Digest,
        principal: Arc<Principal>,
        rate: RateDecision,
        path: &str,
    ) -> Decision {
        let verdict = match rate {
            RateDecision::Allowed(status) => Verdict::Allowed(Grant {
                principal,
                rate: Some(status),
                digest: fingerprint,
            }),
            RateDecision::Limited {
                status,
                retry_after,
            } => Verdict::Refused(Refusal::limited(
                principal,
                fingerprint,
                status,
                retry_after,
            )),
            _ => Verdict::Refused(
                Refusal::new(RejectionKind::Unavailable)
                    .saying("rate limiter unavailable: refusing (503)"),
            ),
        };
        self.conclude(mode, verdict, path)
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

#[cfg(test)]
mod tests;
