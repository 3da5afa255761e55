//! No key in logs, `Debug` output, bodies or headers of any of this crate's
//! public types, on allow and deny paths.
#![allow(unused_crate_dependencies)]

use auth_core::testing::SecretWatch;
use auth_core::{Rejection, RejectionKind};
use auth_warp::{Auth, AuthRejected, Caller};
use http_body_util::BodyExt;
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
        .and(auth.filter())
        .map(|who: Caller| format!("{who:?}"))
        .recover(auth_warp::recover);
    let mut service = warp::service(routes);
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
    let rejected = AuthRejected(Rejection::new(RejectionKind::Missing, "api".into()));
    watch.observe(format!("{rejected:?}"));
    watch.finish();
}
