//! No key in logs, `Debug` output, bodies or headers of any of this crate's
//! public types, on allow and deny paths.
#![allow(unused_crate_dependencies)]

use actix_web::{App, HttpRequest, test, web};
use auth_actix::{Auth, AuthRejection, Authenticated};
use auth_core::PlainRequest;
use auth_core::testing::SecretWatch;

const SECRET: &str = "actix-secret-key-value-0123456789";
const GUESS: &str = "actix-wrong-guess-0123456789abcdef";

#[actix_web::test]
async fn no_secret_in_logs_debug_or_answers() {
    let mut watch = SecretWatch::new(&[SECRET, GUESS]);
    let guard = SecretWatch::guard(SECRET);
    let auth = Auth::new(guard.clone());
    watch.observe(format!("{auth:?}{guard:?}"));
    let app = test::init_service(
        App::new().service(
            web::resource("/items")
                // A handler that logs the request's headers: the credential
                // headers are marked sensitive, so the key is not among them.
                .route(
                    web::get().to(|who: Authenticated, req: HttpRequest| async move {
                        format!("{who:?}{:?}", req.headers())
                    }),
                )
                .wrap(auth),
        ),
    )
    .await;
    let requests = SecretWatch::probes(SECRET, GUESS);
    for header in requests {
        let request = test::TestRequest::get()
            .uri("/items")
            .insert_header(header)
            .to_request();
        let response = test::call_service(&app, request).await;
        watch.observe(format!("{:?}", response.headers()));
        let body = test::read_body(response).await;
        watch.observe(String::from_utf8_lossy(&body));
    }
    let refused = guard.check(&PlainRequest::get("/items").header("x-api-key", GUESS));
    let error = AuthRejection(refused.await.rejection().unwrap().clone());
    watch.observe(format!("{error:?}{error}"));
    watch.finish();
}
