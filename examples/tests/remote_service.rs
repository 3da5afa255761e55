//! The `remote_service` example against a real auth-server, both on
//! 127.0.0.1 at free ports, over real HTTP; configured as the example is,
//! from (a map standing in for) the environment.
#![allow(unused_crate_dependencies)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// auth-server on a temporary SQLite directory: its address and admin key.
async fn key_service(dir: &std::path::Path) -> (SocketAddr, String) {
    let store = auth_server::open_store(dir, None).await.unwrap();
    let app = auth_server::app(store, dir).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admin = std::fs::read_to_string(auth_server::admin_key_path(dir)).unwrap();
    (addr, admin.trim().to_owned())
}

async fn admin(addr: SocketAddr, key: &str, method: &str, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// The example's service, configured from `env`, on a free port; its
/// metrics on another.
async fn remote_service(env: &HashMap<&str, String>) -> (SocketAddr, SocketAddr) {
    let verifier = auth_examples::remote_service::verifier_from(|n| env.get(n).cloned())
        .unwrap()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    tokio::spawn(auth_examples::remote_service::run(
        listener,
        Some(metrics),
        verifier,
        std::future::pending(),
    ));
    (addr, metrics_addr)
}

/// `/metrics` at `addr`: the text, after checking the content type.
async fn scrape(addr: SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels, as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_service_answers_from_the_key_service_and_hears_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let (ks, admin_key) = key_service(dir.path()).await;
    let service = admin(
        ks,
        &admin_key,
        "POST",
        "/api/v1/services",
        json!({"name": "items"}),
    )
    .await;
    let alice = admin(
        ks,
        &admin_key,
        "POST",
        "/api/v1/keys",
        json!({"owner": "alice", "scopes": ["stt"]}),
    )
    .await;
    let bob = admin(
        ks,
        &admin_key,
        "POST",
        "/api/v1/keys",
        json!({"owner": "bob"}),
    )
    .await;

    // Configured as the example is: from the environment only.
    let env = HashMap::from([
        ("AUTH_REMOTE_URL", format!("http://{ks}")),
        (
            "AUTH_REMOTE_SERVICE_TOKEN",
            service["key"].as_str().unwrap().to_owned(),
        ),
    ]);
    assert!(
        auth_examples::remote_service::verifier_from(|_| None).is_err(),
        "no AUTH_REMOTE_URL"
    );
    let (addr, metrics) = remote_service(&env).await;

    let http = reqwest::Client::new();
    let get = |path: &str, key: Option<&Value>| {
        let mut request = http.get(format!("http://{addr}{path}"));
        if let Some(k) = key {
            request = request.header("x-api-key", k["key"].as_str().unwrap());
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/health", None).await, 200);
    assert_eq!(get("/api/v1/items", None).await, 401);
    assert_eq!(get("/api/v1/items", Some(&alice)).await, 200);
    assert_eq!(get("/api/v1/items", Some(&bob)).await, 200);
    assert_eq!(get("/api/v1/stt", Some(&alice)).await, 200);
    assert_eq!(get("/api/v1/stt", Some(&bob)).await, 403);
    assert_eq!(
        get("/api/v1/items", Some(&service)).await,
        401,
        "a service credential"
    );
    let wrong = json!({"key": "sk_live_not_a_key"});
    assert_eq!(get("/api/v1/items", Some(&wrong)).await, 401);

    // Disabled in the key service: refused here within a second (cached
    // until then: a 200 just before proves the grant was cached).
    assert_eq!(get("/api/v1/items", Some(&alice)).await, 200);
    let id = alice["id"].as_str().unwrap();
    admin(
        ks,
        &admin_key,
        "POST",
        &format!("/api/v1/keys/{id}/disable"),
        Value::Null,
    )
    .await;
    let start = Instant::now();
    while get("/api/v1/items", Some(&alice)).await == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still accepted after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("refused {:?} after the disable", start.elapsed());
    assert_eq!(get("/api/v1/items", Some(&alice)).await, 401);
    assert_eq!(get("/api/v1/items", Some(&bob)).await, 200);

    // Issue 15, item 2: what happened, scraped as Prometheus would.
    let text = scrape(metrics).await;
    let api = |decision: &str, reason: &str| {
        sample(
            &text,
            &format!(
                r#"auth_guard_decisions_total{{keyring="api",decision="{decision}",reason="{reason}"}}"#
            ),
        )
        .unwrap_or_else(|| panic!("no {decision}/{reason} in\n{text}"))
    };
    // Six 200s (bob's on /api/v1/stt too: the guard let it through), and
    // alice's until the disable arrived, however many.
    let allowed = api("allowed", "valid");
    assert!(allowed >= 6.0, "{allowed}");
    assert_eq!(api("passed", "public_path"), 1.0);
    // No key once, then the service credential, the wrong key, and alice
    // once the disable reached this service.
    assert_eq!(api("denied", "missing"), 1.0);
    assert_eq!(api("denied", "invalid"), 4.0);
    let route = r#"auth_route_scope_denials_total{keyring="api",reason="insufficient_scope"}"#;
    assert_eq!(sample(&text, route), Some(1.0), "bob on /api/v1/stt");
    // Asked once each: alice, bob, the service credential, the wrong key,
    // alice after the disable (disabled); every other request a hit.
    let calls = |outcome: &str| {
        sample(
            &text,
            &format!(r#"auth_remote_calls_total{{outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(
        (calls("valid"), calls("invalid"), calls("disabled")),
        (Some(2.0), Some(2.0), Some(1.0))
    );
    let misses = sample(&text, r#"auth_cache_misses_total{cache="remote"}"#);
    assert_eq!(misses, Some(5.0));
    let hits = sample(&text, r#"auth_cache_hits_total{cache="remote"}"#).unwrap();
    assert_eq!(
        hits + 5.0,
        allowed + 4.0,
        "every verified request, hit or miss"
    );
    assert_eq!(sample(&text, "auth_remote_circuit_open"), Some(0.0));
    assert_eq!(sample(&text, "auth_remote_stream_live"), Some(1.0));
    for key in [&alice, &bob, &service] {
        let key = key["key"].as_str().unwrap();
        assert!(!text.contains(key), "a key in the metrics");
    }
    // Not on the API's port.
    assert_eq!(get("/metrics", Some(&bob)).await, 404);
}

/// Issue 15, item 3: `/ready` is 503 while keys not in the cache cannot be
/// validated (the circuit to the key service is open), 200 otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_circuit() {
    // A key service that is not there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = HashMap::from([
        ("AUTH_REMOTE_URL", format!("http://127.0.0.1:{port}")),
        ("AUTH_REMOTE_SERVICE_TOKEN", "sk_svc_unused".to_owned()),
    ]);
    let (addr, metrics) = remote_service(&env).await;
    let http = reqwest::Client::new();
    let ready = || async {
        let r = http
            .get(format!("http://{addr}/ready"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lastAnswer"], Value::Null);
    // Unknown keys while the key service is away: 503s, then the circuit
    // opens (5 failures) and /ready says so.
    for i in 0..6 {
        let status = http
            .get(format!("http://{addr}/api/v1/items"))
            .header("x-api-key", format!("sk_live_unknown_key_number_{i:08}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 503);
    }
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["circuitOpen"], true);
    assert_eq!(body["ready"], false);
    // And so do the metrics.
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "auth_remote_circuit_open"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"auth_remote_calls_total{outcome="failed"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"auth_remote_calls_skipped_total{reason="circuit_open"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"auth_guard_decisions_total{keyring="api",decision="denied",reason="unavailable"}"#
        ),
        Some(6.0)
    );
}
