//! `RemoteVerifier` against the test double of the central key service
//! (`common::double`), served by axum on 127.0.0.1 (a free port), over
//! real HTTP.
#![allow(unused_crate_dependencies)]

mod common;
use common::Captured;
use common::double::{
    CREDITED, DISABLED, EXPIRED, EXPIRING, GOOD, LAPSED, LIMITED, Mode, SERVICE_HEADER,
    SERVICE_TOKEN, StreamMode, started,
};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_core::clock::ManualClock;
use auth_core::{
    Credential, Decision, Fallback, Guard, KeySet, PlainRequest, Principal, Verifier,
    VerifyContext, VerifyError,
};
use auth_remote::RemoteVerifier;

/// A valid answer padded past the 64 KiB an answer may have.
static HUGE_ANSWER: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
    let padded = format!(
        r#"{{"valid":true,"code":"valid","userId":"user-1","error":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    Box::leak(padded.into_boxed_str())
});

/// A verifier that never opens its circuit (for tests of single answers).
fn patient(addr: SocketAddr) -> RemoteVerifier {
    remote(addr)
        .breaker(1_000, Duration::from_secs(1))
        .build()
        .unwrap()
}

fn remote(addr: SocketAddr) -> auth_remote::RemoteVerifierBuilder {
    RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(SERVICE_HEADER, SERVICE_TOKEN)
        .timeout(Duration::from_millis(300))
}

async fn verify(v: &impl Verifier, key: &str) -> Result<Arc<Principal>, VerifyError> {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
}

async fn verify_scoped(
    v: &impl Verifier,
    key: &str,
    scope: &str,
) -> Result<Arc<Principal>, VerifyError> {
    let ctx = VerifyContext {
        path: "/x",
        required_scope: Some(scope),
    };
    v.verify(&Credential::new(key), &ctx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_and_invalid_answers_are_cached_by_kind() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();

    let p = verify(&v, GOOD).await.unwrap();
    assert_eq!(p.id(), "user-1");
    assert!(p.has_scope("stt") && p.has_scope("tts"));
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert_eq!(double.calls(), 1, "a valid answer is cached");

    assert_eq!(
        verify(&v, "sk_live_unknown").await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(
        verify(&v, "sk_live_unknown").await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(double.calls(), 2, "an invalid answer is cached too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_expire_on_the_injected_clock() {
    let (double, addr) = started().await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .cache_ttl(Duration::from_secs(300))
        .negative_ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    verify(&v, GOOD).await.unwrap();
    verify(&v, "sk_live_unknown").await.unwrap_err();
    clock.advance(Duration::from_secs(11));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 2, "the valid answer is still fresh");
    verify(&v, "sk_live_unknown").await.unwrap_err();
    assert_eq!(double.calls(), 3, "the invalid answer expired after 10 s");
    clock.advance(Duration::from_secs(300));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(
        double.calls(),
        4,
        "the valid answer expired after 5 minutes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_is_403_and_not_cached_as_an_invalid_key() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    // Asked for a scope the key lacks: not an invalid key.
    let p = verify_scoped(&v, LIMITED, "tts").await.unwrap();
    assert!(!p.has_scope("tts"));
    // The same key for a scope it has: asked again (nothing was cached).
    assert!(
        verify_scoped(&v, LIMITED, "stt")
            .await
            .unwrap()
            .has_scope("stt")
    );
    assert_eq!(double.calls(), 2);

    // Through a guard that requires the scope: 403 for the key lacking
    // it, 200 for the one holding it; a cached answer decides locally.
    let guard = Guard::builder(v.clone())
        .require_scope("tts")
        .build()
        .unwrap();
    let req = |key: &str| PlainRequest::get("/api").header("x-api-key", key);
    match guard.check(&req(LIMITED)).await {
        Decision::Reject(r) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(matches!(guard.check(&req(GOOD)).await, Decision::Allow(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_rate_limit_is_enforced_locally() {
    let (_double, addr) = started().await;
    let guard = Guard::builder(remote(addr).build().unwrap())
        .build()
        .unwrap();
    let req = PlainRequest::get("/api").header("x-api-key", LIMITED);
    assert!(matches!(guard.check(&req).await, Decision::Allow(_)));
    assert!(matches!(guard.check(&req).await, Decision::Allow(_)));
    match guard.check(&req).await {
        Decision::Reject(r) => {
            assert_eq!(r.status(), 429);
            assert!(r.headers().iter().any(|(n, _)| *n == "retry-after"));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    // Another key has its own budget.
    let other = PlainRequest::get("/api").header("x-api-key", GOOD);
    assert!(matches!(guard.check(&other).await, Decision::Allow(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_failure_is_unavailable_and_never_cached() {
    let (double, addr) = started().await;
    let v = patient(addr);
    for mode in [
        Mode::Slow,
        Mode::Status(500),
        Mode::Status(503),
        Mode::Status(429),
        Mode::Status(401),
        Mode::Status(403),
        Mode::Status(404),
        Mode::Garbage,
    ] {
        double.set(mode);
        let before = double.calls();
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::Unavailable,
            "{mode:?}"
        );
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::Unavailable,
            "{mode:?}"
        );
        assert_eq!(
            double.calls(),
            before + 2,
            "{mode:?}: the failure was cached"
        );
    }
    double.set(Mode::Normal);
    assert!(verify(&v, GOOD).await.is_ok(), "recovers by itself");

    // Our own credential refused: unavailable, not invalid.
    let wrong = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(SERVICE_HEADER, "wrong")
        .build()
        .unwrap();
    assert_eq!(
        verify(&wrong, GOOD).await.unwrap_err(),
        VerifyError::Unavailable
    );

    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let down = remote(closed).build().unwrap();
    assert_eq!(
        verify(&down, GOOD).await.unwrap_err(),
        VerifyError::Unavailable
    );
    // And through a guard: 503 with Retry-After, never allow.
    let guard = Guard::builder(down).build().unwrap();
    match guard
        .check(&PlainRequest::get("/api").header("x-api-key", GOOD))
        .await
    {
        Decision::Reject(r) => {
            assert_eq!(r.status(), 503);
            assert!(r.headers().iter().any(|(n, _)| *n == "retry-after"));
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_skips_calls_and_closes_after_a_probe() {
    let (double, addr) = started().await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .breaker(3, Duration::from_secs(10))
        .build()
        .unwrap();
    double.set(Mode::Status(500));
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap_err();
    }
    assert!(v.circuit_open());
    assert_eq!(double.calls(), 3);
    // Open: answered at once, without a call.
    for _ in 0..5 {
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::Unavailable
        );
    }
    assert_eq!(
        double.calls(),
        3,
        "calls were made while the circuit was open"
    );
    // After the cool-down one probe; it fails: open again.
    clock.advance(Duration::from_secs(11));
    verify(&v, GOOD).await.unwrap_err();
    assert_eq!(double.calls(), 4);
    verify(&v, GOOD).await.unwrap_err();
    assert_eq!(double.calls(), 4, "more than one probe");
    // The service is back; the next probe closes the circuit.
    double.set(Mode::Normal);
    clock.advance(Duration::from_secs(11));
    verify(&v, GOOD).await.unwrap();
    assert!(!v.circuit_open());
    verify(&v, "sk_live_unknown").await.unwrap_err();
    assert_eq!(double.calls(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_service_never_lets_a_bad_key_in() {
    let (double, addr) = started().await;
    let v = patient(addr);
    for round in 0..20 {
        double.set(if round % 2 == 0 {
            Mode::Normal
        } else {
            Mode::Status(502)
        });
        v.clear();
        match verify(&v, "sk_live_unknown").await {
            Err(VerifyError::Invalid | VerifyError::Unavailable) => {}
            other => panic!("round {round}: {other:?}"),
        }
        match verify(&v, GOOD).await {
            Ok(p) => assert_eq!(p.id(), "user-1"),
            Err(VerifyError::Unavailable) => assert_eq!(round % 2, 1),
            Err(e) => panic!("round {round}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_is_asked_only_when_the_service_is_unavailable() {
    let (double, addr) = started().await;
    let local = KeySet::new()
        .with_key("local-only-key-0123456789", Principal::new("local"))
        .unwrap()
        .with_key("another-local-key-0123456789", Principal::new("local"))
        .unwrap()
        .with_key(GOOD, Principal::new("local-copy"))
        .unwrap();
    let v = Fallback::new(remote(addr).build().unwrap(), local);
    // The service answers: its word stands, even "invalid".
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert_eq!(
        verify(&v, "local-only-key-0123456789").await.unwrap_err(),
        VerifyError::Invalid
    );
    // The service is down: the local keys answer (for a key the service
    // has not just called invalid: that answer is cached for 10 s).
    double.set(Mode::Status(503));
    assert_eq!(
        verify(&v, "another-local-key-0123456789")
            .await
            .unwrap()
            .id(),
        "local"
    );
    assert_eq!(
        verify(&v, "local-only-key-0123456789").await.unwrap_err(),
        VerifyError::Invalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_first_requests_make_one_call() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(1_000));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let v = v.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                verify(&v, GOOD).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().id(), "user-1");
    }
    assert_eq!(double.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stale_only_when_enabled_and_within_the_grace() {
    let (double, addr) = started().await;
    for grace in [None, Some(Duration::from_secs(60))] {
        let clock = Arc::new(ManualClock::new());
        let mut builder = remote(addr)
            .clock(clock.clone())
            .cache_ttl(Duration::from_secs(300));
        if let Some(grace) = grace {
            builder = builder.serve_stale(grace);
        }
        let v = builder.build().unwrap();
        double.set(Mode::Normal);
        verify(&v, GOOD).await.unwrap();
        double.set(Mode::Status(503));
        clock.advance(Duration::from_secs(330));
        let answer = verify(&v, GOOD).await;
        match grace {
            None => assert_eq!(answer.unwrap_err(), VerifyError::Unavailable),
            Some(_) => assert_eq!(answer.unwrap().id(), "user-1"),
        }
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::Unavailable,
            "past the grace"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_axum() {
    use auth_axum::{Auth, Authenticated};
    use tower::ServiceExt;

    let (double, addr) = started().await;
    let guard = Guard::builder(remote(addr).build().unwrap())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/api/items",
            axum::routing::get(|who: Authenticated| async move { who.id().to_owned() }),
        )
        .route_layer(Auth::new(guard));
    let call = |key: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(
                    axum::http::Request::get("/api/items")
                        .header("authorization", format!("Bearer {key}"))
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    assert_eq!(call(GOOD).await, 200);
    assert_eq!(call("sk_live_unknown").await, 401);
    double.set(Mode::Status(500));
    assert_eq!(call("sk_live_other_unknown").await, 503);
    assert_eq!(call(GOOD).await, 200, "the cached answer still stands");
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_in_logs_or_debug() {
    let mut watch =
        auth_core::testing::SecretWatch::new(&[GOOD, "sk_live_unknown_guess", SERVICE_TOKEN]);
    let (double, addr) = started().await;
    let builder = remote(addr);
    watch.observe(format!("{builder:?}"));
    let v = builder.build().unwrap();
    let guard = Guard::builder(v.clone()).build().unwrap();
    for key in [GOOD, GOOD, "sk_live_unknown_guess"] {
        let decision = guard
            .check(&PlainRequest::get("/api").header("x-api-key", key))
            .await;
        watch.observe(format!("{decision:?}"));
    }
    double.set(Mode::Status(500));
    v.clear();
    let decision = guard
        .check(&PlainRequest::get("/api").header("x-api-key", GOOD))
        .await;
    watch.observe(format!("{decision:?}{v:?}"));
    watch.finish();
}

#[test]
fn from_env_reads_and_refuses_clearly() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert!(RemoteVerifier::from_lookup(env(&[])).unwrap().is_none());
    assert!(
        RemoteVerifier::from_lookup(env(&[("AUTH_REMOTE_ENABLED", "false")]))
            .unwrap()
            .is_none()
    );
    let err = RemoteVerifier::from_lookup(env(&[("AUTH_REMOTE_ENABLED", "true")])).unwrap_err();
    assert!(err.to_string().contains("AUTH_REMOTE_URL"), "{err}");
    let err =
        RemoteVerifier::from_lookup(env(&[("AUTH_REMOTE_ENABLED", "yes please")])).unwrap_err();
    assert!(err.to_string().contains("AUTH_REMOTE_ENABLED"), "{err}");
    for (name, bad) in [
        ("AUTH_REMOTE_CACHE_TTL", "-5"),
        ("AUTH_REMOTE_TIMEOUT", "5s"),
    ] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
            ("AUTH_REMOTE_ENABLED", "true"),
            ("AUTH_REMOTE_URL", "http://127.0.0.1:1"),
            (name, bad),
        ]));
        let err = RemoteVerifier::from_lookup(env(pairs)).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    let ok = RemoteVerifier::from_lookup(env(&[
        ("AUTH_REMOTE_ENABLED", "true"),
        ("AUTH_REMOTE_URL", "http://127.0.0.1:1"),
        ("AUTH_REMOTE_CACHE_TTL", "60"),
        ("AUTH_REMOTE_TIMEOUT", "0.5"),
    ]))
    .unwrap()
    .unwrap();
    assert!(ok.build().is_ok());
    assert!(RemoteVerifier::builder("ftp://x").build().is_err());
}

/// Polls a future once.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

/// Well-formed keys nobody issued, different on every run.
fn random_keys() -> impl FnMut() -> String {
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        format!("sk_live_{:016x}{:016x}", z ^ (z >> 31), state)
    }
}

// --- A: the typed protocol ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_a_readable_consistent_code_are_unavailable() {
    let (double, addr) = started().await;
    let v = patient(addr);
    for raw in [
        // Free text decides nothing, however it is worded.
        r#"{"valid":false,"error":"key not valid for this scope"}"#,
        r#"{"valid":true,"userId":"user-1","scopes":["stt"]}"#,
        // `valid` contradicting `code`.
        r#"{"valid":true,"code":"disabled"}"#,
        r#"{"valid":false,"code":"valid","userId":"user-1"}"#,
        r#"{"valid":true,"code":"maybe","userId":"user-1"}"#,
        // Over 64 KiB: not read to the end.
        *HUGE_ANSWER,
    ] {
        double.set(Mode::Raw(raw));
        let before = double.calls();
        for answer in [
            verify(&v, GOOD).await,
            verify_scoped(&v, GOOD, "stt").await,
            verify(&v, GOOD).await,
        ] {
            assert_eq!(answer.unwrap_err(), VerifyError::Unavailable, "{raw}");
        }
        assert_eq!(double.calls(), before + 3, "{raw}: cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_disabled_codes_are_cached_denials_of_their_kind() {
    let (double, addr) = started().await;
    let v = patient(addr);
    for _ in 0..2 {
        assert_eq!(verify(&v, EXPIRED).await.unwrap_err(), VerifyError::Expired);
        assert_eq!(
            verify(&v, DISABLED).await.unwrap_err(),
            VerifyError::Disabled
        );
    }
    assert_eq!(double.calls(), 2, "the denials are cached");
    // Valid, says the service, but its `expiresAt` is past: expired.
    assert_eq!(verify(&v, LAPSED).await.unwrap_err(), VerifyError::Expired);
    assert_eq!(verify(&v, LAPSED).await.unwrap_err(), VerifyError::Expired);
    assert_eq!(double.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_answer_is_never_used_past_the_keys_expiry() {
    let (double, addr) = started().await;
    for stale in [None, Some(Duration::from_secs(600))] {
        let clock = Arc::new(ManualClock::new());
        let mut builder = remote(addr)
            .clock(clock.clone())
            .cache_ttl(Duration::from_secs(300))
            .breaker(1_000, Duration::from_secs(1));
        if let Some(grace) = stale {
            builder = builder.serve_stale(grace);
        }
        let v = builder.build().unwrap();
        double.set(Mode::Normal);
        let before = double.calls();
        assert_eq!(verify(&v, EXPIRING).await.unwrap().id(), "user-5");
        assert_eq!(verify(&v, EXPIRING).await.unwrap().id(), "user-5");
        assert_eq!(double.calls(), before + 1, "cached while the key lives");
        // `expiresAt` was at most 2 s ahead; the TTL (5 min) is not what
        // counts.
        clock.advance(Duration::from_secs(3));
        assert_eq!(verify(&v, EXPIRING).await.unwrap().id(), "user-5");
        assert_eq!(
            double.calls(),
            before + 2,
            "served from cache after expiresAt"
        );
        // Not even serve-stale uses it past the key's expiry.
        double.set(Mode::Status(503));
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            verify(&v, EXPIRING).await.unwrap_err(),
            VerifyError::Unavailable,
            "stale {stale:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_code_is_429_uncached_and_not_a_failure() {
    let (double, addr) = started().await;
    let v = remote(addr)
        .breaker(5, Duration::from_secs(30))
        .build()
        .unwrap();
    double.set(Mode::Raw(r#"{"valid":false,"code":"rate_limited"}"#));
    for _ in 0..6 {
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::RateLimited
        );
    }
    assert_eq!(double.calls(), 6, "not cached");
    assert!(!v.circuit_open());
    // Through a guard: 429 with a Retry-After, never a grant.
    let guard = Guard::builder(v.clone()).build().unwrap();
    match guard
        .check(&PlainRequest::get("/x").header("x-api-key", GOOD))
        .await
    {
        Decision::Reject(r) => {
            assert_eq!(r.status(), 429);
            assert!(
                r.headers()
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
            );
        }
        other => panic!("expected 429, got {other:?}"),
    }
    double.set(Mode::Normal);
    assert!(verify(&v, GOOD).await.is_ok());
}

/// Issue 16: out of credits is 429 `usage_exceeded` with the wait until the
/// refill, for that request only — never cached, never a failure, never
/// handed to the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_exceeded_code_is_429_until_the_refill_uncached_and_not_a_failure() {
    let (double, addr) = started().await;
    let v = remote(addr)
        .breaker(5, Duration::from_secs(30))
        .build()
        .unwrap();
    double.set(Mode::Raw(
        r#"{"valid":false,"code":"usage_exceeded","userId":"user-1","retryAfter":3600}"#,
    ));
    for _ in 0..6 {
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::UsageExceeded {
                retry_after: Some(Duration::from_secs(3600))
            }
        );
    }
    assert_eq!(double.calls(), 6, "not cached");
    assert!(!v.circuit_open());
    // Through a fallback and a guard: 429 usage_exceeded with Retry-After,
    // and the local key set is not asked.
    let local = KeySet::new()
        .with_key(GOOD, Principal::new("local"))
        .unwrap();
    let guard = Guard::builder(Fallback::new(v.clone(), local))
        .build()
        .unwrap();
    match guard
        .check(&PlainRequest::get("/x").header("x-api-key", GOOD))
        .await
    {
        Decision::Reject(r) => {
            assert_eq!((r.status(), r.kind().code()), (429, "usage_exceeded"));
            let retry = r
                .headers()
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
                .map(|(_, value)| value.to_string());
            assert_eq!(retry.as_deref(), Some("3600"));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    // Without a refill: no Retry-After to give.
    double.set(Mode::Raw(r#"{"valid":false,"code":"usage_exceeded"}"#));
    assert_eq!(
        verify(&v, GOOD).await.unwrap_err(),
        VerifyError::UsageExceeded { retry_after: None }
    );
    double.set(Mode::Normal);
    assert!(verify(&v, GOOD).await.is_ok());
}

/// Issue 16: a valid answer that spent credits is the grant of the request
/// that asked, only: never cached, never shared by callers waiting on the
/// same call — each request on a key with credits is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_spent_credits_is_never_cached_nor_shared() {
    let (double, addr) = started().await;
    let v = patient(addr);
    let charged = r#"{"valid":true,"code":"valid","userId":"user-1","creditsRemaining":5}"#;
    double.set(Mode::Raw(charged));
    for n in 1..=5 {
        verify(&v, GOOD).await.unwrap();
        assert_eq!(double.calls(), n, "each request asks (and is charged)");
    }
    // Forty callers at once, while one call is under way: forty calls.
    double.set(Mode::SluggishRaw(charged));
    let before = double.calls();
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { verify(&v, GOOD).await.is_ok() })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap());
    }
    assert_eq!(double.calls() - before, 40, "a grant was shared");
    // A key without credits is coalesced and cached as before.
    double.set(Mode::Sluggish);
    let before = double.calls();
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { verify(&v, DISABLED).await.is_err() })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap());
    }
    assert_eq!(double.calls() - before, 1);
}

// --- B: a dropped probe ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_probe_does_not_leave_the_circuit_half_open() {
    let (double, addr) = started().await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .breaker(3, Duration::from_secs(30))
        .build()
        .unwrap();
    double.set(Mode::Status(500));
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap_err();
    }
    assert!(v.circuit_open());
    // The probe's caller hangs up mid-call: the probe goes on without it
    // and ends with the service's answer (here its timeout), so the circuit
    // is not left half-open — it opens again and probes after the next wait.
    clock.advance(Duration::from_secs(1));
    double.set(Mode::Slow);
    let before = double.calls();
    let hung_up = tokio::time::timeout(Duration::from_millis(50), verify(&v, GOOD)).await;
    assert!(hung_up.is_err(), "the probe should still be under way");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(double.calls(), before + 1, "the probe was made once");
    assert!(v.circuit_open());
    assert_eq!(
        verify(&v, GOOD).await.unwrap_err(),
        VerifyError::Unavailable,
        "a probe before the next wait"
    );
    double.set(Mode::Normal);
    clock.advance(Duration::from_secs(2));
    let before = double.calls();
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert_eq!(double.calls(), before + 1);
    assert!(!v.circuit_open());
}

/// Callers that hang up mid-call are not the service failing: however many
/// do, a healthy service's circuit stays closed, and their calls still fill
/// the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_hanging_up_never_open_the_circuit() {
    let (double, addr) = started().await;
    let v = remote(addr)
        .breaker(3, Duration::from_secs(30))
        .build()
        .unwrap();
    double.set(Mode::Sluggish);
    let mut next_key = random_keys();
    for _ in 0..10 {
        let key = next_key();
        let hung_up = tokio::time::timeout(Duration::from_millis(20), verify(&v, &key)).await;
        assert!(hung_up.is_err());
    }
    let hung_up = tokio::time::timeout(Duration::from_millis(20), verify(&v, GOOD)).await;
    assert!(hung_up.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!v.circuit_open(), "clients hanging up opened the circuit");
    assert_eq!(double.calls(), 11, "every call went on to its answer");
    // The abandoned call's answer was kept: no second call for it.
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert_eq!(double.calls(), 11);
}

// --- C: the in-flight map ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_first_caller_hands_the_call_on_and_the_last_one_out_cleans_up() {
    let (double, addr) = started().await;
    let v = patient(addr);
    double.set(Mode::Slow);
    let mut first = Box::pin(verify(&v, GOOD));
    assert!(poll_once(&mut first).await.is_pending());
    let mut second = Box::pin(verify(&v, GOOD));
    assert!(poll_once(&mut second).await.is_pending());
    assert_eq!(v.inflight_len(), 1);
    drop(first);
    assert_eq!(v.inflight_len(), 1, "the second caller still waits");
    double.set(Mode::Normal);
    assert_eq!(
        second.await.unwrap().id(),
        "user-1",
        "the call was handed on"
    );
    assert_eq!(v.inflight_len(), 0);

    // Both callers of an unanswered call leave, in either order.
    double.set(Mode::Slow);
    for first_leaves_first in [true, false] {
        v.clear();
        let mut a = Box::pin(verify(&v, LIMITED));
        let mut b = Box::pin(verify(&v, LIMITED));
        assert!(poll_once(&mut a).await.is_pending());
        assert!(poll_once(&mut b).await.is_pending());
        if first_leaves_first {
            drop(a);
            drop(b);
        } else {
            drop(b);
            drop(a);
        }
        assert_eq!(v.inflight_len(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_cancelled_callers_leave_no_inflight_entry() {
    let (double, addr) = started().await;
    let v = patient(addr);
    double.set(Mode::Slow);
    let mut next_key = random_keys();
    let mut pending = 0;
    let start = Instant::now();
    for i in 0..100_000 {
        let key = next_key();
        // Most polls are made with tokio's cooperative budget spent, so
        // those callers are dropped waiting for the slot; after a yield the
        // budget is whole and the poll reaches the upstream budget: a call
        // under way (pending) or shed (ready).
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        let mut call = Box::pin(verify(&v, &key));
        match poll_once(&mut call).await {
            Poll::Pending => pending += 1,
            Poll::Ready(answer) => assert_eq!(answer.unwrap_err(), VerifyError::Unavailable),
        }
    }
    eprintln!(
        "{pending} of 100,000 callers dropped pending, in {:?}; {} calls arrived",
        start.elapsed(),
        double.calls()
    );
    assert!(pending > 0, "no call was under way when dropped");
    assert_eq!(v.inflight_len(), 0, "{pending} cancelled calls");
}

// --- D: probes back off ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_back_off_from_a_second_to_the_cool_down() {
    let (double, addr) = started().await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .breaker(3, Duration::from_secs(10))
        .probe_backoff(Duration::from_secs(1))
        .build()
        .unwrap();
    let ms = Duration::from_millis(1);
    double.set(Mode::Status(500));
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap_err();
    }
    assert!(v.circuit_open());
    // Each failed probe doubles the wait, up to the cool-down.
    for wait in [1, 2, 4, 8, 10, 10] {
        let before = double.calls();
        clock.advance(Duration::from_secs(wait) - ms);
        verify(&v, GOOD).await.unwrap_err();
        assert_eq!(double.calls(), before, "probed before {wait} s");
        clock.advance(ms);
        verify(&v, GOOD).await.unwrap_err();
        assert_eq!(double.calls(), before + 1, "no probe after {wait} s");
    }
    // The service is back: the next probe closes the circuit.
    double.set(Mode::Normal);
    clock.advance(Duration::from_secs(10));
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert!(!v.circuit_open());

    // A success reset the wait: the next outage is probed after 1 s, and
    // a service back by then is used again at once.
    v.clear();
    double.set(Mode::Status(500));
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap_err();
    }
    assert!(v.circuit_open());
    double.set(Mode::Normal);
    clock.advance(Duration::from_secs(1));
    assert_eq!(verify(&v, GOOD).await.unwrap().id(), "user-1");
    assert!(!v.circuit_open());
}

// --- E: the upstream budget ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_keys_stays_within_the_upstream_budget() {
    const BUDGET: u32 = 100;
    const FLOODERS: usize = 4;
    let (double, addr) = started().await;
    let start = Instant::now();
    let v = remote(addr).upstream_budget(BUDGET).build().unwrap();
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move {
                let mut next_key = random_keys();
                for i in 0..100_000 / FLOODERS {
                    match verify(&v, &next_key()).await {
                        Err(VerifyError::Invalid | VerifyError::Unavailable) => {}
                        other => panic!("a random key: {other:?}"),
                    }
                    if i % 1_000 == 0 {
                        assert!(!v.circuit_open(), "the flood opened the circuit");
                    }
                }
            })
        })
        .collect();
    // Meanwhile a good key nobody asked for yet gets through.
    let good = {
        let v = v.clone();
        let flooding = flooding.clone();
        tokio::spawn(async move {
            loop {
                match verify(&v, GOOD).await {
                    Ok(p) => return (p, flooding.load(Ordering::SeqCst)),
                    Err(VerifyError::Unavailable) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e:?}"),
                }
            }
        })
    };
    for task in flood {
        task.await.unwrap();
    }
    flooding.store(false, Ordering::SeqCst);
    let (p, during) = good.await.unwrap();
    assert_eq!(p.id(), "user-1");
    assert!(during, "the good key got through only after the flood");
    // And afterwards, another.
    let mut answer = verify(&v, LIMITED).await;
    for _ in 0..100 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = verify(&v, LIMITED).await;
    }
    assert_eq!(answer.unwrap().id(), "user-2");
    assert!(!v.circuit_open());
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "{} upstream calls in {elapsed:.2} s; {} answered unavailable",
        double.calls(),
        v.unavailable_count()
    );
    let bound = f64::from(BUDGET) * elapsed + f64::from(BUDGET) + 1.0;
    let calls = double.calls();
    assert!(
        (calls as f64) <= bound,
        "{calls} upstream calls in {elapsed:.1} s, budget {BUDGET}/s"
    );
    assert!(v.unavailable_count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answering_429_never_opens_the_circuit() {
    let (double, addr) = started().await;
    let v = remote(addr)
        .breaker(5, Duration::from_secs(30))
        .build()
        .unwrap();
    double.set(Mode::Status(429));
    for _ in 0..6 {
        assert_eq!(
            verify(&v, GOOD).await.unwrap_err(),
            VerifyError::Unavailable
        );
    }
    assert_eq!(
        double.calls(),
        6,
        "every request asked: not cached, not refused"
    );
    assert!(!v.circuit_open());
    double.set(Mode::Normal);
    assert!(verify(&v, GOOD).await.is_ok());
}

// --- F: one WARN per outage ---

#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_logged_once_and_counted() {
    let logs = Captured::start();
    let (double, addr) = started().await;
    for breaker in [1_000, 5] {
        let before = logs.count("WARN", "key service unavailable");
        let clock = Arc::new(ManualClock::new());
        let v = remote(addr)
            .clock(clock.clone())
            .breaker(breaker, Duration::from_secs(30))
            .build()
            .unwrap();
        double.set(Mode::Status(503));
        let mut next_key = random_keys();
        for i in 0..50 {
            let key = if i % 2 == 0 {
                GOOD.to_owned()
            } else {
                next_key()
            };
            assert_eq!(
                verify(&v, &key).await.unwrap_err(),
                VerifyError::Unavailable
            );
        }
        assert_eq!(
            logs.count("WARN", "key service unavailable") - before,
            1,
            "breaker {breaker}"
        );
        assert_eq!(v.unavailable_count(), 50);
        let recovered = logs.count("INFO", "key service available again");
        double.set(Mode::Normal);
        clock.advance(Duration::from_secs(1));
        assert!(verify(&v, GOOD).await.is_ok());
        assert!(verify(&v, LIMITED).await.is_ok());
        assert_eq!(
            logs.count("INFO", "key service available again"),
            recovered + 1
        );
    }
}

// --- G: redirects ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let (double, addr) = started().await;
    let v = patient(addr);
    double.set(Mode::Redirect);
    assert_eq!(
        verify(&v, GOOD).await.unwrap_err(),
        VerifyError::Unavailable
    );
    assert_eq!(
        verify(&v, "sk_live_unknown").await.unwrap_err(),
        VerifyError::Unavailable
    );
    assert_eq!(double.calls(), 2);
    assert_eq!(
        double.other_calls.load(Ordering::SeqCst),
        0,
        "the key was re-sent to the redirect's target"
    );
}

// --- H: Debug ---

#[test]
fn debug_hides_the_urls_userinfo_and_query() {
    let builder =
        RemoteVerifier::builder("http://user:secret@127.0.0.1:1").path("/validate?token=hush");
    let shown = format!("{builder:?}");
    let v = builder.build().unwrap();
    let shown = format!("{shown}{v:?}");
    assert!(
        !shown.contains("secret") && !shown.contains("hush"),
        "{shown}"
    );
    assert!(!shown.contains("user"), "{shown}");
    assert!(
        shown.contains("http://***@127.0.0.1:1/validate?***"),
        "{shown}"
    );
    let err = RemoteVerifier::builder("ftp://user:secret@127.0.0.1:1")
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_outcome_the_circuit_and_the_cache_are_exported() {
    use auth_core::prometheus::{Metrics, prometheus_client};
    let (double, addr) = started().await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .breaker(3, Duration::from_secs(10))
        .build()
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    Metrics::register(&mut registry).add(v.clone());
    let scrape = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    // One valid call, then four hits; one call each for the denials.
    for _ in 0..5 {
        verify(&v, GOOD).await.unwrap();
    }
    verify(&v, "sk_live_unknown_0123456789abcdef")
        .await
        .unwrap_err();
    verify(&v, EXPIRED).await.unwrap_err();
    verify(&v, DISABLED).await.unwrap_err();
    verify_scoped(&v, LIMITED, "admin").await.unwrap();
    // The service fails: three failed calls open the circuit, the next
    // two misses are not sent.
    double.set(Mode::Status(500));
    for i in 0..5 {
        verify(&v, &format!("sk_live_new_key_{i}_0123456789abcd"))
            .await
            .unwrap_err();
    }
    let text = scrape();
    for line in [
        r#"auth_remote_calls_total{outcome="valid"} 1"#,
        r#"auth_remote_calls_total{outcome="invalid"} 1"#,
        r#"auth_remote_calls_total{outcome="expired"} 1"#,
        r#"auth_remote_calls_total{outcome="disabled"} 1"#,
        r#"auth_remote_calls_total{outcome="insufficient_scope"} 1"#,
        r#"auth_remote_calls_total{outcome="failed"} 3"#,
        r#"auth_remote_calls_skipped_total{reason="circuit_open"} 2"#,
        "auth_remote_circuit_open 1.0",
        r#"auth_cache_hits_total{cache="remote"} 4"#,
        // 1 + 3 denials + the scoped miss (not cached for its scope) + 5.
        r#"auth_cache_misses_total{cache="remote"} 10"#,
        "auth_remote_unavailable_total 5",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(double.calls(), 8);
    let last = text
        .lines()
        .find_map(|l| l.strip_prefix("auth_remote_last_answer_timestamp_seconds "))
        .unwrap();
    assert!(last.parse::<f64>().unwrap() > 1.7e9, "{last}");
    // Nothing of a key in the export.
    assert!(!text.contains("sk_live") && !text.contains(SERVICE_TOKEN));
}

// --- Credit leases (issue 16, item 3) ---

/// Issue 16: a key with credits is answered from a leased batch — one
/// credit per request, spent here — so N requests make about N / (lease + 1)
/// calls; every request let through was paid for, by a call or by one
/// leased credit, and what was not spent goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_credits_are_spent_here_one_per_request() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = remote(addr).credit_leases(10).build().unwrap();
    for _ in 0..200 {
        assert_eq!(verify(&v, CREDITED).await.unwrap().id(), "user-7");
    }
    // Each call is charged 1 and leases 10: 11 requests a call.
    let calls = double.calls();
    assert!((200 / 11..=200 / 11 + 1).contains(&calls), "{calls} calls");
    assert!(double.asked.lock().iter().all(|a| *a == Some(10)));
    assert_eq!(v.leases_len(), 1);
    // The lease held ends: what is left of it goes back.
    v.clear();
    let returns = double.returned(1).await;
    assert_eq!(returns.len(), 1, "{returns:?}");
    let (charged, leased, returned) = double.ledger();
    assert_eq!(
        charged + leased - returned,
        200,
        "each request let through spent exactly one credit"
    );
    assert_eq!(double.credits.lock().left, 800);
    assert_eq!(v.leases_len(), 0);

    // A key with few credits: never more let through than it has.
    double.credit(25, 30_000);
    let allowed = {
        let mut allowed = 0;
        for _ in 0..60 {
            match verify(&v, CREDITED).await {
                Ok(_) => allowed += 1,
                Err(e) => assert_eq!(e, VerifyError::UsageExceeded { retry_after: None }),
            }
        }
        allowed
    };
    assert_eq!(allowed, 25);
    v.clear();
    assert_eq!(double.credits.lock().left, 0, "nothing given back twice");
}

/// Issue 16: forty callers at once on a spent lease share the next calls'
/// leases — one call a round, each caller either its owner (charged by the
/// service) or one leased credit — and never are more let through than
/// the credits granted; the rest ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_callers_on_a_spent_lease_never_get_more_than_was_granted() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = patient_with(remote(addr).credit_leases(5));
    for _ in 0..6 {
        verify(&v, CREDITED).await.unwrap();
    }
    assert_eq!(double.calls(), 1, "one call, five leased credits spent");
    // The lease is spent: every caller misses.
    double.set(Mode::Sluggish);
    let forty = |v: &RemoteVerifier| {
        let callers: Vec<_> = (0..40)
            .map(|_| {
                let v = v.clone();
                tokio::spawn(async move { verify(&v, CREDITED).await })
            })
            .collect();
        async move {
            let mut allowed = 0;
            for caller in callers {
                match caller.await.unwrap() {
                    Ok(_) => allowed += 1,
                    Err(e) => assert_eq!(e, VerifyError::UsageExceeded { retry_after: None }),
                }
            }
            allowed
        }
    };
    assert_eq!(forty(&v).await, 40);
    let calls = double.calls() - 1;
    // 40 callers, 6 a round (the owner and five leased credits).
    assert!((7..=14).contains(&calls), "{calls} calls for 40 callers");
    v.clear();
    double.returned(1).await;
    let (charged, leased, returned) = double.ledger();
    assert_eq!(charged + leased - returned, 46);

    // Twelve credits left for forty callers: exactly twelve through.
    double.credit(12, 30_000);
    assert_eq!(forty(&v).await, 12);
    assert_eq!(double.credits.lock().left, 0);
    assert_eq!(v.inflight_len(), 0);
}

/// Issue 16: a lease is spent until a margin before its end only; past it
/// the next request asks again, and the old lease is given back once, with
/// what was left of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_past_its_deadline_is_not_spent_and_is_returned_once() {
    let (double, addr) = started().await;
    double.credit(1_000, 10_000);
    let clock = Arc::new(ManualClock::new());
    let v = patient_with(remote(addr).clock(clock.clone()).credit_leases(5));
    for _ in 0..3 {
        verify(&v, CREDITED).await.unwrap();
    }
    assert_eq!(double.calls(), 1);
    // 10 s leased, less the call's time (0 on this clock) and 1 s: spent
    // until 9 s.
    clock.advance(Duration::from_millis(8_999));
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(double.calls(), 1, "still within the lease");
    clock.advance(Duration::from_millis(1));
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(double.calls(), 2, "past the deadline: asked again");
    let returns = double.returned(1).await;
    assert_eq!(returns, [("lease-1".to_owned(), 2)]);
    // The new lease is given back when its grant is dropped; the old one
    // never again.
    verify(&v, CREDITED).await.unwrap();
    v.invalidate(&auth_core::Digest::of(CREDITED.as_bytes()));
    v.clear();
    let returns = double.returned(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        double.returns(),
        [("lease-1".to_owned(), 2), ("lease-2".to_owned(), 4)],
        "{returns:?}"
    );
    let (charged, leased, returned) = double.ledger();
    assert_eq!(charged + leased - returned, 6);
}

/// Issue 16: a lease nobody spends is given back at its deadline, without
/// waiting for a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lease_is_returned_at_its_deadline() {
    let (double, addr) = started().await;
    // Spent for 0.5 s at most (less the call's time).
    double.credit(1_000, 1_500);
    let v = patient_with(remote(addr).credit_leases(5));
    verify(&v, CREDITED).await.unwrap();
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(double.calls(), 1);
    let returns = double.returned(1).await;
    assert_eq!(returns, [("lease-1".to_owned(), 4)]);
    assert_eq!(v.leases_len(), 0);
    // Nothing is spent of it any more: the next request asks.
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(double.calls(), 2);
}

/// Issue 16: a grant dropped from the cache — `invalidate`, `clear`, a
/// `key` event on the changes stream, or the verifier itself dropped —
/// gives its lease back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_grants_give_their_leases_back() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    double.set_stream(StreamMode::Serve);
    let v = patient_with(remote(addr).credit_leases(5));
    let start = Instant::now();
    while !v.stream_live() {
        assert!(start.elapsed() < Duration::from_secs(5), "stream not live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let digest = auth_core::Digest::of(CREDITED.as_bytes());
    for (n, how) in ["invalidate", "clear", "a key event"]
        .into_iter()
        .enumerate()
    {
        // One call, one credit spent here: four unused.
        verify(&v, CREDITED).await.unwrap();
        verify(&v, CREDITED).await.unwrap();
        match how {
            "invalidate" => v.invalidate(&digest),
            "clear" => v.clear(),
            _ => double.key_changed(CREDITED),
        }
        let returns = double.returned(n + 1).await;
        assert_eq!(
            returns.last(),
            Some(&(format!("lease-{}", n + 1), 4)),
            "{how}: {returns:?}"
        );
        assert_eq!(double.calls(), n + 1, "{how}");
        let start = Instant::now();
        while v.leases_len() > 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "{how}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The verifier dropped: its lease goes back too.
    verify(&v, CREDITED).await.unwrap();
    drop(v);
    let returns = double.returned(4).await;
    assert_eq!(returns.last(), Some(&("lease-4".to_owned(), 5)));
    let (charged, leased, returned) = double.ledger();
    assert_eq!(charged + leased - returned, 7);
}

/// Issue 16: before a graceful shutdown, `return_leases` gives back what
/// is left of every lease and waits for the answers — nothing is lost when
/// the runtime stops next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_leases_gives_everything_back_before_a_shutdown() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = patient_with(remote(addr).credit_leases(5));
    verify(&v, CREDITED).await.unwrap();
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(v.leases_len(), 1);
    v.return_leases().await;
    // Answered before `return_leases` returned: one call, one credit spent
    // here, four back.
    let (charged, leased, returned) = double.ledger();
    assert_eq!((charged + leased - returned, returned), (2, 4));
    assert_eq!(v.leases_len(), 0);
    // Still working: the next request takes a new lease.
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(v.leases_len(), 1);
}

/// Issue 16: leases off (0) is a call per request on a key with credits,
/// never cached nor shared, as before; more than `MAX_LEASE` is capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_off_is_a_call_per_request() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = patient_with(remote(addr).credit_leases(0));
    for n in 1..=5 {
        verify(&v, CREDITED).await.unwrap();
        assert_eq!(double.calls(), n);
    }
    double.set(Mode::Sluggish);
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { verify(&v, CREDITED).await.is_ok() })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap());
    }
    assert_eq!(double.calls(), 45, "a charged grant was shared");
    assert!(double.asked.lock().iter().all(Option::is_none));
    assert_eq!(double.ledger(), (45, 0, 0));
    assert_eq!(v.leases_len(), 0);
    // Asked for more than a lease may hold: capped.
    double.set(Mode::Normal);
    let v = patient_with(remote(addr).credit_leases(50_000));
    verify(&v, CREDITED).await.unwrap();
    assert_eq!(double.asked.lock().last(), Some(&Some(10_000)));
}

/// Issue 16: with leases on, keys without credits are cached and coalesced
/// as before (the service ignores the lease asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_credits_are_cached_and_coalesced_with_leases_on() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    double.set(Mode::Sluggish);
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { verify(&v, GOOD).await.is_ok() })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap());
    }
    assert_eq!(double.calls(), 1);
    for _ in 0..100 {
        let answer = v.verify(&Credential::new(GOOD), &VerifyContext::default());
        assert!(answer.is_ready(), "a cache hit");
        assert!(answer.await.is_ok());
    }
    assert_eq!(double.calls(), 1);
    assert_eq!(*double.asked.lock(), [Some(100)], "the default lease");
    assert_eq!(v.leases_len(), 0);
    assert!(double.returns().is_empty());
}

/// Issue 16: a leased grant is a cache hit (`Answer::Ready`), and a
/// request for a route scope the key lacks spends nothing of it (the
/// guard refuses it, as the service would without charging).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_grant_is_a_cache_hit_and_a_missing_scope_spends_nothing() {
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = patient_with(remote(addr).credit_leases(3));
    verify(&v, CREDITED).await.unwrap();
    for _ in 0..10 {
        let ctx = VerifyContext {
            path: "/x",
            required_scope: Some("admin"),
        };
        let answer = v.verify(&Credential::new(CREDITED), &ctx);
        assert!(answer.is_ready());
        assert!(!answer.await.unwrap().has_scope("admin"));
    }
    for _ in 0..3 {
        let answer = v.verify(&Credential::new(CREDITED), &VerifyContext::default());
        assert!(answer.is_ready(), "a leased credit");
    }
    let answer = v.verify(&Credential::new(CREDITED), &VerifyContext::default());
    assert!(!answer.is_ready(), "the lease is spent");
    assert!(answer.await.is_ok());
    assert_eq!(double.calls(), 2);
}

/// Issue 16: the credits of leases are exported; a return that fails is
/// counted lost and logged once at WARN, without the key or the lease id.
#[tokio::test(flavor = "current_thread")]
async fn lease_credits_are_exported_and_a_failed_return_is_logged_once() {
    use auth_core::prometheus::{Metrics, prometheus_client};
    let logs = Captured::start();
    let (double, addr) = started().await;
    double.credit(1_000, 30_000);
    let v = patient_with(remote(addr).credit_leases(10));
    let mut registry = prometheus_client::registry::Registry::default();
    Metrics::register(&mut registry).add(v.clone());
    let scrape = || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    // 1 charged + 3 leased credits spent, 7 given back.
    for _ in 0..4 {
        verify(&v, CREDITED).await.unwrap();
    }
    v.clear();
    double.returned(1).await;
    // Twice: 1 charged + 1 leased spent, 9 not given back.
    double.refuse_returns.store(true, Ordering::SeqCst);
    for n in 2..=3 {
        verify(&v, CREDITED).await.unwrap();
        verify(&v, CREDITED).await.unwrap();
        v.clear();
        double.returned(n).await;
    }
    let start = Instant::now();
    while !scrape().contains(r#"event="lost"} 18"#) && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = scrape();
    for line in [
        r#"auth_remote_lease_credits_total{event="leased"} 30"#,
        r#"auth_remote_lease_credits_total{event="spent"} 5"#,
        r#"auth_remote_lease_credits_total{event="returned"} 7"#,
        r#"auth_remote_lease_credits_total{event="lost"} 18"#,
        "auth_remote_leases 0",
        r#"auth_remote_calls_total{outcome="valid"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(
        logs.count("WARN", "credit lease could not be returned"),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(logs.count("DEBUG", "credit lease could not be returned"), 1);
    let all = format!("{}{text}{v:?}", logs.text());
    assert!(!all.contains(CREDITED) && !all.contains("lease-"), "{all}");
}

#[test]
fn the_credit_lease_from_env_is_range_checked() {
    for (raw, ok) in [
        ("0", true),
        ("250", true),
        ("10000", true),
        ("10001", false),
        ("-1", false),
        ("many", false),
    ] {
        let env = |name: &str| match name {
            "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
            "AUTH_REMOTE_URL" => Some("http://127.0.0.1:1".to_owned()),
            "AUTH_REMOTE_CREDIT_LEASE" => Some(raw.to_owned()),
            _ => None,
        };
        match RemoteVerifier::from_lookup(env) {
            Ok(builder) => {
                assert!(ok, "{raw} accepted");
                let shown = format!("{:?}", builder.unwrap());
                assert!(shown.contains(&format!("credit_leases: {raw}")), "{shown}");
            }
            Err(e) => {
                assert!(!ok, "{raw}: {e}");
                assert!(e.to_string().contains("AUTH_REMOTE_CREDIT_LEASE"), "{e}");
            }
        }
    }
}

/// A verifier that never opens its circuit, from a builder.
fn patient_with(builder: auth_remote::RemoteVerifierBuilder) -> RemoteVerifier {
    builder
        .breaker(1_000, Duration::from_secs(1))
        .build()
        .unwrap()
}
