//! A tower layer around a [`Guard`] (feature `tower`), written once for
//! every framework whose services are tower services over `http` types:
//! axum's router, warp's `warp::service`, hyper, tonic. The adapters wrap
//! it under their own names.
//!
//! [`GuardLayer`] decides each request in one pass; an admitted request
//! reaches the inner service with an [`Admission`] in its extensions, its
//! credential headers marked sensitive, and the `RateLimit` headers added
//! to the response; a refused one is answered at once with the guard's
//! rejection. [`ScopeLayer`] requires a scope of what the guard admitted.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::answer::BoxFuture;
use crate::http::{CredentialHeaders, append_headers, response};
use crate::{Admission, Answer, Decision, Guard, RouteScope};

/// The layer that authenticates every request with a [`Guard`].
#[derive(Clone, Debug)]
pub struct GuardLayer {
    guard: Guard,
    headers: CredentialHeaders,
}

impl GuardLayer {
    /// A layer around `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            headers: CredentialHeaders::of(guard.sources()),
            guard,
        }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct GuardService<S> {
    inner: S,
    layer: GuardLayer,
}

/// The future of [`GuardService`] and [`ScopeService`]: the inner service's
/// own future when the decision came at once and there is no header to add
/// (no allocation), a ready rejection, or a boxed future when the guard had
/// to wait or response headers must be added.
pub type ResponseFuture<F, R, E> = Either<F, Either<Ready<Result<R, E>>, BoxFuture<Result<R, E>>>>;

impl<S, B, RB> Service<Request<B>> for GuardService<S>
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
        self.layer.headers.mark_sensitive(request.headers_mut());
        match self.layer.guard.check(&request) {
            Answer::Ready(decision) => self.decided(decision, request),
            Answer::Pending(decision) => {
                // The clone that was polled ready is the one we call
                // (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let guard = self.layer.guard.clone();
                Either::Right(Either::Right(Box::pin(async move {
                    match guard.admit(decision.await) {
                        Err(rejection) => Ok(response(&rejection)),
                        Ok(admission) => {
                            let headers = admission.headers();
                            request.extensions_mut().insert(admission);
                            let mut answer = inner.call(request).await?;
                            append_headers(answer.headers_mut(), headers);
                            Ok(answer)
                        }
                    }
                })))
            }
        }
    }
}

impl<S> GuardService<S> {
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
        match self.layer.guard.admit(decision) {
            Err(rejection) => Either::Right(Either::Left(ready(Ok(response(&rejection))))),
            Ok(admission) => {
                let headers = admission.headers();
                request.extensions_mut().insert(admission);
                if headers.is_empty() {
                    return Either::Left(self.inner.call(request));
                }
                let call = self.inner.call(request);
                Either::Right(Either::Right(Box::pin(async move {
                    let mut answer = call.await?;
                    append_headers(answer.headers_mut(), headers);
                    Ok(answer)
                })))
            }
        }
    }
}

/// A per-route layer that requires a scope of what a [`GuardLayer`] in
/// front admitted (see [`RouteScope`]).
#[derive(Clone, Debug)]
pub struct ScopeLayer {
    check: RouteScope,
}

impl ScopeLayer {
    /// A layer checking `check`.
    pub fn new(check: RouteScope) -> Self {
        Self { check }
    }
}

impl<S> Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> ScopeService<S> {
        ScopeService {
            inner,
            check: self.check.clone(),
        }
    }
}

/// The service made by [`ScopeLayer`].
#[derive(Clone, Debug)]
pub struct ScopeService<S> {
    inner: S,
    check: RouteScope,
}

impl<S, B, RB> Service<Request<B>> for ScopeService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.check.check(request.extensions().get::<Admission>()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(rejection) => Either::Right(Either::Left(ready(Ok(response(&rejection))))),
        }
    }
}
