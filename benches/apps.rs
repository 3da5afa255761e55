//! The same tiny app (`GET /items` → `"ok"`) in axum, actix-web and warp,
//! behind nothing, our adapter, or the ecosystem's own bearer check; driven
//! in process with prebuilt requests. Shared by the frameworks bench and the
//! allocation test (`#[path]`-included: both are separate crates).

use std::sync::Arc;

use auth_core::Guard;

/// What stands in front of the handler.
#[derive(Clone, Copy)]
pub(crate) enum Setup<'a> {
    /// Nothing.
    Open,
    /// Our adapter around this guard.
    Ours(&'a Guard),
    /// The ecosystem's own check, expecting this bearer token: tower-http's
    /// `ValidateRequestHeaderLayer::bearer`, actix-web-httpauth's
    /// `HttpAuthentication::bearer`, a `warp::header::<String>` with `==`.
    Ecosystem(&'a str),
    /// A layer that decides nothing and hands one value to the handler the
    /// framework's way: what the framework charges for a layer that tells
    /// handlers who called. axum: a `route_layer` inserting into the
    /// request's extensions; actix-web: a `wrap_fn` doing the same; warp: a
    /// tower layer doing the same in front of `warp::service`, and
    /// `warp::ext::get` in the route (the shape of auth-warp's `Auth`).
    Passthrough,
}

/// What [`Setup::Passthrough`] hands on (not zero-sized: a box of nothing
/// allocates nothing).
#[derive(Clone, Copy)]
struct Marker(#[allow(dead_code)] usize);

/// A framework's pipeline: makes a request carrying a bearer token (outside
/// the timing) and runs one through (inside); `true` when it succeeded.
pub(crate) struct Pipeline<R> {
    pub(crate) call: Box<dyn FnMut(R) -> bool>,
    pub(crate) request: fn(&bytes::Bytes) -> R,
}

/// `Bearer {key}` as hyper hands a parsed header value over: a slice of the
/// shared read buffer, whose clone is a reference count, not a copy.
pub(crate) fn bearer(key: &str) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::with_capacity(key.len() + 64);
    buf.extend_from_slice(b"GET /items HTTP/1.1\r\nauthorization: ");
    let start = buf.len();
    buf.extend_from_slice(b"Bearer ");
    buf.extend_from_slice(key.as_bytes());
    buf.split().freeze().slice(start..)
}

pub(crate) fn axum(setup: Setup<'_>) -> Pipeline<axum::http::Request<axum::body::Body>> {
    use axum::routing::get;
    use tower::ServiceExt;

    let app = axum::Router::new().route("/items", get(|| async { "ok" }));
    let app = match setup {
        Setup::Ours(g) => app.route_layer(auth_axum::Auth::new(g.clone())),
        Setup::Ecosystem(token) => {
            #[allow(deprecated)]
            let check = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(token);
            app.route_layer(check)
        }
        Setup::Passthrough => {
            // A layer with state, as every real one has: axum boxes a
            // route layer's state per request, and a box of nothing (a
            // stateless closure) would allocate nothing.
            let state = Marker(1);
            app.route_layer(tower::util::MapRequestLayer::new(
                move |mut req: axum::http::Request<axum::body::Body>| {
                    req.extensions_mut().insert(state);
                    req
                },
            ))
        }
        Setup::Open => app,
    };
    Pipeline {
        call: Box::new(move |req| {
            let res = auth_benches::ready(app.clone().oneshot(req)).unwrap();
            res.status().is_success()
        }),
        request: |value| {
            axum::http::Request::get("/items")
                .header(
                    "authorization",
                    axum::http::HeaderValue::from_maybe_shared(value.clone()).unwrap(),
                )
                .body(axum::body::Body::empty())
                .unwrap()
        },
    }
}

pub(crate) fn warp(setup: Setup<'_>) -> Pipeline<warp::http::Request<String>> {
    use tower::{Layer, Service};
    use warp::Filter;

    let route = warp::path!("items").and(warp::get());
    // Each branch has its own service type; the boxed closure erases it.
    let call: Box<dyn FnMut(warp::http::Request<String>) -> bool> = match setup {
        Setup::Ours(g) => {
            // auth-warp's way: the `Auth` layer in front of the service,
            // the route reading its decision.
            let auth = auth_warp::Auth::new(g.clone());
            let filter = route
                .and(auth.caller())
                .map(|_| "ok")
                .recover(auth_warp::recover);
            let mut service = auth.layer(warp::service(filter));
            Box::new(move |req| {
                let res = auth_benches::ready(service.call(req)).unwrap();
                res.status().is_success()
            })
        }
        Setup::Ecosystem(token) => {
            let expected = format!("Bearer {token}");
            let filter = route
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
                .recover(auth_warp::recover);
            let mut service = warp::service(filter);
            Box::new(move |req| {
                let res = auth_benches::ready(service.call(req)).unwrap();
                res.status().is_success()
            })
        }
        Setup::Passthrough => {
            // The same shape as ours with no decision: a tower layer that
            // inserts a value, and the route reading it.
            let state = Marker(1);
            let filter = route
                .and(warp::ext::get::<Marker>())
                .map(|_| "ok")
                .recover(auth_warp::recover);
            let layer =
                tower::util::MapRequestLayer::new(move |mut req: warp::http::Request<String>| {
                    req.extensions_mut().insert(state);
                    req
                });
            let mut service = layer.layer(warp::service(filter));
            Box::new(move |req| {
                let res = auth_benches::ready(service.call(req)).unwrap();
                res.status().is_success()
            })
        }
        Setup::Open => {
            let mut service = warp::service(route.map(|| "ok").recover(auth_warp::recover));
            Box::new(move |req| {
                let res = auth_benches::ready(service.call(req)).unwrap();
                res.status().is_success()
            })
        }
    };
    Pipeline {
        call,
        request: |value| {
            warp::http::Request::get("/items")
                .header(
                    "authorization",
                    warp::http::HeaderValue::from_maybe_shared(value.clone()).unwrap(),
                )
                .body(String::new())
                .unwrap()
        },
    }
}

pub(crate) fn actix(setup: Setup<'_>) -> Pipeline<actix_http::Request> {
    use actix_web::dev::{Service, ServiceRequest};
    use actix_web::{App, test, web};
    use actix_web_httpauth::extractors::bearer::BearerAuth;
    use actix_web_httpauth::middleware::HttpAuthentication;

    async fn ok() -> &'static str {
        "ok"
    }

    let system = actix_web::rt::System::new();
    let resource = || web::resource("/items").route(web::get().to(ok));
    // Each branch has its own service type; the boxed closure erases it.
    let call: Box<dyn FnMut(actix_http::Request) -> bool> = match setup {
        Setup::Ours(g) => {
            let auth = auth_actix::Auth::new(g.clone());
            let service = system.block_on(test::init_service(
                App::new().service(resource().wrap(auth)),
            ));
            Box::new(move |req| {
                let res = system.block_on(service.call(req));
                res.is_ok_and(|r| r.status().is_success())
            })
        }
        Setup::Ecosystem(token) => {
            let expected: Arc<str> = Arc::from(token);
            let check =
                HttpAuthentication::bearer(move |req: ServiceRequest, creds: BearerAuth| {
                    let ok = creds.token() == &*expected;
                    async move {
                        if ok {
                            Ok(req)
                        } else {
                            Err((actix_web::error::ErrorUnauthorized("no"), req))
                        }
                    }
                });
            let service = system.block_on(test::init_service(
                App::new().service(resource().wrap(check)),
            ));
            Box::new(move |req| {
                let res = system.block_on(service.call(req));
                res.is_ok_and(|r| r.status().is_success())
            })
        }
        Setup::Passthrough => {
            let resource = resource().wrap_fn(|req, srv| {
                actix_web::HttpMessage::extensions_mut(&req).insert(Marker(1));
                srv.call(req)
            });
            let service = system.block_on(test::init_service(App::new().service(resource)));
            Box::new(move |req| {
                let res = system.block_on(service.call(req));
                res.is_ok_and(|r| r.status().is_success())
            })
        }
        Setup::Open => {
            let service = system.block_on(test::init_service(App::new().service(resource())));
            Box::new(move |req| {
                let res = system.block_on(service.call(req));
                res.is_ok_and(|r| r.status().is_success())
            })
        }
    };
    Pipeline {
        call,
        request: |value| {
            test::TestRequest::get()
                .uri("/items")
                .insert_header((
                    "authorization",
                    actix_web::http::header::HeaderValue::from_maybe_shared(value.clone()).unwrap(),
                ))
                .to_request()
        },
    }
}
