//! What a verifier counts for dashboards: calls to the key service by how
//! they ended, calls not made, credits of leases, usage reports, and (with
//! the `prometheus` feature) its cache's hits and misses.

use std::sync::atomic::{AtomicU64, Ordering};

/// How one call to the key service ended, or why none was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Valid,
    Invalid,
    Expired,
    Disabled,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
    /// HTTP 429: busy.
    Throttled,
    /// Connect error, timeout, 5xx, 3xx, a refused credential, a bad answer.
    Failed,
    /// Not made: the circuit is open.
    CircuitOpen,
    /// Not made: the upstream budget is spent.
    OverBudget,
}

impl Call {
    const ALL: [Call; 11] = [
        Call::Valid,
        Call::Invalid,
        Call::Expired,
        Call::Disabled,
        Call::InsufficientScope,
        Call::RateLimited,
        Call::UsageExceeded,
        Call::Throttled,
        Call::Failed,
        Call::CircuitOpen,
        Call::OverBudget,
    ];

    /// The label value.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Call::Valid => "valid",
            Call::Invalid => "invalid",
            Call::Expired => "expired",
            Call::Disabled => "disabled",
            Call::InsufficientScope => "insufficient_scope",
            Call::RateLimited => "rate_limited",
            Call::UsageExceeded => "usage_exceeded",
            Call::Throttled => "throttled",
            Call::Failed => "failed",
            Call::CircuitOpen => "circuit_open",
            Call::OverBudget => "over_budget",
        }
    }

    /// Whether a call was made.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn made(self) -> bool {
        !matches!(self, Call::CircuitOpen | Call::OverBudget)
    }
}

/// Counts by [`Call`]: on the miss path only, so plain shared atomics.
#[derive(Debug, Default)]
pub(crate) struct CallCounts([AtomicU64; Call::ALL.len()]);

impl CallCounts {
    pub(crate) fn count(&self, call: Call) {
        self.0[call as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind with its count.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn all(&self) -> impl Iterator<Item = (Call, u64)> + '_ {
        Call::ALL
            .into_iter()
            .map(|c| (c, self.0[c as usize].load(Ordering::Relaxed)))
    }
}

/// Credits of leases (see `lease`), by what became of them: `leased` =
/// `spent` + `returned` + `lost` + what live leases hold. `spent` is
/// counted when a lease ends (the hot path writes no counter of its own).
#[derive(Debug, Default)]
pub(crate) struct LeaseCounts {
    /// Leased to us by the service.
    pub(crate) leased: AtomicU64,
    /// Spent here, one per request.
    pub(crate) spent: AtomicU64,
    /// Given back, as the service acknowledged.
    pub(crate) returned: AtomicU64,
    /// Not spent and not given back (a failed, refused or cancelled return).
    pub(crate) lost: AtomicU64,
}

impl LeaseCounts {
    /// Every event with its count.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn all(&self) -> [(&'static str, u64); 4] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("leased", n(&self.leased)),
            ("spent", n(&self.spent)),
            ("returned", n(&self.returned)),
            ("lost", n(&self.lost)),
        ]
    }
}

/// Usage counts (see `usage`): decisions reported, and lost by why.
#[derive(Debug, Default)]
pub(crate) struct UsageTally {
    /// Decisions in reports the key service accepted.
    pub(crate) reported: AtomicU64,
    /// Decisions that found the pending counts full.
    pub(crate) lost_full: AtomicU64,
    /// Decisions in reports that failed after they may have arrived (or
    /// were cut short while under way).
    pub(crate) lost_failed: AtomicU64,
    /// Decisions in entries the key service skipped (hours outside its
    /// window), or that were too old to send.
    pub(crate) lost_skipped: AtomicU64,
}

impl UsageTally {
    /// Reported, lost because full, because a report failed, because the
    /// service skipped them.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn all(&self) -> [u64; 4] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            n(&self.reported),
            n(&self.lost_full),
            n(&self.lost_failed),
            n(&self.lost_skipped),
        ]
    }
}

#[cfg(feature = "prometheus")]
impl auth_core::prometheus::MetricSource for crate::RemoteVerifier {
    fn identity(&self) -> Option<usize> {
        Some(std::sync::Arc::as_ptr(&self.inner) as usize)
    }

    fn collect(&self, samples: &mut auth_core::prometheus::Samples) {
        let inner = &*self.inner;
        for (call, n) in inner.calls.all() {
            if call.made() {
                samples.counter(
                    "auth_remote_calls",
                    "Validate calls to the key service, by how they ended.",
                    vec![("outcome", call.name().to_owned())],
                    n,
                );
            } else {
                samples.counter(
                    "auth_remote_calls_skipped",
                    "Calls not made to the key service, by why (one per call: callers waiting on it are not counted).",
                    vec![("reason", call.name().to_owned())],
                    n,
                );
            }
        }
        let state = self.state();
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        samples.gauge(
            "auth_remote_circuit_open",
            "1 while the circuit is open: keys not in the cache cannot be validated.",
            Vec::new(),
            flag(state.circuit_open),
        );
        samples.gauge(
            "auth_remote_stream_live",
            "1 while the changes stream is live: revocations arrive as they happen.",
            Vec::new(),
            flag(state.stream_live),
        );
        let last = state
            .last_answer
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        samples.gauge(
            "auth_remote_last_answer_timestamp_seconds",
            "When the key service last answered a validate call (Unix time; 0: never).",
            Vec::new(),
            last,
        );
        samples.counter(
            "auth_remote_unavailable",
            "Requests answered unavailable (outage, open circuit, throttling, budget).",
            Vec::new(),
            state.unavailable,
        );
        samples.gauge(
            "auth_remote_inflight_calls",
            "Calls under way (distinct keys being asked about).",
            Vec::new(),
            inner.inflight.len() as f64,
        );
        for (event, n) in inner.returns.counts.all() {
            samples.counter(
                "auth_remote_lease_credits",
                "Credits of credit leases: leased to this service, spent here (counted when a lease ends), returned, lost (neither spent nor given back).",
                vec![("event", event.to_owned())],
                n,
            );
        }
        samples.gauge(
            "auth_remote_leases",
            "Credit leases held (one per key with credits in use).",
            Vec::new(),
            inner.leases.lock().len() as f64,
        );
        // Zero while counting is off.
        let [reported, full, failed, skipped] =
            inner.usage.as_ref().map_or([0; 4], |u| u.tally.all());
        samples.counter(
            "auth_remote_usage_reported",
            "Decisions made here without a call (cache hits, leased credits, joined callers, stale grants; a grant refused afterwards counts as its refusal) that the key service accepted in usage reports.",
            Vec::new(),
            reported,
        );
        for (reason, n) in [("full", full), ("failed", failed), ("skipped", skipped)] {
            samples.counter(
                "auth_remote_usage_lost",
                "Decisions never reported: the pending counts were full (full), a report failed or was cut short after it may have arrived (failed; never sent twice), or the key service skipped their hours — older than 7 days or after its next hour (skipped).",
                vec![("reason", reason.to_owned())],
                n,
            );
        }
        samples.cache("remote", &inner.stats);
    }
}
