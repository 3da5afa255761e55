//! Heap allocations per allowed request, counted (dhat's allocator), in each
//! framework: no auth, the ecosystem's own check, a layer that decides
//! nothing and only hands a value to the handler (what the framework forces:
//! the extensions' box in axum and actix-web, the header-map clone warp's
//! filters need), and our adapter, which must allocate nothing more — the
//! credential, the verification and the decision allocate nothing.
#![allow(missing_docs, unused_crate_dependencies)]

#[path = "../apps.rs"]
mod apps;

use std::sync::Arc;

use apps::{Pipeline, Setup};
use auth_core::{
    CacheConfig, Cached, Digest, Guard, HashedKeyStore, KeyRecord, KeySet, MemoryKeyStore,
    Principal, StaticKey,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ROUNDS: u64 = 200;

/// Allocations per request, after a warm-up (first requests fill caches,
/// per-thread copies and the frameworks' own lazy state).
fn per_request<R: 'static>(mut pipeline: Pipeline<R>) -> f64 {
    let value = apps::bearer(KEY);
    for _ in 0..50 {
        assert!(
            (pipeline.call)((pipeline.request)(&value)),
            "warm-up refused"
        );
    }
    let requests: Vec<R> = (0..ROUNDS).map(|_| (pipeline.request)(&value)).collect();
    let before = dhat::HeapStats::get().total_blocks;
    for req in requests {
        assert!((pipeline.call)(req));
    }
    let after = dhat::HeapStats::get().total_blocks;
    (after - before) as f64 / ROUNDS as f64
}

fn guards() -> Vec<(&'static str, Guard)> {
    let static_key = Guard::builder(StaticKey::new(KEY).unwrap())
        .build()
        .unwrap();
    let mut set = KeySet::new();
    set.insert_digest(Digest::of(KEY.as_bytes()), Principal::new("p"))
        .unwrap();
    for i in 0..1_000u32 {
        set.insert_digest(Digest::of(&i.to_le_bytes()), Principal::new("p"))
            .unwrap();
    }
    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k0", Digest::of(KEY.as_bytes()), "p"));
    let cached = Cached::new(HashedKeyStore::new(store), CacheConfig::default());
    vec![
        ("StaticKey", static_key),
        ("KeySet", Guard::builder(set).build().unwrap()),
        (
            "Cached<HashedKeyStore>",
            Guard::builder(cached).build().unwrap(),
        ),
    ]
}

/// Counts one framework and checks our extra allocations against `allowed`.
fn check<R: 'static>(framework: &str, make: impl Fn(Setup<'_>) -> Pipeline<R>) -> Vec<String> {
    let open = per_request(make(Setup::Open));
    let ecosystem = per_request(make(Setup::Ecosystem(KEY)));
    let forced = per_request(make(Setup::Passthrough));
    println!(
        "{framework}: no auth {open:.2}, a layer handing a value on {forced:.2}, \
         ecosystem {ecosystem:.2} allocations per request"
    );
    let mut failures = Vec::new();
    for (name, guard) in guards() {
        let ours = per_request(make(Setup::Ours(&guard)));
        let added = ours - forced;
        println!("{framework}: {name} {ours:.2} (+{added:.2})");
        if added > 0.0 {
            failures.push(format!(
                "{framework}/{name}: +{added:.2} allocations per request over a layer \
                 that only hands a value on"
            ));
        }
    }
    failures
}

#[test]
fn adapters_allocate_only_what_the_framework_forces() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut failures = Vec::new();
    failures.extend(check("axum", apps::axum));
    failures.extend(check("actix", apps::actix));
    failures.extend(check("warp", apps::warp));
    assert!(failures.is_empty(), "{failures:#?}");
}
