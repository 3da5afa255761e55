//! `RemoteVerifier` against a test double of the central key service,
//! served by axum on 127.0.0.1 (a free port), over real HTTP.
#![allow(unused_crate_dependencies)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auth_core::{
    Credential, Decision, Fallback, Guard, KeySet, ManualClock, PlainRequest, Principal, Verifier,
    VerifyContext, VerifyError,
};
use auth_remote::RemoteVerifier;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};

const GOOD: &str = "sk_live_good_key_0123456789abcdef";
const LIMITED: &str = "sk_live_limited_key_0123456789ab";
const SERVICE_HEADER: &str = "x-service-token";
const SERVICE_TOKEN: &str = "our-service-credential";

/// How the double answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    Slow,
    Status(u16),
    Garbage,
}

/// A key's owner, scopes and rate limit (requests, window in seconds).
type KeyInfo = (&'static str, Vec<&'static str>, Option<(u32, u64)>);

struct Double {
    calls: AtomicUsize,
    mode: Mutex<Mode>,
    /// key → (user, scopes, rate limit)
    keys: HashMap<&'static str, KeyInfo>,
}

impl Double {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Normal),
            keys: HashMap::from([
                (GOOD, ("user-1", vec!["stt", "tts"], None)),
                (LIMITED, ("user-2", vec!["stt"], Some((2, 60)))),
            ]),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }
}

async fn validate(
    State(double): State<Arc<Double>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    double.calls.fetch_add(1, Ordering::SeqCst);
    let mode = *double.mode.lock();
    match mode {
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        Mode::Status(code) => return StatusCode::from_u16(code).unwrap().into_response(),
        Mode::Garbage => return "<html>not json</html>".into_response(),
        Mode::Normal => {}
    }
    if headers.get(SERVICE_HEADER).and_then(|v| v.to_str().ok()) != Some(SERVICE_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = body["apiKey"].as_str().unwrap_or_default();
    let scope = body["scope"].as_str();
    let Some((user, scopes, limit)) = double.keys.get(key) else {
        return Json(json!({"valid": false, "error": "invalid api key"})).into_response();
    };
    if let Some(scope) = scope {
        if !scopes.contains(&scope) {
            return Json(
                json!({"valid": false, "error": format!("API key does not have scope: {scope}")}),
            )
            .into_response();
        }
    }
    let mut answer = json!({"valid": true, "userId": user, "scopes": scopes});
    if let Some((requests, window)) = limit {
        answer["rateLimit"] = json!({"requests": requests, "window": window});
    }
    Json(answer).into_response()
}

async fn serve(double: Arc<Double>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/api/v1/api-keys/validate", post(validate))
        .with_state(double);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A double, served.
async fn started() -> (Arc<Double>, SocketAddr) {
    let double = Double::new();
    let addr = serve(double.clone()).await;
    (double, addr)
}

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
    use auth_axum::{AuthLayer, Authenticated};
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
        .route_layer(AuthLayer::new(guard));
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
