//! `SqlKeyStore` on a temporary SQLite file and on the local PostgreSQL
//! (`AUTH_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! each test in a schema of its own).
#![allow(unused_crate_dependencies)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use auth_core::{
    CacheConfig, Cached, Credential, Decision, Guard, HashedKeyStore, PlainRequest,
    RateLimitPolicy, Verifier, VerifyContext, VerifyError,
};
use auth_sqlx::{Error, NewKey, SqlKeyStore};

use auth_sqlx::testing::{database_url as pg_base, postgres_schema as pg_schema, schema_of};

/// A store on a fresh SQLite file.
async fn sqlite() -> (SqlKeyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = SqlKeyStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

async fn postgres(test: &str) -> SqlKeyStore {
    let store = SqlKeyStore::connect(&pg_schema(test).await).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn verify(v: &impl Verifier, key: &str) -> Result<Arc<auth_core::Principal>, VerifyError> {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
}

/// Every admin operation, and what verification makes of it.
async fn every_operation(store: SqlKeyStore) {
    let v = HashedKeyStore::new(store.clone());
    let created = store
        .create(NewKey {
            owner: "svc-a".into(),
            scopes: vec!["stt".into(), "tts".into()],
            rate_limit: Some(RateLimitPolicy::new(60, Duration::from_secs(60))),
            expires_at: None,
        })
        .await
        .unwrap();
    let key = created.key.expose().to_owned();
    assert!(key.starts_with("sk_live_"));
    assert!(created.info.prefix.starts_with("sk_live_"));
    let p = verify(&v, &key).await.unwrap();
    assert_eq!(p.id(), "svc-a");
    assert!(p.has_scope("stt") && p.has_scope("tts"));
    assert_eq!(p.rate_limit().unwrap().requests, 60);

    // Listing shows neither the key nor its digest.
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let shown = format!("{listed:?}{created:?}{store:?}");
    assert!(!shown.contains(&key));
    assert!(!shown.contains(&created.key.digest().to_hex()));

    let id = created.info.id.clone();
    assert!(store.set_scopes(&id, &["stt".into()]).await.unwrap());
    let p = verify(&v, &key).await.unwrap();
    assert!(p.has_scope("stt") && !p.has_scope("tts"));
    assert!(store.set_rate_limit(&id, None).await.unwrap());
    assert!(verify(&v, &key).await.unwrap().rate_limit().is_none());
    let past = SystemTime::now() - Duration::from_secs(10);
    assert!(store.set_expiry(&id, Some(past)).await.unwrap());
    assert_eq!(verify(&v, &key).await.unwrap_err(), VerifyError::Expired);
    assert!(store.set_expiry(&id, None).await.unwrap());
    assert!(verify(&v, &key).await.is_ok());

    // Bad input changes nothing.
    for bad in [
        store.set_scopes(&id, &["two words".into()]).await,
        store
            .set_rate_limit(
                &id,
                Some(RateLimitPolicy {
                    requests: 0,
                    window: Duration::from_secs(60),
                }),
            )
            .await,
        store
            .set_rate_limit(
                &id,
                Some(RateLimitPolicy::new(5, Duration::from_millis(500))),
            )
            .await,
    ] {
        assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
    }
    assert!(matches!(
        store.create(NewKey::default()).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(store.get(&id).await.unwrap().unwrap().scopes, vec!["stt"]);
    assert!(!store.set_scopes("no-such-id", &[]).await.unwrap());

    // Rotation: both valid during the overlap, the old one expiring then.
    let rotated = store
        .rotate(&id, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    let new_key = rotated.key.expose().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(verify(&v, &new_key).await.unwrap().id(), "svc-a");
    assert!(verify(&v, &key).await.is_ok());
    let old = store.get(&id).await.unwrap().unwrap();
    let ends = old.expires_at.unwrap();
    assert!(ends > SystemTime::now() + Duration::from_secs(3500));

    // Last use, written in a batch.
    assert!(store.flush_last_used().await.unwrap() >= 1);
    assert!(
        store
            .get(&id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
    );

    assert!(store.disable(&id).await.unwrap());
    assert_eq!(verify(&v, &key).await.unwrap_err(), VerifyError::Disabled);
    assert!(store.delete(&id).await.unwrap());
    assert_eq!(verify(&v, &key).await.unwrap_err(), VerifyError::Invalid);
    assert!(store.get(&id).await.unwrap().is_none());
    assert!(!store.delete(&id).await.unwrap());
}

#[tokio::test]
async fn every_operation_on_sqlite() {
    let (store, _dir) = sqlite().await;
    every_operation(store).await;
}

#[tokio::test]
async fn every_operation_on_postgres() {
    every_operation(postgres("ops").await).await;
}

/// A key for `svc` with no scopes, limit or expiry.
async fn plain_key(store: &SqlKeyStore) -> auth_sqlx::CreatedKey {
    store
        .create(NewKey {
            owner: "svc".into(),
            ..NewKey::default()
        })
        .await
        .unwrap()
}

/// A cached verifier kept in step with `store`.
fn cached(store: &SqlKeyStore) -> Arc<Cached<HashedKeyStore<SqlKeyStore>>> {
    let cached = Arc::new(Cached::new(
        HashedKeyStore::new(store.clone()),
        CacheConfig::default(),
    ));
    store.invalidate_on_change(cached.clone());
    cached
}

/// Polls until `key` is refused by `v`; the time it took.
async fn refused_within(v: &impl Verifier, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if verify(v, key).await.is_err() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sqlite_writes_invalidate_the_local_cache() {
    let (store, _dir) = sqlite().await;
    let v = cached(&store);
    let created = plain_key(&store).await;
    let key = created.key.expose();
    assert!(verify(&*v, key).await.is_ok());
    assert!(verify(&*v, key).await.is_ok(), "a cache hit");
    store.disable(&created.info.id).await.unwrap();
    refused_within(&*v, key, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_reaches_another_within_a_second() {
    let url = pg_schema("notify").await;
    let a = SqlKeyStore::connect(&url).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqlKeyStore::connect(&url).await.unwrap();
    b.listen().await.unwrap().expect("a listener on PostgreSQL");
    let on_b = cached(&b);
    let created = plain_key(&a).await;
    let key = created.key.expose();
    assert!(verify(&*on_b, key).await.is_ok());
    // B now answers from its cache (default TTL: a minute).
    a.disable(&created.info.id).await.unwrap();
    let took = refused_within(&*on_b, key, Duration::from_secs(1)).await;
    println!("revocation reached the other instance in {took:?}");
}

#[tokio::test]
async fn store_errors_are_503_never_allow() {
    let (store, _dir) = sqlite().await;
    let created = plain_key(&store).await;
    let guard = Guard::builder(HashedKeyStore::new(store.clone()))
        .build()
        .unwrap();
    let req = PlainRequest::get("/api").header("x-api-key", created.key.expose());
    assert!(matches!(guard.check(&req).await, Decision::Allow(_)));
    store.close().await;
    match guard.check(&req).await {
        Decision::Reject(r) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_fail_closed_and_recover() {
    let url = pg_schema("terminate").await;
    let store = SqlKeyStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut changes = store.subscribe();
    store.listen().await.unwrap().unwrap();
    let created = plain_key(&store).await;
    let key = created.key.expose().to_owned();
    let guard = Guard::builder(HashedKeyStore::new(store.clone()))
        .build()
        .unwrap();
    let wrong = PlainRequest::get("/api").header("x-api-key", "sk_live_not_a_key");
    let right = PlainRequest::get("/api").header("x-api-key", &key);
    assert!(matches!(guard.check(&right).await, Decision::Allow(_)));
    while changes.try_recv().is_ok() {}

    // Every connection of this test's store (pool and listener), killed;
    // other tests' connections are left alone.
    let admin = SqlKeyStore::connect(&pg_base()).await.unwrap();
    admin
        .execute_raw(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}'",
            schema_of(&url)
        ))
        .await
        .unwrap();
    // Meanwhile: never a grant for a wrong key, never anything but 200/401/503.
    let start = Instant::now();
    let mut recovered = false;
    while start.elapsed() < Duration::from_secs(10) {
        match guard.check(&wrong).await {
            Decision::Allow(_) => panic!("a wrong key was let in"),
            Decision::Reject(r) => assert!(matches!(r.status(), 401 | 503), "{}", r.status()),
            Decision::Pass(p) => panic!("passed: {p:?}"),
        }
        match guard.check(&right).await {
            Decision::Allow(_) => {
                recovered = true;
                break;
            }
            Decision::Reject(r) => assert_eq!(r.status(), 503),
            Decision::Pass(p) => panic!("passed: {p:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the store did not recover by itself");
    // The listener lost its connection: caches were told to clear.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(auth_sqlx::Change::All) = changes.try_recv() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Change::All after the listener's connection dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
