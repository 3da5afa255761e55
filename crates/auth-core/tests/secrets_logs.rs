//! No secret in logs, `Debug` output or bodies.
//!
//! A test binary with this one test: `tracing` caches each callsite's
//! interest the first time any thread reaches it. While one subscriber
//! exists, that is decided by the reaching thread's default; a parallel test
//! thread without a subscriber that reaches `auth_core`'s callsites first
//! caches "never" for them, and this capture would silently see nothing
//! (cargo's threaded runner did exactly that). Alone in its process, with a
//! current-thread runtime, every callsite is first reached here, after the
//! subscriber is installed. Keep it alone.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use auth_core::{
    ApiKey, CacheConfig, Cached, Decision, Digest, Guard, HashedKeyStore, KeyFile, KeyRecord,
    KeySet, MemoryKeyStore, Mode, PlainRequest, Principal, RateLimitPolicy, StaticKey,
};

mod common;
use common::Logs;

fn assert_secret_free(text: &str, secret: &str) {
    assert!(!text.contains(secret), "secret leaked into:\n{text}");
    let full_digest = Digest::of(secret.as_bytes()).to_hex();
    assert!(
        !text.contains(&full_digest),
        "full digest leaked into:\n{text}"
    );
}

#[test]
fn logs_and_debug_never_carry_the_key() {
    let captured = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // The only test of this binary, and everything it logs is logged on
    // this thread (a current-thread runtime): no other thread can reach a
    // callsite first and cache "no interest" for it.
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_file = KeyFile::builder()
        .path(dir.path().join(".api_key"))
        .env_var(None)
        .load_or_create()
        .unwrap();
    let file_key = std::fs::read_to_string(key_file.path()).unwrap();
    key_file.rotate().unwrap();
    let rotated_away = file_key.clone();
    let file_key = std::fs::read_to_string(key_file.path()).unwrap();

    let api_key = ApiKey::generate().unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    let mut record = KeyRecord::new("k1", api_key.digest(), "svc");
    record.rate_limit = Some(RateLimitPolicy::new(1, std::time::Duration::from_secs(60)));
    store.insert(record);
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    let set = KeySet::new()
        .with_key("set-member-secret", Principal::new("m"))
        .unwrap();
    let static_key = StaticKey::new("static-secret-value").unwrap();

    let mut debug = String::new();
    debug.push_str(&format!(
        "{key_file:?}{api_key:?}{cached:?}{set:?}{static_key:?}{store:?}"
    ));

    let secrets = [
        file_key.as_str(),
        api_key.expose(),
        "set-member-secret",
        "static-secret-value",
        "wrong-guess-secret",
    ];
    let guards = [
        Guard::builder(key_file).build().unwrap(),
        Guard::builder(cached).build().unwrap(),
        Guard::builder(set).build().unwrap(),
        Guard::builder(static_key).build().unwrap(),
        Guard::builder(StaticKey::new("x").unwrap())
            .mode(Mode::ReportOnly)
            .build()
            .unwrap(),
    ];
    for guard in &guards {
        for secret in secrets {
            for req in [
                PlainRequest::get("/x").header("x-api-key", secret),
                PlainRequest::get("/x").header("authorization", format!("Bearer {secret}")),
                PlainRequest::get("/x")
                    .header("x-api-key", secret)
                    .header("authorization", "Bearer other"),
                PlainRequest::get("/x").header("x-api-key", format!("{secret} ")),
            ] {
                // Twice: the second hits caches and rate limits.
                for _ in 0..2 {
                    let decision = rt.block_on(guard.check(&req));
                    debug.push_str(&format!("{decision:?}{req:?}"));
                    match &decision {
                        Decision::Reject(r) => {
                            debug.push_str(&r.body());
                            debug.push_str(&format!("{r}{:?}", r.headers()));
                        }
                        Decision::Allow(_) | Decision::Pass(_) => {
                            let admission = guard.admit(decision.clone()).unwrap();
                            debug.push_str(&format!("{admission:?}{:?}", admission.headers()));
                        }
                    }
                }
            }
        }
        debug.push_str(&format!("{guard:?}{:?}", guard.counts()));
    }
    let logs = captured.text();
    assert!(logs.contains("denied"), "the capture saw no deny event");
    assert!(logs.contains("allowed"), "the capture saw no allow event");
    assert!(
        logs.contains(&Digest::of(api_key.expose().as_bytes()).fingerprint()),
        "logs should carry the fingerprint"
    );
    for secret in secrets.iter().chain([&rotated_away.as_str()]) {
        assert_secret_free(&logs, secret);
        assert_secret_free(&debug, secret);
    }
}
