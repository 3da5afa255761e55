//! The main job, on warp: an HTTP API whose key is generated on first start.
//!
//! ```text
//! cargo run --example warp_service
//! curl -H "X-Api-Key: $(cat data/.api_key)" http://127.0.0.1:8080/api/v1/items
//! ```
//!
//! `BIND` sets the address (default `127.0.0.1:8080`), `AUTH_API_KEY_FILE`
//! the key file (default `data/.api_key`).

// Examples share the package's dependency list and use part of it.
#![allow(unused_crate_dependencies)]

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(%bind, "listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    auth_examples::warp_service::run(listener, auth_examples::key_file_path()?, shutdown).await
}
