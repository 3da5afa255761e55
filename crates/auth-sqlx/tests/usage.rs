//! Usage counts on a temporary SQLite file and on the local PostgreSQL
//! (`AUTH_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! each test in a schema of its own).
#![allow(unused_crate_dependencies)]

mod common;
use common::{on_both_backends, postgres, sqlite};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use auth_core::protocol::{Code, UsageCounts};
use auth_sqlx::{MAX_PENDING_USAGE, NewKey, SqlKeyStore, UsageBucket, hour_of};

/// A key for `owner`: its id and digest.
async fn key(store: &SqlKeyStore, owner: &str) -> (String, Digest) {
    let created = store
        .create(NewKey {
            owner: owner.into(),
            ..NewKey::default()
        })
        .await
        .unwrap();
    (created.info.id, Digest::of(created.key.expose().as_bytes()))
}

fn counts(pairs: &[(Code, i64)]) -> UsageCounts {
    let mut c = UsageCounts::default();
    for (code, n) in pairs {
        c.add(*code, *n);
    }
    c
}

fn bucket(hour: i64, pairs: &[(Code, i64)]) -> UsageBucket {
    UsageBucket {
        hour: u64::try_from(hour).unwrap(),
        counts: counts(pairs),
    }
}

/// Counts add up per key, hour and code, from decisions and reports alike;
/// moves out of `valid` read as at least 0 whatever their order; digests
/// of no key are dropped; reads see this process's counts at once.
async fn counts_add_up(store: SqlKeyStore) {
    let (a, da) = key(&store, "owner-a").await;
    let (b, db) = key(&store, "owner-b").await;
    let now = SystemTime::now();
    let h = hour_of(now);
    let earlier = now - Duration::from_secs(3600);
    for _ in 0..5 {
        assert!(store.count_usage(&da, now, Code::Valid));
    }
    store.count_usage(&da, now, Code::Disabled);
    store.count_usage(&da, now, Code::Disabled);
    store.count_usage(&da, now, Code::Invalid);
    store.count_usage(&db, earlier, Code::Expired);
    // A service's report: one of A's grants refused by its guard.
    store.add_usage(&[(da, h, counts(&[(Code::Valid, -1), (Code::RateLimited, 1)]))]);
    // No key has this digest: dropped when written.
    store.add_usage(&[(Digest::of(b"nobody"), h, counts(&[(Code::Valid, 9)]))]);
    assert_eq!(store.pending_usage(), 4, "own 2, reported 2");

    // Read at once: the read writes what is pending first.
    let since = now - Duration::from_secs(2 * 3600);
    let usage = store.key_usage(&a, since).await.unwrap().unwrap();
    assert_eq!(
        (usage.id.as_str(), usage.owner.as_str()),
        (a.as_str(), "owner-a")
    );
    let want = bucket(
        h,
        &[
            (Code::Valid, 4),
            (Code::Disabled, 2),
            (Code::RateLimited, 1),
        ],
    );
    assert_eq!(usage.buckets, vec![want.clone()]);
    assert_eq!(usage.buckets[0].total(), 7);
    assert_eq!(store.pending_usage(), 0);

    // A move that arrives before the grant it moves: 0, then exact.
    store.add_usage(&[(
        db,
        h,
        counts(&[(Code::Valid, -1), (Code::InsufficientScope, 1)]),
    )]);
    store.flush_usage().await.unwrap();
    let b_usage = store.key_usage(&b, since).await.unwrap().unwrap();
    assert_eq!(
        b_usage.buckets,
        vec![
            bucket(hour_of(earlier), &[(Code::Expired, 1)]),
            bucket(h, &[(Code::InsufficientScope, 1)]),
        ]
    );
    store.count_usage(&db, now, Code::Valid);
    store.count_usage(&db, now, Code::Valid);
    let b_usage = store.key_usage(&b, since).await.unwrap().unwrap();
    assert_eq!(
        b_usage.buckets[1],
        bucket(h, &[(Code::Valid, 1), (Code::InsufficientScope, 1)])
    );

    // By owner, and all keys; `since` cuts whole hours.
    let owned = store.usage(Some("owner-a"), since).await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].buckets, vec![want]);
    let all = store.usage(None, since).await.unwrap();
    assert_eq!(
        all.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        [a.as_str(), b.as_str()]
    );
    let recent = store.usage(None, now).await.unwrap();
    assert_eq!(
        recent[1].buckets.len(),
        1,
        "the earlier hour is before `since`"
    );
    assert!(store.usage(Some("nobody"), since).await.unwrap().is_empty());
    assert!(
        store
            .key_usage("key_unknown", since)
            .await
            .unwrap()
            .is_none()
    );

    // Counts stay after the key is deleted (history), out of the listings.
    assert!(store.delete(&b).await.unwrap());
    assert_eq!(store.usage(None, since).await.unwrap().len(), 1);

    // Pruned by age.
    let later = now + auth_sqlx::USAGE_KEEPS + Duration::from_secs(2 * 3600);
    assert!(store.prune_usage(later).await.unwrap() >= 4);
    assert!(store.usage(None, UNIX_EPOCH).await.unwrap().is_empty());
}

#[tokio::test]
async fn counts_add_up_on_sqlite() {
    let (store, _dir) = sqlite().await;
    counts_add_up(store).await;
}

#[tokio::test]
async fn counts_add_up_on_postgres() {
    counts_add_up(postgres("usage").await).await;
}

/// Two instances' counts add up in one database; a flush of more rows than
/// one statement takes writes them all.
async fn instances_add_up(a: SqlKeyStore, b: SqlKeyStore) {
    let (id, d) = key(&a, "owner").await;
    let now = hour_of(SystemTime::now());
    // 1,200 hours: two statements' worth.
    for i in 0..1_200 {
        a.add_usage(&[(d, now - 3600 * i, counts(&[(Code::Valid, 2)]))]);
        b.add_usage(&[(
            d,
            now - 3600 * i,
            counts(&[(Code::Valid, 1), (Code::Expired, 1)]),
        )]);
    }
    assert_eq!(a.flush_usage().await.unwrap(), 1_200);
    assert_eq!(b.flush_usage().await.unwrap(), 1_200);
    let usage = a.key_usage(&id, UNIX_EPOCH).await.unwrap().unwrap();
    assert_eq!(usage.buckets.len(), 1_200);
    assert!(
        usage
            .buckets
            .iter()
            .all(|x| x.counts == counts(&[(Code::Valid, 3), (Code::Expired, 1)]))
    );
}

on_both_backends!(instances_add_up, "usage_two", two_instances);

/// Counts that could not be written wait for the next flush; the pending
/// counts are bounded, and say so when full; reports, however many, never
/// crowd out the service's own counts; a report is taken whole or not at
/// all.
#[tokio::test]
async fn unwritten_counts_wait_and_pending_counts_are_bounded() {
    let (store, _dir) = sqlite().await;
    let (_, d) = key(&store, "owner").await;
    store.count_usage(&d, SystemTime::now(), Code::Valid);
    store.close().await;
    assert!(store.flush_usage().await.is_err());
    assert_eq!(store.pending_usage(), 1, "kept for the next flush");

    let (store, _dir) = sqlite().await;
    let one = counts(&[(Code::Valid, 1)]);
    let report: Vec<_> = (0..MAX_PENDING_USAGE)
        .map(|i| (d, i64::try_from(i).unwrap() * 3600, one))
        .collect();
    assert!(store.add_usage(&report));
    let other = Digest::of(b"other");
    assert!(
        !store.add_usage(&[(d, 0, one), (other, 0, one)]),
        "full: not even the entry it has is taken"
    );
    assert_eq!(store.usage_dropped(), 2);
    assert!(store.add_usage(&[(d, 0, one), (other, 0, UsageCounts::default())]));
    // The service's own decisions have room of their own.
    assert!(store.count_usage(&other, SystemTime::now(), Code::Valid));
    assert_eq!(store.pending_usage(), MAX_PENDING_USAGE + 1);
}

/// A read's flush waits for one under way, and a flush whose caller goes
/// away still writes: nothing counted is lost to a client hanging up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cut_short_by_its_caller_still_writes() {
    let (store, _dir) = sqlite().await;
    let (id, d) = key(&store, "owner").await;
    let now = SystemTime::now();
    for round in 1..=20u64 {
        for _ in 0..10 {
            store.count_usage(&d, now, Code::Valid);
        }
        // The caller gives up at once: the write goes on.
        let flush = store.flush_usage();
        drop(tokio::time::timeout(std::time::Duration::ZERO, flush).await);
        let usage = store.key_usage(&id, now).await.unwrap().unwrap();
        assert_eq!(usage.buckets[0].total(), 10 * round, "round {round}");
    }
}
