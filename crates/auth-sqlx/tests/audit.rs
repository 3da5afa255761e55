//! The audit trail (issue 17, item 1) in the store, on a temporary SQLite
//! file and on the local PostgreSQL: each write leaves exactly one record
//! (a rotation: one on each key) in its own transaction, with its actor and
//! the fields before and after; a write that finds nothing or is refused
//! leaves none; nothing can change or remove a record.
#![allow(unused_crate_dependencies)]

mod common;
use common::{postgres, sqlite};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::RateLimitPolicy;
use auth_sqlx::testing::execute_raw;
use auth_sqlx::{
    Actor, AuditFilter, AuditRecord, Backend, Credits, Error, KeyUpdate, NewKey, Refill,
    SqlKeyStore,
};
use serde_json::{Value, json};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Every record, newest first.
async fn trail(store: &SqlKeyStore) -> Vec<AuditRecord> {
    store
        .audit(AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

/// The records written since the trail had `before` records, oldest first.
async fn new_records(store: &SqlKeyStore, before: usize) -> Vec<AuditRecord> {
    let all = trail(store).await;
    let mut new: Vec<_> = all[..all.len() - before].to_vec();
    new.reverse();
    new
}

/// A record's changes as JSON.
fn changes(r: &AuditRecord) -> Value {
    r.changes_json()
}

/// One record: who, what, which.
fn assert_record(r: &AuditRecord, actor: &str, action: &str, resource: &str, id: &str) {
    assert_eq!(
        (
            r.actor.as_str(),
            r.action.as_str(),
            r.resource.as_str(),
            r.key_id.as_str()
        ),
        (actor, action, resource, id),
        "{r:?}"
    );
    assert_eq!(r.source, None);
}

async fn every_write_leaves_one_record(store: SqlKeyStore) {
    let ops = store.acting(Actor::Cli { user: "ops".into() });
    let actor = "cli:ops";
    let expires = SystemTime::now() + Duration::from_secs(30 * 86_400);
    let created = ops
        .create(NewKey {
            owner: "svc-a".into(),
            scopes: vec!["stt".into()],
            rate_limit: Some(RateLimitPolicy::new(60, Duration::from_secs(60))),
            expires_at: Some(expires),
            credits: Some(Credits {
                remaining: 100,
                refill: Some(Refill {
                    amount: 100,
                    every: Duration::from_secs(86_400),
                }),
            }),
        })
        .await
        .unwrap();
    let id = created.info.id.clone();
    let all = trail(&store).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_record(&all[0], actor, "create", "key", &id);
    assert_eq!(
        changes(&all[0]),
        json!({
            "owner": {"from": null, "to": "svc-a"},
            "scopes": {"from": null, "to": ["stt"]},
            "rateLimit": {"from": null, "to": {"requests": 60, "window": 60}},
            "expiresAt": {"from": null, "to": unix(expires)},
            "credits": {"from": null, "to": {"remaining": 100, "refill": {"amount": 100, "every": 86400}}},
        })
    );
    let at = all[0].at;
    assert!(
        SystemTime::now().duration_since(at).unwrap() < Duration::from_secs(60),
        "{at:?}"
    );

    // Each field group of an update: one record with that field only.
    let later = expires + Duration::from_secs(86_400);
    let updates: Vec<(KeyUpdate, Value)> = vec![
        (
            KeyUpdate {
                scopes: Some(vec!["stt".into(), "tts".into()]),
                ..KeyUpdate::default()
            },
            json!({"scopes": {"from": ["stt"], "to": ["stt", "tts"]}}),
        ),
        (
            KeyUpdate {
                rate_limit: Some(None),
                ..KeyUpdate::default()
            },
            json!({"rateLimit": {"from": {"requests": 60, "window": 60}, "to": null}}),
        ),
        (
            KeyUpdate {
                expires_at: Some(Some(later)),
                ..KeyUpdate::default()
            },
            json!({"expiresAt": {"from": unix(expires), "to": unix(later)}}),
        ),
        (
            KeyUpdate {
                credits: Some(Some(Credits {
                    remaining: 5,
                    refill: None,
                })),
                ..KeyUpdate::default()
            },
            json!({"credits": {
                "from": {"remaining": 100, "refill": {"amount": 100, "every": 86400}},
                "to": {"remaining": 5, "refill": null}}}),
        ),
    ];
    for (update, expected) in updates {
        let before = trail(&store).await.len();
        assert!(ops.update(&id, update).await.unwrap());
        let new = new_records(&store, before).await;
        assert_eq!(new.len(), 1, "{new:?}");
        assert_record(&new[0], actor, "update", "key", &id);
        assert_eq!(changes(&new[0]), expected);
    }

    // Nothing written, nothing recorded: no such key, refused input, an
    // update with nothing in it.
    let before = trail(&store).await.len();
    assert!(!ops.disable("key_0000000000000000").await.unwrap());
    assert!(!ops.delete("key_0000000000000000").await.unwrap());
    assert!(!ops.set_scopes("key_0000000000000000", &[]).await.unwrap());
    assert!(
        ops.rotate("key_0000000000000000", Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        ops.set_scopes(&id, &["bad scope".into()]).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ops.create(NewKey {
            owner: " ".into(),
            ..NewKey::default()
        })
        .await,
        Err(Error::Invalid(_))
    ));
    assert!(ops.update(&id, KeyUpdate::default()).await.unwrap());
    assert_eq!(trail(&store).await.len(), before, "no record");

    // Disabled: the time it was.
    let before = trail(&store).await.len();
    assert!(ops.disable(&id).await.unwrap());
    let disabled_at = unix(store.get(&id).await.unwrap().unwrap().disabled_at.unwrap());
    let new = new_records(&store, before).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_record(&new[0], actor, "disable", "key", &id);
    assert_eq!(
        changes(&new[0]),
        json!({"disabledAt": {"from": null, "to": disabled_at}})
    );

    // Rotated: one record on the old key, one (its creation) on the new.
    let second = store
        .create(NewKey {
            owner: "svc-b".into(),
            credits: Some(Credits {
                remaining: 7,
                refill: None,
            }),
            ..NewKey::default()
        })
        .await
        .unwrap();
    let old = second.info.id.clone();
    let made = trail(&store).await;
    assert_record(&made[0], "library", "create", "key", &old);
    let before = made.len();
    let rotated = ops
        .rotate(&old, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    let new_id = rotated.info.id.clone();
    let ends = unix(store.get(&old).await.unwrap().unwrap().expires_at.unwrap());
    let new = new_records(&store, before).await;
    assert_eq!(new.len(), 2, "{new:?}");
    assert_record(&new[0], actor, "rotate", "key", &old);
    assert_eq!(
        changes(&new[0]),
        json!({
            "expiresAt": {"from": null, "to": ends},
            "credits": {"from": {"remaining": 7, "refill": null}, "to": {"remaining": 0, "refill": null}},
            "replacedBy": {"from": null, "to": new_id},
        })
    );
    assert_record(&new[1], actor, "create", "key", &new_id);
    assert_eq!(
        changes(&new[1]),
        json!({
            "owner": {"from": null, "to": "svc-b"},
            "scopes": {"from": null, "to": []},
            "credits": {"from": null, "to": {"remaining": 7, "refill": null}},
            "replaces": {"from": null, "to": old},
        })
    );
    assert_eq!(new[1].seq, new[0].seq + 1, "one transaction, in order");

    // Deleted: from its values to nothing.
    let before = trail(&store).await.len();
    assert!(ops.delete(&new_id).await.unwrap());
    let new = new_records(&store, before).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_record(&new[0], actor, "delete", "key", &new_id);
    assert_eq!(
        changes(&new[0]),
        json!({
            "owner": {"from": "svc-b", "to": null},
            "scopes": {"from": [], "to": null},
            "credits": {"from": {"remaining": 7, "refill": null}, "to": null},
        })
    );

    // Service credentials, as a service would write them.
    let services = store.services().acting(Actor::Service {
        id: "svc_00000000000000aa".into(),
    });
    let actor = "service:svc_00000000000000aa";
    let before = trail(&store).await.len();
    let svc = services.create("billing").await.unwrap().info.id;
    assert!(services.disable(&svc).await.unwrap());
    let svc2 = services
        .rotate(&svc, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap()
        .info
        .id;
    assert!(services.delete(&svc).await.unwrap());
    assert!(!services.delete(&svc).await.unwrap(), "gone: no record");
    let new = new_records(&store, before).await;
    let kinds: Vec<_> = new
        .iter()
        .map(|r| (r.action.as_str(), r.key_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("create", svc.as_str()),
            ("disable", svc.as_str()),
            ("rotate", svc.as_str()),
            ("create", svc2.as_str()),
            ("delete", svc.as_str()),
        ]
    );
    for r in &new {
        assert_eq!((r.actor.as_str(), r.resource.as_str()), (actor, "service"));
    }
    assert_eq!(
        changes(&new[0]),
        json!({"name": {"from": null, "to": "billing"}})
    );
    assert_eq!(changes(&new[3])["replaces"]["to"], json!(svc));
    assert_eq!(changes(&new[3])["name"]["to"], "billing");

    // Reading: newest first, unique increasing seq; by key; since; limit.
    let all = trail(&store).await;
    for pair in all.windows(2) {
        assert!(pair[0].seq > pair[1].seq, "{pair:?}");
    }
    assert_eq!(all.last().unwrap().seq, 1);
    let mine = store
        .audit(AuditFilter {
            key_id: Some(&id),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = mine.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["disable", "update", "update", "update", "update", "create"]
    );
    let two = store
        .audit(AuditFilter {
            limit: 2,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(two, all[..2].to_vec());
    let future = store
        .audit(AuditFilter {
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(future.is_empty());
    let since = store
        .audit(AuditFilter {
            since: Some(at),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), all.len());
    for limit in [0, 1001] {
        let refused = store
            .audit(AuditFilter {
                limit,
                ..AuditFilter::default()
            })
            .await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{limit}");
    }

    // No key, digest or prefix anywhere in the trail.
    let text = format!("{all:?}");
    for secret in [&created.key, &second.key, &rotated.key] {
        assert!(!text.contains(secret.expose()));
        assert!(!text.contains(&secret.digest().to_hex()));
        assert!(!text.contains(&secret.display_prefix()));
    }
}

#[tokio::test]
async fn every_write_leaves_one_record_on_sqlite() {
    let (store, _dir) = sqlite().await;
    every_write_leaves_one_record(store).await;
}

#[tokio::test]
async fn every_write_leaves_one_record_on_postgres() {
    every_write_leaves_one_record(postgres("audit_writes").await).await;
}

/// A key for `svc-a` with no settings: its id.
async fn plain_key(store: &SqlKeyStore) -> String {
    store
        .create(NewKey {
            owner: "svc-a".into(),
            ..NewKey::default()
        })
        .await
        .unwrap()
        .info
        .id
}

/// Neither an UPDATE nor a DELETE (nor, on PostgreSQL, a TRUNCATE) of the
/// trail is possible, even as raw SQL; migrating again keeps it so.
async fn the_trail_is_append_only(store: SqlKeyStore) {
    let id = plain_key(&store).await;
    assert!(store.disable(&id).await.unwrap());
    let before = trail(&store).await;
    assert_eq!(before.len(), 2);
    let mut statements = vec![
        "UPDATE auth_audit SET actor = 'someone else'",
        "UPDATE auth_audit SET changes = '{}' WHERE seq = 1",
        "DELETE FROM auth_audit WHERE seq = 2",
        "DELETE FROM auth_audit",
    ];
    if store.backend() == Backend::Postgres {
        statements.push("TRUNCATE auth_audit");
    } else {
        // A replace deletes without firing delete triggers.
        statements.push(
            "INSERT OR REPLACE INTO auth_audit (seq, at, actor, action, resource, key_id, changes) \
             VALUES (1, 0, 'forged', 'create', 'key', 'k', '{}')",
        );
        statements.push(
            "REPLACE INTO auth_audit (seq, at, actor, action, resource, key_id, changes) \
             VALUES (2, 0, 'forged', 'create', 'key', 'k', '{}')",
        );
        statements.push(
            "INSERT INTO auth_audit (seq, at, actor, action, resource, key_id, changes) \
             VALUES (NULL, 0, 'forged', 'create', 'key', 'k', '{}')",
        );
    }
    for _ in 0..2 {
        for sql in &statements {
            let refused = execute_raw(&store, sql).await;
            let message = refused.expect_err(sql).to_string();
            assert!(message.contains("append-only"), "{sql}: {message}");
        }
        assert_eq!(trail(&store).await, before);
        // Idempotent, and still protected after.
        store.migrate().await.unwrap();
    }
    // Writes go on being recorded.
    assert!(store.delete(&id).await.unwrap());
    assert_eq!(trail(&store).await.len(), 3);
}

#[tokio::test]
async fn the_trail_is_append_only_on_sqlite() {
    let (store, _dir) = sqlite().await;
    the_trail_is_append_only(store).await;
}

#[tokio::test]
async fn the_trail_is_append_only_on_postgres() {
    the_trail_is_append_only(postgres("audit_append_only").await).await;
}

/// The record is part of the write: when it cannot be written, nothing is.
#[tokio::test]
async fn a_write_whose_record_fails_is_not_made() {
    let (store, _dir) = sqlite().await;
    let id = plain_key(&store).await;
    execute_raw(
        &store,
        "CREATE TRIGGER no_records BEFORE INSERT ON auth_audit \
         BEGIN SELECT RAISE(ABORT, 'no more records'); END",
    )
    .await
    .unwrap();
    assert!(store.disable(&id).await.is_err());
    assert!(store.set_scopes(&id, &["stt".into()]).await.is_err());
    assert!(store.rotate(&id, Duration::ZERO).await.is_err());
    assert!(store.delete(&id).await.is_err());
    let refused = store
        .create(NewKey {
            owner: "svc-b".into(),
            ..NewKey::default()
        })
        .await;
    assert!(refused.is_err());
    assert!(store.services().create("billing").await.is_err());
    let keys = store.list().await.unwrap();
    assert_eq!(keys.len(), 1, "no key made: {keys:?}");
    assert_eq!(keys[0].disabled_at, None);
    assert!(keys[0].scopes.is_empty() && keys[0].expires_at.is_none());
    assert!(store.services().list().await.unwrap().is_empty());
    assert_eq!(trail(&store).await.len(), 1);

    execute_raw(&store, "DROP TRIGGER no_records")
        .await
        .unwrap();
    assert!(store.disable(&id).await.unwrap());
    assert_eq!(trail(&store).await.len(), 2);
}

/// Credits set to the values they have still start a new refill period
/// (and void open leases): recorded, from and to alike, never as `{}`.
#[tokio::test]
async fn credits_set_to_the_same_values_are_recorded() {
    let (store, _dir) = sqlite().await;
    let credits = Credits {
        remaining: 100,
        refill: Some(Refill {
            amount: 100,
            every: Duration::from_secs(86_400),
        }),
    };
    let id = store
        .create(NewKey {
            owner: "svc-a".into(),
            credits: Some(credits),
            ..NewKey::default()
        })
        .await
        .unwrap()
        .info
        .id;
    let same = KeyUpdate {
        credits: Some(Some(credits)),
        ..KeyUpdate::default()
    };
    assert!(store.update(&id, same).await.unwrap());
    let newest = trail(&store).await.remove(0);
    let shown = json!({"remaining": 100, "refill": {"amount": 100, "every": 86_400}});
    assert_eq!(
        changes(&newest),
        json!({"credits": {"from": shown, "to": shown}})
    );
    // Other fields set to what they are: still `{}`.
    let scopes = KeyUpdate {
        scopes: Some(Vec::new()),
        ..KeyUpdate::default()
    };
    assert!(store.update(&id, scopes).await.unwrap());
    assert_eq!(changes(&trail(&store).await.remove(0)), json!({}));
}

/// Disabling a key already disabled changes nothing: it still exists
/// (`true`), keeps its first disable time, and leaves no second record, no
/// change-log entry — a client key and a service credential alike.
async fn a_second_disable_leaves_no_record(store: SqlKeyStore) {
    let id = plain_key(&store).await;
    let svc = store.services().create("svc-b").await.unwrap().info.id;
    let before = trail(&store).await.len();
    assert!(store.disable(&id).await.unwrap());
    assert!(store.services().disable(&svc).await.unwrap());
    let first = store.get(&id).await.unwrap().unwrap().disabled_at;
    let seq = store.latest_seq().await.unwrap();
    assert!(store.disable(&id).await.unwrap());
    assert!(store.services().disable(&svc).await.unwrap());
    assert_eq!(store.get(&id).await.unwrap().unwrap().disabled_at, first);
    assert_eq!(store.latest_seq().await.unwrap(), seq, "no change logged");
    let new = new_records(&store, before).await;
    let actions: Vec<_> = new
        .iter()
        .map(|r| (r.action.as_str(), r.key_id.as_str()))
        .collect();
    assert_eq!(
        actions,
        [("disable", id.as_str()), ("disable", svc.as_str())],
        "{new:?}"
    );
}

#[tokio::test]
async fn a_second_disable_leaves_no_record_on_sqlite() {
    let (store, _dir) = sqlite().await;
    a_second_disable_leaves_no_record(store).await;
}

#[tokio::test]
async fn a_second_disable_leaves_no_record_on_postgres() {
    a_second_disable_leaves_no_record(postgres("audit_second_disable").await).await;
}
