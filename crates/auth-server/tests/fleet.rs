//! Issue 13, item 7: revocation measured as a fleet. Key services run as
//! the real binary (so that one can be killed); services are axum apps
//! behind auth-remote in this process; everything on 127.0.0.1.
//!
//! For each revocation: the time from the admin call's answer (or, for an
//! expiry, from the expiry itself) until *every* service refuses the key.
//! The bound — every service within a second — is asserted as a count;
//! the distribution is printed for docs/PERFORMANCE.md.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_remote::RemoteVerifier;

mod common;
use common::process::KeyService;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(1);

/// A service behind auth-remote: `/api/v1/items` (any key), `/api/v1/stt`
/// (scope `stt`).
async fn service(key_service: SocketAddr, token: &str) -> SocketAddr {
    service_and_verifier(key_service, token).await.0
}

/// [`service`], with its verifier (to watch its stream).
async fn service_and_verifier(
    key_service: SocketAddr,
    token: &str,
) -> (SocketAddr, RemoteVerifier) {
    let remote = RemoteVerifier::builder(&format!("http://{key_service}"))
        .service_credential(auth_server::SERVICE_HEADER, token)
        .build()
        .unwrap();
    let guard = auth_core::Guard::builder(remote.clone()).build().unwrap();
    let auth = auth_axum::Auth::new(guard);
    let ok = || async { "ok" };
    let app = axum::Router::new()
        .route("/api/v1/items", axum::routing::get(ok))
        .route(
            "/api/v1/stt",
            axum::routing::get(ok).route_layer(auth.require_scope("stt")),
        )
        .route_layer(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, remote)
}

async fn status(http: &reqwest::Client, service: SocketAddr, path: &str, key: &str) -> u16 {
    http.get(format!("http://{service}{path}"))
        .header("x-api-key", key)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Every service answers `key` on `path` with 200 (its cache holds it).
async fn accepted_everywhere(
    http: &reqwest::Client,
    services: &[SocketAddr],
    path: &str,
    key: &str,
) {
    for s in services {
        for _ in 0..3 {
            assert_eq!(status(http, *s, path, key).await, 200, "{s}{path}");
        }
    }
}

/// The time from `since` until every service refuses `key` on `path`
/// (polled every 5 ms, given up after `limit`).
async fn refused_everywhere(
    http: &reqwest::Client,
    services: &[SocketAddr],
    path: &str,
    key: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    let mut waits = Vec::new();
    for s in services {
        let (http, s, path, key) = (http.clone(), *s, path.to_owned(), key.to_owned());
        waits.push(tokio::spawn(async move {
            loop {
                let code = status(&http, s, &path, &key).await;
                if matches!(code, 401 | 403) {
                    return since.elapsed();
                }
                if since.elapsed() > limit {
                    return since.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut worst = Duration::ZERO;
    for w in waits {
        worst = worst.max(w.await.unwrap());
    }
    worst
}

/// A steady load of valid requests on every service while `running`;
/// counts the answers that were not 200.
fn background_load(
    http: &reqwest::Client,
    services: &[SocketAddr],
    key: &str,
    running: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) {
    for s in services {
        for _ in 0..2 {
            let (http, s, key) = (http.clone(), *s, key.to_owned());
            let (running, sent, failed) = (running.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    if status(&http, s, "/api/v1/items", &key).await != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    }
}

fn summary(name: &str, mut times: Vec<Duration>) -> Vec<Duration> {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: {} revocations, p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
    times
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Ten revocations of each kind through two instances; every service
/// refuses each key within a second.
async fn fifty_revocations(
    a: &KeyService,
    b: &KeyService,
    services: &[SocketAddr],
) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let key = |v: &Value| v["key"].as_str().unwrap().to_owned();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let mut times = Vec::new();
    // disable through A, delete through B, rotate (zero overlap) through A,
    // scope removed through B.
    for kind in ["disable", "delete", "rotate", "scope"] {
        for _ in 0..10 {
            let k = a
                .call(
                    "POST",
                    "/api/v1/keys",
                    json!({"owner": "user", "scopes": ["stt"]}),
                )
                .await;
            let path = if kind == "scope" {
                "/api/v1/stt"
            } else {
                "/api/v1/items"
            };
            accepted_everywhere(&http, services, path, &key(&k)).await;
            let i = id(&k);
            match kind {
                "disable" => {
                    a.call("POST", &format!("/api/v1/keys/{i}/disable"), Value::Null)
                        .await
                }
                "delete" => {
                    b.call("DELETE", &format!("/api/v1/keys/{i}"), Value::Null)
                        .await
                }
                "rotate" => {
                    a.call(
                        "POST",
                        &format!("/api/v1/keys/{i}/rotate"),
                        json!({"overlap": 0}),
                    )
                    .await
                }
                _ => {
                    b.call("PATCH", &format!("/api/v1/keys/{i}"), json!({"scopes": []}))
                        .await
                }
            };
            let took =
                refused_everywhere(&http, services, path, &key(&k), Instant::now(), 5 * BOUND)
                    .await;
            times.push(took);
        }
    }
    // Expiry reached: ten keys expiring at the same second, measured from it
    // (set far enough ahead that ten create-and-patch rounds on a loaded
    // machine still end before it).
    let at = unix_now() + 6;
    let mut expiring = Vec::new();
    for _ in 0..10 {
        let k = b
            .call("POST", "/api/v1/keys", json!({"owner": "user"}))
            .await;
        a.call(
            "PATCH",
            &format!("/api/v1/keys/{}", id(&k)),
            json!({"expiresAt": at}),
        )
        .await;
        accepted_everywhere(&http, services, "/api/v1/items", &key(&k)).await;
        expiring.push(key(&k));
    }
    let expiry = UNIX_EPOCH + Duration::from_secs(at);
    while SystemTime::now() < expiry {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let since = Instant::now() - SystemTime::now().duration_since(expiry).unwrap_or_default();
    for k in &expiring {
        times.push(refused_everywhere(&http, services, "/api/v1/items", k, since, 5 * BOUND).await);
    }
    times
}

/// A new client key: the key and its id.
async fn make_key(ks: &KeyService) -> (String, String) {
    let k = ks
        .call("POST", "/api/v1/keys", json!({"owner": "user"}))
        .await;
    (
        k["key"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    )
}

async fn service_token(ks: &KeyService, name: &str) -> String {
    ks.call("POST", "/api/v1/services", json!({"name": name}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_refuses_revoked_keys_within_a_second() {
    let url = auth_sqlx::testing::postgres_schema("fleet").await;
    let a = KeyService::start(Some(&url)).await;
    let b = KeyService::start(Some(&url)).await;
    let services = [
        service(a.addr, &service_token(&a, "s1").await).await,
        service(a.addr, &service_token(&a, "s2").await).await,
        service(b.addr, &service_token(&b, "s3").await).await,
    ];
    let http = reqwest::Client::new();
    let steady = a
        .call("POST", "/api/v1/keys", json!({"owner": "steady"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (running, sent, failed) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    background_load(&http, &services, &steady, &running, &sent, &failed);
    let times = summary(
        "postgres, 2 instances, 3 services",
        fifty_revocations(&a, &b, &services).await,
    );
    running.store(false, Ordering::Relaxed);
    let late = times.iter().filter(|t| **t >= BOUND).count();
    assert_eq!(
        late,
        0,
        "{late} of {} revocations took a second or more: {times:?}",
        times.len()
    );
    assert_eq!(times.len(), 50);
    println!(
        "background load: {} requests, {} not 200",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(sent.load(Ordering::Relaxed) > 1_000);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the steady key was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_sqlite_hears_the_cli_within_a_second_and_after_a_partition() {
    let mut ks = KeyService::start(None).await;
    let mut services = Vec::new();
    let mut verifiers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let token = service_token(&ks, name).await;
        let (addr, verifier) = service_and_verifier(ks.addr, &token).await;
        services.push(addr);
        verifiers.push(verifier);
    }
    let http = reqwest::Client::new();

    // The CLI, another process, on the same SQLite file.
    let mut times = Vec::new();
    for _ in 0..10 {
        let (key, id) = make_key(&ks).await;
        accepted_everywhere(&http, &services, "/api/v1/items", &key).await;
        ks.cli(&["keys", "disable", &id]);
        times.push(
            refused_everywhere(
                &http,
                &services,
                "/api/v1/items",
                &key,
                Instant::now(),
                5 * BOUND,
            )
            .await,
        );
    }
    let times = summary("sqlite, CLI, 3 services", times);
    let late = times.iter().filter(|t| **t >= BOUND).count();
    assert_eq!(late, 0, "{times:?}");

    // A partition: the key service is killed, a key is disabled meanwhile
    // (the CLI writes the database), the key service comes back. While cut
    // off, a service serves its cached grant at most the short bound
    // (5 s by default) after the stream dropped; once the stream is back,
    // the revocation is honoured at once.
    let (key, id) = make_key(&ks).await;
    accepted_everywhere(&http, &services, "/api/v1/items", &key).await;
    ks.kill();
    let cut = Instant::now();
    ks.cli(&["keys", "disable", &id]);
    let short = Duration::from_secs(5);
    let mut last_grant = Duration::ZERO;
    while cut.elapsed() < short + Duration::from_millis(1_500) {
        for s in &services {
            if status(&http, *s, "/api/v1/items", &key).await == 200 {
                last_grant = cut.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("cut off: the revoked key was last granted {last_grant:?} after the stream dropped");
    assert!(
        last_grant < short + Duration::from_millis(1_500),
        "granted {last_grant:?} after the cut"
    );
    ks.restart().await;
    // Reconnected: every stream live again (within its backoff, ≤ 5 s).
    let restarted = Instant::now();
    while !verifiers.iter().all(RemoteVerifier::stream_live) {
        assert!(
            restarted.elapsed() < 15 * BOUND,
            "the streams did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reconnected = restarted.elapsed();
    // From then on the revoked key is never granted again (503 while a
    // service's breaker waits to probe the key service is no grant).
    let watch = Instant::now();
    while watch.elapsed() < BOUND {
        for s in &services {
            assert_ne!(
                status(&http, *s, "/api/v1/items", &key).await,
                200,
                "granted after the stream was back"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = refused_everywhere(
        &http,
        &services,
        "/api/v1/items",
        &key,
        Instant::now(),
        10 * BOUND,
    )
    .await;
    println!(
        "the streams were back {reconnected:?} after the restart; the key was refused everywhere {took:?} after that"
    );
    assert!(took < short, "{took:?}");
    // And the fleet works again.
    let (fresh, _) = make_key(&ks).await;
    accepted_everywhere(&http, &services, "/api/v1/items", &fresh).await;
}
