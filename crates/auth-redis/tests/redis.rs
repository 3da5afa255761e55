//! `RedisLimiter` against a real Redis: the local one
//! (`AUTH_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) for the limits,
//! and a private `redis-server` this test starts, stops and restarts for
//! the outage.
#![allow(unused_crate_dependencies)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auth_core::{RateDecision, RateLimitPolicy, RateLimiter};
use auth_redis::{RedisLimiter, WhenUnreachable};

const START_REDIS: &str = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
    --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

fn redis_url() -> String {
    std::env::var("AUTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other run uses.
fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("auth-redis-test:{test}:{nanos}:")
}

/// A limiter on the local Redis, failing loudly when it is not there.
async fn local(test: &str) -> RedisLimiter {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    if let Err(e) = client.get_multiplexed_async_connection().await {
        panic!("Redis is not reachable at {url} ({e}); start it with: {START_REDIS}");
    }
    RedisLimiter::new(&url)
        .unwrap()
        .prefix(&prefix(test))
        .when_unreachable(WhenUnreachable::Refuse)
}

#[tokio::test]
async fn limits_a_key_and_says_when_to_retry() {
    let limiter = local("basic").await;
    let policy = RateLimitPolicy::new(5, Duration::from_secs(60));
    for expected_remaining in (0..5).rev() {
        match limiter.check("svc-a", &policy).await {
            RateDecision::Allowed(status) => assert_eq!(status.remaining, expected_remaining),
            other => panic!("expected to be allowed, got {other:?}"),
        }
    }
    match limiter.check("svc-a", &policy).await {
        RateDecision::Limited { retry_after, .. } => {
            // One request every 12 s.
            assert!(
                retry_after > Duration::from_secs(11) && retry_after <= Duration::from_secs(12),
                "{retry_after:?}"
            );
        }
        other => panic!("expected to be limited, got {other:?}"),
    }
    // Another key has its own allowance.
    assert!(matches!(
        limiter.check("svc-b", &policy).await,
        RateDecision::Allowed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_limiters_together_admit_the_configured_rate() {
    // 100 requests per second with a burst of 100: over 10 s, 1,100.
    let policy = RateLimitPolicy::new(100, Duration::from_secs(1));
    let test_prefix = prefix("shared");
    let admitted = Arc::new(AtomicU64::new(0));
    let run = Duration::from_secs(10);
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let admitted = admitted.clone();
            let test_prefix = test_prefix.clone();
            tokio::spawn(async move {
                let limiter = local("shared").await.prefix(&test_prefix);
                while start.elapsed() < run {
                    if let RateDecision::Allowed(_) = limiter.check("one-key", &policy).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let expected = 100.0 + 100.0 * run.as_secs_f64();
    assert!(
        (admitted - expected).abs() <= expected * 0.01,
        "4 limiters admitted {admitted}, expected {expected} ± 1 %"
    );
}

/// A private Redis on a free port, stopped when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install Redis (Debian package redis-server)"
                )
            });
        // Owned from here: a panic below still stops it (Drop).
        let redis = Self { port, child };
        let client = redis::Client::open(redis.url().as_str()).unwrap();
        for _ in 0..100 {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return redis;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the private redis-server on port {port} did not answer");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_falls_back_or_refuses_and_recovers() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let redis = PrivateRedis::start(port);
    let url = redis.url();
    let policy = RateLimitPolicy::new(3, Duration::from_secs(60));
    let fallback = RedisLimiter::new(&url).unwrap().prefix("fb:");
    let refuse = RedisLimiter::new(&url)
        .unwrap()
        .prefix("rf:")
        .when_unreachable(WhenUnreachable::Refuse);
    assert!(matches!(
        fallback.check("k", &policy).await,
        RateDecision::Allowed(_)
    ));
    assert!(matches!(
        refuse.check("k", &policy).await,
        RateDecision::Allowed(_)
    ));

    drop(redis);
    // Down: the fallback counts in memory (3 allowed, then limited); the
    // other refuses.
    for _ in 0..3 {
        assert!(matches!(
            fallback.check("k", &policy).await,
            RateDecision::Allowed(_)
        ));
    }
    assert!(matches!(
        fallback.check("k", &policy).await,
        RateDecision::Limited { .. }
    ));
    assert!(fallback.in_outage());
    assert_eq!(refuse.check("k", &policy).await, RateDecision::Unavailable);
    // Within the retry second, answered without trying Redis at all: at
    // once, without a future.
    let start = Instant::now();
    for _ in 0..100 {
        let answer = refuse.check("k", &policy);
        assert!(answer.is_ready(), "decided without waiting");
        assert_eq!(answer.await, RateDecision::Unavailable);
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    // Every check decided without Redis is counted (for the metrics).
    assert_eq!((fallback.fallbacks(), refuse.fallbacks()), (4, 101));
    let mut registry = auth_core::prometheus::prometheus_client::registry::Registry::default();
    let metrics = auth_core::prometheus::Metrics::register(&mut registry);
    metrics.add(fallback.clone()).add(refuse.clone());
    let mut text = String::new();
    auth_core::prometheus::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"auth_redis_limiter_fallbacks_total{prefix="fb:",decided_by="memory"} 4"#,
        r#"auth_redis_limiter_fallbacks_total{prefix="rf:",decided_by="refused"} 101"#,
        r#"auth_redis_limiter_reachable{prefix="fb:"} 0.0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }

    // Back (empty: this Redis keeps nothing): both count in Redis again.
    let redis = PrivateRedis::start(port);
    let mut back = false;
    for _ in 0..50 {
        if matches!(refuse.check("k", &policy).await, RateDecision::Allowed(_)) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the limiter did not reconnect");
    // The fallback limiter returns to Redis too, once its retry time comes.
    let mut shared = false;
    for _ in 0..50 {
        assert!(matches!(
            fallback.check("k2", &policy).await,
            RateDecision::Allowed(_)
        ));
        if !fallback.in_outage() {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared, "the fallback limiter did not return to Redis");
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let stored: Option<String> = redis::cmd("GET").arg("fb:k2").query(&mut c).unwrap();
    assert!(stored.is_some(), "the count is not in Redis after recovery");
}
