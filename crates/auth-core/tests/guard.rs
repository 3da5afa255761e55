//! The guard's whole decision, end to end through `Guard::check`.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use auth_core::{
    Decision, Deferred, ExtractError, GcraLimiter, Guard, KeySet, Keyrings, ManualClock, Mode,
    PassReason, PlainRequest, Principal, PublicPaths, RateDecision, RateLimitPolicy, RateLimiter,
    Rejection, RejectionKind, StaticKey, VerifyError,
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
    let scoped = g.with_scope("admin").unwrap();
    let r = rejected(scoped.check(&preflight).await);
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
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

    // The same 401 as a request that was never authenticated, counted as
    // missing.
    let missing_before = g.counts().missing;
    let r = g.route_scope(None, Some(reason), "admin").unwrap_err();
    assert_eq!((r.status(), r.kind()), (401, RejectionKind::Missing));
    assert_eq!(g.route_scope(None, None, "admin").unwrap_err(), r);
    let admin = g.scope_for_route("admin").unwrap();
    assert_eq!(admin.check(None, Some(reason)).unwrap_err(), r);
    assert_eq!(g.counts().missing, missing_before + 3);

    // The other reasons to pass keep needing no scope.
    for other in [
        PassReason::PublicPath,
        PassReason::Open,
        PassReason::ReportOnly(RejectionKind::Missing),
    ] {
        assert!(
            g.route_scope(None, Some(other), "admin").is_ok(),
            "{other:?}"
        );
    }

    // The mode still decides: report-only logs and counts, open lets through.
    g.set_mode(Mode::ReportOnly);
    let report_only_before = g.counts().report_only;
    assert!(admin.check(None, Some(reason)).is_ok());
    assert_eq!(g.counts().report_only, report_only_before + 1);
    g.set_mode(Mode::Open);
    assert!(admin.check(None, Some(reason)).is_ok());
    g.set_mode(Mode::Enforce);
    assert_eq!(admin.check(None, Some(reason)).unwrap_err().status(), 401);
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
    let g = Guard::from_env("AUTH_CORE_TEST_SURELY_UNSET_VARIABLE").unwrap();
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

#[tokio::test]
async fn scopes_are_403_not_401() {
    let keys = KeySet::new()
        .with_key("stt-key", Principal::new("a").with_scopes(["stt"]))
        .unwrap()
        .with_key("tts-key", Principal::new("b").with_scopes(["tts"]))
        .unwrap();
    let g = Guard::builder(keys).build().unwrap();
    let stt = g.with_scope("stt").unwrap();
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
    assert_eq!(
        header(&r, "www-authenticate").unwrap(),
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"stt\""
    );
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
    assert_eq!(g.counts().forbidden, 1, "clones share counters");
    // The check for extractors gives the same answer.
    let p = Principal::new("x").with_scopes(["tts"]);
    assert_eq!(g.check_scope(&p, "stt").unwrap_err().status(), 403);
    assert!(g.check_scope(&p, "tts").is_ok());
    assert!(g.with_scope("bad\"scope").is_err());
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
        let Decision::Allow(grant) = g.check(&req).await else {
            panic!("refused under the limit")
        };
        let headers = grant.headers();
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

struct DownLimiter;

#[async_trait]
impl RateLimiter for DownLimiter {
    async fn check(&self, _: &str, _: &RateLimitPolicy) -> RateDecision {
        RateDecision::Unavailable
    }
}

#[tokio::test]
async fn limiter_down_fails_closed() {
    let g = Guard::builder(StaticKey::new(KEY).unwrap())
        .default_rate_limit(RateLimitPolicy::new(10, Duration::from_secs(1)))
        .rate_limiter(Arc::new(DownLimiter))
        .build()
        .unwrap();
    assert_eq!(rejected(g.check(&with_key("/x")).await).status(), 503);
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

/// A verifier that must wait (no `verify_now`).
struct Waits;

#[async_trait]
impl auth_core::Verifier for Waits {
    async fn verify(
        &self,
        c: &auth_core::Credential,
        _: &auth_core::VerifyContext<'_>,
    ) -> auth_core::VerifyResult {
        tokio::task::yield_now().await;
        if c.expose() == KEY.as_bytes() {
            Ok(Arc::new(Principal::new("waited")))
        } else {
            Err(VerifyError::Invalid)
        }
    }
}

#[tokio::test]
async fn check_now_answers_only_without_waiting_and_agrees_with_check() {
    let g = guard();
    for req in [
        with_key("/x"),
        PlainRequest::get("/x"),
        PlainRequest::get("/x").header("x-api-key", "bad"),
        PlainRequest::get("/health"),
    ] {
        let now = g.check_now(&req).expect("in-memory keys answer at once");
        let later = g.check(&req).await;
        assert_eq!(format!("{now:?}"), format!("{later:?}"));
    }
    let waits = Guard::builder(Waits).build().unwrap();
    assert!(waits.check_now(&with_key("/x")).is_none());
    assert_eq!(
        waits.counts(),
        auth_core::DecisionCounts::default(),
        "a None counted"
    );
    // Decisions that need no verifier still come at once.
    assert!(matches!(
        waits.check_now(&PlainRequest::get("/x")),
        Some(Decision::Reject(_))
    ));
    assert!(matches!(
        waits.check(&with_key("/x")).await,
        Decision::Allow(_)
    ));
    // A limiter that must wait: no answer at once, the request not counted twice.
    let limited = Guard::builder(StaticKey::new(KEY).unwrap())
        .default_rate_limit(RateLimitPolicy::new(1, Duration::from_secs(60)))
        .rate_limiter(Arc::new(DownLimiter))
        .build()
        .unwrap();
    assert!(limited.check_now(&with_key("/x")).is_none());
}
