#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "axum / tower adapter for auth-core.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::ops::Deref;
use std::sync::Arc;

#[cfg(feature = "openapi")]
pub use auth_core::openapi::SecuritySchemes;
use auth_core::tower::{GuardLayer, GuardService, ScopeLayer};
use auth_core::{Admission, Guard, Principal, Rejection};
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use tower_layer::Layer;

/// The tower [`Layer`] that authenticates every request with a [`Guard`]
/// (auth-core's [`GuardLayer`]).
///
/// Admitted requests reach the inner service with an [`Admission`] in their
/// extensions (read by [`Authenticated`] and [`require_scope`](Auth::require_scope))
/// and get the `RateLimit` headers on their response; refused ones are
/// answered at once with the guard's rejection. Credential headers are
/// marked sensitive. Usable on any tower stack over `http` types whose
/// response body can be made from a `String`.
#[derive(Clone, Debug)]
pub struct Auth {
    layer: GuardLayer,
}

impl Auth {
    /// A layer around `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            layer: GuardLayer::new(guard),
        }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        self.layer.guard()
    }

    /// The OpenAPI security schemes this guard enforces, as a utoipa
    /// `Modify` for the API document (feature `openapi`).
    #[cfg(feature = "openapi")]
    pub fn security_schemes(&self) -> SecuritySchemes {
        SecuritySchemes::of(self.guard())
    }

    /// A per-route layer that requires `scope` of what this layer admitted
    /// (403 when the principal lacks it; see auth-core's `RouteScope`). Put
    /// it on the route (`route_layer`), with this layer outside it.
    ///
    /// # Panics
    /// If `scope` is not a valid scope token (visible ASCII without quotes
    /// or backslashes) — a programming error caught at start.
    pub fn require_scope(&self, scope: &str) -> ScopeLayer {
        let check = self
            .guard()
            .route_scope(scope)
            .unwrap_or_else(|e| panic!("require_scope: {e}"));
        ScopeLayer::new(check)
    }
}

impl<S> Layer<S> for Auth {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        self.layer.layer(inner)
    }
}

/// The authenticated caller, for handlers. Without one the extractor
/// answers 401 (the request passed without a key, or the route is not
/// behind [`Auth`]); use `Option<Authenticated>` where that is expected.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Principal>);

impl Authenticated {
    /// The principal, shared.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.0
    }
}

impl Deref for Authenticated {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AuthRejection> {
        Admission::authenticated(parts.extensions.get::<Admission>())
            .map(Self)
            .map_err(AuthRejection)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let admission = parts.extensions.get::<Admission>();
        Ok(admission.and_then(Admission::principal).cloned().map(Self))
    }
}

/// auth-core's [`Rejection`] as an axum response: status, headers and JSON
/// body, all decided by the guard.
#[derive(Clone, Debug)]
pub struct AuthRejection(pub Rejection);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        auth_core::http::response(&self.0)
    }
}

impl From<Rejection> for AuthRejection {
    fn from(r: Rejection) -> Self {
        Self(r)
    }
}
