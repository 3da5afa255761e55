//! Usage counts (issue 16): the decisions this verifier makes about keys
//! without a call of its own — answers from its cache, credits spent from
//! a lease, callers served by another caller's call, stale grants — counted
//! per key digest and UTC hour by code, and reported to the key service
//! ([`USAGE_PATH`]) in batches. The key service counts the answers it gives
//! itself, so every decision is counted once, where it is made.
//!
//! Counting is on the hot path: the calling thread's stripe of sixteen (a
//! `parking_lot` mutex each, on cache lines of their own, so threads hitting
//! one key do not share a line). A stripe keeps the key it counted last
//! apart, with the end of its hour on the verifier's clock: a hit on the
//! same key in the same hour — most hits — is a compare and an add, no
//! hashing and no clock arithmetic; another key files it into the stripe's
//! map (one lookup with the digest hasher). The hour comes from the clock
//! reading the hit makes anyway. The map entries are bounded ([`MAX_PENDING`]
//! in all, one key apart per stripe besides): a decision that finds them
//! full is dropped and counted.
//!
//! A report swaps the stripes out and sends them, one request per
//! [`MAX_USAGE_ENTRIES`]. A report that certainly did not reach the service
//! (a connect error) or that it turned away unread (503, 429) goes back
//! into the pending entries for the next one; one that may have arrived (a
//! timeout, any other answer) is dropped and counted lost — never sent
//! twice. So a failed report loses at most its own batch, at most one
//! interval's decisions.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::clock::Clock;
use auth_core::digest::DigestHasher;
use auth_core::protocol::{
    Code, MAX_USAGE_COUNT, MAX_USAGE_ENTRIES, USAGE_PATH, UsageAccepted, UsageCounts, UsageEntry,
    UsageReport,
};
use auth_core::{Digest, Principal};
use parking_lot::Mutex;
use reqwest::header::{HeaderName, HeaderValue};

use crate::metrics::UsageTally;

/// Stripes of pending counts; threads take them in turn.
const STRIPES: usize = 16;

/// The most pending entries (a key in an hour, per stripe that counted it).
pub(crate) const MAX_PENDING: usize = 100_000;

/// The most grants answered `insufficient_scope` tracked at once (they
/// live as long as their request).
const MAX_LACKING: usize = 1_024;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Pending counts, by key digest and hour.
type Counts = HashMap<(Digest, u64), UsageCounts, DigestHasher>;

/// One stripe, on cache lines of its own.
#[repr(align(128))]
struct Stripe(Mutex<Pending>);

/// A stripe's pending counts.
struct Pending {
    /// The key counted last, apart from the map (filed into it when
    /// another key or hour comes, or at a report).
    last: Option<Last>,
    map: Counts,
}

/// The key a stripe counted last, and what it counted since.
struct Last {
    digest: Digest,
    hour: u64,
    /// When its hour ends, on the verifier's clock.
    until: Duration,
    counts: UsageCounts,
}

/// The stripe of the calling thread.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// Decisions in `counts`: its refusals and its grants (`valid`, when not
/// negative). A grant the guard refused afterwards is one decision (its
/// refusal: `valid` − 1, the refusal + 1), whoever counted the grant.
fn decisions(counts: &UsageCounts) -> u64 {
    counts.by_code().iter().fold(0u64, |sum, (_, n)| {
        sum.saturating_add(n.max(&0).unsigned_abs())
    })
}

/// Adds `from` into `to`.
fn merge(to: &mut UsageCounts, from: &UsageCounts) {
    for (code, n) in from.by_code() {
        to.add(code, n);
    }
}

/// How to reach the service's usage endpoint.
pub(crate) struct Endpoint {
    pub(crate) client: reqwest::Client,
    /// `{base}/api/v1/api-keys/usage`.
    pub(crate) url: String,
    pub(crate) credential: Option<(HeaderName, HeaderValue)>,
    pub(crate) timeout: Duration,
}

/// The counts and their reporting: shared by the verifier and its
/// reporter task (which holds it weakly).
pub(crate) struct Usage {
    stripes: Box<[Stripe; STRIPES]>,
    /// Entries held in all stripes, never more than `limit`.
    entries: AtomicUsize,
    limit: usize,
    hasher: DigestHasher,
    /// Wall-clock time less the verifier's clock, in nanoseconds (wrapping):
    /// the hour from the clock reading a hit makes anyway, not from a
    /// `SystemTime::now()` of its own. Refreshed at every report.
    offset: AtomicU64,
    clock: Arc<dyn Clock>,
    /// How often the reporter sends.
    pub(crate) every: Duration,
    endpoint: Endpoint,
    /// One report at a time: `report_usage` waits for a tick's.
    sending: tokio::sync::Mutex<()>,
    pub(crate) tally: UsageTally,
    /// When a failed report was last logged at WARN (see `Health::due`).
    warned: AtomicU64,
    /// Grants the key service answered `insufficient_scope` for (the scope
    /// asked lacking): counted as that by the service, or here for callers
    /// joined on its call, so a guard refusing them moves nothing.
    lacking: Mutex<Vec<Weak<Principal>>>,
}

impl Usage {
    pub(crate) fn new(
        every: Duration,
        limit: usize,
        clock: Arc<dyn Clock>,
        endpoint: Endpoint,
    ) -> Self {
        let hasher = DigestHasher::new();
        let usage = Self {
            stripes: Box::new(std::array::from_fn(|_| {
                Stripe(Mutex::new(Pending {
                    last: None,
                    map: HashMap::with_hasher(hasher),
                }))
            })),
            entries: AtomicUsize::new(0),
            limit,
            hasher,
            offset: AtomicU64::new(0),
            clock,
            every,
            endpoint,
            sending: tokio::sync::Mutex::new(()),
            tally: UsageTally::default(),
            warned: AtomicU64::new(0),
            lacking: Mutex::new(Vec::new()),
        };
        usage.set_offset();
        usage
    }

    /// Aligns the hours with the wall clock (UTC) again.
    fn set_offset(&self) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, nanos);
        let offset = wall.wrapping_sub(nanos(self.clock.now()));
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// The start of the UTC hour at `now` (the verifier's clock), in Unix
    /// seconds, and when that hour ends on the verifier's clock.
    fn hour(&self, now: Duration) -> (u64, Duration) {
        const HOUR: u64 = 3600 * NANOS_PER_SEC;
        let wall = nanos(now).wrapping_add(self.offset.load(Ordering::Relaxed));
        let into = wall % HOUR;
        let start = (wall - into) / NANOS_PER_SEC;
        (start, now.saturating_add(Duration::from_nanos(HOUR - into)))
    }

    /// Counts a decision about `digest` at `now`.
    #[inline]
    pub(crate) fn count(&self, digest: &Digest, now: Duration, code: Code) {
        self.add(digest, now, |c| c.add(code, 1));
    }

    /// Moves a grant's count to `code`: the guard refused it afterwards.
    pub(crate) fn moved(&self, digest: &Digest, now: Duration, code: Code) {
        self.add(digest, now, |c| {
            c.add(Code::Valid, -1);
            c.add(code, 1);
        });
    }

    #[inline]
    fn add(&self, digest: &Digest, now: Duration, change: impl FnOnce(&mut UsageCounts)) {
        let mut pending = self.stripes[stripe()].0.lock();
        // The clock is monotonic: the hour lasts while `now` is before its end.
        if let Some(last) = &mut pending.last {
            if now < last.until && last.digest == *digest {
                change(&mut last.counts);
                return;
            }
        }
        let (hour, until) = self.hour(now);
        let mut counts = UsageCounts::default();
        change(&mut counts);
        let new = Last {
            digest: *digest,
            hour,
            until,
            counts,
        };
        if let Some(before) = pending.last.replace(new) {
            if let Some(lost) = self.file(&mut pending.map, before) {
                drop(pending);
                self.tally.lost_full.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }

    /// Files `last` into `map`, within the bound; the decisions that did
    /// not fit, if any.
    fn file(&self, map: &mut Counts, last: Last) -> Option<u64> {
        match map.entry((last.digest, last.hour)) {
            Entry::Occupied(entry) => merge(entry.into_mut(), &last.counts),
            Entry::Vacant(entry) if self.reserve() => {
                entry.insert(last.counts);
            }
            Entry::Vacant(_) => return Some(decisions(&last.counts)),
        }
        None
    }

    /// Takes room for one more entry, if there is any.
    fn reserve(&self) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) < self.limit {
            return true;
        }
        self.entries.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Everything pending, the stripes left empty; entries of one key and
    /// hour counted by several threads merged.
    fn take(&self) -> Vec<(Digest, u64, UsageCounts)> {
        let mut all = Counts::with_hasher(self.hasher);
        for stripe in self.stripes.iter() {
            let mut pending = stripe.0.lock();
            let last = pending.last.take();
            let taken = std::mem::replace(&mut pending.map, HashMap::with_hasher(self.hasher));
            drop(pending);
            self.entries.fetch_sub(taken.len(), Ordering::Relaxed);
            for (key, counts) in taken {
                merge(all.entry(key).or_default(), &counts);
            }
            if let Some(last) = last {
                merge(
                    all.entry((last.digest, last.hour)).or_default(),
                    &last.counts,
                );
            }
        }
        all.into_iter()
            .filter(|(_, counts)| !counts.is_empty())
            .map(|((digest, hour), counts)| (digest, hour, counts))
            .collect()
    }

    /// Puts counts that were not sent back, within the bound; what does not
    /// fit is lost.
    fn restore(&self, batch: Vec<(Digest, u64, UsageCounts)>) {
        for (digest, hour, counts) in batch {
            // Any stripe will do: a report merges them.
            let mut pending = self.stripes[usize::from(digest.as_bytes()[0]) % STRIPES]
                .0
                .lock();
            match pending.map.entry((digest, hour)) {
                Entry::Occupied(entry) => merge(entry.into_mut(), &counts),
                Entry::Vacant(entry) => {
                    if self.reserve() {
                        entry.insert(counts);
                    } else {
                        drop(pending);
                        self.tally
                            .lost_full
                            .fetch_add(decisions(&counts), Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Whether anything is pending (the final report).
    pub(crate) fn pending(&self) -> bool {
        self.entries.load(Ordering::Relaxed) > 0
            || self.stripes.iter().any(|s| s.0.lock().last.is_some())
    }

    /// Entries in the stripes' maps (tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Remembers a grant the service answered `insufficient_scope` for.
    pub(crate) fn lacks_scope(&self, principal: &Arc<Principal>) {
        let mut lacking = self.lacking.lock();
        lacking.retain(|p| p.strong_count() > 0);
        if lacking.len() < MAX_LACKING {
            lacking.push(Arc::downgrade(principal));
        }
    }

    /// Whether `principal` is one the service answered
    /// `insufficient_scope` for.
    pub(crate) fn lacked_scope(&self, principal: &Arc<Principal>) -> bool {
        self.lacking
            .lock()
            .iter()
            .any(|p| std::ptr::eq(p.as_ptr(), Arc::as_ptr(principal)))
    }

    /// Sends everything pending, one request per [`MAX_USAGE_ENTRIES`],
    /// and waits for the answers (after a report under way, if any).
    pub(crate) async fn report(&self) {
        let _one = self.sending.lock().await;
        self.set_offset();
        let mut batch = Batch {
            usage: self,
            left: self.take(),
        };
        while !batch.left.is_empty() {
            let at = batch.left.len().saturating_sub(MAX_USAGE_ENTRIES);
            let chunk = batch.left.split_off(at);
            let report = UsageReport {
                entries: chunk
                    .iter()
                    .map(|(digest, hour, counts)| UsageEntry {
                        digest: digest.to_hex(),
                        hour: *hour,
                        counts: clamped(*counts),
                    })
                    .collect(),
            };
            let made: u64 = chunk.iter().map(|(_, _, c)| decisions(c)).sum();
            match self.send(&report).await {
                Sent::Accepted(entries) => {
                    self.tally.reported.fetch_add(made, Ordering::Relaxed);
                    tracing::debug!(target: "auth_remote", entries, decisions = made,
                        "usage reported");
                }
                Sent::NotTaken(why, status) => {
                    // Not counted there: with the next report.
                    tracing::debug!(target: "auth_remote", why, status, decisions = made,
                        "usage report not taken: kept for the next one");
                    self.restore(chunk);
                    self.restore(std::mem::take(&mut batch.left));
                }
                Sent::Lost(why, status) => {
                    // It may have been counted: never sent again.
                    self.tally.lost_failed.fetch_add(made, Ordering::Relaxed);
                    self.warn(why, status, made);
                    self.restore(std::mem::take(&mut batch.left));
                }
            }
        }
        // Grants refused long ago are gone by now.
        self.lacking.lock().retain(|p| p.strong_count() > 0);
    }

    async fn send(&self, report: &UsageReport) -> Sent {
        let e = &self.endpoint;
        let mut request = e.client.post(&e.url).timeout(e.timeout).json(report);
        if let Some((name, value)) = &e.credential {
            request = request.header(name.clone(), value.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            // Refused or unreachable: it never got there.
            Err(err) if err.is_connect() => return Sent::NotTaken("connect error", None),
            Err(err) if err.is_timeout() => return Sent::Lost("timeout", None),
            Err(_) => return Sent::Lost("request error", None),
        };
        let status = response.status();
        match status.as_u16() {
            429 | 503 => return Sent::NotTaken("busy", Some(status.as_u16())),
            400 => return Sent::Lost("refused as malformed (a bug)", Some(400)),
            401 | 403 => {
                return Sent::Lost(
                    "the key service refused our service credential",
                    Some(status.as_u16()),
                );
            }
            _ if !status.is_success() => return Sent::Lost("error status", Some(status.as_u16())),
            _ => {}
        }
        match crate::read_limited(response).await {
            Ok(bytes) => match serde_json::from_slice::<UsageAccepted>(&bytes) {
                Ok(answer) => Sent::Accepted(answer.accepted),
                Err(_) => Sent::Lost("malformed answer", None),
            },
            Err(why) => Sent::Lost(why, None),
        }
    }

    /// A lost report: WARN at most every 10 s (without key material: no
    /// digest, no fingerprint), DEBUG otherwise.
    fn warn(&self, why: &'static str, status: Option<u16>, decisions: u64) {
        if crate::Health::due(&self.warned, self.clock.now()) {
            tracing::warn!(target: "auth_remote", why, status, decisions,
                "a usage report failed: its counts are lost");
        } else {
            tracing::debug!(target: "auth_remote", why, status, decisions,
                "a usage report failed: its counts are lost");
        }
    }
}

/// Counts within the protocol's range (only reachable after a very long
/// outage with every report kept): the excess is dropped.
fn clamped(mut counts: UsageCounts) -> UsageCounts {
    let max = i64::try_from(MAX_USAGE_COUNT).unwrap_or(i64::MAX);
    counts.valid = counts.valid.clamp(-max, max);
    for n in [
        &mut counts.disabled,
        &mut counts.expired,
        &mut counts.insufficient_scope,
        &mut counts.rate_limited,
        &mut counts.usage_exceeded,
    ] {
        *n = (*n).min(MAX_USAGE_COUNT);
    }
    counts
}

/// How a report's request ended.
enum Sent {
    /// Counted: the number of entries taken.
    Accepted(u64),
    /// Certainly not counted (never reached, or turned away unread).
    NotTaken(&'static str, Option<u16>),
    /// Perhaps counted, perhaps not.
    Lost(&'static str, Option<u16>),
}

/// What a report has yet to send. Dropped before it is sent (the reporter
/// aborted with its verifier, a caller of `report_usage` gone), it is
/// counted as lost: a request under way may have arrived.
struct Batch<'a> {
    usage: &'a Usage,
    left: Vec<(Digest, u64, UsageCounts)>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let lost: u64 = self.left.iter().map(|(_, _, c)| decisions(c)).sum();
        if lost > 0 {
            self.usage
                .tally
                .lost_failed
                .fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// The reporter: every `every`, a report, while the counts exist.
pub(crate) async fn run(usage: Weak<Usage>, every: Duration) {
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(usage) = usage.upgrade() else {
            return;
        };
        usage.report().await;
    }
}

/// The usage endpoint's URL for `base`.
pub(crate) fn url(base: &str) -> String {
    format!("{}{USAGE_PATH}", base.trim_end_matches('/'))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auth_core::clock::ManualClock;

    fn usage(limit: usize) -> Usage {
        Usage::new(
            Duration::from_secs(10),
            limit,
            Arc::new(ManualClock::new()),
            Endpoint {
                client: reqwest::Client::new(),
                url: "http://127.0.0.1:1/usage".into(),
                credential: None,
                timeout: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn hours_are_utc_hour_starts() {
        let u = usage(10);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (hour, until) = u.hour(Duration::ZERO);
        assert_eq!(hour % 3600, 0);
        assert!(wall - hour < 3600 + 5, "{wall} {hour}");
        assert!(until <= Duration::from_secs(3600), "{until:?}");
        assert_eq!(u.hour(until).0, hour + 3600);
        assert_eq!(u.hour(until - Duration::from_nanos(1)).0, hour);
        assert_eq!(u.hour(Duration::from_secs(7200)).0, hour + 7200);
    }

    #[test]
    fn a_key_counted_across_an_hours_end_is_counted_in_each_hour() {
        let u = usage(10);
        let k = Digest::of(b"k");
        let (hour, until) = u.hour(Duration::ZERO);
        for now in [
            Duration::ZERO,
            until - Duration::from_nanos(1),
            until,
            until,
        ] {
            u.count(&k, now, Code::Valid);
        }
        let mut taken = u.take();
        taken.sort_by_key(|(_, hour, _)| *hour);
        let hours: Vec<_> = taken.iter().map(|(_, h, c)| (*h, c.valid)).collect();
        assert_eq!(hours, [(hour, 2), (hour + 3600, 2)]);
    }

    #[test]
    fn counts_merge_across_stripes_and_moves_may_go_negative() {
        let u = usage(100);
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let now = Duration::from_secs(1);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10 {
                        u.count(&a, now, Code::Valid);
                    }
                    u.count(&a, now, Code::Disabled);
                });
            }
        });
        u.moved(&a, now, Code::RateLimited);
        u.moved(&b, now, Code::InsufficientScope);
        // A key never counted: nothing pending for it.
        u.count(&b, now, Code::Invalid);
        let mut taken = u.take();
        taken.sort_by_key(|(d, ..)| *d == b);
        assert_eq!(taken.len(), 2);
        let (ca, cb) = (taken[0].2, taken[1].2);
        assert_eq!((ca.valid, ca.disabled, ca.rate_limited), (39, 4, 1));
        assert_eq!(decisions(&ca), 44);
        assert_eq!((cb.valid, cb.insufficient_scope), (-1, 1));
        assert_eq!(decisions(&cb), 1, "a refusal here");
        assert!(!u.pending());
        assert!(u.take().is_empty());
    }

    #[test]
    fn a_full_map_drops_and_counts_and_restores_within_the_bound() {
        let u = usage(2);
        let now = Duration::ZERO;
        let d = |n: u8| Digest::of(&[n]);
        // One thread, one stripe: each key files the one before it into
        // the map, which holds two; the third and fourth do not fit.
        for n in 0u8..4 {
            u.count(&d(n), now, Code::Valid);
        }
        // The two entries held keep counting.
        u.count(&d(0), now, Code::Valid);
        assert_eq!(u.entries(), 2);
        assert_eq!(u.tally.lost_full.load(Ordering::Relaxed), 2);
        let taken = u.take();
        let mut kept: Vec<_> = taken.iter().map(|(k, _, c)| (*k, c.valid)).collect();
        kept.sort_by_key(|(_, valid)| *valid);
        assert_eq!(kept, [(d(1), 1), (d(0), 2)]);
        // Two new decisions meanwhile (one filed); then the batch comes
        // back: one entry fits in the room left, the other does not.
        u.count(&d(9), now, Code::Valid);
        u.count(&d(8), now, Code::Valid);
        u.restore(taken);
        assert_eq!(u.entries(), 2);
        let lost = u.tally.lost_full.load(Ordering::Relaxed);
        assert!(lost == 3 || lost == 4, "{lost}");
        let kept = u.take();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().any(|(k, ..)| *k == d(9)) && kept.iter().any(|(k, ..)| *k == d(8)));
    }

    #[test]
    fn a_report_that_never_got_there_stays_pending() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on port 1: a connect error.
        let u = usage(10);
        u.count(&Digest::of(b"k"), Duration::ZERO, Code::Valid);
        rt.block_on(u.report());
        rt.block_on(u.report());
        assert!(u.pending());
        assert_eq!(u.tally.all(), [0, 0, 0]);
        assert_eq!(u.take()[0].2.valid, 1, "kept once, not doubled");
    }

    #[test]
    fn counts_are_clamped_to_the_protocol() {
        let c = clamped(UsageCounts {
            valid: i64::MIN,
            disabled: u64::MAX,
            ..UsageCounts::default()
        });
        let report = UsageReport {
            entries: vec![UsageEntry {
                digest: Digest::of(b"k").to_hex(),
                hour: 3600,
                counts: c,
            }],
        };
        assert_eq!(report.check(), Ok(()));
    }
}
