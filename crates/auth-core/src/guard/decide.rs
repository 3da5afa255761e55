//! The one place that counts, logs, applies the mode and builds the
//! rejection: every outcome of the guard ends in [`Guard::conclude`].

use std::sync::Arc;
use std::time::Duration;

use super::{Decision, Grant, Guard, PassReason};
use crate::metrics::Outcome;
use crate::{
    Digest, ExtractError, Mode, Principal, RateStatus, RefusedAfter, Rejection, RejectionKind,
    Verifier, VerifyError,
};

/// What a step of the decision concluded, before the mode is applied.
pub(super) enum Verdict {
    /// Authenticated (and within the rate limit); the grant holds the
    /// credential's digest.
    Allowed(Grant),
    /// Let through without authentication.
    Passed(PassReason),
    /// Refused, unless the mode lets it through.
    Refused(Refusal),
}

/// Why a request is refused, with what the log and the rejection need.
pub(super) struct Refusal {
    kind: RejectionKind,
    /// The log line's message.
    says: &'static str,
    /// The credential's digest: logged as its fingerprint, never whole.
    fingerprint: Option<Digest>,
    principal: Option<Arc<Principal>>,
    scope: Option<Arc<str>>,
    retry_after: Option<Duration>,
    rate: Option<RateStatus>,
    /// Refused by a route's scope check, after the guard counted the
    /// request: counted apart, so that each request is counted once
    /// among the guard's decisions.
    at_route: bool,
    /// A grant of the verifier refused afterwards: the verifier is told
    /// (with the digest and principal above) when the refusal stands.
    after: Option<RefusedAfter>,
}

impl Refusal {
    pub(super) fn new(kind: RejectionKind) -> Self {
        Self {
            kind,
            says: "denied",
            fingerprint: None,
            principal: None,
            scope: None,
            retry_after: None,
            rate: None,
            at_route: false,
            after: None,
        }
    }

    /// No credential, or not one that can be read.
    pub(super) fn extraction(error: ExtractError) -> Self {
        Self::new(match error {
            ExtractError::Missing => RejectionKind::Missing,
            e => RejectionKind::Malformed(e),
        })
    }

    /// The verifier's "no" (or "could not decide") for the credential.
    #[inline]
    pub(super) fn verification(error: VerifyError, fingerprint: Digest) -> Self {
        let mut refusal = match error {
            VerifyError::Unavailable => {
                Self::new(RejectionKind::Unavailable).saying("verifier unavailable: refusing (503)")
            }
            // The verifier's limit gives no wait: a second, then ask again.
            VerifyError::RateLimited => {
                Self::new(RejectionKind::RateLimited).retry_after(Duration::from_secs(1))
            }
            // Until the next refill; none without one (no point retrying).
            VerifyError::UsageExceeded { retry_after } => {
                let refusal =
                    Self::new(RejectionKind::UsageExceeded).saying("denied: usage exceeded");
                match retry_after {
                    Some(after) => refusal.retry_after(after),
                    None => refusal,
                }
            }
            e => Self::new(RejectionKind::Invalid(e)),
        };
        refusal.fingerprint = Some(fingerprint);
        refusal
    }

    /// A valid credential whose principal lacks `scope`.
    pub(super) fn forbidden(mut self, principal: &Arc<Principal>, scope: Arc<str>) -> Self {
        self.says = "denied: missing scope";
        self.principal = Some(Arc::clone(principal));
        self.scope = Some(scope);
        self.after = Some(RefusedAfter::InsufficientScope);
        self
    }

    /// Over the principal's rate limit.
    pub(super) fn limited(
        principal: Arc<Principal>,
        fingerprint: Digest,
        status: RateStatus,
        retry_after: Duration,
    ) -> Self {
        let mut refusal = Self::new(RejectionKind::RateLimited)
            .saying("denied: rate limited")
            .retry_after(retry_after);
        refusal.principal = Some(principal);
        refusal.fingerprint = Some(fingerprint);
        refusal.rate = Some(status);
        refusal.after = Some(RefusedAfter::RateLimited);
        refusal
    }

    pub(super) fn saying(mut self, says: &'static str) -> Self {
        self.says = says;
        self
    }

    pub(super) fn at_route(mut self) -> Self {
        self.at_route = true;
        self
    }

    pub(super) fn with_fingerprint(mut self, fingerprint: Digest) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Tells `verifier` that its grant was refused, if this refuses one.
    #[inline]
    fn tell(&self, verifier: &dyn Verifier) {
        if let (Some(why), Some(digest), Some(principal)) =
            (self.after, &self.fingerprint, &self.principal)
        {
            verifier.refused_after(digest, principal, why);
        }
    }
}

fn outcome(kind: RejectionKind) -> Outcome {
    match kind {
        RejectionKind::Missing => Outcome::Missing,
        RejectionKind::Malformed(_) => Outcome::Malformed,
        RejectionKind::Invalid(_) => Outcome::Invalid,
        RejectionKind::InsufficientScope => Outcome::Forbidden,
        RejectionKind::RateLimited => Outcome::Limited,
        RejectionKind::UsageExceeded => Outcome::UsageExceeded,
        RejectionKind::Unavailable => Outcome::Unavailable,
        RejectionKind::NotReady => Outcome::NotReady,
    }
}

impl Guard {
    /// The decision for `verdict` in `mode`: counted, logged, and — for a
    /// refusal — the rejection, or in report-only mode a pass.
    #[inline]
    pub(super) fn conclude(&self, mode: Mode, verdict: Verdict, path: &str) -> Decision {
        let s = &*self.shared;
        match verdict {
            Verdict::Allowed(grant) => {
                s.counters.count(Outcome::Allowed);
                tracing::debug!(target: "auth_core", keyring = %s.keyring,
                    principal = grant.principal().id(), fingerprint = %grant.digest.fingerprint(), "allowed");
                Decision::Allow(grant)
            }
            Verdict::Passed(reason) => {
                s.counters.count(match reason {
                    PassReason::PublicPath => Outcome::PassedPublicPath,
                    PassReason::Preflight => Outcome::PassedPreflight,
                    PassReason::Open => Outcome::PassedOpen,
                    PassReason::ReportOnly(_) => Outcome::ReportOnly,
                });
                Decision::Pass(reason)
            }
            Verdict::Refused(refusal) => {
                // Only a refusal that stands moves the verifier's count.
                if mode != Mode::ReportOnly {
                    refusal.tell(&*s.verifier);
                }
                let rejection = self.refuse(refusal);
                if mode == Mode::ReportOnly && rejection.kind() != RejectionKind::NotReady {
                    s.counters.count(Outcome::ReportOnly);
                    tracing::warn!(target: "auth_core", keyring = %s.keyring,
                        outcome = rejection.kind().outcome(), path,
                        "report-only: request would have been refused");
                    return Decision::Pass(PassReason::ReportOnly(rejection.kind()));
                }
                Decision::Reject(rejection)
            }
        }
    }

    /// This guard's rejection of `kind`, neither counted nor logged (for a
    /// request already counted).
    pub(super) fn rejection(&self, kind: RejectionKind) -> Rejection {
        self.build(Refusal::new(kind))
    }

    /// The rejection for `refusal`, counted and logged (with the
    /// credential's fingerprint, never the credential).
    #[inline]
    pub(super) fn refuse(&self, refusal: Refusal) -> Rejection {
        let s = &*self.shared;
        let kind = refusal.kind;
        s.counters.count(match (refusal.at_route, kind) {
            (true, RejectionKind::InsufficientScope) => Outcome::RouteForbidden,
            (true, RejectionKind::Missing) => Outcome::RouteMissing,
            _ => outcome(kind),
        });
        // Displayed only if the event is logged: nothing is formatted for a
        // refusal nobody reads.
        let fingerprint = refusal.fingerprint.as_ref().map(tracing::field::display);
        let principal = refusal.principal.as_deref().map(Principal::id);
        match kind {
            RejectionKind::NotReady => {}
            RejectionKind::Unavailable => {
                tracing::warn!(target: "auth_core", keyring = %s.keyring,
                    fingerprint, "{}", refusal.says);
            }
            _ => {
                tracing::info!(target: "auth_core", keyring = %s.keyring,
                    outcome = kind.outcome(), reason = reason(kind), fingerprint, principal,
                    scope = refusal.scope.as_deref(), "{}", refusal.says);
            }
        }
        self.build(refusal)
    }

    /// The rejection for `refusal`: this guard's challenge and retry hints.
    #[inline]
    fn build(&self, refusal: Refusal) -> Rejection {
        let s = &*self.shared;
        let kind = refusal.kind;
        let mut rejection = Rejection::new(kind, Arc::clone(&s.challenge));
        let retry_after = refusal.retry_after.or(match kind {
            RejectionKind::Unavailable => Some(s.retry_unavailable),
            RejectionKind::NotReady => Some(s.retry_not_ready),
            _ => None,
        });
        if let Some(after) = retry_after {
            rejection = rejection.with_retry_after(after);
        }
        if let Some(scope) = refusal.scope {
            rejection = rejection.with_scope(scope);
        }
        if let Some(rate) = refusal.rate {
            rejection = rejection.with_rate(rate);
        }
        rejection
    }
}

/// A short, fixed reason for the log line.
fn reason(kind: RejectionKind) -> &'static str {
    match kind {
        RejectionKind::Malformed(e) => e.describe(),
        RejectionKind::Invalid(e) => e.reason(),
        kind => kind.outcome(),
    }
}
