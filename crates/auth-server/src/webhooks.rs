//! Webhooks (issue 17): the admin API's `/api/v1/webhooks`, and the
//! deliverer every instance runs — it queues the events of time, claims
//! due deliveries from the database and POSTs them, signed in the Standard
//! Webhooks format ([`auth_core::webhook`]). The queue and the claims are
//! the store's (`auth_sqlx`): a delivery survives a restart, and one
//! instance makes each attempt.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use auth_core::webhook::{EventType, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use auth_sqlx::{
    Claimed, CreatedWebhook, DEFAULT_CREDITS_BELOW, DEFAULT_EXPIRING_DAYS, Delivery,
    DeliveryStatus, Failure, MAX_DELIVERY_READ, NewWebhook, RetryPolicy, SqlKeyStore, Webhook,
};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use utoipa::{IntoParams, ToSchema};

use crate::metrics::{Action, Resource, ServerMetrics};
use crate::{AppState, Body, ErrorBody, bad, error, unix, unix_ms};

/// What a claim lasts past an attempt's time limit: for the outcome's
/// write.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// How the deliverer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Whether this instance delivers (and scans). Off, deliveries still
    /// queue — for instances that do.
    pub deliver: bool,
    /// How often it looks for due deliveries when none were due.
    pub poll: Duration,
    /// How often it looks for events of time (`key.expiring`,
    /// `key.expired`, `credits.low`).
    pub scan_every: Duration,
    /// One attempt's time limit (connect, send, the answer's head).
    pub timeout: Duration,
    /// Attempts under way at once, at most (each slot taken up again as
    /// soon as its attempt ends).
    pub concurrency: u32,
    /// Retries after a failed attempt.
    pub retry: RetryPolicy,
}

impl Default for WebhookOptions {
    /// Delivering; due deliveries looked for every second, events of time
    /// every minute; 10 s an attempt, 8 at once; [`RetryPolicy::default`].
    fn default() -> Self {
        Self {
            deliver: true,
            poll: Duration::from_secs(1),
            scan_every: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            concurrency: 8,
            retry: RetryPolicy::default(),
        }
    }
}

impl WebhookOptions {
    /// How long a claim lasts: an attempt's time limit and 5 s to write
    /// its outcome. Past it — the instance died mid-attempt — another
    /// instance (or this one restarted) makes the attempt again: short, so
    /// that a crash delays a delivery by seconds; long enough that no
    /// attempt still under way is taken over.
    fn claim(&self) -> Duration {
        self.timeout.saturating_add(CLAIM_MARGIN)
    }
}

/// Starts this instance's deliverer (see [`WebhookOptions`]).
pub(crate) fn spawn(
    store: SqlKeyStore,
    options: WebhookOptions,
    metrics: Arc<ServerMetrics>,
) -> Option<JoinHandle<()>> {
    if !options.deliver {
        return None;
    }
    let client = match reqwest::Client::builder()
        // A receiver's redirect is not followed: the URL registered is
        // where events go.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(options.timeout)
        .user_agent(concat!(
            "auth-server/",
            env!("CARGO_PKG_VERSION"),
            " webhooks"
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks not delivered: no HTTP client");
            return None;
        }
    };
    // Names this instance's claims (random: two instances never share one).
    let worker = match auth_core::ApiKey::generate() {
        Ok(k) => format!("w_{}", &k.digest().to_hex()[..16]),
        Err(e) => {
            tracing::error!(error = %e, "webhooks not delivered: no randomness");
            return None;
        }
    };
    let client = Arc::new(client);
    let worker: Arc<str> = worker.into();
    Some(tokio::spawn(async move {
        let mut scanned: Option<std::time::Instant> = None;
        // Attempts under way, each a task of its own holding a permit: a
        // slow receiver holds one permit, never the others' deliveries; an
        // attempt that panics is that attempt lost (its claim lapses, it
        // is retried), never the deliverer.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(options.concurrency.max(1)).unwrap_or(1),
        ));
        let mut running = tokio::task::JoinSet::new();
        loop {
            while let Some(done) = running.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a webhook attempt panicked");
                }
            }
            if scanned.is_none_or(|at| at.elapsed() >= options.scan_every) {
                scanned = Some(std::time::Instant::now());
                match store.scan_webhook_events(SystemTime::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deliveries = n, "webhook events queued"),
                    Err(e) => tracing::warn!(error = %e, "could not look for webhook events"),
                }
            }
            let free = permits.available_permits();
            if free == 0 {
                // All busy: on when one ends (or to scan, after a poll).
                tokio::select! {
                    _ = running.join_next() => {}
                    () = tokio::time::sleep(options.poll) => {}
                }
                continue;
            }
            let claimed = store
                .claim_deliveries(
                    &worker,
                    SystemTime::now(),
                    options.claim(),
                    u32::try_from(free).unwrap_or(u32::MAX),
                    options.retry,
                )
                .await;
            match claimed {
                Ok(batch) if !batch.is_empty() => {
                    for claimed in batch {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            return; // closed: never, it is ours
                        };
                        let (client, store, worker, metrics) = (
                            client.clone(),
                            store.clone(),
                            worker.clone(),
                            metrics.clone(),
                        );
                        running.spawn(async move {
                            let _permit = permit;
                            attempt(&client, &store, &worker, &claimed, &options, &metrics).await;
                        });
                    }
                    // More may be due: no sleep.
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not read due webhook deliveries"),
            }
            tokio::time::sleep(options.poll).await;
        }
    }))
}

/// One attempt of a claimed delivery, and its outcome recorded.
async fn attempt(
    client: &reqwest::Client,
    store: &SqlKeyStore,
    worker: &str,
    claimed: &Claimed,
    options: &WebhookOptions,
    metrics: &ServerMetrics,
) {
    let now = SystemTime::now();
    // Over 5 s before the claim lapses, or not at all (the claim lapses,
    // and the delivery is attempted again): never two attempts at once.
    let left = claimed
        .claimed_until
        .duration_since(now)
        .unwrap_or_default()
        .saturating_sub(CLAIM_MARGIN)
        .min(options.timeout);
    if left < Duration::from_millis(100) {
        tracing::warn!(delivery = %claimed.id, webhook = %claimed.webhook_id,
            "a webhook attempt not made: its claim was about to lapse");
        return;
    }
    let timestamp = unix(now);
    // One signature per secret (two while a secret is being changed).
    let signature = claimed
        .secrets
        .iter()
        .map(|s| s.sign(&claimed.id, timestamp, claimed.payload.as_bytes()))
        .collect::<Vec<_>>()
        .join(" ");
    let sent = client
        .post(&claimed.url)
        .timeout(left)
        .header("content-type", "application/json")
        .header(ID_HEADER, &claimed.id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(claimed.payload.clone())
        .send()
        .await;
    // The answer's body is never read: its status decides.
    let failure = match sent {
        Ok(answer) if answer.status().is_success() => {
            let status = answer.status().as_u16();
            return match store
                .delivered(&claimed.id, worker, status, SystemTime::now())
                .await
            {
                Ok(true) => metrics.webhook_attempt("delivered"),
                Ok(false) => {
                    metrics.webhook_attempt("delivered");
                    tracing::warn!(delivery = %claimed.id, webhook = %claimed.webhook_id,
                        "a webhook delivered, but its record was no longer this instance's \
                         (its claim lapsed, or its endpoint was deleted)");
                }
                Err(e) => tracing::warn!(error = %e, delivery = %claimed.id,
                    "a webhook delivered but not recorded: it will be sent again"),
            };
        }
        Ok(answer) => Failure {
            status: Some(answer.status().as_u16()),
            error: format!("status {}", answer.status().as_u16()),
        },
        Err(e) => Failure {
            status: None,
            error: if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "request"
            }
            .to_owned(),
        },
    };
    match store
        .attempt_failed(claimed, worker, &failure, SystemTime::now(), options.retry)
        .await
    {
        Ok(Some(DeliveryStatus::Failed)) => {
            metrics.webhook_attempt("failed");
            tracing::warn!(delivery = %claimed.id, webhook = %claimed.webhook_id, error = %failure.error,
                attempts = claimed.attempts + 1, "a webhook delivery failed: retries exhausted");
        }
        Ok(None) => tracing::warn!(delivery = %claimed.id, webhook = %claimed.webhook_id,
            "a failed webhook attempt not recorded: its claim lapsed, or its endpoint was deleted"),
        Ok(Some(_)) => {
            metrics.webhook_attempt("retry");
            tracing::info!(delivery = %claimed.id, error = %failure.error,
                attempts = claimed.attempts + 1, "a webhook attempt failed; it will be retried");
        }
        Err(e) => tracing::warn!(error = %e, delivery = %claimed.id,
            "a failed webhook attempt not recorded: it will be retried when its claim lapses"),
    }
}

/// A new endpoint.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CreateWebhookBody {
    /// Where deliveries are POSTed: `http` or `https` (use https), no user
    /// info, no fragment, at most 2048 characters.
    url: String,
    /// At least one of `key.expiring`, `key.expired`, `key.disabled`,
    /// `key.rotated`, `key.leaked`, `credits.low`.
    events: Vec<String>,
    /// `key.expiring`'s notice: 1 to 365 days (default 7).
    expiring_days: Option<u32>,
    /// `credits.low`: when a key's credits fall below this (default 100).
    credits_below: Option<u64>,
    /// A note for operators: at most 200 printable characters.
    #[serde(default)]
    description: String,
}

/// An endpoint (its secret is shown only when it is made).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookView {
    /// `wh_…`.
    id: String,
    url: String,
    events: Vec<&'static str>,
    expiring_days: u32,
    credits_below: u64,
    description: String,
    /// Unix seconds.
    created_at: u64,
    /// The signing secret, `whsec_…`: in the answer that made the
    /// endpoint, and never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events.iter().map(|e| e.as_str()).collect(),
            expiring_days: w.expiring_days,
            credits_below: w.credits_below,
            description: w.description.clone(),
            created_at: unix(w.created_at),
            secret: None,
        }
    }
}

/// The JSON of an endpoint just made: the one answer with its secret.
pub fn created_webhook_json(created: &CreatedWebhook) -> Value {
    let mut view = WebhookView::from(&created.webhook);
    view.secret = Some(created.secret.reveal().to_string());
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// The JSON of endpoints, as `GET /api/v1/webhooks` answers.
pub fn webhooks_json(webhooks: &[Webhook]) -> Value {
    serde_json::json!({ "webhooks": webhooks.iter().map(WebhookView::from).collect::<Vec<_>>() })
}

/// The JSON of deliveries, as `GET /api/v1/webhooks/{id}/deliveries`
/// answers.
pub fn deliveries_json(deliveries: &[Delivery]) -> Value {
    serde_json::json!({ "deliveries": deliveries.iter().map(DeliveryView::from).collect::<Vec<_>>() })
}

/// The events in a request, read.
pub fn parse_events(names: &[String]) -> Result<Vec<EventType>, String> {
    names
        .iter()
        .map(|n| n.parse::<EventType>().map_err(|e| format!("`{n}`: {e}")))
        .collect()
}

/// Every endpoint.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookList {
    webhooks: Vec<WebhookView>,
}

/// A delivery, as recorded.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryView {
    /// `msg_…`: the `webhook-id` header.
    id: String,
    event: String,
    /// `pending`, `delivered` or `failed` (retries exhausted).
    status: &'static str,
    attempts: u32,
    /// Unix milliseconds.
    created_at: u64,
    /// When the next attempt is due (pending only), Unix milliseconds.
    next_at: Option<u64>,
    /// When it was delivered or given up, Unix milliseconds.
    done_at: Option<u64>,
    /// The last attempt's HTTP status, if the receiver answered.
    last_status: Option<u16>,
    /// What went wrong with the last attempt: `status 500`, `timeout`,
    /// `connect`, `request`.
    last_error: Option<String>,
    /// The body sent.
    #[schema(value_type = Object)]
    payload: Value,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id.clone(),
            event: d.event.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            created_at: unix_ms(d.created_at),
            next_at: d.next_at.map(unix_ms),
            done_at: d.done_at.map(unix_ms),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            payload: serde_json::from_str(&d.payload).unwrap_or(Value::Null),
        }
    }
}

/// The deliveries of an endpoint.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<DeliveryView>,
}

fn no_webhook() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no webhook with this id",
    )
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookBody, security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 201, description = "the endpoint, with its secret shown once",
        body = WebhookView), (status = 400, body = ErrorBody), (status = 401),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Body(b): Body<CreateWebhookBody>,
) -> Response {
    let events = match parse_events(&b.events) {
        Ok(e) => e,
        Err(m) => return bad(&m),
    };
    let new = NewWebhook {
        url: b.url,
        events,
        expiring_days: b.expiring_days.unwrap_or(DEFAULT_EXPIRING_DAYS),
        credits_below: b.credits_below.unwrap_or(DEFAULT_CREDITS_BELOW),
        description: b.description,
    };
    match s.as_admin.create_webhook(new).await {
        Ok(created) => {
            s.wrote(Resource::Webhook, Action::Create);
            tracing::info!(webhook = %created.webhook.id,
                origin = %auth_sqlx::url_origin(&created.webhook.url), "webhook endpoint added");
            (StatusCode::CREATED, Json(created_webhook_json(&created))).into_response()
        }
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = WebhookList), (status = 401),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn list(State(s): State<AppState>) -> Response {
    match s.store.webhooks().await {
        Ok(list) => Json(webhooks_json(&list)).into_response(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = WebhookView), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.webhook(&id).await {
        Ok(Some(w)) => Json(WebhookView::from(&w)).into_response(),
        Ok(None) => no_webhook(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 204, description = "deleted, with its deliveries"), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.as_admin.delete_webhook(&id).await {
        Ok(true) => {
            s.wrote(Resource::Webhook, Action::Delete);
            tracing::info!(webhook = %id, "webhook endpoint removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => no_webhook(),
        Err(e) => s.store_error(&e),
    }
}

/// A change of secret.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateSecretBody {
    /// Seconds the old secret still signs (a second signature): 0 to
    /// 604800 (7 days); default 86400.
    overlap: Option<i64>,
    /// Change it even while an earlier change's overlap runs (the secret
    /// before that stops signing at once).
    #[serde(default)]
    force: bool,
}

/// A new secret, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RotatedSecret {
    /// The endpoint's id.
    id: String,
    /// The new signing secret, `whsec_…`.
    secret: String,
    /// Until when (Unix seconds) the old secret still signs; `null` with
    /// no overlap.
    previous_secret_until: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/secret", tag = "webhooks",
    params(("id" = String, Path)), request_body = RotateSecretBody,
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, description = "the new secret, shown once", body = RotatedSecret),
        (status = 400, body = ErrorBody), (status = 401), (status = 404, body = ErrorBody),
        (status = 409, description = "an earlier change's overlap still runs", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn rotate_secret(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<RotateSecretBody>,
) -> Response {
    let max = auth_sqlx::MAX_SECRET_OVERLAP.as_secs();
    let overlap = match b.overlap {
        None => Duration::from_secs(86_400),
        Some(n) => match u64::try_from(n) {
            Ok(n) if n <= max => Duration::from_secs(n),
            _ => return bad("overlap is 0 to 604800 seconds"),
        },
    };
    match s
        .as_admin
        .rotate_webhook_secret(&id, overlap, b.force)
        .await
    {
        Ok(Some((secret, until))) => {
            s.wrote(Resource::Webhook, Action::Rotate);
            tracing::info!(webhook = %id, "webhook secret changed");
            Json(RotatedSecret {
                id,
                secret: secret.reveal().to_string(),
                previous_secret_until: (!overlap.is_zero()).then(|| unix(until)),
            })
            .into_response()
        }
        Ok(None) => no_webhook(),
        Err(e) => s.store_error(&e),
    }
}

/// `limit`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveriesQuery {
    /// At most this many, newest first: 1 to 1000 (default 100).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), DeliveriesQuery),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody),
        (status = 401), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn deliveries(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad(&e.body_text()),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_DELIVERY_READ).contains(&limit) {
        return bad("limit is 1 to 1000");
    }
    match s.store.webhook(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_webhook(),
        Err(e) => return s.store_error(&e),
    }
    match s.store.deliveries(&id, limit).await {
        Ok(list) => Json(deliveries_json(&list)).into_response(),
        Err(e) => s.store_error(&e),
    }
}
