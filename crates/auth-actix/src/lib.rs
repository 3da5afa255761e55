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
    Admission, Answer, Decision, Guard, Principal, Rejection, RequestView, RouteScope,
};
use futures_util::future::{Either, MapOk, TryFutureExt};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// actix-web's request seen through auth-core's [`RequestView`] (actix-web
/// has its own `http` types, so auth-core's `http` glue does not apply).
struct View<'a>(&'a ServiceRequest);

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.0.method().as_str()
    }

    fn path(&self) -> &str {
        self.0.path()
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The default sources by constant: a lookup by `&str` parses the
        // name on every request.
        let values = match name {
            "authorization" => self.0.headers().get_all(AUTHORIZATION),
            "x-api-key" => self.0.headers().get_all(X_API_KEY),
            other => self.0.headers().get_all(other),
        };
        values.map(HeaderValue::as_bytes)
    }
}

fn append_headers(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // The core's values are visible ASCII; a failure would be a core bug.
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

/// auth-core's [`Rejection`] as an actix-web error: status, headers and JSON
/// body, all decided by the guard.
#[derive(Clone, Debug)]
pub struct AuthRejection(pub Rejection);

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl ResponseError for AuthRejection {
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

impl From<Rejection> for AuthRejection {
    fn from(r: Rejection) -> Self {
        Self(r)
    }
}

/// The middleware that authenticates every request with a [`Guard`].
///
/// Admitted requests reach the service with an [`Admission`] in their
/// extensions (read by [`Authenticated`] and [`require_scope`](Auth::require_scope)),
/// their credential headers marked sensitive, and get the `RateLimit`
/// headers on their response; refused ones are answered at once with the
/// guard's rejection.
#[derive(Clone, Debug)]
pub struct Auth {
    guard: Guard,
    /// The credential headers the guard reads, to mark them sensitive.
    sensitive: Arc<[HeaderName]>,
}

impl Auth {
    /// Middleware around `guard`.
    pub fn new(guard: Guard) -> Self {
        let sources = guard.sources();
        let bearer = sources.reads_bearer().then_some("authorization");
        let names = sources.key_header_names().iter().map(String::as_str);
        let sensitive = (names.chain(bearer))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        Self { guard, sensitive }
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

    /// Middleware for a resource or scope that requires `scope` of what this
    /// middleware admitted (403 when the principal lacks it; see
    /// auth-core's [`RouteScope`]).
    ///
    /// # Panics
    /// If `scope` is not a valid scope token — a programming error caught
    /// at start.
    pub fn require_scope(&self, scope: &str) -> RequireScope {
        RequireScope {
            check: self
                .guard
                .route_scope(scope)
                .unwrap_or_else(|e| panic!("require_scope: {e}")),
        }
    }
}

/// The service made by [`Auth`].
#[derive(Debug)]
pub struct AuthMiddleware<S> {
    service: Rc<S>,
    auth: Auth,
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
            auth: self.clone(),
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

    fn call(&self, mut request: ServiceRequest) -> Self::Future {
        mark_sensitive(request.headers_mut(), &self.auth.sensitive);
        let guard = &self.auth.guard;
        match guard.check(&View(&request)) {
            Answer::Ready(decision) => {
                respond(&*self.service, admit(guard, decision, &request), request)
            }
            Answer::Pending(decision) => {
                let service = Rc::clone(&self.service);
                let guard = guard.clone();
                // Once decided, the same path as a decision made at once.
                Either::Right(Box::pin(async move {
                    let admitted = admit(&guard, decision.await, &request);
                    respond(&*service, admitted, request).await
                }))
            }
        }
    }
}

/// The service's response to an admitted request, with the headers to add;
/// the refusal of a refused one. Nothing to add: the service's own future.
fn respond<S, B>(
    service: &S,
    admitted: Result<Vec<(&'static str, String)>, HttpResponse>,
    request: ServiceRequest,
) -> <AuthMiddleware<S> as Service<ServiceRequest>>::Future
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    match admitted {
        Ok(headers) if headers.is_empty() => Either::Left(service.call(request).map_ok(left_body)),
        Ok(headers) => {
            let call = service.call(request);
            Either::Right(Box::pin(async move {
                let mut response = call.await?;
                append_headers(response.headers_mut(), headers);
                Ok(response.map_into_left_body())
            }))
        }
        Err(refused) => Either::Right(Box::pin(ready(Ok(request
            .into_response(refused)
            .map_into_right_body())))),
    }
}

/// Marks every value of the credential headers sensitive (open and
/// report-only modes and public paths let a header sent twice through).
fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        let Some(first) = headers.get_mut(name) else {
            continue;
        };
        first.set_sensitive(true);
        // Sent more than once (rare): actix-web gives mutable access to the
        // first value only, so the values are taken out and put back.
        if headers.get_all(name).len() > 1 {
            let values: Vec<HeaderValue> = headers.remove(name).collect();
            for mut value in values {
                value.set_sensitive(true);
                headers.append(name.clone(), value);
            }
        }
    }
}

fn left_body<B>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    response.map_into_left_body()
}

/// Stores the admission for handlers and scope checks and gives the
/// headers to add to the response; or the response refusing the request.
fn admit(
    guard: &Guard,
    decision: Decision,
    request: &ServiceRequest,
) -> Result<Vec<(&'static str, String)>, HttpResponse> {
    match guard.admit(decision) {
        Ok(admission) => {
            let headers = admission.headers();
            request.extensions_mut().insert(admission);
            Ok(headers)
        }
        Err(rejection) => Err(AuthRejection(rejection).error_response()),
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
    check: RouteScope,
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
            check: self.check.clone(),
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
    type Future = <AuthMiddleware<S> as Service<ServiceRequest>>::Future;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let decided = self.check.check(request.extensions().get::<Admission>());
        let admitted = decided
            .map(|()| Vec::new())
            .map_err(|rejection| AuthRejection(rejection).error_response());
        respond(&*self.service, admitted, request)
    }
}

/// The authenticated caller: an extractor reading what [`Auth`] stored.
/// Without one it answers 401; use `Option<Authenticated>` where that is
/// expected.
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

impl FromRequest for Authenticated {
    type Error = AuthRejection;
    type Future = Ready<Result<Self, AuthRejection>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let admission = req.extensions();
        ready(
            Admission::authenticated(admission.get::<Admission>())
                .map(Self)
                .map_err(AuthRejection),
        )
    }
}
