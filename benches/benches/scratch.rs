#![allow(missing_docs, unused_crate_dependencies)]
use auth_benches::{key, ready};
use auth_core::{Credential, Digest, Principal, StaticKey, Verifier, VerifyContext};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

fn b(c: &mut Criterion) {
    let k = key(0);
    let d = Digest::of(k.as_bytes());
    let sk = StaticKey::new(&k).unwrap();
    let p = Arc::new(Principal::new("x"));
    let ctx = VerifyContext::default();
    c.bench_function("Instant::now", |b| b.iter(std::time::Instant::now));
    c.bench_function("rustix monotonic coarse", |b| {
        b.iter(|| rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse))
    });
    c.bench_function("rustix monotonic", |b| {
        b.iter(|| rustix::time::clock_gettime(rustix::time::ClockId::Monotonic))
    });
    let lock = parking_lot::RwLock::new(5u64);
    c.bench_function("rwlock read", |b| b.iter(|| *lock.read()));
    let cache: auth_core::TtlCache<Arc<Principal>> = auth_core::TtlCache::new(Default::default());
    use auth_core::Cache;
    cache.fill(cache.ticket(&d), auth_core::CacheEntry::Granted(p.clone()));
    c.bench_function("cache get", |b| b.iter(|| cache.get(black_box(&d))));
    c.bench_function("digest+cteq", |b| {
        b.iter(|| bool::from(Digest::of(black_box(k.as_bytes())).ct_eq(&d)))
    });
    c.bench_function("fresh cred digest+cteq", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| bool::from(c.digest().ct_eq(&d)),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("fresh cred digest+cteq+arc", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| {
                if bool::from(c.digest().ct_eq(&d)) {
                    Some(p.clone())
                } else {
                    None
                }
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("fresh cred verify_now", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| sk.verify_now(c, &ctx),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("fresh cred verify boxed", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| ready(sk.verify(c, &ctx)),
            BatchSize::SmallInput,
        )
    });
    let v: &dyn Verifier = &sk;
    c.bench_function("dyn verify_now", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| v.verify_now(c, &ctx),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("dyn as core bench", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| {
                let r = v
                    .verify_now(c, &ctx)
                    .unwrap_or_else(|| ready(v.verify(c, &ctx)));
                assert!(r.is_ok());
                r
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("fresh cred digest only", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| *c.digest(),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("fresh cred digest only LargeInput", |b| {
        b.iter_batched_ref(
            || Credential::new(k.clone()),
            |c| *c.digest(),
            BatchSize::LargeInput,
        )
    });
}
criterion_group! { name = g; config = Criterion::default().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1)); targets = b }
criterion_main!(g);
