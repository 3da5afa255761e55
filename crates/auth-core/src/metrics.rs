//! Counters of decisions by outcome, readable from code so that adapters and
//! services can export them to whatever metrics system they use.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter on its own cache line, so that outcomes counted from different
/// cores do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicU64);

/// Live counters of one guard.
#[derive(Debug, Default)]
pub(crate) struct DecisionCounters {
    allowed: Padded,
    passed_public_path: Padded,
    passed_preflight: Padded,
    passed_open: Padded,
    missing: Padded,
    malformed: Padded,
    invalid: Padded,
    forbidden: Padded,
    limited: Padded,
    usage_exceeded: Padded,
    unavailable: Padded,
    not_ready: Padded,
    report_only: Padded,
    route_forbidden: Padded,
    route_missing: Padded,
}

/// A snapshot of [`DecisionCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecisionCounts {
    /// Authenticated and let through.
    pub allowed: u64,
    /// Let through without authentication: public path, CORS preflight or
    /// open mode (the sum of the three `passed_*` counts).
    pub passed: u64,
    /// Let through: a public path.
    pub passed_public_path: u64,
    /// Let through: a CORS preflight, by configuration.
    pub passed_preflight: u64,
    /// Let through: the guard was in open mode.
    pub passed_open: u64,
    /// No credential.
    pub missing: u64,
    /// Malformed or duplicated credential.
    pub malformed: u64,
    /// Unknown, expired or revoked key.
    pub invalid: u64,
    /// Valid key lacking the scope the guard requires.
    pub forbidden: u64,
    /// Over the rate limit.
    pub limited: u64,
    /// Out of usage credits.
    pub usage_exceeded: u64,
    /// A backend could not decide.
    pub unavailable: u64,
    /// Refused while not initialised.
    pub not_ready: u64,
    /// Would have been refused, let through by report-only mode (also
    /// counted under the outcome that would have applied).
    pub report_only: u64,
    /// Refused by a route's scope check ([`RouteScope`](crate::RouteScope),
    /// an adapter's `require_scope`): a valid key lacking the route's
    /// scope. The guard counted the request already (as allowed): the
    /// guard's counts add up to the requests it decided, these to the
    /// requests routes refused after it.
    pub route_forbidden: u64,
    /// Refused by a route's scope check: a CORS preflight the guard let
    /// through, on a route that requires a scope (counted by the guard as
    /// passed).
    pub route_missing: u64,
}

/// The outcomes that are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    PassedPublicPath,
    PassedPreflight,
    PassedOpen,
    Missing,
    Malformed,
    Invalid,
    Forbidden,
    Limited,
    UsageExceeded,
    Unavailable,
    NotReady,
    ReportOnly,
    RouteForbidden,
    RouteMissing,
}

impl DecisionCounters {
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Allowed => &self.allowed,
            Outcome::PassedPublicPath => &self.passed_public_path,
            Outcome::PassedPreflight => &self.passed_preflight,
            Outcome::PassedOpen => &self.passed_open,
            Outcome::Missing => &self.missing,
            Outcome::Malformed => &self.malformed,
            Outcome::Invalid => &self.invalid,
            Outcome::Forbidden => &self.forbidden,
            Outcome::Limited => &self.limited,
            Outcome::UsageExceeded => &self.usage_exceeded,
            Outcome::Unavailable => &self.unavailable,
            Outcome::NotReady => &self.not_ready,
            Outcome::ReportOnly => &self.report_only,
            Outcome::RouteForbidden => &self.route_forbidden,
            Outcome::RouteMissing => &self.route_missing,
        };
        c.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> DecisionCounts {
        let r = |c: &Padded| c.0.load(Ordering::Relaxed);
        let (public_path, preflight, open) = (
            r(&self.passed_public_path),
            r(&self.passed_preflight),
            r(&self.passed_open),
        );
        DecisionCounts {
            allowed: r(&self.allowed),
            passed: public_path + preflight + open,
            passed_public_path: public_path,
            passed_preflight: preflight,
            passed_open: open,
            missing: r(&self.missing),
            malformed: r(&self.malformed),
            invalid: r(&self.invalid),
            forbidden: r(&self.forbidden),
            limited: r(&self.limited),
            usage_exceeded: r(&self.usage_exceeded),
            unavailable: r(&self.unavailable),
            not_ready: r(&self.not_ready),
            report_only: r(&self.report_only),
            route_forbidden: r(&self.route_forbidden),
            route_missing: r(&self.route_missing),
        }
    }
}
