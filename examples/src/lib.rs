//! Example services guarded by auth-core, one per framework, all on the
//! first-start pattern: the key is generated into a `0600` file on first
//! start and loaded after; until it is ready, protected routes answer 503
//! with `Retry-After`; `/health` is always open.
//!
//! Each service: `GET /health` (open), `GET /api/v1/items` (any valid key),
//! `GET /api/v1/admin` (scope `admin`, which the key file's principal holds).
#![forbid(unsafe_code)]
// The lib and the examples share one dependency list; each uses part of it.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use auth_core::{Deferred, Guard, KeyFile, Mode, Principal, PublicPaths};

pub mod actix_service;
pub mod axum_service;
pub mod remote_service;
pub mod warp_service;

/// The scope of the admin route.
pub const ADMIN_SCOPE: &str = "admin";

/// Whether `EXAMPLE_NO_AUTH=1`: the same routes without authentication,
/// the baseline of `benches/e2e.sh`.
pub fn auth_disabled() -> bool {
    std::env::var_os("EXAMPLE_NO_AUTH").is_some_and(|v| v == "1")
}

/// The body of `/api/v1/items` for `caller`.
pub fn items_body(caller: &str) -> String {
    format!("{{\"caller\":\"{caller}\",\"items\":[\"apples\",\"pears\"]}}")
}

/// Where the key file lives: `AUTH_API_KEY_FILE` if set, else `data/.api_key`.
pub fn key_file_path() -> Result<PathBuf, auth_core::Error> {
    KeyFile::builder().path("data/.api_key").resolve_path()
}

/// A guard that answers 503 until [`load_key`] fills its slot.
pub fn first_start_guard() -> (Guard, Arc<Deferred<KeyFile>>) {
    let slot = Arc::new(Deferred::new());
    let guard = Guard::builder(slot.clone())
        .mode(Mode::Uninitialised)
        .public_paths(PublicPaths::default().exact("/openapi.json"))
        .build()
        .expect("a valid guard configuration");
    (guard, slot)
}

/// Loads or creates the key file (off the async threads), fills the slot,
/// and prints where the key is and a `curl` line to try.
pub async fn load_key(
    slot: Arc<Deferred<KeyFile>>,
    path: PathBuf,
    addr: SocketAddr,
) -> Result<(), auth_core::Error> {
    let builder = KeyFile::builder()
        .path(&path)
        .env_var(None)
        .principal(Principal::new("operator").with_scopes([ADMIN_SCOPE]));
    let key_file = tokio::task::spawn_blocking(move || builder.load_or_create())
        .await
        .map_err(|e| auth_core::Error::Config(format!("key loading task failed: {e}")))??;
    announce(&path, key_file.was_created(), addr);
    let _ = slot.set(key_file);
    Ok(())
}

fn announce(path: &Path, created: bool, addr: SocketAddr) {
    let what = if created {
        "New API key written to"
    } else {
        "API key loaded from"
    };
    println!(
        "{what} {} (mode 0600; the key itself is never logged).",
        path.display()
    );
    println!(
        "Try: curl -H \"X-Api-Key: $(cat {})\" http://{addr}/api/v1/items",
        path.display()
    );
}

/// The service's OpenAPI document: its routes and, from the guard itself,
/// the security schemes it enforces (`modify` is the guard's
/// `SecuritySchemes`), so the docs cannot disagree with the gate.
pub fn openapi_json(modify: &dyn utoipa::Modify) -> String {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::{InfoBuilder, OpenApiBuilder, PathsBuilder};
    let get = |summary: &str| {
        PathItem::new(
            HttpMethod::Get,
            OperationBuilder::new().summary(Some(summary)).build(),
        )
    };
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("example service")
                .version("1")
                .build(),
        )
        .paths(
            PathsBuilder::new()
                .path("/api/v1/items", get("List items (any valid key)"))
                .path("/api/v1/admin", get("Admin (scope `admin`)")),
        )
        .build();
    modify.modify(&mut doc);
    doc.to_json().unwrap_or_else(|_| "{}".to_owned())
}

/// The workspace README's code, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;
