//! Example services guarded by auth-core.
//!
//! `key-file-service` is the main job: a small HTTP API whose key is
//! generated into a `0600` file on first start and loaded after. Until the
//! key is ready, protected routes answer 503 with `Retry-After`; `/health`
//! is always open.
//!
//! The request → decision → response translation here is the minimal one an
//! adapter does; the framework adapter crates take it over.
#![forbid(unsafe_code)]
// The lib and the bin share one dependency list; each uses part of it.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use auth_core::{Decision, Guard, Principal, Rejection, RequestView};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};

/// An axum request seen through auth-core's [`RequestView`]. It borrows the
/// request's parts, not the request: the body is not `Sync`, and the check's
/// future must stay `Send`.
struct View<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl<'r> View<'r> {
    fn of(request: &'r Request) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .map(HeaderValue::as_bytes)
    }
}

/// The rejection as an axum response: status, headers and JSON body, all
/// decided by auth-core.
fn reject(rejection: &Rejection) -> Response {
    let mut response = Response::new(Body::from(rejection.body()));
    *response.status_mut() =
        StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in rejection.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
    }
    response
}

async fn authenticate(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let decision = guard.check(&View::of(&request)).await;
    match decision {
        Decision::Allow(grant) => {
            request
                .extensions_mut()
                .insert(Arc::clone(grant.principal()));
            next.run(request).await
        }
        Decision::Pass(_) => next.run(request).await,
        Decision::Reject(rejection) => reject(&rejection),
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn items(Extension(principal): Extension<Arc<Principal>>) -> impl IntoResponse {
    Json(serde_like_items(principal.id()))
}

/// The protected route's answer (kept free of a serde dependency).
fn serde_like_items(caller: &str) -> std::collections::BTreeMap<&'static str, String> {
    let mut body = std::collections::BTreeMap::new();
    body.insert("caller", caller.to_owned());
    body.insert("items", "apples, pears".to_owned());
    body
}

/// The service: `/health` open, `/api/v1/items` behind `guard`.
///
/// `route_layer` runs the guard on matched routes only, so an unknown path
/// is a 404 rather than a 401.
pub fn app(guard: Guard) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/items", get(items))
        .route_layer(middleware::from_fn_with_state(guard, authenticate))
}

/// The workspace README's code, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;
