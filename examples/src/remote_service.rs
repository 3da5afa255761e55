//! A service behind the central key service: auth-axum's layer over
//! auth-remote's verifier, configured from the environment only; its
//! Prometheus metrics on a listener of their own.

use std::sync::Arc;

use auth_axum::{Auth, Authenticated};
use auth_core::prometheus::Metrics;
use auth_core::prometheus::prometheus_client::encoding::text::encode;
use auth_core::prometheus::prometheus_client::registry::Registry;
use auth_core::{Guard, PublicPaths};
use auth_remote::{RemoteVerifier, RemoteVerifierBuilder};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
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
async fn ready(verifier: RemoteVerifier) -> Response {
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
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [("content-type", "application/json")], body).into_response()
}

async fn items(who: Authenticated) -> String {
    crate::items_body(who.id())
}

async fn stt(who: Authenticated) -> String {
    format!("{{\"caller\":\"{}\",\"scope\":\"{STT_SCOPE}\"}}", who.id())
}

/// `GET /metrics`: the registry in the OpenMetrics text format, read at
/// each scrape (the guard's decisions, the verifier's calls, circuit,
/// stream and cache).
pub fn metrics_app(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            let mut text = String::new();
            match encode(&mut text, &registry) {
                Ok(()) => (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }),
    )
}

/// The guard and the registry that exports it and `verifier`.
fn guard_and_metrics(verifier: &RemoteVerifier) -> Result<(Guard, Registry), auth_core::Error> {
    let guard = Guard::builder(verifier.clone())
        .keyring("api")
        .public_paths(PublicPaths::default().exact("/ready"))
        .build()?;
    let mut registry = Registry::default();
    Metrics::register(&mut registry)
        .guard(&guard)
        .add(verifier.clone());
    Ok((guard, registry))
}

/// Serves the routes with `verifier` on `listener` — and `/metrics` on
/// `metrics`, when given: never on the API's port, so that it is reachable
/// only where that listener is bound (loopback by default) — until
/// `shutdown`.
pub async fn run(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    verifier: RemoteVerifier,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (guard, registry) = guard_and_metrics(&verifier)?;
    // Ends with the service (aborted when dropped).
    let _metrics = metrics.map(|listener| {
        let app = metrics_app(Arc::new(registry));
        AbortOnDrop(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }))
    });
    axum::serve(listener, app(guard, verifier.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    // Credits leased and not spent go back, and the decisions counted since
    // the last usage report go out, before the process ends.
    verifier.return_leases().await;
    verifier.report_usage().await;
    Ok(())
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
