//! `Cached`, `Fallback` and `FormatChecked` against counting and racing
//! stores: the failure modes the cache must rule out.
#![allow(unused_crate_dependencies)]

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use auth_core::cache::Cache;
use auth_core::{
    Answer, ApiKey, ApiKeyFormat, CacheConfig, Cached, Credential, Digest, Fallback, FormatChecked,
    HashedKeyStore, KeyRecord, KeySet, KeyStore, Lookup, MemoryKeyStore, Principal, StoreError,
    Verifier, VerifyContext, VerifyError, VerifyResult, verifier_fn,
};
use tokio::sync::Notify;

async fn verify(v: &impl Verifier, key: &str) -> VerifyResult {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
}

/// A store that counts lookups, can fail, and can hold a lookup open until
/// released (after reading the record). It waits like a database does: every
/// lookup is a future, which owns the store's shared state.
#[derive(Clone, Default)]
struct TestStore(Arc<StoreState>);

#[derive(Default)]
struct StoreState {
    records: MemoryKeyStore,
    lookups: AtomicUsize,
    failing: AtomicBool,
    gate: Option<(Notify, Notify)>,
}

impl Deref for TestStore {
    type Target = StoreState;
    fn deref(&self) -> &StoreState {
        &self.0
    }
}

impl TestStore {
    fn gated() -> Self {
        Self(Arc::new(StoreState {
            gate: Some((Notify::new(), Notify::new())),
            ..StoreState::default()
        }))
    }
}

impl KeyStore for TestStore {
    fn find_by_digest(&self, digest: &Digest) -> Answer<Lookup> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&self.0);
        let digest = *digest;
        Answer::pending(async move {
            if state.failing.load(Ordering::SeqCst) {
                return Err(StoreError("connection refused".into()));
            }
            let record = state.records.find_by_digest(&digest).await?;
            if let Some((read, release)) = &state.gate {
                read.notify_one();
                release.notified().await;
            }
            Ok(record)
        })
    }
    // No by_id: the cache cannot re-check, so only its fill tickets stand
    // between a racing revocation and a stale grant.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_racing_a_fill_stays_revoked() {
    for round in 0..200 {
        let store = TestStore::gated();
        store
            .records
            .insert(KeyRecord::new("k1", Digest::of(b"key"), "svc"));
        let cached = Arc::new(Cached::new(
            HashedKeyStore::new(store.clone()),
            CacheConfig::default(),
        ));
        // The fill starts, reads the still-valid record, and waits.
        let filling = tokio::spawn({
            let cached = cached.clone();
            async move { verify(&*cached, "key").await }
        });
        let (read, release) = store.gate.as_ref().unwrap();
        read.notified().await;
        // The revocation lands: store write, then invalidate.
        store.records.disable("k1");
        cached.invalidate(&Digest::of(b"key"));
        release.notify_one();
        // The in-flight answer may be the old one; nothing after it may be.
        assert!(filling.await.unwrap().is_ok());
        let store_gate_free = tokio::spawn({
            let store = store.clone();
            async move {
                let (read, release) = store.gate.as_ref().unwrap();
                read.notified().await;
                release.notify_one();
            }
        });
        assert_eq!(
            verify(&*cached, "key").await.unwrap_err(),
            VerifyError::Disabled,
            "round {round}: the revoked key came back from the cache"
        );
        store_gate_free.await.unwrap();
    }
}

/// Grants its first question, but only once released; denies every later
/// one at once (the key was disabled meanwhile, and nobody invalidated).
#[derive(Clone, Default)]
struct SlowGrantThenDisabled(Arc<SlowState>);

#[derive(Default)]
struct SlowState {
    calls: AtomicUsize,
    asked: Notify,
    release: Notify,
}

impl Deref for SlowGrantThenDisabled {
    type Target = SlowState;
    fn deref(&self) -> &SlowState {
        &self.0
    }
}

impl Verifier for SlowGrantThenDisabled {
    fn verify(&self, _: &Credential, _: &VerifyContext<'_>) -> Answer<VerifyResult> {
        if self.calls.fetch_add(1, Ordering::SeqCst) > 0 {
            return Answer::Ready(Err(VerifyError::Disabled));
        }
        let state = Arc::clone(&self.0);
        Answer::pending(async move {
            state.asked.notify_one();
            state.release.notified().await;
            Ok(Arc::new(Principal::new("svc")))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_grant_never_replaces_a_newer_denial() {
    let source = SlowGrantThenDisabled::default();
    let cached = Arc::new(Cached::new(source.clone(), CacheConfig::default()));
    // The first question is asked, and its answer is slow.
    let slow = tokio::spawn({
        let cached = cached.clone();
        async move { verify(&*cached, "key").await }
    });
    source.asked.notified().await;
    // A second question, asked later, is denied and cached.
    assert_eq!(
        verify(&*cached, "key").await.unwrap_err(),
        VerifyError::Disabled
    );
    // The old grant arrives last: its caller gets it, the cache does not.
    source.release.notify_one();
    assert!(slow.await.unwrap().is_ok());
    assert_eq!(
        verify(&*cached, "key").await.unwrap_err(),
        VerifyError::Disabled,
        "the older grant replaced the newer denial"
    );
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        2,
        "the denial was not cached"
    );
}

#[tokio::test]
async fn cache_never_grants_what_the_store_denies() {
    let store = Arc::new(MemoryKeyStore::new());
    let key = ApiKey::generate().unwrap();
    store.insert(KeyRecord::new("k1", key.digest(), "svc"));
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    assert!(verify(&cached, key.expose()).await.is_ok());
    assert_eq!(cached.cache().len(), 1);
    // Disabled in the store, cache not told: the hit is re-checked by id.
    store.disable("k1");
    assert_eq!(
        verify(&cached, key.expose()).await.unwrap_err(),
        VerifyError::Disabled
    );
    // And the denial is now what the cache holds.
    store.update("k1", |r| r.disabled = false);
    assert_eq!(
        verify(&cached, key.expose()).await.unwrap_err(),
        VerifyError::Disabled
    );
    cached.invalidate(&key.digest());
    assert!(verify(&cached, key.expose()).await.is_ok());
    // Deleted: still not granted.
    store.remove("k1");
    assert_eq!(
        verify(&cached, key.expose()).await.unwrap_err(),
        VerifyError::Invalid
    );
}

#[tokio::test]
async fn store_errors_are_never_cached() {
    let store = TestStore::default();
    store
        .records
        .insert(KeyRecord::new("k1", Digest::of(b"key"), "svc"));
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    store.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            verify(&cached, "key").await.unwrap_err(),
            VerifyError::Unavailable
        );
    }
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        3,
        "an error was cached"
    );
    assert!(cached.cache().is_empty());
    store.failing.store(false, Ordering::SeqCst);
    assert!(verify(&cached, "key").await.is_ok());
    assert!(verify(&cached, "key").await.is_ok());
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        4,
        "the grant was not cached"
    );
}

#[tokio::test]
async fn invalid_keys_are_cached_briefly_and_separately() {
    let store = TestStore::default();
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    for _ in 0..5 {
        assert_eq!(
            verify(&cached, "unknown").await.unwrap_err(),
            VerifyError::Invalid
        );
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 1);
}

/// A flood of random invalid keys must not push hot valid keys out.
#[tokio::test]
async fn invalid_flood_keeps_hot_keys_hot() {
    let mut keys = KeySet::with_capacity(100);
    let hot: Vec<String> = (0..100).map(|i| format!("hot-key-{i}")).collect();
    for k in &hot {
        keys.insert_digest(Digest::of(k.as_bytes()), Principal::new(k.clone()))
            .unwrap();
    }
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = inner_calls.clone();
        verifier_fn(move |c: &Credential| {
            calls.fetch_add(1, Ordering::Relaxed);
            let name = String::from_utf8_lossy(c.expose()).into_owned();
            if name.starts_with("hot-key-") {
                Ok(Arc::new(Principal::new(name)))
            } else {
                Err(VerifyError::Invalid)
            }
        })
    };
    let cached = Cached::new(
        counted,
        CacheConfig {
            capacity: 1_000,
            negative_capacity: 1_000,
            ..CacheConfig::default()
        },
    );
    for k in &hot {
        assert!(verify(&cached, k).await.is_ok());
    }
    let (mut hot_lookups, mut hot_misses) = (0u64, 0u64);
    let flood = 1_000_000u32;
    for i in 0..flood {
        let junk = format!("junk-{i:08x}-{}", i.wrapping_mul(2_654_435_761));
        let _ = verify(&cached, &junk).await;
        if i % 1_000 == 0 {
            for k in &hot {
                let before = inner_calls.load(Ordering::Relaxed);
                assert!(verify(&cached, k).await.is_ok());
                hot_lookups += 1;
                if inner_calls.load(Ordering::Relaxed) != before {
                    hot_misses += 1;
                }
            }
        }
    }
    let hit_rate = 1.0 - hot_misses as f64 / hot_lookups as f64;
    assert!(
        hit_rate > 0.99,
        "hot hit rate {hit_rate:.4} during the flood"
    );
}

#[tokio::test]
async fn malformed_keys_never_reach_the_store() {
    let store = TestStore::default();
    let good = ApiKey::generate().unwrap();
    store
        .records
        .insert(KeyRecord::new("k1", good.digest(), "svc"));
    let v = FormatChecked::new(HashedKeyStore::new(store.clone()), ApiKeyFormat::default());
    let mut typo = good.expose().to_owned();
    typo.replace_range(12..13, if &typo[12..13] == "x" { "y" } else { "x" });
    for bad in [
        "sk_live_short",
        typo.as_str(),
        &good.expose()[..good.expose().len() - 1],
        "random-guess",
        &good.expose().replace("sk_live", "sk_test"),
    ] {
        assert_eq!(verify(&v, bad).await.unwrap_err(), VerifyError::Invalid);
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 0);
    assert!(verify(&v, good.expose()).await.is_ok());
    let other = ApiKey::generate().unwrap();
    assert_eq!(
        verify(&v, other.expose()).await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fallback_only_when_primary_is_unavailable() {
    let asked = Arc::new(AtomicUsize::new(0));
    let local = {
        let asked = asked.clone();
        verifier_fn(move |_: &Credential| {
            asked.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Principal::new("local")))
        })
    };
    let primary_says = Arc::new(parking_lot::Mutex::new(Err(VerifyError::Invalid)));
    let primary = {
        let says = primary_says.clone();
        verifier_fn(move |_: &Credential| says.lock().clone())
    };
    let v = Fallback::new(primary, local);
    for denial in [
        VerifyError::Invalid,
        VerifyError::Expired,
        VerifyError::Disabled,
    ] {
        *primary_says.lock() = Err(denial);
        assert_eq!(verify(&v, "k").await.unwrap_err(), denial);
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "fallback asked after a denial"
    );
    *primary_says.lock() = Err(VerifyError::Unavailable);
    assert_eq!(verify(&v, "k").await.unwrap().id(), "local");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

/// In-memory verifiers and cache hits answer at once ([`Answer::Ready`]),
/// and what they answer at once is what awaiting gives; a store-backed
/// cache re-checks its hit against the live record, at once for an
/// in-memory store.
#[tokio::test]
async fn ready_answers_agree_with_awaited_ones() {
    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k1", Digest::of(b"good"), "svc"));
    let keys = KeySet::new()
        .with_key("good", Principal::new("svc"))
        .unwrap();
    let ctx = VerifyContext::default();
    let cached_keys = Cached::new(keys.clone(), CacheConfig::default());
    let cached_store = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    let verifiers: Vec<(&str, &dyn Verifier)> = vec![
        ("KeySet", &keys),
        ("Cached<KeySet>", &cached_keys),
        ("Cached<HashedKeyStore>", &cached_store),
        ("HashedKeyStore", cached_store.inner()),
    ];
    for (name, v) in verifiers {
        for key in ["good", "bad", "good", "bad"] {
            let c = Credential::new(key);
            let now = v
                .verify(&c, &ctx)
                .now()
                .unwrap_or_else(|| panic!("{name} {key}: in memory, yet not ready"));
            let later = v.verify(&c, &ctx).await;
            assert_eq!(
                now.map(|p| p.id().to_owned()),
                later.map(|p| p.id().to_owned()),
                "{name} {key}"
            );
        }
    }
    // The store-backed cache re-checks its grant against the live record,
    // at once for an in-memory store: a change is seen on the next hit.
    let now = |v: &dyn Verifier| {
        v.verify(&Credential::new("good"), &ctx)
            .now()
            .expect("an in-memory store answers at once")
    };
    assert!(!now(&cached_store).unwrap().has_scope("new"));
    store.update("k1", |r| r.scopes = vec!["new".into()]);
    assert!(
        now(&cached_store).unwrap().has_scope("new"),
        "a changed record's scopes were not seen"
    );
    store.disable("k1");
    assert_eq!(now(&cached_store).unwrap_err(), VerifyError::Disabled);
    assert_eq!(
        verify(&cached_store, "good").await.unwrap_err(),
        VerifyError::Disabled
    );
    // The in-memory set answers hits at once.
    assert!(now(&cached_keys).is_ok());
}

/// In front of a verifier that waits, a miss is [`Answer::Pending`] and
/// fills the cache when awaited; the hits after it are ready, and give what
/// the awaited miss gave.
#[tokio::test]
async fn a_cache_hit_in_front_of_a_waiting_store_is_ready() {
    let store = TestStore::default();
    store
        .records
        .insert(KeyRecord::new("k1", Digest::of(b"key"), "svc"));
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    let ctx = VerifyContext::default();
    for key in ["key", "unknown"] {
        let c = Credential::new(key);
        let miss = cached.verify(&c, &ctx);
        assert!(
            !miss.is_ready(),
            "{key}: a miss on a waiting store was ready"
        );
        assert!(
            cached.cache().get(c.digest()).is_none(),
            "filled before the answer"
        );
        let awaited = miss.await.map(|p| p.id().to_owned());
        let hit = cached
            .verify(&c, &ctx)
            .now()
            .unwrap_or_else(|| panic!("{key}: a hit was not ready"))
            .map(|p| p.id().to_owned());
        assert_eq!(hit, awaited, "{key}");
    }
    assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
}
