//! A TTL cache of verification outcomes, keyed by digest.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use crate::clock::nanos;
use crate::clock::{Clock, CoarseClock};
use crate::digest::DigestHasher;
use crate::local;
use crate::{Digest, VerifyError};

/// How many stripes a [`CacheStats`] has: threads beyond that many share.
const STRIPES: usize = 16;

/// One thread stripe of [`CacheStats`], on its own cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The stripe of the calling thread: threads take stripes in turn.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// A cache's hits and misses, for a hit ratio on a dashboard. A hit is a
/// request answered from the cache without asking the source it caches —
/// or, for a store that re-checks cached grants (`FindById`), re-checked
/// against the live record by id.
///
/// Counted per thread stripe (16; threads take them in turn), so that
/// cores answering hits do not write the same cache line (a shared counter
/// would undo what the per-thread copies of hot entries save).
/// [`Cached`](crate::Cached) and auth-remote's verifier count requests
/// answered from their cache and those that had to ask further, only when
/// the crate's `prometheus` feature is on: without it both counts stay 0.
///
/// ```
/// use auth_core::cache::CacheStats;
///
/// let stats = CacheStats::default();
/// stats.hit();
/// stats.hit();
/// stats.miss();
/// assert_eq!((stats.hits(), stats.misses()), (2, 1));
/// ```
#[derive(Default)]
pub struct CacheStats {
    stripes: [Stripe; STRIPES],
}

impl CacheStats {
    /// Counts a lookup answered from the cache.
    #[inline]
    pub fn hit(&self) {
        self.stripes[stripe()].hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a lookup the cache could not answer.
    #[inline]
    pub fn miss(&self) {
        self.stripes[stripe()]
            .misses
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.hits.load(Ordering::Relaxed))
            .sum()
    }

    /// Lookups the cache could not answer so far.
    pub fn misses(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.misses.load(Ordering::Relaxed))
            .sum()
    }
}

impl fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheStats")
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

/// A definite "no" that may be cached. "Could not decide"
/// ([`VerifyError::Unavailable`]) has no `Denial`, so an error can never be
/// cached as "invalid".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Denial {
    /// Not a known key.
    Invalid,
    /// A known key past its expiry.
    Expired,
    /// A disabled or revoked key.
    Disabled,
}

impl Denial {
    /// The denial of a verification error; `None` for `Unavailable` and
    /// `RateLimited` (neither is an answer about the key that may be kept).
    pub fn from_error(error: VerifyError) -> Option<Self> {
        match error {
            VerifyError::Invalid => Some(Self::Invalid),
            VerifyError::Expired => Some(Self::Expired),
            VerifyError::Disabled => Some(Self::Disabled),
            VerifyError::Unavailable
            | VerifyError::RateLimited
            | VerifyError::UsageExceeded { .. } => None,
        }
    }
}

impl From<Denial> for VerifyError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Invalid => Self::Invalid,
            Denial::Expired => Self::Expired,
            Denial::Disabled => Self::Disabled,
        }
    }
}

/// What a cache holds for a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEntry<V> {
    /// The key was accepted.
    Granted(V),
    /// The key was refused.
    Denied(Denial),
}

/// When a fill started, taken before the source is asked; see
/// [`Cache::ticket`].
#[derive(Clone, Copy, Debug)]
pub struct FillTicket {
    digest: Digest,
    generation: u64,
}

/// A cache of verification outcomes keyed by digest.
///
/// Fills are two-step: take a [`ticket`](Cache::ticket) *before* asking the
/// source, [`fill`](Cache::fill) with it after. A fill never replaces a
/// newer answer:
///
/// - an [`invalidate`](Cache::invalidate) or [`clear`](Cache::clear) voids
///   the tickets taken before it, so a revocation racing an in-flight fill
///   can never bring a "granted" entry back;
/// - answers are ordered by when they were *asked* (their tickets), not by
///   when they arrive: a slow answer to an older question cannot overwrite
///   what a later question stored, whichever kind either is; answers asked
///   at the same moment resolve to the denial (on doubt, deny).
///
/// A voided fill is not stored; its caller still has its answer.
/// Implementations may void more tickets than that (e.g. per shard), never
/// fewer.
pub trait Cache<V>: Send + Sync {
    /// The live entry for `digest`, if any.
    fn get(&self, digest: &Digest) -> Option<CacheEntry<V>>;
    /// A ticket for filling `digest` later.
    fn ticket(&self, digest: &Digest) -> FillTicket;
    /// Stores `entry` unless the ticket was voided (by an invalidation since
    /// it was taken) or the answer held for the digest was asked later (or
    /// at the same moment, and this is not a denial); returns whether it was
    /// stored.
    fn fill(&self, ticket: FillTicket, entry: CacheEntry<V>) -> bool;
    /// Drops the entry for `digest` and voids outstanding tickets for it.
    fn invalidate(&self, digest: &Digest);
    /// Drops every entry and voids every outstanding ticket.
    fn clear(&self);
    /// How many entries (granted and denied, live or not yet evicted).
    fn len(&self) -> usize;
    /// Whether the cache holds no entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V, C: Cache<V> + ?Sized> Cache<V> for Arc<C> {
    fn get(&self, digest: &Digest) -> Option<CacheEntry<V>> {
        (**self).get(digest)
    }
    fn ticket(&self, digest: &Digest) -> FillTicket {
        (**self).ticket(digest)
    }
    fn fill(&self, ticket: FillTicket, entry: CacheEntry<V>) -> bool {
        (**self).fill(ticket, entry)
    }
    fn invalidate(&self, digest: &Digest) {
        (**self).invalidate(digest)
    }
    fn clear(&self) {
        (**self).clear()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// Sizes and lifetimes of a [`TtlCache`].
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Most granted entries held (default 100,000).
    pub capacity: usize,
    /// Most denied entries held, separately, so a flood of random invalid
    /// keys cannot evict hot valid ones (default 10,000).
    pub negative_capacity: usize,
    /// Lifetime of a granted entry (default 60 s).
    pub ttl: Duration,
    /// Lifetime of a denied entry (default 10 s).
    pub negative_ttl: Duration,
    /// Lock shards (rounded up to a power of two; default 64).
    pub shards: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            negative_capacity: 10_000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            shards: 64,
        }
    }
}

/// A shard: its lock, and the version of its granted entries, readable
/// without the lock. Aligned so that neighbouring shards' lock words (written
/// by every locker) never share a cache line with a version (read by every hit).
#[repr(align(128))]
struct ShardCell<V> {
    /// Bumped whenever a granted entry is replaced or removed, so that
    /// per-thread copies of it stop being served.
    granted_version: AtomicU64,
    /// The ticket clock: a ticket is its value when taken. Advanced (under
    /// the write lock) by every fill, invalidation and clear, which are
    /// stamped with the value after their own advance, so every ticket taken
    /// before them reads less. An atomic, so that taking a ticket on the hit
    /// path takes no lock.
    generation: AtomicU64,
    lock: RwLock<Shard<V>>,
}

impl<V> ShardCell<V> {
    fn bump(&self) {
        self.granted_version.fetch_add(1, Ordering::Release);
    }

    /// Advances the ticket clock; returns the stamp of the change being
    /// made. Call with the write lock held.
    fn advance(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A held answer.
struct Slot<T> {
    value: T,
    /// Expiry, in nanoseconds of the cache's clock.
    expires: u64,
    /// The ticket it was asked under: an answer asked earlier is older.
    asked: u64,
}

struct Shard<V> {
    // A digest is in at most one of the two maps.
    granted: HashMap<Digest, Slot<V>, DigestHasher>,
    denied: HashMap<Digest, Slot<Denial>, DigestHasher>,
    /// Tickets below this are void for every digest of the shard. Raised by
    /// invalidations (which drop entries, and with them their stamps) and by
    /// evictions (which forget the stamp of the entry they drop).
    floor: u64,
}

impl<V> Shard<V> {
    /// Whether an answer asked at `generation` (a denial or not) may be
    /// stored for `digest`: it is not older than the last invalidation or
    /// eviction, nor than the answer held; a tie goes to the denial.
    fn admits(&self, digest: &Digest, generation: u64, denial: bool) -> bool {
        if generation < self.floor {
            return false;
        }
        match (self.granted.get(digest), self.denied.get(digest)) {
            (Some(held), _) => generation > held.asked || (denial && generation == held.asked),
            (None, Some(held)) => generation > held.asked,
            (None, None) => true,
        }
    }
}

/// The default [`Cache`]: sharded maps behind read-write locks.
///
/// - Hot granted entries are served from per-thread copies that are checked
///   against the shard's version (an atomic read, no write), so many cores
///   reading one hot key do not contend; other reads take one shard's read
///   lock. Eviction works on one shard at a time, so it never stalls every
///   caller.
/// - Granted and denied entries have their own bounds and TTLs.
/// - Expiry uses a monotonic [`Clock`]: [`CoarseClock`] by default, so an
///   entry may outlive its TTL by one scheduler tick (a few ms).
///
/// ```
/// use auth_core::cache::{Cache, CacheEntry, TtlCache};
/// use auth_core::{CacheConfig, Digest};
///
/// let cache: TtlCache<&str> = TtlCache::new(CacheConfig::default());
/// let d = Digest::of(b"key");
/// let ticket = cache.ticket(&d);
/// cache.invalidate(&d); // a revocation lands while the fill is in flight
/// assert!(!cache.fill(ticket, CacheEntry::Granted("svc")));
/// assert!(cache.get(&d).is_none());
///
/// let ticket = cache.ticket(&d);
/// assert!(cache.fill(ticket, CacheEntry::Granted("svc")));
/// assert_eq!(cache.get(&d), Some(CacheEntry::Granted("svc")));
/// ```
pub struct TtlCache<V> {
    id: u64,
    shards: Box<[ShardCell<V>]>,
    replicate: fn(&V) -> V,
    shard_mask: usize,
    per_shard: usize,
    per_shard_negative: usize,
    ttl: u64,
    negative_ttl: u64,
    /// `None`: the [`CoarseClock`], called directly on the hit path.
    clock: Option<Arc<dyn Clock>>,
}

impl<V> fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlCache")
            .field("shards", &self.shards.len())
            .field("ttl", &Duration::from_nanos(self.ttl))
            .field("negative_ttl", &Duration::from_nanos(self.negative_ttl))
            .finish_non_exhaustive()
    }
}

/// How many entries an eviction looks at before choosing one.
const EVICTION_SAMPLE: usize = 8;

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// A cache on the [`CoarseClock`].
    pub fn new(config: CacheConfig) -> Self {
        Self::build(config, None)
    }

    /// A cache on the given clock.
    pub fn with_clock(config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        Self::build(config, Some(clock))
    }

    fn build(config: CacheConfig, clock: Option<Arc<dyn Clock>>) -> Self {
        let shards = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let per_shard = config.capacity.div_ceil(shards).max(1);
        let per_shard_negative = config.negative_capacity.div_ceil(shards).max(1);
        let hasher = DigestHasher::new();
        let shards: Box<[_]> = (0..shards)
            .map(|_| ShardCell {
                granted_version: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                lock: RwLock::new(Shard {
                    granted: HashMap::with_hasher(hasher),
                    denied: HashMap::with_hasher(hasher),
                    floor: 0,
                }),
            })
            .collect();
        Self {
            id: local::new_owner(),
            replicate: V::clone,
            shard_mask: shards.len() - 1,
            shards,
            per_shard,
            per_shard_negative,
            ttl: nanos(config.ttl),
            negative_ttl: nanos(config.negative_ttl),
            clock,
        }
    }

    /// How a thread makes its private copy of a hot value (default:
    /// `Clone::clone`). For `Arc` values give a deep copy, e.g.
    /// `|p| Arc::new((**p).clone())`, so that threads do not share the
    /// reference count.
    pub fn with_replicate(mut self, replicate: fn(&V) -> V) -> Self {
        self.replicate = replicate;
        self
    }

    #[inline]
    fn now(&self) -> u64 {
        nanos(match &self.clock {
            None => CoarseClock.now(),
            Some(clock) => clock.now(),
        })
    }

    #[inline]
    fn shard(&self, digest: &Digest) -> &ShardCell<V> {
        // The last byte picks the shard; the maps hash the first eight.
        &self.shards[usize::from(digest.as_bytes()[31]) & self.shard_mask]
    }
}

/// Removes one entry from a full map: an expired one among a small sample if
/// there is one, else the sampled one closest to expiry. Returns the stamp
/// of the fill that stored it.
fn evict_one<T>(map: &mut HashMap<Digest, Slot<T>, DigestHasher>, now: u64) -> Option<u64> {
    let victim = map
        .iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, slot)| {
            if slot.expires <= now {
                None
            } else {
                Some(slot.expires)
            }
        })
        .map(|(d, _)| *d);
    victim.and_then(|d| map.remove(&d)).map(|slot| slot.asked)
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// The look-up behind [`Cache::get`], uncounted.
    #[inline]
    fn lookup(&self, digest: &Digest) -> Option<CacheEntry<V>> {
        let now = self.now();
        let cell = self.shard(digest);
        let version = cell.granted_version.load(Ordering::Acquire);
        if let Some(v) = local::get::<V>(self.id, digest, version, now) {
            return Some(CacheEntry::Granted(v));
        }
        let shard = cell.lock.read();
        if let Some(slot) = shard.granted.get(digest) {
            if now >= slot.expires {
                return None;
            }
            let (value, expires) = (slot.value.clone(), slot.expires);
            // Writers bump the version under the write lock: read under the
            // read lock, it matches the entry just read.
            let version = cell.granted_version.load(Ordering::Acquire);
            drop(shard);
            local::offer(self.id, digest, version, expires, || {
                (self.replicate)(&value)
            });
            return Some(CacheEntry::Granted(value));
        }
        match shard.denied.get(digest) {
            Some(slot) if now < slot.expires => Some(CacheEntry::Denied(slot.value)),
            _ => None,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> for TtlCache<V> {
    #[inline]
    fn get(&self, digest: &Digest) -> Option<CacheEntry<V>> {
        self.lookup(digest)
    }

    fn ticket(&self, digest: &Digest) -> FillTicket {
        FillTicket {
            digest: *digest,
            generation: self.shard(digest).generation.load(Ordering::Acquire),
        }
    }

    fn fill(&self, ticket: FillTicket, entry: CacheEntry<V>) -> bool {
        let now = self.now();
        let cell = self.shard(&ticket.digest);
        let mut shard = cell.lock.write();
        let d = ticket.digest;
        // Only an answer asked after the one held (or dropped) for the
        // digest may replace it: a late answer to an older question is not
        // stored.
        let denial = matches!(entry, CacheEntry::Denied(_));
        if !shard.admits(&d, ticket.generation, denial) {
            return false;
        }
        // Tickets taken from now on rank after this answer.
        cell.advance();
        let asked = ticket.generation;
        let mut granted_changed = false;
        // An evicted entry takes its stamp with it: void the tickets older
        // than it, so its digest cannot be filled with an older answer.
        let mut evicted = None;
        match entry {
            CacheEntry::Granted(value) => {
                shard.denied.remove(&d);
                if !shard.granted.contains_key(&d) && shard.granted.len() >= self.per_shard {
                    evicted = evict_one(&mut shard.granted, now);
                    granted_changed |= evicted.is_some();
                }
                let slot = Slot {
                    value,
                    expires: now.saturating_add(self.ttl),
                    asked,
                };
                granted_changed |= shard.granted.insert(d, slot).is_some();
            }
            CacheEntry::Denied(value) => {
                // The newer answer wins: a denial drops any grant held for
                // the digest (on doubt, deny).
                granted_changed |= shard.granted.remove(&d).is_some();
                if !shard.denied.contains_key(&d) && shard.denied.len() >= self.per_shard_negative {
                    evicted = evict_one(&mut shard.denied, now);
                }
                let slot = Slot {
                    value,
                    expires: now.saturating_add(self.negative_ttl),
                    asked,
                };
                shard.denied.insert(d, slot);
            }
        }
        if let Some(asked) = evicted {
            // Nothing asked as early as the forgotten answer may take its place.
            shard.floor = shard.floor.max(asked.saturating_add(1));
        }
        if granted_changed {
            cell.bump();
        }
        true
    }

    fn invalidate(&self, digest: &Digest) {
        let cell = self.shard(digest);
        let mut shard = cell.lock.write();
        shard.granted.remove(digest);
        shard.denied.remove(digest);
        // The dropped entry's stamp is gone with it: void the shard's
        // earlier tickets (for every digest; conservative, and rare).
        shard.floor = cell.advance();
        cell.bump();
    }

    fn clear(&self) {
        for cell in self.shards.iter() {
            let mut shard = cell.lock.write();
            shard.granted.clear();
            shard.denied.clear();
            shard.floor = cell.advance();
            cell.bump();
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|cell| {
                let s = cell.lock.read();
                s.granted.len() + s.denied.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn cache(clock: &Arc<ManualClock>, config: CacheConfig) -> TtlCache<u32> {
        TtlCache::with_clock(config, clock.clone())
    }

    fn put(c: &TtlCache<u32>, d: &Digest, e: CacheEntry<u32>) -> bool {
        c.fill(c.ticket(d), e)
    }

    #[test]
    fn granted_and_denied_expire_on_their_own_ttl() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(10),
                ..CacheConfig::default()
            },
        );
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert!(put(&c, &a, CacheEntry::Granted(1)));
        assert!(put(&c, &b, CacheEntry::Denied(Denial::Invalid)));
        clock.advance(Duration::from_secs(9));
        assert_eq!(c.get(&a), Some(CacheEntry::Granted(1)));
        assert_eq!(c.get(&b), Some(CacheEntry::Denied(Denial::Invalid)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.get(&b), None, "negative entry outlived its TTL");
        clock.advance(Duration::from_secs(49));
        assert_eq!(c.get(&a), Some(CacheEntry::Granted(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.get(&a), None, "positive entry outlived its TTL");
    }

    #[test]
    fn invalidate_and_clear_void_tickets() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(&clock, CacheConfig::default());
        let d = Digest::of(b"k");
        let t = c.ticket(&d);
        c.invalidate(&d);
        assert!(!c.fill(t, CacheEntry::Granted(1)));
        assert_eq!(c.get(&d), None);

        let t = c.ticket(&d);
        c.clear();
        assert!(!c.fill(t, CacheEntry::Granted(1)));
        assert_eq!(c.get(&d), None);

        assert!(put(&c, &d, CacheEntry::Granted(1)));
        c.invalidate(&d);
        assert_eq!(c.get(&d), None);
        assert!(put(&c, &d, CacheEntry::Granted(2)));
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn a_late_older_answer_never_replaces_a_newer_one() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(&clock, CacheConfig::default());
        let d = Digest::of(b"k");

        // An older grant arriving after a newer denial.
        let (t1, t2) = (c.ticket(&d), c.ticket(&d));
        assert!(c.fill(t2, CacheEntry::Denied(Denial::Disabled)));
        assert!(!c.fill(t1, CacheEntry::Granted(1)), "older grant stored");
        assert_eq!(c.get(&d), Some(CacheEntry::Denied(Denial::Disabled)));

        // An older denial arriving after a newer grant (another digest's
        // fill in between makes t2 the later question).
        c.invalidate(&d);
        let t1 = c.ticket(&d);
        assert!(put(&c, &Digest::of(b"other"), CacheEntry::Granted(0)));
        let t2 = c.ticket(&d);
        assert!(c.fill(t2, CacheEntry::Granted(2)));
        assert!(!c.fill(t1, CacheEntry::Denied(Denial::Invalid)));
        assert_eq!(c.get(&d), Some(CacheEntry::Granted(2)));
        // Nor does a ticket fill twice.
        assert!(!c.fill(t2, CacheEntry::Granted(3)));
        assert_eq!(c.get(&d), Some(CacheEntry::Granted(2)));

        // Arrival order does not matter: the later question wins even when
        // the older answer arrives first.
        let d2 = Digest::of(b"k2");
        let t1 = c.ticket(&d2);
        assert!(put(&c, &Digest::of(b"other"), CacheEntry::Granted(0)));
        let t2 = c.ticket(&d2);
        assert!(c.fill(t1, CacheEntry::Granted(7)));
        assert!(c.fill(t2, CacheEntry::Denied(Denial::Disabled)));
        assert_eq!(c.get(&d2), Some(CacheEntry::Denied(Denial::Disabled)));
        // Asked at the same moment: the denial wins, whichever comes last.
        let d3 = Digest::of(b"k3");
        let (t1, t2) = (c.ticket(&d3), c.ticket(&d3));
        assert!(c.fill(t1, CacheEntry::Granted(8)));
        assert!(c.fill(t2, CacheEntry::Denied(Denial::Invalid)));
        let (t1, t2) = (c.ticket(&d3), c.ticket(&d3));
        assert!(c.fill(t1, CacheEntry::Denied(Denial::Expired)));
        assert!(!c.fill(t2, CacheEntry::Granted(9)));
        assert_eq!(c.get(&d3), Some(CacheEntry::Denied(Denial::Expired)));

        // An answer asked after the fill replaces it, of either kind.
        let t3 = c.ticket(&d);
        assert!(c.fill(t3, CacheEntry::Denied(Denial::Expired)));
        assert_eq!(c.get(&d), Some(CacheEntry::Denied(Denial::Expired)));
        assert!(put(&c, &d, CacheEntry::Granted(4)));
        assert_eq!(c.get(&d), Some(CacheEntry::Granted(4)));

        // Expired, the newer answer still outranks an older one.
        let old = c.ticket(&d);
        assert!(put(&c, &d, CacheEntry::Denied(Denial::Disabled)));
        clock.advance(CacheConfig::default().negative_ttl);
        assert_eq!(c.get(&d), None);
        assert!(!c.fill(old, CacheEntry::Granted(5)));
        assert_eq!(c.get(&d), None);
    }

    /// Fills in flight for other digests of the same shard are not voided,
    /// so concurrent first requests for many keys all fill.
    #[test]
    fn a_fill_voids_only_its_own_digest() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                shards: 1,
                ..CacheConfig::default()
            },
        );
        let keys: Vec<Digest> = (0..100u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        let tickets: Vec<FillTicket> = keys.iter().map(|d| c.ticket(d)).collect();
        for (i, t) in tickets.into_iter().enumerate() {
            let entry = if i % 2 == 0 {
                CacheEntry::Granted(i as u32)
            } else {
                CacheEntry::Denied(Denial::Invalid)
            };
            assert!(c.fill(t, entry), "fill {i} voided by another digest's");
        }
        assert_eq!(c.len(), 100);
    }

    /// An evicted entry's digest must not take an answer older than the
    /// one it forgot.
    #[test]
    fn eviction_keeps_older_answers_out() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                capacity: 1,
                negative_capacity: 1,
                shards: 1,
                ..CacheConfig::default()
            },
        );
        let (a, b, x) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"x"));
        let old = c.ticket(&a);
        assert!(put(&c, &a, CacheEntry::Denied(Denial::Disabled)));
        let later = c.ticket(&x);
        assert!(put(&c, &b, CacheEntry::Denied(Denial::Invalid))); // evicts a
        assert_eq!(c.get(&a), None);
        assert!(
            !c.fill(old, CacheEntry::Granted(1)),
            "forgotten denial overwritten"
        );
        assert_eq!(c.get(&a), None);
        // A ticket taken after the forgotten answer still fills.
        assert!(c.fill(later, CacheEntry::Granted(2)));
        assert_eq!(c.get(&x), Some(CacheEntry::Granted(2)));
    }

    #[test]
    fn bounded_and_negative_flood_spares_granted() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                capacity: 64,
                negative_capacity: 64,
                shards: 4,
                ..CacheConfig::default()
            },
        );
        let hot: Vec<Digest> = (0..40u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        for (i, d) in hot.iter().enumerate() {
            put(&c, d, CacheEntry::Granted(i as u32));
        }
        for i in 0..100_000u32 {
            let d = Digest::of(format!("junk{i}").as_bytes());
            put(&c, &d, CacheEntry::Denied(Denial::Invalid));
        }
        let hits = hot.iter().filter(|d| c.get(d).is_some()).count();
        assert_eq!(hits, hot.len(), "denied flood evicted granted entries");
        assert!(
            c.len() <= 64 + 64 + 8,
            "cache grew past its bounds: {}",
            c.len()
        );
        // Granted entries are bounded too.
        for i in 0..10_000u32 {
            put(
                &c,
                &Digest::of(format!("g{i}").as_bytes()),
                CacheEntry::Granted(i),
            );
        }
        assert!(c.len() <= 64 + 64 + 8);
    }

    #[test]
    fn eviction_prefers_expired_entries() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                capacity: 4,
                shards: 1,
                ..CacheConfig::default()
            },
        );
        let old: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
        let keep = Digest::of(b"keep");
        for d in &old {
            put(&c, d, CacheEntry::Granted(0));
        }
        clock.advance(Duration::from_secs(30));
        put(&c, &keep, CacheEntry::Granted(1));
        clock.advance(Duration::from_secs(31)); // the first three have expired
        for i in 0..3u8 {
            put(&c, &Digest::of(&[100 + i]), CacheEntry::Granted(2));
        }
        assert_eq!(c.get(&keep), Some(CacheEntry::Granted(1)));
    }

    /// Hot entries are served from per-thread copies; every change that
    /// removes or replaces a grant must reach those copies at once.
    #[test]
    fn per_thread_copies_never_outlive_a_change() {
        let clock = Arc::new(ManualClock::new());
        let c = Arc::new(cache(&clock, CacheConfig::default()));
        let d = Digest::of(b"hot");
        let warm = |c: &TtlCache<u32>| {
            for _ in 0..3 {
                assert_eq!(c.get(&d), Some(CacheEntry::Granted(1)));
            }
        };
        // invalidate, from another thread
        put(&c, &d, CacheEntry::Granted(1));
        warm(&c);
        let other = Arc::clone(&c);
        std::thread::spawn(move || other.invalidate(&d))
            .join()
            .unwrap();
        assert_eq!(
            c.get(&d),
            None,
            "invalidated grant served from a thread copy"
        );
        // a denial replacing the grant
        put(&c, &d, CacheEntry::Granted(1));
        warm(&c);
        assert!(put(&c, &d, CacheEntry::Denied(Denial::Disabled)));
        assert_eq!(c.get(&d), Some(CacheEntry::Denied(Denial::Disabled)));
        // a new grant replacing the old one
        c.invalidate(&d);
        put(&c, &d, CacheEntry::Granted(1));
        warm(&c);
        put(&c, &d, CacheEntry::Granted(2));
        assert_eq!(c.get(&d), Some(CacheEntry::Granted(2)));
        // clear
        warm_value(&c, &d, 2);
        c.clear();
        assert_eq!(c.get(&d), None);
        // expiry
        put(&c, &d, CacheEntry::Granted(3));
        warm_value(&c, &d, 3);
        clock.advance(CacheConfig::default().ttl);
        assert_eq!(c.get(&d), None, "expired grant served from a thread copy");
    }

    fn warm_value(c: &TtlCache<u32>, d: &Digest, v: u32) {
        for _ in 0..3 {
            assert_eq!(c.get(d), Some(CacheEntry::Granted(v)));
        }
    }

    #[test]
    fn eviction_reaches_thread_copies() {
        let clock = Arc::new(ManualClock::new());
        let c = cache(
            &clock,
            CacheConfig {
                capacity: 1,
                shards: 1,
                ..CacheConfig::default()
            },
        );
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        put(&c, &a, CacheEntry::Granted(1));
        warm_value(&c, &a, 1);
        put(&c, &b, CacheEntry::Granted(2)); // evicts a
        assert_eq!(c.get(&a), None, "evicted entry served from a thread copy");
        assert_eq!(c.get(&b), Some(CacheEntry::Granted(2)));
    }

    #[test]
    fn denial_from_error_never_caches_unavailable() {
        assert_eq!(Denial::from_error(VerifyError::Unavailable), None);
        assert_eq!(
            Denial::from_error(VerifyError::Disabled),
            Some(Denial::Disabled)
        );
        assert_eq!(VerifyError::from(Denial::Expired), VerifyError::Expired);
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let c = Arc::new(TtlCache::<u32>::new(CacheConfig::default()));
        let keys: Vec<Digest> = (0..256u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let c = &c;
                let keys = &keys;
                s.spawn(move || {
                    for round in 0..2_000u32 {
                        let d = &keys[((round * 7 + t) % 256) as usize];
                        match round % 4 {
                            0 => {
                                c.fill(c.ticket(d), CacheEntry::Granted(round));
                            }
                            1 => c.invalidate(d),
                            _ => {
                                let _ = c.get(d);
                            }
                        }
                    }
                });
            }
        });
        assert!(c.len() <= 256);
    }
}
