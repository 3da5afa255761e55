#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "A distributed rate limiter on Redis.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auth_core::{Answer, GcraLimiter, RateDecision, RateLimitPolicy, RateLimiter, RateStatus};
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

/// GCRA in one atomic step, on the Redis server's clock (so that every
/// instance agrees on "now"). Times in microseconds. KEYS[1]: the key's
/// theoretical arrival time; ARGV[1]: the emission interval (window ÷
/// requests); ARGV[2]: the window (the burst a fresh key may spend).
/// Returns {allowed, remaining, reset, retry_after}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window then
  return {0, 0, tat - now, new_tat - now - window}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((window - (new_tat - now)) / interval), new_tat - now, 0}
";

/// What a [`RedisLimiter`] does while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenUnreachable {
    /// Count in this process's memory instead (limits then hold per
    /// instance, not across them); logged once per outage. The default.
    #[default]
    FallBackToMemory,
    /// Refuse the request with 503 (the core's `RateDecision::Unavailable`).
    Refuse,
}

/// What can go wrong building a [`RedisLimiter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL is malformed.
    #[error("auth-redis: bad Redis URL: {0}")]
    Url(String),
}

/// A [`RateLimiter`] whose counts live in Redis, so that a limit holds
/// across every instance of a service: GCRA (the same algorithm as the
/// core's in-memory [`GcraLimiter`]) as one Lua script, atomic on the
/// server. Keys are the principals' key ids (never secrets), under a
/// prefix.
///
/// Cheap to clone: clones share the connection and the outage state.
///
/// The connection is made on first use and re-made after failures; a call
/// that cannot reach Redis within the timeout (default 250 ms) is decided
/// by [`WhenUnreachable`], and so is every call for the next second, before
/// Redis is tried again — those are answered at once
/// ([`Answer::Ready`](auth_core::Answer)), without a future.
///
/// ```no_run
/// use auth_redis::RedisLimiter;
/// use std::sync::Arc;
///
/// let limiter = RedisLimiter::new("redis://127.0.0.1:6379")?;
/// let guard = auth_core::Guard::builder(auth_core::StaticKey::new("k")?)
///     .rate_limiter(Arc::new(limiter))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A check that goes to Redis is a future that owns what it needs:
///
/// ```no_run
/// use auth_core::{RateDecision, RateLimitPolicy, RateLimiter};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), auth_redis::Error> {
/// let limiter = auth_redis::RedisLimiter::new("redis://127.0.0.1:6379")?;
/// let policy = RateLimitPolicy::new(100, Duration::from_secs(60));
/// match limiter.check("svc-a", &policy).await {
///     RateDecision::Allowed(status) => println!("{} left", status.remaining),
///     RateDecision::Limited { retry_after, .. } => println!("retry in {retry_after:?}"),
///     _ => println!("Redis unreachable"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLimiter {
    /// What the futures of [`check`](RateLimiter::check) share with it.
    shared: Arc<Shared>,
    prefix: String,
    timeout: Duration,
    when_unreachable: WhenUnreachable,
}

/// The connection, the script and the outage state: one per limiter,
/// shared with its checks under way.
struct Shared {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    memory: GcraLimiter,
    outage: AtomicBool,
    /// Checks decided without Redis (by memory, or refused).
    fallbacks: AtomicU64,
    /// During an outage, when to try Redis again: until then requests go
    /// straight to [`WhenUnreachable`], so that an unreachable (or
    /// black-holed) Redis costs each request nothing, not a timeout.
    retry_at: std::sync::Mutex<Option<Instant>>,
}

/// How long an outage keeps requests away from Redis before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("when_unreachable", &self.when_unreachable)
            .field("in_outage", &self.in_outage())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port[/db]`), keys
    /// under `auth:rl:`, falling back to memory when unreachable.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::Url(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                connection: Mutex::new(None),
                script: redis::Script::new(GCRA),
                memory: GcraLimiter::new(),
                outage: AtomicBool::new(false),
                fallbacks: AtomicU64::new(0),
                retry_at: std::sync::Mutex::new(None),
            }),
            prefix: "auth:rl:".into(),
            timeout: Duration::from_millis(250),
            when_unreachable: WhenUnreachable::default(),
        })
    }

    /// Another key prefix (one per service sharing a Redis, or per test).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long a call to Redis may take before it counts as unreachable.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do while Redis cannot be reached.
    pub fn when_unreachable(mut self, what: WhenUnreachable) -> Self {
        self.when_unreachable = what;
        self
    }

    /// Whether the last call failed to reach Redis.
    pub fn in_outage(&self) -> bool {
        self.shared.outage.load(Ordering::Relaxed)
    }

    /// How many checks were decided without Redis so far — counted in
    /// memory or refused, as [`WhenUnreachable`] says — while it could not
    /// be reached.
    pub fn fallbacks(&self) -> u64 {
        self.shared.fallbacks.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "prometheus")]
impl auth_core::prometheus::MetricSource for RedisLimiter {
    fn identity(&self) -> Option<usize> {
        // Clones share the counts: exported once.
        Some(Arc::as_ptr(&self.shared) as usize)
    }

    fn collect(&self, samples: &mut auth_core::prometheus::Samples) {
        let decided_by = match self.when_unreachable {
            WhenUnreachable::FallBackToMemory => "memory",
            WhenUnreachable::Refuse => "refused",
        };
        samples.counter(
            "auth_redis_limiter_fallbacks",
            "Rate-limit checks decided without Redis while it was unreachable.",
            vec![
                ("prefix", self.prefix.clone()),
                ("decided_by", decided_by.to_owned()),
            ],
            self.fallbacks(),
        );
        samples.gauge(
            "auth_redis_limiter_reachable",
            "0 while the last call failed to reach Redis (1 before the first call).",
            vec![("prefix", self.prefix.clone())],
            if self.in_outage() { 0.0 } else { 1.0 },
        );
    }
}

impl Shared {
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = ConnectionManager::new(self.client.clone()).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    fn retry_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.retry_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether Redis is being left alone after a failure (until its retry
    /// time).
    fn resting(&self) -> bool {
        self.retry_at().is_some_and(|at| Instant::now() < at)
    }

    /// The script's answer, or `None` when Redis could not be reached.
    async fn ask(
        &self,
        redis_key: &str,
        policy: &RateLimitPolicy,
        timeout: Duration,
        when_unreachable: WhenUnreachable,
    ) -> Option<[i64; 4]> {
        if self.resting() {
            return None;
        }
        let window = i64::try_from(policy.window.as_micros()).unwrap_or(i64::MAX);
        let interval = (window / i64::from(policy.requests.max(1))).max(1);
        let call = async {
            let mut c = self.connection().await?;
            self.script
                .key(redis_key)
                .arg(interval)
                .arg(window)
                .invoke_async::<Vec<i64>>(&mut c)
                .await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(v)) if v.len() == 4 => {
                *self.retry_at() = None;
                if self.outage.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "auth_redis", "Redis reachable again: limits are shared");
                }
                Some([v[0], v[1], v[2], v[3]])
            }
            failed => {
                let why = match failed {
                    Ok(Ok(_)) => "unexpected script answer".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timeout".to_owned(),
                };
                // The rest period and the outage first: a caller that hangs
                // up during the await below must not lose them.
                *self.retry_at() = Some(Instant::now() + RETRY_AFTER);
                if !self.outage.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "auth_redis", why,
                        fallback = ?when_unreachable,
                        "Redis unreachable: rate limits are not shared until it is back");
                }
                // A fresh connection next time (the manager may be wedged).
                self.forget_connection().await;
                None
            }
        }
    }

    /// The decision while Redis cannot be reached.
    fn unreachable(
        &self,
        key: &str,
        policy: &RateLimitPolicy,
        when_unreachable: WhenUnreachable,
    ) -> Answer<RateDecision> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        match when_unreachable {
            WhenUnreachable::FallBackToMemory => self.memory.check(key, policy),
            WhenUnreachable::Refuse => Answer::Ready(RateDecision::Unavailable),
        }
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl RateLimiter for RedisLimiter {
    fn check(&self, key: &str, policy: &RateLimitPolicy) -> Answer<RateDecision> {
        // During an outage, until the retry time: decided now, no future.
        if self.shared.resting() {
            return self.shared.unreachable(key, policy, self.when_unreachable);
        }
        // The future owns what it needs: the shared state, the Redis key
        // (prefix included; the in-memory fallback counts the key alone)
        // and the policy.
        let shared = Arc::clone(&self.shared);
        let redis_key = format!("{}{key}", self.prefix);
        let prefix_len = self.prefix.len();
        let policy = *policy;
        let (timeout, when_unreachable) = (self.timeout, self.when_unreachable);
        Answer::pending(async move {
            let asked = shared
                .ask(&redis_key, &policy, timeout, when_unreachable)
                .await;
            let Some([allowed, remaining, reset, retry]) = asked else {
                let key = &redis_key[prefix_len..];
                return shared.unreachable(key, &policy, when_unreachable).await;
            };
            let status = RateStatus {
                policy,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset: micros(reset),
            };
            if allowed == 1 {
                RateDecision::Allowed(status)
            } else {
                RateDecision::Limited {
                    status,
                    retry_after: micros(retry),
                }
            }
        })
    }
}
