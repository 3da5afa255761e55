//! The actix-web service: auth-actix's middleware on each resource (so
//! unknown routes stay 404), a scope on one.

use std::path::PathBuf;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use auth_actix::{Auth, Authenticated};

async fn items(who: Authenticated) -> String {
    crate::items_body(who.id())
}

async fn admin(who: Authenticated) -> String {
    format!("{{\"caller\":\"{}\",\"admin\":true}}", who.id())
}

/// The routes, each behind `auth`.
pub fn routes(auth: Auth) -> impl FnOnce(&mut web::ServiceConfig) {
    let openapi = crate::openapi_json(&auth.security_schemes());
    move |cfg| {
        cfg.service(
            web::resource("/openapi.json")
                .wrap(auth.clone())
                .route(web::get().to(move || std::future::ready(openapi.clone()))),
        )
        .service(
            web::resource("/health")
                .wrap(auth.clone())
                .route(web::get().to(|| async { "ok" })),
        )
        .service(
            web::resource("/api/v1/items")
                .wrap(auth.clone())
                .route(web::get().to(items)),
        )
        .service(
            web::resource("/api/v1/admin")
                .wrap(auth.require_scope(crate::ADMIN_SCOPE))
                .wrap(auth)
                .route(web::get().to(admin)),
        );
    }
}

/// Serves on `listener` at once (503 until the key is ready) and loads or
/// creates the key file at `key_file` in the background. Call inside an
/// actix system; await the returned server.
pub fn serve(listener: std::net::TcpListener, key_file: PathBuf) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let (guard, slot) = crate::first_start_guard();
    let auth = Auth::new(guard);
    let disabled = crate::auth_disabled();
    let server = HttpServer::new(move || {
        if disabled {
            // The same routes with no authentication (`EXAMPLE_NO_AUTH=1`).
            App::new().configure(|cfg| {
                cfg.route("/health", web::get().to(|| async { "ok" }))
                    .route(
                        "/api/v1/items",
                        web::get().to(|| async { crate::items_body("anonymous") }),
                    );
            })
        } else {
            App::new().configure(routes(auth.clone()))
        }
    })
    .workers(2)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        if let Err(e) = crate::load_key(slot, key_file, addr).await {
            eprintln!("cannot use the key file: {e}");
            handle.stop(true).await;
        }
    });
    Ok(server)
}
