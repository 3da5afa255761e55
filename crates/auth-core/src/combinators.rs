//! Verifiers built from verifiers: a cache in front ([`Cached`]), a second
//! opinion when the first is down ([`Fallback`]), a format check before any
//! lookup ([`FormatChecked`]) and a slot filled after start ([`Deferred`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;

use crate::verifier::BoxFuture;
use crate::{
    ApiKeyFormat, Cache, CacheConfig, CacheEntry, Credential, Denial, Digest, Principal, TtlCache,
    Verifier, VerifyContext, VerifyError, VerifyResult,
};

/// A TTL cache in front of any verifier, keyed by the credential's digest.
///
/// - A hit for a granted key is re-checked against the live record where
///   the inner verifier offers a cheap [`recheck`](Verifier::recheck) (as
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
/// use auth_core::{Cache, Cached, CacheConfig, Credential, KeySet, Principal, Verifier, VerifyContext};
///
/// let keys = KeySet::new().with_key("k", Principal::new("svc")).unwrap();
/// let cached = Cached::new(keys, CacheConfig::default());
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let cred = Credential::new("k");
/// assert!(rt.block_on(cached.verify(&cred, &VerifyContext::default())).is_ok());
/// assert_eq!(cached.cache().len(), 1);
/// cached.invalidate(cred.digest());
/// assert_eq!(cached.cache().len(), 0);
/// ```
pub struct Cached<V, C = TtlCache<Arc<Principal>>> {
    inner: V,
    cache: C,
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
        Self { inner, cache }
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

    /// The wrapped verifier.
    pub fn inner(&self) -> &V {
        &self.inner
    }

    fn remember(&self, ticket: crate::FillTicket, result: &VerifyResult) {
        match result {
            Ok(p) => {
                self.cache.fill(ticket, CacheEntry::Granted(Arc::clone(p)));
            }
            Err(e) => {
                if let Some(denial) = Denial::from_error(*e) {
                    self.cache.fill(ticket, CacheEntry::Denied(denial));
                }
            }
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

impl<V: Verifier, C: Cache<Arc<Principal>>> Cached<V, C> {
    /// The cached answer, if the cache can give it without waiting.
    /// `Err(principal)`: a grant that must be re-checked first.
    #[inline]
    fn lookup(&self, digest: &Digest) -> Option<Result<VerifyResult, Arc<Principal>>> {
        match self.cache.get(digest)? {
            // Never past the key's own expiry (the wall clock is read only
            // for keys that expire): ask the source again.
            CacheEntry::Granted(p) if p.expires_at().is_some_and(|at| SystemTime::now() >= at) => {
                None
            }
            CacheEntry::Granted(p) if self.inner.rechecks() => Some(Err(p)),
            CacheEntry::Granted(p) => Some(Ok(Ok(p))),
            CacheEntry::Denied(denial) => Some(Ok(Err(denial.into()))),
        }
    }
}

#[async_trait]
impl<V: Verifier, C: Cache<Arc<Principal>>> Verifier for Cached<V, C> {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        let digest = credential.digest();
        match self.lookup(digest) {
            Some(Ok(answer)) => return answer,
            Some(Err(principal)) => {
                let ticket = self.cache.ticket(digest);
                let live = self.inner.recheck(digest, &principal).await;
                // A denial replaces the grant; a success leaves the entry as
                // it is (no write lock on the hit path).
                if live.is_err() {
                    self.remember(ticket, &live);
                }
                return live;
            }
            None => {}
        }
        let ticket = self.cache.ticket(digest);
        let result = self.inner.verify(credential, ctx).await;
        self.remember(ticket, &result);
        result
    }

    fn verify_now(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Option<VerifyResult> {
        let digest = credential.digest();
        match self.lookup(digest) {
            Some(Ok(answer)) => Some(answer),
            Some(Err(principal)) => {
                let ticket = self.cache.ticket(digest);
                let live = self.inner.recheck_now(digest, &principal)?;
                if live.is_err() {
                    self.remember(ticket, &live);
                }
                Some(live)
            }
            None => {
                let ticket = self.cache.ticket(digest);
                let result = self.inner.verify_now(credential, ctx)?;
                self.remember(ticket, &result);
                Some(result)
            }
        }
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.inner.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

/// Asks `B` only when `A` could not decide ([`VerifyError::Unavailable`]) —
/// never when `A` answered "invalid", so a local fallback cannot resurrect
/// a key the primary revoked.
///
/// Offers no [`recheck`](Verifier::recheck): put [`Cached`] inside (around
/// `A`), not outside.
///
/// An outage is logged at its edges, not per request: a WARN when the
/// primary first answers "unavailable", an INFO when it first decides a
/// request again. In between, [`fallbacks`](Fallback::fallbacks) counts the
/// requests handed to the fallback and
/// [`primary_down`](Fallback::primary_down) reports the outage.
///
/// ```
/// use auth_core::{verifier_fn, Credential, Fallback, KeySet, Principal, Verifier, VerifyContext, VerifyError};
///
/// let down = verifier_fn(|_: &Credential| Err(VerifyError::Unavailable));
/// let local = KeySet::new().with_key("k", Principal::new("local")).unwrap();
/// let v = Fallback::new(down, local);
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let p = rt.block_on(v.verify(&Credential::new("k"), &VerifyContext::default()));
/// assert_eq!(p.unwrap().id(), "local");
/// assert_eq!(v.fallbacks(), 1);
/// assert!(v.primary_down());
/// ```
#[derive(Debug)]
pub struct Fallback<A, B> {
    primary: A,
    fallback: B,
    /// Whether the primary's latest answer was "unavailable"; swapped, so
    /// that only the request that starts or ends an outage logs it.
    primary_down: AtomicBool,
    /// Requests handed to the fallback, ever.
    fallbacks: AtomicU64,
    /// [`fallbacks`](Self::fallbacks) when the current outage started, for
    /// the recovery's log line.
    outage_from: AtomicU64,
}

impl<A: Verifier, B: Verifier> Fallback<A, B> {
    /// `primary`, then `fallback` when the primary is unavailable.
    pub fn new(primary: A, fallback: B) -> Self {
        Self {
            primary,
            fallback,
            primary_down: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            outage_from: AtomicU64::new(0),
        }
    }

    /// How many requests were handed to the fallback because the primary
    /// was unavailable, since this verifier was made.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the primary is considered down: its latest answer through
    /// [`verify`](Verifier::verify) was "unavailable", and it has not
    /// decided a request there since (answers given at once — cache hits,
    /// through `verify_now` — say nothing about its backend).
    pub fn primary_down(&self) -> bool {
        self.primary_down.load(Ordering::Relaxed)
    }

    /// The primary could not decide: counted, and logged if it starts an
    /// outage.
    fn primary_unavailable(&self) {
        let before = self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if !self.primary_down.swap(true, Ordering::Relaxed) {
            self.outage_from.store(before, Ordering::Relaxed);
            tracing::warn!(target: "auth_core", "primary verifier unavailable; asking the fallback");
        }
    }

    /// The primary decided: logged if it ends an outage.
    fn primary_decided(&self) {
        // Read first: when the primary is up (nearly always), no write to
        // shared memory on the hot path.
        if self.primary_down.load(Ordering::Relaxed)
            && self.primary_down.swap(false, Ordering::Relaxed)
        {
            let during = self
                .fallbacks()
                .saturating_sub(self.outage_from.load(Ordering::Relaxed));
            tracing::info!(target: "auth_core", fallbacks = during,
                "primary verifier answering again; the fallback is no longer asked");
        }
    }
}

#[async_trait]
impl<A: Verifier, B: Verifier> Verifier for Fallback<A, B> {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        match self.primary.verify(credential, ctx).await {
            Err(VerifyError::Unavailable) => {
                self.primary_unavailable();
                self.fallback.verify(credential, ctx).await
            }
            decided => {
                self.primary_decided();
                decided
            }
        }
    }

    fn verify_now(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Option<VerifyResult> {
        // Only a primary that decides at once answers here; anything else
        // takes the async path, which asks the fallback. An answer given at
        // once (a cache hit) says nothing about the primary's backend, so
        // it neither ends an outage nor logs: during an outage, a mix of
        // cached and new keys would otherwise log on every request.
        match self.primary.verify_now(credential, ctx)? {
            Err(VerifyError::Unavailable) => None,
            decided => Some(decided),
        }
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        match (self.primary.known_digests(), self.fallback.known_digests()) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        }
    }

    fn is_ready(&self) -> bool {
        self.primary.is_ready() || self.fallback.is_ready()
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

#[async_trait]
impl<V: Verifier> Verifier for FormatChecked<V> {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        if !self.format.is_well_formed(credential.expose()) {
            return Err(VerifyError::Invalid);
        }
        self.inner.verify(credential, ctx).await
    }

    fn verify_now(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Option<VerifyResult> {
        if !self.format.is_well_formed(credential.expose()) {
            return Some(Err(VerifyError::Invalid));
        }
        self.inner.verify_now(credential, ctx)
    }

    fn rechecks(&self) -> bool {
        self.inner.rechecks()
    }

    fn recheck_now(&self, digest: &Digest, cached: &Arc<Principal>) -> Option<VerifyResult> {
        self.inner.recheck_now(digest, cached)
    }

    fn recheck<'a>(
        &'a self,
        digest: &'a Digest,
        cached: &'a Arc<Principal>,
    ) -> BoxFuture<'a, VerifyResult> {
        self.inner.recheck(digest, cached)
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.inner.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
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

#[async_trait]
impl<V: Verifier> Verifier for Deferred<V> {
    async fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> VerifyResult {
        match self.slot.get() {
            Some(v) => v.verify(credential, ctx).await,
            None => Err(VerifyError::Unavailable),
        }
    }

    fn verify_now(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Option<VerifyResult> {
        match self.slot.get() {
            Some(v) => v.verify_now(credential, ctx),
            None => Some(Err(VerifyError::Unavailable)),
        }
    }

    fn rechecks(&self) -> bool {
        self.slot.get().is_some_and(Verifier::rechecks)
    }

    fn recheck_now(&self, digest: &Digest, cached: &Arc<Principal>) -> Option<VerifyResult> {
        self.slot.get()?.recheck_now(digest, cached)
    }

    fn recheck<'a>(
        &'a self,
        digest: &'a Digest,
        cached: &'a Arc<Principal>,
    ) -> BoxFuture<'a, VerifyResult> {
        match self.slot.get() {
            Some(v) => v.recheck(digest, cached),
            None => Box::pin(std::future::ready(Err(VerifyError::Unavailable))),
        }
    }

    fn known_digests(&self) -> Option<Vec<Digest>> {
        self.slot.get()?.known_digests()
    }

    fn is_ready(&self) -> bool {
        self.slot.get().is_some_and(Verifier::is_ready)
    }
}
