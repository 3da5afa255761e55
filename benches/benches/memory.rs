//! Resident memory of 1,000,000 keys in a `KeySet` and of 100,000 entries
//! in a `TtlCache`: each case runs in a fresh child process, which reports
//! its resident set size (`/proc/self/statm`) before and after building.
//! Run: `cargo bench -p auth-benches --bench memory`.
#![allow(missing_docs, unused_crate_dependencies)]

use std::process::Command;
use std::sync::Arc;

use auth_benches::key;
use auth_core::cache::{Cache, CacheEntry, TtlCache};
use auth_core::{CacheConfig, Digest, KeySet, Principal};

const CASE_VAR: &str = "AUTH_BENCH_MEMORY_CASE";
const KEYS: usize = 1_000_000;
const ENTRIES: usize = 100_000;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

/// Builds one case in this (child) process; prints the bytes per entry.
fn child(case: &str) {
    // Digests are made first, so that only the structure is measured.
    let digests: Vec<Digest> = (0..KEYS as u64)
        .map(|i| Digest::of(key(i).as_bytes()))
        .collect();
    let shared = Principal::new("svc");
    let before = resident_bytes();
    let (entries, kept): (usize, Box<dyn std::any::Any>) = match case {
        "keyset-shared" => {
            let mut set = KeySet::with_capacity(KEYS);
            for d in &digests {
                set.insert_digest(*d, shared.clone()).unwrap();
            }
            (set.len(), Box::new(set))
        }
        "keyset-distinct" => {
            let mut set = KeySet::with_capacity(KEYS);
            for (i, d) in digests.iter().enumerate() {
                set.insert_digest(*d, Principal::new(format!("svc-{i:07}")))
                    .unwrap();
            }
            (set.len(), Box::new(set))
        }
        "cache" => {
            let cache: TtlCache<Arc<Principal>> = TtlCache::new(CacheConfig {
                capacity: 2 * ENTRIES,
                ..CacheConfig::default()
            });
            let principal = Arc::new(shared);
            for d in &digests[..ENTRIES] {
                cache.fill(cache.ticket(d), CacheEntry::Granted(Arc::clone(&principal)));
            }
            (cache.len(), Box::new(cache))
        }
        other => panic!("unknown case {other}"),
    };
    let after = resident_bytes();
    println!("{} {}", entries, after.saturating_sub(before));
    drop(kept);
}

fn main() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        child(&case);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    println!("| structure | entries | resident | bytes per entry |");
    println!("|---|---:|---:|---:|");
    for (case, label) in [
        ("keyset-shared", "KeySet, every key one principal (`svc`)"),
        (
            "keyset-distinct",
            "KeySet, a principal per key (`svc-NNNNNNN`)",
        ),
        ("cache", "TtlCache<Arc<Principal>>, granted entries"),
    ] {
        let out = Command::new(&exe).env(CASE_VAR, case).output().unwrap();
        assert!(
            out.status.success(),
            "{case} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut fields = text.split_whitespace();
        let entries: usize = fields.next().unwrap().parse().unwrap();
        let bytes: usize = fields.next().unwrap().parse().unwrap();
        println!(
            "| {label} | {entries} | {:.1} MiB | {:.0} |",
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / entries as f64
        );
    }
}
