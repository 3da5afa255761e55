//! No key in logs, `Debug` output, bodies or headers of any of this crate's
//! public types, on allow and deny paths.
#![allow(unused_crate_dependencies)]

use auth_axum::{AuthLayer, AuthRejection, Authenticated};
use auth_core::testing::SecretWatch;
use auth_core::{Rejection, RejectionKind};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use http_body_util::BodyExt;
use tower::ServiceExt;

const SECRET: &str = "axum-secret-key-value-0123456789";
const GUESS: &str = "axum-wrong-guess-0123456789abcdef";

#[tokio::test]
async fn no_secret_in_logs_debug_or_answers() {
    let mut watch = SecretWatch::new(&[SECRET, GUESS]);
    let guard = SecretWatch::guard(SECRET);
    let layer = AuthLayer::new(guard.clone());
    watch.observe(format!("{layer:?}{guard:?}"));
    let app = Router::new()
        .route(
            "/items",
            get(|who: Authenticated| async move { format!("{who:?}") }),
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
    let rejection = AuthRejection(Rejection::new(RejectionKind::Missing, "api".into()));
    watch.observe(format!("{rejection:?}"));
    watch.finish();
}
