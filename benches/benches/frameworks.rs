//! Each framework's in-process pipeline with a prebuilt request (no
//! sockets): no auth, our adapter with StaticKey / KeySet of 1,000,000 keys /
//! Cached over HashedKeyStore, and the ecosystem's own bearer check; a good
//! and a bad key. Results: docs/PERFORMANCE.md.
#![allow(missing_docs, unused_crate_dependencies)]

use std::hint::black_box;
use std::sync::Arc;

use auth_benches::{key, ready};
use auth_core::{
    CacheConfig, Cached, Digest, Guard, HashedKeyStore, KeyRecord, KeySet, MemoryKeyStore,
    Principal, StaticKey,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const MILLION: u64 = 1_000_000;

/// Requests are made and run in batches of this many: few enough that a
/// batch stays in cache, as a request a server just parsed does (criterion's
/// `SmallInput` prebuilt batches of ~100,000, tens of megabytes, so every
/// case timed cache misses on its request).
const BATCH: BatchSize = BatchSize::NumIterations(64);

/// `value` as hyper hands a parsed header value over: a slice of the shared
/// read buffer, whose clone is a reference count, not a copy.
fn parsed(value: &str) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::with_capacity(value.len() + 64);
    buf.extend_from_slice(b"GET /items HTTP/1.1\r\nauthorization: ");
    let start = buf.len();
    buf.extend_from_slice(value.as_bytes());
    buf.split().freeze().slice(start..)
}

/// The guards under test, built once; `None` is "no auth".
struct Setups {
    static_key: Guard,
    key_set: Guard,
    cached_store: Guard,
}

fn setups(good: &str) -> Setups {
    let static_key = Guard::builder(StaticKey::new(good).unwrap().principal_id("p"))
        .build()
        .unwrap();
    let mut set = KeySet::with_capacity(MILLION as usize);
    set.insert_digest(Digest::of(good.as_bytes()), Principal::new("p"))
        .unwrap();
    for i in 1..MILLION {
        set.insert_digest(Digest::of(key(i).as_bytes()), Principal::new("p"))
            .unwrap();
    }
    let key_set = Guard::builder(set).build().unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k0", Digest::of(good.as_bytes()), "p"));
    let cached = Cached::new(HashedKeyStore::new(store), CacheConfig::default());
    let cached_store = Guard::builder(cached).build().unwrap();
    Setups {
        static_key,
        key_set,
        cached_store,
    }
}

const CASES: [&str; 5] = [
    "a none",
    "b StaticKey",
    "c KeySet 1M",
    "d Cached<HashedKeyStore>",
    "e ecosystem",
];

/// The keys each case is driven with, and whether the request should pass:
/// a good and a bad key, except without auth (no bad key to refuse).
fn keys_for<'k>(case: &str, good: &'k str, bad: &'k str) -> Vec<(&'static str, &'k str, bool)> {
    if case == "a none" {
        vec![("good", good, true)]
    } else {
        vec![("good", good, true), ("bad", bad, false)]
    }
}

fn guard_for<'a>(s: &'a Setups, case: &str) -> Option<&'a Guard> {
    match case {
        "b StaticKey" => Some(&s.static_key),
        "c KeySet 1M" => Some(&s.key_set),
        "d Cached<HashedKeyStore>" => Some(&s.cached_store),
        _ => None,
    }
}

mod axum_bench {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    pub(super) fn app(case: &str, s: &Setups, good: &str) -> Router {
        let app = Router::new().route("/items", get(|| async { "ok" }));
        match (case, guard_for(s, case)) {
            (_, Some(g)) => app.route_layer(auth_axum::AuthLayer::new(g.clone())),
            ("e ecosystem", None) => {
                #[allow(deprecated)]
                let check = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(good);
                app.route_layer(check)
            }
            _ => app,
        }
    }

    pub(super) fn bench(c: &mut Criterion, s: &Setups, good: &str, bad: &str) {
        for case in CASES {
            let app = app(case, s, good);
            for (label, k, expect_ok) in keys_for(case, good, bad) {
                let value =
                    axum::http::HeaderValue::from_maybe_shared(parsed(&format!("Bearer {k}")))
                        .unwrap();
                c.bench_function(&format!("axum/{case}/{label} key"), |b| {
                    b.iter_batched(
                        || {
                            Request::get("/items")
                                .header("authorization", value.clone())
                                .body(Body::empty())
                                .unwrap()
                        },
                        |req| {
                            let res = ready(app.clone().oneshot(req)).unwrap();
                            assert_eq!(res.status().is_success(), expect_ok);
                            res
                        },
                        BATCH,
                    )
                });
            }
        }
    }
}

mod warp_bench {
    use super::*;
    use tower::Service;
    use warp::Filter;
    use warp::http::Request;

    pub(super) fn bench(c: &mut Criterion, s: &Setups, good: &str, bad: &str) {
        for case in CASES {
            let route = warp::path!("items").and(warp::get());
            let filter = match (case, guard_for(s, case)) {
                (_, Some(g)) => {
                    let auth = auth_warp::Auth::new(g.clone());
                    route
                        .and(auth.filter())
                        .map(|_: auth_warp::Caller| "ok")
                        .recover(auth_warp::recover)
                        .boxed()
                }
                ("e ecosystem", None) => {
                    let expected = format!("Bearer {good}");
                    route
                        .and(warp::header::<String>("authorization"))
                        .and_then(move |value: String| {
                            let ok = value == expected;
                            async move {
                                if ok {
                                    Ok("ok")
                                } else {
                                    Err(warp::reject::not_found())
                                }
                            }
                        })
                        .recover(auth_warp::recover)
                        .boxed()
                }
                _ => route.map(|| "ok").recover(auth_warp::recover).boxed(),
            };
            let mut service = warp::service(filter);
            for (label, k, expect_ok) in keys_for(case, good, bad) {
                let value =
                    warp::http::HeaderValue::from_maybe_shared(parsed(&format!("Bearer {k}")))
                        .unwrap();
                c.bench_function(&format!("warp/{case}/{label} key"), |b| {
                    b.iter_batched(
                        || {
                            Request::get("/items")
                                .header("authorization", value.clone())
                                .body(String::new())
                                .unwrap()
                        },
                        |req| {
                            let res = ready(service.call(req)).unwrap();
                            assert_eq!(res.status().is_success(), expect_ok);
                            res
                        },
                        BATCH,
                    )
                });
            }
        }
    }
}

mod actix_bench {
    use super::*;
    use actix_web::dev::{Service, ServiceRequest};
    use actix_web::{App, test, web};
    use actix_web_httpauth::extractors::bearer::BearerAuth;
    use actix_web_httpauth::middleware::HttpAuthentication;

    async fn ok() -> &'static str {
        "ok"
    }

    fn run<S, B>(
        c: &mut Criterion,
        system: &actix_web::rt::SystemRunner,
        case: &str,
        service: S,
        good: &str,
        bad: &str,
    ) where
        S: Service<
                actix_http::Request,
                Response = actix_web::dev::ServiceResponse<B>,
                Error = actix_web::Error,
            >,
    {
        for (label, k, expect_ok) in keys_for(case, good, bad) {
            let value = actix_web::http::header::HeaderValue::from_maybe_shared(parsed(&format!(
                "Bearer {k}"
            )))
            .unwrap();
            c.bench_function(&format!("actix/{case}/{label} key"), |b| {
                b.iter_batched(
                    || {
                        test::TestRequest::get()
                            .uri("/items")
                            .insert_header(("authorization", value.clone()))
                            .to_request()
                    },
                    |req| {
                        let res = system.block_on(service.call(req));
                        let ok = res
                            .as_ref()
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        assert_eq!(ok, expect_ok);
                        black_box(res.is_ok())
                    },
                    BATCH,
                )
            });
        }
    }

    pub(super) fn bench(c: &mut Criterion, s: &Setups, good: &str, bad: &str) {
        let system = actix_web::rt::System::new();
        for case in CASES {
            let resource = || web::resource("/items").route(web::get().to(ok));
            match (case, guard_for(s, case)) {
                (_, Some(g)) => {
                    let auth = auth_actix::Auth::new(g.clone());
                    let service = system.block_on(test::init_service(
                        App::new().service(resource().wrap(auth)),
                    ));
                    run(c, &system, case, service, good, bad);
                }
                ("e ecosystem", None) => {
                    let expected: Arc<str> = Arc::from(good);
                    let check = HttpAuthentication::bearer(
                        move |req: ServiceRequest, creds: BearerAuth| {
                            let ok = creds.token() == &*expected;
                            async move {
                                if ok {
                                    Ok(req)
                                } else {
                                    Err((actix_web::error::ErrorUnauthorized("no"), req))
                                }
                            }
                        },
                    );
                    let service = system.block_on(test::init_service(
                        App::new().service(resource().wrap(check)),
                    ));
                    run(c, &system, case, service, good, bad);
                }
                _ => {
                    let service =
                        system.block_on(test::init_service(App::new().service(resource())));
                    run(c, &system, case, service, good, bad);
                }
            }
        }
    }
}

fn frameworks(c: &mut Criterion) {
    let good = key(0);
    let bad = key(u64::MAX - 1);
    let s = setups(&good);
    axum_bench::bench(c, &s, &good, &bad);
    actix_bench::bench(c, &s, &good, &bad);
    warp_bench::bench(c, &s, &good, &bad);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = frameworks
}
criterion_main!(benches);
