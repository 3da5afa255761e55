//! A service whose callers' keys the central key service validates.
//!
//! ```text
//! cargo run -p auth-server -- serve                     # the key service, 127.0.0.1:8080
//! cargo run -p auth-server -- services create --name items-service
//! cargo run -p auth-server -- keys create --owner alice --scope stt
//! AUTH_REMOTE_URL=http://127.0.0.1:8080 AUTH_REMOTE_SERVICE_TOKEN=sk_svc_… \
//!     cargo run --example remote_service
//! curl -H "X-Api-Key: sk_live_…" http://127.0.0.1:8081/api/v1/stt
//! ```
//!
//! `BIND` sets the address (default `127.0.0.1:8081`). A key disabled in the
//! key service is refused here within a second (its changes stream).
//! Prometheus metrics: `curl http://127.0.0.1:9464/metrics` (`METRICS_BIND`;
//! `METRICS_BIND=off` serves none). The metrics listener is not
//! authenticated: keep it on loopback or an internal interface.

// Examples share the package's dependency list and use part of it.
#![allow(unused_crate_dependencies)]

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    let verifier =
        auth_examples::remote_service::verifier_from(|name| std::env::var(name).ok())?.build()?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8081".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(%bind, key_service = ?verifier, "listening");
    let metrics_bind = std::env::var("METRICS_BIND").unwrap_or_else(|_| "127.0.0.1:9464".into());
    let metrics = match metrics_bind.as_str() {
        "off" => None,
        addr => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(bind = %addr, "metrics at /metrics");
            Some(listener)
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    auth_examples::remote_service::run(listener, metrics, verifier, shutdown).await
}
