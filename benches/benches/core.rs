//! auth-core's verify paths against the floor of one SHA-256.
//! Results and targets: docs/PERFORMANCE.md.
#![allow(missing_docs, unused_crate_dependencies)]

use std::hint::black_box;
use std::sync::Arc;

use auth_benches::{XorShift, key, ready};
use auth_core::{
    Answer, CacheConfig, Cached, Credential, Digest, Guard, HashedKeyStore, KeyRecord, KeySet,
    MemoryKeyStore, PlainRequest, Principal, StaticKey, Verifier, VerifyContext,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const MILLION: u64 = 1_000_000;

fn key_set(n: u64) -> KeySet {
    let mut set = KeySet::with_capacity(n as usize);
    for i in 0..n {
        set.insert_digest(Digest::of(key(i).as_bytes()), Principal::new("p"))
            .unwrap();
    }
    set
}

/// Times what verification costs a request from the presented bytes: they
/// become a `Credential` the way extraction makes it (copied inline, hashed
/// once), the verifier answers the way the guard asks it (`verify`, awaited
/// only when it is pending), and the credential is dropped (zeroized). Only making
/// the bytes falls outside the timing.
fn bench_verify(
    c: &mut Criterion,
    name: &str,
    v: &dyn Verifier,
    mut next_key: impl FnMut() -> String,
) {
    let ctx = VerifyContext::default();
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || next_key().into_bytes(),
            |bytes| {
                let cred = Credential::from_slice(bytes);
                let r = match v.verify(&cred, &ctx) {
                    Answer::Ready(r) => r,
                    Answer::Pending(r) => ready(r),
                };
                r.is_ok()
            },
            BatchSize::SmallInput,
        )
    });
}

fn floor(c: &mut Criterion) {
    let k64 = key(7);
    let k32 = &k64[..32];
    c.bench_function("sha256/64B (floor)", |b| {
        b.iter(|| Digest::of(black_box(k64.as_bytes())))
    });
    c.bench_function("sha256/32B", |b| {
        b.iter(|| Digest::of(black_box(k32.as_bytes())))
    });
    c.bench_function("Credential::from_slice+drop (copy, hash, zeroize)", |b| {
        b.iter(|| drop(black_box(Credential::from_slice(black_box(k64.as_bytes())))))
    });
}

fn verifiers(c: &mut Criterion) {
    let k = key(0);
    let static_key = StaticKey::new(&k).unwrap();
    bench_verify(c, "verify/StaticKey", &static_key, || k.clone());

    let one = key_set(1);
    bench_verify(c, "verify/KeySet/1", &one, || k.clone());
    let thousand = key_set(1_000);
    bench_verify(c, "verify/KeySet/1000", &thousand, || k.clone());
    let million = key_set(MILLION);
    bench_verify(c, "verify/KeySet/1000000 same key", &million, || k.clone());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    bench_verify(
        c,
        "verify/KeySet/1000000 random keys",
        &million,
        move || key(rng.below(MILLION)),
    );
    drop(million);

    let cached = Cached::new(key_set(1), CacheConfig::default());
    ready(cached.verify(&Credential::new(k.clone()), &VerifyContext::default())).unwrap();
    bench_verify(c, "verify/Cached<KeySet> hit", &cached, || k.clone());

    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k0", Digest::of(k.as_bytes()), "p"));
    let hashed = HashedKeyStore::new(store.clone());
    bench_verify(c, "verify/HashedKeyStore<Memory>", &hashed, || k.clone());
    let cached_store = Cached::new(HashedKeyStore::new(store), CacheConfig::default());
    ready(cached_store.verify(&Credential::new(k.clone()), &VerifyContext::default())).unwrap();
    bench_verify(
        c,
        "verify/Cached<HashedKeyStore> hit (re-checked by id)",
        &cached_store,
        || k.clone(),
    );
}

/// `Cached` hits from several threads at once: wall time per hit per thread.
/// Perfect scaling keeps the time flat as threads are added; a lock convoy
/// makes it grow. (This machine has 2 cores: 4 and 8 threads oversubscribe.)
fn contention(c: &mut Criterion) {
    let keys: Vec<String> = (0..64).map(key).collect();
    let mut set = KeySet::with_capacity(keys.len());
    for k in &keys {
        set.insert_digest(Digest::of(k.as_bytes()), Principal::new("p"))
            .unwrap();
    }
    let cached = Cached::new(set, CacheConfig::default());
    let ctx = VerifyContext::default();
    // Credentials made once: the timing is the hit path itself.
    let creds: Vec<Credential> = keys.iter().map(|k| Credential::new(k.clone())).collect();
    for c0 in &creds {
        ready(cached.verify(c0, &ctx)).unwrap();
    }
    let static_key = StaticKey::new(&keys[0]).unwrap();
    for threads in [1usize, 2] {
        c.bench_function(&format!("contention/StaticKey, {threads} threads"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |_| static_key.verify(&creds[0], &ctx).now())
            })
        });
    }
    // The store's hit re-checks the live record: from per-thread notes while
    // the store is unwritten, so two threads should still not contend.
    let store = Arc::new(MemoryKeyStore::new());
    store.insert(KeyRecord::new("k0", Digest::of(keys[0].as_bytes()), "p"));
    let cached_store = Cached::new(HashedKeyStore::new(store), CacheConfig::default());
    ready(cached_store.verify(&creds[0], &ctx)).unwrap();
    for threads in [1usize, 2] {
        let name = format!("contention/Cached<HashedKeyStore> hit, {threads} threads");
        c.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |_| {
                    cached_store.verify(&creds[0], &ctx).now()
                })
            })
        });
    }
    for (label, spread) in [("same key", false), ("distinct keys", true)] {
        for threads in [1usize, 2, 4, 8] {
            let name = format!("contention/Cached hit, {threads} threads, {label}");
            c.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, |t| {
                        let cred = &creds[if spread { t * 7 % creds.len() } else { 0 }];
                        cached.verify(cred, &ctx).now()
                    })
                })
            });
        }
    }
}

/// Runs `work(thread index)` `iters` times on each of `threads` threads at
/// once; the wall time of the whole.
fn on_threads<T>(
    threads: usize,
    iters: u64,
    work: impl Fn(usize) -> T + Sync,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            s.spawn(move || {
                for _ in 0..iters {
                    black_box(work(t));
                }
            });
        }
    });
    start.elapsed()
}

/// The parts of a cache hit besides the hash.
fn parts(c: &mut Criterion) {
    use auth_core::cache::{Cache, CacheEntry, TtlCache};
    use auth_core::clock::{Clock, CoarseClock, SystemClock};
    c.bench_function("clock/SystemClock (Instant)", |b| {
        b.iter(|| SystemClock.now())
    });
    c.bench_function("clock/CoarseClock", |b| b.iter(|| CoarseClock.now()));
    let cache: TtlCache<Arc<Principal>> = TtlCache::new(CacheConfig::default());
    let d = Digest::of(key(0).as_bytes());
    cache.fill(
        cache.ticket(&d),
        CacheEntry::Granted(Arc::new(Principal::new("p"))),
    );
    c.bench_function("cache/TtlCache get (hit)", |b| {
        b.iter(|| cache.get(black_box(&d)))
    });
}

fn guard(c: &mut Criterion) {
    let k = key(0);
    let g = Guard::builder(StaticKey::new(&k).unwrap()).build().unwrap();
    let req = PlainRequest::get("/api/items").header("x-api-key", &k);
    c.bench_function("guard/check StaticKey (extract+verify+policy)", |b| {
        b.iter(|| black_box(g.check(black_box(&req)).now()))
    });
    let bad = PlainRequest::get("/api/items").header("x-api-key", key(1));
    c.bench_function("guard/check StaticKey wrong key", |b| {
        b.iter(|| black_box(g.check(black_box(&bad)).now()))
    });
}

/// A webhook delivery's signature and its check (issue 17), on a body the
/// size of a `key.disabled` event.
fn webhooks(c: &mut Criterion) {
    use auth_core::webhook::{WebhookHeaders, WebhookSecret};
    let secret = WebhookSecret::generate().unwrap();
    let body = br#"{"data":{"actor":"admin:1a2b3c4d","disabledAt":"2026-12-02T01:02:03.000Z","id":"key_0123456789abcdef","kind":"key","owner":"svc-billing"},"timestamp":"2026-12-02T01:02:03.456Z","type":"key.disabled"}"#;
    let id = "msg_0123456789abcdef0123456789abcdef";
    let ts = 1_796_000_000u64;
    c.bench_function("webhook/sign (a key.disabled body)", |b| {
        b.iter(|| secret.sign(black_box(id), black_box(ts), black_box(body)))
    });
    let signature = secret.sign(id, ts, body);
    let timestamp = ts.to_string();
    let headers = WebhookHeaders {
        id,
        timestamp: &timestamp,
        signature: &signature,
    };
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts);
    c.bench_function("webhook/verify (a key.disabled body)", |b| {
        b.iter(|| secret.verify(black_box(&headers), black_box(body), now))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = floor, verifiers, parts, contention, guard, webhooks
}
criterion_main!(benches);
