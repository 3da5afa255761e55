//! The warp service: auth-warp's filters after each route's path (so
//! unknown routes stay 404), a scope on one route, `recover` at the end.

use std::path::PathBuf;

use auth_warp::{Auth, Caller, recover};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

fn items(caller: Caller) -> Response {
    caller.reply(crate::items_body(caller.id().unwrap_or("anonymous")))
}

/// The same routes with no authentication (`EXAMPLE_NO_AUTH=1`).
pub fn routes_without_auth() -> BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| "ok".into_response());
    let items = warp::path!("api" / "v1" / "items")
        .and(warp::get())
        .map(|| crate::items_body("anonymous").into_response());
    health.or(items).unify().boxed()
}

fn admin(caller: Caller) -> Response {
    let id = caller.id().unwrap_or("anonymous").to_owned();
    caller.reply(format!("{{\"caller\":\"{id}\",\"admin\":true}}"))
}

/// The routes, each behind `auth`.
pub fn routes(auth: &Auth) -> BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .and(auth.filter())
        .map(|_: Caller| "ok".into_response());
    let items = warp::path!("api" / "v1" / "items")
        .and(warp::get())
        .and(auth.filter())
        .map(items);
    let admin = warp::path!("api" / "v1" / "admin")
        .and(warp::get())
        .and(auth.with_scope(crate::ADMIN_SCOPE))
        .map(admin);
    health
        .or(items)
        .unify()
        .or(admin)
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

/// Serves on `listener` at once (503 until the key is ready), loads or
/// creates the key file at `key_file`, and runs until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    key_file: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = listener.local_addr()?;
    let (guard, slot) = crate::first_start_guard();
    let routes = if crate::auth_disabled() {
        routes_without_auth()
    } else {
        routes(&Auth::new(guard))
    };
    let server = tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(shutdown)
            .run(),
    );
    crate::load_key(slot, key_file, addr).await?;
    server.await?;
    Ok(())
}
