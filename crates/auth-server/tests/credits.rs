//! Issue 16: usage credits that never overspend — through the validate
//! endpoint of one instance or two (two instances on PostgreSQL; the server
//! and the binary as two processes on one SQLite file), with concurrent
//! clients; `cost`; credits in the admin API and the CLI; failures.
#![allow(unused_crate_dependencies)]

mod common;
use common::process::KillOnDrop;
use common::{Instance, instance};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

impl Instance {
    /// A new key with `body`'s settings: its JSON view, with the key.
    async fn key(&self, body: Value) -> Value {
        let (status, made) = self.call("POST", "/api/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{made}");
        made
    }

    /// The key's credits as the admin API shows them.
    async fn credits(&self, id: &str) -> Value {
        let (status, view) = self.call("GET", &format!("/api/v1/keys/{id}"), None).await;
        assert_eq!(status, 200, "{view}");
        view["credits"].clone()
    }
}

/// A validate call on `addr`: the status and the JSON answer.
async fn validate(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let response = http
        .post(format!("http://{addr}/api/v1/api-keys/validate"))
        .header(auth_server::SERVICE_HEADER, token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What the answers to a burst of validations were.
#[derive(Debug, Default)]
struct Tally {
    /// `creditsRemaining` of each valid answer.
    left: Vec<u64>,
    /// `usage_exceeded` answers.
    exceeded: u32,
    /// Their `retryAfter`s.
    retry_after: Vec<Option<u64>>,
}

/// `per_instance` clients on each of `instances`, `calls` validations of
/// `key` each, all at once.
async fn burst(
    instances: &[SocketAddr],
    per_instance: usize,
    calls: usize,
    token: &str,
    key: &str,
) -> Tally {
    let mut tasks = Vec::new();
    for &addr in instances {
        for _ in 0..per_instance {
            let (token, key) = (token.to_owned(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                // A client (and its connections) of its own.
                let http = reqwest::Client::new();
                let mut answers = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let (status, answer) =
                        validate(&http, addr, &token, json!({"apiKey": key})).await;
                    assert_eq!(status, 200, "{answer}");
                    answers.push(answer);
                }
                answers
            }));
        }
    }
    let mut tally = Tally::default();
    for task in tasks {
        for answer in task.await.unwrap() {
            match answer["code"].as_str() {
                Some("valid") => {
                    assert_eq!(answer["valid"], true);
                    tally
                        .left
                        .push(answer["creditsRemaining"].as_u64().unwrap());
                }
                Some("usage_exceeded") => {
                    assert_eq!(answer["valid"], false, "{answer}");
                    assert_eq!(answer["userId"], "user-1", "{answer}");
                    assert_eq!(answer["error"], "API key has no credits left");
                    assert!(answer.get("creditsRemaining").is_none(), "{answer}");
                    tally.exceeded += 1;
                    tally.retry_after.push(answer["retryAfter"].as_u64());
                }
                _ => panic!("{answer}"),
            }
        }
    }
    tally.left.sort_unstable();
    tally
}

/// The issue's promise: 1,000 credits, two instances on one PostgreSQL,
/// 8 concurrent clients on each, 2,000 validations — exactly 1,000 valid
/// (each leaving a different remainder) and 1,000 `usage_exceeded`; 0 left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_never_overspend() {
    let url = auth_sqlx::testing::postgres_schema("credits").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), auth_server::Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), auth_server::Options::default()).await;
    let token = a.service("svc").await;
    let key = a
        .key(json!({"owner": "user-1", "credits": {"remaining": 1000}}))
        .await;
    assert_eq!(
        key["credits"],
        json!({"remaining": 1000, "refill": null, "nextRefillAt": null})
    );

    let tally = burst(
        &[a.api, b.api],
        8,
        125,
        &token,
        key["key"].as_str().unwrap(),
    )
    .await;
    assert_eq!(tally.left, (0..1000).collect::<Vec<u64>>(), "valid answers");
    assert_eq!(tally.exceeded, 1000);
    assert!(
        tally.retry_after.iter().all(Option::is_none),
        "no refill: no retryAfter"
    );
    let id = key["id"].as_str().unwrap();
    assert_eq!(b.credits(id).await["remaining"], 0);
    assert_eq!(a.credits(id).await["remaining"], 0);

    // Counted by code on each instance: 1,000 of each in all.
    let mut counted = (0.0, 0.0);
    for i in [&a, &b] {
        counted.0 += i
            .metric(r#"auth_server_validate_requests_total{code="valid"}"#)
            .await;
        counted.1 += i
            .metric(r#"auth_server_validate_requests_total{code="usage_exceeded"}"#)
            .await;
    }
    assert_eq!(counted, (1000.0, 1000.0));
}

/// Credits given to a key already in use reach the other instance's cache
/// as a revocation does, through the change log: within a second (the
/// bound docs/key-service.md states), and from then on they are spent.
/// Disabled afterwards, the key is refused by the spend itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_given_through_one_instance_bind_the_other_within_a_second() {
    let url = auth_sqlx::testing::postgres_schema("credits_patch").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), auth_server::Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), auth_server::Options::default()).await;
    let token = a.service("svc").await;
    let key = a.key(json!({"owner": "user-1"})).await;
    let plaintext = key["key"].as_str().unwrap();
    let id = key["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    let body = json!({"apiKey": plaintext});
    // In use on B, without credits: cached there.
    let (status, answer) = validate(&http, b.api, &token, body.clone()).await;
    assert_eq!((status, answer["code"].as_str()), (200, Some("valid")));
    assert!(answer.get("creditsRemaining").is_none());

    let (status, _) = a
        .call(
            "PATCH",
            &format!("/api/v1/keys/{id}"),
            Some(json!({"credits": {"remaining": 3}})),
        )
        .await;
    assert_eq!(status, 200);
    let patched = std::time::Instant::now();
    let mut granted_on_b = 0;
    loop {
        let (_, answer) = validate(&http, b.api, &token, body.clone()).await;
        match answer["code"].as_str() {
            Some("valid") if answer.get("creditsRemaining").is_none() => {
                assert!(
                    patched.elapsed() < Duration::from_secs(1),
                    "B still unaware"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Some("valid") => {
                granted_on_b += 1;
                break;
            }
            other => panic!("unexpected {other:?}: {answer}"),
        }
    }
    println!("B spent credits {:?} after the PATCH", patched.elapsed());
    // The rest: two more between both instances, then refusals.
    let mut valid = granted_on_b;
    let mut exceeded = 0;
    for i in 0..10 {
        let addr = if i % 2 == 0 { a.api } else { b.api };
        let (_, answer) = validate(&http, addr, &token, body.clone()).await;
        match answer["code"].as_str() {
            Some("valid") => valid += 1,
            Some("usage_exceeded") => exceeded += 1,
            other => panic!("unexpected {other:?}: {answer}"),
        }
    }
    assert_eq!((valid, exceeded), (3, 8));

    // Disabled through A: refused on B whether its cache has heard yet or
    // not (the spend reads the live row: stores::credits_refill_from_time),
    // and nothing spent.
    let (status, _) = a
        .call(
            "PATCH",
            &format!("/api/v1/keys/{id}"),
            Some(json!({"credits": {"remaining": 5}})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(a.store.disable(id).await.unwrap());
    let (_, answer) = validate(&http, b.api, &token, body.clone()).await;
    assert_eq!(answer["code"], "disabled", "{answer}");
    assert_eq!(a.credits(id).await["remaining"], 5, "nothing spent");
}

/// The CLI on `dir`'s SQLite database: its stdout as JSON.
fn cli(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&common::process::cli_on(dir, None, &[], args)).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// On SQLite: a key made by the CLI with credits and a refill, spent
/// through two processes on the same file (this one, and the binary) —
/// exactly its credits, each `usage_exceeded` saying when the refill comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_sqlite_never_overspend_a_key_made_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = a.service("svc").await;
    let made = cli(
        dir.path(),
        &[
            "keys",
            "create",
            "--owner",
            "user-1",
            "--credits",
            "1000",
            "--refill",
            "1000/30d",
            "--json",
        ],
    );
    let month = 30 * 86_400;
    assert_eq!(made["credits"]["remaining"], 1000);
    assert_eq!(
        made["credits"]["refill"],
        json!({"amount": 1000, "every": month})
    );
    let next = made["credits"]["nextRefillAt"].as_u64().unwrap();
    let created = made["createdAt"].as_u64().unwrap();
    assert!(
        (created + month - 1..=created + month).contains(&next),
        "{made}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _other = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--bind", &port.to_string()])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..200 {
        if reqwest::get(format!("http://{port}/health")).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the second process did not come up");

    let tally = burst(
        &[a.api, port],
        8,
        125,
        &token,
        made["key"].as_str().unwrap(),
    )
    .await;
    assert_eq!(tally.left, (0..1000).collect::<Vec<u64>>(), "valid answers");
    assert_eq!(tally.exceeded, 1000);
    // Until the refill: at most 30 days, less the test's time so far.
    for retry in &tally.retry_after {
        let retry = retry.expect("a refill: retryAfter");
        assert!(retry <= month && retry + 600 > month, "{retry}");
    }
    let listed = cli(dir.path(), &["keys", "list", "--json"]);
    assert_eq!(listed["keys"][0]["credits"]["remaining"], 0, "{listed}");
    assert_eq!(listed["keys"][0]["credits"]["nextRefillAt"], next);
}

/// `cost`: absent spends 1, 0 spends nothing (and never exceeds), over
/// 1,000,000 is a 400; `usage_exceeded` spends nothing either; keys without
/// credits ignore it; credits set and removed through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_is_what_a_validation_spends() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = s.service("svc").await;
    let http = reqwest::Client::new();
    let key = s
        .key(json!({"owner": "user-1", "scopes": ["stt"], "credits": {"remaining": 10}}))
        .await;
    let (k, id) = (key["key"].as_str().unwrap(), key["id"].as_str().unwrap());
    let call = |body: Value| validate(&http, s.api, &token, body);
    let left = |answer: &Value| answer["creditsRemaining"].as_u64();

    let (_, answer) = call(json!({"apiKey": k})).await;
    assert_eq!(
        (&answer["code"], left(&answer)),
        (&json!("valid"), Some(9)),
        "{answer}"
    );
    let (_, answer) = call(json!({"apiKey": k, "cost": 0})).await;
    assert_eq!(left(&answer), Some(9), "cost 0 spends nothing: {answer}");
    let (_, answer) = call(json!({"apiKey": k, "cost": 4, "scope": "stt"})).await;
    assert_eq!(left(&answer), Some(5), "{answer}");
    // Refused before anything is spent: bad input, a missing scope.
    for bad in [
        json!(1_000_001),
        json!(-1),
        json!(1.5),
        json!("1"),
        json!(u64::MAX),
    ] {
        let (status, answer) = call(json!({"apiKey": k, "cost": bad})).await;
        assert_eq!(status, 400, "cost {bad}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
    }
    let (_, answer) = call(json!({"apiKey": k, "scope": "tts"})).await;
    assert_eq!(answer["code"], "insufficient_scope");
    assert_eq!(s.credits(id).await["remaining"], 5);
    // More than is left: refused, nothing spent; then exactly what is left.
    let (status, answer) = call(json!({"apiKey": k, "cost": 6})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["code"], "usage_exceeded", "{answer}");
    assert!(answer.get("retryAfter").is_none(), "no refill: {answer}");
    let (_, answer) = call(json!({"apiKey": k, "cost": 5})).await;
    assert_eq!(left(&answer), Some(0), "{answer}");
    let (_, answer) = call(json!({"apiKey": k, "cost": 0})).await;
    assert_eq!(
        (&answer["code"], left(&answer)),
        (&json!("valid"), Some(0)),
        "cost 0 reports"
    );
    let (_, answer) = call(json!({"apiKey": k})).await;
    assert_eq!(answer["code"], "usage_exceeded", "{answer}");

    // A key without credits: any cost up to the maximum, nothing to report.
    let plain = s.key(json!({"owner": "user-2"})).await;
    let (p, pid) = (
        plain["key"].as_str().unwrap(),
        plain["id"].as_str().unwrap(),
    );
    assert_eq!(plain["credits"], Value::Null);
    let (_, answer) = call(json!({"apiKey": p, "cost": 1_000_000})).await;
    assert_eq!(answer["code"], "valid");
    assert!(answer.get("creditsRemaining").is_none(), "{answer}");
    assert_eq!(call(json!({"apiKey": p, "cost": 1_000_001})).await.0, 400);

    // Given credits with a refill (a string interval), then removed: the
    // validation follows at once (the write reaches this instance's cache).
    let change = json!({"credits": {"remaining": 3, "refill": {"amount": 3, "every": "1d"}}});
    let (status, view) = s
        .call("PATCH", &format!("/api/v1/keys/{pid}"), Some(change))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["credits"]["refill"],
        json!({"amount": 3, "every": 86_400})
    );
    let next = view["credits"]["nextRefillAt"].as_u64().unwrap();
    assert!(next.abs_diff(unix_now() + 86_400) <= 2, "{view}");
    let (_, answer) = call(json!({"apiKey": p, "cost": 3})).await;
    assert_eq!(left(&answer), Some(0), "{answer}");
    let (_, answer) = call(json!({"apiKey": p})).await;
    assert_eq!(answer["code"], "usage_exceeded");
    let retry = answer["retryAfter"].as_u64().unwrap();
    assert!((86_390..=86_400).contains(&retry), "{answer}");
    let change = json!({"credits": {"remaining": 1, "refill": {"amount": 5, "every": 3600}}});
    let (_, view) = s
        .call("PATCH", &format!("/api/v1/keys/{pid}"), Some(change))
        .await;
    assert_eq!(view["credits"]["refill"]["every"], 3600, "{view}");
    let (status, view) = s
        .call(
            "PATCH",
            &format!("/api/v1/keys/{pid}"),
            Some(json!({"credits": null})),
        )
        .await;
    assert_eq!((status, &view["credits"]), (200, &Value::Null), "{view}");
    let (_, answer) = call(json!({"apiKey": p, "cost": 50})).await;
    assert_eq!(answer["code"], "valid");
    assert!(answer.get("creditsRemaining").is_none(), "{answer}");

    // Counted: three refusals for credits, six bad costs.
    let exceeded = r#"auth_server_validate_requests_total{code="usage_exceeded"}"#;
    assert_eq!(s.metric(exceeded).await, 3.0);
    let bad = r#"auth_server_validate_requests_total{code="bad_request"}"#;
    assert_eq!(s.metric(bad).await, 6.0);
}

/// A key without credits costs no spend (its validation is answered from
/// the cache with the database gone); a key with credits is never valid
/// without its spend (503 `unavailable` when the spend fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_keys_with_credits_spend_and_a_failed_spend_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = s.service("svc").await;
    let http = reqwest::Client::new();
    let plain = s.key(json!({"owner": "user-1"})).await;
    let limited = s
        .key(json!({"owner": "user-2", "credits": {"remaining": 100}}))
        .await;
    for k in [&plain, &limited] {
        let (_, answer) = validate(&http, s.api, &token, json!({"apiKey": k["key"]})).await;
        assert_eq!(answer["code"], "valid", "{answer}");
    }
    s.store.close().await;
    let (status, answer) = validate(&http, s.api, &token, json!({"apiKey": plain["key"]})).await;
    assert_eq!(
        (status, &answer["code"]),
        (200, &json!("valid")),
        "{answer}"
    );
    let (status, answer) = validate(&http, s.api, &token, json!({"apiKey": limited["key"]})).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable", "{answer}");
    let unavailable = r#"auth_server_validate_requests_total{code="unavailable"}"#;
    assert_eq!(s.metric(unavailable).await, 1.0);
    assert!(s.metric("auth_server_store_errors_total").await >= 1.0);
}
