//! Verifiers built from verifiers: a cache in front ([`Cached`]), a second
//! opinion when the first is down ([`Fallback`]), a format check before any
//! lookup ([`FormatChecked`]) and a slot filled after start ([`Deferred`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::cache::{Cache, CacheEntry, CacheStats, Denial, FillTicket, TtlCache};
use crate::{
    Answer, ApiKeyFormat, CacheConfig, Credential, Digest, Principal, Recheck, RefusedAfter,
    Verifier, VerifyContext, VerifyError, VerifyResult,
};

/// A TTL cache in front of any verifier, keyed by the credential's digest.
///
/// - A hit for a granted key is re-checked against the live record where
///   the inner verifier offers a cheap [`Recheck`] (as
///   [`HashedKeyStore`](crate::HashedKeyStore) does), so the cache can never
///   grant what the store denies.
/// - Denials are cached on their own, shorter TTL; errors are never cached.
/// - Fills carry a ticket: an [`invalidate`](Cached::invalidate) racing a
///   fill wins.
///
/// The inner verifier's answer must not depend on the request context other
/// than through the principal's scopes (which the guard checks per route).
///
/// ```
/// use auth_core::cache::Cache;
/// use auth_core::{Cached, CacheConfig, Credential, KeySet, Principal, Verifier, VerifyContext};
///
/// let keys = KeySet::new().with_key("k", Principal::new("svc")).unwrap();
/// let cached = Cached::new(keys, CacheConfig::default());
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let cred = Credential::new("k");
/// assert!(rt.block_on(cached.verify(&cred, &VerifyContext::default())).is_ok());
/// assert_eq!(cached.cache().len(), 1);
/// // A hit is answered at once.
/// assert!(cached.verify(&cred, &VerifyContext::default()).is_ready());
/// cached.invalidate(cred.digest());
/// assert_eq!(cached.cache().len(), 0);
/// ```
pub struct Cached<V, C = TtlCache<Arc<Principal>>> {
    inner: V,
    /// Shared with the futures of answers that had to wait, which fill it.
    cache: Arc<C>,
    /// Requests answered from the cache, and those that asked `inner`
    /// (counted with the `prometheus` feature).
    stats: Arc<CacheStats>,
}

impl<V: Verifier> Cached<V> {
    /// `inner` behind a [`TtlCache`] with `config`. Threads keep private
    /// copies of hot principals, so they never share a reference count.
    pub fn new(inner: V, config: CacheConfig) -> Self {
        let cache: TtlCache<Arc<Principal>> =
            TtlCache::new(config).with_replicate(|p| Arc::new(Principal::clone(p)));
        Self::with_cache(inner, cache)
    }
}

impl<V: Verifier, C: Cache<Arc<Principal>>> Cached<V, C> {
    /// `inner` behind a cache of your own (an `Arc<dyn Cache<_>>` works).
    pub fn with_cache(inner: V, cache: C) -> Self {
        Self {
            inner,
            cache: Arc::new(cache),
            stats: Arc::default(),
        }
    }

    /// Drops the cached outcome for a key (call after a write to the source).
    pub fn invalidate(&self, digest: &Digest) {
        self.cache.invalidate(digest);
    }

    /// Drops every cached outcome.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// The cache.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    /// Requests answered from the cache and requests that asked the
    /// wrapped verifier: counted when the crate's `prometheus` feature is on
    /// (else 0), exported by [`Metrics::cache`](crate::prometheus).
    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// The wrapped verifier.
    pub fn inner(&self) -> &V {
        &self.inner
    }
}

/// Keeps an answer asked under `ticket`: grants and definite denials, never
/// "could not decide".
fn remember<C: Cache<Arc<Principal>> + ?Sized>(
    cache: &C,
    ticket: FillTicket,
    result: &VerifyResult,
) {
    match result {
        Ok(p) => {
            cache.fill(ticket, CacheEntry::Granted(Arc::clone(p)));
        }
        Err(e) => {
            if let Some(denial) = Denial::from_error(*e) {
                cache.fill(ticket, CacheEntry::Denied(denial));
            }
        }
    }
}

/// `answer`, kept in `cache` under `ticket` once known; `keep` says which
/// answers to keep.
fn remembered<C: Cache<Arc<Principal>> + 'static>(
    cache: &Arc<C>,
    ticket: FillTicket,
    answer: Answer<VerifyResult>,
    keep: fn(&VerifyResult) -> bool,
) -> Answer<VerifyResult> {
    match answer {
        Answer::Ready(result) => {
            if keep(&result) {
                remember(&**cache, ticket, &result);
            }
            Answer::Ready(result)
        }
        Answer::Pending(result) => {
            let cache = Arc::clone(cache);
            Answer::pending(async move {
                let result = result.await;
                if keep(&result) {
                    remember(&*cache, ticket, &result);
                }
                result
            })
        }
    }
}

impl<V, C: Cache<Arc<Principal>>> fmt::Debug for Cached<V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("entries", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A cache hit: the answer, or a grant to re-check with the verifier that
/// re-checks it.
enum Hit<'a> {
    Answer(VerifyResult),
    Recheck(Arc<Principal>, &'a dyn Recheck),
}

impl<V: Verifier, C: Cache<Arc<Principal>>> Cached<V, C> {
    /// What the cache holds for `digest`, if anything.
    #[inline]
    fn lookup(&self, digest: &Digest) -> Option<Hit<'_>> {
        match self.cache.get(digest)? {
            // Never past the key's own expiry (the wall clock is read only
            // for keys that expire): ask the source again.
            CacheEntry::Granted(p) if p.expires_at().is_some_and(|at| SystemTime::now() >= at) => {
                None
            }
            CacheEntry::Granted(p) => Some(match self.inner.rechecks() {
                Some(live) => Hit::Recheck(p, live),
                None => Hit::Answer(Ok(p)),
            }),
            CacheEntry::Denied(denial) => Some(Hit::Answer(Err(denial.into()))),
        }
    }
}

impl<V: Verifier, C: Cache<Arc<Principal>> + 'static> Verifier for Cached<V, C> {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        let digest = credential.digest();
        let hit = self.lookup(digest);
        #[cfg(feature = "prometheus")]
        match hit {
            Some(_) => self.stats.hit(),
            None => self.stats.miss(),
        }
        match hit {
            Some(Hit::Answer(answer)) => Answer::Ready(answer),
            Some(Hit::Recheck(principal, live)) => {
                let ticket = self.cache.ticket(digest);
                // A denial replaces the grant; a success leaves the entry as
                // it is (no write lock on the hit path).
                remembered(&self.cache, ticket, live.recheck(digest, &principal), |r| {
                    r.is_err()
                })
            }
            None => {
                let ticket = self.cache.ticket(digest);
                remembered(
                    &self.cache,
                    ticket,
                    self.inner.verify(credential, ctx),
                    |_| true,
                )
            }
        }
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.inner.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Forwarded to the wrapped verifier only for a grant this cache does
    /// not hold: one it holds answers requests the wrapped verifier never
    /// sees, and which request had the wrapped verifier's own answer is not
    /// kept (it would cost every hit a write). So a verifier that counts its
    /// decisions (auth-remote's) never moves a count it did not make: the
    /// price is that the refusal of the one request its answer went to
    /// stays counted as that answer.
    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        if let Some(CacheEntry::Granted(held)) = self.cache.get(digest) {
            if Arc::ptr_eq(&held, principal) || *held == **principal {
                return;
            }
        }
        self.inner.refused_after(digest, principal, why);
    }
}

/// Asks `B` only when `A` could not decide ([`VerifyError::Unavailable`]) —
/// never when `A` answered "invalid", so a local fallback cannot resurrect
/// a key the primary revoked.
///
/// Put [`Cached`] inside (around `A`), not outside: a cache outside would
/// keep the fallback's answers.
///
/// The fallback's principals are its own: a local [`StaticKey`](crate::StaticKey)
/// grants no scope unless given one, so behind a route that requires a scope
/// it answers 403. Give the local key the scopes its routes require (see
/// [`StaticKey::principal`](crate::StaticKey::principal)).
///
/// An outage is logged at its edges, not per request: a WARN when the
/// primary first answers "unavailable", an INFO when it first decides a
/// request again after waiting on its backend. In between,
/// [`fallbacks`](Fallback::fallbacks) counts the requests handed to the
/// fallback and [`primary_down`](Fallback::primary_down) reports the outage.
///
/// ```
/// use auth_core::{verifier_fn, Credential, Fallback, Guard, PlainRequest, Principal, StaticKey, VerifyError};
///
/// // The primary (a key service, here down) and a local key for the
/// // routes that need the scope `stt`.
/// let down = verifier_fn(|_: &Credential| Err(VerifyError::Unavailable));
/// let local = StaticKey::new("local-key")
///     .unwrap()
///     .principal(Principal::new("local").with_scopes(["stt"]));
/// let guard = Guard::builder(Fallback::new(down, local)).require_scope("stt").build().unwrap();
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let decision = rt.block_on(guard.check(&PlainRequest::get("/stt").header("x-api-key", "local-key")));
/// assert_eq!(decision.principal().unwrap().id(), "local");
/// ```
pub struct Fallback<A, B> {
    /// Shared with the futures of answers that had to wait.
    shared: Arc<FallbackShared<A, B>>,
}

#[derive(Debug)]
struct FallbackShared<A, B> {
    primary: A,
    fallback: B,
    /// Whether the primary's latest answer was "unavailable"; swapped, so
    /// that only the request that starts or ends an outage logs it.
    primary_down: AtomicBool,
    /// Requests handed to the fallback, ever.
    fallbacks: AtomicU64,
    /// [`fallbacks`](Fallback::fallbacks) when the current outage started,
    /// for the recovery's log line.
    outage_from: AtomicU64,
}

impl<A, B> fmt::Debug for Fallback<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary_down", &self.primary_down())
            .field("fallbacks", &self.fallbacks())
            .finish_non_exhaustive()
    }
}

impl<A: Verifier, B: Verifier> Fallback<A, B> {
    /// `primary`, then `fallback` when the primary is unavailable.
    pub fn new(primary: A, fallback: B) -> Self {
        Self {
            shared: Arc::new(FallbackShared {
                primary,
                fallback,
                primary_down: AtomicBool::new(false),
                fallbacks: AtomicU64::new(0),
                outage_from: AtomicU64::new(0),
            }),
        }
    }
}

impl<A, B> Fallback<A, B> {
    /// How many requests were handed to the fallback because the primary
    /// was unavailable, since this verifier was made.
    pub fn fallbacks(&self) -> u64 {
        self.shared.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the primary is considered down: its latest answer was
    /// "unavailable", and it has not decided a request by asking its
    /// backend since (answers given at once — cache hits — say nothing about
    /// its backend).
    pub fn primary_down(&self) -> bool {
        self.shared.primary_down.load(Ordering::Relaxed)
    }
}

impl<A, B> FallbackShared<A, B> {
    /// The primary could not decide: counted, and logged if it starts an
    /// outage.
    fn primary_unavailable(&self) {
        let before = self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if !self.primary_down.swap(true, Ordering::Relaxed) {
            self.outage_from.store(before, Ordering::Relaxed);
            tracing::warn!(target: "auth_core", "primary verifier unavailable; asking the fallback");
        }
    }

    /// The primary decided after asking its backend: logged if it ends an
    /// outage.
    fn primary_decided(&self) {
        // Read first: when the primary is up (nearly always), no write to
        // shared memory.
        if self.primary_down.load(Ordering::Relaxed)
            && self.primary_down.swap(false, Ordering::Relaxed)
        {
            let during = self
                .fallbacks
                .load(Ordering::Relaxed)
                .saturating_sub(self.outage_from.load(Ordering::Relaxed));
            tracing::info!(target: "auth_core", fallbacks = during,
                "primary verifier answering again; the fallback is no longer asked");
        }
    }
}

impl<A: Verifier + 'static, B: Verifier + 'static> Verifier for Fallback<A, B> {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        let shared = &self.shared;
        match shared.primary.verify(credential, ctx) {
            Answer::Ready(Err(VerifyError::Unavailable)) => {
                shared.primary_unavailable();
                shared.fallback.verify(credential, ctx)
            }
            // Decided at once (a cache hit): says nothing about the
            // primary's backend, so it neither ends an outage nor logs —
            // during an outage, a mix of cached and new keys would
            // otherwise log on every request.
            Answer::Ready(decided) => Answer::Ready(decided),
            Answer::Pending(primary) => {
                // The fallback may be needed later: the future owns copies.
                let shared = Arc::clone(shared);
                let credential = credential.clone();
                let path = ctx.path.to_owned();
                let scope = ctx.required_scope.map(str::to_owned);
                Answer::pending(async move {
                    match primary.await {
                        Err(VerifyError::Unavailable) => {
                            shared.primary_unavailable();
                            let ctx = VerifyContext {
                                path: &path,
                                required_scope: scope.as_deref(),
                            };
                            shared.fallback.verify(&credential, &ctx).await
                        }
                        decided => {
                            shared.primary_decided();
                            decided
                        }
                    }
                })
            }
        }
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        match (
            self.shared.primary.known_digests(),
            self.shared.fallback.known_digests(),
        ) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        }
    }

    fn is_ready(&self) -> bool {
        self.shared.primary.is_ready() || self.shared.fallback.is_ready()
    }

    /// Forwarded to both: which of the two granted is not kept per
    /// request (it would cost every request a write), and a verifier that
    /// counts its decisions tells its own grants by the principal (a
    /// local key's principal is not a key service's).
    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        self.shared.primary.refused_after(digest, principal, why);
        self.shared.fallback.refused_after(digest, principal, why);
    }
}

/// Refuses credentials that are not well-formed [`ApiKeyFormat`] keys
/// (wrong prefix, length or checksum) before the inner verifier — and so
/// any store or remote service — is asked.
#[derive(Debug)]
pub struct FormatChecked<V> {
    inner: V,
    format: ApiKeyFormat,
}

impl<V: Verifier> FormatChecked<V> {
    /// `inner`, reached only by keys of `format`.
    pub fn new(inner: V, format: ApiKeyFormat) -> Self {
        Self { inner, format }
    }
}

impl<V: Verifier> Verifier for FormatChecked<V> {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        if !self.format.is_well_formed(credential.expose()) {
            return Answer::Ready(Err(VerifyError::Invalid));
        }
        self.inner.verify(credential, ctx)
    }

    fn rechecks(&self) -> Option<&dyn Recheck> {
        self.inner.rechecks()
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.inner.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        self.inner.refused_after(digest, principal, why);
    }
}

/// A verifier set after start: not ready (503) until [`set`](Deferred::set),
/// for keys that are loaded or generated in the background.
///
/// ```
/// use auth_core::{Deferred, StaticKey, Verifier};
///
/// let slot: Deferred<StaticKey> = Deferred::new();
/// assert!(!slot.is_ready());
/// slot.set(StaticKey::new("k").unwrap()).unwrap();
/// assert!(slot.is_ready());
/// ```
pub struct Deferred<V> {
    slot: OnceLock<V>,
}

impl<V: Verifier> Deferred<V> {
    /// An empty slot.
    pub fn new() -> Self {
        Self {
            slot: OnceLock::new(),
        }
    }

    /// Fills the slot; gives the verifier back if it was already set.
    pub fn set(&self, verifier: V) -> Result<(), V> {
        self.slot.set(verifier)
    }

    /// The verifier, once set.
    pub fn get(&self) -> Option<&V> {
        self.slot.get()
    }
}

impl<V: Verifier> Default for Deferred<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for Deferred<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("ready", &self.slot.get().is_some())
            .finish()
    }
}

impl<V: Verifier> Verifier for Deferred<V> {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        match self.slot.get() {
            Some(v) => v.verify(credential, ctx),
            None => Answer::Ready(Err(VerifyError::Unavailable)),
        }
    }

    fn rechecks(&self) -> Option<&dyn Recheck> {
        self.slot.get()?.rechecks()
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.slot.get()?.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.slot.get().is_some_and(Verifier::is_ready)
    }

    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        if let Some(v) = self.slot.get() {
            v.refused_after(digest, principal, why);
        }
    }
}
