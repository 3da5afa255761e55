//! The main job: an HTTP API whose key is generated on first start.
//!
//! ```text
//! cargo run -p auth-examples --bin key-file-service
//! curl -H "X-Api-Key: $(cat data/.api_key)" http://127.0.0.1:8080/api/v1/items
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:8080`), `AUTH_API_KEY_FILE`
//! (default `data/.api_key`), `RUST_LOG`-style level via `LOG_LEVEL`.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::sync::Arc;

use auth_core::{Deferred, Guard, KeyFile, Mode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let level = std::env::var("LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt().with_max_level(level).init();

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let builder = KeyFile::builder().path("data/.api_key");
    let path = builder.resolve_path()?;

    // Serve at once; protected routes answer 503 until the key is ready.
    let slot = Arc::new(Deferred::<KeyFile>::new());
    let guard = Guard::builder(slot.clone())
        .mode(Mode::Uninitialised)
        .build()?;
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(%bind, "listening");

    let key_file = tokio::task::spawn_blocking(move || builder.load_or_create()).await??;
    if key_file.was_created() {
        println!("New API key written to {} (mode 0600).", path.display());
    }
    println!(
        "Try: curl -H \"X-Api-Key: $(cat {})\" http://{bind}/api/v1/items",
        path.display()
    );
    let _ = slot.set(key_file);

    axum::serve(listener, auth_examples::app(guard))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
