//! The axum service: auth-axum's layer on the router, a scope on one route.

use std::net::SocketAddr;
use std::path::PathBuf;

use auth_axum::{Auth, Authenticated};
use auth_core::Guard;
use axum::Router;
use axum::routing::get;

/// The routes, behind `guard`. `route_layer` runs the guard on matched
/// routes only, so an unknown path is a 404, not a 401.
pub fn app(guard: Guard) -> Router {
    let auth = Auth::new(guard);
    let openapi = crate::openapi_json(&auth.security_schemes());
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/openapi.json", get(move || std::future::ready(openapi)))
        .route("/api/v1/items", get(items))
        .route(
            "/api/v1/admin",
            get(admin).route_layer(auth.require_scope(crate::ADMIN_SCOPE)),
        )
        .route_layer(auth)
}

async fn items(who: Authenticated) -> String {
    crate::items_body(who.id())
}

/// The same routes with no authentication (`EXAMPLE_NO_AUTH=1`).
pub fn app_without_auth() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/api/v1/items",
            get(|| async { crate::items_body("anonymous") }),
        )
}

async fn admin(who: Authenticated) -> String {
    format!("{{\"caller\":\"{}\",\"admin\":true}}", who.id())
}

/// Serves on `listener` at once (503 until the key is ready), loads or
/// creates the key file at `key_file`, and runs until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    key_file: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = listener.local_addr()?;
    let (guard, slot) = crate::first_start_guard();
    let router = if crate::auth_disabled() {
        app_without_auth()
    } else {
        app(guard)
    };
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    crate::load_key(slot, key_file, addr).await?;
    server.await??;
    Ok(())
}
