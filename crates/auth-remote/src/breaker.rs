//! The circuit breaker: after `threshold` consecutive unavailable answers
//! the verifier stops calling for a cool-down, then lets a single probe
//! through; its answer closes or reopens the circuit. An outage then costs
//! callers nothing but the fallback, instead of a timeout each.

use std::time::Duration;

use parking_lot::Mutex;

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Duration,
    },
    /// Cool-down over; one probe is out.
    Probing,
}

/// See the module docs. Times are the verifier's clock readings.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// What the breaker lets a caller do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Call the service.
    Call,
    /// Call it: this is the one probe after a cool-down.
    Probe,
    /// Do not call: the circuit is open.
    Refused,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub(crate) fn permit(&self, now: Duration) -> Permit {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Permit::Call,
            State::Open { until } if now >= until => {
                *state = State::Probing;
                tracing::info!(target: "auth_remote", "circuit half-open: probing the key service");
                Permit::Probe
            }
            State::Open { .. } | State::Probing => Permit::Refused,
        }
    }

    /// The service answered (valid or not).
    pub(crate) fn success(&self) {
        let mut state = self.state.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!(target: "auth_remote", "circuit closed: the key service answers again");
        }
        *state = State::Closed { failures: 0 };
    }

    /// The service was unavailable.
    pub(crate) fn failure(&self, now: Duration) {
        let mut state = self.state.lock();
        let open = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::Probing | State::Open { .. } => true,
        };
        if open {
            *state = State::Open {
                until: now + self.cooldown,
            };
            tracing::warn!(target: "auth_remote", cooldown_ms = self.cooldown.as_millis() as u64,
                "circuit open: not calling the key service until the cool-down ends");
        }
    }

    /// Whether the circuit is open or probing (for metrics and tests).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_threshold_and_probes_once_after_cooldown() {
        let b = Breaker::new(3, 10 * S);
        for _ in 0..2 {
            assert_eq!(b.permit(S), Permit::Call);
            b.failure(S);
        }
        assert!(!b.is_open());
        b.failure(S);
        assert!(b.is_open());
        assert_eq!(b.permit(5 * S), Permit::Refused);
        assert_eq!(b.permit(11 * S), Permit::Probe);
        assert_eq!(b.permit(11 * S), Permit::Refused, "only one probe");
        b.failure(11 * S);
        assert_eq!(b.permit(12 * S), Permit::Refused, "a failed probe reopens");
        assert_eq!(b.permit(21 * S), Permit::Probe);
        b.success();
        assert_eq!(b.permit(21 * S), Permit::Call);
        assert!(!b.is_open());
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(2, S);
        b.failure(S);
        b.success();
        b.failure(S);
        assert!(!b.is_open());
    }
}
