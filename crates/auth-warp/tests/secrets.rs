//! No key in logs, `Debug` output, bodies or headers of any of this crate's
//! public types, on allow and deny paths.
#![allow(unused_crate_dependencies)]

use auth_core::PlainRequest;
use auth_core::testing::SecretWatch;
use auth_warp::{Auth, AuthRejection, Authenticated};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;
use warp::Filter;

const SECRET: &str = "warp-secret-key-value-0123456789";
const GUESS: &str = "warp-wrong-guess-0123456789abcdef";

#[tokio::test]
async fn no_secret_in_logs_debug_or_answers() {
    let mut watch = SecretWatch::new(&[SECRET, GUESS]);
    let guard = SecretWatch::guard(SECRET);
    let auth = Auth::new(guard.clone());
    watch.observe(format!("{auth:?}{guard:?}"));
    let routes = warp::path!("items")
        .and(auth.authenticated())
        // A handler that logs the request's headers: the credential headers
        // are marked sensitive, so the key is not among them.
        .and(warp::header::headers_cloned())
        .map(|who: Authenticated, headers| format!("{who:?}{headers:?}"))
        .recover(auth_warp::recover);
    let mut service = auth.layer(warp::service(routes));
    let requests = SecretWatch::probes(SECRET, GUESS);
    for (name, value) in requests {
        let request = warp::http::Request::get("/items")
            .header(name, value)
            .body(String::new())
            .unwrap();
        let response = service.call(request).await.unwrap();
        watch.observe(format!("{:?}", response.headers()));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        watch.observe(String::from_utf8_lossy(&body));
    }
    let refused = guard.check(&PlainRequest::get("/items").header("x-api-key", GUESS));
    let rejected = AuthRejection(refused.await.rejection().unwrap().clone());
    watch.observe(format!("{rejected:?}"));
    watch.finish();
}
