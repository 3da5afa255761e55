//! The guard tells its verifier about grants it refused afterwards.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::{
    Answer, CacheConfig, Cached, Credential, Decision, Deferred, Digest, Fallback, FormatChecked,
    Guard, KeySet, Mode, PlainRequest, Principal, RateLimitPolicy, RefusedAfter, Verifier,
    VerifyContext, VerifyError, VerifyResult, verifier_fn,
};

/// Keys in memory, recording every `refused_after`.
#[derive(Clone)]
struct Recording {
    keys: Arc<KeySet>,
    told: Arc<Mutex<Vec<(Digest, String, RefusedAfter)>>>,
}

impl Recording {
    fn new() -> Self {
        let keys = KeySet::new()
            .with_key("plain", Principal::new("plain").with_scopes(["read"]))
            .unwrap()
            .with_key(
                "limited",
                Principal::new("limited")
                    .with_scopes(["read"])
                    .with_rate_limit(RateLimitPolicy::new(1, Duration::from_secs(3600))),
            )
            .unwrap();
        Self {
            keys: Arc::new(keys),
            told: Arc::default(),
        }
    }

    fn told(&self) -> Vec<(Digest, String, RefusedAfter)> {
        std::mem::take(&mut *self.told.lock())
    }
}

impl Verifier for Recording {
    fn verify(&self, credential: &Credential, ctx: &VerifyContext<'_>) -> Answer<VerifyResult> {
        self.keys.verify(credential, ctx)
    }

    fn refused_after(&self, digest: &Digest, principal: &Arc<Principal>, why: RefusedAfter) {
        self.told
            .lock()
            .push((*digest, principal.id().to_owned(), why));
    }
}

fn request(key: &str) -> PlainRequest {
    PlainRequest::get("/items").header("x-api-key", key)
}

fn decide(guard: &Guard, key: &str) -> Decision {
    guard.check(&request(key)).now().expect("decided at once")
}

#[test]
fn the_verifier_is_told_of_grants_refused_afterwards_only_when_refused() {
    let rec = Recording::new();
    let guard = Guard::builder(rec.clone()).build().unwrap();
    let route = guard.route_scope("write").unwrap();

    // A plain grant, and a route whose scope the key has: nothing.
    let admission = guard.admit(decide(&guard, "plain")).unwrap();
    assert!(
        guard
            .route_scope("read")
            .unwrap()
            .check(Some(&admission))
            .is_ok()
    );
    assert!(rec.told().is_empty());
    // Refusals before a grant (unknown key, no key) tell nothing either.
    assert!(decide(&guard, "unknown").rejection().is_some());
    assert!(rec.told().is_empty());

    // Over the rate limit: the second request.
    assert!(matches!(decide(&guard, "limited"), Decision::Allow(_)));
    let limited = decide(&guard, "limited");
    assert_eq!(limited.rejection().unwrap().status(), 429);
    let limited_digest = Digest::of(b"limited");
    assert_eq!(
        rec.told(),
        [(
            limited_digest,
            "limited".to_owned(),
            RefusedAfter::RateLimited
        )]
    );

    // A route's scope the key lacks.
    assert_eq!(route.check(Some(&admission)).unwrap_err().status(), 403);
    assert_eq!(
        rec.told(),
        [(
            Digest::of(b"plain"),
            "plain".to_owned(),
            RefusedAfter::InsufficientScope
        )]
    );

    // The guard's own scope.
    let scoped = Guard::builder(rec.clone())
        .require_scope("write")
        .build()
        .unwrap();
    assert_eq!(decide(&scoped, "plain").rejection().unwrap().status(), 403);
    assert_eq!(
        rec.told(),
        [(
            Digest::of(b"plain"),
            "plain".to_owned(),
            RefusedAfter::InsufficientScope
        )]
    );

    // Report-only: the same three let through, nothing told.
    for g in [&guard, &scoped] {
        g.set_mode(Mode::ReportOnly);
    }
    assert!(matches!(decide(&guard, "limited"), Decision::Pass(_)));
    assert!(matches!(decide(&scoped, "plain"), Decision::Pass(_)));
    let admission = guard.admit(decide(&guard, "plain")).unwrap();
    assert!(route.check(Some(&admission)).is_ok());
    assert!(rec.told().is_empty());
}

#[test]
fn combinators_forward_it_to_what_they_wrap() {
    let rec = Recording::new();
    let down = verifier_fn(|_: &Credential| Err(VerifyError::Unavailable));
    let deferred = Deferred::new();
    deferred.set(rec.clone()).ok().unwrap();
    let format = crate::ApiKeyFormat::new("sk_live_", 128).unwrap();
    let wrapped: Vec<(&str, Arc<dyn Verifier>, usize)> = vec![
        ("Arc", Arc::new(Arc::new(rec.clone())), 1),
        (
            "Cached",
            Arc::new(Cached::new(rec.clone(), CacheConfig::default())),
            1,
        ),
        (
            "Fallback, primary",
            Arc::new(Fallback::new(rec.clone(), down.clone())),
            1,
        ),
        (
            "Fallback, fallback",
            Arc::new(Fallback::new(down, rec.clone())),
            1,
        ),
        (
            "Fallback, both",
            Arc::new(Fallback::new(rec.clone(), rec.clone())),
            2,
        ),
        (
            "FormatChecked",
            Arc::new(FormatChecked::new(rec.clone(), format)),
            1,
        ),
        ("Deferred", Arc::new(deferred), 1),
        ("Deferred, empty", Arc::new(Deferred::<Recording>::new()), 0),
    ];
    let principal = Arc::new(Principal::new("plain"));
    for (name, verifier, times) in wrapped {
        verifier.refused_after(&Digest::of(b"plain"), &principal, RefusedAfter::RateLimited);
        assert_eq!(rec.told().len(), times, "{name}");
    }
    // A grant the cache holds answers requests the wrapped verifier never
    // saw: not forwarded (its replicas and copies neither).
    let cached = Arc::new(Cached::new(rec.clone(), CacheConfig::default()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let granted = rt
        .block_on(cached.verify(&Credential::new("plain"), &VerifyContext::default()))
        .unwrap();
    for p in [granted.clone(), Arc::new(Principal::clone(&granted))] {
        cached.refused_after(&Digest::of(b"plain"), &p, RefusedAfter::RateLimited);
    }
    // Through the guard's hits too.
    let guard = Guard::builder(cached.clone())
        .require_scope("write")
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(decide(&guard, "plain").rejection().unwrap().status(), 403);
    }
    assert!(rec.told().is_empty());
    // Another principal for the digest (not the one held) is forwarded.
    cached.refused_after(&Digest::of(b"plain"), &principal, RefusedAfter::RateLimited);
    assert_eq!(rec.told().len(), 1);

    // Through a guard: the guard's verifier is an `Arc<dyn Verifier>`.
    let guard = Guard::builder(Fallback::new(rec.clone(), rec.clone()))
        .require_scope("write")
        .build()
        .unwrap();
    assert_eq!(decide(&guard, "plain").rejection().unwrap().status(), 403);
    assert_eq!(rec.told().len(), 2);
}
