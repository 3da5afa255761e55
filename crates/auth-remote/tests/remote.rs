//! `RemoteVerifier` against a test double of the central key service,
//! served by axum on 127.0.0.1 (a free port), over real HTTP.
#![allow(unused_crate_dependencies)]

mod common;
use common::Captured;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_core::clock::ManualClock;
use auth_core::protocol::{Code, RateLimit, ValidateRequest, ValidateResponse};
use auth_core::{
    Credential, Decision, Fallback, Guard, KeySet, PlainRequest, Principal, Verifier,
    VerifyContext, VerifyError,
};
use auth_remote::RemoteVerifier;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;

const GOOD: &str = "sk_live_good_key_0123456789abcdef";
const LIMITED: &str = "sk_live_limited_key_0123456789ab";
const EXPIRED: &str = "sk_live_expired_key_0123456789ab";
const DISABLED: &str = "sk_live_disabled_key_0123456789a";
/// Valid, expiring 2 s after each answer.
const EXPIRING: &str = "sk_live_expiring_key_0123456789a";
/// Valid, says the service, with an `expiresAt` already past.
const LAPSED: &str = "sk_live_lapsed_key_0123456789abc";
const SERVICE_HEADER: &str = auth_core::protocol::SERVICE_TOKEN_HEADER;
const SERVICE_TOKEN: &str = "our-service-credential";

/// How the double answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    Slow,
    /// Answers normally, after 150 ms (within the verifiers' timeout).
    Sluggish,
    Status(u16),
    Garbage,
    /// This JSON body, whatever the key.
    Raw(&'static str),
    /// This JSON body, after 150 ms (callers pile up on one call).
    SluggishRaw(&'static str),
    /// 307 to `/other`, which would say valid.
    Redirect,
}

/// A valid answer padded past the 64 KiB an answer may have.
static HUGE_ANSWER: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
    let padded = format!(
        r#"{{"valid":true,"code":"valid","userId":"user-1","error":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    Box::leak(padded.into_boxed_str())
});

/// A key as the double knows it.
struct KeyInfo {
    user: &'static str,
    scopes: Vec<&'static str>,
    /// Requests, window in seconds.
    limit: Option<(u32, u64)>,
    /// Valid, or why not.
    code: Code,
    /// `expiresAt`, in seconds from the answer.
    expires_in: Option<i64>,
}

impl KeyInfo {
    fn valid(user: &'static str, scopes: Vec<&'static str>) -> Self {
        Self {
            user,
            scopes,
            limit: None,
            code: Code::Valid,
            expires_in: None,
        }
    }
}

struct Double {
    calls: AtomicUsize,
    /// Calls to `/other`, the redirect's target.
    other_calls: AtomicUsize,
    mode: Mutex<Mode>,
    keys: HashMap<&'static str, KeyInfo>,
}

impl Double {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            other_calls: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Normal),
            keys: HashMap::from([
                (GOOD, KeyInfo::valid("user-1", vec!["stt", "tts"])),
                (
                    LIMITED,
                    KeyInfo {
                        limit: Some((2, 60)),
                        ..KeyInfo::valid("user-2", vec!["stt"])
                    },
                ),
                (
                    EXPIRED,
                    KeyInfo {
                        code: Code::Expired,
                        ..KeyInfo::valid("user-3", vec![])
                    },
                ),
                (
                    DISABLED,
                    KeyInfo {
                        code: Code::Disabled,
                        ..KeyInfo::valid("user-4", vec![])
                    },
                ),
                (
                    EXPIRING,
                    KeyInfo {
                        expires_in: Some(2),
                        ..KeyInfo::valid("user-5", vec![])
                    },
                ),
                (
                    LAPSED,
                    KeyInfo {
                        expires_in: Some(-10),
                        ..KeyInfo::valid("user-6", vec![])
                    },
                ),
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

fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

async fn validate(
    State(double): State<Arc<Double>>,
    headers: HeaderMap,
    Json(body): Json<ValidateRequest>,
) -> Response {
    double.calls.fetch_add(1, Ordering::SeqCst);
    let mode = *double.mode.lock();
    match mode {
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        Mode::Sluggish => tokio::time::sleep(Duration::from_millis(150)).await,
        Mode::Status(code) => return StatusCode::from_u16(code).unwrap().into_response(),
        Mode::Garbage => return "<html>not json</html>".into_response(),
        Mode::Raw(text) => {
            return ([("content-type", "application/json")], text).into_response();
        }
        Mode::SluggishRaw(text) => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            return ([("content-type", "application/json")], text).into_response();
        }
        Mode::Redirect => {
            return (StatusCode::TEMPORARY_REDIRECT, [("location", "/other")]).into_response();
        }
        Mode::Normal => {}
    }
    if headers.get(SERVICE_HEADER).and_then(|v| v.to_str().ok()) != Some(SERVICE_TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(info) = double.keys.get(body.api_key.as_str()) else {
        return Json(ValidateResponse::refusal(Code::Invalid)).into_response();
    };
    if info.code != Code::Valid {
        return Json(ValidateResponse::refusal(info.code)).into_response();
    }
    if let Some(scope) = body.scope.as_deref() {
        if !info.scopes.contains(&scope) {
            let mut answer = ValidateResponse::refusal(Code::InsufficientScope);
            answer.user_id = Some(info.user.to_owned());
            return Json(answer).into_response();
        }
    }
    let mut answer = ValidateResponse::valid(
        info.user,
        info.scopes.iter().map(|s| (*s).to_owned()).collect(),
    );
    answer.rate_limit = info
        .limit
        .map(|(requests, window)| RateLimit { requests, window });
    answer.expires_at = info
        .expires_in
        .map(|s| u64::try_from(unix_now() + s).unwrap());
    Json(answer).into_response()
}

/// The redirect's target: would say valid to anything.
async fn other(State(double): State<Arc<Double>>) -> Response {
    double.other_calls.fetch_add(1, Ordering::SeqCst);
    Json(ValidateResponse::valid("redirected", vec![])).into_response()
}

async fn serve(double: Arc<Double>) -> SocketAddr {
    let app = axum::Router::new()
        .route(auth_core::protocol::VALIDATE_PATH, post(validate))
        .route("/other", post(other))
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
