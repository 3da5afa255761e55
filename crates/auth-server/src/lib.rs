//! The central key service (see the README): the HTTP API, built from this
//! workspace's own parts — auth-sqlx for the keys, auth-core and auth-axum
//! for guarding its own routes. `main.rs` is the CLI around it.
#![forbid(unsafe_code)]
// One package, two targets: the binary uses what the library does not
// (clap, the log formats) and the other way round.
#![allow(unused_crate_dependencies)]

mod audit;
mod metrics;
mod scanning;
mod usage;
mod webhooks;

pub use audit::audit_json;
pub use scanning::{
    GITHUB_PATH, MAX_REPORT_TOKENS, REPORT_BODY_LIMIT, ScanningKeys, ScanningKeysError, check_key,
};
pub use usage::usage_json;
pub use webhooks::{
    WebhookOptions, created_webhook_json, deliveries_json, parse_events, webhooks_json,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use auth_axum::{Auth, Authenticated};
use auth_core::protocol::{
    ChangeEvent, Code, EVENTS_PATH, LEASE_RETURN_PATH, Lease, LeaseReturned, MAX_COST, MAX_LEASE,
    RateLimit, ReturnLease, USAGE_PATH, VALIDATE_PATH, ValidateRequest, ValidateResponse,
};
use auth_core::{
    CacheConfig, Cached, Credential, CredentialSources, Guard, HashedKeyStore, KeyFile, Principal,
    RateLimitPolicy, Verifier, VerifyContext, VerifyError,
};
use auth_sqlx::{Actor, CreatedKey, Credits, KeyInfo, LeaseGrant, NewKey, Refill, SqlKeyStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use utoipa::{Modify, OpenApi, ToSchema};

use crate::metrics::{Action, Handled, Outcome, Resource, ServerMetrics};

/// The header services send their credential in.
pub const SERVICE_HEADER: &str = auth_core::protocol::SERVICE_TOKEN_HEADER;
/// How often usage counts are written (one statement per flush).
pub const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Largest admin request body accepted.
const BODY_LIMIT: usize = 16 * 1024;
/// The largest `requests` of a rate limit.
const MAX_REQUESTS: i64 = 1_000_000_000;
/// The last second an `expiresAt` may name (9999-12-31T23:59:59Z); the
/// store then requires it to be in the future and within 100 years.
const MAX_UNIX: i64 = 253_402_300_799;

// The store enforces the protocol's bound on a lease.
const _: () = assert!(auth_sqlx::MAX_LEASE == MAX_LEASE);

/// Who may call the validate endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValidateAuth {
    /// Services with a service credential in `X-Service-Token` (default).
    #[default]
    ServiceToken,
    /// Anyone who can reach it (the seed services' clients send no
    /// credential). Anyone can then test keys against it: use only where the
    /// network already limits who reaches the key service.
    None,
}

/// How the service runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Who may call the validate endpoint.
    pub validate_auth: ValidateAuth,
    /// GitHub's secret scanning public keys: with them, reports of leaked
    /// keys are taken at [`GITHUB_PATH`]; without, that path answers 404.
    pub secret_scanning: Option<Arc<ScanningKeys>>,
    /// How this instance delivers webhooks.
    pub webhooks: WebhookOptions,
}

/// What can go wrong starting the service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key store.
    #[error(transparent)]
    Store(#[from] auth_sqlx::Error),
    /// The admin key file, the guards.
    #[error(transparent)]
    Core(#[from] auth_core::Error),
    /// The data directory.
    #[error("data directory: {0}")]
    Io(std::io::Error),
    /// The TLS certificate or key could not be read or used.
    #[error("TLS certificate or key: {0}")]
    Tls(std::io::Error),
    /// The listening socket.
    #[error("listening: {0}")]
    Listen(std::io::Error),
}

/// HTTPS: a certificate chain and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The certificate chain (PEM), the server's certificate first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Serves `app` on `listener` — over HTTPS (rustls) when `tls` is given —
/// until `shutdown` completes, then lets requests under way finish.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<&Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    listener.set_nonblocking(true).map_err(Error::Listen)?;
    let Some(tls) = tls else {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(Error::Listen)?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Listen);
    };
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(Error::Tls)?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    axum_server::from_tcp_rustls(listener, config)
        .map_err(Error::Listen)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(Error::Listen)
}

/// The database: `DATABASE_URL` if given (PostgreSQL or SQLite), else a
/// SQLite file in the data directory.
pub fn database_url(data_dir: &Path, database_url: Option<&str>) -> String {
    match database_url {
        Some(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => format!("sqlite://{}", data_dir.join("keys.db").display()),
    }
}

/// Opens the store and runs the migrations; creates the data directory.
pub async fn open_store(data_dir: &Path, database_url: Option<&str>) -> Result<SqlKeyStore, Error> {
    std::fs::create_dir_all(data_dir).map_err(Error::Io)?;
    let store = SqlKeyStore::connect(&self::database_url(data_dir, database_url)).await?;
    store.migrate().await?;
    Ok(store)
}

/// The admin key file in the data directory (created on first start).
pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.key")
}

/// The running service's parts.
#[derive(Clone)]
pub struct AppState {
    store: SqlKeyStore,
    /// The same store acting as the admin key's holder: every admin write
    /// goes through it, so that its audit record names them.
    as_admin: SqlKeyStore,
    /// Validation reads through this cache, kept in step with the store by
    /// the change log (`invalidate_on_change`), synchronously.
    keys: Arc<Cached<HashedKeyStore<SqlKeyStore>>>,
    metrics: Arc<ServerMetrics>,
    /// GitHub's secret scanning keys, if configured.
    scanning: Option<Arc<ScanningKeys>>,
    /// The secret scanning reports handled at once.
    scanning_permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// A store error as an answer: 400 for input the store refused, else
    /// 503 — a database failure, counted.
    fn store_error(&self, e: &auth_sqlx::Error) -> Response {
        if !matches!(
            e,
            auth_sqlx::Error::Invalid(_) | auth_sqlx::Error::Conflict(_)
        ) {
            self.metrics.store_error();
        }
        store_error(e)
    }

    /// An admin write that happened.
    fn wrote(&self, resource: Resource, action: Action) {
        self.metrics.admin_write(resource, action);
    }
}

/// The service's two routers, for two listeners: the API, and its
/// Prometheus metrics, which must never be served on the API's port.
#[derive(Debug)]
pub struct App {
    /// The HTTP API; see [`app_with`].
    pub api: Router,
    /// `GET /metrics`: the OpenMetrics text of the service's metrics (any
    /// other path is a JSON 404). Unauthenticated — counts only, never a
    /// key, a credential or a digest — so serve it on loopback or an
    /// internal interface only.
    ///
    /// | metric | type | labels |
    /// |---|---|---|
    /// | `auth_server_validate_requests_total` | counter | `code`: `valid`, `invalid`, `expired`, `disabled`, `insufficient_scope`, `rate_limited`, `usage_exceeded` (200s), `bad_request`, `unauthorized`, `unavailable`, `cancelled`, `other` |
    /// | `auth_server_validate_duration_seconds` | histogram | (whole request, the service-credential check included) |
    /// | `auth_server_store_errors_total` | counter | |
    /// | `auth_server_changes_stream_subscribers` | gauge | |
    /// | `auth_server_changes_stream_events_total` | counter | `event`: `ready`, `key`, `reset` |
    /// | `auth_server_admin_writes_total` | counter | `resource`: `key`, `service`; `action`: `create`, `update`, `disable`, `delete`, `rotate` |
    /// | `auth_server_credit_leases_total` | counter | `event`: `granted` (credits leased to services), `returned` (credits their returns gave back) — credits, not leases |
    /// | `auth_server_usage_decisions_total` | counter | `event`: `counted` (answered here), `reported` (in services' usage reports) |
    /// | `auth_server_usage_dropped_total` | counter | decisions not counted: too many waiting to be written |
    /// | `auth_server_usage_pending` | gauge | key-hours waiting to be written |
    /// | `auth_server_webhook_attempts_total` | counter | `outcome`: `delivered` (a 2xx), `retry` (failed, another attempt scheduled), `failed` (retries exhausted) |
    /// | `auth_server_webhook_given_up_total` | counter | deliveries failed for being due longer than the give-up time without an attempt |
    /// | `auth_server_webhook_pending` | gauge | deliveries waiting in the database, as of this instance's last scan |
    /// | `auth_server_db_pool_connections` | gauge | `state`: `in_use`, `idle` |
    /// | `auth_server_changes_following` | gauge | |
    /// | `auth_server_changes_applied_seq` | gauge | |
    ///
    /// And [`auth_core::prometheus`]'s: the guards' decisions (keyrings
    /// `admin` and, with [`ValidateAuth::ServiceToken`], `services`) and
    /// the caches' hits and misses (caches `keys` and `services`).
    pub metrics: Router,
}

/// The HTTP API with the default [`Options`]; see [`app_with`].
pub async fn app(store: SqlKeyStore, data_dir: &Path) -> Result<Router, Error> {
    app_with(store, data_dir, Options::default()).await
}

/// The HTTP API: `/health`, `/ready`, the validate endpoint (for service
/// credentials, or anyone with [`ValidateAuth::None`]), and the admin API
/// for keys and service credentials (the admin key from the key file).
/// [`build`]'s API router, without its metrics.
pub async fn app_with(
    store: SqlKeyStore,
    data_dir: &Path,
    options: Options,
) -> Result<Router, Error> {
    Ok(build(store, data_dir, options).await?.api)
}

/// The service: the HTTP API (see [`app_with`]) and, for a listener of its
/// own, the router of its metrics (see [`App::metrics`]).
pub async fn build(store: SqlKeyStore, data_dir: &Path, options: Options) -> Result<App, Error> {
    let metrics = Arc::new(ServerMetrics::new(&store));
    let keys = Arc::new(Cached::new(
        HashedKeyStore::new(store.clone()),
        CacheConfig::default(),
    ));
    let services = Arc::new(Cached::new(
        HashedKeyStore::new(store.services()),
        CacheConfig::default(),
    ));
    store.invalidate_on_change(keys.clone());
    store.invalidate_on_change(services.clone());
    metrics
        .sources()
        .cache("keys", keys.stats())
        .cache("services", services.stats());
    store.listen().await?;
    store.spawn_last_used_flush(Duration::from_secs(30));
    store.spawn_usage_flush(USAGE_FLUSH_EVERY);

    let admin_key = KeyFile::builder()
        .path(admin_key_path(data_dir))
        .env_var(None)
        .load_or_create()?;
    if admin_key.was_created() {
        tracing::info!(path = %admin_key.path().display(), "admin key created (mode 0600)");
    }
    // The key file is read once per start: its fingerprint names the
    // admin in the audit trail (never the key, never its whole digest).
    let as_admin = store.acting(Actor::admin(&admin_key.digest()));
    let admin = Guard::builder(admin_key).keyring("admin").build()?;
    metrics.sources().guard(&admin);

    // Last of what can fail: no deliverer left running by a failed build.
    webhooks::spawn(store.clone(), options.webhooks, metrics.clone());
    let state = AppState {
        store,
        as_admin,
        keys,
        metrics: metrics.clone(),
        scanning: options.secret_scanning.clone(),
        scanning_permits: Arc::new(tokio::sync::Semaphore::new(scanning::CONCURRENT_REPORTS)),
    };
    let admin_routes = Router::new()
        .route("/api/v1/keys", get(list).post(create))
        .route(
            "/api/v1/keys/{id}",
            get(get_key).delete(delete).patch(update),
        )
        .route("/api/v1/keys/{id}/disable", post(disable))
        .route("/api/v1/keys/{id}/rotate", post(rotate))
        .route("/api/v1/keys/{id}/usage", get(usage::key_usage))
        .route("/api/v1/usage", get(usage::usage))
        .route("/api/v1/audit", get(audit::audit))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/v1/webhooks/{id}/secret",
            post(webhooks::rotate_secret),
        )
        .route("/api/v1/services", get(list_services).post(create_service))
        .route(
            "/api/v1/services/{id}",
            get(get_service).delete(delete_service),
        )
        .route("/api/v1/services/{id}/disable", post(disable_service))
        .route("/api/v1/services/{id}/rotate", post(rotate_service))
        .route_layer(Auth::new(admin));
    // Apart, so that only validate requests are counted as such.
    let mut validate_route = Router::new().route(VALIDATE_PATH, post(validate));
    let mut events_route = Router::new().route(EVENTS_PATH, get(events));
    let mut lease_route = Router::new().route(LEASE_RETURN_PATH, post(return_lease));
    let mut usage_route = Router::new()
        .route(USAGE_PATH, post(usage::report))
        .layer(DefaultBodyLimit::max(usage::REPORT_BODY_LIMIT));
    match options.validate_auth {
        ValidateAuth::ServiceToken => {
            let guard = Guard::builder(services)
                .keyring("services")
                .sources(
                    CredentialSources::default()
                        .key_header(SERVICE_HEADER)
                        .bearer(false),
                )
                .build()?;
            metrics.sources().guard(&guard);
            let auth = Auth::new(guard);
            validate_route = validate_route.route_layer(auth.clone());
            events_route = events_route.route_layer(auth.clone());
            // Returns are the holder's: the guard's principal says who.
            lease_route = lease_route.route_layer(auth.clone());
            usage_route = usage_route.route_layer(auth);
        }
        ValidateAuth::None => {
            tracing::warn!(
                "--validate-auth none: the validate endpoint asks callers for no credential; \
                 anyone who reaches this port can test API keys against it"
            );
        }
    }
    // Outside the guard: its refusals are counted and timed too.
    let validate_route = validate_route.route_layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        metrics::count_validate,
    ));
    let events_route = events_route.route_layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        metrics::count_events,
    ));
    let doc = openapi_for(options.validate_auth);
    let api = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/admin", get(admin_page))
        .route("/openapi.json", get(move || async move { Json(doc) }))
        .merge(admin_routes)
        .merge(validate_route)
        .merge(events_route)
        .merge(lease_route)
        .merge(usage_route)
        // Outside the admin guard: GitHub signs its reports.
        .merge(
            Router::new()
                .route(GITHUB_PATH, post(scanning::github))
                .layer(DefaultBodyLimit::max(REPORT_BODY_LIMIT)),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    let metrics = Router::new()
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .with_state(metrics);
    Ok(App { api, metrics })
}

/// An error answer's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A fixed code: `invalid_request`, `not_found`, `conflict`,
    /// `unavailable`.
    pub error: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

/// A JSON error answer.
fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code,
            message: message.into(),
        }),
    )
        .into_response()
}

fn store_error(e: &auth_sqlx::Error) -> Response {
    match e {
        auth_sqlx::Error::Invalid(why) => error(StatusCode::BAD_REQUEST, "invalid_request", why),
        auth_sqlx::Error::Conflict(why) => error(StatusCode::CONFLICT, "conflict", why),
        other => {
            tracing::warn!(error = %other, "key store error");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key store is unavailable",
            )
        }
    }
}

/// `Json<T>` whose rejections are this API's JSON 400s (malformed JSON,
/// unknown fields, wrong types, a body over the limit).
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => {
                let message = match &rejection {
                    JsonRejection::BytesRejection(_) => {
                        "the body could not be read (too large, or cut short)".to_owned()
                    }
                    other => other.body_text(),
                };
                Err(error(StatusCode::BAD_REQUEST, "invalid_request", message))
            }
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds (the audit trail's and deliveries' times).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A key's record as the API shows it: never the key, never its digest.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// The record's id.
    pub id: String,
    /// A display prefix, never enough to use the key.
    pub prefix: String,
    /// The owner (the principal the key authenticates as).
    pub owner: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The key's own rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub disabled_at: Option<u64>,
    /// Unix seconds (written in batches).
    pub last_used_at: Option<u64>,
    /// Its usage credits; `null` when it has no credit limit.
    pub credits: Option<CreditsView>,
    /// The key itself: only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A key's usage credits as the API shows them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditsView {
    /// Credits left now (a refill that is due counted).
    pub remaining: u64,
    /// Its refill, if any.
    pub refill: Option<RefillView>,
    /// Unix seconds of the next refill (`null` without a refill).
    pub next_refill_at: Option<u64>,
}

/// A refill as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct RefillView {
    /// What remaining is set to at each refill (not added).
    pub amount: u64,
    /// Seconds between refills.
    pub every: u64,
}

impl CreditsView {
    fn at(c: &auth_sqlx::KeyCredits, now: SystemTime) -> Self {
        Self {
            remaining: c.remaining_at(now),
            refill: c.refill.map(|r| RefillView {
                amount: r.amount,
                every: r.every.as_secs(),
            }),
            next_refill_at: c.next_refill_at(now).map(unix),
        }
    }
}

impl From<&KeyInfo> for KeyView {
    fn from(info: &KeyInfo) -> Self {
        Self {
            id: info.id.clone(),
            prefix: info.prefix.clone(),
            owner: info.owner.clone(),
            scopes: info.scopes.clone(),
            rate_limit: info.rate_limit.map(|p| RateLimit {
                requests: p.requests,
                window: p.window.as_secs(),
            }),
            created_at: unix(info.created_at),
            expires_at: info.expires_at.map(unix),
            disabled_at: info.disabled_at.map(unix),
            last_used_at: info.last_used_at.map(unix),
            credits: info.credits.map(|c| CreditsView::at(&c, SystemTime::now())),
            key: None,
        }
    }
}

/// A service credential as the API shows it: never the credential.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// The record's id (`svc_…`).
    pub id: String,
    /// A display prefix (`sk_svc_…`).
    pub prefix: String,
    /// The service's name.
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds (set by a rotation's overlap).
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub disabled_at: Option<u64>,
    /// Unix seconds (written in batches).
    pub last_used_at: Option<u64>,
    /// The credential itself: only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<&KeyInfo> for ServiceView {
    fn from(info: &KeyInfo) -> Self {
        Self {
            id: info.id.clone(),
            prefix: info.prefix.clone(),
            name: info.owner.clone(),
            created_at: unix(info.created_at),
            expires_at: info.expires_at.map(unix),
            disabled_at: info.disabled_at.map(unix),
            last_used_at: info.last_used_at.map(unix),
            key: None,
        }
    }
}

/// A key's record as JSON (the CLI's `--json`).
pub fn info_json(info: &KeyInfo) -> Value {
    serde_json::to_value(KeyView::from(info)).unwrap_or(Value::Null)
}

/// A new key as JSON: the plaintext, once.
pub fn created_json(created: &CreatedKey) -> Value {
    let mut view = KeyView::from(&created.info);
    view.key = Some(created.key.expose().to_owned());
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// A service credential's record as JSON.
pub fn service_json(info: &KeyInfo) -> Value {
    serde_json::to_value(ServiceView::from(info)).unwrap_or(Value::Null)
}

/// A new service credential as JSON: the plaintext, once.
pub fn created_service_json(created: &CreatedKey) -> Value {
    let mut view = ServiceView::from(&created.info);
    view.key = Some(created.key.expose().to_owned());
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// A rate limit in a request: checked before anything is written.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    /// 1 to 1,000,000,000.
    requests: i64,
    /// Seconds, 1 to 31,536,000 (365 days).
    window: i64,
}

/// A 400 with this message.
fn bad(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn rate_limit(body: Option<RateLimitBody>) -> Result<Option<RateLimitPolicy>, &'static str> {
    let Some(b) = body else { return Ok(None) };
    let max_window = i64::try_from(auth_sqlx::MAX_WINDOW.as_secs()).unwrap_or(i64::MAX);
    match (u32::try_from(b.requests).ok(), u64::try_from(b.window).ok()) {
        (Some(r), Some(w))
            if (1..=MAX_REQUESTS).contains(&b.requests) && (1..=max_window).contains(&b.window) =>
        {
            Ok(Some(RateLimitPolicy::new(r, Duration::from_secs(w))))
        }
        _ => Err(
            "rateLimit needs `requests` from 1 to 1000000000 and `window` from 1 to 31536000 seconds",
        ),
    }
}

/// Usage credits in a request: checked before anything is written.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    /// Credits to start with: 0 to 1,000,000,000,000 (required).
    remaining: Option<i64>,
    /// Sets remaining to `amount` every `every`.
    refill: Option<RefillBody>,
}

/// A refill in a request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RefillBody {
    /// 1 to 1,000,000,000,000.
    amount: i64,
    /// 60 s to 366 days.
    every: Every,
}

/// A refill interval: seconds, or text such as `1d`, `30d`, `12h`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum Every {
    /// Seconds: 60 to 31,622,400.
    Seconds(i64),
    /// `<n>s`, `<n>m`, `<n>h` or `<n>d`.
    Text(String),
}

/// Seconds in `<n>s`, `<n>m`, `<n>h` or `<n>d`; `None` for anything else.
fn interval_secs(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

const CREDITS_RANGE: &str = "credits need `remaining` from 0 to 1000000000000 and, for a refill, \
     `amount` from 1 to 1000000000000 and `every` from 60 to 31622400 seconds (60 s to \
     366 days: seconds, or `<n>s`, `<n>m`, `<n>h`, `<n>d`)";

fn credits(body: Option<CreditsBody>) -> Result<Option<Credits>, &'static str> {
    let Some(b) = body else { return Ok(None) };
    let max = auth_sqlx::MAX_CREDITS;
    let remaining = b
        .remaining
        .ok_or("credits need `remaining` (a refill alone is not a limit)")?;
    let remaining = u64::try_from(remaining)
        .ok()
        .filter(|r| *r <= max)
        .ok_or(CREDITS_RANGE)?;
    let refill = match b.refill {
        None => None,
        Some(r) => {
            let amount = u64::try_from(r.amount)
                .ok()
                .filter(|a| (1..=max).contains(a))
                .ok_or(CREDITS_RANGE)?;
            let every = match r.every {
                Every::Seconds(n) => u64::try_from(n).ok(),
                Every::Text(t) => interval_secs(t.trim()),
            }
            .map(Duration::from_secs)
            .filter(|d| (auth_sqlx::MIN_REFILL_EVERY..=auth_sqlx::MAX_REFILL_EVERY).contains(d))
            .ok_or(CREDITS_RANGE)?;
            Some(Refill { amount, every })
        }
    };
    Ok(Some(Credits { remaining, refill }))
}

fn expiry(at: Option<i64>) -> Result<Option<SystemTime>, auth_sqlx::Error> {
    let Some(s) = at else { return Ok(None) };
    let at = u64::try_from(s)
        .ok()
        .filter(|s| (1..=MAX_UNIX.unsigned_abs()).contains(s))
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .ok_or_else(|| {
            auth_sqlx::Error::Invalid("expiresAt must be a Unix time in seconds".into())
        })?;
    auth_sqlx::check_expiry(Some(at))?;
    Ok(Some(at))
}

fn overlap(seconds: i64) -> Result<Duration, &'static str> {
    u64::try_from(seconds)
        .ok()
        .map(Duration::from_secs)
        .filter(|d| *d <= auth_sqlx::MAX_OVERLAP)
        .ok_or("overlap must be 0 to 31536000 seconds (365 days)")
}

/// A new key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBody {
    /// 1 to 200 printable characters.
    owner: String,
    #[serde(default)]
    scopes: Vec<String>,
    rate_limit: Option<RateLimitBody>,
    /// Unix seconds, in the future (at most 100 years ahead).
    expires_at: Option<i64>,
    /// Usage credits: each validation spends its `cost` (1 by default).
    credits: Option<CreditsBody>,
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateBody,
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 201, description = "the key, shown once", body = KeyView),
        (status = 400, body = ErrorBody), (status = 401), (status = 503, body = ErrorBody)))]
async fn create(State(s): State<AppState>, Body(b): Body<CreateBody>) -> Response {
    let rate_limit = match rate_limit(b.rate_limit) {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    let expires_at = match expiry(b.expires_at) {
        Ok(e) => e,
        Err(e) => return s.store_error(&e),
    };
    let credits = match credits(b.credits) {
        Ok(c) => c,
        Err(m) => return bad(m),
    };
    let new = NewKey {
        owner: b.owner,
        scopes: b.scopes,
        rate_limit,
        expires_at,
        credits,
    };
    match s.as_admin.create(new).await {
        Ok(created) => {
            s.wrote(Resource::Key, Action::Create);
            (StatusCode::CREATED, Json(created_json(&created))).into_response()
        }
        Err(e) => s.store_error(&e),
    }
}

/// Every key.
#[derive(Serialize, ToSchema)]
struct KeyList {
    keys: Vec<KeyView>,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = KeyList), (status = 401), (status = 503, body = ErrorBody)))]
async fn list(State(s): State<AppState>) -> Response {
    match s.store.list().await {
        Ok(keys) => Json(KeyList {
            keys: keys.iter().map(KeyView::from).collect(),
        })
        .into_response(),
        Err(e) => s.store_error(&e),
    }
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no key with this id")
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = KeyView), (status = 401), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn get_key(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.get(&id).await {
        Ok(Some(info)) => Json(KeyView::from(&info)).into_response(),
        Ok(None) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/disable", tag = "keys",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = KeyView), (status = 401), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn disable(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.as_admin.disable(&id).await {
        Ok(true) => {
            s.wrote(Resource::Key, Action::Disable);
            get_key(State(s), UrlPath(id)).await
        }
        Ok(false) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 204, description = "deleted"), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.as_admin.delete(&id).await {
        Ok(true) => {
            s.wrote(Resource::Key, Action::Delete);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

/// A rotation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateBody {
    /// Seconds the old key stays valid: 0 to 31,536,000 (365 days).
    overlap: i64,
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path)), request_body = RotateBody,
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 201, description = "the new key, shown once", body = KeyView),
        (status = 400, body = ErrorBody), (status = 401), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn rotate(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<RotateBody>,
) -> Response {
    let overlap = match overlap(b.overlap) {
        Ok(o) => o,
        Err(m) => return bad(m),
    };
    match s.as_admin.rotate(&id, overlap).await {
        Ok(Some(created)) => {
            s.wrote(Resource::Key, Action::Rotate);
            (StatusCode::CREATED, Json(created_json(&created))).into_response()
        }
        Ok(None) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

/// A change: absent fields stay as they are; `null` removes a rate limit,
/// an expiry or credits. New credits start a new refill period.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateBody {
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitBody>)]
    rate_limit: Option<Option<RateLimitBody>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    expires_at: Option<Option<i64>>,
    /// New credits (their refill period starts now), or `null`: no
    /// credit limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsBody>)]
    credits: Option<Option<CreditsBody>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    request_body = UpdateBody, security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<UpdateBody>,
) -> Response {
    // Everything checked before anything is written.
    let rate = match b.rate_limit.map(rate_limit).transpose() {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    let expires = match b.expires_at.map(expiry).transpose() {
        Ok(e) => e,
        Err(e) => return s.store_error(&e),
    };
    let credits = match b.credits.map(credits).transpose() {
        Ok(c) => c,
        Err(m) => return bad(m),
    };
    let change = auth_sqlx::KeyUpdate {
        scopes: b.scopes,
        rate_limit: rate,
        expires_at: expires,
        credits,
    };
    // One statement: all of the change, or none of it.
    match s.as_admin.update(&id, change).await {
        Ok(true) => {
            s.wrote(Resource::Key, Action::Update);
            get_key(State(s), UrlPath(id)).await
        }
        Ok(false) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

/// A new service credential.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateServiceBody {
    /// The service's name: 1 to 200 printable characters.
    name: String,
}

/// Every service credential.
#[derive(Serialize, ToSchema)]
struct ServiceList {
    services: Vec<ServiceView>,
}

fn no_service() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no service credential with this id",
    )
}

#[utoipa::path(post, path = "/api/v1/services", tag = "services",
    request_body = CreateServiceBody, security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 201, description = "the credential, shown once", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 401), (status = 503, body = ErrorBody)))]
async fn create_service(State(s): State<AppState>, Body(b): Body<CreateServiceBody>) -> Response {
    match s.as_admin.services().create(&b.name).await {
        Ok(created) => {
            s.wrote(Resource::Service, Action::Create);
            (StatusCode::CREATED, Json(created_service_json(&created))).into_response()
        }
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = ServiceList), (status = 401), (status = 503, body = ErrorBody)))]
async fn list_services(State(s): State<AppState>) -> Response {
    match s.store.services().list().await {
        Ok(list) => Json(ServiceList {
            services: list.iter().map(ServiceView::from).collect(),
        })
        .into_response(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(get, path = "/api/v1/services/{id}", tag = "services",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = ServiceView), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_service(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.services().get(&id).await {
        Ok(Some(info)) => Json(ServiceView::from(&info)).into_response(),
        Ok(None) => no_service(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/v1/services/{id}/disable", tag = "services",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = ServiceView), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn disable_service(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.as_admin.services().disable(&id).await {
        Ok(true) => {
            s.wrote(Resource::Service, Action::Disable);
            get_service(State(s), UrlPath(id)).await
        }
        Ok(false) => no_service(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(delete, path = "/api/v1/services/{id}", tag = "services",
    params(("id" = String, Path)), security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 204, description = "deleted"), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_service(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.as_admin.services().delete(&id).await {
        Ok(true) => {
            s.wrote(Resource::Service, Action::Delete);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => no_service(),
        Err(e) => s.store_error(&e),
    }
}

#[utoipa::path(post, path = "/api/v1/services/{id}/rotate", tag = "services",
    params(("id" = String, Path)), request_body = RotateBody,
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 201, description = "the new credential, shown once", body = ServiceView),
        (status = 400, body = ErrorBody), (status = 401), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn rotate_service(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<RotateBody>,
) -> Response {
    let overlap = match overlap(b.overlap) {
        Ok(o) => o,
        Err(m) => return bad(m),
    };
    match s.as_admin.services().rotate(&id, overlap).await {
        Ok(Some(created)) => {
            s.wrote(Resource::Service, Action::Rotate);
            (StatusCode::CREATED, Json(created_service_json(&created))).into_response()
        }
        Ok(None) => no_service(),
        Err(e) => s.store_error(&e),
    }
}

/// The admin page: static HTML and script, no data — it fetches the keys
/// with the admin key the operator gives it.
async fn admin_page() -> Response {
    (
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                ADMIN_CSP.as_str(),
            ),
        ],
        axum::response::Html(ADMIN_PAGE),
    )
        .into_response()
}

/// The admin page: one inline style, one inline script.
const ADMIN_PAGE: &str = include_str!("admin.html");

/// The admin page's Content-Security-Policy: its own inline style and
/// script, allowed by their SHA-256, and calls to this origin — nothing
/// else (no injected script runs, nothing is loaded from elsewhere, no
/// form is sent anywhere, no page frames it).
static ADMIN_CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let hash = |open: &str, close: &str| {
        let start = ADMIN_PAGE.find(open).map_or(0, |i| i + open.len());
        let end = ADMIN_PAGE[start..].find(close).map_or(start, |i| start + i);
        let digest = sha2::Sha256::digest(&ADMIN_PAGE.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>")
    )
});

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "the process is up")))]
#[allow(dead_code)]
fn health_doc() {}

#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "the database answers and the change log is followed"),
        (status = 503, description = "the database is unavailable or the change log is not followed")))]
async fn ready(State(s): State<AppState>) -> Response {
    // Ready: the database answers, and the change log is followed (else
    // its changes streams would carry no revocations: they are closed).
    let database = match s.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the database");
            s.metrics.store_error();
            false
        }
    };
    let following = s.store.following();
    let body = json!({
        "status": if database && following { "ready" } else { "not ready" },
        "database": if database { "ok" } else { "unavailable" },
        "changes": if following { "following" } else { "not following" },
        "changesSeq": s.store.applied_seq(),
    });
    if database && following {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The protocol's code for a denial.
fn code_of(e: VerifyError) -> Code {
    match e {
        VerifyError::Expired => Code::Expired,
        VerifyError::Disabled => Code::Disabled,
        VerifyError::RateLimited => Code::RateLimited,
        VerifyError::UsageExceeded { .. } => Code::UsageExceeded,
        _ => Code::Invalid,
    }
}

/// The validate endpoint: [`auth_core::protocol`]'s request and answer.
/// Only client keys are found (a service credential is `invalid` here). A
/// valid key with credits spends the request's `cost` (absent: 1): the
/// answer carries `creditsRemaining`, or is `usage_exceeded` (with
/// `retryAfter` until the next refill, if it has one). With `lease`, such a
/// key also leases up to that many credits (at most a tenth of what is left
/// after the cost) to the calling service for 10 s: the answer's `lease`.
#[utoipa::path(post, path = "/api/v1/api-keys/validate", tag = "validate",
    request_body = ValidateRequest, security(("serviceToken" = [])),
    responses((status = 200, description = "the answer; decide from `code`", body = ValidateResponse),
        (status = 400, description = "a malformed body, `cost` over 1,000,000, or `lease` 0 or over 10,000", body = ErrorBody),
        (status = 401, description = "not a known service"),
        (status = 503, description = "the key store (or the spend of credits) failed", body = ErrorBody)))]
async fn validate(
    State(s): State<AppState>,
    caller: Option<Authenticated>,
    body: Result<Body<ValidateRequest>, Response>,
) -> Response {
    let service = caller.as_ref().and_then(|c| c.key_id());
    let (outcome, mut response) = match body {
        Ok(Body(mut b)) => {
            // Moved, not copied: the credential wipes it when dropped.
            let credential = Credential::new(std::mem::take(&mut b.api_key).into_bytes());
            let answer = validate_answer(&s, &b, &credential, service).await;
            // A decision about a known key (an unknown one is not counted).
            if let Outcome::Answered(code) = answer.0
                && code != Code::Invalid
                && s.store
                    .count_usage(credential.digest(), SystemTime::now(), code)
            {
                s.metrics.usage("counted", 1);
            }
            answer
        }
        Err(rejection) => (Outcome::BadRequest, rejection),
    };
    // For the metrics' count: the answer, typed.
    response.extensions_mut().insert(outcome);
    response
}

/// A validate request's answer, and what it was. `service`: the id of the
/// caller's service credential (`None` with `--validate-auth none`), the
/// holder of any lease granted.
async fn validate_answer(
    s: &AppState,
    b: &ValidateRequest,
    credential: &Credential,
    service: Option<&str>,
) -> (Outcome, Response) {
    let cost = b.cost.unwrap_or(1);
    if cost > MAX_COST {
        return (
            Outcome::BadRequest,
            bad("cost must be 0 to 1000000 credits"),
        );
    }
    if b.lease.is_some_and(|want| !(1..=MAX_LEASE).contains(&want)) {
        return (Outcome::BadRequest, bad("lease must be 1 to 10000 credits"));
    }
    // Read before the answer is made: every change up to it has already
    // reached the caches the answer comes from.
    let seq = Some(s.store.applied_seq());
    let principal: Arc<Principal> = match s.keys.verify(credential, &VerifyContext::default()).await
    {
        Ok(p) => p,
        Err(VerifyError::Unavailable) => {
            s.metrics.store_error();
            let response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key store is unavailable",
            );
            return (Outcome::Unavailable, response);
        }
        Err(e) => {
            let code = code_of(e);
            let mut answer = ValidateResponse::refusal(code);
            answer.seq = seq;
            return (Outcome::Answered(code), Json(answer).into_response());
        }
    };
    if let Some(scope) = b.scope.as_deref().filter(|s| !s.is_empty()) {
        if !principal.has_scope(scope) {
            let mut answer = ValidateResponse::refusal(Code::InsufficientScope);
            answer.user_id = Some(principal.id().to_owned());
            answer.seq = seq;
            let response = Json(answer).into_response();
            return (Outcome::Answered(Code::InsufficientScope), response);
        }
    }
    let mut answer = ValidateResponse::valid(principal.id(), principal.scopes().to_vec());
    // Only keys with credits cost a round trip: the cached principal says
    // which (the store's record labels them).
    // Only they lease: for others `lease` is ignored, as `cost` is.
    if principal.label(auth_sqlx::CREDITS_LABEL).is_some() {
        let now = SystemTime::now();
        let digest = credential.digest();
        let grant = match b.lease {
            Some(want) => s.store.lease(digest, cost, want, service, now).await,
            None => s.store.spend(digest, cost, now).await.map(LeaseGrant::from),
        };
        match grant {
            Ok(LeaseGrant::Unlimited) => {}
            Ok(LeaseGrant::Leased {
                remaining,
                lease,
                ttl,
            }) => {
                answer.credits_remaining = Some(remaining);
                if let Some((id, credits)) = lease {
                    s.metrics.leased(credits);
                    let ttl = ttl.as_millis();
                    answer.lease = Some(Lease {
                        id,
                        credits,
                        ttl_ms: u64::try_from(ttl).unwrap_or(u64::MAX),
                    });
                }
            }
            // Revoked since the cache said valid: the live row decides.
            Ok(LeaseGrant::Refused(e)) => {
                let code = code_of(e);
                let mut refusal = ValidateResponse::refusal(code);
                refusal.seq = seq;
                let response = Json(refusal).into_response();
                return (Outcome::Answered(code), response);
            }
            Ok(LeaseGrant::Exceeded { retry_after }) => {
                let mut refusal = ValidateResponse::refusal(Code::UsageExceeded);
                refusal.user_id = Some(principal.id().to_owned());
                refusal.retry_after = retry_after.map(|d| d.as_secs());
                refusal.seq = seq;
                let response = Json(refusal).into_response();
                return (Outcome::Answered(Code::UsageExceeded), response);
            }
            // Never valid when the spend could not be made.
            Err(e) => {
                s.metrics.store_error();
                tracing::warn!(error = %e, "could not spend a key's credits");
                let response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the key store is unavailable",
                );
                return (Outcome::Unavailable, response);
            }
        }
    }
    answer.rate_limit = principal.rate_limit().map(|p| RateLimit {
        requests: p.requests,
        window: p.window.as_secs(),
    });
    // A service's cache never keeps the grant past it.
    answer.expires_at = principal.expires_at().map(unix);
    answer.seq = seq;
    (Outcome::Answered(Code::Valid), Json(answer).into_response())
}

/// Where a service returns what it did not spend of a lease
/// ([`auth_core::protocol::ReturnLease`]): given back to the key once,
/// before the lease ends, at most what was leased, and only while the
/// key's refill period is the one of the grant; `returned` says how many
/// (0 for a lease that ended, was returned, is another service's or is
/// unknown — the answer does not say which).
#[utoipa::path(post, path = "/api/v1/api-keys/lease/return", tag = "validate",
    request_body = ReturnLease, security(("serviceToken" = [])),
    responses((status = 200, description = "the credits given back to the key", body = LeaseReturned),
        (status = 400, description = "a malformed body or lease id", body = ErrorBody),
        (status = 401, description = "not a known service"),
        (status = 503, description = "the key store failed", body = ErrorBody)))]
async fn return_lease(
    State(s): State<AppState>,
    caller: Option<Authenticated>,
    Body(b): Body<ReturnLease>,
) -> Response {
    // The lease's holder only: the credential the guard admitted.
    let service = caller.as_ref().and_then(|c| c.key_id());
    match s
        .store
        .return_lease(&b.lease_id, b.unused, service, SystemTime::now())
        .await
    {
        Ok(returned) => {
            s.metrics.returned(returned);
            Json(LeaseReturned { returned }).into_response()
        }
        Err(e) => s.store_error(&e),
    }
}

/// How often the changes stream sends a heartbeat (an SSE comment) while
/// this instance follows the change log: a client that hears nothing for a
/// few of these knows the stream is dead, however it looks.
const STREAM_HEARTBEAT: Duration = Duration::from_secs(1);

/// The most changes replayed to a client resuming; further behind, a reset.
const MAX_REPLAY: u64 = 10_000;

/// Where a changes stream starts for a client that last saw `resume`: the
/// events to send first (a replay, or a reset) and the position after them.
/// The position is what this instance has applied to its own caches, so a
/// client is never told of a change this instance could still answer
/// against.
async fn stream_start(
    store: &SqlKeyStore,
    resume: Option<u64>,
) -> Result<(Vec<ChangeEvent>, u64), auth_sqlx::Error> {
    let applied = store.applied_seq();
    let reset = || {
        vec![
            ChangeEvent::Reset { seq: applied },
            ChangeEvent::Ready { seq: applied },
        ]
    };
    let Some(from) = resume else {
        return Ok((vec![ChangeEvent::Ready { seq: applied }], applied));
    };
    if from > applied || applied - from > MAX_REPLAY {
        // From another database, or too far behind: start over.
        return Ok((reset(), applied));
    }
    let mut events = Vec::new();
    let mut pos = from;
    while pos < applied {
        let page = store.changes_since(pos, 1000).await?;
        if page.is_empty() {
            break;
        }
        for (seq, digest) in page {
            if seq > applied {
                break;
            }
            if seq != pos + 1 {
                // Pruned (the first) or a hole: cannot be replayed.
                return Ok((reset(), applied));
            }
            events.push(ChangeEvent::Key {
                seq,
                digest: digest.to_hex(),
            });
            pos = seq;
        }
    }
    if pos != applied {
        return Ok((reset(), applied));
    }
    events.push(ChangeEvent::Ready { seq: applied });
    Ok((events, applied))
}

fn sse_event(e: &ChangeEvent) -> Event {
    Event::default()
        .id(e.seq().to_string())
        .event(e.name())
        .data(e.data())
}

/// A changes stream's state between events.
struct StreamState {
    live: tokio::sync::broadcast::Receiver<auth_sqlx::Logged>,
    pending: std::collections::VecDeque<ChangeEvent>,
    pos: u64,
    store: SqlKeyStore,
    heartbeat: tokio::time::Interval,
    /// The caller's own credential: when it changes, the stream ends (the
    /// reconnect is refused if it was revoked).
    own: Option<auth_core::Digest>,
    ending: bool,
    metrics: Arc<ServerMetrics>,
    /// Counts this stream as open until the state is dropped, however the
    /// stream ends (a client hanging up drops it with the response body).
    _subscriber: metrics::Subscriber,
}

impl StreamState {
    /// The next SSE event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.metrics.stream_event(e.name());
                return Some(sse_event(&e));
            }
            if self.ending {
                return None;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(auth_sqlx::Logged::Key { seq, digest }) if seq > self.pos => {
                        self.pos = seq;
                        self.ending = self.own == Some(digest);
                        self.pending.push_back(ChangeEvent::Key {
                            seq,
                            digest: digest.to_hex(),
                        });
                    }
                    // Already sent (replayed).
                    Ok(auth_sqlx::Logged::Key { .. }) => {}
                    Ok(auth_sqlx::Logged::Reset { seq }) => {
                        self.pos = self.pos.max(seq);
                        self.pending.push_back(ChangeEvent::Reset { seq: self.pos });
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // This client fell behind: what it missed is gone.
                        self.pos = self.store.applied_seq().max(self.pos);
                        self.pending.push_back(ChangeEvent::Reset { seq: self.pos });
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => {
                    if !self.store.following() {
                        // This instance no longer hears of changes: a stream
                        // that looked live would say nothing. End it; the
                        // client bounds its grants until one is back.
                        tracing::warn!("changes stream closed: the change log is not being read");
                        return None;
                    }
                    return Some(Event::default().comment("ping"));
                }
            }
        }
    }
}

/// The changes stream (Server-Sent Events, [`auth_core::protocol::ChangeEvent`]):
/// every change to a key, in commit order, from every instance; with
/// `Last-Event-ID`, what the client missed first, or a `reset`. A comment
/// every second while this instance follows the change log.
#[utoipa::path(get, path = "/api/v1/api-keys/events", tag = "validate",
    params(("Last-Event-ID" = Option<u64>, Header, description = "the last sequence number seen")),
    security(("serviceToken" = [])),
    responses((status = 200, description = "text/event-stream: `ready`, `key`, `reset` events"),
        (status = 400, body = ErrorBody), (status = 401, description = "not a known service"),
        (status = 503, body = ErrorBody)))]
async fn events(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let mut response = events_answer(s, headers).await;
    // Marks the answer as the handler's: a 503 without it was the guard's.
    response.extensions_mut().insert(Handled);
    response
}

/// The changes stream's answer: the stream, or why not.
async fn events_answer(s: AppState, headers: axum::http::HeaderMap) -> Response {
    let resume = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return bad("Last-Event-ID must be a sequence number"),
        },
        Some(Err(_)) => return bad("Last-Event-ID must be a sequence number"),
    };
    if !s.store.following() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the change log is not being read",
        );
    }
    let own = headers
        .get(SERVICE_HEADER)
        .map(|v| auth_core::Digest::of(v.as_bytes()));
    // Subscribed before the position is read: nothing falls between.
    let live = s.store.logged();
    let (first, pos) = match stream_start(&s.store, resume).await {
        Ok(start) => start,
        Err(e) => return s.store_error(&e),
    };
    let mut heartbeat = tokio::time::interval(STREAM_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    let state = StreamState {
        live,
        pending: first.into(),
        pos,
        store: s.store.clone(),
        heartbeat,
        own,
        ending: false,
        _subscriber: s.metrics.subscriber(),
        metrics: s.metrics,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<_, std::convert::Infallible>(event), state))
    });
    Sse::new(stream).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "auth-server", description = "The central API key service."),
    paths(health_doc, ready, validate, return_lease, usage::report, events, list, create, get_key,
        update, delete, disable, rotate, usage::key_usage, usage::usage, audit::audit, list_services, create_service, get_service, delete_service, disable_service,
        rotate_service, scanning::github, webhooks::create, webhooks::list, webhooks::get,
        webhooks::delete, webhooks::deliveries, webhooks::rotate_secret),
    components(schemas(Code, RateLimit)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The three ways in: the admin key (header or bearer) and services'
/// credentials.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "adminKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
        components.add_security_scheme(
            "adminBearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "serviceToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Service-Token"))),
        );
    }
}

/// The OpenAPI document of this API (3.1), generated from the handlers and
/// the protocol's types, for the default [`Options`].
pub fn openapi() -> Value {
    openapi_for(ValidateAuth::ServiceToken)
}

/// The OpenAPI document for a service whose validate endpoint asks for
/// `validate_auth`.
pub fn openapi_for(validate_auth: ValidateAuth) -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if validate_auth == ValidateAuth::None {
        for path in [VALIDATE_PATH, LEASE_RETURN_PATH, USAGE_PATH] {
            if let Some(op) = doc
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
            {
                op.security = None;
            }
        }
    }
    serde_json::to_value(doc).unwrap_or(Value::Null)
}
