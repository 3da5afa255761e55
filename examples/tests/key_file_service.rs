//! The example service through axum's real request pipeline.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use auth_core::{Deferred, Guard, KeyFile, Mode};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::builder().uri(path)
}

#[tokio::test]
async fn first_start_503_then_key_file_key_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/.api_key");
    let slot = Arc::new(Deferred::<KeyFile>::new());
    let guard = Guard::builder(slot.clone())
        .mode(Mode::Uninitialised)
        .build()
        .unwrap();
    let app = auth_examples::app(guard);

    let (status, headers, body) =
        call(&app, get("/api/v1/items").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("\"not_ready\""), "{body}");
    let (status, _, body) = call(&app, get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let key_file = KeyFile::builder()
        .path(&path)
        .env_var(None)
        .load_or_create()
        .unwrap();
    assert!(key_file.was_created());
    slot.set(key_file).unwrap();
    let key = std::fs::read_to_string(&path).unwrap();

    let (status, _, body) = call(
        &app,
        get("/api/v1/items")
            .header("x-api-key", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"caller\":\"operator\""), "{body}");

    let (status, _, body) = call(
        &app,
        get("/api/v1/items")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, headers, body) = call(
        &app,
        get("/api/v1/items")
            .header("x-api-key", "wrong")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer realm=\"api\", error=\"invalid_token\""
    );
    assert!(!body.contains(&key));

    let (status, headers, _) = call(&app, get("/api/v1/items").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"api\"");

    let (status, _, _) = call(&app, get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A second start loads the same key.
    let again = KeyFile::builder()
        .path(&path)
        .env_var(None)
        .load_or_create()
        .unwrap();
    assert!(!again.was_created());
    let app2 = auth_examples::app(Guard::builder(again).build().unwrap());
    let (status, _, _) = call(
        &app2,
        get("/api/v1/items")
            .header("x-api-key", &key)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
