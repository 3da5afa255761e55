#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "axum / tower adapter for auth-core.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::future::{Future, Ready, ready};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

#[cfg(feature = "openapi")]
pub use auth_core::openapi::SecuritySchemes;
use auth_core::{
    Decision, Guard, PassReason, Principal, Rejection, RejectionKind, RequestView, RouteScope,
};
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use futures_util::future::Either;
use tower_layer::Layer;
use tower_service::Service;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A request's parts seen through auth-core's [`RequestView`]. It borrows
/// the parts, not the request: a body is not `Sync`, and the guard's future
/// must stay `Send`.
struct View<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The default sources by constant: a lookup by `&str` parses the
        // name on every request.
        let values = match name {
            "authorization" => self.headers.get_all(AUTHORIZATION),
            "x-api-key" => self.headers.get_all(X_API_KEY),
            other => self.headers.get_all(other),
        };
        values.into_iter().map(HeaderValue::as_bytes)
    }
}

/// auth-core's rejection as a response: status, headers and JSON body, all
/// decided by the core.
fn rejection_response<B: From<String>>(rejection: &Rejection) -> Response<B> {
    let mut response = Response::new(B::from(rejection.body()));
    *response.status_mut() =
        StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    append_headers(response.headers_mut(), rejection.headers());
    response
}

fn append_headers(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // The core's values are visible ASCII; a failure here would be a core bug.
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

/// The tower [`Layer`] that authenticates every request with a [`Guard`].
///
/// Allowed requests reach the inner service with an [`Authenticated`] in
/// their extensions; requests let through without a key (public path,
/// preflight, open or report-only mode) carry an [`Anonymous`]; refused ones
/// are answered at once with the core's rejection.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    guard: Guard,
}

impl AuthLayer {
    /// A layer around `guard`.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The OpenAPI security schemes this guard enforces, as a utoipa
    /// `Modify` for the API document (feature `openapi`).
    #[cfg(feature = "openapi")]
    pub fn security_schemes(&self) -> SecuritySchemes {
        SecuritySchemes::of(&self.guard)
    }

    /// A per-route layer that requires `scope` of requests this layer let
    /// through (403 when the principal lacks it). Put it on the route, with
    /// this layer outside it.
    ///
    /// # Panics
    /// If `scope` is not a valid scope token (visible ASCII without quotes
    /// or backslashes) — a programming error caught at start.
    pub fn require_scope(&self, scope: &str) -> ScopeLayer {
        ScopeLayer {
            check: self
                .guard
                .scope_for_route(scope)
                .unwrap_or_else(|e| panic!("require_scope: {e}")),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    guard: Guard,
}

/// A boxed future, for requests whose check has to wait.
pub type BoxedResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// The future of [`AuthService`] and [`ScopeService`]: the inner service's
/// own future when the decision came at once (no allocation), a ready
/// rejection, or a boxed future when the check had to wait or response
/// headers must be added.
pub type ResponseFuture<F, R, E> =
    Either<F, Either<Ready<Result<R, E>>, BoxedResponseFuture<R, E>>>;

impl<S> AuthService<S> {
    fn view<B>(request: &Request<B>) -> View<'_> {
        View {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.guard.check_now(&Self::view(&request)) {
            Some(decision) => self.decided(decision, request),
            None => {
                // The verifier or limiter has to wait. The clone that was
                // polled ready is the one we call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let guard = self.guard.clone();
                Either::Right(Either::Right(Box::pin(async move {
                    let decision = guard.check(&Self::view(&request)).await;
                    match mark(&guard, decision, &mut request) {
                        Err(rejection) => Ok(rejection_response(&rejection)),
                        Ok(headers) => {
                            let mut response = inner.call(request).await?;
                            append_headers(response.headers_mut(), headers);
                            Ok(response)
                        }
                    }
                })))
            }
        }
    }
}

impl<S> AuthService<S> {
    fn decided<B, RB>(
        &mut self,
        decision: Decision,
        mut request: Request<B>,
    ) -> ResponseFuture<S::Future, Response<RB>, S::Error>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Future: Send + 'static,
        RB: From<String> + Send + 'static,
    {
        match mark(&self.guard, decision, &mut request) {
            Err(rejection) => {
                Either::Right(Either::Left(ready(Ok(rejection_response(&rejection)))))
            }
            Ok(headers) if headers.is_empty() => Either::Left(self.inner.call(request)),
            Ok(headers) => {
                let call = self.inner.call(request);
                Either::Right(Either::Right(Box::pin(async move {
                    let mut response = call.await?;
                    append_headers(response.headers_mut(), headers);
                    Ok(response)
                })))
            }
        }
    }
}

/// Records the decision in the request for handlers and extractors: the
/// rejection to answer with, or the headers to add to the response.
fn mark<B>(
    guard: &Guard,
    decision: Decision,
    request: &mut Request<B>,
) -> Result<Vec<(&'static str, String)>, Rejection> {
    match decision {
        Decision::Allow(grant) => {
            let headers = grant.headers();
            request.extensions_mut().insert(Authenticated {
                principal: grant.into_principal(),
                guard: guard.clone(),
            });
            Ok(headers)
        }
        Decision::Pass(reason) => {
            request.extensions_mut().insert(Anonymous {
                reason,
                guard: guard.clone(),
            });
            Ok(Vec::new())
        }
        Decision::Reject(rejection) => Err(rejection),
    }
}

/// The per-route scope check made by [`AuthLayer::require_scope`].
#[derive(Clone, Debug)]
pub struct ScopeLayer {
    check: RouteScope,
}

impl<S> Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> ScopeService<S> {
        ScopeService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ScopeLayer`].
#[derive(Clone, Debug)]
pub struct ScopeService<S> {
    inner: S,
    layer: ScopeLayer,
}

impl<S, B, RB> Service<Request<B>> for ScopeService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let principal = request.extensions().get::<Authenticated>();
        let passed = request.extensions().get::<Anonymous>().map(|a| a.reason);
        let decided = self
            .layer
            .check
            .check(principal.map(|a| &*a.principal), passed);
        match decided {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(rejection) => {
                Either::Right(Either::Left(ready(Ok(rejection_response(&rejection)))))
            }
        }
    }
}

/// The authenticated caller: an extractor, and what [`AuthLayer`] puts in
/// the request's extensions. Without one the extractor answers 401 (the
/// route is not behind the layer, or the request passed without a key; use
/// `Option<Authenticated>` where that is expected).
#[derive(Clone, Debug)]
pub struct Authenticated {
    principal: Arc<Principal>,
    /// The guard that decided, for extractors that decide more (`Scoped`).
    guard: Guard,
}

impl Authenticated {
    /// The principal, shared.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }
}

impl Deref for Authenticated {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// Why a request passed the layer without a key (public path, preflight,
/// open or report-only mode); in the request's extensions.
#[derive(Clone, Debug)]
pub struct Anonymous {
    reason: PassReason,
    guard: Guard,
}

impl Anonymous {
    /// Why the request passed without a key.
    pub fn reason(&self) -> PassReason {
        self.reason
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AuthRejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| {
                AuthRejection(Rejection::new(
                    RejectionKind::Missing,
                    auth_core::DEFAULT_REALM.into(),
                ))
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Authenticated>().cloned())
    }
}

/// A scope, named by a type, for the [`Scoped`] extractor.
///
/// ```
/// struct Stt;
/// impl auth_axum::ScopeName for Stt {
///     const SCOPE: &'static str = "stt";
/// }
/// ```
pub trait ScopeName: Send + Sync + 'static {
    /// The scope's name.
    const SCOPE: &'static str;
}

/// An extractor that requires the scope `S` (403 when the principal lacks
/// it), deciding with the same guard as [`AuthLayer`] (report-only and open
/// modes included). Holds the principal, or `None` where the request passed
/// without one (open mode, public path).
pub struct Scoped<S: ScopeName> {
    /// The authenticated caller, if any.
    pub principal: Option<Arc<Principal>>,
    scope: std::marker::PhantomData<S>,
}

impl<S: ScopeName> std::fmt::Debug for Scoped<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("scope", &S::SCOPE)
            .field("principal", &self.principal.as_ref().map(|p| p.id()))
            .finish()
    }
}

impl<St: Send + Sync, S: ScopeName> FromRequestParts<St> for Scoped<S> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, AuthRejection> {
        let authenticated = parts.extensions.get::<Authenticated>();
        let anonymous = parts.extensions.get::<Anonymous>();
        let guard = match (authenticated, anonymous) {
            (Some(a), _) => &a.guard,
            (None, Some(a)) => &a.guard,
            // Not behind an AuthLayer: never checked, so refused.
            (None, None) => {
                return Err(AuthRejection(Rejection::new(
                    RejectionKind::Missing,
                    auth_core::DEFAULT_REALM.into(),
                )));
            }
        };
        let principal = authenticated.map(|a| Arc::clone(&a.principal));
        guard
            .route_scope(principal.as_deref(), anonymous.map(|a| a.reason), S::SCOPE)
            .map_err(AuthRejection)?;
        Ok(Self {
            principal,
            scope: std::marker::PhantomData,
        })
    }
}

/// auth-core's [`Rejection`] as an axum response.
#[derive(Clone, Debug)]
pub struct AuthRejection(pub Rejection);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        rejection_response(&self.0)
    }
}

impl From<Rejection> for AuthRejection {
    fn from(r: Rejection) -> Self {
        Self(r)
    }
}
