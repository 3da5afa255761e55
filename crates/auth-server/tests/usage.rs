//! Issue 16, items 4 and 5: every decision about a key counted per key,
//! hour and code — the server's own answers and services' reports of
//! theirs — written in batches, read through the admin API and the CLI.
#![allow(unused_crate_dependencies)]

mod common;
use common::{Instance, instance};

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use serde_json::{Value, json};

/// The start of the current hour, Unix seconds.
fn this_hour() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now - now % 3600
}

impl Instance {
    /// A new key with `body`'s settings: its id and the key.
    async fn new_key(&self, body: Value) -> (String, String) {
        let (status, made) = self.call("POST", "/api/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{made}");
        (
            made["id"].as_str().unwrap().to_owned(),
            made["key"].as_str().unwrap().to_owned(),
        )
    }

    /// A validate call: the answer's code.
    async fn validate(&self, token: &str, body: Value) -> String {
        let answer: Value = self
            .post(auth_core::protocol::VALIDATE_PATH, Some(token), body)
            .await
            .1;
        answer["code"].as_str().unwrap_or("none").to_owned()
    }

    /// A POST to `path` with the service credential `token`.
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}{path}", self.api))
            .json(&body);
        if let Some(token) = token {
            request = request.header(auth_server::SERVICE_HEADER, token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The key's buckets as the admin API shows them.
    async fn buckets(&self, id: &str) -> Value {
        let (status, usage) = self
            .call("GET", &format!("/api/v1/keys/{id}/usage"), None)
            .await;
        assert_eq!(status, 200, "{usage}");
        assert_eq!(usage["id"], id);
        usage["buckets"].clone()
    }
}

/// The current hour's bucket of `buckets`, as `{code: count}` and total.
fn now_bucket(buckets: &Value) -> (Value, u64) {
    let hour = this_hour();
    let bucket = buckets
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["hour"] == hour)
        .unwrap_or_else(|| panic!("no bucket for {hour} in {buckets}"));
    (bucket["counts"].clone(), bucket["total"].as_u64().unwrap())
}

/// The server counts every answer it gives about a known key, by code, at
/// once visible to reads; unknown keys and bad requests are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_about_a_known_key_is_counted_by_code() {
    let dir = tempfile::tempdir().unwrap();
    let inst = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = inst.service("svc").await;
    let (id, key) = inst
        .new_key(json!({"owner": "usage-a", "scopes": ["read"], "credits": {"remaining": 3}}))
        .await;
    let (off_id, off) = inst.new_key(json!({"owner": "usage-b"})).await;
    assert_eq!(
        inst.call("POST", &format!("/api/v1/keys/{off_id}/disable"), None)
            .await
            .0,
        200
    );

    for _ in 0..3 {
        assert_eq!(inst.validate(&token, json!({"apiKey": key})).await, "valid");
    }
    assert_eq!(
        inst.validate(&token, json!({"apiKey": key})).await,
        "usage_exceeded"
    );
    assert_eq!(
        inst.validate(&token, json!({"apiKey": key, "scope": "write"}))
            .await,
        "insufficient_scope"
    );
    for _ in 0..2 {
        assert_eq!(
            inst.validate(&token, json!({"apiKey": off})).await,
            "disabled"
        );
    }
    // Not about a known key, or not an answer: not counted.
    assert_eq!(
        inst.validate(&token, json!({"apiKey": "sk_live_unknown"}))
            .await,
        "invalid"
    );
    let (status, _) = inst
        .post(
            auth_core::protocol::VALIDATE_PATH,
            Some(&token),
            json!({"apiKey": key, "cost": 2_000_000}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        inst.post(
            auth_core::protocol::VALIDATE_PATH,
            None,
            json!({"apiKey": key})
        )
        .await
        .0,
        401
    );

    let (counts, total) = now_bucket(&inst.buckets(&id).await);
    assert_eq!(
        counts,
        json!({"valid": 3, "usage_exceeded": 1, "insufficient_scope": 1})
    );
    assert_eq!(total, 5);
    let (counts, total) = now_bucket(&inst.buckets(&off_id).await);
    assert_eq!((counts, total), (json!({"disabled": 2}), 2));

    // By owner, and all keys.
    let (status, mine) = inst.call("GET", "/api/v1/usage?owner=usage-b", None).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["owner"], "usage-b");
    let keys = mine["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], off_id.as_str());
    let (_, all) = inst.call("GET", "/api/v1/usage?since=1h", None).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2);
    assert_eq!(all["owner"], Value::Null);
    assert_eq!(
        inst.metric("auth_server_usage_decisions_total{event=\"counted\"}")
            .await,
        7.0
    );

    // Ranges checked; unknown keys 404; admin key needed.
    for query in [
        "since=soon",
        "since=-1",
        "since=253402300800",
        "owner=a&since=1e3",
    ] {
        let (status, body) = inst
            .call("GET", &format!("/api/v1/usage?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let (status, _) = inst.call("GET", "/api/v1/keys/key_nope/usage", None).await;
    assert_eq!(status, 404);
    let anonymous = reqwest::get(format!("http://{}/api/v1/usage", inst.api))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

fn entry(digest: &str, hour: u64, counts: Value) -> Value {
    json!({"digest": digest, "hour": hour, "counts": counts})
}

/// Services' reports add to the counts — moves out of `valid` included —
/// whole or not at all, from known services only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_add_up_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let inst = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = inst.service("svc").await;
    let (id, key) = inst.new_key(json!({"owner": "reported"})).await;
    let digest = Digest::of(key.as_bytes()).to_hex();
    let hour = this_hour();
    assert_eq!(inst.validate(&token, json!({"apiKey": key})).await, "valid");

    // Nine from the service's cache; one grant (the server's) moved to
    // rate_limited by the service's guard; an unknown digest dropped.
    let report = json!({"entries": [
        entry(&digest, hour, json!({"valid": 9})),
        entry(&digest, hour, json!({"valid": -1, "rate_limited": 1})),
        entry(&"0".repeat(64), hour, json!({"valid": 5})),
        entry(&digest, hour - 3600, json!({"expired": 2})),
    ]});
    let (status, answer) = inst
        .post(auth_core::protocol::USAGE_PATH, Some(&token), report)
        .await;
    assert_eq!((status, answer), (200, json!({"accepted": 4})));
    let buckets = inst.buckets(&id).await;
    assert_eq!(
        now_bucket(&buckets),
        (json!({"valid": 9, "rate_limited": 1}), 10)
    );
    assert_eq!(buckets[0]["hour"], hour - 3600);
    assert_eq!(buckets[0]["counts"], json!({"expired": 2}));

    // Any entry out of range: the whole report refused, nothing counted.
    for bad in [
        entry(&digest.to_uppercase(), hour, json!({"valid": 1})),
        entry(&digest, hour + 1, json!({"valid": 1})),
        entry(&digest, hour, json!({"valid": 1_000_000_001})),
        entry(&digest, hour, json!({"invalid": 1})),
        entry(&digest, hour, json!({"valid": "1"})),
    ] {
        let report = json!({"entries": [entry(&digest, hour, json!({"valid": 100})), bad]});
        let (status, body) = inst
            .post(auth_core::protocol::USAGE_PATH, Some(&token), report)
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let too_many: Vec<Value> = (0..5_001u64)
        .map(|i| entry(&digest, hour - 3600 * i, json!({"valid": 1})))
        .collect();
    let (status, _) = inst
        .post(
            auth_core::protocol::USAGE_PATH,
            Some(&token),
            json!({"entries": too_many}),
        )
        .await;
    assert_eq!(status, 400);
    // Not a known service.
    let report = json!({"entries": [entry(&digest, hour, json!({"valid": 100}))]});
    assert_eq!(
        inst.post(auth_core::protocol::USAGE_PATH, None, report.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        inst.post(
            auth_core::protocol::USAGE_PATH,
            Some("sk_svc_forged"),
            report
        )
        .await
        .0,
        401
    );
    assert_eq!(
        now_bucket(&inst.buckets(&id).await).1,
        10,
        "nothing counted"
    );

    // The largest report (5,000 entries, every code at its largest count:
    // ~1.3 MB) is taken; entries of hours older than 7 days or ahead of
    // the next are skipped, not refused.
    let big = json!({"valid": 1_000_000_000, "disabled": 1_000_000_000, "expired": 1_000_000_000,
        "insufficient_scope": 1_000_000_000, "rate_limited": 1_000_000_000,
        "usage_exceeded": 1_000_000_000});
    let full: Vec<Value> = (0..5_000u64)
        .map(|i| match i {
            // The known key: the previous 7 days' hours.
            1..=167 => entry(&digest, hour - 3600 * i, json!({"valid": 1, "disabled": 1})),
            168 => entry(&digest, hour - 3600 * 24 * 8, json!({"valid": 1})),
            169 => entry(&digest, hour + 7200, json!({"valid": 1})),
            // Keys of no one, alike in their first 56 digits (a sender
            // picks its digests: they must not pile into one hash
            // bucket): dropped when written.
            _ => entry(&format!("{i:064x}"), hour, big.clone()),
        })
        .collect();
    let body = serde_json::to_vec(&json!({"entries": full})).unwrap();
    assert!(body.len() > 1_200_000, "{} bytes", body.len());
    let (status, answer) = inst
        .post(
            auth_core::protocol::USAGE_PATH,
            Some(&token),
            json!({"entries": full}),
        )
        .await;
    assert_eq!((status, answer), (200, json!({"accepted": 4998})));
    let (_, usage) = inst
        .call("GET", &format!("/api/v1/keys/{id}/usage?since=0"), None)
        .await;
    let buckets = usage["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 168, "{usage}");
    assert!(buckets.iter().all(|b| b["hour"].as_u64().unwrap() <= hour));
    assert_eq!(
        inst.metric("auth_server_usage_decisions_total{event=\"reported\"}")
            .await,
        9.0 + 2.0 + 5.0 + 2.0 + 167.0 * 2.0 + 4_831.0 * 6e9
    );
    // Every key's usage: at most 31 days back.
    let (status, _) = inst.call("GET", "/api/v1/usage?since=32d", None).await;
    assert_eq!(status, 400);
    let (status, _) = inst.call("GET", "/api/v1/usage?since=31d", None).await;
    assert_eq!(status, 200);
    let (status, _) = inst.call("GET", "/api/v1/usage?sinc=7d", None).await;
    assert_eq!(status, 400, "unknown parameters are refused");
}

/// Counts of two instances on PostgreSQL add up; each writes its own
/// (every 10 s, or when it reads), and the CLI prints what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_add_up_and_the_cli_prints_them() {
    let url = auth_sqlx::testing::postgres_schema("usage_two").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), auth_server::Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), auth_server::Options::default()).await;
    let token = a.service("svc").await;
    let (id, key) = a.new_key(json!({"owner": "two"})).await;
    for _ in 0..4 {
        assert_eq!(a.validate(&token, json!({"apiKey": key})).await, "valid");
    }
    // B may need a moment to hear of the new key and credential.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut on_b = 0;
    while on_b < 6 {
        if b.validate(&token, json!({"apiKey": key})).await == "valid" {
            on_b += 1;
        } else {
            assert!(std::time::Instant::now() < deadline, "B never knew the key");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // B's counts are written by its flush (every 10 s; here at once).
    assert_eq!(now_bucket(&a.buckets(&id).await).1, 4);
    assert_eq!(b.store.flush_usage().await.unwrap(), 1);
    assert_eq!(
        now_bucket(&a.buckets(&id).await),
        (json!({"valid": 10}), 10)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .args(["keys", "usage", &id, "--since", "2h"])
        .env("DATABASE_URL", &url)
        .arg("--data-dir")
        .arg(dir_a.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&id) && text.contains("two"), "{text}");
    let row = text.lines().nth(2).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(2), Some(&"10"), "valid: {text}");
    assert_eq!(cells.last(), Some(&"10"), "total: {text}");

    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .args(["keys", "usage", &id, "--json"])
        .env("DATABASE_URL", &url)
        .arg("--data-dir")
        .arg(dir_a.path())
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["buckets"][0]["counts"]["valid"], 10);
    assert_eq!(json["buckets"][0]["total"], 10);
    let missing = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .args(["keys", "usage", "key_nope"])
        .env("DATABASE_URL", &url)
        .arg("--data-dir")
        .arg(dir_a.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// Issue 16's promise, end to end: the requests a service answered from
/// its own cache show up in the key service's counts — through a real
/// RemoteVerifier and Guard: one call, the rest cache hits, the ones over
/// the key's rate limit moved from `valid` to `rate_limited`, cached
/// refusals too — each decision counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answered_from_a_services_cache_are_counted_once() {
    use auth_core::{Decision, Guard, PlainRequest};

    let dir = tempfile::tempdir().unwrap();
    let inst = instance(dir.path(), None, auth_server::Options::default()).await;
    let token = inst.service("svc").await;
    let (id, key) = inst
        .new_key(json!({"owner": "cached", "rateLimit": {"requests": 5, "window": 3600}}))
        .await;
    let (off_id, off) = inst.new_key(json!({"owner": "cached-off"})).await;
    assert_eq!(
        inst.call("POST", &format!("/api/v1/keys/{off_id}/disable"), None)
            .await
            .0,
        200
    );
    let verifier = auth_remote::RemoteVerifier::builder(&format!("http://{}", inst.api))
        .service_credential(auth_server::SERVICE_HEADER, &token)
        // Sent when asked to (below), not on a timer.
        .usage_reports(Some(std::time::Duration::from_secs(3600)))
        .build()
        .unwrap();
    let guard = Guard::builder(verifier.clone()).build().unwrap();
    let (mut allowed, mut limited, mut refused) = (0, 0, 0);
    for _ in 0..8 {
        let req = PlainRequest::get("/items").header("x-api-key", &key);
        match guard.check(&req).await {
            Decision::Allow(_) => allowed += 1,
            Decision::Reject(r) if r.status() == 429 => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    for _ in 0..3 {
        let req = PlainRequest::get("/items").header("x-api-key", &off);
        match guard.check(&req).await {
            Decision::Reject(r) if r.status() == 401 => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((allowed, limited, refused), (5, 3, 3));

    // Before the report, the key service knows only the calls it answered
    // (one per key, or two when the changes stream, going live, dropped
    // what the cache held).
    let (counts, served) = now_bucket(&inst.buckets(&id).await);
    assert!(
        (1..=2).contains(&served) && counts["valid"] == served,
        "{counts}"
    );
    let (counts, served) = now_bucket(&inst.buckets(&off_id).await);
    assert!(
        (1..=2).contains(&served) && counts["disabled"] == served,
        "{counts}"
    );
    verifier.report_usage().await;
    assert_eq!(
        now_bucket(&inst.buckets(&id).await),
        (json!({"valid": 5, "rate_limited": 3}), 8)
    );
    assert_eq!(
        now_bucket(&inst.buckets(&off_id).await),
        (json!({"disabled": 3}), 3)
    );
    // Reported once: a second report has nothing to add.
    verifier.report_usage().await;
    assert_eq!(now_bucket(&inst.buckets(&id).await).1, 8);
}
