//! The shared conformance suite through actix-web's real pipeline
//! (`actix_web::test::init_service` + `call_service`).
#![allow(unused_crate_dependencies)]

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, test, web};
use auth_actix::{Auth, Authenticated};
use auth_core::Guard;
use auth_core::testing::{Harness, SCOPE, TestRequest, TestResponse, run_suite};

async fn whoami(who: Option<Authenticated>) -> String {
    who.map_or_else(|| "anonymous".to_owned(), |w| w.id().to_owned())
}

struct Actix;

impl Harness for Actix {
    async fn send(&mut self, guard: &Guard, request: TestRequest) -> TestResponse {
        let auth = Auth::new(guard.clone());
        // The suite's standard app (see `auth_core::testing`); each resource
        // wraps the middleware itself, so unknown routes stay 404.
        let app = test::init_service(
            App::new()
                .service(
                    web::resource("/health")
                        .wrap(auth.clone())
                        .route(web::get().to(|| async { "ok" })),
                )
                .service(
                    web::resource("/api/items")
                        .wrap(auth.clone())
                        .route(web::get().to(whoami))
                        .route(
                            web::method(actix_web::http::Method::OPTIONS)
                                .to(|| async { HttpResponse::new(StatusCode::NO_CONTENT) }),
                        ),
                )
                .service(
                    web::resource("/api/stt")
                        .wrap(auth.require_scope(SCOPE))
                        .wrap(auth.clone())
                        .route(web::get().to(whoami))
                        .route(
                            web::method(actix_web::http::Method::OPTIONS)
                                .to(|| async { HttpResponse::new(StatusCode::NO_CONTENT) }),
                        ),
                )
                .service(
                    web::resource("/admin")
                        .wrap(auth)
                        .route(web::get().to(whoami)),
                ),
        )
        .await;
        let method = actix_web::http::Method::from_bytes(request.method.as_bytes()).unwrap();
        let mut req = test::TestRequest::default()
            .method(method)
            .uri(&request.path);
        for (name, value) in &request.headers {
            req = req.append_header((
                name.as_str(),
                actix_web::http::header::HeaderValue::from_bytes(value).unwrap(),
            ));
        }
        let response = test::call_service(&app, req.to_request()).await;
        let status = response.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = test::read_body(response).await;
        TestResponse::from_parts(
            status,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &body,
        )
    }
}

#[actix_web::test]
async fn actix_passes_the_conformance_suite() {
    run_suite(&mut Actix).await;
}
