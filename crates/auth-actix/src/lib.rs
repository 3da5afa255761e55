#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "actix-web adapter for auth-core.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::fmt;
use std::future::{Future, Ready, ready};
use std::ops::Deref;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
#[cfg(feature = "openapi")]
pub use auth_core::openapi::SecuritySchemes;
use auth_core::{
    Decision, Guard, PassReason, Principal, Rejection, RejectionKind, RequestView, RouteScope,
};
use futures_util::future::{Either, MapOk, TryFutureExt};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A request seen through auth-core's [`RequestView`].
struct View<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
}

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The default sources by constant: a lookup by `&str` parses the
        // name on every request.
        let values = match name {
            "authorization" => self.headers.get_all(AUTHORIZATION),
            "x-api-key" => self.headers.get_all(X_API_KEY),
            other => self.headers.get_all(other),
        };
        values.map(HeaderValue::as_bytes)
    }
}

fn append_headers(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // The core's values are visible ASCII; a failure here would be a core bug.
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

/// auth-core's [`Rejection`] as an actix-web error: status, headers and JSON
/// body, all decided by the core.
#[derive(Clone)]
pub struct AuthError(pub Rejection);

impl fmt::Debug for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::UNAUTHORIZED)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut response =
            HttpResponse::new(self.status_code()).set_body(BoxBody::new(self.0.body()));
        append_headers(response.headers_mut(), self.0.headers());
        response
    }
}

impl From<Rejection> for AuthError {
    fn from(r: Rejection) -> Self {
        Self(r)
    }
}

/// The middleware that authenticates every request with a [`Guard`].
///
/// Allowed requests reach the service with an [`Authenticated`] in their
/// extensions; requests let through without a key carry an [`Anonymous`];
/// refused ones are answered at once with the core's rejection.
#[derive(Clone, Debug)]
pub struct Auth {
    guard: Guard,
}

impl Auth {
    /// Middleware around `guard`.
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

    /// Middleware for a resource or scope that requires `scope` of requests
    /// this middleware let through (403 when the principal lacks it).
    ///
    /// # Panics
    /// If `scope` is not a valid scope token — a programming error caught
    /// at start.
    pub fn require_scope(&self, scope: &str) -> RequireScope {
        RequireScope {
            check: self
                .guard
                .scope_for_route(scope)
                .unwrap_or_else(|e| panic!("require_scope: {e}")),
        }
    }
}

/// The service made by [`Auth`].
#[derive(Debug)]
pub struct AuthMiddleware<S> {
    service: Rc<S>,
    guard: Guard,
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Transform<S, ServiceRequest> for Auth
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = AuthMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AuthMiddleware {
            service: Rc::new(service),
            guard: self.guard.clone(),
        }))
    }
}

impl<S, B> Service<ServiceRequest> for AuthMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Either<
        MapOk<S::Future, fn(ServiceResponse<B>) -> ServiceResponse<EitherBody<B>>>,
        LocalBoxFuture<Result<Self::Response, Self::Error>>,
    >;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let view = View {
            method: request.method().as_str(),
            path: request.path(),
            headers: request.headers(),
        };
        match self.guard.check_now(&view) {
            // At once where no I/O is needed: the service's own future.
            Some(decision) => match mark(decision, &request) {
                Marked::Continue(headers) if headers.is_empty() => {
                    Either::Left(self.service.call(request).map_ok(left_body))
                }
                Marked::Continue(headers) => {
                    let call = self.service.call(request);
                    Either::Right(Box::pin(async move {
                        let mut response = call.await?;
                        append_headers(response.headers_mut(), headers);
                        Ok(response.map_into_left_body())
                    }))
                }
                Marked::Refuse(response) => Either::Right(Box::pin(ready(Ok(request
                    .into_response(response)
                    .map_into_right_body())))),
            },
            None => {
                let service = Rc::clone(&self.service);
                let guard = self.guard.clone();
                Either::Right(Box::pin(async move {
                    let view = View {
                        method: request.method().as_str(),
                        path: request.path(),
                        headers: request.headers(),
                    };
                    let decision = guard.check(&view).await;
                    match mark(decision, &request) {
                        Marked::Continue(headers) => {
                            let mut response = service.call(request).await?;
                            append_headers(response.headers_mut(), headers);
                            Ok(response.map_into_left_body())
                        }
                        Marked::Refuse(response) => {
                            Ok(request.into_response(response).map_into_right_body())
                        }
                    }
                }))
            }
        }
    }
}

fn left_body<B>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    response.map_into_left_body()
}

/// What the middleware does with a decision.
enum Marked {
    /// Call the service, then add these headers.
    Continue(Vec<(&'static str, String)>),
    /// Answer with this.
    Refuse(HttpResponse),
}

/// Records the decision in the request for handlers and extractors.
fn mark(decision: Decision, request: &ServiceRequest) -> Marked {
    match decision {
        Decision::Allow(grant) => {
            let headers = grant.headers();
            request
                .extensions_mut()
                .insert(Authenticated(grant.into_principal()));
            Marked::Continue(headers)
        }
        Decision::Pass(reason) => {
            request.extensions_mut().insert(Anonymous(reason));
            Marked::Continue(Vec::new())
        }
        Decision::Reject(rejection) => Marked::Refuse(AuthError(rejection).error_response()),
    }
}

/// The per-resource scope check made by [`Auth::require_scope`].
#[derive(Clone, Debug)]
pub struct RequireScope {
    check: RouteScope,
}

/// The service made by [`RequireScope`].
#[derive(Debug)]
pub struct RequireScopeMiddleware<S> {
    service: Rc<S>,
    check: RequireScope,
}

impl<S, B> Transform<S, ServiceRequest> for RequireScope
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequireScopeMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireScopeMiddleware {
            service: Rc::new(service),
            check: self.clone(),
        }))
    }
}

impl<S, B> Service<ServiceRequest> for RequireScopeMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let decided = {
            let extensions = request.extensions();
            let principal = extensions.get::<Authenticated>().map(|a| Arc::clone(&a.0));
            let passed = extensions.get::<Anonymous>().map(|a| a.0);
            self.check.check.check(principal.as_deref(), passed)
        };
        match decided {
            Ok(()) => {
                let service = Rc::clone(&self.service);
                Box::pin(async move { Ok(service.call(request).await?.map_into_left_body()) })
            }
            Err(rejection) => {
                let response = AuthError(rejection).error_response();
                Box::pin(ready(Ok(request
                    .into_response(response)
                    .map_into_right_body())))
            }
        }
    }
}

/// The authenticated caller: an extractor, and what [`Auth`] puts in the
/// request's extensions. Without one the extractor answers 401; use
/// `Option<Authenticated>` where that is expected.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Principal>);

impl Deref for Authenticated {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

/// Why a request passed [`Auth`] without a key (public path, preflight,
/// open or report-only mode); in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anonymous(pub PassReason);

impl FromRequest for Authenticated {
    type Error = AuthError;
    type Future = Ready<Result<Self, AuthError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Authenticated>()
                .cloned()
                .ok_or_else(|| {
                    AuthError(Rejection::new(
                        RejectionKind::Missing,
                        auth_core::DEFAULT_REALM.into(),
                    ))
                }),
        )
    }
}
