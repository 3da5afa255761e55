//! No key in logs, `Debug` output, bodies or headers of any of this crate's
//! public types, on allow and deny paths.
#![allow(unused_crate_dependencies)]

use auth_axum::{Auth, AuthRejection, Authenticated};
use auth_core::PlainRequest;
use auth_core::testing::SecretWatch;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::routing::get;
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "axum-secret-key-value-0123456789";
const GUESS: &str = "axum-wrong-guess-0123456789abcdef";

#[tokio::test]
async fn no_secret_in_logs_debug_or_answers() {
    let mut watch = SecretWatch::new(&[SECRET, GUESS]);
    let guard = SecretWatch::guard(SECRET);
    let layer = Auth::new(guard.clone());
    watch.observe(format!("{layer:?}{guard:?}"));
    let app =
        Router::new()
            .route(
                "/items",
                // Handlers that log the request's headers: the credential
                // headers are marked sensitive, so the key is not among them.
                get(|who: Authenticated, headers: HeaderMap| async move {
                    format!("{who:?}{headers:?}")
                }),
            )
            .route_layer(layer.clone());
    let requests = SecretWatch::probes(SECRET, GUESS);
    for (name, value) in requests {
        let response = app
            .clone()
            .oneshot(
                Request::get("/items")
                    .header(name, value)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        watch.observe(format!("{response:?}"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        watch.observe(String::from_utf8_lossy(&body));
    }
    let refused = guard.check(&PlainRequest::get("/items").header("x-api-key", GUESS));
    let rejection = AuthRejection(refused.await.rejection().unwrap().clone());
    watch.observe(format!("{rejection:?}"));
    watch.finish();
}
