//! `Fallback`'s outage logging, captured with `tracing`. A test binary with
//! this one test, on a current-thread runtime: while only one subscriber
//! exists, `tracing` caches a callsite's interest from the default
//! subscriber of whichever thread reaches it first, so a parallel test (with
//! none) reaching the same callsites could hide these events. Keep it alone.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use auth_core::{
    Answer, Credential, Fallback, KeySet, Principal, Verifier, VerifyContext, VerifyError,
    VerifyResult,
};

mod common;
use common::Logs;

async fn verify(v: &impl Verifier, key: &str) -> VerifyResult {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
}

/// A primary that asks its backend (its answers are futures), except while
/// `instant` is set: then it answers at once, as a cache hit does.
#[derive(Clone, Default)]
struct Primary {
    up: Arc<AtomicBool>,
    instant: Arc<AtomicBool>,
}

impl Verifier for Primary {
    fn verify(&self, _: &Credential, _: &VerifyContext<'_>) -> Answer<VerifyResult> {
        let up = Arc::clone(&self.up);
        let answer = move || {
            if up.load(Ordering::SeqCst) {
                Ok(Arc::new(Principal::new("primary")))
            } else {
                Err(VerifyError::Unavailable)
            }
        };
        if self.instant.load(Ordering::SeqCst) {
            Answer::Ready(answer())
        } else {
            Answer::pending(async move {
                tokio::task::yield_now().await;
                answer()
            })
        }
    }
}

/// An outage is logged once when it starts and once when it ends, however
/// many requests it lasts; the requests in between are counted.
#[tokio::test]
async fn fallback_logs_an_outage_once_and_counts_it() {
    const DOWN: &str = "primary verifier unavailable; asking the fallback";
    const BACK: &str = "primary verifier answering again";
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .without_time()
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let primary = Primary::default();
    let (up, instant) = (primary.up.clone(), primary.instant.clone());
    let local = KeySet::new()
        .with_key("k", Principal::new("local"))
        .unwrap();
    let v = Fallback::new(primary, local);
    assert!(!v.primary_down());

    for _ in 0..100 {
        assert_eq!(verify(&v, "k").await.unwrap().id(), "local");
    }
    assert_eq!(logs.count("WARN", DOWN), 1, "an outage warned per request");
    assert_eq!(v.fallbacks(), 100);
    assert!(v.primary_down());
    assert_eq!(logs.count("INFO", BACK), 0);

    up.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(verify(&v, "k").await.unwrap().id(), "primary");
    }
    assert_eq!(
        logs.count("INFO", BACK),
        1,
        "the recovery was not logged once"
    );
    assert_eq!(
        logs.count(BACK, "fallbacks=100"),
        1,
        "the recovery did not report the outage's count"
    );
    assert!(!v.primary_down());
    assert_eq!(v.fallbacks(), 100, "the fallback was asked while up");

    // A second outage warns again. Answers the primary gives at once (its
    // cache hits: `Answer::Ready`) neither end it nor log: mixed with
    // requests that fail, they would log every request.
    up.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(verify(&v, "k").await.unwrap().id(), "local");
    }
    assert_eq!(logs.count("WARN", DOWN), 2);
    assert_eq!(v.fallbacks(), 105);
    for _ in 0..10 {
        up.store(true, Ordering::SeqCst);
        instant.store(true, Ordering::SeqCst);
        let now = v
            .verify(&Credential::new("k"), &VerifyContext::default())
            .now();
        assert_eq!(now.unwrap().unwrap().id(), "primary");
        instant.store(false, Ordering::SeqCst);
        up.store(false, Ordering::SeqCst);
        assert_eq!(verify(&v, "k").await.unwrap().id(), "local");
    }
    assert!(v.primary_down());
    assert_eq!(
        logs.count("INFO", BACK),
        1,
        "instant answers ended an outage"
    );
    assert_eq!(
        logs.count("WARN", DOWN),
        2,
        "instant answers flapped the logs"
    );
    assert_eq!(v.fallbacks(), 115);
    up.store(true, Ordering::SeqCst);
    assert_eq!(verify(&v, "k").await.unwrap().id(), "primary");
    assert!(!v.primary_down());
    assert_eq!(logs.count("INFO", BACK), 2);
}
