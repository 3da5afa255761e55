//! Credit leases (issue 16): credits of a key with credits that the key
//! service leased to this service, spent here one per request without a
//! call, and what was not spent given back.
//!
//! A lease rides on the cached grant it came with and is spent from it
//! ([`LocalLease::take`]: one compare-and-swap loop, never below 0, never
//! at or after its deadline). It ends exactly once ([`Returns::end`]):
//! when its grant is replaced, invalidated or cleared, when its deadline
//! comes (a timer task), or when the verifier goes. Ending swaps what is
//! left to 0 — so nothing can be spent of it afterwards — and posts that
//! back to the service in a task of its own.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use auth_core::clock::Clock;
use auth_core::protocol::{LeaseReturned, ReturnLease};
use reqwest::header::{HeaderName, HeaderValue};

use crate::metrics::LeaseCounts;

/// Kept between the end of spending a lease and the service's end of it:
/// time for the return to arrive (the call's own duration comes on top).
pub(crate) const MARGIN: Duration = Duration::from_secs(1);

/// Credits leased to this verifier for one key.
pub(crate) struct LocalLease {
    /// The service's id for it, for the return (never logged).
    id: String,
    /// Credits left to spend here.
    left: AtomicU64,
    /// Credits leased.
    granted: u64,
    /// On the verifier's clock: nothing is taken from then on.
    deadline: Duration,
    /// Whether it ended (its return is made once).
    ended: AtomicBool,
    /// The task that ends it at its deadline.
    timer: OnceLock<tokio::task::AbortHandle>,
    /// The verifier's runtime, for the return (ending may happen where
    /// there is none, e.g. a verifier dropped outside it).
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for LocalLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not its id: whoever holds it (and a service credential) could
        // return it.
        f.debug_struct("LocalLease")
            .field("left", &self.left.load(Ordering::Relaxed))
            .field("granted", &self.granted)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl LocalLease {
    /// A lease of `credits`, spent until `deadline`.
    pub(crate) fn new(
        id: String,
        credits: u64,
        deadline: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            left: AtomicU64::new(credits),
            granted: credits,
            deadline,
            ended: AtomicBool::new(false),
            timer: OnceLock::new(),
            runtime,
        })
    }

    /// Takes one credit for a request: `false` when none is left or the
    /// deadline has come. Every credit is taken once: the loop never goes
    /// below 0, and ending swaps the rest away in one step.
    #[inline]
    pub(crate) fn take(&self, now: Duration) -> bool {
        now < self.deadline
            && self
                .left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Until when it is spent.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The task that ends it at its deadline, aborted when it ends sooner.
    /// Set before the lease is shared; a timer that is not aborted finds
    /// it ended at the deadline and does nothing.
    pub(crate) fn set_timer(&self, timer: tokio::task::AbortHandle) {
        let _ = self.timer.set(timer);
    }

    /// Credits left (tests, `Debug`).
    #[cfg(test)]
    pub(crate) fn left(&self) -> u64 {
        self.left.load(Ordering::Relaxed)
    }
}

/// How leases are given back: what a return task needs, shared with them
/// (never the verifier itself: a return does not keep it alive).
pub(crate) struct Returns {
    pub(crate) client: reqwest::Client,
    /// `{base}/api/v1/api-keys/lease/return`.
    pub(crate) url: String,
    pub(crate) credential: Option<(HeaderName, HeaderValue)>,
    pub(crate) timeout: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) counts: LeaseCounts,
    /// When a failed return was last logged at WARN (see `Health::due`).
    pub(crate) warned: AtomicU64,
}

impl Returns {
    /// Counts credits leased to us.
    pub(crate) fn leased(&self, credits: u64) {
        self.counts.leased.fetch_add(credits, Ordering::Relaxed);
    }

    /// Ends `lease`, once: nothing more is spent of it, and what is left
    /// goes back to the service in a task on the verifier's runtime — the
    /// task's handle, for a caller that waits for it (dropped, it runs on).
    pub(crate) fn end(self: &Arc<Self>, lease: &LocalLease) -> Option<tokio::task::JoinHandle<()>> {
        if lease.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        if let Some(timer) = lease.timer.get() {
            timer.abort();
        }
        let unused = lease.left.swap(0, Ordering::AcqRel);
        self.counts
            .spent
            .fetch_add(lease.granted.saturating_sub(unused), Ordering::Relaxed);
        if unused == 0 {
            return None;
        }
        let returning = Returning {
            returns: Arc::clone(self),
            unused,
            done: false,
        };
        let lease_id = lease.id.clone();
        // A runtime that has shut down drops the task: the guard counts the
        // credits lost.
        Some(lease.runtime.spawn(returning.post(lease_id)))
    }
}

/// One return under way. Dropped before it is answered (the runtime shuts
/// down), its credits count as lost.
struct Returning {
    returns: Arc<Returns>,
    unused: u64,
    done: bool,
}

impl Returning {
    async fn post(mut self, lease_id: String) {
        let r = &*self.returns;
        let body = ReturnLease {
            lease_id,
            unused: self.unused,
        };
        let mut request = r.client.post(&r.url).timeout(r.timeout).json(&body);
        if let Some((name, value)) = &r.credential {
            request = request.header(name.clone(), value.clone());
        }
        let answer = async {
            let response = request.send().await.map_err(|e| {
                (
                    if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect error"
                    } else {
                        "request error"
                    },
                    None,
                )
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(("error status", Some(status.as_u16())));
            }
            let bytes = crate::read_limited(response)
                .await
                .map_err(|why| (why, None))?;
            serde_json::from_slice::<LeaseReturned>(&bytes)
                .map(|a| a.returned)
                .map_err(|_| ("malformed answer", None))
        }
        .await;
        self.done = true;
        let unused = self.unused;
        match answer {
            Ok(returned) => {
                // Never more than we gave back, whatever the answer says.
                let returned = returned.min(unused);
                r.counts.returned.fetch_add(returned, Ordering::Relaxed);
                r.counts
                    .lost
                    .fetch_add(unused - returned, Ordering::Relaxed);
                tracing::debug!(target: "auth_remote", unused, returned, "credit lease returned");
            }
            Err((why, status)) => {
                r.counts.lost.fetch_add(unused, Ordering::Relaxed);
                if crate::Health::due(&r.warned, r.clock.now()) {
                    tracing::warn!(target: "auth_remote", why, status, unused,
                        "a credit lease could not be returned: its unused credits are lost");
                } else {
                    tracing::debug!(target: "auth_remote", why, status, unused,
                        "a credit lease could not be returned: its unused credits are lost");
                }
            }
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if !self.done {
            self.returns
                .counts
                .lost
                .fetch_add(self.unused, Ordering::Relaxed);
            tracing::debug!(target: "auth_remote", unused = self.unused,
                "a credit lease return was cancelled: its unused credits are lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_are_taken_once_never_below_zero_nor_after_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lease = LocalLease::new("l".into(), 3, Duration::from_secs(10), rt.handle().clone());
        let now = Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| lease.take(now)).count(), 3);
        assert_eq!(lease.left(), 0);
        let lease = LocalLease::new("l".into(), 3, Duration::from_secs(10), rt.handle().clone());
        assert!(!lease.take(Duration::from_secs(10)), "at the deadline");
        assert_eq!(lease.left(), 3);
        // Threads racing for the credits take each exactly once.
        let lease = LocalLease::new(
            "l".into(),
            10_000,
            Duration::from_secs(10),
            rt.handle().clone(),
        );
        let taken: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..5_000).filter(|_| lease.take(now)).count()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(taken, 10_000);
        assert!(!format!("{lease:?}").contains("\"l\""));
    }

    #[test]
    fn a_lease_ended_after_its_runtime_is_gone_counts_as_lost_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lease = LocalLease::new("l".into(), 5, Duration::from_secs(10), rt.handle().clone());
        assert!(lease.take(Duration::ZERO));
        drop(rt);
        let returns = Arc::new(Returns {
            client: reqwest::Client::new(),
            url: "http://127.0.0.1:1/return".into(),
            credential: None,
            timeout: Duration::from_secs(1),
            clock: Arc::new(auth_core::clock::ManualClock::new()),
            counts: LeaseCounts::default(),
            warned: AtomicU64::new(0),
        });
        // No runtime to return it on: no panic, the rest is lost.
        returns.end(&lease);
        returns.end(&lease);
        assert!(!lease.take(Duration::ZERO), "nothing is spent once ended");
        let counts = returns.counts.all();
        assert_eq!(
            counts,
            [("leased", 0), ("spent", 1), ("returned", 0), ("lost", 4)]
        );
    }
}
