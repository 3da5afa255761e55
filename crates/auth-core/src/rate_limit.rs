//! Per-principal rate limits: the [`RateLimiter`] trait and an in-memory
//! GCRA implementation.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::Answer;
use crate::clock::nanos;
use crate::clock::{Clock, SystemClock};

/// A rate-limit policy: at most `requests` per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimitPolicy {
    /// Requests admitted per window (at least 1).
    pub requests: u32,
    /// The window length (at least 1 ms).
    pub window: Duration,
}

impl RateLimitPolicy {
    /// `requests` per `window`. Zero values are raised to the smallest
    /// meaningful ones (1 request, 1 ms) so a policy can never divide by zero.
    pub fn new(requests: u32, window: Duration) -> Self {
        Self {
            requests: requests.max(1),
            window: window.max(Duration::from_millis(1)),
        }
    }
}

/// The state of a principal's rate limit after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateStatus {
    /// The policy that was applied.
    pub policy: RateLimitPolicy,
    /// Requests still admitted right now.
    pub remaining: u32,
    /// Time until the allowance is whole again.
    pub reset: Duration,
}

/// What a [`RateLimiter`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateDecision {
    /// Admitted.
    Allowed(RateStatus),
    /// Refused; the next request is admitted after `retry_after` (→ 429).
    Limited {
        /// The state of the limit.
        status: RateStatus,
        /// How long to wait.
        retry_after: Duration,
    },
    /// The limiter's backend could not decide and is configured to fail
    /// closed (→ 503).
    Unavailable,
}

/// Counts requests per key against a policy.
///
/// One method: [`check`](RateLimiter::check) counts the request and answers
/// [`Answer::Ready`] where the state is in memory, or [`Answer::Pending`]
/// with a future that owns what it needs where it lives elsewhere (Redis).
pub trait RateLimiter: Send + Sync {
    /// Counts one request for `key` under `policy`.
    fn check(&self, key: &str, policy: &RateLimitPolicy) -> Answer<RateDecision>;
}

impl<L: RateLimiter + ?Sized> RateLimiter for Arc<L> {
    fn check(&self, key: &str, policy: &RateLimitPolicy) -> Answer<RateDecision> {
        (**self).check(key, policy)
    }
}

/// An in-memory GCRA (generic cell rate algorithm) limiter: one timestamp
/// per key, exact, with bursts up to the policy's `requests`.
///
/// ```
/// use auth_core::{GcraLimiter, RateDecision, RateLimitPolicy, RateLimiter};
/// use std::time::Duration;
///
/// let limiter = GcraLimiter::new();
/// let policy = RateLimitPolicy::new(2, Duration::from_secs(60));
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert!(matches!(rt.block_on(limiter.check("svc", &policy)), RateDecision::Allowed(_)));
/// assert!(matches!(rt.block_on(limiter.check("svc", &policy)), RateDecision::Allowed(_)));
/// assert!(matches!(rt.block_on(limiter.check("svc", &policy)), RateDecision::Limited { .. }));
/// // In memory: the answer is ready, no future is made.
/// assert!(limiter.check("other", &policy).is_ready());
/// ```
pub struct GcraLimiter {
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    per_shard: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for GcraLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcraLimiter").finish_non_exhaustive()
    }
}

const LIMITER_SHARDS: usize = 32;

impl Default for GcraLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl GcraLimiter {
    /// A limiter on the system clock, tracking up to 100,000 keys.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock), 100_000)
    }

    /// A limiter on `clock` tracking up to `max_keys` keys (idle keys are
    /// dropped first when full).
    pub fn with_clock(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        Self {
            shards: (0..LIMITER_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard: max_keys.div_ceil(LIMITER_SHARDS).max(1),
            clock,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, u64>> {
        // FNV-1a: keys are principal ids we issued, not attacker input.
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h as usize) % LIMITER_SHARDS]
    }

    /// Decides one request at `now` (nanoseconds of the limiter's clock).
    fn decide(&self, key: &str, policy: &RateLimitPolicy, now: u64) -> RateDecision {
        // The fields are public: guard against a hand-built zero policy.
        let window = nanos(policy.window).clamp(1, u64::MAX / 4);
        let interval = (window / u64::from(policy.requests.max(1))).max(1);
        // Bursts of up to `requests`: a TAT may run `window - interval` ahead.
        let tolerance = window.saturating_sub(interval);
        let mut map = self.shard(key).lock();
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            let retry = ahead - tolerance;
            return RateDecision::Limited {
                status: RateStatus {
                    policy: *policy,
                    remaining: 0,
                    reset: Duration::from_nanos(ahead),
                },
                retry_after: Duration::from_nanos(retry),
            };
        }
        let new_tat = tat + interval;
        if !map.contains_key(key) && map.len() >= self.per_shard {
            map.retain(|_, t| *t > now);
            if map.len() >= self.per_shard {
                // Still full of active keys: forget the one closest to idle.
                if let Some(k) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.to_owned(), new_tat);
        let used = new_tat - now;
        let remaining = window.saturating_sub(used) / interval;
        RateDecision::Allowed(RateStatus {
            policy: *policy,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(used),
        })
    }
}

impl RateLimiter for GcraLimiter {
    fn check(&self, key: &str, policy: &RateLimitPolicy) -> Answer<RateDecision> {
        Answer::Ready(self.decide(key, policy, nanos(self.clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn admits_the_rate_and_no_more() {
        let clock = Arc::new(ManualClock::new());
        let l = GcraLimiter::with_clock(clock.clone(), 1000);
        let p = RateLimitPolicy::new(10, Duration::from_secs(10));
        let mut admitted = 0;
        // 60 seconds, 10 attempts a second: 10 burst + 1/s afterwards.
        for _ in 0..600 {
            if matches!(block_on(l.check("a", &p)), RateDecision::Allowed(_)) {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(100));
        }
        assert!((69..=71).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn retry_after_and_remaining() {
        let clock = Arc::new(ManualClock::new());
        let l = GcraLimiter::with_clock(clock.clone(), 1000);
        let p = RateLimitPolicy::new(3, Duration::from_secs(3));
        let remaining: Vec<u32> = (0..3)
            .map(|_| match block_on(l.check("a", &p)) {
                RateDecision::Allowed(s) => s.remaining,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        match block_on(l.check("a", &p)) {
            RateDecision::Limited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            block_on(l.check("a", &p)),
            RateDecision::Allowed(_)
        ));
        // Other keys are independent.
        assert!(matches!(
            block_on(l.check("b", &p)),
            RateDecision::Allowed(_)
        ));
    }

    #[test]
    fn hand_built_zero_policy_never_panics() {
        let l = GcraLimiter::new();
        let zero = RateLimitPolicy {
            requests: 0,
            window: Duration::ZERO,
        };
        for _ in 0..3 {
            let _ = block_on(l.check("z", &zero));
        }
    }

    #[test]
    fn bounded_number_of_keys() {
        let clock = Arc::new(ManualClock::new());
        let l = GcraLimiter::with_clock(clock.clone(), 64);
        let p = RateLimitPolicy::new(1, Duration::from_secs(60));
        for i in 0..10_000 {
            block_on(l.check(&format!("k{i}"), &p));
        }
        let total: usize = l.shards.iter().map(|s| s.lock().len()).sum();
        assert!(total <= 64 + LIMITER_SHARDS, "{total}");
    }
}
