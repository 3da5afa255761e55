//! The one way to require a scope on a route: [`RouteScope`], made by
//! [`Guard::route_scope`], decided against what the guard let through.

use std::sync::Arc;

use super::decide::{Refusal, Verdict};
use super::{Admission, Admitted, Guard, PassReason};
use crate::{Error, Mode, Rejection, RejectionKind};

/// A route's scope requirement, checked against the [`Admission`] its guard
/// stored on the request. Adapters hold one per scoped route (their
/// `require_scope`).
///
/// - An authenticated caller without the scope: 403 (logged and let
///   through in report-only mode).
/// - A public path, open mode or a report-only pass needs no scope.
/// - A CORS preflight never satisfies a scope: it is decided as the request
///   without a credential it is — 401, except in open mode (let through) and
///   report-only mode (logged, let through). Put the CORS layer in front of
///   a scoped route.
/// - A request that reached the route without an admission from this
///   route's guard was never checked by it (no guard in front, or another
///   guard's): 401.
///
/// ```
/// use auth_core::{Guard, PlainRequest, Principal, KeySet};
///
/// let keys = KeySet::new().with_key("k", Principal::new("svc").with_scopes(["tts"])).unwrap();
/// let guard = Guard::builder(keys).build().unwrap();
/// let stt = guard.route_scope("stt").unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let decision = rt.block_on(guard.check(&PlainRequest::get("/stt").header("x-api-key", "k")));
/// let admission = guard.admit(decision).unwrap();
/// assert_eq!(stt.check(Some(&admission)).unwrap_err().status(), 403);
/// assert_eq!(stt.check(None).unwrap_err().status(), 401);
/// assert!(guard.route_scope("bad scope\"").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct RouteScope {
    guard: Guard,
    scope: Arc<str>,
}

impl RouteScope {
    pub(super) fn new(guard: Guard, scope: &str) -> Result<Self, Error> {
        check_scope_token(scope)?;
        Ok(Self {
            guard,
            scope: scope.into(),
        })
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Decides a request that reached the route, from what its guard stored
    /// (`None`: no guard ran).
    pub fn check(&self, admission: Option<&Admission>) -> Result<(), Rejection> {
        let guard = &self.guard;
        let admission = guard.admitted(admission)?;
        let mode = guard.mode();
        let refusal = match admission.admitted() {
            Admitted::Authenticated(p) if p.has_scope(&self.scope) => return Ok(()),
            Admitted::Authenticated(p) => {
                let refusal = Refusal::new(RejectionKind::InsufficientScope)
                    .forbidden(p, self.scope.clone())
                    .at_route();
                // The digest lets the verifier move its grant's count.
                match admission.digest() {
                    Some(digest) => refusal.with_fingerprint(*digest),
                    None => refusal,
                }
            }
            // The preflight pass skipped authentication, not the mode: decide
            // it as the request without a credential it is.
            Admitted::Passed(PassReason::Preflight) if mode == Mode::Open => return Ok(()),
            Admitted::Passed(PassReason::Preflight) => {
                Refusal::new(RejectionKind::Missing).at_route()
            }
            Admitted::Passed(_) => return Ok(()),
        };
        match guard.conclude(mode, Verdict::Refused(refusal), "") {
            super::Decision::Reject(rejection) => Err(rejection),
            _ => Ok(()),
        }
    }
}

/// RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E.
pub(super) fn check_scope_token(scope: &str) -> Result<(), Error> {
    if scope.is_empty()
        || !scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(Error::Config(format!(
            "scope `{}` must be visible ASCII without quotes or backslashes",
            scope.escape_debug()
        )));
    }
    Ok(())
}
