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
//! in all, one key apart per stripe besides): when the key counted last
//! cannot be filed for want of room, it stays apart and the new decision is
//! dropped and counted (`lost{full}`) — unless its key and hour have an
//! entry already, which takes it. Besides the maps, the batch a report is
//! sending is held (at most as much again) until its answers are in.
//!
//! A report swaps the stripes out (maps of last time's size, allocated
//! before the lock) and sends them, one request per [`MAX_USAGE_ENTRIES`];
//! entries of hours the key service no longer takes (older than 7 days)
//! are dropped first and counted (`lost{skipped}`). A request that
//! certainly was not counted — a connect error, a 429 (the key service
//! answers none to a report: a proxy's, refused before forwarding), or the
//! key service's own 503 `{"error":"unavailable"}` (its pending counts are
//! full) — goes back into the pending entries, with the rest of the batch,
//! for the next report. One that may have been counted — a timeout, a 503
//! from anything else (a proxy may answer it after forwarding), any other
//! answer — is dropped and counted lost (`lost{failed}`): never sent twice.
//! Entries the key service skipped (its `accepted` is less than the
//! request's entries: hours outside its window, by its clock) are counted
//! `lost{skipped}`, not reported. A report cut short (its caller gone, the
//! verifier dropped) counts the request under way lost and puts the rest
//! back.
//!
//! So a failed request loses its own chunk — which may hold everything
//! counted since the last report the service accepted, as counts merged
//! back accumulate — never more.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use auth_core::clock::Clock;
use auth_core::digest::DigestHasher;
use auth_core::protocol::{
    Code, MAX_USAGE_COUNT, MAX_USAGE_ENTRIES, USAGE_PATH, UsageAccepted, UsageCounts, UsageEntry,
    UsageReport,
};
use parking_lot::Mutex;
use reqwest::header::{HeaderName, HeaderValue};

use crate::metrics::UsageTally;

/// Stripes of pending counts; threads take them in turn.
const STRIPES: usize = 16;

/// The most pending entries (a key in an hour, per stripe that counted it).
pub(crate) const MAX_PENDING: usize = 100_000;

/// How old a reported hour may be: the key service skips older ones.
const PAST: u64 = 7 * 86_400;

/// How far past the service's clock a reported hour may start: it skips
/// later ones.
const AHEAD: u64 = 3_600;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Pending counts, by key digest and hour.
type Counts = HashMap<(Digest, u64), UsageCounts, DigestHasher>;

/// Counts taken out of the stripes: digest, hour, counts.
type Taken = Vec<(Digest, u64, UsageCounts)>;

/// One stripe, on cache lines of its own.
#[repr(align(128))]
struct Stripe {
    pending: Mutex<Pending>,
    /// Entries its map held when last taken: the next map's capacity.
    taken: AtomicUsize,
}

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

/// Decisions in all of `entries`.
fn all_decisions(entries: &[(Digest, u64, UsageCounts)]) -> u64 {
    entries
        .iter()
        .fold(0u64, |sum, (_, _, c)| sum.saturating_add(decisions(c)))
}

/// Adds `from` into `to`.
fn merge(to: &mut UsageCounts, from: &UsageCounts) {
    for (code, n) in from.by_code() {
        to.add(code, n);
    }
}

/// Wall-clock Unix seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    /// Entries held in all stripes' maps, never more than `limit`.
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
            stripes: Box::new(std::array::from_fn(|_| Stripe {
                pending: Mutex::new(Pending {
                    last: None,
                    map: HashMap::with_hasher(hasher),
                }),
                taken: AtomicUsize::new(0),
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
        let mut pending = self.stripes[stripe()].pending.lock();
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
        let Pending { last, map } = &mut *pending;
        let Some(before) = last.take() else {
            *last = Some(new);
            return;
        };
        match self.file(map, before) {
            Ok(()) => *last = Some(new),
            Err(before) => {
                // No room for the key counted last: its run stays apart,
                // and the new decision goes where its key and hour have an
                // entry already, or is dropped.
                *last = Some(before);
                if let Some(held) = map.get_mut(&(new.digest, new.hour)) {
                    merge(held, &new.counts);
                    return;
                }
                drop(pending);
                self.tally
                    .lost_full
                    .fetch_add(decisions(&new.counts), Ordering::Relaxed);
            }
        }
    }

    /// Files `last` into `map`, within the bound; given back when there
    /// is no room for it.
    fn file(&self, map: &mut Counts, last: Last) -> Result<(), Last> {
        match map.entry((last.digest, last.hour)) {
            Entry::Occupied(entry) => merge(entry.into_mut(), &last.counts),
            Entry::Vacant(entry) if self.reserve() => {
                entry.insert(last.counts);
            }
            Entry::Vacant(_) => return Err(last),
        }
        Ok(())
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
    fn take(&self) -> Taken {
        let mut all = Counts::with_hasher(self.hasher);
        for stripe in self.stripes.iter() {
            // Sized as the map it replaces was last time, and allocated
            // before the lock: the hits that fill it again neither wait for
            // an allocation nor rehash under the lock as it grows.
            let fresh = HashMap::with_capacity_and_hasher(
                stripe.taken.load(Ordering::Relaxed),
                self.hasher,
            );
            let mut pending = stripe.pending.lock();
            let last = pending.last.take();
            let taken = std::mem::replace(&mut pending.map, fresh);
            // Under the lock: a decision filed right after sees the room.
            self.entries.fetch_sub(taken.len(), Ordering::Relaxed);
            drop(pending);
            stripe.taken.store(taken.len(), Ordering::Relaxed);
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
    fn restore(&self, batch: Taken) {
        for (digest, hour, counts) in batch {
            // Any stripe will do: a report merges them.
            let mut pending = self.stripes[usize::from(digest.as_bytes()[0]) % STRIPES]
                .pending
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

    /// Whether anything is pending (tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> bool {
        self.entries.load(Ordering::Relaxed) > 0
            || self.stripes.iter().any(|s| s.pending.lock().last.is_some())
    }

    /// Entries in the stripes' maps (tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Drops the entries of hours the key service would skip as too old,
    /// counted.
    fn drop_too_old(&self, batch: &mut Taken, now: u64) {
        let mut skipped = 0u64;
        batch.retain(|(_, hour, counts)| {
            let keep = hour.saturating_add(PAST) >= now;
            if !keep {
                skipped = skipped.saturating_add(decisions(counts));
            }
            keep
        });
        if skipped > 0 {
            self.tally
                .lost_skipped
                .fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(target: "auth_remote", decisions = skipped,
                "usage counts older than 7 days dropped: the key service takes none");
        }
    }

    /// Sends everything pending, one request per [`MAX_USAGE_ENTRIES`],
    /// and waits for the answers (after a report under way, if any).
    pub(crate) async fn report(&self) {
        let _one = self.sending.lock().await;
        self.set_offset();
        // Dropped before `_one`: what it puts back is there for the next
        // report, which waits for the lock.
        let mut batch = Batch {
            usage: self,
            left: self.take(),
            sending: 0,
        };
        self.drop_too_old(&mut batch.left, unix_now());
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
            let made = all_decisions(&chunk);
            // Cut short while it is under way, it may have been counted.
            batch.sending = made;
            let sent = self.send(&report).await;
            batch.sending = 0;
            match sent {
                Sent::Accepted(accepted) => {
                    let skipped = skipped(&chunk, accepted, unix_now());
                    let taken = made.saturating_sub(skipped);
                    self.tally.reported.fetch_add(taken, Ordering::Relaxed);
                    if skipped > 0 {
                        self.tally
                            .lost_skipped
                            .fetch_add(skipped, Ordering::Relaxed);
                    }
                    tracing::debug!(target: "auth_remote", entries = chunk.len(), accepted,
                        decisions = taken, skipped, "usage reported");
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
            // The key service never answers a report 429: a proxy's (or
            // gateway's) rate limit, refused before it was forwarded.
            429 => return Sent::NotTaken("throttled", Some(429)),
            // The key service's own: its pending counts are full, the
            // report refused whole. A 503 of anything else (a proxy) may
            // come after it forwarded the report.
            503 => {
                return match crate::read_limited(response).await {
                    Ok(body) if is_the_services_busy(&body) => Sent::NotTaken("busy", Some(503)),
                    _ => Sent::Lost("unavailable (not the key service's own answer)", Some(503)),
                };
            }
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

/// Whether a 503's body is the key service's own JSON error
/// `{"error":"unavailable",…}`.
fn is_the_services_busy(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("error").and_then(serde_json::Value::as_str) == Some("unavailable"))
}

/// The decisions in the entries of `chunk` the key service skipped, when it
/// `accepted` fewer than it was sent. It takes the hours of a window (the
/// last 7 days to the next hour, by its clock) and skips the others: the
/// oldest entries or the newest. Which: the side whose edge our clock
/// (`now`, Unix seconds) puts nearer — the smaller clock difference
/// explains the skips. Entries of one hour are skipped together, so the
/// side's entries are exactly the skipped ones.
fn skipped(chunk: &[(Digest, u64, UsageCounts)], accepted: u64, now: u64) -> u64 {
    let sent = chunk.len();
    let accepted = usize::try_from(accepted).unwrap_or(usize::MAX);
    if accepted >= sent {
        return 0;
    }
    if accepted == 0 {
        return all_decisions(chunk);
    }
    let mut hours: Vec<(u64, u64)> = chunk
        .iter()
        .map(|(_, hour, counts)| (*hour, decisions(counts)))
        .collect();
    hours.sort_unstable_by_key(|(hour, _)| *hour);
    let (oldest, newest) = (hours[0].0, hours[sent - 1].0);
    // How far ahead the service's clock must be to skip the oldest, and
    // how far behind to skip the newest.
    let ahead = oldest.saturating_add(PAST).saturating_sub(now);
    let behind = now.saturating_add(AHEAD).saturating_sub(newest);
    let k = sent - accepted;
    let side = if ahead <= behind {
        &hours[..k]
    } else {
        &hours[sent - k..]
    };
    side.iter().fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
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

/// What a report has yet to send, and the decisions of the request under
/// way. Dropped before it is done (the reporter aborted with its verifier,
/// a caller of `report_usage` gone), the request under way is counted
/// lost — it may have arrived — and what was never sent goes back into the
/// pending counts (within the bound) for the next report.
struct Batch<'a> {
    usage: &'a Usage,
    left: Taken,
    /// Decisions in the request under way (0: none).
    sending: u64,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.sending > 0 {
            self.usage
                .tally
                .lost_failed
                .fetch_add(self.sending, Ordering::Relaxed);
        }
        if !self.left.is_empty() {
            self.usage.restore(std::mem::take(&mut self.left));
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

    fn usage_on(limit: usize, clock: Arc<dyn Clock>) -> Usage {
        Usage::new(
            Duration::from_secs(10),
            limit,
            clock,
            Endpoint {
                client: reqwest::Client::new(),
                url: "http://127.0.0.1:1/usage".into(),
                credential: None,
                timeout: Duration::from_secs(1),
            },
        )
    }

    fn usage(limit: usize) -> Usage {
        usage_on(limit, Arc::new(ManualClock::new()))
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
        // the map, which holds two; the third stays apart, the fourth is
        // dropped.
        for n in 0u8..4 {
            u.count(&d(n), now, Code::Valid);
        }
        // The two entries held keep counting, and so does the one apart.
        u.count(&d(0), now, Code::Valid);
        u.count(&d(2), now, Code::Valid);
        assert_eq!(u.entries(), 2);
        assert_eq!(u.tally.lost_full.load(Ordering::Relaxed), 1);
        let taken = u.take();
        assert_eq!(u.entries(), 0);
        let mut kept: Vec<_> = taken.iter().map(|(k, _, c)| (*k, c.valid)).collect();
        kept.sort_by_key(|(k, _)| *k.as_bytes());
        let mut expected = [(d(1), 1), (d(0), 2), (d(2), 2)];
        expected.sort_by_key(|(k, _)| *k.as_bytes());
        assert_eq!(kept, expected);
        // Two new decisions meanwhile (one filed); then the batch comes
        // back: one entry fits in the room left, the other two do not.
        u.count(&d(9), now, Code::Valid);
        u.count(&d(8), now, Code::Valid);
        u.restore(taken);
        assert_eq!(u.entries(), 2);
        let lost = u.tally.lost_full.load(Ordering::Relaxed) - 1;
        assert!(lost == 3 || lost == 4, "{lost}");
        let kept = u.take();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().any(|(k, ..)| *k == d(9)) && kept.iter().any(|(k, ..)| *k == d(8)));
    }

    /// The key counted last, which cannot be filed, keeps its whole run;
    /// the new decision is the one dropped.
    #[test]
    fn a_full_map_keeps_the_run_counted_last_and_drops_the_new_decision() {
        let u = usage(1);
        let now = Duration::ZERO;
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        // `a` filed (the map is full), then a run of five on `b`.
        u.count(&a, now, Code::Valid);
        for _ in 0..5 {
            u.count(&b, now, Code::Valid);
        }
        // `c` finds no room for `b`: `c` is dropped, `b` kept apart.
        u.count(&c, now, Code::Disabled);
        assert_eq!(u.tally.lost_full.load(Ordering::Relaxed), 1);
        // `a` has its entry: counted there, `b` still apart.
        u.count(&a, now, Code::Valid);
        u.count(&b, now, Code::Valid);
        assert_eq!(u.tally.lost_full.load(Ordering::Relaxed), 1);
        let mut taken: Vec<_> = u.take().into_iter().map(|(k, _, c)| (k, c)).collect();
        taken.sort_by_key(|(k, _)| *k != a);
        assert_eq!(taken, [(a, counts(2)), (b, counts(6))]);
    }

    /// A report swaps in maps sized as the last ones taken: the hits that
    /// fill them again do not rehash under the stripe's lock.
    #[test]
    fn a_report_swaps_in_maps_sized_as_the_last_ones_taken() {
        let u = usage(1_000);
        let capacity = || u.stripes[stripe()].pending.lock().map.capacity();
        let fill = || {
            for n in 0u16..300 {
                u.count(&Digest::of(&n.to_le_bytes()), Duration::ZERO, Code::Valid);
            }
        };
        fill();
        assert_eq!(u.take().len(), 300);
        fill();
        assert_eq!(u.take().len(), 300);
        assert!(capacity() >= 299, "{}", capacity());
        assert_eq!(u.entries(), 0);
    }

    fn counts(valid: i64) -> UsageCounts {
        UsageCounts {
            valid,
            ..UsageCounts::default()
        }
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
        assert_eq!(u.tally.all(), [0, 0, 0, 0]);
        assert_eq!(u.take()[0].2.valid, 1, "kept once, not doubled");
    }

    /// Hours the key service would skip as older than 7 days are not sent:
    /// dropped and counted.
    #[test]
    fn entries_older_than_seven_days_are_dropped_before_sending() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new());
        // The verifier's clock at 0 is 8 days ago on the wall clock.
        clock.advance(Duration::from_secs(8 * 86_400));
        let u = usage_on(10, clock.clone());
        let (old, new) = (Digest::of(b"old"), Digest::of(b"new"));
        u.count(&old, Duration::ZERO, Code::Valid);
        u.count(&old, Duration::ZERO, Code::Expired);
        u.count(&new, clock.now(), Code::Valid);
        // Nothing listens: what is sent comes back.
        rt.block_on(u.report());
        assert_eq!(u.tally.all(), [0, 0, 0, 2]);
        let kept = u.take();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, new);
    }

    /// The entries the service skipped are the oldest or the newest: the
    /// side a smaller clock difference explains.
    #[test]
    fn skipped_entries_are_told_from_the_side_the_clocks_explain() {
        let now = 1_800_000_000u64;
        let hour = now - now % 3600;
        let d = |n: u8| Digest::of(&[n]);
        let entry = |n: u8, hour: u64, valid: i64| (d(n), hour, counts(valid));
        // Two entries of an hour near the 7-day edge, three of this hour.
        let old = hour - PAST + 3600;
        let chunk = [
            entry(0, hour, 1),
            entry(1, old, 10),
            entry(2, hour, 2),
            entry(3, old, 20),
            entry(4, hour, 4),
        ];
        assert_eq!(skipped(&chunk, 5, now), 0);
        assert_eq!(skipped(&chunk, 9, now), 0);
        assert_eq!(skipped(&chunk, 0, now), 37);
        // The service's clock an hour ahead: the old hour skipped.
        assert_eq!(skipped(&chunk, 3, now), 30);
        // Only this hour's and recent ones: the newest would be skipped by
        // a clock over an hour behind.
        let recent = [
            entry(0, hour, 1),
            entry(1, hour - 3 * 3600, 10),
            entry(2, hour, 2),
        ];
        assert_eq!(skipped(&recent, 1, now), 3);
    }

    #[test]
    fn only_the_key_services_own_503_is_busy() {
        assert!(is_the_services_busy(
            br#"{"error":"unavailable","message":"too many usage counts are waiting"}"#
        ));
        for body in [
            &b""[..],
            b"upstream connect error or disconnect/reset before headers",
            br#"{"error":"not_found"}"#,
            br#"{"message":"unavailable"}"#,
            br#"["unavailable"]"#,
        ] {
            assert!(!is_the_services_busy(body));
        }
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
