//! Webhooks (issue 17, item 2): endpoints registered through the admin API
//! and the CLI; deliveries signed in the Standard Webhooks format,
//! retried with backoff for a bounded time, queued in the database (they
//! survive a restart) and made once across instances. The receiver is an
//! axum app on 127.0.0.1 that verifies every signature.
#![allow(unused_crate_dependencies)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::webhook::{WebhookHeaders, WebhookSecret};
use auth_server::{Options, WebhookOptions};
use auth_sqlx::RetryPolicy;
use common::process::KeyService;
use common::receiver::{Attempt, Receiver};
use common::{Instance, instance};
use serde_json::{Value, json};

/// Quick settings for tests: looked for every 100 ms, events of time every
/// 300 ms, retried after 200 ms doubling up to 1 s, for `give_up`.
fn quick(give_up: Duration) -> Options {
    Options {
        webhooks: WebhookOptions {
            poll: Duration::from_millis(100),
            scan_every: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            retry: RetryPolicy {
                first: Duration::from_millis(200),
                max_delay: Duration::from_secs(1),
                give_up_after: give_up,
            },
            ..WebhookOptions::default()
        },
        ..Options::default()
    }
}

/// The same, for the binary.
const QUICK_ENV: [(&str, &str); 5] = [
    ("AUTH_SERVER_WEBHOOK_POLL", "100ms"),
    // A claim lasts the timeout and 5 s: an attempt cut short by a kill
    // is made again within 6 s.
    ("AUTH_SERVER_WEBHOOK_TIMEOUT", "1s"),
    ("AUTH_SERVER_WEBHOOK_SCAN_EVERY", "1s"),
    ("AUTH_SERVER_WEBHOOK_RETRY_FIRST", "200ms"),
    ("AUTH_SERVER_WEBHOOK_RETRY_MAX", "1s"),
];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Registers `receiver` for `events`; its secret trusted by the receiver.
async fn register(s: &Instance, receiver: &Receiver, events: &[&str], extra: Value) -> Value {
    let mut body = json!({"url": receiver.url(), "events": events});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, made) = s.call("POST", "/api/v1/webhooks", Some(body)).await;
    assert_eq!(status, 201, "{made}");
    receiver.trust(made["secret"].as_str().unwrap());
    made
}

/// A new client key: (id, key).
async fn key(s: &Instance, body: Value) -> (String, String) {
    let (status, made) = s.call("POST", "/api/v1/keys", Some(body)).await;
    assert_eq!(status, 201, "{made}");
    (
        made["id"].as_str().unwrap().to_owned(),
        made["key"].as_str().unwrap().to_owned(),
    )
}

/// An endpoint's deliveries, as the API lists them.
async fn deliveries(s: &Instance, webhook: &str) -> Vec<Value> {
    let (status, list) = s
        .call(
            "GET",
            &format!("/api/v1/webhooks/{webhook}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list["deliveries"].as_array().unwrap().clone()
}

/// Waits (10 s at most) until `webhook`'s deliveries all have `status`.
async fn settled(s: &Instance, webhook: &str, n: usize, status: &str) -> Vec<Value> {
    for _ in 0..500 {
        let list = deliveries(s, webhook).await;
        if list.len() == n && list.iter().all(|d| d["status"] == status) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not {n} {status}: {:?}", deliveries(s, webhook).await);
}

/// A receiver that fails the first two attempts of each message gets the
/// event on the third, every attempt with the same id, a fresh timestamp
/// and a signature that verifies; the waits between attempts are at least
/// the backoff; the delivery is recorded as delivered after 3 attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_the_first_attempts_gets_the_event_signed_after_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, quick(Duration::from_secs(60))).await;
    let receiver = Receiver::start().await;
    receiver.fail_first(2);
    let made = register(&s, &receiver, &["key.disabled", "key.rotated"], json!({})).await;
    let webhook = made["id"].as_str().unwrap();
    let secret = made["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{made}");
    // The secret is shown once: never in a read.
    for path in [
        "/api/v1/webhooks".to_owned(),
        format!("/api/v1/webhooks/{webhook}"),
    ] {
        let (status, read) = s.call("GET", &path, None).await;
        assert_eq!(status, 200);
        assert!(!read.to_string().contains(&secret[6..]), "{read}");
    }
    let (id, plain) = key(&s, json!({"owner": "acme"})).await;
    let before = unix_now();
    let (status, _) = s
        .call("POST", &format!("/api/v1/keys/{id}/disable"), None)
        .await;
    assert_eq!(status, 200);

    let accepted = receiver.accepted_within(1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1);
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a.id == attempts[0].id && a.verified)
    );
    assert!(attempts[0].id.starts_with("msg_"));
    assert_eq!(
        attempts.iter().map(|a| a.answered).collect::<Vec<_>>(),
        [500, 500, 204]
    );
    // Backoff: 200 ms, then 400 ms (at least).
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(200));
    assert!(attempts[2].at - attempts[1].at >= Duration::from_millis(400));
    for a in &attempts {
        assert!(a.timestamp >= before && a.timestamp <= unix_now() + 1);
        // Never the key, whole or its random part.
        assert!(!a.body.contains(&plain) && !a.body.contains(&plain[8..]));
    }
    let event = attempts[2].payload();
    assert_eq!(event["type"], "key.disabled");
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["data"]["kind"], "key");
    assert_eq!(event["data"]["owner"], "acme");
    assert!(
        event["data"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );
    assert!(event["data"]["disabledAt"].as_str().unwrap().ends_with('Z'));
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));

    let list = settled(&s, webhook, 1, "delivered").await;
    assert_eq!(list[0]["id"], attempts[0].id.as_str());
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["lastStatus"], 204);
    assert_eq!(list[0]["lastError"], Value::Null);
    assert_eq!(list[0]["event"], "key.disabled");
    assert_eq!(
        s.metric(r#"auth_server_webhook_attempts_total{outcome="retry"}"#)
            .await,
        2.0
    );
    assert_eq!(
        s.metric(r#"auth_server_webhook_attempts_total{outcome="delivered"}"#)
            .await,
        1.0
    );

    // A rotation: key.rotated, naming the new key; a second disable of the
    // same key sends nothing more.
    let (other, _) = key(&s, json!({"owner": "acme"})).await;
    let (status, rotated) = s
        .call(
            "POST",
            &format!("/api/v1/keys/{other}/rotate"),
            Some(json!({"overlap": 60})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    s.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
        .await;
    let accepted = receiver.accepted_within(2, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 2);
    let event = accepted[1].payload();
    assert_eq!(event["type"], "key.rotated");
    assert_eq!(event["data"]["id"], other.as_str());
    assert_eq!(event["data"]["replacedBy"], rotated["id"]);
    assert!(event["data"]["endsAt"].is_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.accepted().len(), 2);
}

/// A delivery the receiver never accepts is retried until the bounded
/// time, then recorded as failed — and never attempted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_never_accepted_is_marked_failed_after_the_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, quick(Duration::from_secs(2))).await;
    let receiver = Receiver::start().await;
    receiver.refuse(true);
    let made = register(&s, &receiver, &["key.disabled"], json!({})).await;
    let webhook = made["id"].as_str().unwrap();
    let (id, _) = key(&s, json!({"owner": "acme"})).await;
    s.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
        .await;
    // Waiting while it is retried (the scans count it)…
    for _ in 0..200 {
        if s.metric("auth_server_webhook_pending").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.metric("auth_server_webhook_pending").await, 1.0);
    let list = settled(&s, webhook, 1, "failed").await;
    let attempts = receiver.attempts().len();
    // 0, 0.2, 0.6, 1.4 s; the next (2.4 s) would be past 2 s. (A loaded
    // machine that makes each late may fit one fewer: never more.)
    assert!((3..=4).contains(&attempts), "{attempts}");
    assert_eq!(list[0]["attempts"], attempts, "{list:?}");
    assert_eq!(list[0]["lastStatus"], 500);
    assert_eq!(list[0]["lastError"], "status 500");
    assert!(list[0]["doneAt"].is_u64());
    assert_eq!(list[0]["nextAt"], Value::Null);
    assert_eq!(
        s.metric(r#"auth_server_webhook_attempts_total{outcome="failed"}"#)
            .await,
        1.0
    );
    receiver.refuse(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.attempts().len(), attempts);
    // … and no more once failed (several scans since).
    assert_eq!(s.metric("auth_server_webhook_pending").await, 0.0);
    assert_eq!(s.metric("auth_server_webhook_given_up_total").await, 0.0);
}

/// `key.expiring` (within the endpoint's notice), `key.expired` and
/// `credits.low` are found by the scans and sent once each, however many
/// scans run; a disabled key gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_time_are_sent_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, quick(Duration::from_secs(60))).await;
    let receiver = Receiver::start().await;
    let now = unix_now();
    // Disabled before any scan could see it expiring.
    let (off, _) = key(&s, json!({"owner": "f", "expiresAt": now + 86_400})).await;
    s.call("POST", &format!("/api/v1/keys/{off}/disable"), None)
        .await;
    register(
        &s,
        &receiver,
        &["key.expiring", "key.expired", "credits.low"],
        json!({"expiringDays": 3, "creditsBelow": 10}),
    )
    .await;
    let (soon, _) = key(&s, json!({"owner": "a", "expiresAt": now + 2 * 86_400})).await;
    let (later, _) = key(&s, json!({"owner": "b", "expiresAt": now + 30 * 86_400})).await;
    let (lapsing, _) = key(&s, json!({"owner": "c", "expiresAt": now + 2})).await;
    let (low, _) = key(&s, json!({"owner": "d", "credits": {"remaining": 5}})).await;
    let (plenty, _) = key(&s, json!({"owner": "e", "credits": {"remaining": 500}})).await;

    // `lapsing` is expiring first, then expired (after ≥ 2 s).
    let accepted = receiver.accepted_within(4, Duration::from_secs(10)).await;
    // Several more scans.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let accepted_after = receiver.accepted();
    assert_eq!(accepted.len(), accepted_after.len(), "{accepted_after:?}");
    let mut seen: Vec<(String, String)> = accepted_after
        .iter()
        .map(|a| {
            let p = a.payload();
            (
                p["type"].as_str().unwrap().to_owned(),
                p["data"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        ("credits.low".to_owned(), low.clone()),
        ("key.expired".to_owned(), lapsing.clone()),
        ("key.expiring".to_owned(), lapsing.clone()),
        ("key.expiring".to_owned(), soon.clone()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    for id in [&later, &plenty, &off] {
        assert!(!seen.iter().any(|(_, k)| k == id));
    }
    let credits = accepted_after
        .iter()
        .map(Attempt::payload)
        .find(|p| p["type"] == "credits.low")
        .unwrap();
    assert_eq!(credits["data"]["remaining"], 5);
    assert_eq!(credits["data"]["threshold"], 10);
}

/// A receiver that hangs holds one attempt's slot, never the others':
/// with two slots, another endpoint's three deliveries go through the
/// other slot while a hanging endpoint's attempt waits 5 s for its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_hold_up_other_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = quick(Duration::from_secs(60));
    options.webhooks.concurrency = 2;
    // Longer than the hang (5 s): the slow attempt holds its slot 5 s.
    options.webhooks.timeout = Duration::from_secs(10);
    let s = instance(dir.path(), None, options).await;
    let slow = Receiver::start().await;
    slow.hang(true);
    let quick_one = Receiver::start().await;
    register(&s, &slow, &["key.rotated"], json!({})).await;
    register(&s, &quick_one, &["key.disabled"], json!({})).await;
    let (rotated, _) = key(&s, json!({"owner": "acme"})).await;
    s.call(
        "POST",
        &format!("/api/v1/keys/{rotated}/rotate"),
        Some(json!({"overlap": 60})),
    )
    .await;
    // The slow endpoint's attempt under way (2 s before it times out)…
    for _ in 0..200 {
        if !slow.attempts().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.attempts().len(), 1);
    for i in 0..3 {
        let (id, _) = key(&s, json!({"owner": format!("o{i}")})).await;
        s.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
            .await;
    }
    // … the other's three arrive before it ends (5 s after it began).
    let accepted = quick_one.accepted_within(3, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 3);
    let hang_ends = slow.attempts()[0].at + Duration::from_secs(5);
    for a in &accepted {
        assert!(a.at < hang_ends, "held up by the hanging receiver");
    }
    assert_eq!(slow.accepted().len(), 0);
}

/// Whether `attempt` verifies with `secret`.
fn verifies(attempt: &Attempt, secret: &str) -> bool {
    let timestamp = attempt.timestamp.to_string();
    let headers = WebhookHeaders {
        id: &attempt.id,
        timestamp: &timestamp,
        signature: &attempt.signature,
    };
    WebhookSecret::parse(secret)
        .unwrap()
        .verify(&headers, attempt.body.as_bytes(), SystemTime::now())
        .is_ok()
}

/// A secret changed with an overlap: deliveries carry two signatures, one
/// per secret, so receivers switch at leisure; without overlap, only the
/// new one signs. The change is recorded in the audit trail (never a
/// secret) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_signs_beside_the_old_one_for_the_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, quick(Duration::from_secs(60))).await;
    let receiver = Receiver::start().await;
    let made = register(&s, &receiver, &["key.disabled"], json!({})).await;
    let webhook = made["id"].as_str().unwrap();
    let old = made["secret"].as_str().unwrap().to_owned();
    for bad in [
        json!({"overlap": -1}),
        json!({"overlap": 604_801}),
        json!({"overlap": "1h"}),
        json!({"other": 1}),
    ] {
        let (status, answer) = s
            .call(
                "POST",
                &format!("/api/v1/webhooks/{webhook}/secret"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad} → {answer}");
    }
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/webhooks/wh_0000000000000000/secret",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, changed) = s
        .call(
            "POST",
            &format!("/api/v1/webhooks/{webhook}/secret"),
            Some(json!({"overlap": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    let new = changed["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let (id, _) = key(&s, json!({"owner": "acme"})).await;
    s.call("POST", &format!("/api/v1/keys/{id}/disable"), None)
        .await;
    // The receiver still trusts the old secret: accepted.
    let accepted = receiver.accepted_within(1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].signature.split(' ').count(), 2);
    assert!(verifies(&accepted[0], &old) && verifies(&accepted[0], &new));

    assert!(changed["previousSecretUntil"].as_u64().unwrap() >= unix_now() + 3599);
    // While that overlap runs, another change is a conflict…
    let (status, refused) = s
        .call(
            "POST",
            &format!("/api/v1/webhooks/{webhook}/secret"),
            Some(json!({"overlap": 0})),
        )
        .await;
    assert_eq!(
        (status, &refused["error"]),
        (409, &json!("conflict")),
        "{refused}"
    );
    // … unless forced. No overlap: the new secret alone.
    let (status, changed) = s
        .call(
            "POST",
            &format!("/api/v1/webhooks/{webhook}/secret"),
            Some(json!({"overlap": 0, "force": true})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["previousSecretUntil"], Value::Null);
    let newest = changed["secret"].as_str().unwrap().to_owned();
    receiver.trust(&newest);
    let (other, _) = key(&s, json!({"owner": "acme"})).await;
    s.call("POST", &format!("/api/v1/keys/{other}/disable"), None)
        .await;
    let accepted = receiver.accepted_within(2, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1].signature.split(' ').count(), 1);
    assert!(verifies(&accepted[1], &newest) && !verifies(&accepted[1], &new));

    // Recorded: made, changed twice; never a secret.
    let (_, trail) = s
        .call("GET", &format!("/api/v1/audit?key={webhook}"), None)
        .await;
    let records = trail["records"].as_array().unwrap();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rotate", "rotate", "create"]);
    for r in records {
        assert_eq!(r["resource"], "webhook");
        assert!(r["actor"].as_str().unwrap().starts_with("admin:"));
        for secret in [&old, &new, &newest] {
            assert!(!r.to_string().contains(&secret[6..]), "{r}");
        }
    }
    assert_eq!(
        s.metric(r#"auth_server_admin_writes_total{resource="webhook",action="rotate"}"#)
            .await,
        2.0
    );
}

/// Bad input is a 400 with a JSON body and makes nothing; an unknown
/// endpoint is a 404; no admin key, a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_input_is_refused_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, quick(Duration::from_secs(60))).await;
    let url = "https://hooks.example.com/auth";
    let long = format!("https://example.com/{}", "a".repeat(2100));
    let bad = [
        json!({"url": "ftp://example.com/x", "events": ["key.disabled"]}),
        json!({"url": "https://user:pw@example.com/x", "events": ["key.disabled"]}),
        json!({"url": "https://example.com/x#frag", "events": ["key.disabled"]}),
        json!({"url": "https://exa mple.com/x", "events": ["key.disabled"]}),
        json!({"url": "/relative", "events": ["key.disabled"]}),
        json!({"url": long, "events": ["key.disabled"]}),
        json!({"url": url, "events": []}),
        json!({"url": url, "events": ["key.created"]}),
        json!({"url": url, "events": ["key.disabled"], "expiringDays": 0}),
        json!({"url": url, "events": ["key.disabled"], "expiringDays": 366}),
        json!({"url": url, "events": ["key.disabled"], "expiringDays": -1}),
        json!({"url": url, "events": ["key.disabled"], "creditsBelow": 0}),
        json!({"url": url, "events": ["key.disabled"], "secret": "whsec_mine"}),
        json!({"url": url, "events": ["key.disabled"], "description": "\u{202e}evil"}),
        json!({"url": url}),
    ];
    for body in bad {
        let (status, answer) = s.call("POST", "/api/v1/webhooks", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
        assert!(answer["message"].is_string());
    }
    let (_, list) = s.call("GET", "/api/v1/webhooks", None).await;
    assert_eq!(list["webhooks"], json!([]));
    for (method, path) in [
        ("GET", "/api/v1/webhooks/wh_nope"),
        ("DELETE", "/api/v1/webhooks/wh_nope"),
        ("GET", "/api/v1/webhooks/wh_nope/deliveries"),
    ] {
        let (status, answer) = s.call(method, path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(answer["error"], "not_found");
    }
    let (status, made) = s
        .call(
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": url, "events": ["key.leaked"]})),
        )
        .await;
    assert_eq!(status, 201);
    let id = made["id"].as_str().unwrap();
    for query in ["limit=0", "limit=1001", "limit=x", "other=1"] {
        let (status, _) = s
            .call(
                "GET",
                &format!("/api/v1/webhooks/{id}/deliveries?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}");
    }
    let status = reqwest::Client::new()
        .get(format!("http://{}/api/v1/webhooks", s.api))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let (status, _) = s
        .call("DELETE", &format!("/api/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (_, list) = s.call("GET", "/api/v1/webhooks", None).await;
    assert_eq!(list["webhooks"], json!([]));
}

/// The binary, on SQLite: a delivery failing, then killed mid-attempt
/// (its receiver hanging), is delivered by the restarted process — queued
/// in the database; the cut attempt's claim lapses — once. Endpoints made
/// with the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_by_a_kill_is_made_after_a_restart() {
    let receiver = Receiver::start().await;
    receiver.refuse(true);
    let mut ks = KeyService::start_with(None, &QUICK_ENV).await;
    let out = ks.cli(&[
        "webhooks",
        "add",
        &receiver.url(),
        "--event",
        "key.disabled",
        "--json",
    ]);
    let made: Value = serde_json::from_str(&out).unwrap();
    receiver.trust(made["secret"].as_str().unwrap());
    let webhook = made["id"].as_str().unwrap().to_owned();
    let listed = ks.cli(&["webhooks", "list"]);
    assert!(
        listed.contains(&webhook) && !listed.contains("whsec_"),
        "{listed}"
    );
    let k = ks
        .call("POST", "/api/v1/keys", json!({"owner": "acme"}))
        .await;
    let id = k["id"].as_str().unwrap();
    ks.call("POST", &format!("/api/v1/keys/{id}/disable"), json!(null))
        .await;
    let arrived = |n: usize| {
        let receiver = receiver.clone();
        async move {
            for _ in 0..500 {
                if receiver.attempts().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no attempt {n}");
        }
    };
    // Two failed attempts, recorded; then one the process is killed in.
    arrived(2).await;
    receiver.hang(true);
    let refused = receiver.attempts().len();
    arrived(refused + 1).await;
    ks.kill();
    receiver.hang(false);
    receiver.refuse(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.attempts().len(),
        refused + 1,
        "nobody delivers while it is down"
    );

    ks.restart().await;
    // When the cut attempt's claim lapses (the timeout and 5 s).
    let accepted = receiver.accepted_within(1, Duration::from_secs(15)).await;
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].verified);
    assert_eq!(accepted[0].payload()["data"]["id"], id);
    let table = ks.cli(&["webhooks", "deliveries", &webhook]);
    assert!(table.contains("delivered"), "{table}");
    let json: Value =
        serde_json::from_str(&ks.cli(&["webhooks", "deliveries", &webhook, "--json"])).unwrap();
    let d = &json["deliveries"][0];
    assert_eq!(d["status"], "delivered");
    // The refused attempts and the delivery; the cut one was never recorded.
    assert_eq!(d["attempts"], refused + 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.attempts().len(), refused + 2);
    ks.cli(&["webhooks", "remove", &webhook]);
    assert!(!ks.cli(&["webhooks", "list"]).contains(&webhook));
}

/// Two instances (the binary) on one PostgreSQL database, both
/// delivering: 30 events, each attempt failed once by the receiver, are
/// each accepted exactly once — whichever instance made each attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_deliver_each_event_once() {
    let url = auth_sqlx::testing::postgres_schema("webhooks_fleet").await;
    let receiver = Receiver::start().await;
    receiver.fail_first(1);
    let a = KeyService::start_with(Some(&url), &QUICK_ENV).await;
    let b = KeyService::start_with(Some(&url), &QUICK_ENV).await;
    let made = a
        .call(
            "POST",
            "/api/v1/webhooks",
            json!({"url": receiver.url(), "events": ["key.disabled"]}),
        )
        .await;
    receiver.trust(made["secret"].as_str().unwrap());
    let mut ids = Vec::new();
    for i in 0..30 {
        let ks = if i % 2 == 0 { &a } else { &b };
        let k = ks
            .call("POST", "/api/v1/keys", json!({"owner": format!("o{i}")}))
            .await;
        let id = k["id"].as_str().unwrap().to_owned();
        ks.call("POST", &format!("/api/v1/keys/{id}/disable"), json!(null))
            .await;
        ids.push(id);
    }
    let accepted = receiver.accepted_within(30, Duration::from_secs(20)).await;
    assert_eq!(accepted.len(), 30);
    // Time for a second delivery to show, if one were coming.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 30);
    let mut messages: Vec<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    messages.sort_unstable();
    messages.dedup();
    assert_eq!(messages.len(), 30, "a message accepted twice");
    let mut keys: Vec<String> = accepted
        .iter()
        .map(|a| a.payload()["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    ids.sort();
    assert_eq!(keys, ids);
    // Each message attempted exactly twice (one refusal, one delivery).
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 60, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.verified));
}
