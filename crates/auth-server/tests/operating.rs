//! Issue 15: operating the real binary — its Prometheus metrics, on a
//! listener of their own (`serve --metrics-bind`), counted from real calls;
//! and backups of its SQLite database while it serves.
#![allow(unused_crate_dependencies)]

mod common;
use common::process::KillOnDrop;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use auth_core::Digest;
use serde_json::{Value, json};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `auth-server serve` on SQLite in `dir` with `args` after `--bind`, its
/// log in `dir/log`.
fn spawn(dir: &Path, bind: SocketAddr, args: &[&str]) -> std::process::Child {
    let log = std::fs::File::create(dir.join("log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir)
        .args(["serve", "--bind", &bind.to_string()])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("AUTH_SERVER_METRICS_BIND")
        .stdout(Stdio::from(log))
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A running service: the API's address, the metrics' (when served), the
/// admin key.
struct Service {
    api: SocketAddr,
    metrics: Option<SocketAddr>,
    admin: String,
    dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl Service {
    /// Starts the binary; returns once its API answers.
    async fn start(with_metrics: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = free_addr();
        let metrics = with_metrics.then(free_addr);
        let metrics_arg = metrics.map(|m| m.to_string());
        let args: Vec<&str> = match &metrics_arg {
            Some(m) => vec!["--metrics-bind", m],
            None => vec![],
        };
        let child = KillOnDrop(spawn(dir.path(), api, &args));
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://{api}/health")).await {
                if r.status() == 200 {
                    let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path()))
                        .unwrap()
                        .trim()
                        .to_owned();
                    return Self {
                        api,
                        metrics,
                        admin,
                        dir,
                        _child: child,
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the service did not come up");
    }

    /// An admin `POST` that must be answered `status`: its JSON answer.
    async fn admin(&self, path: &str, body: Option<Value>, status: u16) -> Value {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}{path}", self.api))
            .header("x-api-key", &self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "POST {path}");
        response.json().await.unwrap()
    }

    /// A validate call with `service` as the service credential (none when
    /// `None`) and `body` as raw JSON text: the status.
    async fn validate(&self, service: Option<&str>, body: String) -> u16 {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/api/v1/api-keys/validate", self.api))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = service {
            request = request.header(auth_server::SERVICE_HEADER, token);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// `GET /metrics` on the metrics listener: the text, checked for its
    /// status and content type.
    async fn scrape(&self) -> String {
        let addr = self.metrics.expect("served with --metrics-bind");
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        response.text().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap()
    }
}

/// The value of the sample written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// Status and JSON body of a GET.
async fn get(url: String) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_service_did_and_show_no_secret() {
    const VALID: u32 = 5;
    const UNKNOWN: u32 = 3;
    let s = Service::start(true).await;
    let metrics = s.metrics.unwrap();
    let log = s.log();
    assert!(log.contains("metrics listening"), "{log}");
    assert!(log.contains(&metrics.to_string()), "{log}");

    let created = s
        .admin(
            "/api/v1/keys",
            Some(json!({"owner": "svc-a", "scopes": ["stt"]})),
            201,
        )
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let service = s
        .admin("/api/v1/services", Some(json!({"name": "svc-stt"})), 201)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = Some(service.as_str());

    for _ in 0..VALID {
        let body = json!({"apiKey": key, "scope": "stt"}).to_string();
        assert_eq!(s.validate(token, body).await, 200);
    }
    for i in 0..UNKNOWN {
        let body = json!({"apiKey": format!("sk_live_not_a_key_{i}")}).to_string();
        assert_eq!(s.validate(token, body).await, 200);
    }
    let lacking = json!({"apiKey": key, "scope": "tts"}).to_string();
    assert_eq!(s.validate(token, lacking).await, 200);
    let no_service = json!({"apiKey": key}).to_string();
    assert_eq!(s.validate(None, no_service).await, 401);
    assert_eq!(s.validate(token, "{not json".into()).await, 400);
    let total = VALID + UNKNOWN + 3;
    // A change to the key: the change log moves on.
    let disable = format!("/api/v1/keys/{}/disable", created["id"].as_str().unwrap());
    s.admin(&disable, None, 200).await;
    // Applied within the log's poll (SQLite): waited for, so that the
    // stream below starts after it (and sends no `key` event).
    let mut applied = 0.0;
    for _ in 0..100 {
        applied = value(&s.scrape().await, "auth_server_changes_applied_seq");
        if applied >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied >= 1.0, "the disable was never applied");

    // A changes stream, open: counted; its `ready` event sent.
    let mut stream = reqwest::Client::new()
        .get(format!("http://{}/api/v1/api-keys/events", s.api))
        .header(auth_server::SERVICE_HEADER, &service)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: ready"));
    let open = s.scrape().await;
    assert_eq!(
        value(&open, "auth_server_changes_stream_subscribers"),
        1.0,
        "{open}"
    );
    // The client hangs up: the count goes down with the dropped stream.
    drop(stream);
    let mut text = s.scrape().await;
    for _ in 0..100 {
        if value(&text, "auth_server_changes_stream_subscribers") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = s.scrape().await;
    }
    assert_eq!(
        value(&text, "auth_server_changes_stream_subscribers"),
        0.0,
        "{text}"
    );

    let exact = [
        (
            r#"auth_server_validate_requests_total{code="valid"}"#,
            VALID,
        ),
        (
            r#"auth_server_validate_requests_total{code="invalid"}"#,
            UNKNOWN,
        ),
        (
            r#"auth_server_validate_requests_total{code="insufficient_scope"}"#,
            1,
        ),
        (
            r#"auth_server_validate_requests_total{code="unauthorized"}"#,
            1,
        ),
        (
            r#"auth_server_validate_requests_total{code="bad_request"}"#,
            1,
        ),
        (
            r#"auth_server_validate_requests_total{code="unavailable"}"#,
            0,
        ),
        (r#"auth_server_validate_requests_total{code="expired"}"#, 0),
        ("auth_server_validate_duration_seconds_count", total),
        (
            r#"auth_server_admin_writes_total{resource="key",action="create"}"#,
            1,
        ),
        (
            r#"auth_server_admin_writes_total{resource="service",action="create"}"#,
            1,
        ),
        (
            r#"auth_server_admin_writes_total{resource="key",action="disable"}"#,
            1,
        ),
        (
            r#"auth_server_admin_writes_total{resource="key",action="delete"}"#,
            0,
        ),
        ("auth_server_store_errors_total", 0),
        (
            r#"auth_guard_decisions_total{keyring="services",decision="denied",reason="missing"}"#,
            1,
        ),
        // Every validate call but the one without a credential, the stream.
        (
            r#"auth_guard_decisions_total{keyring="services",decision="allowed",reason="valid"}"#,
            total,
        ),
        (
            r#"auth_guard_decisions_total{keyring="admin",decision="allowed",reason="valid"}"#,
            3,
        ),
        (r#"auth_server_changes_stream_events_total{event="key"}"#, 0),
        ("auth_server_changes_following", 1),
    ];
    for (series, expected) in exact {
        assert_eq!(value(&text, series), f64::from(expected), "{series}");
    }
    let ready = value(
        &text,
        r#"auth_server_changes_stream_events_total{event="ready"}"#,
    );
    assert!(ready >= 1.0, "{text}");
    assert!(value(&text, r#"auth_cache_hits_total{cache="keys"}"#) > 0.0);
    assert!(value(&text, r#"auth_cache_misses_total{cache="keys"}"#) > 0.0);
    assert!(value(&text, r#"auth_cache_hits_total{cache="services"}"#) > 0.0);
    assert!(value(&text, r#"auth_server_db_pool_connections{state="idle"}"#) >= 0.0);
    assert!(value(&text, r#"auth_server_db_pool_connections{state="in_use"}"#) >= 0.0);
    let buckets = text
        .lines()
        .filter(|l| l.starts_with("auth_server_validate_duration_seconds_bucket"))
        .count();
    assert_eq!(buckets, 16, "15 buckets and +Inf\n{text}");
    assert!(text.ends_with("# EOF\n"));

    // Counts only: no key, no credential, nothing of either.
    for secret in [&key, &service, &s.admin] {
        assert!(!text.contains(secret.as_str()), "a secret in\n{text}");
        let hex = Digest::of(secret.as_bytes()).to_hex();
        assert!(!text.contains(&hex), "a digest in\n{text}");
        assert!(!text.contains(&hex[..16]), "part of a digest in\n{text}");
    }
    assert!(!text.contains("svc-a") && !text.contains("svc-stt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_api_never_share_a_port() {
    let s = Service::start(true).await;
    let metrics = s.metrics.unwrap();
    // Never on the API's port, with or without the admin key.
    let (status, _) = get(format!("http://{}/metrics", s.api)).await;
    assert_eq!(status, 404);
    let response = reqwest::Client::new()
        .get(format!("http://{}/metrics", s.api))
        .header("x-api-key", &s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // And the API never on the metrics port: a JSON 404.
    for path in ["/health", "/api/v1/keys", "/api/v1/api-keys/validate", "/"] {
        let (status, body) = get(format!("http://{metrics}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"], "not_found", "{path}: {body}");
    }
    let post = reqwest::Client::new()
        .post(format!("http://{metrics}/api/v1/keys"))
        .header("x-api-key", &s.admin)
        .json(&json!({"owner": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
    assert!(
        s.scrape()
            .await
            .contains("auth_server_validate_requests_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_without_the_flag() {
    let s = Service::start(false).await;
    let (status, _) = get(format!("http://{}/metrics", s.api)).await;
    assert_eq!(status, 404);
    let log = s.log();
    assert!(log.contains("auth-server listening"), "{log}");
    assert!(!log.contains("metrics listening"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_that_cannot_be_bound_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    // Given through the environment this time.
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--bind", &free_addr().to_string()])
            .env_remove("DATABASE_URL")
            .env("AUTH_SERVER_METRICS_BIND", &taken_addr)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    for _ in 0..200 {
        status = child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = status.expect("the service started on a taken metrics address");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("--metrics-bind") && stderr.contains(&taken_addr),
        "{stderr}"
    );
    drop(taken);
}

/// Database failures are counted wherever they are met — and input the
/// store refuses (a 400) is not one. In process, through [`auth_server::build`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let instance = common::instance(dir.path(), None, auth_server::Options::default()).await;
    let (api, admin, store) = (instance.api, &instance.admin, &instance.store);
    let service = store.services().create("svc").await.unwrap();
    let scrape = || instance.scrape();
    let http = reqwest::Client::new();
    let admin_call = |method: &str, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method.parse().unwrap(), format!("http://{api}{path}"))
            .header("x-api-key", admin.trim());
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Refused input: no database failure.
    let empty_owner = Some(json!({"owner": ""}));
    assert_eq!(admin_call("POST", "/api/v1/keys", empty_owner).await, 400);
    let text = scrape().await;
    assert_eq!(value(&text, "auth_server_store_errors_total"), 0.0);

    store.close().await;
    let validate = http
        .post(format!("http://{api}/api/v1/api-keys/validate"))
        .header(auth_server::SERVICE_HEADER, service.key.expose())
        .json(&json!({"apiKey": "sk_live_not_a_key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(validate.status(), 503);
    assert_eq!(admin_call("GET", "/api/v1/keys", None).await, 503);
    assert_eq!(
        admin_call("POST", "/api/v1/keys", Some(json!({"owner": "a"}))).await,
        503
    );
    let ready = http
        .get(format!("http://{api}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    let text = scrape().await;
    assert_eq!(
        value(&text, "auth_server_store_errors_total"),
        4.0,
        "{text}"
    );
    let unavailable = r#"auth_server_validate_requests_total{code="unavailable"}"#;
    assert_eq!(value(&text, unavailable), 1.0);
    // Writes that failed are not counted as made.
    let created = r#"auth_server_admin_writes_total{resource="key",action="create"}"#;
    assert_eq!(value(&text, created), 0.0);
}

/// docs/key-service.md, "Backups": `auth-server backup FILE` copies the
/// database of a running server, the latest writes included, and never
/// overwrites a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_holds_the_latest_writes() {
    use auth_core::{KeyStore, Verifier, VerifyContext};
    let service = Service::start(false).await;
    let kept = service
        .admin("/api/v1/keys", Some(json!({"owner": "kept"})), 201)
        .await;
    let gone = service
        .admin("/api/v1/keys", Some(json!({"owner": "gone"})), 201)
        .await;
    let gone_id = gone["id"].as_str().unwrap();
    service
        .admin(&format!("/api/v1/keys/{gone_id}/disable"), None, 200)
        .await;
    let backup = service.dir.path().join("copy.db");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(service.dir.path())
            .arg("backup")
            .arg(&backup)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over a file.
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    // A data directory without a database: an error, and nothing created.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(empty.path())
        .arg("backup")
        .arg(empty.path().join("copy.db"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database to back up"));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    // PostgreSQL: refused before connecting (this URL reaches nothing).
    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("backup")
        .arg(empty.path().join("pg.db"))
        .env("DATABASE_URL", "postgres://nobody:secret@127.0.0.1:1/none")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("pg_dump"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"));

    // The copy is a database of its own, with both writes.
    let elsewhere = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", backup.display());
    let copy = auth_server::open_store(elsewhere.path(), Some(&url))
        .await
        .unwrap();
    let keys = auth_core::HashedKeyStore::new(copy.clone());
    let ctx = VerifyContext::default();
    let found = keys
        .verify(
            &auth_core::Credential::new(kept["key"].as_str().unwrap()),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(found.id(), "kept");
    let refused = keys
        .verify(
            &auth_core::Credential::new(gone["key"].as_str().unwrap()),
            &ctx,
        )
        .await;
    assert_eq!(refused.unwrap_err(), auth_core::VerifyError::Disabled);
    let digest = Digest::of(kept["key"].as_str().unwrap().as_bytes());
    assert!(copy.find_by_digest(&digest).await.unwrap().is_some());
}
