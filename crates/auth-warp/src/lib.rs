#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "warp adapter for auth-core.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Arc;

use auth_core::{Decision, Guard, PassReason, Principal, Rejection, RequestView};
use futures_util::future::Either;
use warp::Filter;
use warp::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Reply;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A request seen through auth-core's [`RequestView`].
struct View<'a> {
    method: &'a Method,
    path: &'a FullPath,
    headers: &'a HeaderMap,
}

impl RequestView for View<'_> {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.path.as_str()
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

fn set_headers(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // The core's values are visible ASCII; a failure here would be a core bug.
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

/// auth-core's [`Rejection`] as a warp rejection; [`recover`] answers it.
#[derive(Clone, Debug)]
pub struct AuthRejected(pub Rejection);

impl warp::reject::Reject for AuthRejected {}

/// Answers an [`AuthRejected`] with the core's status, headers and JSON
/// body; passes any other rejection on. Use with `Filter::recover`.
pub async fn recover(rejection: warp::Rejection) -> Result<warp::reply::Response, warp::Rejection> {
    match rejection.find::<AuthRejected>() {
        Some(AuthRejected(r)) => Ok(rejection_response(r)),
        None => Err(rejection),
    }
}

fn rejection_response(rejection: &Rejection) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(rejection.body().into());
    *response.status_mut() =
        StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    set_headers(response.headers_mut(), rejection.headers());
    response
}

/// Who is calling: the authenticated principal, or why the request passed
/// without one (public path, preflight, open or report-only mode).
#[derive(Clone, Debug)]
pub struct Caller {
    principal: Option<Arc<Principal>>,
    passed: Option<PassReason>,
    headers: Vec<(&'static str, String)>,
}

impl Caller {
    /// The authenticated principal, if any.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
    }

    /// The principal's id, if authenticated.
    pub fn id(&self) -> Option<&str> {
        self.principal.as_deref().map(Principal::id)
    }

    /// Why the request passed without a principal, if it did.
    pub fn passed(&self) -> Option<PassReason> {
        self.passed
    }

    /// `reply` with the caller's `RateLimit` / `RateLimit-Policy` headers.
    pub fn reply(&self, reply: impl Reply) -> warp::reply::Response {
        let mut response = reply.into_response();
        set_headers(response.headers_mut(), self.headers.clone());
        response
    }
}

type CallerFuture = Pin<Box<dyn Future<Output = Result<Caller, warp::Rejection>> + Send>>;

/// The caller of an allowed or passed request; the rejection of a refused one.
fn caller(decision: Decision) -> Result<Caller, warp::Rejection> {
    match decision {
        Decision::Allow(grant) => Ok(Caller {
            headers: grant.headers(),
            principal: Some(grant.into_principal()),
            passed: None,
        }),
        Decision::Pass(reason) => Ok(Caller {
            principal: None,
            passed: Some(reason),
            headers: Vec::new(),
        }),
        Decision::Reject(r) => Err(warp::reject::custom(AuthRejected(r))),
    }
}

/// Authentication for warp routes, around a [`Guard`].
#[derive(Clone, Debug)]
pub struct Auth {
    guard: Guard,
}

impl Auth {
    /// Filters around `guard`.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Extracts the [`Caller`], or rejects with [`AuthRejected`]. Put path
    /// filters before it, so that unknown routes stay 404.
    pub fn filter(
        &self,
    ) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone + use<> {
        let guard = self.guard.clone();
        warp::method()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and_then(move |method: Method, path: FullPath, headers: HeaderMap| {
                let view = View {
                    method: &method,
                    path: &path,
                    headers: &headers,
                };
                // At once where no I/O is needed; a boxed future otherwise.
                match guard.check_now(&view) {
                    Some(decision) => Either::Left(ready(caller(decision))),
                    None => {
                        let guard = guard.clone();
                        Either::Right(Box::pin(async move {
                            let view = View {
                                method: &method,
                                path: &path,
                                headers: &headers,
                            };
                            caller(guard.check(&view).await)
                        }) as CallerFuture)
                    }
                }
            })
    }

    /// [`filter`](Auth::filter), and the caller must hold `scope` (403).
    ///
    /// # Panics
    /// If `scope` is not a valid scope token — a programming error caught
    /// at start.
    pub fn with_scope(
        &self,
        scope: &str,
    ) -> impl Filter<Extract = (Caller,), Error = warp::Rejection> + Clone + use<> {
        let check = self
            .guard
            .scope_for_route(scope)
            .unwrap_or_else(|e| panic!("with_scope: {e}"));
        self.filter().and_then(move |caller: Caller| {
            let decided = check.check(caller.principal.as_deref(), caller.passed);
            ready(match decided {
                Ok(()) => Ok(caller),
                Err(r) => Err(warp::reject::custom(AuthRejected(r))),
            })
        })
    }
}
