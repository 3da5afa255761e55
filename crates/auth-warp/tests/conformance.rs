//! The shared conformance suite through warp's real pipeline: the routes
//! with `recover`, as a service (`warp::service`) behind the `Auth` layer,
//! as `auth_warp::serve` runs them.
//! (`warp::test::request` cannot send a header twice: its builder inserts.)
#![allow(unused_crate_dependencies)]

use auth_core::Guard;
use auth_core::testing::{Harness, SCOPE, TestRequest, TestResponse, run_suite};
use auth_warp::{Auth, Authenticated, recover};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::HeaderValue;
use warp::reply::Reply;

fn whoami(who: Option<Authenticated>) -> warp::reply::Response {
    who.map_or_else(|| "anonymous".to_owned(), |w| w.id().to_owned())
        .into_response()
}

struct Warp;

impl Harness for Warp {
    /// The layer is in front of the whole router: an unknown route is a
    /// 401 to a caller without a key (and a 404 to one with a key).
    fn unknown_route_is_404(&self) -> bool {
        false
    }

    async fn send(&mut self, guard: &Guard, request: TestRequest) -> TestResponse {
        // The suite's standard app (see `auth_core::testing`).
        let auth = Auth::new(guard.clone());
        let health = warp::path!("health")
            .and(warp::get())
            .map(|| "ok".into_response());
        let items = warp::path!("api" / "items")
            .and(warp::get())
            .and(auth.caller())
            .map(whoami);
        let preflight = warp::path!("api" / "items")
            .and(warp::options())
            .map(|| StatusCode::NO_CONTENT.into_response());
        let stt = warp::path!("api" / "stt")
            .and(warp::get())
            .and(auth.require_scope(SCOPE))
            .map(whoami);
        let stt_preflight = warp::path!("api" / "stt")
            .and(warp::options())
            .and(auth.require_scope(SCOPE))
            .map(|_| StatusCode::NO_CONTENT.into_response());
        let admin = warp::path!("admin")
            .and(warp::get())
            .and(auth.caller())
            .map(whoami);
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
        let mut service = auth.layer(warp::service(routes));
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
