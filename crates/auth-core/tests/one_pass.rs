//! Issue 14: one pass per request. A guard asks its verifier and its rate
//! limiter exactly once per request, a cache in front of a verifier looks
//! its entry up once, and a future dropped before it completes leaves
//! nothing behind.
#![allow(unused_crate_dependencies)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use auth_core::cache::{Cache, CacheEntry, FillTicket, TtlCache};
use auth_core::{
    Answer, CacheConfig, Cached, Credential, Decision, DecisionCounts, Digest, Fallback, Guard,
    KeySet, PlainRequest, Principal, RateDecision, RateLimitPolicy, RateLimiter, RateStatus,
    Verifier, VerifyContext, VerifyError, VerifyResult,
};

const KEY: &str = "one-pass-key-0123456789";

fn with_key(key: &str) -> PlainRequest {
    PlainRequest::get("/items").header("x-api-key", key)
}

/// Sets its flag when dropped: proves that a future holding it was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `answer` once, without a runtime: it must still be waiting.
fn poll_once<T: 'static>(answer: &mut Answer<T>) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        Pin::new(answer).poll(&mut cx).is_pending(),
        "the answer completed; the test needs it to wait"
    );
}

/// A verifier that counts its `verify` calls and always answers with a
/// future (it asks a backend). While `hold` is set, that future never
/// completes; `started` and `dropped` tell what became of it.
#[derive(Clone, Default)]
struct Backend(Arc<BackendState>);

#[derive(Default)]
struct BackendState {
    calls: AtomicUsize,
    hold: AtomicBool,
    started: AtomicBool,
    dropped: Arc<AtomicBool>,
    rate_limit: Option<RateLimitPolicy>,
}

impl Backend {
    fn limited(policy: RateLimitPolicy) -> Self {
        Self(Arc::new(BackendState {
            rate_limit: Some(policy),
            ..BackendState::default()
        }))
    }

    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
}

impl Verifier for Backend {
    fn verify(&self, credential: &Credential, _: &VerifyContext<'_>) -> Answer<VerifyResult> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&self.0);
        let credential = credential.clone();
        Answer::pending(async move {
            let _flag = DropFlag(Arc::clone(&state.dropped));
            state.started.store(true, Ordering::SeqCst);
            if state.hold.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
            if credential.expose() != KEY.as_bytes() {
                return Err(VerifyError::Invalid);
            }
            let mut p = Principal::new("svc");
            if let Some(policy) = state.rate_limit {
                p = p.with_rate_limit(policy);
            }
            Ok(Arc::new(p))
        })
    }
}

/// A rate limiter that counts its `check` calls and always answers with a
/// future (its state lives elsewhere); never completes while `hold` is set.
#[derive(Clone, Default)]
struct RemoteLimiter(Arc<LimiterState>);

#[derive(Default)]
struct LimiterState {
    calls: AtomicUsize,
    hold: AtomicBool,
    dropped: Arc<AtomicBool>,
}

impl RemoteLimiter {
    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
}

impl RateLimiter for RemoteLimiter {
    fn check(&self, _: &str, policy: &RateLimitPolicy) -> Answer<RateDecision> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&self.0);
        let policy = *policy;
        Answer::pending(async move {
            let _flag = DropFlag(Arc::clone(&state.dropped));
            if state.hold.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            tokio::task::yield_now().await;
            RateDecision::Allowed(RateStatus {
                policy,
                remaining: policy.requests - 1,
                reset: policy.window,
            })
        })
    }
}

/// A [`TtlCache`] that counts its lookups and fills.
#[derive(Clone)]
struct CountingCache {
    inner: Arc<TtlCache<Arc<Principal>>>,
    gets: Arc<AtomicUsize>,
    fills: Arc<AtomicUsize>,
}

impl CountingCache {
    fn new() -> Self {
        Self {
            inner: Arc::new(TtlCache::new(CacheConfig::default())),
            gets: Arc::default(),
            fills: Arc::default(),
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn fills(&self) -> usize {
        self.fills.load(Ordering::SeqCst)
    }
}

impl Cache<Arc<Principal>> for CountingCache {
    fn get(&self, digest: &Digest) -> Option<CacheEntry<Arc<Principal>>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(digest)
    }
    fn ticket(&self, digest: &Digest) -> FillTicket {
        self.inner.ticket(digest)
    }
    fn fill(&self, ticket: FillTicket, entry: CacheEntry<Arc<Principal>>) -> bool {
        self.fills.fetch_add(1, Ordering::SeqCst);
        self.inner.fill(ticket, entry)
    }
    fn invalidate(&self, digest: &Digest) {
        self.inner.invalidate(digest)
    }
    fn clear(&self) {
        self.inner.clear()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

fn policy() -> RateLimitPolicy {
    RateLimitPolicy::new(100, Duration::from_secs(60))
}

/// One `guard.check(..).await` asks a waiting verifier once and a waiting
/// rate limiter once, and counts one decision.
#[tokio::test]
async fn one_check_asks_the_verifier_and_the_limiter_once() {
    let backend = Backend::limited(policy());
    let limiter = RemoteLimiter::default();
    let g = Guard::builder(backend.clone())
        .rate_limiter(Arc::new(limiter.clone()))
        .build()
        .unwrap();

    let answer = g.check(&with_key(KEY));
    assert!(!answer.is_ready(), "a verifier that waits gave Ready");
    assert_eq!(
        (backend.calls(), limiter.calls()),
        (1, 0),
        "the limiter was asked before the verifier answered"
    );
    let Decision::Allow(grant) = answer.await else {
        panic!("refused")
    };
    assert_eq!(grant.rate().unwrap().remaining, 99);
    assert_eq!((backend.calls(), limiter.calls()), (1, 1));
    assert_eq!(g.counts().allowed, 1);

    for n in 2..=10 {
        assert!(matches!(g.check(&with_key(KEY)).await, Decision::Allow(_)));
        assert_eq!((backend.calls(), limiter.calls()), (n, n), "request {n}");
    }
    assert_eq!(g.counts().allowed, 10);

    // A refused key never reaches the limiter; one verify call all the same.
    let d = g.check(&with_key("wrong")).await;
    assert_eq!(d.rejection().unwrap().status(), 401);
    assert_eq!((backend.calls(), limiter.calls()), (11, 10));
    // No credential: neither is asked.
    let d = g.check(&PlainRequest::get("/items"));
    assert!(d.is_ready());
    assert_eq!((backend.calls(), limiter.calls()), (11, 10));
    let c = g.counts();
    assert_eq!((c.allowed, c.invalid, c.missing), (10, 1, 1));
}

/// `Cached` in front of a waiting verifier: a miss looks the cache up once
/// and asks the verifier once, filling once when awaited; a hit looks up
/// once, answers at once and asks nothing.
#[tokio::test]
async fn a_cached_miss_looks_up_once_and_asks_once() {
    let backend = Backend::default();
    let cache = CountingCache::new();
    let cached = Cached::with_cache(backend.clone(), cache.clone());
    let g = Guard::builder(cached).build().unwrap();

    let miss = g.check(&with_key(KEY));
    assert!(!miss.is_ready(), "a miss in front of a waiting verifier");
    assert_eq!((cache.gets(), backend.calls(), cache.fills()), (1, 1, 0));
    assert!(matches!(miss.await, Decision::Allow(_)));
    assert_eq!((cache.gets(), backend.calls(), cache.fills()), (1, 1, 1));

    let hit = g.check(&with_key(KEY));
    assert!(hit.is_ready(), "a cache hit did not decide at once");
    assert!(matches!(hit.now(), Some(Decision::Allow(_))));
    assert_eq!((cache.gets(), backend.calls(), cache.fills()), (2, 1, 1));

    // A denial: the same, once.
    let miss = g.check(&with_key("wrong"));
    assert!(!miss.is_ready());
    assert_eq!(miss.await.rejection().unwrap().status(), 401);
    assert_eq!((cache.gets(), backend.calls(), cache.fills()), (3, 2, 2));
    assert!(g.check(&with_key("wrong")).is_ready());
    assert_eq!((cache.gets(), backend.calls(), cache.fills()), (4, 2, 2));

    let c = g.counts();
    assert_eq!((c.allowed, c.invalid), (2, 2));
}

/// A guard future dropped while its verifier waits: nothing counted, the
/// verifier's future dropped with it, and the next request decided as if
/// the first had never come.
#[tokio::test]
async fn a_dropped_check_waiting_on_the_verifier_leaves_nothing_behind() {
    let backend = Backend::limited(policy());
    let limiter = RemoteLimiter::default();
    let g = Guard::builder(backend.clone())
        .rate_limiter(Arc::new(limiter.clone()))
        .build()
        .unwrap();
    backend.0.hold.store(true, Ordering::SeqCst);
    let mut answer = g.check(&with_key(KEY));
    poll_once(&mut answer);
    assert!(backend.0.started.load(Ordering::SeqCst));
    drop(answer);
    assert!(
        backend.0.dropped.load(Ordering::SeqCst),
        "the verifier's future outlived the guard's"
    );
    assert_eq!(
        g.counts(),
        DecisionCounts::default(),
        "a dropped check counted"
    );
    assert_eq!(limiter.calls(), 0);

    backend.0.hold.store(false, Ordering::SeqCst);
    assert!(matches!(g.check(&with_key(KEY)).await, Decision::Allow(_)));
    let c = g.counts();
    assert_eq!(
        (
            c.allowed,
            c.passed,
            c.missing,
            c.invalid,
            c.unavailable,
            c.limited
        ),
        (1, 0, 0, 0, 0, 0)
    );
    assert_eq!((backend.calls(), limiter.calls()), (2, 1));
}

/// A guard future dropped while the rate limiter waits: nothing counted.
#[tokio::test]
async fn a_dropped_check_waiting_on_the_limiter_leaves_nothing_behind() {
    let keys = KeySet::new()
        .with_key(KEY, Principal::new("svc").with_rate_limit(policy()))
        .unwrap();
    let limiter = RemoteLimiter::default();
    let g = Guard::builder(keys)
        .rate_limiter(Arc::new(limiter.clone()))
        .build()
        .unwrap();
    limiter.0.hold.store(true, Ordering::SeqCst);
    let mut answer = g.check(&with_key(KEY));
    poll_once(&mut answer);
    drop(answer);
    assert!(limiter.0.dropped.load(Ordering::SeqCst));
    assert_eq!(
        g.counts(),
        DecisionCounts::default(),
        "a dropped check counted"
    );
    assert_eq!(limiter.calls(), 1);

    limiter.0.hold.store(false, Ordering::SeqCst);
    assert!(matches!(g.check(&with_key(KEY)).await, Decision::Allow(_)));
    assert_eq!(g.counts().allowed, 1);
    assert_eq!(limiter.calls(), 2);
}

/// `Cached` whose inner verifier's future is dropped: no entry is filled
/// (neither a grant nor a denial), and a later request asks again and fills.
#[tokio::test]
async fn a_dropped_cache_miss_fills_nothing() {
    let backend = Backend::default();
    let cache = CountingCache::new();
    let cached = Arc::new(Cached::with_cache(backend.clone(), cache.clone()));
    let g = Guard::builder(Arc::clone(&cached)).build().unwrap();
    backend.0.hold.store(true, Ordering::SeqCst);

    // Through the verifier itself, and through a guard.
    let mut answer = cached.verify(&Credential::new(KEY), &VerifyContext::default());
    poll_once(&mut answer);
    drop(answer);
    let mut answer = g.check(&with_key(KEY));
    poll_once(&mut answer);
    drop(answer);
    assert!(backend.0.dropped.load(Ordering::SeqCst));
    assert_eq!(backend.calls(), 2);
    assert_eq!(cache.fills(), 0, "a dropped miss filled the cache");
    assert!(cached.cache().is_empty());
    assert!(cache.inner.get(&Digest::of(KEY.as_bytes())).is_none());
    assert_eq!(g.counts(), DecisionCounts::default());

    // Later requests still work: the next one asks, fills; the one after hits.
    backend.0.hold.store(false, Ordering::SeqCst);
    let answer = g.check(&with_key(KEY));
    assert!(!answer.is_ready(), "a dropped miss left an entry behind");
    assert!(matches!(answer.await, Decision::Allow(_)));
    assert_eq!(
        (backend.calls(), cache.fills(), cached.cache().len()),
        (3, 1, 1)
    );
    assert!(g.check(&with_key(KEY)).is_ready());
    assert_eq!(backend.calls(), 3);
    assert_eq!(g.counts().allowed, 2);
}

/// `Fallback` over a waiting primary, dropped before the primary answers:
/// the fallback was neither asked nor counted.
#[tokio::test]
async fn a_dropped_fallback_counts_no_outage() {
    let backend = Backend::default();
    let local = KeySet::new()
        .with_key(KEY, Principal::new("local"))
        .unwrap();
    let fallback = Arc::new(Fallback::new(backend.clone(), local));
    let g = Guard::builder(Arc::clone(&fallback)).build().unwrap();
    backend.0.hold.store(true, Ordering::SeqCst);
    let mut answer = g.check(&with_key(KEY));
    poll_once(&mut answer);
    drop(answer);
    assert_eq!(fallback.fallbacks(), 0);
    assert!(!fallback.primary_down());
    assert_eq!(g.counts(), DecisionCounts::default());
    backend.0.hold.store(false, Ordering::SeqCst);
    assert_eq!(
        g.check(&with_key(KEY)).await.principal().unwrap().id(),
        "svc"
    );
}

/// Awaiting an answer completes it exactly once, whether ready or not, on a
/// runtime with several workers too (the futures are `Send + 'static`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_checks_run_on_other_tasks() {
    let backend = Backend::limited(policy());
    let limiter = RemoteLimiter::default();
    let g = Guard::builder(backend.clone())
        .rate_limiter(Arc::new(limiter.clone()))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let answer = g.check(&with_key(if i % 4 == 0 { "wrong" } else { KEY }));
            tokio::spawn(answer)
        })
        .collect();
    for task in tasks {
        let _ = task.await.unwrap();
    }
    let c = g.counts();
    assert_eq!((c.allowed, c.invalid), (24, 8));
    assert_eq!((backend.calls(), limiter.calls()), (32, 24));
}
