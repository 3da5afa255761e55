//! The guard's whole decision, end to end through `Guard::check`.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::Duration;

use auth_core::clock::ManualClock;
use auth_core::{
    Admission, Admitted, Answer, Credential, CredentialSources, Decision, DecisionCounts, Deferred,
    ExtractError, Fallback, GcraLimiter, Guard, KeySet, Keyrings, Mode, PassReason, PlainRequest,
    Principal, PublicPaths, RateDecision, RateLimitPolicy, RateLimiter, Rejection, RejectionKind,
    StaticKey, Verifier, VerifyContext, VerifyError, VerifyResult, verifier_fn,
};

const KEY: &str = "k3y-0f-the-internal-boundary";

fn guard() -> Guard {
    Guard::builder(StaticKey::new(KEY).unwrap())
        .build()
        .unwrap()
}

fn with_key(path: &str) -> PlainRequest {
    PlainRequest::get(path).header("x-api-key", KEY)
}

fn rejected(d: Decision) -> Rejection {
    match d {
        Decision::Reject(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn header(r: &Rejection, name: &str) -> Option<String> {
    r.headers()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn enforce_allows_the_key_and_refuses_the_rest() {
    let g = guard();
    let Decision::Allow(grant) = g.check(&with_key("/items")).await else {
        panic!("key refused")
    };
    assert_eq!(grant.principal().id(), "service");
    let bearer = PlainRequest::get("/items").header("authorization", format!("bearer   {KEY}"));
    assert!(matches!(g.check(&bearer).await, Decision::Allow(_)));

    let r = rejected(g.check(&PlainRequest::get("/items")).await);
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    let r = rejected(
        g.check(&PlainRequest::get("/items").header("x-api-key", "nope"))
            .await,
    );
    assert_eq!(r.kind(), RejectionKind::Invalid(VerifyError::Invalid));
    let r = rejected(
        g.check(
            &PlainRequest::get("/items")
                .header("x-api-key", KEY)
                .header("authorization", "Bearer other"),
        )
        .await,
    );
    assert_eq!(
        (r.status(), r.kind()),
        (400, RejectionKind::Malformed(ExtractError::Duplicate))
    );
    let counts = g.counts();
    assert_eq!(
        (
            counts.allowed,
            counts.missing,
            counts.invalid,
            counts.malformed
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn public_paths_only_when_clean() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .public_paths(PublicPaths::default().prefix("/public"))
        .build()
        .unwrap();
    for p in ["/health", "/public", "/public/a/b.css"] {
        assert!(
            matches!(
                g.check(&PlainRequest::get(p)).await,
                Decision::Pass(PassReason::PublicPath)
            ),
            "{p}"
        );
    }
    for p in [
        "/health/",
        "/healthx",
        "/health/../admin",
        "/health/./x",
        "/health%2F..%2Fadmin",
        "/Health",
        "//health",
        "/health;x",
        "/public/../admin",
        "/publicity",
        "/admin",
        "health",
    ] {
        let r = rejected(g.check(&PlainRequest::get(p)).await);
        assert_eq!(r.status(), 401, "{p} slipped through");
    }
    assert!(
        Guard::builder(StaticKey::new(KEY).unwrap())
            .public_paths(PublicPaths::none().prefix("/"))
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn cors_preflight_only_when_configured() {
    let preflight = PlainRequest::new("OPTIONS", "/items")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST");
    let r = rejected(guard().check(&preflight).await);
    assert_eq!(r.status(), 401);

    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .allow_preflight(true)
        .build()
        .unwrap();
    assert!(matches!(
        g.check(&preflight).await,
        Decision::Pass(PassReason::Preflight)
    ));
    // A plain OPTIONS (no preflight header) still needs a key.
    let plain = PlainRequest::new("OPTIONS", "/items");
    assert_eq!(rejected(g.check(&plain).await).status(), 401);
    // A preflight needs both a non-blank Origin and a requested method,
    // on OPTIONS.
    let options = || PlainRequest::new("OPTIONS", "/items");
    for (what, req) in [
        (
            "no Origin",
            options().header("access-control-request-method", "POST"),
        ),
        (
            "blank Origin",
            options()
                .header("origin", " ")
                .header("access-control-request-method", "POST"),
        ),
        (
            "no requested method",
            options().header("origin", "https://app.example"),
        ),
        (
            "blank requested method",
            options()
                .header("origin", "https://app.example")
                .header("access-control-request-method", ""),
        ),
        (
            "not OPTIONS",
            PlainRequest::get("/items")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST"),
        ),
    ] {
        let r = rejected(g.check(&req).await);
        assert_eq!(
            (r.status(), r.kind()),
            (401, RejectionKind::Missing),
            "{what}"
        );
    }
    assert_eq!(g.counts().passed, 1, "only the real preflight passed");
    // A guard that requires a scope lets no preflight through.
    let scoped = Guard::builder(StaticKey::new(KEY).unwrap())
        .allow_preflight(true)
        .require_scope("admin")
        .build()
        .unwrap();
    let r = rejected(scoped.check(&preflight).await);
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!((scoped.counts().passed, scoped.counts().missing), (0, 1));
}

#[tokio::test]
async fn a_preflight_never_passes_a_route_scope() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .allow_preflight(true)
        .build()
        .unwrap();
    let preflight = PlainRequest::new("OPTIONS", "/admin")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "DELETE");
    let Decision::Pass(reason) = g.check(&preflight).await else {
        panic!("the preflight did not pass the guard")
    };
    assert_eq!(reason, PassReason::Preflight);

    let preflight = g.admit(Decision::Pass(reason)).unwrap();
    assert_eq!(preflight.passed(), Some(PassReason::Preflight));
    assert!(preflight.principal().is_none());

    // The same 401 as a request that was never authenticated, counted as
    // missing at the route (the guard counted the preflight as passed).
    let admin = g.route_scope("admin").unwrap();
    assert_eq!(admin.scope(), "admin");
    let missing_before = g.counts().route_missing;
    let r = admin.check(Some(&preflight)).unwrap_err();
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!(g.counts().route_missing, missing_before + 1);
    assert_eq!(
        g.counts().missing,
        0,
        "each request counted once by the guard"
    );
    // No admission of this guard's: it never decided the request, which
    // counts as one without a credential.
    assert_eq!(admin.check(None).unwrap_err(), r);
    assert_eq!(g.counts().missing, 1);

    // The other reasons to pass keep needing no scope.
    for other in [
        PassReason::PublicPath,
        PassReason::Open,
        PassReason::ReportOnly(RejectionKind::Missing),
    ] {
        let passed = g.admit(Decision::Pass(other)).unwrap();
        assert!(admin.check(Some(&passed)).is_ok(), "{other:?}");
    }
    // A real public path, as the guard decided it.
    let health = g
        .admit(g.check(&PlainRequest::get("/health")).await)
        .unwrap();
    assert_eq!(health.passed(), Some(PassReason::PublicPath));
    assert!(admin.check(Some(&health)).is_ok());
    assert_eq!(
        (g.counts().route_missing, g.counts().missing),
        (missing_before + 1, 1),
        "a pass was refused"
    );

    // The mode still decides: report-only logs and counts, open lets through.
    g.set_mode(Mode::ReportOnly);
    let report_only_before = g.counts().report_only;
    assert!(admin.check(Some(&preflight)).is_ok());
    assert_eq!(g.counts().report_only, report_only_before + 1);
    g.set_mode(Mode::Open);
    assert!(admin.check(Some(&preflight)).is_ok());
    g.set_mode(Mode::Enforce);
    assert_eq!(admin.check(Some(&preflight)).unwrap_err().status(), 401);
}

#[tokio::test]
async fn report_only_lets_through_and_counts() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .mode(Mode::ReportOnly)
        .build()
        .unwrap();
    let d = g
        .check(&PlainRequest::get("/x").header("x-api-key", "bad"))
        .await;
    assert!(matches!(
        d,
        Decision::Pass(PassReason::ReportOnly(RejectionKind::Invalid(
            VerifyError::Invalid
        )))
    ));
    assert!(matches!(
        g.check(&PlainRequest::get("/x")).await,
        Decision::Pass(PassReason::ReportOnly(RejectionKind::Missing))
    ));
    // A good key is still authenticated, so handlers see the principal.
    assert!(matches!(g.check(&with_key("/x")).await, Decision::Allow(_)));
    let c = g.counts();
    assert_eq!(
        (c.report_only, c.invalid, c.missing, c.allowed),
        (2, 1, 1, 1)
    );
    g.set_mode(Mode::Enforce);
    assert_eq!(
        rejected(g.check(&PlainRequest::get("/x")).await).status(),
        401
    );
}

#[tokio::test]
async fn open_mode_from_env() {
    let builder = Guard::from_env("AUTH_CORE_TEST_SURELY_UNSET_VARIABLE").unwrap();
    let g = builder.build().unwrap();
    assert_eq!(g.mode(), Mode::Open);
    assert!(matches!(
        g.check(&PlainRequest::get("/admin")).await,
        Decision::Pass(PassReason::Open)
    ));
    assert_eq!(g.counts().passed, 1);
    let explicit = Guard::open();
    assert!(matches!(
        explicit
            .check(&PlainRequest::get("/x").header("x-api-key", "bad"))
            .await,
        Decision::Pass(PassReason::Open)
    ));
}

#[tokio::test]
async fn uninitialised_answers_503_until_ready() {
    let slot = Arc::new(Deferred::<StaticKey>::new());
    let g = Guard::builder(slot.clone())
        .mode(Mode::Uninitialised)
        .retry_after_not_ready(Duration::from_secs(2))
        .build()
        .unwrap();
    let r = rejected(g.check(&with_key("/x")).await);
    assert_eq!((r.status(), r.kind()), (503, RejectionKind::NotReady));
    assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
    // Health stays open while starting.
    assert!(matches!(
        g.check(&PlainRequest::get("/health")).await,
        Decision::Pass(_)
    ));
    slot.set(StaticKey::new(KEY).unwrap()).unwrap();
    assert!(matches!(g.check(&with_key("/x")).await, Decision::Allow(_)));
    assert_eq!(g.mode(), Mode::Enforce);
    assert_eq!(
        rejected(g.check(&PlainRequest::get("/x")).await).status(),
        401
    );
    assert_eq!(g.counts().not_ready, 1);
}

#[tokio::test]
async fn unavailable_verifier_is_503_never_allow() {
    let down = auth_core::verifier_fn(|_: &auth_core::Credential| Err(VerifyError::Unavailable));
    let g = Guard::builder(down).build().unwrap();
    let r = rejected(g.check(&with_key("/x")).await);
    assert_eq!((r.status(), r.kind()), (503, RejectionKind::Unavailable));
    assert_eq!(header(&r, "retry-after").as_deref(), Some("5"));
    assert_eq!(g.counts().unavailable, 1);
}

fn scoped_keys() -> KeySet {
    KeySet::new()
        .with_key("stt-key", Principal::new("a").with_scopes(["stt"]))
        .unwrap()
        .with_key("tts-key", Principal::new("b").with_scopes(["tts"]))
        .unwrap()
}

const STT_FORBIDDEN: &str = "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"stt\"";

/// A guard over a group of routes that requires a scope of every request.
#[tokio::test]
async fn a_guard_requiring_a_scope_answers_403_not_401() {
    let stt = Guard::builder(scoped_keys())
        .require_scope("stt")
        .build()
        .unwrap();
    assert_eq!(stt.required_scope(), Some("stt"));
    assert!(matches!(
        stt.check(&PlainRequest::get("/stt").header("x-api-key", "stt-key"))
            .await,
        Decision::Allow(_)
    ));
    let r = rejected(
        stt.check(&PlainRequest::get("/stt").header("x-api-key", "tts-key"))
            .await,
    );
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "www-authenticate").unwrap(), STT_FORBIDDEN);
    assert!(r.body().contains("\"scope\":\"stt\""), "{}", r.body());
    // No key on a scoped route is still 401, a wrong key still 401.
    assert_eq!(
        rejected(stt.check(&PlainRequest::get("/stt")).await).status(),
        401
    );
    assert_eq!(
        rejected(
            stt.check(&PlainRequest::get("/stt").header("x-api-key", "zzz"))
                .await
        )
        .status(),
        401
    );
    let c = stt.counts();
    assert_eq!((c.allowed, c.forbidden, c.missing, c.invalid), (1, 1, 1, 1));
    // Clones share the scope and the counters.
    let clone = stt.clone();
    assert_eq!(
        rejected(
            clone
                .check(&PlainRequest::get("/stt").header("x-api-key", "tts-key"))
                .await
        )
        .status(),
        403
    );
    assert_eq!(stt.counts().forbidden, 2, "clones share counters");
    assert!(
        Guard::builder(scoped_keys())
            .require_scope("bad\"scope")
            .build()
            .is_err()
    );
}

/// Per route: `route_scope(scope)?.check(Some(&admission))` on what the
/// guard let through.
#[tokio::test]
async fn a_route_scope_answers_403_not_401() {
    let g = Guard::builder(scoped_keys()).build().unwrap();
    let stt = g.route_scope("stt").unwrap();
    let admit = |key: &str| {
        let decision = g
            .check(&PlainRequest::get("/stt").header("x-api-key", key))
            .now()
            .expect("keys in memory decide at once");
        g.admit(decision)
    };
    let a = admit("stt-key").unwrap();
    assert!(matches!(a.admitted(), Admitted::Authenticated(p) if p.id() == "a"));
    assert!(stt.check(Some(&a)).is_ok());
    let b = admit("tts-key").unwrap();
    let r = stt.check(Some(&b)).unwrap_err();
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "www-authenticate").unwrap(), STT_FORBIDDEN);
    assert!(g.route_scope("tts").unwrap().check(Some(&b)).is_ok());
    // No key, or a wrong one: refused by the guard before any route, 401.
    for r in [admit("zzz").unwrap_err(), {
        let none = g.check(&PlainRequest::get("/stt")).now().unwrap();
        g.admit(none).unwrap_err()
    }] {
        assert_eq!(r.status(), 401);
    }
    // No admission at all (no guard ran): 401.
    assert_eq!(stt.check(None).unwrap_err().status(), 401);
    let c = g.counts();
    assert_eq!(
        (c.allowed, c.forbidden, c.invalid, c.missing),
        (2, 0, 1, 2),
        "the guard decided each request once"
    );
    assert_eq!(c.route_forbidden, 1, "the route's refusal, counted apart");
    assert!(g.route_scope("bad\"scope").is_err());
    assert!(g.route_scope("").is_err());
}

#[tokio::test]
async fn rate_limits_are_429_with_headers() {
    let clock = Arc::new(ManualClock::new());
    let keys = KeySet::new()
        .with_key(
            "limited",
            Principal::new("a").with_rate_limit(RateLimitPolicy::new(2, Duration::from_secs(60))),
        )
        .unwrap()
        .with_key("free", Principal::new("b"))
        .unwrap();
    let g = Guard::builder(keys)
        .rate_limiter(Arc::new(GcraLimiter::with_clock(clock.clone(), 100)))
        .build()
        .unwrap();
    let req = PlainRequest::get("/x").header("x-api-key", "limited");
    for remaining in ["1", "0"] {
        let decision = g.check(&req).await;
        let Decision::Allow(grant) = &decision else {
            panic!("refused under the limit")
        };
        assert_eq!(grant.rate().unwrap().remaining.to_string(), remaining);
        let headers = g.admit(decision).unwrap().headers();
        assert!(
            headers
                .iter()
                .any(|(n, v)| *n == "ratelimit" && v.contains(&format!("r={remaining}"))),
            "{headers:?}"
        );
    }
    let r = rejected(g.check(&req).await);
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("30"));
    assert_eq!(
        header(&r, "ratelimit-policy").as_deref(),
        Some("\"default\";q=2;w=60")
    );
    assert!(!r.headers().iter().any(|(_, v)| v.contains("limited")));
    // Others are not affected; time heals.
    for _ in 0..10 {
        assert!(matches!(
            g.check(&PlainRequest::get("/x").header("x-api-key", "free"))
                .await,
            Decision::Allow(_)
        ));
    }
    clock.advance(Duration::from_secs(30));
    assert!(matches!(g.check(&req).await, Decision::Allow(_)));
    assert_eq!(g.counts().limited, 1);
}

/// A limiter whose backend is down: it answers at once, or after waiting.
struct DownLimiter {
    waits: bool,
}

impl RateLimiter for DownLimiter {
    fn check(&self, _: &str, _: &RateLimitPolicy) -> Answer<RateDecision> {
        if self.waits {
            Answer::pending(async {
                tokio::task::yield_now().await;
                RateDecision::Unavailable
            })
        } else {
            Answer::Ready(RateDecision::Unavailable)
        }
    }
}

fn limited_by(limiter: DownLimiter) -> Guard {
    Guard::builder(StaticKey::new(KEY).unwrap())
        .default_rate_limit(RateLimitPolicy::new(10, Duration::from_secs(1)))
        .rate_limiter(Arc::new(limiter))
        .build()
        .unwrap()
}

#[tokio::test]
async fn limiter_down_fails_closed() {
    for waits in [false, true] {
        let g = limited_by(DownLimiter { waits });
        let r = rejected(g.check(&with_key("/x")).await);
        assert_eq!((r.status(), r.kind()), (503, RejectionKind::Unavailable));
        assert_eq!(g.counts().unavailable, 1);
    }
}

#[tokio::test]
async fn keyrings_keep_boundaries_apart() {
    let rings = Keyrings::new()
        .with("internal", StaticKey::new("trust-key").unwrap())
        .unwrap()
        .with(
            "hub",
            KeySet::new()
                .with_key("hub-key", Principal::new("fl-server"))
                .unwrap(),
        )
        .unwrap();
    let hub = rings.guard("hub").unwrap().build().unwrap();
    let internal = rings.guard("internal").unwrap().build().unwrap();
    let r = rejected(
        hub.check(&PlainRequest::get("/x").header("x-api-key", "trust-key"))
            .await,
    );
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate").unwrap(),
        "Bearer realm=\"hub\", error=\"invalid_token\""
    );
    assert!(matches!(
        internal
            .check(&PlainRequest::get("/x").header("x-api-key", "trust-key"))
            .await,
        Decision::Allow(_)
    ));
    // The same key in a key set of another ring is refused at start.
    let err = Keyrings::new()
        .with("internal", StaticKey::new("trust-key").unwrap())
        .unwrap()
        .with(
            "hub",
            KeySet::new()
                .with_key("other", Principal::new("x"))
                .unwrap()
                .with_key("trust-key", Principal::new("y"))
                .unwrap(),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("internal") && msg.contains("hub"), "{msg}");
    assert!(!msg.contains("trust-key"), "{msg}");
    assert!(rings.guard("nope").is_err());
    assert!(
        Keyrings::new()
            .with("a", StaticKey::new("1").unwrap())
            .unwrap()
            .with("a", StaticKey::new("2").unwrap())
            .is_err()
    );
}

#[tokio::test]
async fn custom_sources_and_bad_config() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .sources(
            auth_core::CredentialSources::default()
                .key_header("X-Service-Token")
                .bearer(false),
        )
        .realm("linker")
        .build()
        .unwrap();
    assert!(matches!(
        g.check(&PlainRequest::get("/p").header("x-service-token", KEY))
            .await,
        Decision::Allow(_)
    ));
    assert_eq!(
        rejected(g.check(&with_key("/p")).await).kind(),
        RejectionKind::Missing
    );
    assert!(
        Guard::builder(StaticKey::new(KEY).unwrap())
            .sources(
                auth_core::CredentialSources::default()
                    .no_key_header()
                    .bearer(false)
            )
            .build()
            .is_err()
    );
    assert!(
        Guard::builder(StaticKey::new(KEY).unwrap())
            .realm("a\"b")
            .build()
            .is_err()
    );
}

/// A verifier that must wait: its answer is always a future.
struct Waits;

impl Verifier for Waits {
    fn verify(&self, c: &Credential, _: &VerifyContext<'_>) -> Answer<VerifyResult> {
        let known = c.expose() == KEY.as_bytes();
        Answer::pending(async move {
            tokio::task::yield_now().await;
            if known {
                Ok(Arc::new(Principal::new("waited")))
            } else {
                Err(VerifyError::Invalid)
            }
        })
    }
}

/// In-memory keys decide at once (`Answer::Ready`) and awaiting gives the
/// same decision; a verifier or a limiter that waits gives `Pending`, which
/// counts nothing until it is awaited, and then counts once.
#[tokio::test]
async fn ready_when_nothing_waits_pending_otherwise_same_decision() {
    let g = guard();
    for req in [
        with_key("/x"),
        PlainRequest::get("/x"),
        PlainRequest::get("/x").header("x-api-key", "bad"),
        PlainRequest::get("/x")
            .header("x-api-key", KEY)
            .header("authorization", "Bearer other"),
        PlainRequest::get("/health"),
    ] {
        let answer = g.check(&req);
        assert!(answer.is_ready(), "{req:?}: in-memory keys answer at once");
        let now = answer.now().unwrap();
        let later = g.check(&req).await;
        assert_eq!(format!("{now:?}"), format!("{later:?}"));
    }

    let waits = Guard::builder(Waits).build().unwrap();
    let pending = waits.check(&with_key("/x"));
    assert!(!pending.is_ready());
    assert!(pending.now().is_none());
    assert_eq!(
        waits.counts(),
        DecisionCounts::default(),
        "a pending answer counted"
    );
    // Decisions that need no verifier still come at once.
    assert!(matches!(
        waits.check(&PlainRequest::get("/x")).now(),
        Some(Decision::Reject(_))
    ));
    assert!(matches!(
        waits.check(&PlainRequest::get("/health")).now(),
        Some(Decision::Pass(PassReason::PublicPath))
    ));
    // Awaited, the same decision as the in-memory key's.
    let pending = waits.check(&with_key("/x"));
    assert!(!pending.is_ready());
    let Decision::Allow(grant) = pending.await else {
        panic!("the waiting verifier's grant was lost")
    };
    assert_eq!(grant.principal().id(), "waited");
    let pending = waits.check(&PlainRequest::get("/x").header("x-api-key", "bad"));
    assert!(!pending.is_ready());
    assert_eq!(
        rejected(pending.await).kind(),
        RejectionKind::Invalid(VerifyError::Invalid)
    );
    let c = waits.counts();
    assert_eq!((c.allowed, c.invalid, c.missing, c.passed), (1, 1, 1, 1));

    // A limiter that must wait: no answer at once, and the request counted
    // once when awaited.
    let limited = limited_by(DownLimiter { waits: true });
    let pending = limited.check(&with_key("/x"));
    assert!(!pending.is_ready());
    assert_eq!(limited.counts(), DecisionCounts::default());
    assert_eq!(rejected(pending.await).status(), 503);
    assert_eq!(limited.counts().unavailable, 1);
    // The same limiter answering at once: ready.
    assert!(
        limited_by(DownLimiter { waits: false })
            .check(&with_key("/x"))
            .is_ready()
    );
}

/// A guard that reads only `X-Service-Token` asks for it: the 401 names it,
/// the challenge is `ApiKey` for that header, and a key sent any other way
/// is not read.
#[tokio::test]
async fn rejections_follow_the_guards_sources() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .sources(
            CredentialSources::default()
                .key_header("X-Service-Token")
                .bearer(false),
        )
        .build()
        .unwrap();
    const CHALLENGE: &str = "ApiKey realm=\"api\", header=\"X-Service-Token\"";
    const MESSAGE: &str = "authentication required: send X-Service-Token";

    let r = rejected(g.check(&PlainRequest::get("/p")).await);
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!(r.message(), MESSAGE);
    assert_eq!(header(&r, "www-authenticate").as_deref(), Some(CHALLENGE));
    let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(body["error"], "missing_credential");
    assert_eq!(body["message"], MESSAGE);

    // A valid key sent as a bearer token, or in X-Api-Key, is not read: 401,
    // with the same challenge.
    for req in [
        PlainRequest::get("/p").header("authorization", format!("Bearer {KEY}")),
        with_key("/p"),
    ] {
        let r = rejected(g.check(&req).await);
        assert_eq!(
            (r.status(), r.kind()),
            (401, RejectionKind::Missing),
            "{req:?}"
        );
        assert_eq!(header(&r, "www-authenticate").as_deref(), Some(CHALLENGE));
        assert_eq!(r.message(), MESSAGE);
    }
    // A wrong token: invalid_token, in the same scheme.
    let r = rejected(
        g.check(&PlainRequest::get("/p").header("x-service-token", "wrong"))
            .await,
    );
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("ApiKey realm=\"api\", header=\"X-Service-Token\", error=\"invalid_token\"")
    );
    // The token where the guard reads it.
    let d = g
        .check(&PlainRequest::get("/p").header("X-Service-Token", KEY))
        .await;
    assert_eq!(d.principal().unwrap().id(), "service");
    assert_eq!(g.counts().missing, 3);

    // The default guard names both of its sources, with a Bearer challenge.
    let r = rejected(guard().check(&PlainRequest::get("/p")).await);
    assert_eq!(
        r.message(),
        "authentication required: send X-Api-Key or Authorization: Bearer"
    );
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer realm=\"api\"")
    );
}

/// Handlers' extractors: a request no guard checked is 401 with the default
/// realm; one the guard let through without a caller is that guard's 401,
/// counted as missing.
#[tokio::test]
async fn authenticated_needs_an_authenticated_admission() {
    let r = Admission::authenticated(None).unwrap_err();
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer realm=\"api\"")
    );
    assert_eq!(
        r.message(),
        "authentication required: send X-Api-Key or Authorization: Bearer"
    );

    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .realm("linker")
        .sources(
            CredentialSources::default()
                .key_header("X-Service-Token")
                .bearer(false),
        )
        .build()
        .unwrap();
    let passed = g
        .admit(g.check(&PlainRequest::get("/health")).await)
        .unwrap();
    assert!(matches!(
        passed.admitted(),
        Admitted::Passed(PassReason::PublicPath)
    ));
    let before = g.counts();
    let r = Admission::authenticated(Some(&passed)).unwrap_err();
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("ApiKey realm=\"linker\", header=\"X-Service-Token\""),
        "the refusal is the guard's that let the request through"
    );
    // Counted once already, as passed: the extractor's refusal adds nothing.
    assert_eq!(g.counts(), before);

    // An authenticated admission gives its caller, and counts nothing.
    let allowed = g
        .admit(
            g.check(&PlainRequest::get("/p").header("x-service-token", KEY))
                .await,
        )
        .unwrap();
    let before = g.counts();
    assert_eq!(
        Admission::authenticated(Some(&allowed)).unwrap().id(),
        "service"
    );
    assert_eq!(g.counts(), before);
    assert!(allowed.guard().realm() == "linker" && allowed.passed().is_none());
}

/// The trap the `Fallback` docs warn of: a local `StaticKey` grants no scope
/// unless given one, so behind `require_scope` it would answer 403 exactly
/// when the primary is down. Given the scope, the local key is let in while
/// the primary is unavailable — whether the primary says so at once or
/// after waiting — and refused again once the primary decides.
#[tokio::test]
async fn a_scoped_local_fallback_lets_the_local_key_in_while_the_primary_is_down() {
    const LOCAL: &str = "local-fallback-key";
    let down_now = || verifier_fn(|_: &Credential| Err(VerifyError::Unavailable));
    let local = || {
        StaticKey::new(LOCAL)
            .unwrap()
            .principal(Principal::new("local").with_scopes(["stt"]))
    };
    let req = PlainRequest::get("/stt").header("x-api-key", LOCAL);

    let g = Guard::builder(Fallback::new(down_now(), local()))
        .require_scope("stt")
        .build()
        .unwrap();
    let d = g.check(&req).await;
    assert_eq!(d.principal().map(|p| p.id()), Some("local"), "{d:?}");
    // The same through a route scope on an unscoped guard.
    let g = Guard::builder(Fallback::new(down_now(), local()))
        .build()
        .unwrap();
    let admission = g.admit(g.check(&req).await).unwrap();
    assert!(
        g.route_scope("stt")
            .unwrap()
            .check(Some(&admission))
            .is_ok()
    );

    // A primary that waits, then is unavailable.
    struct DownLater;
    impl Verifier for DownLater {
        fn verify(&self, _: &Credential, _: &VerifyContext<'_>) -> Answer<VerifyResult> {
            Answer::pending(async {
                tokio::task::yield_now().await;
                Err(VerifyError::Unavailable)
            })
        }
    }
    let g = Guard::builder(Fallback::new(DownLater, local()))
        .require_scope("stt")
        .build()
        .unwrap();
    let answer = g.check(&req);
    assert!(!answer.is_ready());
    assert_eq!(answer.await.principal().unwrap().id(), "local");

    // The trap: the local key without the scope is refused 403.
    let unscoped = Guard::builder(Fallback::new(down_now(), StaticKey::new(LOCAL).unwrap()))
        .require_scope("stt")
        .build()
        .unwrap();
    assert_eq!(rejected(unscoped.check(&req).await).status(), 403);

    // The primary decides (here: no such key): the fallback is not asked.
    let up = verifier_fn(|_: &Credential| Err(VerifyError::Invalid));
    let g = Guard::builder(Fallback::new(up, local()))
        .require_scope("stt")
        .build()
        .unwrap();
    assert_eq!(
        rejected(g.check(&req).await).kind(),
        RejectionKind::Invalid(VerifyError::Invalid)
    );
}

/// A route's scope check trusts only what its own guard admitted: another
/// guard's pass (an open rollout guard) or another keyring's principal
/// holding the scope is a request this route's guard never checked.
#[tokio::test]
async fn a_route_scope_refuses_another_guards_admission() {
    let strict = Guard::builder(scoped_keys()).build().unwrap();
    let admin = strict.route_scope("stt").unwrap();
    // An open guard in front, the strict guard's layer forgotten.
    let open = Guard::from_env("AUTH_CORE_TEST_SURELY_UNSET_VARIABLE_2")
        .unwrap()
        .build()
        .unwrap();
    let passed = open
        .admit(open.check(&PlainRequest::get("/admin")).await)
        .unwrap();
    let r = admin.check(Some(&passed)).unwrap_err();
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    // Another keyring's principal that holds the scope.
    let other = Guard::builder(scoped_keys()).build().unwrap();
    let theirs = other
        .admit(
            other
                .check(&PlainRequest::get("/x").header("x-api-key", "stt-key"))
                .await,
        )
        .unwrap();
    assert!(theirs.principal().unwrap().has_scope("stt"));
    assert_eq!(admin.check(Some(&theirs)).unwrap_err().status(), 401);
    // The same principal through the route's own guard (or a clone) passes.
    let ours = strict
        .clone()
        .admit(
            strict
                .check(&PlainRequest::get("/x").header("x-api-key", "stt-key"))
                .await,
        )
        .unwrap();
    assert!(admin.check(Some(&ours)).is_ok());
    assert!(strict.admitted(Some(&theirs)).is_err());
    assert!(strict.admitted(Some(&ours)).is_ok());
}

/// Names no variable can have read as unset; they must not mean open mode.
#[test]
fn from_env_refuses_names_that_cannot_be_variables() {
    for bad in ["", "TOKEN=abc", "A\0B"] {
        assert!(
            matches!(Guard::from_env(bad), Err(auth_core::Error::Config(_))),
            "{bad:?}"
        );
    }
}

/// Sources that could never accept a key are refused when the guard is
/// built, not found out as a 400 on every request.
#[test]
fn sources_that_refuse_every_key_are_refused_at_build() {
    let build = |sources: CredentialSources| {
        Guard::builder(StaticKey::new(KEY).unwrap())
            .sources(sources)
            .build()
    };
    assert!(build(CredentialSources::default().key_headers(["X-Token", "x-token"])).is_err());
    assert!(build(CredentialSources::default().key_header("Authorization")).is_err());
    // Read as a key header once bearer is off: fine.
    assert!(
        build(
            CredentialSources::default()
                .key_header("Authorization")
                .bearer(false)
        )
        .is_ok()
    );
    assert!(build(CredentialSources::default().key_header("bad header")).is_err());
}
