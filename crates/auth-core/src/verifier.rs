//! Who a caller is: the [`Verifier`] trait, the [`Principal`] it yields and
//! the typed ways it can fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{Answer, Credential, Digest, RateLimitPolicy};

/// An authenticated caller.
///
/// ```
/// use auth_core::Principal;
///
/// let p = Principal::new("svc-a").with_scopes(["read", "write"]).with_label("team", "core");
/// assert!(p.has_scope("read"));
/// assert!(!p.has_scope("admin"));
/// assert_eq!(p.label("team"), Some("core"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    id: String,
    key_id: Option<String>,
    scopes: Vec<String>,
    rate_limit: Option<RateLimitPolicy>,
    labels: BTreeMap<String, String>,
    expires_at: Option<SystemTime>,
}

impl Principal {
    /// A principal with this id, no scopes, no rate limit and no labels.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            key_id: None,
            scopes: Vec::new(),
            rate_limit: None,
            labels: BTreeMap::new(),
            expires_at: None,
        }
    }

    /// Adds scopes.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Sets the rate-limit policy enforced for this principal.
    pub fn with_rate_limit(mut self, policy: RateLimitPolicy) -> Self {
        self.rate_limit = Some(policy);
        self
    }

    /// Adds a free-form label (team, tier, …).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Records when the key this principal was verified from expires: a
    /// cache never serves it past then.
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// When the key it was verified from expires, where the verifier knows.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Records the id of the key record this principal was verified from, so
    /// that a cache can re-check the live record.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The caller's id (service name, user id, owner).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id of the key record, where the verifier has one.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The rate-limit policy, if any.
    pub fn rate_limit(&self) -> Option<RateLimitPolicy> {
        self.rate_limit
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// All labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// What a verifier knows of the request besides the credential.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyContext<'a> {
    /// The routed path.
    pub path: &'a str,
    /// The scope the route requires, if any. Verifiers may pass it on (a
    /// remote service may want it); the guard checks it locally either way.
    pub required_scope: Option<&'a str>,
}

/// Why a credential was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a known key (→ 401 `invalid_token`).
    Invalid,
    /// A known key past its expiry (→ 401 `invalid_token`).
    Expired,
    /// A known key that was disabled or revoked (→ 401 `invalid_token`).
    Disabled,
    /// The verifier could not decide: backend down, not loaded yet (→ 503).
    /// Never cached, never treated as "invalid".
    Unavailable,
    /// A known key over a limit its verifier enforces itself, e.g. a central
    /// key service's `rate_limited` (→ 429). Never cached: the next request
    /// asks again.
    RateLimited,
    /// A known key without the usage credits the request costs, e.g. a
    /// central key service's `usage_exceeded` (→ 429 `usage_exceeded`, with
    /// `Retry-After` until the key's next refill when it has one). Never
    /// cached, never handed to a [`Fallback`](crate::Fallback).
    UsageExceeded {
        /// Until the key's next refill, if it has one.
        retry_after: Option<Duration>,
    },
}

impl VerifyError {
    /// A short, fixed reason for logs and counters.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::UsageExceeded { .. } => "usage_exceeded",
        }
    }
}

/// The result of a verification.
pub type VerifyResult = Result<Arc<Principal>, VerifyError>;

/// Why a guard refused a principal its verifier had granted: see
/// [`Verifier::refused_after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusedAfter {
    /// Over the principal's rate limit (→ 429).
    RateLimited,
    /// Lacking the scope the guard or the route requires (→ 403).
    InsufficientScope,
}

/// Decides who a credential belongs to: one method, [`verify`](Verifier::verify).
///
/// It answers [`Answer::Ready`] when it holds the answer in memory (keys
/// in memory, a cache hit) — no future, no allocation — and
/// [`Answer::Pending`] with a future that owns what it needs when it must
/// wait (a database, a key service): clone an `Arc` of your state and the
/// credential into it.
///
/// Implementations: [`StaticKey`](crate::StaticKey), [`KeySet`](crate::KeySet),
/// [`KeyFile`](crate::KeyFile), [`HashedKeyStore`](crate::HashedKeyStore), and
/// the combinators [`Cached`](crate::Cached), [`Fallback`](crate::Fallback),
/// [`FormatChecked`](crate::FormatChecked) and [`Deferred`](crate::Deferred).
/// A closure `Fn(&Credential) -> VerifyResult` becomes one through
/// [`verifier_fn`].
///
/// ```
/// use auth_core::{Answer, Credential, Principal, Verifier, VerifyContext, VerifyError, VerifyResult};
/// use std::sync::Arc;
///
/// /// Asks a (pretend) remote service: the answer comes later.
/// struct Remote;
///
/// impl Verifier for Remote {
///     fn verify(&self, credential: &Credential, _ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
///         let credential = credential.clone(); // the future owns what it needs
///         Answer::pending(async move {
///             if credential.expose() == b"letmein" {
///                 Ok(Arc::new(Principal::new("demo")))
///             } else {
///                 Err(VerifyError::Invalid)
///             }
///         })
///     }
/// }
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let p = rt.block_on(Remote.verify(&Credential::new("letmein"), &VerifyContext::default()));
/// assert_eq!(p.unwrap().id(), "demo");
/// ```
pub trait Verifier: Send + Sync {
    /// Verifies `credential`: the answer now, or a future for it.
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult>;

    /// How a cached grant is re-checked against the live source on every
    /// hit, where the verifier can do that cheaply (see [`Recheck`]).
    /// `None` (the default): a cache in front trusts its entry until the TTL.
    fn rechecks(&self) -> Option<&dyn Recheck> {
        None
    }

    /// The digests of every key this verifier accepts, where it knows them
    /// up front. Used to refuse a key shared by two keyrings at start.
    fn known_digests(&self) -> Option<Vec<Digest>> {
        None
    }

    /// Whether the verifier is ready to answer. A guard in
    /// [`Mode::Uninitialised`](crate::Mode) answers 503 until it is.
    fn is_ready(&self) -> bool {
        true
    }

    /// A grant of this verifier that its guard then refused: over the rate
    /// limit, or lacking the scope the guard or a [`RouteScope`](crate::RouteScope)
    /// requires — only where the request is refused (not in report-only
    /// mode). A verifier that counts its decisions moves the grant's count
    /// to `why` (auth-remote's does); the others ignore it (the default).
    ///
    /// `digest` is the credential's, `principal` the one granted. A
    /// combinator forwards it to what it wraps ([`Fallback`](crate::Fallback)
    /// to both of its verifiers), so a verifier that counts tells its own
    /// grants by the principal. Called on the request's path, once per
    /// refused request: keep it cheap, never block.
    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        let _ = (digest, principal, why);
    }
}

/// Re-checks a grant held in a cache against the live source (a cheap fetch
/// by id), so that a cache can never grant what the source denies.
/// Implemented only by verifiers over a live source
/// ([`HashedKeyStore`](crate::HashedKeyStore) over a store that
/// [finds by id](crate::FindById)); [`Cached`](crate::Cached) asks for it
/// through [`Verifier::rechecks`].
pub trait Recheck: Send + Sync {
    /// The live answer for the key `digest` that the cache granted as
    /// `cached`.
    fn recheck(&self, digest: &Digest, cached: &Arc<Principal>) -> Answer<VerifyResult>;
}

/// A verifier made from a closure; see [`verifier_fn`].
#[derive(Clone)]
pub struct FnVerifier<F>(F);

impl<F> std::fmt::Debug for FnVerifier<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnVerifier")
    }
}

/// Turns a closure `Fn(&Credential) -> VerifyResult` into a [`Verifier`]
/// that answers at once.
///
/// ```
/// use auth_core::{verifier_fn, Credential, Principal, Verifier, VerifyContext, VerifyError};
/// use std::sync::Arc;
///
/// let v = verifier_fn(|c: &Credential| {
///     if c.expose() == b"letmein" {
///         Ok(Arc::new(Principal::new("demo")))
///     } else {
///         Err(VerifyError::Invalid)
///     }
/// });
/// let answer = v.verify(&Credential::new("letmein"), &VerifyContext::default());
/// assert_eq!(answer.now().unwrap().unwrap().id(), "demo");
/// ```
pub fn verifier_fn<F>(f: F) -> FnVerifier<F>
where
    F: Fn(&Credential) -> VerifyResult + Send + Sync,
{
    FnVerifier(f)
}

impl<F> Verifier for FnVerifier<F>
where
    F: Fn(&Credential) -> VerifyResult + Send + Sync,
{
    fn verify(&self, credential: &Credential, _ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        Answer::Ready((self.0)(credential))
    }
}

impl<V: Verifier + ?Sized> Verifier for Arc<V> {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        (**self).verify(credential, ctx)
    }

    fn rechecks(&self) -> Option<&dyn Recheck> {
        (**self).rechecks()
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        (**self).known_digests()
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        (**self).refused_after(digest, principal, why);
    }
}
