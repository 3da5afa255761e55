//! auth-remote: a cache hit against a local `KeySet` verify (the target:
//! ≤ 1.5 ×) with usage counting on (the default) and off, a cache hit on a
//! key with credits (one leased credit taken per request), the two ways to
//! find a decision's UTC hour, and a coalesced miss — 64 callers asking for one uncached key
//! at once, one upstream call — against a minimal key service on
//! 127.0.0.1; auth-redis limiter checks on the local Redis; auth-sqlx
//! cached hits and misses on SQLite and PostgreSQL. Results:
//! docs/PERFORMANCE.md.
#![allow(missing_docs, unused_crate_dependencies)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_benches::key;
use auth_core::clock::{Clock, CoarseClock};
use auth_core::{Credential, KeySet, Principal, Verifier, VerifyContext};
use auth_remote::RemoteVerifier;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// The key with credits: answered with a lease.
fn credited() -> String {
    key(2)
}

/// A key service that says every key is valid, counting its calls. The key
/// with credits comes with a lease large enough for a whole measurement (a
/// real service leases at most what was asked, 100 by default): the bench
/// measures spending it, not asking again.
async fn serve(calls: Arc<AtomicUsize>) -> std::net::SocketAddr {
    // Usage reports (every 10 s) are taken and dropped.
    let app = axum::Router::new()
        .route(
            "/api/v1/api-keys/usage",
            axum::routing::post(|| async { axum::Json(serde_json::json!({"accepted": 0})) }),
        )
        .route(
        "/api/v1/api-keys/validate",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut answer = serde_json::json!({"valid": true, "code": "valid", "userId": "u", "scopes": ["stt"]});
                if body["apiKey"] == credited().as_str() && body["lease"].is_u64() {
                    answer["creditsRemaining"] = 0.into();
                    answer["lease"] = serde_json::json!({"id": "bench", "credits": 1u64 << 40, "ttlMs": 3_600_000});
                }
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn remote(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = rt.block_on(serve(calls.clone()));
    // No upstream budget: the coalesced-miss bench makes a call per batch,
    // faster than the default 100 a second.
    let v = RemoteVerifier::builder(&format!("http://{addr}"))
        .upstream_budget(0)
        .build()
        .unwrap();
    // The same without usage counting: the hit as it was before it.
    let uncounted = RemoteVerifier::builder(&format!("http://{addr}"))
        .usage_reports(None)
        .build()
        .unwrap();
    let ctx = VerifyContext::default();
    let hot = key(1);
    rt.block_on(v.verify(&Credential::new(hot.clone()), &ctx))
        .unwrap();
    rt.block_on(uncounted.verify(&Credential::new(hot.clone()), &ctx))
        .unwrap();
    let set = KeySet::new().with_key(&hot, Principal::new("u")).unwrap();
    // The key with credits: its grant cached with a lease.
    let credited = credited();
    rt.block_on(v.verify(&Credential::new(credited.clone()), &ctx))
        .unwrap();
    assert_eq!(v.leases_len(), 1, "the key with credits holds a lease");

    // The same measure as `--bench core`'s verify rows: the credential made
    // from the presented bytes, verified, dropped.
    let verifiers: [(&str, &dyn Verifier, &str); 4] = [
        ("remote/KeySet verify (reference)", &set, &hot),
        ("remote/RemoteVerifier cache hit", &v, &hot),
        (
            "remote/RemoteVerifier cache hit, usage counting off",
            &uncounted,
            &hot,
        ),
        (
            "remote/RemoteVerifier cache hit, credit lease",
            &v,
            &credited,
        ),
    ];
    let before = calls.load(Ordering::Relaxed);
    for (name, verifier, key) in verifiers {
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || key.to_owned().into_bytes(),
                |bytes| {
                    let cred = Credential::from_slice(bytes);
                    let answer = verifier.verify(&cred, &ctx).now().expect("a cached answer");
                    black_box(answer.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        before,
        "a cache hit made a call"
    );

    // A counted decision's hour: the wall clock read per decision, against
    // the monotonic reading a hit makes anyway plus an offset to UTC (what
    // auth-remote does; the reading itself is on the hit path already).
    c.bench_function("usage/hour from SystemTime::now()", |b| {
        b.iter(|| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            black_box(secs - secs % 3600)
        })
    });
    let offset = AtomicU64::new(
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        )
        .unwrap()
        .wrapping_sub(u64::try_from(CoarseClock.now().as_nanos()).unwrap()),
    );
    c.bench_function("usage/hour from CoarseClock + offset", |b| {
        b.iter(|| {
            let now = u64::try_from(CoarseClock.now().as_nanos()).unwrap_or(u64::MAX);
            let secs = now.wrapping_add(offset.load(Ordering::Relaxed)) / 1_000_000_000;
            black_box(secs - secs % 3600)
        })
    });

    // 64 callers at once for a key nobody asked for yet.
    let mut fresh = 1_000u64;
    let before = calls.load(Ordering::Relaxed);
    let mut batches = 0usize;
    c.bench_function("remote/coalesced miss, 64 concurrent callers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fresh += 1;
                let k = key(fresh);
                batches += 1;
                let start = Instant::now();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let v = v.clone();
                            let k = k.clone();
                            tokio::spawn(async move {
                                v.verify(&Credential::new(k), &VerifyContext::default())
                                    .await
                                    .is_ok()
                            })
                        })
                        .collect();
                    for t in tasks {
                        assert!(t.await.unwrap());
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    let made = calls.load(Ordering::Relaxed) - before;
    println!("coalesced misses: {batches} batches of 64 callers made {made} upstream calls");
    assert_eq!(made, batches, "a miss was not coalesced into one call");
}

/// Checks per second of the Redis limiter on the local Redis
/// (`AUTH_TEST_REDIS_URL`), one caller after another and 16 at once.
fn redis_limiter(c: &mut Criterion) {
    use auth_core::{RateLimitPolicy, RateLimiter};
    let url =
        std::env::var("AUTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limiter = Arc::new(
        auth_redis::RedisLimiter::new(&url)
            .unwrap()
            .prefix("auth-bench:")
            .when_unreachable(auth_redis::WhenUnreachable::Refuse),
    );
    let policy = RateLimitPolicy::new(1_000_000, Duration::from_secs(1));
    let first = rt.block_on(limiter.check("warm", &policy));
    assert!(
        matches!(first, auth_core::RateDecision::Allowed(_)),
        "Redis unreachable at {url}: start it (see the developers' guide)"
    );
    c.bench_function("redis/limiter check, one caller", |b| {
        b.iter(|| rt.block_on(limiter.check("one", &policy)))
    });
    c.bench_function("redis/limiter check, 16 callers at once (per check)", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let limiter = limiter.clone();
                        tokio::spawn(async move {
                            for _ in 0..iters.div_ceil(16) {
                                black_box(limiter.check(&format!("k{t}"), &policy).await);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            start.elapsed()
        })
    });
}

/// auth-sqlx: a cached verify (no database round trip) and a miss (one
/// indexed query) on SQLite and on PostgreSQL (`AUTH_TEST_DATABASE_URL`).
fn sql_stores(c: &mut Criterion) {
    use auth_core::{CacheConfig, Cached, HashedKeyStore};
    use auth_sqlx::{NewKey, SqlKeyStore};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg = std::env::var("AUTH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_bench_{}", std::process::id());
    let urls = [
        (
            "SQLite",
            format!("sqlite://{}", dir.path().join("keys.db").display()),
        ),
        (
            "PostgreSQL",
            format!("{pg}?options=-c%20search_path%3D{schema}&application_name={schema}"),
        ),
    ];
    rt.block_on(async {
        let admin = SqlKeyStore::connect(&pg)
            .await
            .expect("PostgreSQL reachable");
        auth_sqlx::testing::execute_raw(&admin, &format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .unwrap();
    });
    let ctx = VerifyContext::default();
    for (name, url) in urls {
        let (store, key) = rt.block_on(async {
            let store = SqlKeyStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            let created = store
                .create(NewKey {
                    owner: "svc".into(),
                    ..NewKey::default()
                })
                .await
                .unwrap();
            (store, created.key.expose().to_owned())
        });
        let uncached = HashedKeyStore::new(store.clone());
        c.bench_function(&format!("sql/{name} miss (one indexed query)"), |b| {
            b.iter(|| {
                let cred = Credential::from_slice(key.as_bytes());
                assert!(rt.block_on(uncached.verify(&cred, &ctx)).is_ok());
            })
        });
        let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
        rt.block_on(cached.verify(&Credential::new(key.clone()), &ctx))
            .unwrap();
        c.bench_function(&format!("sql/{name} cached hit (no round trip)"), |b| {
            b.iter_batched_ref(
                || key.clone().into_bytes(),
                |bytes| {
                    let cred = Credential::from_slice(bytes);
                    let answer = cached.verify(&cred, &ctx).now().expect("a cache hit");
                    black_box(answer.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
    }
    rt.block_on(async {
        let admin = SqlKeyStore::connect(&pg).await.unwrap();
        auth_sqlx::testing::execute_raw(&admin, &format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = remote, redis_limiter, sql_stores
}
criterion_main!(benches);
