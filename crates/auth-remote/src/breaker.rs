//! The circuit breaker: after `threshold` consecutive unavailable answers
//! the verifier stops calling, then lets a single probe through after a
//! wait; its answer closes the circuit or doubles the wait (up to the
//! configured cool-down). An outage then costs callers nothing but the
//! fallback, instead of a timeout each, and a service that comes back is
//! used again within about the first wait.
//!
//! Every permitted call is an [`Attempt`]: a guard that must be resolved.
//! One dropped unresolved (the caller hung up, a timeout layer fired)
//! counts as a failure, so a cancelled probe can never leave the circuit
//! half-open for good.

use std::sync::Arc;
use std::time::Duration;

use auth_core::clock::Clock;
use parking_lot::Mutex;

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Duration,
    },
    /// The wait is over; the probe with this number is out.
    Probing {
        probe: u64,
    },
}

#[derive(Debug)]
struct Shared {
    state: State,
    /// The wait before the next probe; doubles after each failed probe.
    wait: Duration,
    /// Numbers the probes, so that a late answer from an older one cannot
    /// decide for the current one.
    probes: u64,
}

/// See the module docs. Times are readings of the verifier's clock.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    first_wait: Duration,
    max_wait: Duration,
    clock: Arc<dyn Clock>,
    shared: Mutex<Shared>,
}

/// A permitted call; resolve it with what came of the call. Dropped
/// unresolved, it counts as a failure.
#[must_use = "an attempt dropped unresolved counts as a failure"]
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    breaker: &'a Breaker,
    /// `Some(number)` for the probe after a wait.
    probe: Option<u64>,
    resolved: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures; probes `first_wait`
    /// after opening, then after twice the previous wait, at most
    /// `max_wait`.
    pub(crate) fn new(
        threshold: u32,
        first_wait: Duration,
        max_wait: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let first_wait = first_wait.min(max_wait);
        Self {
            threshold: threshold.max(1),
            first_wait,
            max_wait,
            clock,
            shared: Mutex::new(Shared {
                state: State::Closed { failures: 0 },
                wait: first_wait,
                probes: 0,
            }),
        }
    }

    /// An attempt, or `None` while the circuit is open (or its probe out).
    pub(crate) fn permit(&self) -> Option<Attempt<'_>> {
        let now = self.clock.now();
        let mut shared = self.shared.lock();
        let probe = match shared.state {
            State::Closed { .. } => None,
            State::Open { until } if now >= until => {
                shared.probes += 1;
                let probe = shared.probes;
                shared.state = State::Probing { probe };
                tracing::debug!(target: "auth_remote", "circuit half-open: probing the key service");
                Some(probe)
            }
            State::Open { .. } | State::Probing { .. } => return None,
        };
        Some(Attempt {
            breaker: self,
            probe,
            resolved: false,
        })
    }

    /// Whether the circuit is open or probing (for metrics and tests).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.shared.lock().state, State::Closed { .. })
    }

    /// Whether `probe` is the probe currently out.
    fn is_current(state: &State, probe: Option<u64>) -> bool {
        matches!((state, probe), (State::Probing { probe: out }, Some(p)) if *out == p)
    }

    fn succeeded(&self) {
        let mut shared = self.shared.lock();
        if !matches!(shared.state, State::Closed { .. }) {
            tracing::info!(target: "auth_remote", "circuit closed: the key service answers again");
        }
        shared.state = State::Closed { failures: 0 };
        shared.wait = self.first_wait;
    }

    fn failed(&self, probe: Option<u64>) {
        let now = self.clock.now();
        let mut shared = self.shared.lock();
        match shared.state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                shared.state = State::Closed {
                    failures: failures + 1,
                };
            }
            State::Closed { .. } => {
                shared.wait = self.first_wait;
                shared.state = State::Open {
                    until: now.saturating_add(shared.wait),
                };
                tracing::warn!(target: "auth_remote",
                    first_probe_ms = u64::try_from(shared.wait.as_millis()).unwrap_or(u64::MAX),
                    "circuit open: not calling the key service until a probe succeeds");
            }
            ref state if Self::is_current(state, probe) => {
                shared.wait = shared.wait.saturating_mul(2).min(self.max_wait);
                shared.state = State::Open {
                    until: now.saturating_add(shared.wait),
                };
                tracing::debug!(target: "auth_remote",
                    next_probe_ms = u64::try_from(shared.wait.as_millis()).unwrap_or(u64::MAX),
                    "probe failed: circuit stays open");
            }
            // A call permitted before the circuit opened, failing late:
            // the probes decide now.
            State::Open { .. } | State::Probing { .. } => {}
        }
    }

    fn throttled(&self, probe: Option<u64>) {
        let now = self.clock.now();
        let mut shared = self.shared.lock();
        // Alive but asking us to slow down: probe again after the same wait.
        if Self::is_current(&shared.state, probe) {
            shared.state = State::Open {
                until: now.saturating_add(shared.wait),
            };
        }
    }

    fn released(&self, probe: Option<u64>) {
        let now = self.clock.now();
        let mut shared = self.shared.lock();
        // Never called: the next caller may probe at once.
        if Self::is_current(&shared.state, probe) {
            shared.state = State::Open { until: now };
        }
    }
}

impl Attempt<'_> {
    /// The service answered (valid or not): the circuit closes.
    pub(crate) fn success(mut self) {
        self.resolved = true;
        self.breaker.succeeded();
    }

    /// The service was unavailable.
    pub(crate) fn failure(mut self) {
        self.resolved = true;
        self.breaker.failed(self.probe);
    }

    /// The service asked us to slow down (429): not a failure, not a
    /// success either; a probe is retried after the same wait.
    pub(crate) fn throttled(mut self) {
        self.resolved = true;
        self.breaker.throttled(self.probe);
    }

    /// No call was made after all (our own budget refused it).
    pub(crate) fn release(mut self) {
        self.resolved = true;
        self.breaker.released(self.probe);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            // The call's future was dropped mid-call: without this a
            // cancelled probe would leave the circuit half-open forever.
            self.breaker.failed(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use auth_core::clock::ManualClock;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker(threshold: u32, first: Duration, max: Duration) -> (Breaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (Breaker::new(threshold, first, max, clock.clone()), clock)
    }

    #[test]
    fn opens_after_threshold_and_probes_once_after_the_wait() {
        let (b, clock) = breaker(3, 10 * S, 10 * S);
        for _ in 0..2 {
            b.permit().unwrap().failure();
        }
        assert!(!b.is_open());
        b.permit().unwrap().failure();
        assert!(b.is_open());
        clock.advance(5 * S);
        assert!(b.permit().is_none());
        clock.advance(5 * S);
        let probe = b.permit().expect("a probe");
        assert!(b.permit().is_none(), "only one probe");
        probe.failure();
        clock.advance(S);
        assert!(b.permit().is_none(), "a failed probe reopens");
        clock.advance(9 * S);
        b.permit().expect("a probe").success();
        assert!(!b.is_open());
        b.permit().expect("closed").success();
    }

    #[test]
    fn a_success_resets_the_count() {
        let (b, _) = breaker(2, S, S);
        b.permit().unwrap().failure();
        b.permit().unwrap().success();
        b.permit().unwrap().failure();
        assert!(!b.is_open());
    }

    #[test]
    fn a_dropped_probe_is_a_failed_probe_and_the_next_one_comes() {
        let (b, clock) = breaker(1, S, 30 * S);
        b.permit().unwrap().failure();
        clock.advance(S);
        drop(b.permit().expect("a probe"));
        assert!(b.is_open());
        assert!(b.permit().is_none());
        clock.advance(2 * S);
        b.permit().expect("the next probe").success();
        assert!(!b.is_open());
    }

    #[test]
    fn a_dropped_call_counts_as_a_failure() {
        let (b, _) = breaker(2, S, S);
        drop(b.permit().unwrap());
        drop(b.permit().unwrap());
        assert!(b.is_open());
    }

    #[test]
    fn the_wait_doubles_up_to_the_cap_and_a_success_resets_it() {
        let (b, clock) = breaker(1, S, 5 * S);
        b.permit().unwrap().failure();
        for wait in [1, 2, 4, 5, 5] {
            clock.advance(wait * S - Duration::from_millis(1));
            assert!(b.permit().is_none(), "probe before {wait} s");
            clock.advance(Duration::from_millis(1));
            b.permit().expect("a probe").failure();
        }
        clock.advance(5 * S);
        b.permit().expect("a probe").success();
        b.permit().unwrap().failure();
        clock.advance(S);
        assert!(b.permit().is_some(), "the wait was reset to the first");
    }

    #[test]
    fn throttled_and_released_probes_do_not_double_the_wait() {
        let (b, clock) = breaker(1, S, 30 * S);
        b.permit().unwrap().failure();
        clock.advance(S);
        b.permit().unwrap().throttled();
        assert!(b.permit().is_none());
        clock.advance(S);
        b.permit().expect("same wait after 429").release();
        b.permit().expect("released: probe again at once").success();
        // Throttled calls never count toward opening.
        for _ in 0..5 {
            b.permit().unwrap().throttled();
        }
        assert!(!b.is_open());
    }

    #[test]
    fn a_huge_cool_down_saturates_instead_of_panicking() {
        let (b, clock) = breaker(1, Duration::MAX, Duration::MAX);
        clock.advance(S);
        b.permit().unwrap().failure();
        assert!(b.permit().is_none());
    }

    #[test]
    fn a_late_answer_from_an_old_call_does_not_decide_for_the_probe() {
        let (b, clock) = breaker(1, S, 30 * S);
        let straggler = b.permit().unwrap();
        b.permit().unwrap().failure();
        clock.advance(S);
        let probe = b.permit().unwrap();
        straggler.failure();
        assert!(b.permit().is_none(), "still probing");
        probe.success();
        assert!(!b.is_open());
    }
}
