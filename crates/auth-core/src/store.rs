//! Keys kept only as SHA-256 digests in a store: the [`KeyStore`] trait,
//! an in-memory store, and the [`HashedKeyStore`] verifier over any store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::RwLock;

use crate::digest::DigestHasher;
use crate::local;
use crate::{
    Answer, Credential, Digest, Principal, RateLimitPolicy, Recheck, Verifier, VerifyContext,
    VerifyError, VerifyResult,
};

/// A stored key: everything but the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// The record's id (stable across scope or limit changes).
    pub id: String,
    /// SHA-256 digest of the key.
    pub digest: Digest,
    /// The principal (owner) the key authenticates as.
    pub principal_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Rate limit for the key, if any.
    pub rate_limit: Option<RateLimitPolicy>,
    /// When the key stops being valid, if ever.
    pub expires_at: Option<SystemTime>,
    /// Whether the key was disabled (revoked).
    pub disabled: bool,
    /// What the store says of the key besides, handed to the principal
    /// as its labels (e.g. auth-sqlx marks keys that carry usage credits,
    /// so that a service spends them only for those).
    pub labels: BTreeMap<String, String>,
}

impl KeyRecord {
    /// A live, unrestricted record.
    pub fn new(id: impl Into<String>, digest: Digest, principal_id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            digest,
            principal_id: principal_id.into(),
            scopes: Vec::new(),
            rate_limit: None,
            expires_at: None,
            disabled: false,
            labels: BTreeMap::new(),
        }
    }

    /// Whether the record is live at `now` (not disabled, not expired).
    pub fn decide_state(&self, now: SystemTime) -> Result<(), VerifyError> {
        if self.disabled {
            return Err(VerifyError::Disabled);
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(VerifyError::Expired);
        }
        Ok(())
    }

    /// Whether `principal` is exactly what this record grants.
    pub fn grants(&self, principal: &Principal) -> bool {
        principal.id() == self.principal_id
            && principal.key_id() == Some(self.id.as_str())
            && principal.scopes() == self.scopes.as_slice()
            && principal.rate_limit() == self.rate_limit
            && principal.expires_at() == self.expires_at
            && *principal.labels() == self.labels
    }

    /// Decides the record against `now`: the principal it grants, or why not.
    pub fn decide(&self, now: SystemTime) -> VerifyResult {
        self.decide_state(now)?;
        let mut p = Principal::new(self.principal_id.clone())
            .with_key_id(self.id.clone())
            .with_scopes(self.scopes.iter().cloned());
        if let Some(limit) = self.rate_limit {
            p = p.with_rate_limit(limit);
        }
        if let Some(at) = self.expires_at {
            p = p.with_expiry(at);
        }
        for (key, value) in &self.labels {
            p = p.with_label(key.clone(), value.clone());
        }
        Ok(Arc::new(p))
    }
}

/// A failure of the store itself (database down, pool exhausted). Always
/// maps to [`VerifyError::Unavailable`]: never to "invalid", never to allow.
#[derive(Debug, thiserror::Error)]
#[error("key store unavailable: {0}")]
pub struct StoreError(pub String);

/// What a store lookup gives: the record, none, or the store's failure.
pub type Lookup = Result<Option<Arc<KeyRecord>>, StoreError>;

/// Where key records live. Database stores come in their own crates.
///
/// One method: [`find_by_digest`](KeyStore::find_by_digest) answers
/// [`Answer::Ready`] where the records are in memory and
/// [`Answer::Pending`] (a future owning what it needs, e.g. a clone of the
/// pool) where they are not.
pub trait KeyStore: Send + Sync {
    /// The record whose digest is `digest` (one indexed lookup).
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup>;

    /// The store's cheap fetch by id, where it has one (see [`FindById`]).
    /// With it, a cache in front re-checks every hit against the live
    /// record, so the cache can never grant what the store denies; without
    /// it (the default), a cache trusts its entries until their TTL.
    fn by_id(&self) -> Option<&dyn FindById> {
        None
    }
}

/// A store's cheap, indexed fetch by record id, for re-checking cached
/// grants. Implemented only by stores that have one.
pub trait FindById: Send + Sync {
    /// The record with this id.
    fn find_by_id(&self, id: &str) -> Answer<Lookup>;

    /// A number that changes after every write, for stores held in memory;
    /// `None` (the default) for stores that cannot tell. While it stays the
    /// same, a record re-checked once need not be read again: a verifier
    /// keeps per-thread notes of what it confirmed at which version.
    fn version(&self) -> Option<u64> {
        None
    }
}

impl<S: KeyStore + ?Sized> KeyStore for Arc<S> {
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup> {
        (**self).find_by_digest(digest)
    }

    fn by_id(&self) -> Option<&dyn FindById> {
        (**self).by_id()
    }
}

/// An in-memory [`KeyStore`], for tests, single processes and examples.
///
/// ```
/// use auth_core::{ApiKey, KeyRecord, MemoryKeyStore};
///
/// let store = MemoryKeyStore::new();
/// let key = ApiKey::generate().unwrap();
/// store.insert(KeyRecord::new("k1", key.digest(), "svc-a"));
/// assert!(store.disable("k1"));
/// assert!(store.get("k1").unwrap().disabled);
/// ```
#[derive(Default)]
pub struct MemoryKeyStore {
    inner: RwLock<MemoryInner>,
    /// Bumped after every write, under the write lock (see
    /// [`FindById::version`]).
    version: AtomicU64,
}

#[derive(Default)]
struct MemoryInner {
    by_digest: HashMap<Digest, Arc<KeyRecord>, DigestHasher>,
    id_to_digest: HashMap<String, Digest>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a record (by id and by digest).
    pub fn insert(&self, record: KeyRecord) {
        let mut inner = self.inner.write();
        if let Some(old) = inner.id_to_digest.insert(record.id.clone(), record.digest) {
            inner.by_digest.remove(&old);
        }
        inner.by_digest.insert(record.digest, Arc::new(record));
        self.wrote();
    }

    /// Marks a write; called with the write lock held, after the change, so
    /// that a reader who saw the new version also sees the change.
    fn wrote(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        let inner = self.inner.read();
        let d = inner.id_to_digest.get(id)?;
        inner.by_digest.get(d).map(|r| KeyRecord::clone(r))
    }

    /// Changes a record in place; returns whether it exists.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> bool {
        let mut inner = self.inner.write();
        let Some(d) = inner.id_to_digest.get(id).copied() else {
            return false;
        };
        match inner.by_digest.get_mut(&d) {
            Some(shared) => {
                let record = Arc::make_mut(shared);
                change(record);
                // The digest is the index: it must not change in place.
                record.digest = d;
                record.id = id.to_owned();
                self.wrote();
                true
            }
            None => false,
        }
    }

    /// Disables a record; returns whether it exists.
    pub fn disable(&self, id: &str) -> bool {
        self.update(id, |r| r.disabled = true)
    }

    /// Removes a record; returns it if it existed.
    pub fn remove(&self, id: &str) -> Option<KeyRecord> {
        let mut inner = self.inner.write();
        let d = inner.id_to_digest.remove(id)?;
        let removed = inner.by_digest.remove(&d);
        self.wrote();
        removed.map(|r| Arc::try_unwrap(r).unwrap_or_else(|shared| KeyRecord::clone(&shared)))
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.inner.read().by_digest.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("records", &self.len())
            .finish()
    }
}

impl KeyStore for MemoryKeyStore {
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup> {
        Answer::Ready(Ok(self.inner.read().by_digest.get(digest).cloned()))
    }

    fn by_id(&self) -> Option<&dyn FindById> {
        Some(self)
    }
}

impl FindById for MemoryKeyStore {
    fn find_by_id(&self, id: &str) -> Answer<Lookup> {
        let inner = self.inner.read();
        let record = inner
            .id_to_digest
            .get(id)
            .and_then(|d| inner.by_digest.get(d))
            .cloned();
        Answer::Ready(Ok(record))
    }

    fn version(&self) -> Option<u64> {
        Some(self.version.load(Ordering::Acquire))
    }
}

/// A verifier over a [`KeyStore`] that holds keys only as SHA-256 digests.
///
/// Verification is one lookup by digest, a constant-time confirmation of the
/// digest, then the record's state (disabled → `Disabled`, past
/// `expires_at` → `Expired`). A store error is `Unavailable`, never
/// "invalid" and never a grant. Wrapped in [`Cached`](crate::Cached), over
/// a store that [finds by id](FindById) (as [`MemoryKeyStore`] does), a
/// cache hit is re-checked against the live record by id, so the cache can
/// never grant what the store denies; over a store without one (the SQL
/// stores), the cache holds answers until invalidated or their TTL.
///
/// ```
/// use auth_core::{ApiKey, Credential, HashedKeyStore, KeyRecord, MemoryKeyStore, Verifier, VerifyContext, VerifyError};
/// use std::sync::Arc;
///
/// let store = Arc::new(MemoryKeyStore::new());
/// let key = ApiKey::generate().unwrap();
/// store.insert(KeyRecord::new("k1", key.digest(), "svc-a"));
/// let verifier = HashedKeyStore::new(store.clone());
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let cred = Credential::new(key.expose());
/// assert_eq!(rt.block_on(verifier.verify(&cred, &VerifyContext::default())).unwrap().id(), "svc-a");
/// store.disable("k1");
/// assert_eq!(rt.block_on(verifier.verify(&cred, &VerifyContext::default())).unwrap_err(), VerifyError::Disabled);
/// ```
pub struct HashedKeyStore<S> {
    store: S,
    now: fn() -> SystemTime,
    /// Owner of this verifier's per-thread notes of confirmed grants.
    owner: u64,
}

/// A per-thread note: this principal was re-checked against the record at
/// the store version the note is filed under.
#[derive(Clone)]
struct Confirmed {
    principal: Arc<Principal>,
    expires_at: Option<SystemTime>,
}

impl<S: KeyStore> HashedKeyStore<S> {
    /// A verifier over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            now: SystemTime::now,
            owner: local::new_owner(),
        }
    }

    /// Uses another wall clock for expiry (tests).
    pub fn with_wall_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// The answer for `digest` from the record the store found for it.
fn decide(now: fn() -> SystemTime, digest: &Digest, lookup: Lookup) -> VerifyResult {
    match lookup {
        // The store matched on the digest; confirm in constant time so
        // that a store with a loose index cannot grant a near miss.
        Ok(Some(r)) if bool::from(r.digest.ct_eq(digest)) => r.decide(now()),
        Ok(_) => Err(VerifyError::Invalid),
        Err(e) => {
            tracing::warn!(target: "auth_core", error = %e, "key store unavailable");
            Err(VerifyError::Unavailable)
        }
    }
}

/// What re-checking a cached grant needs after the store answered.
struct Confirm {
    now: fn() -> SystemTime,
    owner: u64,
    digest: Digest,
    cached: Arc<Principal>,
    /// The store's version, read before the record.
    version: Option<u64>,
}

impl Confirm {
    /// The live answer from the record: the cached principal itself when the
    /// record is unchanged (no allocation on the hit path).
    fn decide(self, lookup: Lookup) -> VerifyResult {
        let record = match lookup {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(target: "auth_core", error = %e, "key store unavailable");
                return Err(VerifyError::Unavailable);
            }
        };
        // The same digest under the same id: the key the cache granted.
        let id = self.cached.key_id();
        let Some(record) = record
            .filter(|r| id.is_none_or(|id| r.id == id) && bool::from(r.digest.ct_eq(&self.digest)))
        else {
            return Err(VerifyError::Invalid);
        };
        // The wall clock only where the record can expire (a clock read
        // costs as much as the rest of a hit).
        let now = match record.expires_at {
            Some(_) => (self.now)(),
            None => SystemTime::UNIX_EPOCH,
        };
        match record.decide_state(now) {
            Err(e) => Err(e),
            Ok(()) if record.grants(&self.cached) => {
                if let Some(v) = self.version {
                    local::offer(self.owner, &self.digest, v, u64::MAX, || Confirmed {
                        principal: Arc::clone(&self.cached),
                        expires_at: record.expires_at,
                    });
                }
                Ok(self.cached)
            }
            Ok(()) => record.decide(now),
        }
    }
}

impl<S> fmt::Debug for HashedKeyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashedKeyStore").finish_non_exhaustive()
    }
}

impl<S: KeyStore> Verifier for HashedKeyStore<S> {
    fn verify(&self, credential: &Credential, _ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        let digest = *credential.digest();
        let now = self.now;
        match self.store.find_by_digest(&digest) {
            Answer::Ready(lookup) => Answer::Ready(decide(now, &digest, lookup)),
            Answer::Pending(lookup) => {
                Answer::pending(async move { decide(now, &digest, lookup.await) })
            }
        }
    }

    fn rechecks(&self) -> Option<&dyn Recheck> {
        self.store.by_id().map(|_| self as &dyn Recheck)
    }
}

impl<S: KeyStore> Recheck for HashedKeyStore<S> {
    fn recheck(&self, digest: &Digest, cached: &Arc<Principal>) -> Answer<VerifyResult> {
        let by_id = self.store.by_id();
        // Read before the record: a write after this makes the note stale.
        let version = by_id.and_then(FindById::version);
        if let Some(note) = version.and_then(|v| local::get::<Confirmed>(self.owner, digest, v, 0))
        {
            if Arc::ptr_eq(&note.principal, cached)
                && note.expires_at.is_none_or(|at| (self.now)() < at)
            {
                return Answer::Ready(Ok(Arc::clone(cached)));
            }
        }
        // By id; a principal without a record id (not made by this
        // verifier) is looked up by digest instead.
        let lookup = match (by_id, cached.key_id()) {
            (Some(store), Some(id)) => store.find_by_id(id),
            _ => self.store.find_by_digest(digest),
        };
        let confirm = Confirm {
            now: self.now,
            owner: self.owner,
            digest: *digest,
            cached: Arc::clone(cached),
            version,
        };
        match lookup {
            Answer::Ready(lookup) => Answer::Ready(confirm.decide(lookup)),
            Answer::Pending(lookup) => Answer::pending(async move { confirm.decide(lookup.await) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn verify<S: KeyStore>(v: &HashedKeyStore<S>, key: &str) -> VerifyResult {
        block_on(v.verify(&Credential::new(key), &VerifyContext::default()))
    }

    struct Failing;

    impl KeyStore for Failing {
        fn find_by_digest(&self, _: &Digest) -> Answer<Lookup> {
            Answer::pending(async { Err(StoreError("connection refused".into())) })
        }
    }

    #[test]
    fn states_of_a_record() {
        let store = Arc::new(MemoryKeyStore::new());
        let mut r = KeyRecord::new("k1", Digest::of(b"key-1"), "svc");
        r.scopes = vec!["read".into()];
        r.rate_limit = Some(RateLimitPolicy::new(10, Duration::from_secs(1)));
        store.insert(r);
        let v = HashedKeyStore::new(store.clone());
        let p = verify(&v, "key-1").unwrap();
        assert_eq!(p.id(), "svc");
        assert_eq!(p.key_id(), Some("k1"));
        assert!(p.has_scope("read"));
        assert_eq!(p.rate_limit().unwrap().requests, 10);
        assert_eq!(verify(&v, "key-2").unwrap_err(), VerifyError::Invalid);

        store.update("k1", |r| {
            r.expires_at = Some(SystemTime::now() - Duration::from_secs(1))
        });
        assert_eq!(verify(&v, "key-1").unwrap_err(), VerifyError::Expired);
        store.update("k1", |r| {
            r.expires_at = Some(SystemTime::now() + Duration::from_secs(3600))
        });
        assert!(verify(&v, "key-1").is_ok());
        store.disable("k1");
        assert_eq!(verify(&v, "key-1").unwrap_err(), VerifyError::Disabled);
        store.remove("k1");
        assert_eq!(verify(&v, "key-1").unwrap_err(), VerifyError::Invalid);
    }

    #[test]
    fn store_errors_are_unavailable() {
        let v = HashedKeyStore::new(Failing);
        assert_eq!(
            verify(&v, "anything").unwrap_err(),
            VerifyError::Unavailable
        );
    }

    #[test]
    fn recheck_reads_the_live_record() {
        let store = Arc::new(MemoryKeyStore::new());
        let d = Digest::of(b"key-1");
        store.insert(KeyRecord::new("k1", d, "svc"));
        let v = HashedKeyStore::new(store.clone());
        let p = verify(&v, "key-1").unwrap();
        assert!(block_on(v.recheck(&d, &p)).is_ok());
        store.disable("k1");
        assert_eq!(
            block_on(v.recheck(&d, &p)).unwrap_err(),
            VerifyError::Disabled
        );
        // A record replaced under the same id by another key is not a match.
        store.insert(KeyRecord::new("k1", Digest::of(b"other"), "svc"));
        assert_eq!(
            block_on(v.recheck(&d, &p)).unwrap_err(),
            VerifyError::Invalid
        );
    }

    #[test]
    fn recheck_follows_the_record_and_the_clock() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NOW: AtomicU64 = AtomicU64::new(1_000);
        fn now() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::SeqCst))
        }
        let store = Arc::new(MemoryKeyStore::new());
        let d = Digest::of(b"key-1");
        let mut r = KeyRecord::new("k1", d, "svc");
        r.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000));
        store.insert(r);
        let v = HashedKeyStore::new(store.clone()).with_wall_clock(now);
        let p = verify(&v, "key-1").unwrap();
        // Unchanged and unexpired: the cached principal itself (the third
        // time from this thread's note, made on the second).
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&v.recheck(&d, &p).now().unwrap().unwrap(), &p));
        }
        // Time passes the record's expiry with nothing written.
        NOW.store(2_000, Ordering::SeqCst);
        assert_eq!(
            v.recheck(&d, &p).now().unwrap().unwrap_err(),
            VerifyError::Expired
        );
        NOW.store(1_000, Ordering::SeqCst);
        // Disabled: the note no longer answers.
        store.disable("k1");
        assert_eq!(
            v.recheck(&d, &p).now().unwrap().unwrap_err(),
            VerifyError::Disabled
        );
        // Scopes changed: a fresh principal, not the cached one.
        store.update("k1", |r| {
            r.disabled = false;
            r.scopes = vec!["read".into()];
        });
        let fresh = v.recheck(&d, &p).now().unwrap().unwrap();
        assert!(fresh.has_scope("read") && !Arc::ptr_eq(&fresh, &p));
        // The same key now filed under another id is not the cached key.
        let mut moved = store.remove("k1").unwrap();
        moved.id = "k2".into();
        store.insert(moved);
        assert_eq!(
            v.recheck(&d, &p).now().unwrap().unwrap_err(),
            VerifyError::Invalid
        );
        store.remove("k2");
        assert_eq!(
            v.recheck(&d, &p).now().unwrap().unwrap_err(),
            VerifyError::Invalid
        );
    }

    #[test]
    fn memory_store_keeps_indexes_consistent() {
        let s = MemoryKeyStore::new();
        s.insert(KeyRecord::new("a", Digest::of(b"1"), "p"));
        s.insert(KeyRecord::new("a", Digest::of(b"2"), "p"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a").unwrap().digest, Digest::of(b"2"));
        assert!(!s.update("missing", |r| r.disabled = true));
        assert!(s.remove("a").is_some());
        assert!(s.is_empty());
    }
}
