//! The warp service: the routes as filters, behind auth-warp's `Auth`
//! layer (`auth_warp::serve`), a scope on one route, `recover` at the end.

use std::path::PathBuf;

use auth_warp::{Auth, Authenticated, recover};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

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

/// The routes, reading what `auth` decided.
pub fn routes(auth: &Auth) -> BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| "ok".into_response());
    let items = warp::path!("api" / "v1" / "items")
        .and(warp::get())
        .and(auth.authenticated())
        .map(|who: Authenticated| crate::items_body(who.id()).into_response());
    let admin = warp::path!("api" / "v1" / "admin")
        .and(warp::get())
        .and(auth.require_scope(crate::ADMIN_SCOPE))
        .and(auth.authenticated())
        .map(|_, who: Authenticated| {
            format!("{{\"caller\":\"{}\",\"admin\":true}}", who.id()).into_response()
        });
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
    let server = if crate::auth_disabled() {
        let routes = routes_without_auth();
        tokio::spawn(async move {
            warp::serve(routes)
                .incoming(listener)
                .graceful(shutdown)
                .run()
                .await;
            Ok::<(), std::io::Error>(())
        })
    } else {
        let auth = Auth::new(guard);
        let routes = routes(&auth);
        tokio::spawn(async move {
            auth_warp::serve(listener, auth, routes, shutdown).await;
            Ok(())
        })
    };
    crate::load_key(slot, key_file, addr).await?;
    server.await??;
    Ok(())
}
