//! auth-server end to end on 127.0.0.1: the server on a temporary SQLite
//! data directory, keys made with its CLI, validated through auth-remote,
//! administered through its REST API.
#![allow(unused_crate_dependencies)]

mod common;
use common::process::KillOnDrop;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use auth_core::{Credential, Digest, Verifier, VerifyContext, VerifyError};
use auth_remote::RemoteVerifier;
use serde_json::{Value, json};

/// Runs `command`, which must succeed; its stdout.
fn stdout_of(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI against `data_dir`; its stdout as JSON.
fn cli(data_dir: &Path, args: &[&str]) -> Value {
    let stdout = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("DATABASE_URL"),
        &format!("auth-server {args:?}"),
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("auth-server {args:?} printed no JSON ({e}): {stdout}"))
}

/// The server on a free port; its address and admin key.
async fn start(data_dir: &Path) -> (SocketAddr, String) {
    let store = auth_server::open_store(data_dir, None).await.unwrap();
    let app = auth_server::app(store, data_dir).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admin = std::fs::read_to_string(auth_server::admin_key_path(data_dir)).unwrap();
    (addr, admin.trim().to_owned())
}

/// The admin API of one instance, with its admin key.
#[derive(Clone)]
struct AdminApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl AdminApi {
    fn new(addr: SocketAddr, key: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
            key: key.to_owned(),
        }
    }

    /// `method path` with the admin key and an optional JSON body: the
    /// status and the JSON answer (`null` when there is none).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        // No key at all for an anonymous caller (an empty one is a 400).
        if !self.key.is_empty() {
            request = request.header("x-api-key", &self.key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn verify(v: &RemoteVerifier, key: &str) -> Result<String, VerifyError> {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
        .map(|p| p.id().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_with_the_cli_is_accepted_then_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;

    let client = cli(
        dir.path(),
        &[
            "keys",
            "create",
            "--owner",
            "svc-a",
            "--scope",
            "stt",
            "--rate",
            "60/60s",
            "--expires",
            "90d",
            "--json",
        ],
    );
    let client_key = client["key"].as_str().unwrap().to_owned();
    let client_id = client["id"].as_str().unwrap().to_owned();
    let service = cli(
        dir.path(),
        &["services", "create", "--name", "svc-stt", "--json"],
    );
    let service_key = service["key"].as_str().unwrap();
    assert!(service_key.starts_with("sk_svc_"), "{service}");
    let listed = cli(dir.path(), &["services", "list", "--json"]);
    assert_eq!(listed["services"][0]["name"], "svc-stt");
    assert!(!listed.to_string().contains(service_key));

    // No changes stream: this test is of the cache and its invalidate (a
    // stream would evict the grant at its own pace — fleet.rs and the
    // auth-remote stream tests cover that).
    let remote = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(auth_server::SERVICE_HEADER, service_key)
        .scope("stt")
        .changes_stream(false)
        .build()
        .unwrap();
    let ctx = VerifyContext::default();
    let p = remote
        .verify(&Credential::new(client_key.clone()), &ctx)
        .await
        .unwrap();
    assert_eq!(p.id(), "svc-a");
    assert!(p.has_scope("stt"));
    assert_eq!(p.rate_limit().unwrap().requests, 60);
    assert_eq!(
        verify(&remote, "sk_live_not_a_key").await.unwrap_err(),
        VerifyError::Invalid
    );

    // A service without a validate credential is refused: to the caller
    // that is "unavailable", never "valid".
    let stranger = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(auth_server::SERVICE_HEADER, &client_key)
        .build()
        .unwrap();
    assert_eq!(
        verify(&stranger, &client_key).await.unwrap_err(),
        VerifyError::Unavailable
    );

    // A service using auth-remote: its guard asks the key service.
    let guard = auth_core::Guard::builder(remote.clone())
        .require_scope("stt")
        .build()
        .unwrap();
    let service = axum::Router::new()
        .route(
            "/api/items",
            axum::routing::get(|who: auth_axum::Authenticated| async move { who.id().to_owned() }),
        )
        .route_layer(auth_axum::Auth::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    let http = reqwest::Client::new();
    let call_service = |key: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://{service_addr}/api/items"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call_service(client_key.clone()).await, 200);
    assert_eq!(call_service("sk_live_not_a_key".into()).await, 401);

    // Disabled through the admin API.
    let admin_api = AdminApi::new(addr, &admin);
    let (_, disabled) = admin_api
        .call("POST", &format!("/api/v1/keys/{client_id}/disable"), None)
        .await;
    assert!(disabled["disabledAt"].is_u64(), "{disabled}");
    // The service's cache still holds the grant until its negative path is
    // taken: after an invalidate (or the TTL) the key is refused.
    assert_eq!(verify(&remote, &client_key).await.unwrap(), "svc-a");
    assert_eq!(
        call_service(client_key.clone()).await,
        200,
        "from the cache"
    );
    remote.invalidate(&Digest::of(client_key.as_bytes()));
    assert_eq!(call_service(client_key.clone()).await, 401);
    assert_eq!(
        verify(&remote, &client_key).await.unwrap_err(),
        VerifyError::Disabled,
        "the answer's code, not its text, decides"
    );

    // The CLI sees the same database.
    let listed = cli(dir.path(), &["keys", "list", "--json"]);
    let row = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == client_id.as_str())
        .unwrap()
        .clone();
    assert!(row["disabledAt"].is_u64());
    let text = listed.to_string();
    assert!(!text.contains(&client_key), "a listing shows a key");
    assert!(!text.contains(&Digest::of(client_key.as_bytes()).to_hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_400_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let anonymous = AdminApi::new(addr, "");

    assert_eq!(anonymous.call("GET", "/health", None).await.0, 200);
    assert_eq!(anonymous.call("GET", "/ready", None).await.0, 200);
    // The admin API wants the admin key.
    assert_eq!(anonymous.call("GET", "/api/v1/keys", None).await.0, 401);

    let body =
        json!({"owner": "svc-a", "scopes": ["stt"], "rateLimit": {"requests": 10, "window": 60}});
    let (status, created) = api.call("POST", "/api/v1/keys", Some(body)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    let before = api.call("GET", "/api/v1/keys", None).await;

    let huge = json!({"owner": "x".repeat(20 * 1024)}).to_string();
    let bad: Vec<(&str, String, String)> = vec![
        ("POST", "/api/v1/keys".into(), "{not json".into()),
        (
            "POST",
            "/api/v1/keys".into(),
            r#"{"owner": "a", "colour": "red"}"#.into(),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            r#"{"owner": "a", "scopes": ["two words"]}"#.into(),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            r#"{"owner": "a", "rateLimit": {"requests": -5, "window": 60}}"#.into(),
        ),
        ("POST", "/api/v1/keys".into(), r#"{"owner": ""}"#.into()),
        (
            "POST",
            "/api/v1/keys".into(),
            r#"{"owner": "a", "expiresAt": -1}"#.into(),
        ),
        ("POST", "/api/v1/keys".into(), huge),
        (
            "PATCH",
            format!("/api/v1/keys/{id}"),
            r#"{"scopes": ["ok", "not ok"]}"#.into(),
        ),
        (
            "PATCH",
            format!("/api/v1/keys/{id}"),
            r#"{"scopes": ["tts"], "rateLimit": {"requests": 0, "window": 60}}"#.into(),
        ),
        (
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            r#"{"overlap": -3}"#.into(),
        ),
    ];
    for (method, path, body) in bad {
        // Raw bodies: some are not JSON at all.
        let response = api
            .http
            .request(method.parse().unwrap(), format!("{}{path}", api.base))
            .header("x-api-key", &admin)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{method} {path} {body:.60}: {answer}");
        assert_eq!(
            answer["error"], "invalid_request",
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(
        api.call("GET", "/api/v1/keys", None).await,
        before,
        "bad input changed the database"
    );

    // And the good paths, briefly.
    let change = json!({"scopes": ["stt", "tts"], "rateLimit": null});
    let (status, patched) = api
        .call("PATCH", &format!("/api/v1/keys/{id}"), Some(change))
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["scopes"], json!(["stt", "tts"]));
    assert!(patched["rateLimit"].is_null());
    assert_eq!(
        api.call("GET", "/api/v1/keys/no-such-key", None).await.0,
        404
    );
    assert_eq!(
        api.call("DELETE", &format!("/api/v1/keys/{id}"), None)
            .await
            .0,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_share_revocations_within_a_second() {
    let url = auth_sqlx::testing::postgres_schema("server").await;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let store = auth_server::open_store(dir.path(), Some(&url))
            .await
            .unwrap();
        let app = auth_server::app(store, dir.path()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path())).unwrap();
        instances.push((addr, admin.trim().to_owned(), dir));
    }
    let http = reqwest::Client::new();
    let (a, admin_a, _) = &instances[0];
    let (b, _, _) = &instances[1];
    let create = |owner: &'static str, scopes: &'static [&'static str]| {
        let http = http.clone();
        let admin_a = admin_a.clone();
        async move {
            let v: Value = http
                .post(format!("http://{a}/api/v1/keys"))
                .header("x-api-key", admin_a)
                .json(&json!({"owner": owner, "scopes": scopes}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let client = create("svc-a", &["stt"]).await;
    let service: Value = http
        .post(format!("http://{a}/api/v1/services"))
        .header("x-api-key", admin_a)
        .json(&json!({"name": "stt-service"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let validate_on_b = || async {
        let v: Value = http
            .post(format!("http://{b}/api/v1/api-keys/validate"))
            .header(
                auth_server::SERVICE_HEADER,
                service["key"].as_str().unwrap(),
            )
            .json(&json!({"apiKey": client["key"], "scope": "stt"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    assert_eq!(validate_on_b().await["valid"], true);
    assert_eq!(
        validate_on_b().await["userId"],
        "svc-a",
        "B answers from its cache"
    );
    // Disabled through A; B refuses it within a second.
    let id = client["id"].as_str().unwrap();
    let status = http
        .post(format!("http://{a}/api/v1/keys/{id}/disable"))
        .header("x-api-key", admin_a)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let start = std::time::Instant::now();
    while validate_on_b().await["valid"] == true {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "instance B still validates a key disabled through A"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "B refused the key {:?} after A disabled it",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = start(dir.path()).await;
    let doc: Value = reqwest::get(format!("http://{addr}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/health",
        "/ready",
        "/api/v1/api-keys/validate",
        "/api/v1/api-keys/lease/return",
        "/api/v1/keys",
        "/api/v1/keys/{id}",
        "/api/v1/keys/{id}/disable",
        "/api/v1/keys/{id}/rotate",
        "/api/v1/services",
        "/api/v1/services/{id}",
        "/api/v1/services/{id}/disable",
        "/api/v1/services/{id}/rotate",
        "/api/v1/audit",
        "/api/v1/secret-scanning/github",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    // The protocol's types, generated from the code both crates use.
    let codes = &doc["components"]["schemas"]["Code"]["enum"];
    for code in [
        "valid",
        "invalid",
        "expired",
        "disabled",
        "insufficient_scope",
        "rate_limited",
        "usage_exceeded",
    ] {
        assert!(
            codes.as_array().unwrap().iter().any(|c| c == code),
            "{codes}"
        );
    }
    // Credits (issue 16): the request's cost, the answer's credits, the
    // admin API's credits with their refill.
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["ValidateRequest"]["properties"]["cost"].is_object());
    for field in ["creditsRemaining", "retryAfter"] {
        assert!(
            schemas["ValidateResponse"]["properties"][field].is_object(),
            "{field}"
        );
    }
    // Leases (issue 16, item 3): asked on validate, answered, returned.
    assert!(schemas["ValidateRequest"]["properties"]["lease"].is_object());
    assert!(schemas["ValidateResponse"]["properties"]["lease"].is_object());
    for field in ["id", "credits", "ttlMs"] {
        assert!(schemas["Lease"]["properties"][field].is_object(), "{field}");
    }
    for field in ["leaseId", "unused"] {
        assert!(
            schemas["ReturnLease"]["properties"][field].is_object(),
            "{field}"
        );
    }
    assert!(schemas["LeaseReturned"]["properties"]["returned"].is_object());
    let returns = &doc["paths"]["/api/v1/api-keys/lease/return"]["post"];
    assert_eq!(returns["security"][0]["serviceToken"], json!([]));
    assert!(schemas["KeyView"]["properties"]["credits"].is_object());
    for field in ["remaining", "refill", "nextRefillAt"] {
        assert!(
            schemas["CreditsView"]["properties"][field].is_object(),
            "{field}"
        );
    }
    assert!(schemas["CreateBody"]["properties"]["credits"].is_object());
    assert!(schemas["UpdateBody"]["properties"]["credits"].is_object());
    assert!(schemas["RefillBody"]["properties"]["every"].is_object());
    let answer = &doc["components"]["schemas"]["ValidateResponse"];
    let required: Vec<&str> = answer["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        required.contains(&"valid") && required.contains(&"code"),
        "{answer}"
    );
    let validate = &doc["paths"]["/api/v1/api-keys/validate"]["post"];
    assert_eq!(validate["security"][0]["serviceToken"], json!([]));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["serviceToken"]["name"], "X-Service-Token");
    assert_eq!(schemes["adminKey"]["name"], "X-Api-Key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            up = r.status() == 200;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(up, "the server did not come up");
    assert!(out.status.success(), "exit after SIGTERM: {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(messages.contains(&"auth-server listening"), "{messages:?}");
    assert!(messages.contains(&"auth-server stopped"), "{messages:?}");
    assert!(
        messages.contains(&"admin key created (mode 0600)"),
        "{messages:?}"
    );
    // The admin key's path is logged, never the key.
    let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path())).unwrap();
    assert!(!logs.contains(admin.trim()));
}

/// auth-remote's behaviours, this time against this project's key service
/// rather than a test double (issue 6 asks for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_remote_behaves_the_same_against_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let make = |owner: &'static str, scopes: Value, rate: Value| {
        let api = api.clone();
        async move {
            let body = json!({"owner": owner, "scopes": scopes, "rateLimit": rate});
            let (status, created) = api.call("POST", "/api/v1/keys", Some(body)).await;
            assert_eq!(status, 201, "{created}");
            created
        }
    };
    let (status, service) = api
        .call(
            "POST",
            "/api/v1/services",
            Some(json!({"name": "stt-service"})),
        )
        .await;
    assert_eq!(status, 201, "{service}");
    let good = make("user-1", json!(["stt", "tts"]), Value::Null).await;
    let limited = make(
        "user-2",
        json!(["stt"]),
        json!({"requests": 2, "window": 60}),
    )
    .await;
    let remote = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(
            auth_server::SERVICE_HEADER,
            service["key"].as_str().unwrap(),
        )
        .build()
        .unwrap();
    let key = |v: &Value| v["key"].as_str().unwrap().to_owned();

    // Valid, with scopes; invalid; both cached by kind.
    let p = remote
        .verify(&Credential::new(key(&good)), &VerifyContext::default())
        .await
        .unwrap();
    assert_eq!(p.id(), "user-1");
    assert!(p.has_scope("stt") && p.has_scope("tts"));
    assert_eq!(
        verify(&remote, "sk_live_unknown").await.unwrap_err(),
        VerifyError::Invalid
    );

    // Through guards: a missing scope is 403, the service's rate limit 429.
    let req = |k: String| auth_core::PlainRequest::get("/api").header("x-api-key", k);
    let tts = auth_core::Guard::builder(remote.clone())
        .require_scope("tts")
        .build()
        .unwrap();
    match tts.check(&req(key(&limited))).await {
        auth_core::Decision::Reject(r) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(matches!(
        tts.check(&req(key(&good))).await,
        auth_core::Decision::Allow(_)
    ));
    let any = auth_core::Guard::builder(remote.clone()).build().unwrap();
    for _ in 0..2 {
        assert!(matches!(
            any.check(&req(key(&limited))).await,
            auth_core::Decision::Allow(_)
        ));
    }
    match any.check(&req(key(&limited))).await {
        auth_core::Decision::Reject(r) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    // A thousand concurrent first requests for a new key: all answered.
    let fresh = make("user-3", json!([]), Value::Null).await;
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let remote = remote.clone();
            let k = key(&fresh);
            tokio::spawn(async move { verify(&remote, &k).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "user-3");
    }

    // Expiring through the admin API (an expiry must be in the future):
    // refused as expired once it passes and the cache lets go.
    let id = good["id"].as_str().unwrap();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let (status, answer) = api
        .call(
            "PATCH",
            &format!("/api/v1/keys/{id}"),
            Some(json!({"expiresAt": soon})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // Until the expiry has passed on the wall clock.
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(soon);
    while std::time::SystemTime::now() <= at {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    remote.invalidate(&Digest::of(key(&good).as_bytes()));
    assert_eq!(
        verify(&remote, &key(&good)).await.unwrap_err(),
        VerifyError::Expired
    );
}

/// POSTs `body` to the validate endpoint, with `service` as the service
/// credential when given: the status and the JSON answer.
async fn validate_call(addr: SocketAddr, service: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/api-keys/validate"))
        .json(&body);
    if let Some(token) = service {
        request = request.header(auth_server::SERVICE_HEADER, token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Issue 12, item 1: a service credential is a kind of its own — never a
/// client key, and good for nothing but the validate endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_credential_is_not_a_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let (status, service) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "svc-stt"})))
        .await;
    assert_eq!(status, 201, "{service}");
    let token = service["key"].as_str().unwrap().to_owned();
    let (_, client) = api
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({"owner": "user-1", "scopes": ["stt"]})),
        )
        .await;
    let client_key = client["key"].as_str().unwrap().to_owned();

    // Sent as the key to validate: not valid, for any scope or none.
    for body in [
        json!({"apiKey": token}),
        json!({"apiKey": token, "scope": "keys:validate"}),
    ] {
        let (status, answer) = validate_call(addr, Some(&token), body).await;
        assert_eq!(status, 200);
        assert_eq!(answer["valid"], false, "{answer}");
        assert_eq!(answer["code"], "invalid", "{answer}");
    }
    // And through auth-remote, as a service behind it would see it.
    let remote = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(auth_server::SERVICE_HEADER, &token)
        .build()
        .unwrap();
    assert_eq!(
        verify(&remote, &token).await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(verify(&remote, &client_key).await.unwrap(), "user-1");

    // Not an admin credential; a client key is not a service credential.
    let as_service = AdminApi::new(addr, &token);
    assert_eq!(as_service.call("GET", "/api/v1/keys", None).await.0, 401);
    assert_eq!(
        as_service.call("GET", "/api/v1/services", None).await.0,
        401
    );
    let (status, _) = validate_call(addr, Some(&client_key), json!({"apiKey": client_key})).await;
    assert_eq!(status, 401);
    let (status, _) = validate_call(addr, None, json!({"apiKey": client_key})).await;
    assert_eq!(status, 401);
    // The validate endpoint reads only X-Service-Token, and its 401s say so:
    // an `ApiKey` challenge naming that header, never a `Bearer` one (a
    // bearer token is not read there).
    let refused = |credential: Option<(&'static str, String)>| {
        let mut request = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/api-keys/validate"))
            .json(&json!({"apiKey": client_key}));
        if let Some((name, value)) = credential {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            let body: Value = response.json().await.unwrap();
            (status, challenge, body)
        }
    };
    for credential in [None, Some(("authorization", format!("Bearer {token}")))] {
        let (status, challenge, body) = refused(credential).await;
        assert_eq!(status, 401);
        assert_eq!(challenge, r#"ApiKey realm="api", header="X-Service-Token""#);
        assert_eq!(body["error"], "missing_credential", "{body}");
        assert_eq!(
            body["message"], "authentication required: send X-Service-Token",
            "{body}"
        );
    }
    let (status, challenge, body) =
        refused(Some((auth_server::SERVICE_HEADER, client_key.clone()))).await;
    assert_eq!(status, 401);
    assert_eq!(
        challenge,
        r#"ApiKey realm="api", header="X-Service-Token", error="invalid_token""#
    );
    assert_eq!(body["error"], "invalid_token", "{body}");
    // The admin API reads X-Api-Key and bearer tokens: a Bearer challenge.
    let response = reqwest::get(format!("http://{addr}/api/v1/keys"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="api""#
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"], "authentication required: send X-Api-Key or Authorization: Bearer",
        "{body}"
    );

    // Managed apart: the keys API does not see services and the other way
    // round; `keys:validate` is not a client scope any more.
    let id = service["id"].as_str().unwrap();
    assert!(id.starts_with("svc_"), "{service}");
    let (_, keys) = api.call("GET", "/api/v1/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(
        api.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
            .await
            .0,
        404
    );
    let client_id = client["id"].as_str().unwrap();
    assert_eq!(
        api.call("GET", &format!("/api/v1/services/{client_id}"), None)
            .await
            .0,
        404
    );
    let (status, answer) = api
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({"owner": "svc-x", "scopes": ["keys:validate"]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("services create")
    );

    // Rotated: both work during the overlap; disabled: refused at once.
    let (status, rotated) = api
        .call(
            "POST",
            &format!("/api/v1/services/{id}/rotate"),
            Some(json!({"overlap": 60})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let new_token = rotated["key"].as_str().unwrap().to_owned();
    for t in [&token, &new_token] {
        let (status, answer) = validate_call(addr, Some(t), json!({"apiKey": client_key})).await;
        assert_eq!((status, &answer["valid"]), (200, &json!(true)), "{answer}");
    }
    let (status, _) = api
        .call("POST", &format!("/api/v1/services/{id}/disable"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = validate_call(addr, Some(&token), json!({"apiKey": client_key})).await;
    assert_eq!(status, 401, "a disabled service credential still validates");
    let (_, listed) = api.call("GET", "/api/v1/services", None).await;
    assert_eq!(listed["services"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&new_token));
}

/// Issue 12, item 2: `--validate-auth none` answers exactly the seed's
/// request with exactly the fields the seed reads; the default refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_auth_none_answers_the_seeds_client() {
    let dir = tempfile::tempdir().unwrap();
    let (strict, admin) = start(dir.path()).await;
    let api = AdminApi::new(strict, &admin);
    let (_, client) = api
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({"owner": "user-1", "scopes": ["stt"],
                "rateLimit": {"requests": 30, "window": 60}})),
        )
        .await;
    let key = client["key"].as_str().unwrap().to_owned();
    let seed_request = json!({"apiKey": key, "scope": "stt"});
    assert_eq!(
        validate_call(strict, None, seed_request.clone()).await.0,
        401
    );

    let store = auth_server::open_store(dir.path(), None).await.unwrap();
    let options = auth_server::Options {
        validate_auth: auth_server::ValidateAuth::None,
        ..Default::default()
    };
    let app = auth_server::app_with(store, dir.path(), options)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (status, answer) = validate_call(open, None, seed_request).await;
    assert_eq!(status, 200, "{answer}");
    // What the seed's client reads, with the types it expects.
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["userId"], "user-1");
    assert_eq!(answer["scopes"], json!(["stt"]));
    assert_eq!(answer["rateLimit"]["requests"], 30);
    assert_eq!(answer["rateLimit"]["window"], 60);
    assert!(answer.get("error").is_none(), "{answer}");
    let (_, refused) = validate_call(
        open,
        None,
        json!({"apiKey": "sk_live_nope", "scope": "stt"}),
    )
    .await;
    assert_eq!(refused["valid"], false);
    assert!(refused["error"].is_string(), "{refused}");
    // No null fields: the seed's client reads `rateLimit` with a default
    // only when it is absent.
    assert!(refused.get("rateLimit").is_none(), "{refused}");
    let (_, other_scope) = validate_call(open, None, json!({"apiKey": key, "scope": "tts"})).await;
    assert_eq!(other_scope["valid"], false);
    assert_eq!(other_scope["code"], "insufficient_scope");
    // The document says so too.
    let doc: Value = reqwest::get(format!("http://{open}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/api-keys/validate"]["post"]["security"].is_null());
}

/// Issue 12, item 10: numbers, times and text from a request are checked
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_input_is_400_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let (_, created) = api
        .call("POST", "/api/v1/keys", Some(json!({"owner": "user-1"})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let (_, service) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "svc"})))
        .await;
    let sid = service["id"].as_str().unwrap().to_owned();
    let before = (
        api.call("GET", "/api/v1/keys", None).await,
        api.call("GET", "/api/v1/services", None).await,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cases: Vec<(&str, String, Value)> = vec![
        (
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            json!({"overlap": i64::MAX}),
        ),
        (
            "POST",
            format!("/api/v1/keys/{id}/rotate"),
            json!({"overlap": 366 * 86_400}),
        ),
        (
            "POST",
            format!("/api/v1/services/{sid}/rotate"),
            json!({"overlap": i64::MAX}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a\u{0}b\u{1b}[31m"}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "line\nbreak"}),
        ),
        ("POST", "/api/v1/services".into(), json!({"name": "x\u{7}"})),
        ("POST", "/api/v1/services".into(), json!({"name": " "})),
        (
            "POST",
            "/api/v1/services".into(),
            json!({"name": "svc\u{202e}gnp.exe"}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "zero\u{200b}width"}),
        ),
        (
            "PATCH",
            format!("/api/v1/keys/{id}"),
            json!({"scopes": ["changed"], "expiresAt": now - 1}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "expiresAt": now - 10}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "expiresAt": i64::MAX}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "expiresAt": now + 200 * 31_536_000}),
        ),
        (
            "PATCH",
            format!("/api/v1/keys/{id}"),
            json!({"expiresAt": now - 1}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "rateLimit": {"requests": i64::MAX, "window": 60}}),
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "rateLimit": {"requests": 10, "window": i64::MAX}}),
        ),
        (
            "PATCH",
            format!("/api/v1/keys/{id}"),
            json!({"rateLimit": {"requests": 1, "window": 400 * 86_400}}),
        ),
    ];
    // Credits (issue 16): remaining 0..=10^12, a refill of 1..=10^12 every
    // 60 s ..= 366 days (seconds or `<n>s|m|h|d`), never a refill alone.
    let mut cases = cases;
    let refill = |amount: Value, every: Value| json!({"remaining": 5, "refill": {"amount": amount, "every": every}});
    for credits in [
        json!({"remaining": 1_000_000_000_001_i64}),
        json!({"remaining": -1}),
        json!({"remaining": i64::MAX}),
        json!({"remaining": 1.5}),
        json!({"refill": {"amount": 5, "every": "1d"}}),
        json!({}),
        json!({"remaining": 5, "colour": "red"}),
        refill(json!(0), json!("1d")),
        refill(json!(-5), json!("1d")),
        refill(json!(1_000_000_000_001_i64), json!("1d")),
        refill(json!(5), json!(59)),
        refill(json!(5), json!("59s")),
        refill(json!(5), json!(366 * 86_400 + 1)),
        refill(json!(5), json!("367d")),
        refill(json!(5), json!("8785h")),
        refill(json!(5), json!(-60)),
        refill(json!(5), json!(i64::MAX)),
        refill(json!(5), json!("1y")),
        refill(json!(5), json!("d")),
        refill(json!(5), json!("")),
        refill(json!(5), json!("99999999999999999999d")),
        refill(json!(5), json!(null)),
        json!({"remaining": 5, "refill": {"amount": 5}}),
    ] {
        cases.push((
            "POST",
            "/api/v1/keys".into(),
            json!({"owner": "a", "credits": credits}),
        ));
        cases.push((
            "PATCH",
            format!("/api/v1/keys/{id}"),
            json!({"scopes": ["changed"], "credits": credits}),
        ));
    }
    for (method, path, body) in cases {
        let (status, answer) = api.call(method, &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
    }
    let after = (
        api.call("GET", "/api/v1/keys", None).await,
        api.call("GET", "/api/v1/services", None).await,
    );
    assert_eq!(before, after, "bad input changed the database");
    // The old key is untouched (no expiry set by a half-done rotation).
    let remote = RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(
            auth_server::SERVICE_HEADER,
            service["key"].as_str().unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(verify(&remote, &key).await.unwrap(), "user-1");

    // The CLI refuses the same, before writing.
    for args in [
        &["keys", "create", "--owner", "a\u{1b}[31m", "--json"][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--expires",
            "99999999999d",
        ][..],
        &["keys", "rotate", &id, "--overlap", "400d"][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--credits",
            "1000000000001",
        ][..],
        &["keys", "create", "--owner", "a", "--credits", "-1"][..],
        &["keys", "create", "--owner", "a", "--refill", "1000/1d"][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--credits",
            "5",
            "--refill",
            "0/1d",
        ][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--credits",
            "5",
            "--refill",
            "5/59s",
        ][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--credits",
            "5",
            "--refill",
            "5/367d",
        ][..],
        &[
            "keys",
            "create",
            "--owner",
            "a",
            "--credits",
            "5",
            "--refill",
            "5",
        ][..],
        &["services", "create", "--name", "a\u{1b}]0;x\u{7}"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        (
            api.call("GET", "/api/v1/keys", None).await,
            api.call("GET", "/api/v1/services", None).await,
        ),
        before
    );
}

/// Issue 12, item 11: `--help` never shows `DATABASE_URL`'s value.
#[test]
fn help_hides_the_database_password() {
    for args in [
        &["--help"][..],
        &["serve", "--help"][..],
        &["keys", "list", "--help"][..],
    ] {
        let out = stdout_of(
            Command::new(env!("CARGO_BIN_EXE_auth-server"))
                .args(args)
                .env(
                    "DATABASE_URL",
                    "postgres://admin:hunter2secret@db.internal/keys",
                ),
            "auth-server --help",
        );
        assert!(out.contains("DATABASE_URL"), "{out}");
        assert!(
            !out.contains("hunter2secret"),
            "{args:?} shows the password: {out}"
        );
        assert!(
            !out.contains("db.internal"),
            "{args:?} shows the URL: {out}"
        );
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to
/// `dir`: the certificate's and the key's paths, and the certificate PEM.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = made.cert.pem();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, made.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert)
}

/// Issue 12, item 14: `serve --tls-cert --tls-key` serves HTTPS; a client
/// that trusts the certificate validates keys over it, one that does not
/// gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_speaks_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, cert_pem) = self_signed(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--tls-cert",
            ])
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let mut status = None;
    for _ in 0..100 {
        if let Ok(r) = https.get(format!("{base}/health")).send().await {
            status = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(200), "no HTTPS answer on /health");
    {
        // Plain HTTP on the same port is no way in.
        let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
        assert!(plain.is_err() || plain.unwrap().status() != 200);
        // A client that does not trust the certificate is refused.
        assert!(reqwest::get(format!("{base}/health")).await.is_err());

        let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path())).unwrap();
        let create = |path: &str, body: Value| {
            https
                .post(format!("{base}{path}"))
                .header("x-api-key", admin.trim())
                .json(&body)
                .send()
        };
        let service: Value = create("/api/v1/services", json!({"name": "svc"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client: Value = create("/api/v1/keys", json!({"owner": "user-1"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let answer: Value = https
            .post(format!("{base}/api/v1/api-keys/validate"))
            .header(
                auth_server::SERVICE_HEADER,
                service["key"].as_str().unwrap(),
            )
            .json(&json!({"apiKey": client["key"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["code"], "valid", "{answer}");

        // auth-remote over HTTPS: with the CA it validates; without it (the
        // platform's roots only) the service is unavailable, never valid.
        let token = service["key"].as_str().unwrap();
        let key = client["key"].as_str().unwrap();
        let trusting = RemoteVerifier::builder(&base)
            .service_credential(auth_server::SERVICE_HEADER, token)
            .tls_root_certificate(cert_pem.as_bytes())
            .build()
            .unwrap();
        assert_eq!(verify(&trusting, key).await.unwrap(), "user-1");
        let untrusting = RemoteVerifier::builder(&base)
            .service_credential(auth_server::SERVICE_HEADER, token)
            .build()
            .unwrap();
        assert_eq!(
            verify(&untrusting, key).await.unwrap_err(),
            VerifyError::Unavailable
        );
        assert!(
            RemoteVerifier::builder(&base)
                .tls_root_certificate(b"not a certificate")
                .build()
                .is_err()
        );
    }
}

/// Reads Server-Sent Events from a response, one at a time.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    /// Opens the changes stream of `addr` as the service `token`, resuming
    /// after `last` when given.
    async fn open(addr: SocketAddr, token: &str, last: Option<&str>) -> (u16, Self) {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/api/v1/api-keys/events"))
            .header(auth_server::SERVICE_HEADER, token);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            Self {
                response,
                buffer: String::new(),
            },
        )
    }

    /// The next event as (id, name, data), waiting at most `within`.
    async fn next(&mut self, within: std::time::Duration) -> (String, String, Value) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return (id, name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event in time")
                .unwrap()
                .expect("the stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// Issue 13, items 1 and 4: the changes stream carries every change — the
/// admin API's and another process's (the CLI on SQLite) — in order, with
/// consecutive sequence numbers; a client resuming with `Last-Event-ID`
/// gets what it missed, or a reset when it cannot be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_stream_carries_every_change_in_order() {
    let second = std::time::Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let (_, service) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "svc"})))
        .await;
    let token = service["key"].as_str().unwrap().to_owned();
    let make = || async {
        let (_, k) = api
            .call("POST", "/api/v1/keys", Some(json!({"owner": "user-1"})))
            .await;
        k
    };
    let (a, b, c) = (make().await, make().await, make().await);
    let digest = |k: &Value| Digest::of(k["key"].as_str().unwrap().as_bytes()).to_hex();

    assert_eq!(EventReader::open(addr, "sk_svc_wrong", None).await.0, 401);
    assert_eq!(
        EventReader::open(addr, &token, Some("yesterday")).await.0,
        400
    );
    let (status, mut stream) = EventReader::open(addr, &token, None).await;
    assert_eq!(status, 200);
    let (_, name, ready) = stream.next(second).await;
    assert_eq!(name, "ready");
    let start = ready["seq"].as_u64().unwrap();

    // Through the admin API; through the CLI, another process; a rotation.
    let id = |k: &Value| k["id"].as_str().unwrap().to_owned();
    api.call("POST", &format!("/api/v1/keys/{}/disable", id(&a)), None)
        .await;
    cli(dir.path(), &["keys", "list", "--json"]);
    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["keys", "disable", &id(&b)])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success());
    api.call(
        "POST",
        &format!("/api/v1/keys/{}/rotate", id(&c)),
        Some(json!({"overlap": 0})),
    )
    .await;
    let mut seen = Vec::new();
    for expected in [&a, &b, &c] {
        let (event_id, name, data) = stream.next(second).await;
        assert_eq!(name, "key", "{data}");
        assert_eq!(data["digest"], digest(expected).as_str(), "out of order");
        assert_eq!(event_id, data["seq"].to_string());
        seen.push(data["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, [start + 1, start + 2, start + 3]);

    // Resuming after the first: the two it missed, then ready.
    let (_, mut resumed) = EventReader::open(addr, &token, Some(&seen[0].to_string())).await;
    for expected in [&b, &c] {
        let (_, name, data) = resumed.next(second).await;
        assert_eq!(
            (name.as_str(), &data["digest"]),
            ("key", &json!(digest(expected)))
        );
    }
    let (_, name, data) = resumed.next(second).await;
    assert_eq!(
        (name.as_str(), data["seq"].as_u64()),
        ("ready", Some(seen[2]))
    );
    // From a position the log cannot have: reset, then ready.
    let (_, mut lost) = EventReader::open(addr, &token, Some("999999")).await;
    assert_eq!(lost.next(second).await.1, "reset");
    assert_eq!(lost.next(second).await.1, "ready");
    // The live stream goes on.
    api.call("DELETE", &format!("/api/v1/keys/{}", id(&a)), None)
        .await;
    let (_, name, data) = stream.next(second).await;
    assert_eq!(
        (name.as_str(), data["seq"].as_u64()),
        ("key", Some(start + 4))
    );
}

/// Issue 13, item 3: the validate answer carries the key's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validate_answer_carries_the_keys_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = start(dir.path()).await;
    let api = AdminApi::new(addr, &admin);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3_600;
    let (_, key) = api
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({"owner": "user-1", "expiresAt": at})),
        )
        .await;
    let (_, service) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "svc"})))
        .await;
    let (_, answer) =
        validate_call(addr, service["key"].as_str(), json!({"apiKey": key["key"]})).await;
    assert_eq!(answer["code"], "valid");
    assert_eq!(answer["expiresAt"], at);
}

/// Review of issue 13: a stream that looks live carries revocations. The
/// server sends a heartbeat each second while it follows the change log,
/// ends the stream (and refuses new ones) when it stops, ends a stream whose
/// own credential changed, and resets a resume across a hole in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_means_the_log_is_followed() {
    let second = std::time::Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let store = auth_server::open_store(dir.path(), None).await.unwrap();
    let app = auth_server::app(store.clone(), dir.path()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path())).unwrap();
    let api = AdminApi::new(addr, admin.trim());
    let (_, service) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "svc"})))
        .await;
    let (_, other) = api
        .call("POST", "/api/v1/services", Some(json!({"name": "other"})))
        .await;
    let token = service["key"].as_str().unwrap().to_owned();

    // Heartbeats: bytes at least every second with nothing happening.
    let (_, mut stream) = EventReader::open(addr, &token, None).await;
    assert_eq!(stream.next(second).await.1, "ready");
    for _ in 0..2 {
        let chunk = tokio::time::timeout(second, stream.response.chunk())
            .await
            .expect("no heartbeat")
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&chunk).starts_with(':'),
            "{chunk:?}"
        );
    }

    // Its own credential disabled: the event, then the end; no way back.
    let (_, mut own) = EventReader::open(addr, other["key"].as_str().unwrap(), None).await;
    assert_eq!(own.next(second).await.1, "ready");
    let id = other["id"].as_str().unwrap();
    api.call("POST", &format!("/api/v1/services/{id}/disable"), None)
        .await;
    assert_eq!(own.next(second).await.1, "key");
    let end = tokio::time::timeout(second, async {
        loop {
            match own.response.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream outlived its credential");
    assert_eq!(
        EventReader::open(addr, other["key"].as_str().unwrap(), None)
            .await
            .0,
        401
    );

    // A hole in the log: a resume across it is a reset, not a partial replay.
    let (_, k1) = api
        .call("POST", "/api/v1/keys", Some(json!({"owner": "a"})))
        .await;
    let (_, k2) = api
        .call("POST", "/api/v1/keys", Some(json!({"owner": "b"})))
        .await;
    let (_, mut live) = EventReader::open(addr, &token, None).await;
    let (_, _, ready) = live.next(second).await;
    let before = ready["seq"].as_u64().unwrap();
    for k in [&k1, &k2] {
        let id = k["id"].as_str().unwrap();
        api.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
            .await;
        assert_eq!(live.next(second).await.1, "key");
    }
    auth_sqlx::testing::execute_raw(
        &store,
        &format!("DELETE FROM auth_key_changes WHERE seq = {}", before + 1),
    )
    .await
    .unwrap();
    let (_, mut resumed) = EventReader::open(addr, &token, Some(&before.to_string())).await;
    assert_eq!(resumed.next(second).await.1, "reset");

    // The log no longer read (the database gone): streams end, new ones
    // are refused.
    store.close().await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match live.response.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a stream looked live while the log was not read"
    );
    let refused = EventReader::open(addr, &token, None).await.0;
    assert!(matches!(refused, 401 | 503), "{refused}");
    // And readiness says so (issue 15, item 3).
    let ready = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["changes"], "not following", "{body}");
}
