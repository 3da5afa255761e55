//! Each framework's in-process pipeline with a prebuilt request (no
//! sockets): no auth, our adapter with StaticKey / KeySet of 1,000,000 keys /
//! Cached over HashedKeyStore, and the ecosystem's own bearer check; a good
//! and a bad key; and a layer that decides nothing but hands a value to the
//! handler (what the framework charges any such layer). Results:
//! docs/PERFORMANCE.md.
#![allow(missing_docs, unused_crate_dependencies)]

use std::sync::Arc;

#[path = "../apps.rs"]
mod apps;
use apps::{Pipeline, Setup};

use auth_benches::key;
use auth_core::{
    CacheConfig, Cached, Digest, Guard, HashedKeyStore, KeyRecord, KeySet, MemoryKeyStore,
    Principal, StaticKey,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const MILLION: u64 = 1_000_000;

/// The guards under test, built once; `None` is "no auth".
struct Setups {
    static_key: Guard,
    key_set: Guard,
    cached_store: Guard,
}

fn setups(good: &str) -> Setups {
    let static_key = Guard::builder(StaticKey::new(good).unwrap().principal_id("p"))
        .build()
        .unwrap();
    let mut set = KeySet::with_capacity(MILLION as usize);
    set.insert_digest(Digest::of(good.as_bytes()), Principal::new("p"))
        .unwrap();
    for i in 1..MILLION {
        set.insert_digest(Digest::of(key(i).as_bytes()), Principal::new("p"))
            .unwrap();
    }
    let key_set = Guard::builder(set).build().unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k0", Digest::of(good.as_bytes()), "p"));
    let cached = Cached::new(HashedKeyStore::new(store), CacheConfig::default());
    let cached_store = Guard::builder(cached).build().unwrap();
    Setups {
        static_key,
        key_set,
        cached_store,
    }
}

/// Requests are made and run in batches of this many: few enough that a
/// batch stays in cache, as a request a server just parsed does (criterion's
/// `SmallInput` prebuilt batches of ~100,000, tens of megabytes, so every
/// case timed cache misses on its request).
const BATCH: BatchSize = BatchSize::NumIterations(64);

const CASES: [&str; 6] = [
    "a none",
    "b StaticKey",
    "c KeySet 1M",
    "d Cached<HashedKeyStore>",
    "e ecosystem",
    "f layer handing a value on",
];

fn setup_for<'a>(s: &'a Setups, case: &str, good: &'a str) -> Setup<'a> {
    match case {
        "b StaticKey" => Setup::Ours(&s.static_key),
        "c KeySet 1M" => Setup::Ours(&s.key_set),
        "d Cached<HashedKeyStore>" => Setup::Ours(&s.cached_store),
        "e ecosystem" => Setup::Ecosystem(good),
        "f layer handing a value on" => Setup::Passthrough,
        _ => Setup::Open,
    }
}

/// Times `pipeline` with a good key (must pass) and, where something checks,
/// a bad one (must be refused).
fn run<R: 'static>(
    c: &mut Criterion,
    framework: &str,
    case: &str,
    mut pipeline: Pipeline<R>,
    good: &str,
    bad: &str,
) {
    let mut keys = vec![("good", good, true)];
    if !matches!(case, "a none" | "f layer handing a value on") {
        keys.push(("bad", bad, false));
    }
    for (label, key, expect_ok) in keys {
        let value = apps::bearer(key);
        let request = pipeline.request;
        c.bench_function(&format!("{framework}/{case}/{label} key"), |b| {
            b.iter_batched(
                || request(&value),
                |req| assert_eq!((pipeline.call)(req), expect_ok),
                BATCH,
            )
        });
    }
}

fn frameworks(c: &mut Criterion) {
    let good = key(0);
    let bad = key(u64::MAX - 1);
    let s = setups(&good);
    for case in CASES {
        run(
            c,
            "axum",
            case,
            apps::axum(setup_for(&s, case, &good)),
            &good,
            &bad,
        );
    }
    for case in CASES {
        run(
            c,
            "actix",
            case,
            apps::actix(setup_for(&s, case, &good)),
            &good,
            &bad,
        );
    }
    for case in CASES {
        run(
            c,
            "warp",
            case,
            apps::warp(setup_for(&s, case, &good)),
            &good,
            &bad,
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = frameworks
}
criterion_main!(benches);
