//! Issue 17, item 1: the audit trail through the key service — every kind
//! of write to a key or a service credential, through the admin API and
//! through the CLI binary, leaves exactly one record (a rotation: one on
//! the old key, one on the new) naming who made it (`admin:<fingerprint>`,
//! `cli:<user>`); refused writes leave none; no key, digest or admin key
//! appears in any record; the server's own database refuses to change a
//! record; two instances on PostgreSQL share one ordered trail.
#![allow(unused_crate_dependencies)]

mod common;
use common::{Instance, instance};

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use auth_sqlx::testing::{execute_raw, postgres_schema};
use serde_json::{Value, json};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The actor an instance's admin writes are recorded as.
fn admin_actor(s: &Instance) -> String {
    format!("admin:{}", Digest::of(s.admin.as_bytes()).fingerprint())
}

/// Every record (`GET /api/v1/audit?limit=1000`), newest first.
async fn trail(s: &Instance) -> Vec<Value> {
    let (status, answer) = s.call("GET", "/api/v1/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{answer}");
    answer["records"].as_array().unwrap().clone()
}

/// The records after the first `before`, oldest first.
async fn since(s: &Instance, before: usize) -> Vec<Value> {
    let all = trail(s).await;
    let mut new = all[..all.len() - before].to_vec();
    new.reverse();
    new
}

/// Runs `write` and returns its answer and the records it left, oldest
/// first.
async fn recorded(
    s: &Instance,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> (Value, Vec<Value>) {
    let before = trail(s).await.len();
    let (got, answer) = s.call(method, path, body.clone()).await;
    assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
    (answer, since(s, before).await)
}

/// Exactly one record, of this action and key, by `actor`: its changes.
fn one(records: &[Value], actor: &str, action: &str, resource: &str, id: &str) -> Value {
    assert_eq!(records.len(), 1, "{records:?}");
    record_is(&records[0], actor, action, resource, id)
}

fn record_is(r: &Value, actor: &str, action: &str, resource: &str, id: &str) -> Value {
    assert_eq!(
        (&r["actor"], &r["action"], &r["resource"], &r["keyId"]),
        (&json!(actor), &json!(action), &json!(resource), &json!(id)),
        "{r}"
    );
    assert!(r["source"].is_null(), "{r}");
    let at = r["at"].as_u64().unwrap();
    assert!(
        at / 1000 + 60 > unix_now() && at / 1000 <= unix_now(),
        "{r}"
    );
    r["changes"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_write_leaves_one_record_naming_the_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, auth_server::Options::default()).await;
    let actor = admin_actor(&s);
    assert_eq!(actor.len(), "admin:".len() + 8, "{actor}");
    let mut secrets = vec![s.admin.clone(), Digest::of(s.admin.as_bytes()).to_hex()];
    let mut keep = |answer: &Value| {
        let key = answer["key"].as_str().unwrap().to_owned();
        secrets.push(Digest::of(key.as_bytes()).to_hex());
        secrets.push(key);
    };

    // A key: created with every setting.
    let expires = unix_now() + 30 * 86_400;
    let (made, records) = recorded(
        &s,
        "POST",
        "/api/v1/keys",
        Some(json!({"owner": "svc-a", "scopes": ["stt"],
            "rateLimit": {"requests": 60, "window": 60}, "expiresAt": expires,
            "credits": {"remaining": 100, "refill": {"amount": 100, "every": "1d"}}})),
        201,
    )
    .await;
    keep(&made);
    let id = made["id"].as_str().unwrap().to_owned();
    let key_path = format!("/api/v1/keys/{id}");
    assert_eq!(
        one(&records, &actor, "create", "key", &id),
        json!({
            "owner": {"from": null, "to": "svc-a"},
            "scopes": {"from": null, "to": ["stt"]},
            "rateLimit": {"from": null, "to": {"requests": 60, "window": 60}},
            "expiresAt": {"from": null, "to": expires},
            "credits": {"from": null, "to": {"remaining": 100, "refill": {"amount": 100, "every": 86400}}},
        })
    );

    // Each field group of an update, then two at once: one record each,
    // with only what changed.
    let later = expires + 86_400;
    for (body, changes) in [
        (
            json!({"scopes": ["stt", "tts"]}),
            json!({"scopes": {"from": ["stt"], "to": ["stt", "tts"]}}),
        ),
        (
            json!({"rateLimit": {"requests": 10, "window": 1}}),
            json!({"rateLimit": {"from": {"requests": 60, "window": 60}, "to": {"requests": 10, "window": 1}}}),
        ),
        (
            json!({"expiresAt": later}),
            json!({"expiresAt": {"from": expires, "to": later}}),
        ),
        (
            json!({"credits": {"remaining": 5}}),
            json!({"credits": {
                "from": {"remaining": 100, "refill": {"amount": 100, "every": 86400}},
                "to": {"remaining": 5, "refill": null}}}),
        ),
        (
            json!({"credits": null, "rateLimit": null, "scopes": ["stt", "tts"]}),
            json!({
                "credits": {"from": {"remaining": 5, "refill": null}, "to": null},
                "rateLimit": {"from": {"requests": 10, "window": 1}, "to": null},
            }),
        ),
    ] {
        let (_, records) = recorded(&s, "PATCH", &key_path, Some(body.clone()), 200).await;
        assert_eq!(
            one(&records, &actor, "update", "key", &id),
            changes,
            "{body}"
        );
    }

    // Disabled, then rotated: the rotation's record on the old key, and the
    // new key's creation.
    let (view, records) = recorded(&s, "POST", &format!("{key_path}/disable"), None, 200).await;
    assert_eq!(
        one(&records, &actor, "disable", "key", &id),
        json!({"disabledAt": {"from": null, "to": view["disabledAt"]}})
    );
    let (rotated, records) = recorded(
        &s,
        "POST",
        &format!("{key_path}/rotate"),
        Some(json!({"overlap": 60})),
        201,
    )
    .await;
    keep(&rotated);
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let (_, old) = s.call("GET", &key_path, None).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        record_is(&records[0], &actor, "rotate", "key", &id),
        json!({
            "expiresAt": {"from": later, "to": old["expiresAt"]},
            "replacedBy": {"from": null, "to": new_id},
        })
    );
    assert_eq!(
        record_is(&records[1], &actor, "create", "key", &new_id),
        json!({
            "owner": {"from": null, "to": "svc-a"},
            "scopes": {"from": null, "to": ["stt", "tts"]},
            "expiresAt": {"from": null, "to": later},
            "replaces": {"from": null, "to": id},
        })
    );
    assert_eq!(records[1]["seq"], records[0]["seq"].as_u64().unwrap() + 1);
    let (_, records) = recorded(&s, "DELETE", &format!("/api/v1/keys/{new_id}"), None, 204).await;
    assert_eq!(
        one(&records, &actor, "delete", "key", &new_id),
        json!({
            "owner": {"from": "svc-a", "to": null},
            "scopes": {"from": ["stt", "tts"], "to": null},
            "expiresAt": {"from": later, "to": null},
        })
    );

    // A service credential: each of its writes.
    let (made, records) = recorded(
        &s,
        "POST",
        "/api/v1/services",
        Some(json!({"name": "billing"})),
        201,
    )
    .await;
    keep(&made);
    let svc = made["id"].as_str().unwrap().to_owned();
    let svc_path = format!("/api/v1/services/{svc}");
    assert_eq!(
        one(&records, &actor, "create", "service", &svc),
        json!({"name": {"from": null, "to": "billing"}})
    );
    let (view, records) = recorded(&s, "POST", &format!("{svc_path}/disable"), None, 200).await;
    assert_eq!(
        one(&records, &actor, "disable", "service", &svc),
        json!({"disabledAt": {"from": null, "to": view["disabledAt"]}})
    );
    let (rotated, records) = recorded(
        &s,
        "POST",
        &format!("{svc_path}/rotate"),
        Some(json!({"overlap": 0})),
        201,
    )
    .await;
    keep(&rotated);
    let svc2 = rotated["id"].as_str().unwrap().to_owned();
    assert_eq!(records.len(), 2, "{records:?}");
    let changes = record_is(&records[0], &actor, "rotate", "service", &svc);
    assert_eq!(changes["replacedBy"]["to"], json!(svc2), "{changes}");
    assert!(changes["expiresAt"]["to"].is_u64(), "{changes}");
    let changes = record_is(&records[1], &actor, "create", "service", &svc2);
    assert_eq!(
        changes,
        json!({"name": {"from": null, "to": "billing"}, "replaces": {"from": null, "to": svc}})
    );
    let (_, records) = recorded(&s, "DELETE", &svc_path, None, 204).await;
    let changes = one(&records, &actor, "delete", "service", &svc);
    assert_eq!(changes["name"], json!({"from": "billing", "to": null}));

    // Refused (400) or not found (404): nothing written, nothing recorded.
    let before = trail(&s).await;
    let missing = "/api/v1/keys/key_0000000000000000";
    let missing_svc = "/api/v1/services/svc_0000000000000000";
    let refused: Vec<(&str, String, Option<Value>, u16)> = vec![
        (
            "POST",
            "/api/v1/keys".into(),
            Some(json!({"owner": ""})),
            400,
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            Some(json!({"owner": "a", "scopes": ["no spaces"]})),
            400,
        ),
        (
            "POST",
            "/api/v1/keys".into(),
            Some(json!({"owner": "a", "extra": 1})),
            400,
        ),
        (
            "PATCH",
            key_path.clone(),
            Some(json!({"rateLimit": {"requests": 0, "window": 60}})),
            400,
        ),
        (
            "PATCH",
            key_path.clone(),
            Some(json!({"expiresAt": 1})),
            400,
        ),
        (
            "PATCH",
            missing.into(),
            Some(json!({"scopes": ["stt"]})),
            404,
        ),
        ("POST", format!("{missing}/disable"), None, 404),
        (
            "POST",
            format!("{missing}/rotate"),
            Some(json!({"overlap": 60})),
            404,
        ),
        (
            "POST",
            format!("{key_path}/rotate"),
            Some(json!({"overlap": -1})),
            400,
        ),
        ("DELETE", missing.into(), None, 404),
        (
            "POST",
            "/api/v1/services".into(),
            Some(json!({"name": " "})),
            400,
        ),
        ("POST", format!("{missing_svc}/disable"), None, 404),
        (
            "POST",
            format!("{missing_svc}/rotate"),
            Some(json!({"overlap": 60})),
            404,
        ),
        ("DELETE", missing_svc.into(), None, 404),
        // A client key is not a service credential, nor the other way round.
        ("DELETE", format!("/api/v1/services/{id}"), None, 404),
        ("POST", format!("/api/v1/keys/{svc2}/disable"), None, 404),
    ];
    for (method, path, body, status) in refused {
        let (got, answer) = s.call(method, &path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
    }
    assert_eq!(trail(&s).await, before, "refused writes leave no record");

    // Append-only: no route changes the trail, and its database refuses to.
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let (got, _) = s.call(method, "/api/v1/audit", Some(json!({}))).await;
        assert_eq!(got, 405, "{method} /api/v1/audit");
    }
    for sql in [
        "UPDATE auth_audit SET actor = 'x'",
        "DELETE FROM auth_audit",
    ] {
        let refused = execute_raw(&s.store, sql).await.expect_err(sql);
        assert!(refused.to_string().contains("append-only"), "{refused}");
    }
    assert_eq!(trail(&s).await, before);

    // Reading: by key (a deleted one's too), since, limit; bad queries 400;
    // no admin key 401.
    let (_, mine) = s
        .call("GET", &format!("/api/v1/audit?key={id}"), None)
        .await;
    let actions: Vec<_> = mine["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rotate", "disable", "update", "update", "update", "update", "update", "create"
        ]
    );
    let (_, gone) = s
        .call("GET", &format!("/api/v1/audit?key={new_id}&since=1h"), None)
        .await;
    assert_eq!(gone["records"].as_array().unwrap().len(), 2, "{gone}");
    let (_, latest) = s.call("GET", "/api/v1/audit?limit=1", None).await;
    assert_eq!(latest["records"], json!([before[0]]));
    let future = unix_now() + 3600;
    let (_, none) = s
        .call("GET", &format!("/api/v1/audit?since={future}"), None)
        .await;
    assert_eq!(none, json!({"records": []}));
    let (_, from_start) = s
        .call("GET", "/api/v1/audit?since=0&limit=1000", None)
        .await;
    assert_eq!(from_start["records"].as_array().unwrap(), &before);
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "since=soon",
        "since=-1",
        "key=a&owner=b",
        // A key pasted where its id goes: refused, never looked up.
        "key=sk_live_0123456789abcdefghijABCDEFGHIJ",
        "key=KEY_00",
    ] {
        let (got, answer) = s.call("GET", &format!("/api/v1/audit?{query}"), None).await;
        assert_eq!(got, 400, "{query}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{query}: {answer}");
    }
    let anonymous = reqwest::get(format!("http://{}/api/v1/audit", s.api))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Seq: unique and increasing, newest first, from 1.
    let seqs: Vec<u64> = before.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).rev().collect();
    assert_eq!(seqs, expected);

    // No key, digest or admin key in any record or answer.
    let text = serde_json::to_string(&before).unwrap();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret in the trail");
    }
}

/// The CLI on `dir`'s SQLite database with these environment variables
/// (`None`: removed): its stdout.
fn cli(dir: &Path, env: &[(&str, Option<&str>)], args: &[&str]) -> String {
    common::process::cli_on(dir, None, env, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_are_recorded_as_the_os_user() {
    let dir = tempfile::tempdir().unwrap();
    // The user name as the shell gave it, escapes and all: recorded
    // without them.
    let env = [("USER", Some("ops\u{1b}[31m\u{202e}")), ("LOGNAME", None)];
    let actor = "cli:ops[31m";
    let json = |out: String| -> Value { serde_json::from_str(&out).unwrap() };
    let made = json(cli(
        dir.path(),
        &env,
        &[
            "keys", "create", "--owner", "svc-a", "--scope", "stt", "--json",
        ],
    ));
    let id = made["id"].as_str().unwrap().to_owned();
    cli(dir.path(), &env, &["keys", "disable", &id]);
    let rotated = json(cli(
        dir.path(),
        &env,
        &["keys", "rotate", &id, "--overlap", "1h", "--json"],
    ));
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let svc = json(cli(
        dir.path(),
        &[("USER", None), ("LOGNAME", Some("deploy"))],
        &["services", "create", "--name", "billing", "--json"],
    ));
    let svc = svc["id"].as_str().unwrap().to_owned();
    let nobody = [("USER", None), ("LOGNAME", None)];
    cli(dir.path(), &nobody, &["services", "disable", &svc]);
    let svc2 = json(cli(
        dir.path(),
        &env,
        &["services", "rotate", &svc, "--overlap", "1m", "--json"],
    ));
    let svc2 = svc2["id"].as_str().unwrap().to_owned();
    // A write that finds nothing leaves nothing.
    let failed = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["keys", "disable", "key_0000000000000000"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!failed.status.success());

    let all = json(cli(dir.path(), &env, &["audit", "--json"]));
    let records = all["records"].as_array().unwrap();
    let seen: Vec<_> = records
        .iter()
        .rev()
        .map(|r| {
            (
                r["actor"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
                r["keyId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (actor, "create", "key", id.as_str()),
            (actor, "disable", "key", id.as_str()),
            (actor, "rotate", "key", id.as_str()),
            (actor, "create", "key", new_id.as_str()),
            ("cli:deploy", "create", "service", svc.as_str()),
            ("cli:unknown", "disable", "service", svc.as_str()),
            (actor, "rotate", "service", svc.as_str()),
            (actor, "create", "service", svc2.as_str()),
        ]
    );
    assert_eq!(
        records[records.len() - 1]["changes"],
        json!({"owner": {"from": null, "to": "svc-a"}, "scopes": {"from": null, "to": ["stt"]}})
    );
    for secret in [&made["key"], &rotated["key"]] {
        assert!(!all.to_string().contains(secret.as_str().unwrap()));
    }

    // The same records through the API of a server on the same file: one
    // definition of the JSON.
    let s = instance(dir.path(), None, auth_server::Options::default()).await;
    let (_, api) = s.call("GET", "/api/v1/audit", None).await;
    assert_eq!(api, all);

    // One key's records as a table: newest first, escaped for a terminal.
    let table = cli(dir.path(), &env, &["audit", "--key", &id, "--since", "1h"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("TIME (UTC)") && lines[0].contains("CHANGES"),
        "{table}"
    );
    assert!(
        lines[1].contains(" rotate ")
            && lines[1].contains(&format!("replacedBy: null → \"{new_id}\"")),
        "{table}"
    );
    assert!(
        lines[2].contains(" disable ") && lines[2].contains("disabledAt: null → "),
        "{table}"
    );
    assert!(
        lines[3].contains(" create ")
            && lines[3].contains(r#"owner: null → "svc-a"; scopes: null → ["stt"]"#),
        "{table}"
    );
    for line in &lines[1..] {
        assert!(line.contains(actor), "{line}");
    }
    for line in &lines {
        assert!(!line.chars().any(auth_sqlx::is_hidden), "{line:?}");
    }
    let limited = json(cli(dir.path(), &env, &["audit", "--limit", "1", "--json"]));
    assert_eq!(limited["records"], json!([records[0]]));
    for bad in [["audit", "--limit", "0"], ["audit", "--since", "soon"]] {
        let refused = Command::new(env!("CARGO_BIN_EXE_auth-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(bad)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{bad:?}");
    }
}

/// Two instances on one PostgreSQL database, written to at once: one trail,
/// every write in it once with its own instance's admin, seq unique and
/// without gaps in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_share_one_ordered_trail() {
    let url = postgres_schema("audit_fleet").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), auth_server::Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), auth_server::Options::default()).await;
    let (actor_a, actor_b) = (admin_actor(&a), admin_actor(&b));
    assert_ne!(actor_a, actor_b, "each instance its own admin key");

    const EACH: usize = 15;
    let writes = |s: &Instance, owner: &'static str| {
        let (api, admin) = (s.api, s.admin.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let call = |method: &str, path: String, body: Value| {
                http.request(method.parse().unwrap(), format!("http://{api}{path}"))
                    .header("x-api-key", &admin)
                    .json(&body)
                    .send()
            };
            let mut ids = Vec::new();
            for _ in 0..EACH {
                let made: Value = call("POST", "/api/v1/keys".into(), json!({"owner": owner}))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = made["id"].as_str().unwrap().to_owned();
                let patched = call(
                    "PATCH",
                    format!("/api/v1/keys/{id}"),
                    json!({"scopes": ["stt"]}),
                )
                .await
                .unwrap();
                assert_eq!(patched.status(), 200);
                ids.push(id);
            }
            ids
        })
    };
    let (ids_a, ids_b) = tokio::join!(writes(&a, "owner-a"), writes(&b, "owner-b"));
    let (ids_a, ids_b) = (ids_a.unwrap(), ids_b.unwrap());

    // Both instances read the same trail.
    let all = trail(&a).await;
    assert_eq!(all, trail(&b).await);
    assert_eq!(all.len(), 4 * EACH);
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=4 * EACH as u64).rev().collect::<Vec<_>>());
    for (ids, actor, owner) in [(&ids_a, &actor_a, "owner-a"), (&ids_b, &actor_b, "owner-b")] {
        for id in ids {
            let mine: Vec<_> = all.iter().filter(|r| r["keyId"] == json!(id)).collect();
            assert_eq!(mine.len(), 2, "{id}: {mine:?}");
            assert_eq!(mine[0]["action"], "update");
            assert_eq!(mine[1]["action"], "create");
            assert_eq!(mine[1]["changes"]["owner"]["to"], owner);
            for r in mine {
                assert_eq!(r["actor"], json!(actor));
            }
        }
    }
    // Interleaved: neither instance wrote all of its records first.
    let firsts: Vec<_> = all
        .iter()
        .rev()
        .take(2 * EACH)
        .map(|r| r["actor"].clone())
        .collect();
    assert!(
        firsts.contains(&json!(actor_a)) && firsts.contains(&json!(actor_b)),
        "{firsts:?}"
    );

    // The database refuses to change the trail here too.
    for sql in [
        "UPDATE auth_audit SET actor = 'x'",
        "DELETE FROM auth_audit",
        "TRUNCATE auth_audit",
    ] {
        let refused = execute_raw(&a.store, sql).await.expect_err(sql);
        assert!(refused.to_string().contains("append-only"), "{refused}");
    }
    assert_eq!(trail(&b).await, all);
}
