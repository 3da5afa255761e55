//! The service's Prometheus metrics, served by the metrics router
//! ([`App::metrics`](crate::App::metrics)) on a listener of their own.
//!
//! Counts only: no metric carries a key, a credential, a digest, an id or
//! an owner — every label value is one of a fixed set written here (or the
//! keyring and cache names given in [`crate::build`]).

use std::sync::Arc;
use std::time::Instant;

use auth_core::prometheus::{MetricSource, Metrics, Samples};
use auth_core::protocol::Code;
use auth_sqlx::SqlKeyStore;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label, both halves fixed text.
type Label = [(&'static str, &'static str); 1];
/// Two labels, both halves fixed text.
type Labels2 = [(&'static str, &'static str); 2];

/// What the validate handler answered, put in its response's extensions
/// for [`count_validate`] to read (typed: never read back from the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 200 answer with this protocol code.
    Answered(Code),
    /// 400: the body was not a validate request.
    BadRequest,
    /// 503: the key store failed.
    Unavailable,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered(code) => code.as_str(),
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Set by the changes-stream handler on each of its answers: a 503 without
/// it came from the guard in front (its store failed).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handled;

/// What an admin write was on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Resource {
    /// A client key.
    Key,
    /// A service credential.
    Service,
    /// A webhook endpoint.
    Webhook,
}

/// What an admin write did (as the audit trail records it).
pub(crate) use auth_sqlx::Action;

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Service => "service",
            Self::Webhook => "webhook",
        }
    }

    /// The writes the admin API makes on this resource.
    fn actions(self) -> &'static [Action] {
        match self {
            Self::Key => &[
                Action::Create,
                Action::Update,
                Action::Disable,
                Action::Delete,
                Action::Rotate,
            ],
            Self::Service => &[
                Action::Create,
                Action::Disable,
                Action::Delete,
                Action::Rotate,
            ],
            Self::Webhook => &[Action::Create, Action::Delete, Action::Rotate],
        }
    }
}

/// The service's own metrics and the registry that exports them with the
/// guards' and caches' ([`Metrics`]). The registry is built once, then
/// only read (sources are added through [`Self::sources`], which has its
/// own lock).
pub(crate) struct ServerMetrics {
    registry: Registry,
    sources: Metrics,
    validate_requests: Family<Label, Counter>,
    validate_duration: Histogram,
    store_errors: Counter,
    subscribers: Gauge,
    stream_events: Family<Label, Counter>,
    admin_writes: Family<Labels2, Counter>,
    credit_leases: Family<Label, Counter>,
    usage: Family<Label, Counter>,
    webhook_attempts: Family<Label, Counter>,
}

/// Every `code` of `auth_server_validate_requests_total` but `other`.
const VALIDATE_CODES: [&str; 11] = [
    "valid",
    "invalid",
    "expired",
    "disabled",
    "insufficient_scope",
    "rate_limited",
    "usage_exceeded",
    "bad_request",
    "unauthorized",
    "unavailable",
    "cancelled",
];

impl ServerMetrics {
    /// The registry with every metric of the service, the store's read at
    /// scrape time.
    pub(crate) fn new(store: &SqlKeyStore) -> Self {
        let mut registry = Registry::default();
        let validate_requests = Family::<Label, Counter>::default();
        let validate_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let store_errors = Counter::default();
        let subscribers = Gauge::default();
        let stream_events = Family::<Label, Counter>::default();
        let admin_writes = Family::<Labels2, Counter>::default();
        let credit_leases = Family::<Label, Counter>::default();
        let usage = Family::<Label, Counter>::default();
        let webhook_attempts = Family::<Label, Counter>::default();
        // Every known series from the start, at 0: a rate over a series
        // that appears only on its first event misses that event.
        for code in VALIDATE_CODES {
            let _ = validate_requests.get_or_create(&[("code", code)]);
        }
        for event in ["ready", "key", "reset"] {
            let _ = stream_events.get_or_create(&[("event", event)]);
        }
        for event in ["granted", "returned"] {
            let _ = credit_leases.get_or_create(&[("event", event)]);
        }
        for event in ["counted", "reported"] {
            let _ = usage.get_or_create(&[("event", event)]);
        }
        for outcome in ["delivered", "retry", "failed"] {
            let _ = webhook_attempts.get_or_create(&[("outcome", outcome)]);
        }
        for resource in [Resource::Key, Resource::Service, Resource::Webhook] {
            for action in resource.actions() {
                let _ = admin_writes
                    .get_or_create(&[("resource", resource.as_str()), ("action", action.as_str())]);
            }
        }
        // (The registry ends each help text with a full stop itself.)
        registry.register(
            "auth_server_validate_requests",
            "Validate requests, by answer: the protocol code of a 200, or bad_request, \
             unauthorized (no or an unknown service credential), unavailable, cancelled \
             (the caller hung up first), other",
            validate_requests.clone(),
        );
        registry.register_with_unit(
            "auth_server_validate_duration",
            "Time to answer a validate request, the service-credential check included",
            Unit::Seconds,
            validate_duration.clone(),
        );
        registry.register(
            "auth_server_store_errors",
            "Database failures: a 503 of the admin or validate API, a failed readiness \
             ping, a changes stream that could not start",
            store_errors.clone(),
        );
        registry.register(
            "auth_server_changes_stream_subscribers",
            "Changes streams open now",
            subscribers.clone(),
        );
        registry.register(
            "auth_server_changes_stream_events",
            "Events sent on changes streams (heartbeats not counted)",
            stream_events.clone(),
        );
        registry.register(
            "auth_server_admin_writes",
            "Writes made through the admin API",
            admin_writes.clone(),
        );
        registry.register(
            "auth_server_credit_leases",
            "Credits (not leases) by event: granted, leased to services; returned, given \
             back to keys by the services' returns",
            credit_leases.clone(),
        );
        registry.register(
            "auth_server_usage_decisions",
            "Decisions about keys for the usage counts, by event: counted, answered here; \
             reported, by services in their usage reports",
            usage.clone(),
        );
        registry.register(
            "auth_server_webhook_attempts",
            "Webhook delivery attempts this instance made, by outcome: delivered (a 2xx), \
             retry (failed, another attempt scheduled), failed (failed, retries exhausted)",
            webhook_attempts.clone(),
        );
        let sources = Metrics::register(&mut registry);
        sources.add(StoreSource(store.clone()));
        Self {
            registry,
            sources,
            validate_requests,
            validate_duration,
            store_errors,
            subscribers,
            stream_events,
            admin_writes,
            credit_leases,
            usage,
            webhook_attempts,
        }
    }

    /// Where guards and caches are added.
    pub(crate) fn sources(&self) -> &Metrics {
        &self.sources
    }

    /// A database failure met.
    pub(crate) fn store_error(&self) {
        self.store_errors.inc();
    }

    /// An admin write that happened.
    pub(crate) fn admin_write(&self, resource: Resource, action: Action) {
        self.admin_writes
            .get_or_create(&[("resource", resource.as_str()), ("action", action.as_str())])
            .inc();
    }

    /// Credits leased to a service.
    pub(crate) fn leased(&self, credits: u64) {
        self.credit_leases
            .get_or_create(&[("event", "granted")])
            .inc_by(credits);
    }

    /// Credits a return gave back to a key.
    pub(crate) fn returned(&self, credits: u64) {
        self.credit_leases
            .get_or_create(&[("event", "returned")])
            .inc_by(credits);
    }

    /// Decisions for the usage counts: `counted` here, `reported` by
    /// services.
    pub(crate) fn usage(&self, event: &'static str, decisions: u64) {
        if decisions > 0 {
            self.usage
                .get_or_create(&[("event", event)])
                .inc_by(decisions);
        }
    }

    /// A webhook attempt made: `delivered`, `retry` or `failed`.
    pub(crate) fn webhook_attempt(&self, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// A changes-stream event sent (`ready`, `key`, `reset`).
    pub(crate) fn stream_event(&self, name: &'static str) {
        self.stream_events.get_or_create(&[("event", name)]).inc();
    }

    /// Counts an open changes stream until the returned guard is dropped.
    pub(crate) fn subscriber(&self) -> Subscriber {
        self.subscribers.inc();
        Subscriber(self.subscribers.clone())
    }

    /// The OpenMetrics text of every metric now.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// One open changes stream, counted while this lives: owned by the
/// stream's state, so the count goes down however the stream ends — the
/// client hanging up drops it with the response body.
pub(crate) struct Subscriber(Gauge);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Values the store keeps, read at each scrape.
struct StoreSource(SqlKeyStore);

impl MetricSource for StoreSource {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^53
    fn collect(&self, samples: &mut Samples) {
        let (open, idle) = self.0.pool_connections();
        let in_use = usize::try_from(open).map_or(0, |open| open.saturating_sub(idle));
        for (state, n) in [("in_use", in_use), ("idle", idle)] {
            samples.gauge(
                "auth_server_db_pool_connections",
                "Database pool connections, by state.",
                vec![("state", state.to_owned())],
                n as f64,
            );
        }
        samples.counter(
            "auth_server_usage_dropped",
            "Decisions not counted in the usage counts: too many waiting to be written.",
            Vec::new(),
            self.0.usage_dropped(),
        );
        samples.gauge(
            "auth_server_usage_pending",
            "Key-hours of usage counts waiting to be written.",
            Vec::new(),
            self.0.pending_usage() as f64,
        );
        samples.counter(
            "auth_server_webhook_given_up",
            "Webhook deliveries this instance marked failed for being due longer than the \
             give-up time without an attempt (no instance delivered them in time).",
            Vec::new(),
            self.0.webhook_deliveries_given_up(),
        );
        samples.gauge(
            "auth_server_webhook_pending",
            "Webhook deliveries waiting in the database (every instance's), as this \
             instance's last scan counted them.",
            Vec::new(),
            self.0.webhook_deliveries_pending() as f64,
        );
        samples.gauge(
            "auth_server_changes_following",
            "1 while this instance follows the change log (its changes streams are live).",
            Vec::new(),
            if self.0.following() { 1.0 } else { 0.0 },
        );
        samples.gauge(
            "auth_server_changes_applied_seq",
            "The change log's position applied to this instance's caches.",
            Vec::new(),
            self.0.applied_seq() as f64,
        );
    }
}

/// Around the validate route, outside the service-credential guard: counts
/// each request by its answer and times it — a request whose caller hung up
/// before the answer as `cancelled` (counted when its future is dropped).
pub(crate) async fn count_validate(
    State(metrics): State<Arc<ServerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let mut pending = Counting {
        metrics,
        started: Instant::now(),
        code: None,
    };
    let response = next.run(request).await;
    pending.code = Some(match response.extensions().get::<Outcome>() {
        Some(outcome) => outcome.label(),
        // The handler did not run: the guard refused the caller.
        None => guard_answer(&pending.metrics, response.status()),
    });
    response
}

/// A validate request being answered: counted and timed when dropped,
/// however it ends.
struct Counting {
    metrics: Arc<ServerMetrics>,
    started: Instant,
    /// `None` until answered.
    code: Option<&'static str>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("cancelled");
        self.metrics
            .validate_requests
            .get_or_create(&[("code", code)])
            .inc();
        self.metrics
            .validate_duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Around the changes-stream route, outside the guard: counts the guard's
/// store failures (the handler counts its own).
pub(crate) async fn count_events(
    State(metrics): State<Arc<ServerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if response.extensions().get::<Handled>().is_none() {
        guard_answer(&metrics, response.status());
    }
    response
}

/// The label of an answer the guard (or the router) made, not the
/// handler; a 503 is the guard's store failing.
fn guard_answer(metrics: &ServerMetrics, status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::SERVICE_UNAVAILABLE => {
            metrics.store_error();
            "unavailable"
        }
        _ => "other",
    }
}

/// `GET /metrics`: the OpenMetrics text.
pub(crate) async fn scrape(State(metrics): State<Arc<ServerMetrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => crate::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be encoded",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_validate_request_whose_caller_hangs_up_is_counted_cancelled() {
        use axum::routing::post;
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_store(dir.path(), None).await.unwrap();
        let metrics = Arc::new(ServerMetrics::new(&store));
        // A handler that never answers, behind the counting layer.
        let app = axum::Router::new()
            .route("/v", post(std::future::pending::<Response>))
            .route_layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                count_validate,
            ));
        let request = axum::http::Request::post("/v")
            .body(axum::body::Body::empty())
            .unwrap();
        let mut call = Box::pin(app.oneshot(request));
        assert!(futures_util::FutureExt::now_or_never(&mut call).is_none());
        drop(call);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"auth_server_validate_requests_total{code="cancelled"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("auth_server_validate_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_subscriber_is_counted_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_store(dir.path(), None).await.unwrap();
        let metrics = ServerMetrics::new(&store);
        let a = metrics.subscriber();
        let b = metrics.subscriber();
        assert_eq!(metrics.subscribers.get(), 2);
        drop(a);
        assert_eq!(metrics.subscribers.get(), 1);
        // Owned by a future that never finishes, as a stream's state is:
        // dropping the future (the client hung up) drops the count.
        let mut pending = Box::pin(async move {
            let _held = b;
            std::future::pending::<()>().await;
        });
        assert!(futures_util::FutureExt::now_or_never(&mut pending).is_none());
        assert_eq!(metrics.subscribers.get(), 1);
        drop(pending);
        assert_eq!(metrics.subscribers.get(), 0);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("auth_server_changes_stream_subscribers 0\n"),
            "{text}"
        );
    }
}
