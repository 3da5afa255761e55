//! A service behind the central key service: auth-axum's layer over
//! auth-remote's verifier, configured from the environment only.

use auth_axum::{AuthLayer, Authenticated};
use auth_core::Guard;
use auth_remote::{RemoteVerifier, RemoteVerifierBuilder};
use axum::Router;
use axum::routing::get;

/// The scope `/api/v1/stt` requires.
pub const STT_SCOPE: &str = "stt";

/// The verifier's settings from `lookup` (the environment in the example):
/// `AUTH_REMOTE_URL` (required), `AUTH_REMOTE_SERVICE_TOKEN` (this
/// service's credential, from `auth-server services create`), and the
/// optional `AUTH_REMOTE_*` tunables [`RemoteVerifier::from_lookup`] reads.
/// This service always asks the key service: `AUTH_REMOTE_ENABLED` is
/// implied.
pub fn verifier_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<RemoteVerifierBuilder, auth_remote::Error> {
    let builder = RemoteVerifier::from_lookup(|name| match name {
        "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
        other => lookup(other),
    })?;
    builder.ok_or_else(|| auth_remote::Error::Config("AUTH_REMOTE_URL is required".into()))
}

/// The routes: `/health` open, `/api/v1/items` for any valid key,
/// `/api/v1/stt` for keys with the `stt` scope.
pub fn app(guard: Guard) -> Router {
    let auth = AuthLayer::new(guard);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/v1/items", get(items))
        .route(
            "/api/v1/stt",
            get(stt).route_layer(auth.require_scope(STT_SCOPE)),
        )
        .route_layer(auth)
}

async fn items(who: Authenticated) -> String {
    crate::items_body(who.id())
}

async fn stt(who: Authenticated) -> String {
    format!("{{\"caller\":\"{}\",\"scope\":\"{STT_SCOPE}\"}}", who.id())
}

/// Serves the routes with `verifier` on `listener` until `shutdown`.
pub async fn run(
    listener: tokio::net::TcpListener,
    verifier: RemoteVerifier,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let guard = Guard::builder(verifier).keyring("api").build()?;
    axum::serve(listener, app(guard))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
