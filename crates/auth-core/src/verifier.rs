//! Who a caller is: the [`Verifier`] trait, the [`Principal`] it yields and
//! the typed ways it can fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Credential, Digest};

/// A rate-limit policy: at most `requests` per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitPolicy {
    /// Requests admitted per window (at least 1).
    pub requests: u32,
    /// The window length (at least 1 ms).
    pub window: Duration,
}

impl RateLimitPolicy {
    /// `requests` per `window`. Zero values are raised to the smallest
    /// meaningful ones (1 request, 1 ms) so a policy can never divide by zero.
    pub fn new(requests: u32, window: Duration) -> Self {
        Self {
            requests: requests.max(1),
            window: window.max(Duration::from_millis(1)),
        }
    }
}

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
}

impl VerifyError {
    /// Whether this is a definite "no" (as opposed to "could not decide").
    pub fn is_denial(self) -> bool {
        !matches!(self, Self::Unavailable)
    }

    /// A short, fixed reason for logs and counters.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// The result of a verification.
pub type VerifyResult = Result<Arc<Principal>, VerifyError>;

/// A boxed future, for the optional [`Verifier::recheck`] hook.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides who a credential belongs to.
///
/// Implementations: [`StaticKey`](crate::StaticKey), [`KeySet`](crate::KeySet),
/// [`KeyFile`](crate::KeyFile), [`HashedKeyStore`](crate::HashedKeyStore), and
/// the combinators [`Cached`](crate::Cached), [`Fallback`](crate::Fallback) and
/// [`FormatChecked`](crate::FormatChecked). A closure
/// `Fn(&Credential) -> VerifyResult` becomes one through [`verifier_fn`].
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
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let p = rt.block_on(v.verify(&Credential::new("letmein"), &VerifyContext::default()));
/// assert_eq!(p.unwrap().id(), "demo");
/// ```
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Verifies `credential`.
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult;

    /// The answer without waiting, where the verifier holds it in memory
    /// (in-memory keys, cache hits); `None` means "call
    /// [`verify`](Verifier::verify)". Callers try this first, which keeps
    /// the allocation of a boxed future off the hot path. When it answers,
    /// it must answer exactly as `verify` would.
    fn verify_now(
        &self,
        _credential: &Credential,
        _ctx: &VerifyContext<'_>,
    ) -> Option<VerifyResult> {
        None
    }

    /// Whether a grant held in a cache must be re-checked against the live
    /// source on every hit (see [`recheck`](Verifier::recheck)). `false`
    /// (the default): the cache may trust its entry until the TTL.
    fn rechecks(&self) -> bool {
        false
    }

    /// [`recheck`](Verifier::recheck) without waiting, where the live
    /// source is in memory; `None` (the default) means "call `recheck`".
    fn recheck_now(&self, _digest: &Digest, _cached: &Arc<Principal>) -> Option<VerifyResult> {
        None
    }

    /// Re-checks a cached grant against the live source (a cheap fetch by
    /// id). Called only when [`rechecks`](Verifier::rechecks) is `true`; the
    /// default trusts the cached grant.
    fn recheck<'a>(
        &'a self,
        _digest: &'a Digest,
        cached: &'a Arc<Principal>,
    ) -> BoxFuture<'a, VerifyResult> {
        Box::pin(std::future::ready(Ok(Arc::clone(cached))))
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
}

/// A verifier made from a closure; see [`verifier_fn`].
#[derive(Clone)]
pub struct FnVerifier<F>(F);

impl<F> std::fmt::Debug for FnVerifier<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnVerifier")
    }
}

/// Turns a closure `Fn(&Credential) -> VerifyResult` into a [`Verifier`].
pub fn verifier_fn<F>(f: F) -> FnVerifier<F>
where
    F: Fn(&Credential) -> VerifyResult + Send + Sync,
{
    FnVerifier(f)
}

#[async_trait]
impl<F> Verifier for FnVerifier<F>
where
    F: Fn(&Credential) -> VerifyResult + Send + Sync,
{
    async fn verify(&self, credential: &Credential, _ctx: &VerifyContext<'_>) -> VerifyResult {
        (self.0)(credential)
    }

    fn verify_now(
        &self,
        credential: &Credential,
        _ctx: &VerifyContext<'_>,
    ) -> Option<VerifyResult> {
        Some((self.0)(credential))
    }
}

#[async_trait]
impl<V: Verifier + ?Sized> Verifier for Arc<V> {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        (**self).verify(credential, ctx).await
    }

    fn verify_now(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Option<VerifyResult> {
        (**self).verify_now(credential, ctx)
    }

    fn rechecks(&self) -> bool {
        (**self).rechecks()
    }

    fn recheck_now(&self, digest: &Digest, cached: &Arc<Principal>) -> Option<VerifyResult> {
        (**self).recheck_now(digest, cached)
    }

    fn recheck<'a>(
        &'a self,
        digest: &'a Digest,
        cached: &'a Arc<Principal>,
    ) -> BoxFuture<'a, VerifyResult> {
        (**self).recheck(digest, cached)
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        (**self).known_digests()
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
}
