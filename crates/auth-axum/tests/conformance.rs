//! The shared conformance suite through axum's real pipeline
//! (`tower::ServiceExt::oneshot` on a `Router`).
#![allow(unused_crate_dependencies)]

use auth_axum::{Auth, Authenticated};
use auth_core::Guard;
use auth_core::testing::{Harness, SCOPE, TestRequest, TestResponse, run_suite};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn whoami(who: Option<Authenticated>) -> String {
    who.map_or_else(|| "anonymous".to_owned(), |w| w.id().to_owned())
}

/// The suite's standard app (see `auth_core::testing`).
fn app(guard: &Guard) -> Router {
    let auth = Auth::new(guard.clone());
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/api/items",
            get(whoami).options(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/api/stt",
            get(whoami)
                .options(|| async { StatusCode::NO_CONTENT })
                .route_layer(auth.require_scope(SCOPE)),
        )
        .route("/admin", get(whoami))
        .route_layer(auth)
}

struct Axum;

impl Harness for Axum {
    async fn send(&mut self, guard: &Guard, request: TestRequest) -> TestResponse {
        let mut builder = Request::builder()
            .method(request.method)
            .uri(request.path.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), HeaderValue::from_bytes(value).unwrap());
        }
        let response = app(guard)
            .oneshot(builder.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse::from_parts(
            status,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &body,
        )
    }
}

#[tokio::test]
async fn axum_passes_the_conformance_suite() {
    run_suite(&mut Axum).await;
}
