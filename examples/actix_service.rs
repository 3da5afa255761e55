//! The main job, on actix-web: an HTTP API whose key is generated on first start.
//!
//! ```text
//! cargo run --example actix_service
//! curl -H "X-Api-Key: $(cat data/.api_key)" http://127.0.0.1:8080/api/v1/items
//! ```
//!
//! `BIND` sets the address (default `127.0.0.1:8080`), `AUTH_API_KEY_FILE`
//! the key file (default `data/.api_key`).

// Examples share the package's dependency list and use part of it.
#![allow(unused_crate_dependencies)]

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = std::net::TcpListener::bind(&bind)?;
    tracing::info!(%bind, "listening");
    auth_examples::actix_service::serve(listener, auth_examples::key_file_path()?)?.await?;
    Ok(())
}
