//! Credential headers reach handlers marked sensitive, every value of them.
#![allow(unused_crate_dependencies)]

use actix_web::{App, HttpRequest, test, web};
use auth_actix::Auth;

/// Open mode lets a credential header sent twice through to the handler:
/// both values are marked sensitive, so printing the headers shows neither.
#[actix_web::test]
async fn every_value_of_a_repeated_credential_header_is_sensitive() {
    let app = test::init_service(
        App::new().service(
            web::resource("/items")
                .route(
                    web::get().to(|req: HttpRequest| async move { format!("{:?}", req.headers()) }),
                )
                .wrap(Auth::new(auth_core::Guard::open())),
        ),
    )
    .await;
    let request = test::TestRequest::get()
        .uri("/items")
        .append_header(("x-api-key", "first-secret-value"))
        .append_header(("x-api-key", "second-secret-value"))
        .append_header(("authorization", "Bearer third-secret-value"))
        .to_request();
    let body = test::read_body(test::call_service(&app, request).await).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("Sensitive"), "{body}");
    for secret in [
        "first-secret-value",
        "second-secret-value",
        "third-secret-value",
    ] {
        assert!(!body.contains(secret), "{secret} shown in:\n{body}");
    }
}
