//! Usage counts (issue 16): `RemoteVerifier` counts the decisions it makes
//! without a call of its own and reports them to the test double of the
//! key service (`common::double`), served by axum on 127.0.0.1 (a free
//! port), over real HTTP.
#![allow(unused_crate_dependencies)]

mod common;
use common::Captured;
use common::double::{
    CREDITED, DISABLED, EXPIRED, GOOD, LIMITED, Mode, Reports, SERVICE_HEADER, SERVICE_TOKEN,
    THROTTLED, UNKNOWN, started,
};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use auth_core::prometheus::{Metrics, prometheus_client};
use auth_core::protocol::UsageCounts;
use auth_core::{
    CacheConfig, Cached, Credential, Decision, Digest, Fallback, Guard, PlainRequest, Verifier,
    VerifyContext, VerifyError,
};
use auth_remote::RemoteVerifier;

fn counts(valid: i64) -> UsageCounts {
    UsageCounts {
        valid,
        ..UsageCounts::default()
    }
}

/// A verifier reporting only when told (an hour between reports).
fn remote(addr: SocketAddr) -> auth_remote::RemoteVerifierBuilder {
    RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(SERVICE_HEADER, SERVICE_TOKEN)
        .timeout(Duration::from_millis(300))
        .changes_stream(false)
        .usage_reports(Some(Duration::from_secs(3600)))
}

async fn verify(v: &RemoteVerifier, key: &str) -> Result<Arc<auth_core::Principal>, VerifyError> {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
}

async fn through(guard: &Guard, key: &str) -> Decision {
    guard
        .check(&PlainRequest::get("/items").header("x-api-key", key))
        .await
}

/// The verifier's exported metrics.
fn scrape(v: &RemoteVerifier) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    Metrics::register(&mut registry).add(v.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

fn assert_metrics(v: &RemoteVerifier, reported: u64, full: u64, failed: u64) {
    assert_all_metrics(v, reported, full, failed, 0);
}

fn assert_all_metrics(v: &RemoteVerifier, reported: u64, full: u64, failed: u64, skipped: u64) {
    let text = scrape(v);
    for line in [
        format!("auth_remote_usage_reported_total {reported}"),
        format!(r#"auth_remote_usage_lost_total{{reason="full"}} {full}"#),
        format!(r#"auth_remote_usage_lost_total{{reason="failed"}} {failed}"#),
        format!(r#"auth_remote_usage_lost_total{{reason="skipped"}} {skipped}"#),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

/// Waits (5 s at most) until `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls a future once.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

/// One call, nine cache hits: the service counted the call, the report
/// says valid 9. Cached denials are counted by kind; an unknown key is not
/// counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_exactly_the_decisions_made_here() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    for _ in 0..10 {
        verify(&v, GOOD).await.unwrap();
    }
    for (key, error) in [
        (DISABLED, VerifyError::Disabled),
        (EXPIRED, VerifyError::Expired),
        (UNKNOWN, VerifyError::Invalid),
    ] {
        for _ in 0..5 {
            assert_eq!(verify(&v, key).await.unwrap_err(), error);
        }
    }
    assert_eq!(double.calls(), 4, "one call per key");
    assert_eq!(double.attempts(), 0, "nothing reported before the interval");
    v.report_usage().await;
    assert_eq!(double.attempts(), 1, "one request for the batch");
    assert_eq!(double.totals(GOOD), counts(9));
    assert_eq!(
        double.totals(DISABLED),
        UsageCounts {
            disabled: 4,
            ..UsageCounts::default()
        }
    );
    assert_eq!(
        double.totals(EXPIRED),
        UsageCounts {
            expired: 4,
            ..UsageCounts::default()
        }
    );
    assert!(
        double.totals(UNKNOWN).is_empty(),
        "unknown keys are not counted"
    );
    assert_eq!(double.entries(), 3);
    assert_metrics(&v, 17, 0, 0);
    // Nothing pending: no request.
    v.report_usage().await;
    assert_eq!(double.attempts(), 1);
}

/// Leased credits are spent here: each is a decision made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_spent_from_a_lease_are_counted_as_valid() {
    let (double, addr) = started().await;
    // CREDITED has no credits until given some.
    double.credit(1_000, 60_000);
    let v = remote(addr).credit_leases(50).build().unwrap();
    for _ in 0..10 {
        verify(&v, CREDITED).await.unwrap();
    }
    assert_eq!(double.calls(), 1, "nine credits spent from the lease");
    v.report_usage().await;
    assert_eq!(double.totals(CREDITED), counts(9));
}

/// The guard refusing a grant afterwards moves its count: a rate-limited
/// request and a route's missing scope. A grant the service itself
/// answered `insufficient_scope` for moves nothing (counted there).
/// Report-only mode refuses nothing, so moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_after_a_grant_move_one_from_valid() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    let guard = Guard::builder(v.clone()).build().unwrap();
    // Two a hour: a call, a hit, then a hit the limit refuses.
    assert!(matches!(through(&guard, LIMITED).await, Decision::Allow(_)));
    assert!(matches!(through(&guard, LIMITED).await, Decision::Allow(_)));
    let refused = through(&guard, LIMITED).await;
    assert_eq!(refused.rejection().unwrap().status(), 429);
    // A route whose scope the key lacks: a hit, refused there.
    verify(&v, GOOD).await.unwrap();
    let admin = guard.route_scope("admin").unwrap();
    let admission = guard.admit(through(&guard, GOOD).await).unwrap();
    assert_eq!(admin.check(Some(&admission)).unwrap_err().status(), 403);
    v.report_usage().await;
    assert_eq!(
        double.totals(LIMITED),
        UsageCounts {
            valid: 1,
            rate_limited: 1,
            ..UsageCounts::default()
        }
    );
    assert_eq!(
        double.totals(GOOD),
        UsageCounts {
            insufficient_scope: 1,
            ..UsageCounts::default()
        },
        "the route's refusal moved the hit"
    );

    // The guard's own scope, not in the cache: the service answers
    // insufficient_scope and counts it; the guard's refusal moves nothing.
    let scoped_v = remote(addr).build().unwrap();
    let scoped = Guard::builder(scoped_v.clone())
        .require_scope("admin")
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            through(&scoped, GOOD).await.rejection().unwrap().status(),
            403
        );
    }
    let attempts = double.attempts();
    scoped_v.report_usage().await;
    assert_eq!(double.attempts(), attempts, "nothing decided here");
    // Cached, the grant is this verifier's answer: refused, it moves.
    verify(&scoped_v, GOOD).await.unwrap();
    assert_eq!(
        through(&scoped, GOOD).await.rejection().unwrap().status(),
        403
    );
    double.taken.lock().clear();
    scoped_v.report_usage().await;
    assert_eq!(
        double.totals(GOOD),
        UsageCounts {
            insufficient_scope: 1,
            ..UsageCounts::default()
        }
    );

    // A grant of the service's, refused: valid may go negative.
    let fresh = remote(addr).build().unwrap();
    let fresh_guard = Guard::builder(fresh.clone()).build().unwrap();
    let admission = fresh_guard
        .admit(through(&fresh_guard, GOOD).await)
        .unwrap();
    assert_eq!(
        fresh_guard
            .route_scope("admin")
            .unwrap()
            .check(Some(&admission))
            .unwrap_err()
            .status(),
        403
    );
    double.taken.lock().clear();
    fresh.report_usage().await;
    assert_eq!(
        double.totals(GOOD),
        UsageCounts {
            valid: -1,
            insufficient_scope: 1,
            ..UsageCounts::default()
        }
    );

    // Report-only: let through, nothing moved.
    double.taken.lock().clear();
    guard.set_mode(auth_core::Mode::ReportOnly);
    assert!(matches!(through(&guard, LIMITED).await, Decision::Pass(_)));
    let admission = guard.admit(through(&guard, GOOD).await).unwrap();
    assert!(admin.check(Some(&admission)).is_ok());
    v.report_usage().await;
    assert_eq!(double.totals(LIMITED), counts(1));
    assert_eq!(double.totals(GOOD), counts(1));
}

/// Callers joined on another caller's call take its answer: each is a
/// decision made here. The caller whose call it was is counted by the
/// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_callers_are_counted_here_and_the_call_there() {
    let (double, addr) = started().await;
    double.set(Mode::Sluggish);
    let v = remote(addr).build().unwrap();
    let guard = Guard::builder(v.clone())
        .require_scope("admin")
        .build()
        .unwrap();
    let at_once = |key: &'static str, scoped: bool| {
        let (v, guard) = (v.clone(), guard.clone());
        async move {
            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let (v, guard) = (v.clone(), guard.clone());
                    tokio::spawn(async move {
                        if scoped {
                            through(&guard, key).await.rejection().unwrap().status()
                        } else {
                            match verify(&v, key).await {
                                Ok(_) => 200,
                                Err(_) => 401,
                            }
                        }
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for t in tasks {
                statuses.push(t.await.unwrap());
            }
            statuses
        }
    };
    // Calls made for one key's five callers (late arrivals find a cached
    // answer, or, for answers never cached, call again: counted there).
    let calls = |before: usize| (double.calls() - before) as u64;
    let before = double.calls();
    assert_eq!(at_once(GOOD, false).await, [200; 5]);
    assert_eq!(at_once(DISABLED, false).await, [401; 5]);
    assert_eq!(calls(before), 2, "one call for each key");
    let before = double.calls();
    assert_eq!(at_once(THROTTLED, false).await, [401; 5]);
    let throttled_calls = calls(before);
    let before = double.calls();
    assert_eq!(at_once(UNKNOWN, true).await, [401; 5]);
    assert_eq!(calls(before), 1);
    // Refused for the guard's scope, which the service checked.
    let before = double.calls();
    assert_eq!(at_once(LIMITED, true).await, [403; 5]);
    let scope_calls = calls(before);
    v.report_usage().await;
    assert_eq!(double.totals(GOOD), counts(4));
    assert_eq!(double.totals(DISABLED).disabled, 4);
    assert_eq!(double.totals(THROTTLED).rate_limited, 5 - throttled_calls);
    assert!(double.totals(UNKNOWN).is_empty());
    let limited = double.totals(LIMITED);
    assert_eq!(
        (limited.valid, limited.insufficient_scope),
        (0, 5 - scope_calls),
        "{limited:?}, {scope_calls} calls"
    );
    assert!(scope_calls < 5 && throttled_calls < 5, "nobody joined");
}

/// A report the service did not take — its own 503 (`{"error":
/// "unavailable"}`: its pending counts are full), a 429 (which it never
/// answers to a report: a proxy's, before forwarding) — goes with the next
/// one, merged: counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_not_taken_goes_with_the_next_one() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    verify(&v, GOOD).await.unwrap();
    let mut expected = 0;
    for reports in [Reports::Busy, Reports::Status(429)] {
        double.set_reports(reports);
        for _ in 0..3 {
            verify(&v, GOOD).await.unwrap();
        }
        expected += 3;
        v.report_usage().await;
        assert!(double.taken.lock().is_empty());
        assert_metrics(&v, 0, 0, 0);
    }
    assert_eq!(double.attempts(), 2);
    double.set_reports(Reports::Accept);
    verify(&v, GOOD).await.unwrap();
    expected += 1;
    v.report_usage().await;
    assert_eq!(double.attempts(), 3);
    assert_eq!(double.entries(), 1, "merged into one entry");
    assert_eq!(double.totals(GOOD), counts(expected));
    assert_metrics(&v, 7, 0, 0);
}

/// A report that may have arrived — a timeout, any other answer, a 503
/// that is not the key service's own (a proxy may answer it after
/// forwarding) — is dropped and counted lost: never sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_may_have_arrived_is_never_sent_again() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    verify(&v, GOOD).await.unwrap();
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap();
    }
    // Taken, answered after the timeout.
    double.set_reports(Reports::Slow);
    v.report_usage().await;
    assert_eq!(double.totals(GOOD), counts(3), "it did arrive");
    assert_metrics(&v, 0, 0, 3);
    // Refused outright: dropped too.
    let mut lost = 3;
    for status in [400, 401, 500, 503] {
        double.set_reports(Reports::Status(status));
        verify(&v, GOOD).await.unwrap();
        v.report_usage().await;
        lost += 1;
        assert_metrics(&v, 0, 0, lost);
    }
    double.set_reports(Reports::Accept);
    verify(&v, GOOD).await.unwrap();
    v.report_usage().await;
    assert_eq!(
        double.totals(GOOD),
        counts(4),
        "3 once, then 1: nothing resent"
    );
    assert_eq!(double.attempts(), 6);
    assert_metrics(&v, 1, 0, 7);
}

/// Reports go out on their own every interval; a verifier that goes
/// sends what is left in a last report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_go_out_every_interval_and_when_the_verifier_goes() {
    let (double, addr) = started().await;
    // The shortest interval there is.
    let v = remote(addr)
        .usage_reports(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap();
    }
    eventually("reported", || double.totals(GOOD) == counts(2)).await;
    verify(&v, GOOD).await.unwrap();
    eventually("reported again", || double.totals(GOOD) == counts(3)).await;

    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap();
    }
    drop(v);
    eventually("the last report", || double.totals(GOOD) == counts(2)).await;
}

/// `None`: nothing counted, nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_off_sends_nothing() {
    let (double, addr) = started().await;
    let v = remote(addr).usage_reports(None).build().unwrap();
    let guard = Guard::builder(v.clone()).build().unwrap();
    for _ in 0..3 {
        verify(&v, GOOD).await.unwrap();
        through(&guard, LIMITED).await;
    }
    v.report_usage().await;
    assert_metrics(&v, 0, 0, 0);
    drop((v, guard));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(double.attempts(), 0);
}

/// An interval outside 1 s – 1 h is a configuration error (as in
/// `AUTH_REMOTE_USAGE_EVERY`): a nanosecond would send a report at every
/// turn of the runtime.
#[test]
fn usage_intervals_outside_a_second_to_an_hour_are_refused() {
    let hour = Duration::from_secs(3600);
    for (every, ok) in [
        (Duration::ZERO, false),
        (Duration::from_nanos(1), false),
        (Duration::from_millis(999), false),
        (Duration::from_secs(1), true),
        (Duration::from_secs(10), true),
        (hour, true),
        (hour + Duration::from_nanos(1), false),
        (Duration::MAX, false),
    ] {
        let built = RemoteVerifier::builder("http://127.0.0.1:1")
            .changes_stream(false)
            .usage_reports(Some(every))
            .build();
        match built {
            Ok(_) => assert!(ok, "{every:?} accepted"),
            Err(e) => {
                assert!(!ok, "{every:?}: {e}");
                assert!(e.to_string().contains("usage reports"), "{e}");
            }
        }
    }
}

/// Entries the key service skipped (hours outside its window, by its
/// clock: its `accepted` is less than the entries sent) are counted lost,
/// not reported, and never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_the_service_skipped_are_counted_lost_not_reported() {
    let (double, addr) = started().await;
    let v = remote(addr).build().unwrap();
    for _ in 0..4 {
        verify(&v, GOOD).await.unwrap();
    }
    double.set_reports(Reports::Skip(1));
    v.report_usage().await;
    assert_eq!(double.entries(), 1, "it arrived");
    assert_all_metrics(&v, 0, 0, 0, 3);
    double.set_reports(Reports::Accept);
    verify(&v, GOOD).await.unwrap();
    v.report_usage().await;
    assert_eq!(double.attempts(), 2);
    assert_eq!(
        double.totals(GOOD),
        counts(4),
        "3 taken (and skipped), then 1"
    );
    assert_all_metrics(&v, 1, 0, 0, 3);
}

/// Each `RemoteVerifier` moves the counts of its own grants only: behind a
/// `Fallback` of two, the refusal of one's grant is told to both, and only
/// the one that granted moves it. Behind a `Cached`, whose hits the
/// verifier never sees, nothing is moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_verifier_that_granted_moves_the_count() {
    let (double, addr) = started().await;
    let (a, b) = (remote(addr).build().unwrap(), remote(addr).build().unwrap());
    // Both hold a grant for the key.
    verify(&a, GOOD).await.unwrap();
    verify(&b, GOOD).await.unwrap();
    let guard = Guard::builder(Fallback::new(a.clone(), b.clone()))
        .build()
        .unwrap();
    let admin = guard.route_scope("admin").unwrap();
    // `a` answers (a hit), the route refuses.
    let admission = guard.admit(through(&guard, GOOD).await).unwrap();
    assert_eq!(admin.check(Some(&admission)).unwrap_err().status(), 403);
    b.report_usage().await;
    assert_eq!(double.attempts(), 0, "nothing decided at b");
    a.report_usage().await;
    assert_eq!(
        double.totals(GOOD),
        UsageCounts {
            insufficient_scope: 1,
            ..UsageCounts::default()
        }
    );

    // Behind a cache of its own: the first request is the verifier's call
    // (counted by the service), the rest the outer cache's hits (counted
    // nowhere); refusals move nothing.
    let c = remote(addr).build().unwrap();
    let guard = Guard::builder(Cached::new(c.clone(), CacheConfig::default()))
        .build()
        .unwrap();
    let admin = guard.route_scope("admin").unwrap();
    for _ in 0..3 {
        let admission = guard.admit(through(&guard, GOOD).await).unwrap();
        assert_eq!(admin.check(Some(&admission)).unwrap_err().status(), 403);
    }
    let attempts = double.attempts();
    c.report_usage().await;
    assert_eq!(double.attempts(), attempts, "nothing moved");
}

/// However many grants answered `insufficient_scope` are alive at once,
/// the guard refusing one moves nothing (the service counted it so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_answered_insufficient_scope_never_move() {
    let (double, addr) = started().await;
    let v = remote(addr).upstream_budget(0).build().unwrap();
    let ctx = VerifyContext {
        path: "/items",
        required_scope: Some("admin"),
    };
    let cred = Credential::new(GOOD);
    let mut held = Vec::new();
    for _ in 0..1_100 {
        held.push(v.verify(&cred, &ctx).await.unwrap());
    }
    assert_eq!(double.calls(), 1_100, "never cached");
    let guard = Guard::builder(v.clone())
        .require_scope("admin")
        .build()
        .unwrap();
    assert_eq!(
        through(&guard, GOOD).await.rejection().unwrap().status(),
        403
    );
    v.report_usage().await;
    assert_eq!(double.attempts(), 0, "nothing decided here");
    assert!(held.iter().all(|p| p.scopes().is_empty()));
}

/// A `verify` future dropped while it waits counts nothing: neither a
/// caller joined on another's call, nor the caller whose call it was
/// (the service counts the call, which runs on; the caller it was handed
/// to is counted once, here or there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_verify_counts_nothing() {
    let (double, addr) = started().await;
    double.set(Mode::Sluggish);
    let v = remote(addr).build().unwrap();
    let ctx = VerifyContext::default();
    let cred = Credential::new(GOOD);
    let mut owner = v.verify(&cred, &ctx);
    let mut joined = v.verify(&cred, &ctx);
    assert!(poll_once(&mut owner).await.is_pending());
    assert!(poll_once(&mut joined).await.is_pending());
    drop(joined);
    owner.await.unwrap();
    v.report_usage().await;
    assert_eq!(double.attempts(), 0, "nothing decided here");

    // The owner goes: the call is handed to the one left.
    let v = remote(addr).build().unwrap();
    let before = double.calls();
    let mut owner = v.verify(&cred, &ctx);
    let mut joined = v.verify(&cred, &ctx);
    assert!(poll_once(&mut owner).await.is_pending());
    assert!(poll_once(&mut joined).await.is_pending());
    drop(owner);
    joined.await.unwrap();
    v.report_usage().await;
    let calls = double.calls() - before;
    let here = double.totals(GOOD).valid;
    assert_eq!(
        calls as i64 + here,
        2,
        "the dropped call counted there, the one left once ({calls} calls, {here} here)"
    );
    assert_metrics(&v, here as u64, 0, 0);
}

/// No key, digest or service credential in logs or `Debug` — failed
/// reports included (the report's body carries digests, by design; the
/// log lines about it do not).
#[tokio::test(flavor = "current_thread")]
async fn no_key_or_digest_in_logs_or_debug() {
    let logs = Captured::start();
    let mut seen = String::new();
    let (double, addr) = started().await;
    let builder = remote(addr);
    seen.push_str(&format!("{builder:?}"));
    let v = builder.build().unwrap();
    let guard = Guard::builder(v.clone()).build().unwrap();
    for key in [GOOD, GOOD, LIMITED, LIMITED, LIMITED, UNKNOWN] {
        let decision = through(&guard, key).await;
        seen.push_str(&format!("{decision:?}"));
    }
    for reports in [
        Reports::Status(400),
        Reports::Status(503),
        Reports::Slow,
        Reports::Accept,
    ] {
        double.set_reports(reports);
        through(&guard, GOOD).await;
        v.report_usage().await;
    }
    assert_eq!(double.attempts(), 4);
    let text = logs.text();
    assert!(logs.count("WARN", "usage report failed") == 1, "{text}");
    assert!(text.contains("denied: rate limited"), "{text}");
    seen.push_str(&format!("{v:?}{}", scrape(&v)));
    for secret in [GOOD, LIMITED, UNKNOWN, SERVICE_TOKEN] {
        let digest = Digest::of(secret.as_bytes()).to_hex();
        for (what, text) in [("logs", &text), ("Debug or metrics", &seen)] {
            assert!(!text.contains(secret), "a secret in the {what}");
            assert!(!text.contains(&digest), "a digest in the {what}");
        }
    }
    // The reports carried the digests, and only them.
    assert!(double.totals(GOOD).valid > 0);
}

#[test]
fn the_usage_interval_from_env_is_range_checked() {
    for (raw, ok) in [
        ("10", true),
        ("1", true),
        ("3600", true),
        ("2.5", true),
        ("off", true),
        ("OFF", true),
        ("0", true),
        ("0.5", false),
        ("3601", false),
        ("-1", false),
        ("soon", false),
        ("NaN", false),
        ("", false),
    ] {
        let env = |name: &str| match name {
            "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
            "AUTH_REMOTE_URL" => Some("http://127.0.0.1:1".to_owned()),
            "AUTH_REMOTE_USAGE_EVERY" => Some(raw.to_owned()),
            _ => None,
        };
        match RemoteVerifier::from_lookup(env) {
            Ok(builder) => {
                assert!(ok, "{raw} accepted");
                let shown = format!("{:?}", builder.unwrap());
                let off = matches!(raw, "off" | "OFF" | "0");
                assert_eq!(shown.contains("usage_every: None"), off, "{raw}: {shown}");
            }
            Err(e) => {
                assert!(!ok, "{raw}: {e}");
                assert!(e.to_string().contains("AUTH_REMOTE_USAGE_EVERY"), "{e}");
            }
        }
    }
}
