//! `SqlKeyStore` on a temporary SQLite file and on the local PostgreSQL
//! (`AUTH_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! each test in a schema of its own).
#![allow(unused_crate_dependencies)]

mod common;
use common::{postgres, postgres_pair, sqlite};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_core::cache::{Cache, CacheEntry};
use auth_core::{
    CacheConfig, Cached, Credential, Decision, Digest, Guard, HashedKeyStore, PlainRequest,
    RateLimitPolicy, Verifier, VerifyContext, VerifyError,
};
use auth_sqlx::{
    CREDITS_LABEL, Credits, Error, LEASE_TTL, LeaseGrant, NewKey, Refill, Spend, SqlKeyStore,
};

use auth_sqlx::testing::{
    database_url as pg_base, execute_raw, postgres_schema as pg_schema, schema_of,
};

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
            credits: None,
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
    // A key is never set to be born expired; one that expires, expires.
    let past = SystemTime::now() - Duration::from_secs(10);
    assert!(matches!(
        store.set_expiry(&id, Some(past)).await,
        Err(Error::Invalid(_))
    ));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let soon = UNIX_EPOCH + Duration::from_secs(now.as_secs() + 2);
    assert!(store.set_expiry(&id, Some(soon)).await.unwrap());
    while SystemTime::now() <= soon {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
fn cached(store: &SqlKeyStore) -> Arc<SqlCache> {
    let cached = Arc::new(Cached::new(
        HashedKeyStore::new(store.clone()),
        CacheConfig::default(),
    ));
    store.invalidate_on_change(cached.clone());
    cached
}

type SqlCache = Cached<HashedKeyStore<SqlKeyStore>>;

/// Whether `v`'s cache holds a grant for `key`.
fn granted(v: &SqlCache, key: &str) -> bool {
    matches!(
        v.cache().get(Credential::new(key).digest()),
        Some(CacheEntry::Granted(_))
    )
}

/// Polls until `v`'s cache no longer holds its grant for `key` — dropped
/// by the store's invalidation, not by a verification (none is made
/// meanwhile; a hit re-checked against the database would refuse at once) —
/// then checks that `key` is refused; the time the drop took.
async fn dropped_within(v: &SqlCache, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while granted(v, key) {
        assert!(start.elapsed() < limit, "still cached after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    assert!(verify(v, key).await.is_err(), "accepted after the drop");
    took
}

#[tokio::test]
async fn sqlite_writes_invalidate_the_local_cache() {
    let (store, _dir) = sqlite().await;
    let v = cached(&store);
    let created = plain_key(&store).await;
    let key = created.key.expose();
    assert!(verify(&*v, key).await.is_ok());
    assert!(granted(&v, key));
    assert!(verify(&*v, key).await.is_ok(), "a cache hit");
    store.disable(&created.info.id).await.unwrap();
    // Dropped before `disable` returned.
    assert!(!granted(&v, key));
    dropped_within(&v, key, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_instance_reaches_another_within_a_second() {
    let (a, b) = postgres_pair("notify").await;
    b.listen().await.unwrap();
    let on_b = cached(&b);
    let created = plain_key(&a).await;
    let key = created.key.expose();
    assert!(verify(&*on_b, key).await.is_ok());
    // B now holds the grant in its cache (default TTL: a minute).
    assert!(granted(&on_b, key));
    a.disable(&created.info.id).await.unwrap();
    let took = dropped_within(&on_b, key, Duration::from_secs(1)).await;
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
    store.listen().await.unwrap();
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
    execute_raw(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}'",
            schema_of(&url)
        ),
    )
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
    // The listener lost its connection: nothing is cleared, and a write
    // made by another process after it is still heard, from the log.
    let other = SqlKeyStore::connect(&url).await.unwrap();
    let second = plain_key(&other).await;
    while changes.try_recv().is_ok() {}
    other.disable(&second.info.id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match changes.try_recv() {
            Ok(auth_sqlx::Change::Key(d)) if d == second.key.digest() => break,
            Ok(auth_sqlx::Change::All) => panic!("a cleared cache instead of the change"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the write was not heard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 13, item 5: a write committed while the listener is reconnecting
/// is not lost (the log is read after `LISTEN` is issued again), so a
/// cached grant does not survive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_the_listener_reconnects_is_not_lost() {
    let url = pg_schema("relisten").await;
    let a = SqlKeyStore::connect(&url).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqlKeyStore::connect(&url).await.unwrap();
    b.listen().await.unwrap();
    let on_b = cached(&b);
    let admin = SqlKeyStore::connect(&pg_base()).await.unwrap();
    for round in 0..5 {
        let created = plain_key(&a).await;
        let key = created.key.expose();
        assert!(verify(&*on_b, key).await.is_ok());
        // Only B's listening connection (its last statement was LISTEN).
        execute_raw(
            &admin,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}' AND query ILIKE 'listen%'",
                schema_of(&url)
            ),
        )
        .await
        .unwrap();
        // Refilled after the drop, then revoked before LISTEN is back.
        assert!(verify(&*on_b, key).await.is_ok());
        a.disable(&created.info.id).await.unwrap();
        let took = dropped_within(&on_b, key, Duration::from_secs(1)).await;
        println!("round {round}: refused after {took:?}");
    }
}

/// Issue 13, item 4: on SQLite, a write by another process (another pool on
/// the same file, as the CLI is) reaches a running server's cache within a
/// second, and its log readers in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sees_other_processes_writes_within_a_second() {
    let (server, dir) = sqlite().await;
    server.listen().await.unwrap();
    let mut logged = server.logged();
    let v = cached(&server);
    let cli = SqlKeyStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("keys.db").display()
    ))
    .await
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = plain_key(&cli).await;
        assert!(verify(&*v, created.key.expose()).await.is_ok());
        ids.push(created);
    }
    for created in &ids {
        cli.disable(&created.info.id).await.unwrap();
    }
    for created in &ids {
        let took = dropped_within(&v, created.key.expose(), Duration::from_secs(1)).await;
        println!("refused {took:?} after the other process's write");
    }
    // The log, in commit order, with consecutive numbers.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(2), logged.recv()).await {
            Ok(Ok(auth_sqlx::Logged::Key { seq, digest })) => seen.push((seq, digest)),
            other => panic!("expected a logged change, got {other:?}"),
        }
    }
    let digests: Vec<_> = ids.iter().map(|c| c.key.digest()).collect();
    assert_eq!(seen.iter().map(|(_, d)| *d).collect::<Vec<_>>(), digests);
    assert_eq!(seen[1].0, seen[0].0 + 1);
    assert_eq!(seen[2].0, seen[1].0 + 1);
    assert_eq!(server.latest_seq().await.unwrap(), seen[2].0);
    let replay = server.changes_since(seen[0].0, 10).await.unwrap();
    assert_eq!(replay, seen[1..].to_vec());
}

/// Issue 13, item 3: a cached grant never outlives its key's expiry.
#[tokio::test]
async fn a_cached_grant_never_outlives_its_key() {
    let (store, _dir) = sqlite().await;
    let v = cached(&store);
    // Stored in whole seconds: two seconds after the next whole one.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(now.as_secs() + 2);
    let created = store
        .create(NewKey {
            owner: "svc".into(),
            expires_at: Some(at),
            ..NewKey::default()
        })
        .await
        .unwrap();
    let key = created.key.expose();
    let p = verify(&*v, key).await.unwrap();
    assert_eq!(p.expires_at(), Some(at));
    assert!(verify(&*v, key).await.is_ok(), "a cache hit");
    while SystemTime::now() <= at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(verify(&*v, key).await.unwrap_err(), VerifyError::Expired);
}

/// Service credentials and client keys are found only as their own kind.
async fn kinds_stay_apart(store: SqlKeyStore) {
    let clients = HashedKeyStore::new(store.clone());
    let services = HashedKeyStore::new(store.services());
    let service = store.services().create("svc-stt").await.unwrap();
    let token = service.key.expose().to_owned();
    assert!(token.starts_with("sk_svc_") && service.info.id.starts_with("svc_"));
    let client = plain_key(&store).await;
    let key = client.key.expose().to_owned();

    assert_eq!(verify(&services, &token).await.unwrap().id(), "svc-stt");
    assert_eq!(
        verify(&clients, &token).await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(
        verify(&services, &key).await.unwrap_err(),
        VerifyError::Invalid
    );
    assert!(verify(&clients, &key).await.is_ok());

    // Each kind's operations touch only their own rows.
    let sid = service.info.id.clone();
    assert!(store.get(&sid).await.unwrap().is_none());
    assert!(!store.disable(&sid).await.unwrap());
    assert!(!store.delete(&sid).await.unwrap());
    assert!(store.rotate(&sid, Duration::ZERO).await.unwrap().is_none());
    assert!(
        store
            .services()
            .get(&client.info.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.services().disable(&client.info.id).await.unwrap());
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert_eq!(store.services().list().await.unwrap().len(), 1);
    assert!(matches!(
        store.services().create("bad\u{1b}[2J").await,
        Err(Error::Invalid(_))
    ));

    let rotated = store
        .services()
        .rotate(&sid, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(verify(&services, rotated.key.expose()).await.is_ok());
    assert!(verify(&services, &token).await.is_ok(), "the overlap");
    assert!(store.services().disable(&sid).await.unwrap());
    assert_eq!(
        verify(&services, &token).await.unwrap_err(),
        VerifyError::Disabled
    );
    assert!(matches!(
        store
            .services()
            .rotate(&sid, Duration::from_secs(366 * 86_400))
            .await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        store.services().list().await.unwrap().len(),
        2,
        "nothing written"
    );
}

#[tokio::test]
async fn kinds_stay_apart_on_sqlite() {
    let (store, _dir) = sqlite().await;
    kinds_stay_apart(store).await;
}

#[tokio::test]
async fn kinds_stay_apart_on_postgres() {
    kinds_stay_apart(postgres("kinds").await).await;
}

/// A database made before service credentials were a kind: its rows with
/// the `keys:validate` scope become service credentials.
#[tokio::test]
async fn keys_validate_rows_are_migrated_to_service_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
    // Only the first migration, as an older release left the database.
    let first = tempfile::tempdir().unwrap();
    let name = "20261124000001_auth_keys.sql";
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(name),
        first.path().join(name),
    )
    .unwrap();
    {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(first.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        for (id, digest, scopes) in [
            ("key_old_service", "a".repeat(64), "keys:validate"),
            ("key_old_both", "b".repeat(64), "stt keys:validate"),
            ("key_old_client", "c".repeat(64), "stt"),
            ("key_look_alike", "d".repeat(64), "keys:validated"),
            ("key_other_case", "e".repeat(64), "stt KEYS:VALIDATE"),
        ] {
            sqlx::query(
                "INSERT INTO auth_keys (id, prefix, digest, owner, scopes, created_at) \
                 VALUES ($1, 'sk_live_x', $2, 'o', $3, 1)",
            )
            .bind(id)
            .bind(digest)
            .bind(scopes)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = SqlKeyStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut services: Vec<String> = store
        .services()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    services.sort();
    assert_eq!(services, ["key_old_both", "key_old_service"]);
    let mut clients: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        ["key_look_alike", "key_old_client", "key_other_case"]
    );
}

/// Review of issue 13: a store's own caches hear of a change before anyone
/// else can — before the write call returns, and before a log reader (the
/// changes stream) is told of another process's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_hear_of_a_change_before_anyone_else() {
    let (server, dir) = sqlite().await;
    server.listen().await.unwrap();
    let v = cached(&server);
    for _ in 0..20 {
        let created = plain_key(&server).await;
        assert!(verify(&*v, created.key.expose()).await.is_ok());
        assert!(granted(&v, created.key.expose()));
        server.disable(&created.info.id).await.unwrap();
        // No yield between: the invalidation was synchronous.
        assert!(!granted(&v, created.key.expose()));
        assert_eq!(
            verify(&*v, created.key.expose()).await.unwrap_err(),
            VerifyError::Disabled
        );
    }
    let other = SqlKeyStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("keys.db").display()
    ))
    .await
    .unwrap();
    let mut logged = server.logged();
    for _ in 0..5 {
        let created = plain_key(&other).await;
        assert!(verify(&*v, created.key.expose()).await.is_ok());
        other.disable(&created.info.id).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), logged.recv()).await {
                Ok(Ok(auth_sqlx::Logged::Key { digest, seq }))
                    if digest == created.key.digest() =>
                {
                    assert_eq!(server.applied_seq(), seq);
                    break;
                }
                Ok(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(
            !granted(&v, created.key.expose()),
            "told of the change while the cache still granted it"
        );
        // Nor does an answer at once grant it.
        assert!(
            v.verify(
                &Credential::new(created.key.expose()),
                &VerifyContext::default()
            )
            .now()
            .is_none_or(|answer| answer.is_err()),
        );
    }
}

const DAY: u64 = 86_400;

/// Credits of `remaining`, refilled to `amount` every `every` seconds.
fn credits(remaining: u64, refill: Option<(u64, u64)>) -> Option<Credits> {
    Some(Credits {
        remaining,
        refill: refill.map(|(amount, every)| Refill {
            amount,
            every: Duration::from_secs(every),
        }),
    })
}

async fn key_with(store: &SqlKeyStore, credits: Option<Credits>) -> auth_sqlx::CreatedKey {
    store
        .create(NewKey {
            owner: "svc".into(),
            credits,
            ..NewKey::default()
        })
        .await
        .unwrap()
}

fn spent(remaining: u64) -> Spend {
    Spend::Spent { remaining }
}

fn exceeded(retry_after: Option<u64>) -> Spend {
    Spend::Exceeded {
        retry_after: retry_after.map(Duration::from_secs),
    }
}

/// Issue 16: refills computed from the stored period start and `now`
/// (injected), spends that never go below zero, credits set, removed and
/// moved by a rotation, and their ranges checked before anything is written.
async fn credits_refill_from_time(store: SqlKeyStore) {
    let created = key_with(&store, credits(1000, Some((1000, DAY)))).await;
    let id = created.info.id.clone();
    let digest = created.key.digest();
    let c = created.info.credits.unwrap();
    assert_eq!((c.remaining, c.refill.unwrap().amount), (1000, 1000));
    let t0 = c.period_start;
    let at = |s: u64| t0 + Duration::from_secs(s);
    let spend = |cost: u32, now| {
        let store = store.clone();
        async move { store.spend(&digest, cost, now).await.unwrap() }
    };

    // Spent down to 0 within the first day; never below.
    assert_eq!(spend(600, at(10)).await, spent(400));
    assert_eq!(spend(401, at(10)).await, exceeded(Some(DAY - 10)));
    assert_eq!(spend(400, at(20)).await, spent(0));
    assert_eq!(spend(1, at(DAY - 1)).await, exceeded(Some(1)));
    // Cost 0 never exceeds: it reports.
    assert_eq!(spend(0, at(DAY - 1)).await, spent(0));
    // At the boundary: set to the amount (not added to), minus the cost.
    assert_eq!(spend(1, at(DAY)).await, spent(999));
    let info = store.get(&id).await.unwrap().unwrap().credits.unwrap();
    assert_eq!((info.remaining, info.period_start), (999, at(DAY)));
    assert_eq!(info.next_refill_at(at(DAY + 5)), Some(at(2 * DAY)));
    // Four intervals missed: one refill, the period moved on by whole ones.
    let later = at(5 * DAY + 123);
    assert_eq!(info.remaining_at(later), 1000);
    assert_eq!(info.next_refill_at(later), Some(at(6 * DAY)));
    assert_eq!(spend(10, later).await, spent(990));
    let info = store.get(&id).await.unwrap().unwrap().credits.unwrap();
    assert_eq!((info.remaining, info.period_start), (990, at(5 * DAY)));
    assert_eq!(spend(990, later).await, spent(0));
    assert_eq!(spend(1, later).await, exceeded(Some(DAY - 123)));
    // More than a refill gives: waiting would not help; nothing written.
    assert_eq!(spend(1001, at(6 * DAY)).await, exceeded(None));
    let info = store.get(&id).await.unwrap().unwrap().credits.unwrap();
    assert_eq!((info.remaining, info.period_start), (0, at(5 * DAY)));

    // Without a refill: exceeded for good.
    let once = key_with(&store, credits(2, None)).await;
    let d = once.key.digest();
    assert_eq!(store.spend(&d, 2, at(1)).await.unwrap(), spent(0));
    assert_eq!(
        store.spend(&d, 1, at(10 * DAY)).await.unwrap(),
        exceeded(None)
    );

    // No credits: unlimited, nothing spent. No key: refused (a spend looks
    // at the live row and fails closed).
    let plain = plain_key(&store).await;
    let pd = plain.key.digest();
    assert_eq!(store.spend(&pd, 5, at(1)).await.unwrap(), Spend::Unlimited);
    assert_eq!(
        store
            .spend(&Digest::of(b"no such key"), 1, at(1))
            .await
            .unwrap(),
        Spend::Refused(auth_core::VerifyError::Invalid)
    );
    assert!(
        store
            .get(&plain.info.id)
            .await
            .unwrap()
            .unwrap()
            .credits
            .is_none()
    );

    // The record says which keys have credits: so does the principal.
    let v = HashedKeyStore::new(store.clone());
    let p = verify(&v, plain.key.expose()).await.unwrap();
    assert_eq!(p.label(CREDITS_LABEL), None);
    let p = verify(&v, created.key.expose()).await.unwrap();
    assert_eq!(p.label(CREDITS_LABEL), Some("limited"));

    // Set and removed by an update (a new period starts).
    assert!(
        store
            .set_credits(&plain.info.id, credits(5, None))
            .await
            .unwrap()
    );
    assert_eq!(
        store.spend(&pd, 1, SystemTime::now()).await.unwrap(),
        spent(4)
    );
    assert_eq!(
        verify(&v, plain.key.expose())
            .await
            .unwrap()
            .label(CREDITS_LABEL),
        Some("limited")
    );
    assert!(store.set_credits(&plain.info.id, None).await.unwrap());
    assert_eq!(
        store.spend(&pd, 1, SystemTime::now()).await.unwrap(),
        Spend::Unlimited
    );

    // A rotation moves the credits: the new key has what was left, the old
    // one none through its overlap (never twice the credits).
    let moving = key_with(&store, credits(50, Some((100, DAY)))).await;
    let now = SystemTime::now();
    assert_eq!(
        store.spend(&moving.key.digest(), 20, now).await.unwrap(),
        spent(30)
    );
    let rotated = store
        .rotate(&moving.info.id, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    let moved = rotated.info.credits.unwrap();
    assert_eq!(moved.remaining, 30);
    assert_eq!(moved.refill, credits(0, Some((100, DAY))).unwrap().refill);
    assert_eq!(
        moved.period_start,
        moving.info.credits.unwrap().period_start
    );
    assert_eq!(
        store.spend(&moving.key.digest(), 1, now).await.unwrap(),
        exceeded(None)
    );
    assert_eq!(
        store.spend(&rotated.key.digest(), 30, now).await.unwrap(),
        spent(0)
    );

    // Disabled (or expired) since a cache said valid: the spend reads the
    // live row and refuses, spending nothing.
    let revoked = key_with(&store, credits(10, None)).await;
    assert!(store.disable(&revoked.info.id).await.unwrap());
    assert_eq!(
        store
            .spend(&revoked.key.digest(), 1, SystemTime::now())
            .await
            .unwrap(),
        Spend::Refused(auth_core::VerifyError::Disabled)
    );
    let left = store.get(&revoked.info.id).await.unwrap().unwrap().credits;
    assert_eq!(left.unwrap().remaining, 10);
    let expiring = key_with(&store, credits(10, None)).await;
    let later = SystemTime::now() + Duration::from_secs(200 * 365 * DAY);
    assert_eq!(
        store.spend(&expiring.key.digest(), 1, later).await.unwrap(),
        spent(9),
        "no expiry: spends at any time"
    );
    assert!(
        store
            .set_expiry(
                &expiring.info.id,
                Some(SystemTime::now() + Duration::from_secs(60))
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .spend(&expiring.key.digest(), 1, now + Duration::from_secs(61))
            .await
            .unwrap(),
        Spend::Refused(auth_core::VerifyError::Expired)
    );

    // Out of range: refused before anything is written.
    let before = store.list().await.unwrap();
    let max = auth_sqlx::MAX_CREDITS;
    for bad in [
        credits(max + 1, None),
        credits(1, Some((0, DAY))),
        credits(1, Some((max + 1, DAY))),
        credits(1, Some((1, 59))),
        credits(1, Some((1, 366 * DAY + 1))),
        Some(Credits {
            remaining: 1,
            refill: Some(Refill {
                amount: 1,
                every: Duration::from_millis(60_500),
            }),
        }),
    ] {
        let made = store
            .create(NewKey {
                owner: "svc".into(),
                credits: bad,
                ..NewKey::default()
            })
            .await;
        assert!(matches!(made, Err(Error::Invalid(_))), "{bad:?}: {made:?}");
        let set = store.set_credits(&id, bad).await;
        assert!(matches!(set, Err(Error::Invalid(_))), "{bad:?}: {set:?}");
    }
    assert_eq!(
        store.list().await.unwrap(),
        before,
        "bad credits were written"
    );
    // The bounds themselves are accepted.
    key_with(&store, credits(max, Some((max, 60)))).await;
    key_with(&store, credits(0, Some((1, 366 * DAY)))).await;
}

#[tokio::test]
async fn credits_refill_from_time_on_sqlite() {
    let (store, _dir) = sqlite().await;
    credits_refill_from_time(store).await;
}

#[tokio::test]
async fn credits_refill_from_time_on_postgres() {
    credits_refill_from_time(postgres("credits").await).await;
}

/// 2,000 spends of 1 from 16 tasks on two stores (two pools: two
/// instances, or the server and another process) against 1,000 credits:
/// exactly 1,000 spent, each leaving a different remainder, 0 left.
async fn concurrent_spends_never_overspend(a: SqlKeyStore, b: SqlKeyStore) {
    let created = key_with(&a, credits(1000, None)).await;
    let digest = created.key.digest();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..125 {
                    outcomes.push(store.spend(&digest, 1, SystemTime::now()).await.unwrap());
                }
                outcomes
            })
        })
        .collect();
    let mut left = Vec::new();
    let mut refused = 0;
    for t in tasks {
        for outcome in t.await.unwrap() {
            match outcome {
                Spend::Spent { remaining } => left.push(remaining),
                Spend::Exceeded { retry_after: None } => refused += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    left.sort_unstable();
    assert_eq!(left, (0..1000).collect::<Vec<u64>>());
    assert_eq!(refused, 1000);
    let info = b.get(&created.info.id).await.unwrap().unwrap();
    assert_eq!(info.credits.unwrap().remaining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spends_never_overspend_on_postgres() {
    let (a, b) = postgres_pair("spends").await;
    concurrent_spends_never_overspend(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spends_never_overspend_on_sqlite() {
    let (a, dir) = sqlite().await;
    let b = SqlKeyStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("keys.db").display()
    ))
    .await
    .unwrap();
    concurrent_spends_never_overspend(a, b).await;
}

fn leased(remaining: u64, lease: Option<u64>) -> (u64, Option<u64>) {
    (remaining, lease)
}

/// A lease's outcome as (remaining, its credits), and its id.
fn grant(g: LeaseGrant) -> ((u64, Option<u64>), Option<String>) {
    match g {
        LeaseGrant::Leased {
            remaining, lease, ..
        } => (
            leased(remaining, lease.as_ref().map(|l| l.1)),
            lease.map(|l| l.0),
        ),
        other => panic!("{other:?}"),
    }
}

async fn remaining(store: &SqlKeyStore, id: &str) -> u64 {
    let info = store.get(id).await.unwrap().unwrap();
    info.credits.unwrap().remaining
}

/// Issue 16, item 3: a lease's size (at most `want`, at most a tenth of
/// what is left after the cost), its returns (once, before its end, in
/// the period of its grant, by its holder, at most what was leased) and
/// what is refused; on the spend's own statement, in one transaction.
async fn leases_take_a_share_and_come_back_once(store: SqlKeyStore) {
    let key = key_with(&store, credits(1000, None)).await;
    let (d, id) = (key.key.digest(), key.info.id.clone());
    let t0 = SystemTime::now();
    let lease = |cost: u32, want: u32, service: Option<&'static str>, now: SystemTime| {
        let store = store.clone();
        async move { store.lease(&d, cost, want, service, now).await.unwrap() }
    };
    let give_back = |lease: String, unused: u64, service: Option<&'static str>, now| {
        let store = store.clone();
        async move {
            store
                .return_lease(&lease, unused, service, now)
                .await
                .unwrap()
        }
    };

    // Bounds: (1000 - 1) / 10 = 99, then (900 - 1) / 10 = 89, then `want`.
    let (seen, first) = grant(lease(1, 500, Some("svc_a"), t0).await);
    assert_eq!(seen, leased(900, Some(99)));
    let first = first.unwrap();
    assert!(first.starts_with("ls_") && first.len() == 35, "{first}");
    let (seen, second) = grant(lease(1, 500, Some("svc_a"), t0).await);
    assert_eq!(seen, leased(810, Some(89)));
    let (seen, third) = grant(lease(1, 5, None, t0).await);
    assert_eq!(seen, leased(804, Some(5)));
    // Cost 0 leases too (nothing else spent).
    let (seen, _) = grant(lease(0, 10, Some("svc_a"), t0).await);
    assert_eq!(seen, leased(794, Some(10)));
    assert_eq!(remaining(&store, &id).await, 794);

    // Returns: once; clamped to what was leased; the holder's only.
    assert_eq!(give_back(first.clone(), 50, Some("svc_a"), t0).await, 50);
    assert_eq!(remaining(&store, &id).await, 844);
    assert_eq!(
        give_back(first.clone(), 50, Some("svc_a"), t0).await,
        0,
        "twice"
    );
    let second = second.unwrap();
    assert_eq!(
        give_back(second.clone(), 10, Some("svc_b"), t0).await,
        0,
        "another's"
    );
    assert_eq!(
        give_back(second.clone(), 10, None, t0).await,
        0,
        "no credential"
    );
    assert_eq!(
        give_back(second.clone(), u64::MAX, Some("svc_a"), t0).await,
        89,
        "clamped"
    );
    let third = third.unwrap();
    assert_eq!(
        give_back(third.clone(), 5, Some("svc_a"), t0).await,
        0,
        "taken without one"
    );
    assert_eq!(give_back(third, 0, None, t0).await, 0, "nothing unused");
    assert_eq!(remaining(&store, &id).await, 933);

    // Too late: a TTL past its end (the grace a late return gets), nothing
    // comes back; just before, all of it — a return that arrives after the
    // end, within the grace, too (the holder stopped spending before it).
    let (_, late) = grant(lease(1, 50, Some("svc_a"), t0).await);
    let (_, in_time) = grant(lease(1, 50, Some("svc_a"), t0).await);
    let (_, in_grace) = grant(lease(1, 50, Some("svc_a"), t0).await);
    let before = remaining(&store, &id).await;
    assert_eq!(
        give_back(late.unwrap(), 50, Some("svc_a"), t0 + LEASE_TTL * 2).await,
        0
    );
    let just = t0 + LEASE_TTL * 2 - Duration::from_millis(1);
    assert_eq!(
        give_back(in_time.unwrap(), 50, Some("svc_a"), just).await,
        50
    );
    assert_eq!(
        give_back(in_grace.unwrap(), 50, Some("svc_a"), t0 + LEASE_TTL).await,
        50
    );
    assert_eq!(remaining(&store, &id).await, before + 100);

    // Unknown, malformed: 0, and refused before anything is read.
    let unknown = format!("ls_{}", "0".repeat(32));
    assert_eq!(give_back(unknown, 5, None, t0).await, 0);
    for bad in [
        "",
        "ls_",
        "ls_XYZ",
        &format!("ls_{}", "A".repeat(32)),
        &"x".repeat(5000),
    ] {
        let refused = store.return_lease(bad, 1, None, t0).await;
        assert!(
            matches!(refused, Err(Error::Invalid(_))),
            "{bad}: {refused:?}"
        );
    }
    let too_many = store.lease(&d, 1, auth_sqlx::MAX_LEASE + 1, None, t0).await;
    assert!(matches!(too_many, Err(Error::Invalid(_))), "{too_many:?}");
    let after = remaining(&store, &id).await;
    assert_eq!(after, before + 100, "nothing spent by refusals");

    // A lease never outlasts its period: 3 s before the next refill, it
    // lasts 3 s.
    let refilled = key_with(&store, credits(1_000, Some((1_000, 60)))).await;
    let start = refilled.info.credits.unwrap().period_start;
    let near = start + Duration::from_secs(57);
    match store
        .lease(&refilled.key.digest(), 1, 50, None, near)
        .await
        .unwrap()
    {
        LeaseGrant::Leased {
            lease: Some(_),
            ttl,
            ..
        } => assert_eq!(ttl, Duration::from_secs(3)),
        other => panic!("{other:?}"),
    }
    match store
        .lease(&refilled.key.digest(), 1, 50, None, start)
        .await
        .unwrap()
    {
        LeaseGrant::Leased { ttl, .. } => assert_eq!(ttl, LEASE_TTL),
        other => panic!("{other:?}"),
    }

    // Too little for a lease: the cost alone. Not even that: exceeded.
    let small = key_with(&store, credits(5, None)).await;
    let sd = small.key.digest();
    let g = store.lease(&sd, 1, 50, None, t0).await.unwrap();
    assert_eq!(grant(g), (leased(4, None), None));
    let g = store.lease(&sd, 5, 50, None, t0).await.unwrap();
    assert_eq!(g, LeaseGrant::Exceeded { retry_after: None });
    assert_eq!(remaining(&store, &small.info.id).await, 4);
    // No credits: unlimited, no lease. Revoked: refused, nothing taken.
    let plain = plain_key(&store).await;
    let g = store.lease(&plain.key.digest(), 1, 50, None, t0).await;
    assert_eq!(g.unwrap(), LeaseGrant::Unlimited);
    let g = store
        .lease(&Digest::of(b"no such key"), 1, 50, None, t0)
        .await;
    assert_eq!(g.unwrap(), LeaseGrant::Refused(VerifyError::Invalid));
    let revoked = key_with(&store, credits(100, None)).await;
    assert!(store.disable(&revoked.info.id).await.unwrap());
    let g = store.lease(&revoked.key.digest(), 1, 50, None, t0).await;
    assert_eq!(g.unwrap(), LeaseGrant::Refused(VerifyError::Disabled));
    assert_eq!(remaining(&store, &revoked.info.id).await, 100);

    // A refill since the grant: the credits were the ended period's.
    let refilled = key_with(&store, credits(1000, Some((1000, DAY)))).await;
    let rd = refilled.key.digest();
    let start = refilled.info.credits.unwrap().period_start;
    let at = |s: u64| start + Duration::from_secs(s);
    let g = store.lease(&rd, 1, 100, None, at(DAY - 5)).await.unwrap();
    let ((_, Some(99)), Some(before_refill)) = grant(g) else {
        panic!("no lease")
    };
    // Due (not yet made): nothing back; the refill then sets 1000.
    let back = store
        .return_lease(&before_refill, 99, None, at(DAY + 1))
        .await;
    assert_eq!(back.unwrap(), 0);
    assert_eq!(store.spend(&rd, 1, at(DAY + 2)).await.unwrap(), spent(999));
    // Made by a spend in between: nothing back either.
    let g = store
        .lease(&rd, 1, 100, None, at(2 * DAY - 5))
        .await
        .unwrap();
    let (_, Some(across)) = grant(g) else {
        panic!("no lease")
    };
    assert_eq!(store.spend(&rd, 1, at(2 * DAY)).await.unwrap(), spent(999));
    let back = store.return_lease(&across, 99, None, at(2 * DAY + 1)).await;
    assert_eq!(back.unwrap(), 0);
    // Within the period: back.
    let g = store
        .lease(&rd, 1, 100, None, at(2 * DAY + 1))
        .await
        .unwrap();
    let ((left, Some(99)), Some(within)) = grant(g) else {
        panic!("no lease")
    };
    assert_eq!(left, 999 - 100);
    let back = store.return_lease(&within, 99, None, at(2 * DAY + 2)).await;
    assert_eq!(back.unwrap(), 99);
    assert_eq!(
        store.spend(&rd, 0, at(2 * DAY + 3)).await.unwrap(),
        spent(998),
        "all but the cost"
    );

    // Credits set anew, or moved by a rotation, since the grant: the open
    // leases are void (a return would add the old credits to the new).
    let now = SystemTime::now();
    let (_, open) = grant(lease(1, 50, None, now).await);
    assert!(store.set_credits(&id, credits(500, None)).await.unwrap());
    assert_eq!(give_back(open.unwrap(), 50, None, now).await, 0);
    assert_eq!(remaining(&store, &id).await, 500);
    let (_, open) = grant(lease(1, 50, None, now).await);
    let left = remaining(&store, &id).await;
    let rotated = store
        .rotate(&id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(give_back(open.unwrap(), 40, None, now).await, 0);
    assert_eq!(remaining(&store, &rotated.info.id).await, left);
    assert_eq!(remaining(&store, &id).await, 0);

    // Pruned a day after their end, settled or not.
    assert_eq!(store.prune_leases(SystemTime::now()).await.unwrap(), 0);
    let pruned = store
        .prune_leases(SystemTime::now() + Duration::from_secs(DAY + 60))
        .await
        .unwrap();
    assert_eq!(pruned, 11, "those that ended by now, not the three ahead");
}

#[tokio::test]
async fn leases_take_a_share_and_come_back_once_on_sqlite() {
    let (store, _dir) = sqlite().await;
    leases_take_a_share_and_come_back_once(store).await;
}

#[tokio::test]
async fn leases_take_a_share_and_come_back_once_on_postgres() {
    leases_take_a_share_and_come_back_once(postgres("leases").await).await;
}

/// 16 tasks on two stores lease (`want` 50, cost 1) from 1,000 credits
/// until refused, returning half of every other lease at once: what they
/// were granted (1 + the lease, less what went back) adds up to exactly
/// the 1,000 credits, 0 left; no answer ever reports more than was there.
async fn concurrent_leases_never_overspend(a: SqlKeyStore, b: SqlKeyStore) {
    let created = key_with(&a, credits(1000, None)).await;
    let digest = created.key.digest();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let (mut granted, mut leases, mut returned) = (0u64, 0u64, 0u64);
                loop {
                    let now = SystemTime::now();
                    match store.lease(&digest, 1, 50, None, now).await.unwrap() {
                        LeaseGrant::Leased {
                            remaining, lease, ..
                        } => {
                            assert!(remaining < 1000);
                            granted += 1;
                            if let Some((id, credits)) = lease {
                                assert!((1..=50).contains(&credits));
                                granted += credits;
                                leases += 1;
                                if leases % 2 == 0 {
                                    let back = store
                                        .return_lease(&id, credits / 2, None, now)
                                        .await
                                        .unwrap();
                                    assert_eq!(back, credits / 2);
                                    returned += back;
                                }
                            }
                        }
                        LeaseGrant::Exceeded { retry_after: None } => break,
                        other => panic!("{other:?}"),
                    }
                }
                (granted, leases, returned)
            })
        })
        .collect();
    let (mut granted, mut leases, mut returned) = (0, 0, 0);
    for t in tasks {
        let (g, l, r) = t.await.unwrap();
        granted += g;
        leases += l;
        returned += r;
    }
    let left = b.get(&created.info.id).await.unwrap().unwrap();
    let left = left.credits.unwrap().remaining;
    println!("{leases} leases, {returned} credits returned, {left} left");
    assert_eq!(left, 0);
    assert_eq!(granted - returned, 1000 - left, "exact accounting");
    assert!(leases > 0 && returned > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_overspend_on_postgres() {
    let (a, b) = postgres_pair("leases_race").await;
    concurrent_leases_never_overspend(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_overspend_on_sqlite() {
    let (a, dir) = sqlite().await;
    let b = SqlKeyStore::connect(&format!(
        "sqlite://{}",
        dir.path().join("keys.db").display()
    ))
    .await
    .unwrap();
    concurrent_leases_never_overspend(a, b).await;
}

/// A lease's id is what returns it: never in a `Debug`.
#[tokio::test]
async fn a_lease_grant_never_shows_its_id() {
    let (store, _dir) = sqlite().await;
    let key = key_with(&store, credits(1000, None)).await;
    let g = store
        .lease(&key.key.digest(), 1, 50, None, SystemTime::now())
        .await
        .unwrap();
    let LeaseGrant::Leased {
        lease: Some((id, 50)),
        ..
    } = &g
    else {
        panic!("{g:?}")
    };
    let shown = format!("{g:?}");
    assert!(!shown.contains(id.as_str()), "{shown}");
    assert!(shown.contains("949") && shown.contains("50"), "{shown}");
}

/// Grants, returns and admin writes of credits touch a key's row and its
/// leases' rows: always in that order, so that on PostgreSQL none waits
/// on another in a cycle (a deadlock would be an error here). Every
/// return after the last write is honoured in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_returns_and_credit_writes_never_deadlock_on_postgres() {
    let (a, b) = postgres_pair("leases_locks").await;
    let key = key_with(&a, credits(100_000, None)).await;
    let digest = key.key.digest();
    let mut tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for _ in 0..40 {
                    let now = SystemTime::now();
                    let g = store.lease(&digest, 1, 20, Some("svc"), now).await.unwrap();
                    if let LeaseGrant::Leased {
                        lease: Some((id, credits)),
                        ..
                    } = g
                    {
                        let back = store.return_lease(&id, credits, Some("svc"), now).await;
                        assert!(back.unwrap() <= credits);
                    }
                }
            })
        })
        .collect();
    let (writer, id) = (a.clone(), key.info.id.clone());
    tasks.push(tokio::spawn(async move {
        for n in 0..20 {
            assert!(
                writer
                    .set_credits(&id, credits(100_000 - n, None))
                    .await
                    .unwrap()
            );
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let before = remaining(&a, &key.info.id).await;
    let g = a
        .lease(&digest, 1, 20, None, SystemTime::now())
        .await
        .unwrap();
    let LeaseGrant::Leased {
        lease: Some((lease, 20)),
        ..
    } = g
    else {
        panic!("{g:?}")
    };
    let back = a.return_lease(&lease, 20, None, SystemTime::now()).await;
    assert_eq!(back.unwrap(), 20);
    assert_eq!(remaining(&a, &key.info.id).await, before - 1);
}
