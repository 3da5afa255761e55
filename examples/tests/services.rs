//! Each example service on 127.0.0.1 at a free port, over real HTTP.
#![allow(unused_crate_dependencies)]

use std::path::Path;
use std::time::Duration;

async fn wait_for_key(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(key) = std::fs::read_to_string(path) {
            if key.len() == 64 {
                return key;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the key file {} never appeared", path.display());
}

/// What every example must answer, whatever the framework.
async fn check_service(base: &str, key_path: &Path) {
    let http = reqwest::Client::new();
    let key = wait_for_key(key_path).await;
    let get = |path: &str| http.get(format!("{base}{path}"));

    let health = get("/health").send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // The key file appears just before the guard's slot is filled: a 503
    // in between is the not-ready answer; retry it briefly.
    let mut status = 0;
    for _ in 0..100 {
        let response = get("/api/v1/items")
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        status = response.status().as_u16();
        if status != 503 {
            break;
        }
        assert_eq!(response.headers()["retry-after"], "1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);

    let no_key = get("/api/v1/items").send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer realm=\"api\"");
    let body = no_key.text().await.unwrap();
    assert!(body.contains("\"error\":\"missing_credential\""), "{body}");

    let bearer = get("/api/v1/items")
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let body = bearer.text().await.unwrap();
    assert!(body.contains("\"caller\":\"operator\""), "{body}");

    let wrong = get("/api/v1/items")
        .header("x-api-key", "0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(!wrong.text().await.unwrap().contains(&key));

    let admin = get("/api/v1/admin")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);

    // With a key, an unknown route is a 404 everywhere (without one, warp's
    // layer in front of the router answers 401 first).
    let unknown = get("/no/such/route")
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

type ServeResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The OpenAPI document states the schemes the gate enforces.
async fn check_openapi(base: &str) {
    let doc = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        doc.contains(r#""x-api-key":{"type":"apiKey","in":"header","name":"x-api-key""#),
        "{doc}"
    );
    assert!(
        doc.contains(r#""bearer":{"type":"http","scheme":"bearer""#),
        "{doc}"
    );
    assert!(doc.contains("/api/v1/admin"), "{doc}");
}

/// Starts a tokio-based example (`run(listener, key file, shutdown)`) on a
/// free port, twice in a row: the first start creates the key file, the
/// second loads the same key. Checks the service each time.
async fn twice<F, Fut>(run: F, openapi: bool)
where
    F: Fn(tokio::net::TcpListener, std::path::PathBuf, tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = ServeResult> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("data/.api_key");
    let mut first = None;
    for _start in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, key_path.clone(), stopped));
        check_service(&base, &key_path).await;
        if openapi {
            check_openapi(&base).await;
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        let key = std::fs::read_to_string(&key_path).unwrap();
        assert_eq!(first.get_or_insert_with(|| key.clone()), &key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_service_over_http() {
    twice(
        |listener, key_path, stopped| {
            auth_examples::axum_service::run(listener, key_path, async {
                let _ = stopped.await;
            })
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warp_service_over_http() {
    twice(
        |listener, key_path, stopped| {
            auth_examples::warp_service::run(listener, key_path, async {
                let _ = stopped.await;
            })
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_service_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("data/.api_key");
    for _start in 0..2 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let path = key_path.clone();
        // actix-web runs its own system on a thread of its own.
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = auth_examples::actix_service::serve(listener, path).unwrap();
                handle_tx.send(server.handle()).unwrap();
                server.await
            })
        });
        let handle = handle_rx.recv().unwrap();
        check_service(&base, &key_path).await;
        check_openapi(&base).await;
        handle.stop(true).await;
        thread.join().unwrap().unwrap();
    }
}
