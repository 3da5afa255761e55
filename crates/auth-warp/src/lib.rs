#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(not(any(doc, test)), doc = "warp adapter for auth-core.")]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::future::{Future, ready};
use std::ops::Deref;
use std::sync::Arc;

use auth_core::tower::{GuardLayer, GuardService};
use auth_core::{Admission, Guard, Principal, Rejection, RouteScope};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_layer::Layer;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Reply;

/// Authentication for warp: the tower [`Layer`] (auth-core's
/// [`GuardLayer`]) that decides every request once, in front of
/// `warp::service(routes)` — run both with [`serve`] — and the filters that
/// read its decision in the routes.
///
/// Admitted requests reach the routes with an [`Admission`] in their
/// extensions, their credential headers marked sensitive, and get the
/// `RateLimit` headers on the reply; refused ones are answered at once with
/// the guard's rejection.
#[derive(Clone, Debug)]
pub struct Auth {
    layer: GuardLayer,
}

impl Auth {
    /// Authentication with `guard`.
    pub fn new(guard: Guard) -> Self {
        Self {
            layer: GuardLayer::new(guard),
        }
    }

    /// The guard.
    pub fn guard(&self) -> &Guard {
        self.layer.guard()
    }

    /// Extracts the caller, `None` where the request passed without one
    /// (public path, preflight, open or report-only mode). A request that
    /// did not come through this layer is rejected (401).
    pub fn caller(
        &self,
    ) -> impl Filter<Extract = (Option<Authenticated>,), Error = warp::Rejection> + Clone + use<>
    {
        self.checked(None)
    }

    /// Extracts the [`Authenticated`] caller; a request that passed without
    /// one is rejected (401).
    pub fn authenticated(
        &self,
    ) -> impl Filter<Extract = (Authenticated,), Error = warp::Rejection> + Clone + use<> {
        let guard = self.guard().clone();
        admission().and_then(move |admission: Option<Admission>| {
            let admitted = guard.admitted(admission.as_ref());
            ready(
                admitted
                    .and_then(|a| Admission::authenticated(Some(a)))
                    .map(Authenticated)
                    .map_err(reject),
            )
        })
    }

    /// [`caller`](Auth::caller), and the caller must hold `scope` (403;
    /// see auth-core's [`RouteScope`]).
    ///
    /// # Panics
    /// If `scope` is not a valid scope token — a programming error caught
    /// at start.
    pub fn require_scope(
        &self,
        scope: &str,
    ) -> impl Filter<Extract = (Option<Authenticated>,), Error = warp::Rejection> + Clone + use<>
    {
        let check = self
            .guard()
            .route_scope(scope)
            .unwrap_or_else(|e| panic!("require_scope: {e}"));
        self.checked(Some(check))
    }

    fn checked(
        &self,
        scope: Option<RouteScope>,
    ) -> impl Filter<Extract = (Option<Authenticated>,), Error = warp::Rejection> + Clone + use<>
    {
        let guard = self.guard().clone();
        admission().and_then(move |admission: Option<Admission>| {
            let checked = match &scope {
                Some(scope) => scope.check(admission.as_ref()),
                // Made by this layer's guard, or refused as never checked.
                None => guard.admitted(admission.as_ref()).map(drop),
            };
            let caller = admission.and_then(|a| a.principal().cloned().map(Authenticated));
            ready(checked.map(|()| caller).map_err(reject))
        })
    }
}

impl<S> Layer<S> for Auth {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        self.layer.layer(inner)
    }
}

/// The admission the layer stored, if it ran.
fn admission()
-> impl Filter<Extract = (Option<Admission>,), Error = std::convert::Infallible> + Copy {
    warp::ext::optional::<Admission>()
}

fn reject(rejection: Rejection) -> warp::Rejection {
    warp::reject::custom(AuthRejection(rejection))
}

/// The authenticated caller, as the filters extract it.
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

/// auth-core's [`Rejection`] as a warp rejection; [`recover`] answers it.
#[derive(Clone, Debug)]
pub struct AuthRejection(pub Rejection);

impl warp::reject::Reject for AuthRejection {}

/// Answers an [`AuthRejection`] with the guard's status, headers and JSON
/// body; passes any other rejection on. Use with `Filter::recover`.
pub async fn recover(rejection: warp::Rejection) -> Result<warp::reply::Response, warp::Rejection> {
    match rejection.find::<AuthRejection>() {
        Some(AuthRejection(r)) => Ok(auth_core::http::response(r)),
        None => Err(rejection),
    }
}

/// Serves `routes` behind `auth` on `listener` (HTTP/1 and HTTP/2, as
/// `warp::serve` does) until `shutdown` resolves, then lets open
/// connections finish. A failed accept is logged and retried, never the end
/// of the server; a connection that does not send its request headers
/// within hyper's default (30 s) is closed.
pub async fn serve<T: Reply + 'static>(
    listener: tokio::net::TcpListener,
    auth: Auth,
    routes: BoxedFilter<(T,)>,
    shutdown: impl Future<Output = ()>,
) {
    let service = TowerToHyperService::new(auth.layer(warp::service(routes)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, a connection reset before it was
                // accepted: the server goes on (as `warp::serve` does),
                // after a pause so that a persistent error does not spin.
                Err(error) => {
                    tracing::warn!(target: "auth_warp", %error, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A timer: hyper then bounds how long a client may take to send
        // its request headers.
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        tokio::spawn(graceful.watch(connection));
    }
    graceful.shutdown().await;
}
