//! The shared conformance suite through warp's real pipeline: the routes
//! with `recover`, as the service `warp::serve` runs (`warp::service`).
//! (`warp::test::request` cannot send a header twice: its builder inserts.)
#![allow(unused_crate_dependencies)]

use auth_core::Guard;
use auth_core::testing::{Harness, SCOPE, TestRequest, TestResponse, run_suite};
use auth_warp::{Auth, Caller, recover};
use http_body_util::BodyExt;
use tower_service::Service;
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::HeaderValue;
use warp::reply::Reply;

fn whoami(caller: &Caller) -> warp::reply::Response {
    caller.reply(caller.id().unwrap_or("anonymous").to_owned())
}

struct Warp;

impl Harness for Warp {
    async fn send(&mut self, guard: &Guard, request: TestRequest) -> TestResponse {
        // The suite's standard app (see `auth_core::testing`): path filters
        // first, so unknown routes stay 404.
        let auth = Auth::new(guard.clone());
        let health = warp::path!("health")
            .and(warp::get())
            .and(auth.filter())
            .map(|_: Caller| "ok".into_response());
        let items = warp::path!("api" / "items")
            .and(warp::get())
            .and(auth.filter())
            .map(|c: Caller| whoami(&c));
        let preflight = warp::path!("api" / "items")
            .and(warp::options())
            .and(auth.filter())
            .map(|_: Caller| StatusCode::NO_CONTENT.into_response());
        let stt = warp::path!("api" / "stt")
            .and(warp::get())
            .and(auth.with_scope(SCOPE))
            .map(|c: Caller| whoami(&c));
        let stt_preflight = warp::path!("api" / "stt")
            .and(warp::options())
            .and(auth.with_scope(SCOPE))
            .map(|_: Caller| StatusCode::NO_CONTENT.into_response());
        let admin = warp::path!("admin")
            .and(warp::get())
            .and(auth.filter())
            .map(|c: Caller| whoami(&c));
        let routes = health
            .or(items)
            .unify()
            .or(preflight)
            .unify()
            .or(stt)
            .unify()
            .or(stt_preflight)
            .unify()
            .or(admin)
            .unify()
            .recover(recover);

        let mut builder = warp::http::Request::builder()
            .method(request.method)
            .uri(request.path.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), HeaderValue::from_bytes(value).unwrap());
        }
        let mut service = warp::service(routes);
        let response = service
            .call(builder.body(String::new()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse::from_parts(
            status,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            &body,
        )
    }
}

#[tokio::test]
async fn warp_passes_the_conformance_suite() {
    run_suite(&mut Warp).await;
}
