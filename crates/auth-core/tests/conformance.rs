//! The conformance suite the adapters run, driven here through auth-core
//! alone: the standard app written with the guard's own pieces
//! (`Guard::check`, `Guard::admit`, `RouteScope::check`), as an adapter
//! wires them. An adapter that fails a case this harness passes has its own
//! bug; a case this harness fails is auth-core's.
#![cfg(feature = "testing")]
#![allow(unused_crate_dependencies)]

use auth_core::testing::{Harness, SCOPE, TestRequest, TestResponse, run_suite};
use auth_core::{Admission, Guard, PlainRequest, Rejection};

/// The standard app over plain requests.
struct Plain;

fn rejection(r: &Rejection) -> TestResponse {
    let headers = r.headers();
    let body = r.body();
    TestResponse::from_parts(
        r.status(),
        headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        body.as_bytes(),
    )
}

fn answer(status: u16, admission: &Admission, body: &str) -> TestResponse {
    let headers = admission.headers();
    TestResponse::from_parts(
        status,
        headers.iter().map(|(n, v)| (*n, v.as_bytes())),
        body.as_bytes(),
    )
}

impl Harness for Plain {
    async fn send(&mut self, guard: &Guard, request: TestRequest) -> TestResponse {
        let method = request.method;
        // The router first: an unknown route is 404 before the guard runs.
        let route = match (method, request.path.as_str()) {
            ("GET", "/health") => "health",
            ("GET" | "OPTIONS", "/api/items") => "items",
            ("GET" | "OPTIONS", "/api/stt") => "stt",
            ("GET", "/admin") => "admin",
            _ => return TestResponse::from_parts(404, [], b"not found"),
        };
        let mut req = PlainRequest::new(method, &request.path);
        for (name, value) in &request.headers {
            req = req.header(name, value);
        }
        let admission = match guard.admit(guard.check(&req).await) {
            Ok(admission) => admission,
            Err(r) => return rejection(&r),
        };
        if route == "stt" {
            let scope = guard.route_scope(SCOPE).expect("a valid scope");
            if let Err(r) = scope.check(Some(&admission)) {
                return rejection(&r);
            }
        }
        match (route, method) {
            ("health", _) => answer(200, &admission, "ok"),
            (_, "OPTIONS") => answer(204, &admission, ""),
            _ => {
                let who = admission.principal().map_or("anonymous", |p| p.id());
                answer(200, &admission, who)
            }
        }
    }
}

#[tokio::test]
async fn the_conformance_suite_passes_on_plain_requests() {
    run_suite(&mut Plain).await;
}
