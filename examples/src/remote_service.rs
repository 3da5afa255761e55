//! A service behind the central key service: auth-axum's layer over
//! auth-remote's verifier, configured from the environment only.

use auth_axum::{Auth, Authenticated};
use auth_core::{Guard, PublicPaths};
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

/// The routes: `/health` and `/ready` open, `/api/v1/items` for any valid
/// key, `/api/v1/stt` for keys with the `stt` scope.
pub fn app(guard: Guard, verifier: RemoteVerifier) -> Router {
    let auth = Auth::new(guard);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(move || ready(verifier.clone())))
        .route("/api/v1/items", get(items))
        .route(
            "/api/v1/stt",
            get(stt).route_layer(auth.require_scope(STT_SCOPE)),
        )
        .route_layer(auth)
}

/// Ready while keys not in the cache can be validated (the circuit to the
/// key service is closed): 503 otherwise, so that an orchestrator sends
/// new traffic elsewhere. The body says what the verifier knows.
async fn ready(verifier: RemoteVerifier) -> axum::response::Response {
    use axum::response::IntoResponse;
    let state = verifier.state();
    let last = state.last_answer.map_or_else(
        || "null".to_owned(),
        |t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string()
        },
    );
    let body = format!(
        "{{\"ready\":{},\"circuitOpen\":{},\"streamLive\":{},\"lastAnswer\":{last}}}",
        state.can_validate_new_keys(),
        state.circuit_open,
        state.stream_live
    );
    let status = if state.can_validate_new_keys() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [("content-type", "application/json")], body).into_response()
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
    let guard = Guard::builder(verifier.clone())
        .keyring("api")
        .public_paths(PublicPaths::default().exact("/ready"))
        .build()?;
    axum::serve(listener, app(guard, verifier))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
