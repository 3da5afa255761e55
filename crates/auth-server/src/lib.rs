//! The central key service (see the README): the HTTP API, built from this
//! workspace's own parts — auth-sqlx for the keys, auth-core and auth-axum
//! for guarding its own routes. `main.rs` is the CLI around it.
#![forbid(unsafe_code)]
// One package, two targets: the binary uses what the library does not
// (clap, the log formats) and the other way round.
#![allow(unused_crate_dependencies)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use auth_axum::AuthLayer;
use auth_core::{
    CacheConfig, Cached, Credential, CredentialSources, Guard, HashedKeyStore, KeyFile, Principal,
    RateLimitPolicy, Verifier, VerifyContext, VerifyError,
};
use auth_sqlx::{CreatedKey, KeyInfo, NewKey, SqlKeyStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// The scope a service's credential needs to call the validate endpoint.
pub const VALIDATE_SCOPE: &str = "keys:validate";
/// The header services send their credential in.
pub const SERVICE_HEADER: &str = "x-service-token";
/// Largest admin request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

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
    /// Validation reads through this cache, kept in step with the store.
    keys: Arc<Cached<HashedKeyStore<SqlKeyStore>>>,
}

/// The HTTP API: `/health`, `/ready`, the validate endpoint (service
/// credentials with the `keys:validate` scope) and the admin API (the admin
/// key from the key file).
pub async fn app(store: SqlKeyStore, data_dir: &Path) -> Result<Router, Error> {
    let keys = Arc::new(Cached::new(
        HashedKeyStore::new(store.clone()),
        CacheConfig::default(),
    ));
    store.invalidate_on_change(keys.clone());
    store.listen().await?;
    store.spawn_last_used_flush(Duration::from_secs(30));

    let admin_key = KeyFile::builder()
        .path(admin_key_path(data_dir))
        .env_var(None)
        .load_or_create()?;
    if admin_key.was_created() {
        tracing::info!(path = %admin_key.path().display(), "admin key created (mode 0600)");
    }
    let admin = Guard::builder(admin_key).keyring("admin").build()?;
    let services = Guard::builder(keys.clone())
        .keyring("services")
        .sources(
            CredentialSources::default()
                .key_header(SERVICE_HEADER)
                .bearer(false),
        )
        .require_scope(VALIDATE_SCOPE)
        .build()?;

    let state = AppState { store, keys };
    let admin_routes = Router::new()
        .route("/api/v1/keys", get(list).post(create))
        .route(
            "/api/v1/keys/{id}",
            get(get_key).delete(delete).patch(update),
        )
        .route("/api/v1/keys/{id}/disable", post(disable))
        .route("/api/v1/keys/{id}/rotate", post(rotate))
        .route_layer(AuthLayer::new(admin));
    let validate_routes = Router::new()
        .route("/api/v1/api-keys/validate", post(validate))
        .route_layer(AuthLayer::new(services));
    Ok(Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/admin", get(admin_page))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .merge(admin_routes)
        .merge(validate_routes)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state))
}

/// A JSON error answer.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn store_error(e: &auth_sqlx::Error) -> Response {
    match e {
        auth_sqlx::Error::Invalid(why) => error(StatusCode::BAD_REQUEST, "invalid_request", why),
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
                        format!("the body could not be read (at most {BODY_LIMIT} bytes)")
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

/// A key's record as the API shows it: never the key, never its digest.
pub fn info_json(info: &KeyInfo) -> Value {
    json!({
        "id": info.id,
        "prefix": info.prefix,
        "owner": info.owner,
        "scopes": info.scopes,
        "rateLimit": info.rate_limit.map(|p| json!({"requests": p.requests, "window": p.window.as_secs()})),
        "createdAt": unix(info.created_at),
        "expiresAt": info.expires_at.map(unix),
        "disabledAt": info.disabled_at.map(unix),
        "lastUsedAt": info.last_used_at.map(unix),
    })
}

/// A new key as the API answers it: the plaintext, once.
pub fn created_json(created: &CreatedKey) -> Value {
    let mut v = info_json(&created.info);
    v["key"] = Value::from(created.key.expose());
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    requests: i64,
    window: i64,
}

/// A 400 with this message.
fn bad(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn rate_limit(body: Option<RateLimitBody>) -> Result<Option<RateLimitPolicy>, &'static str> {
    let Some(b) = body else { return Ok(None) };
    let requests = u32::try_from(b.requests).ok().filter(|r| *r > 0);
    let window = u64::try_from(b.window).ok().filter(|w| *w > 0);
    match (requests, window) {
        (Some(r), Some(w)) => Ok(Some(RateLimitPolicy::new(r, Duration::from_secs(w)))),
        _ => Err("rateLimit needs positive `requests` and `window` (seconds)"),
    }
}

fn expiry(at: Option<i64>) -> Result<Option<SystemTime>, &'static str> {
    match at {
        None => Ok(None),
        Some(s) if s > 0 => Ok(Some(
            SystemTime::UNIX_EPOCH + Duration::from_secs(s.unsigned_abs()),
        )),
        Some(_) => Err("expiresAt must be a positive Unix time in seconds"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBody {
    owner: String,
    #[serde(default)]
    scopes: Vec<String>,
    rate_limit: Option<RateLimitBody>,
    expires_at: Option<i64>,
}

async fn create(State(s): State<AppState>, Body(b): Body<CreateBody>) -> Response {
    let new = match (rate_limit(b.rate_limit), expiry(b.expires_at)) {
        (Ok(rate_limit), Ok(expires_at)) => NewKey {
            owner: b.owner,
            scopes: b.scopes,
            rate_limit,
            expires_at,
        },
        (Err(m), _) | (_, Err(m)) => return bad(m),
    };
    match s.store.create(new).await {
        Ok(created) => (StatusCode::CREATED, Json(created_json(&created))).into_response(),
        Err(e) => store_error(&e),
    }
}

async fn list(State(s): State<AppState>) -> Response {
    match s.store.list().await {
        Ok(keys) => {
            Json(json!({"keys": keys.iter().map(info_json).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => store_error(&e),
    }
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no key with this id")
}

async fn get_key(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.get(&id).await {
        Ok(Some(info)) => Json(info_json(&info)).into_response(),
        Ok(None) => not_found(),
        Err(e) => store_error(&e),
    }
}

async fn disable(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.disable(&id).await {
        Ok(true) => get_key(State(s), UrlPath(id)).await,
        Ok(false) => not_found(),
        Err(e) => store_error(&e),
    }
}

async fn delete(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.store.delete(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(),
        Err(e) => store_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateBody {
    /// Seconds the old key stays valid.
    overlap: i64,
}

async fn rotate(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<RotateBody>,
) -> Response {
    let Ok(overlap) = u64::try_from(b.overlap) else {
        return bad("overlap must be zero or more seconds");
    };
    match s.store.rotate(&id, Duration::from_secs(overlap)).await {
        Ok(Some(created)) => (StatusCode::CREATED, Json(created_json(&created))).into_response(),
        Ok(None) => not_found(),
        Err(e) => store_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateBody {
    scopes: Option<Vec<String>>,
    /// `null` removes the limit; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimitBody>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<i64>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

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
        Err(m) => return bad(m),
    };
    if let Some(scopes) = &b.scopes {
        if let Err(e) = auth_sqlx::check_scopes(scopes) {
            return store_error(&e);
        }
    }
    match s.store.get(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(),
        Err(e) => return store_error(&e),
    }
    let result = async {
        if let Some(scopes) = &b.scopes {
            s.store.set_scopes(&id, scopes).await?;
        }
        if let Some(rate) = rate {
            s.store.set_rate_limit(&id, rate).await?;
        }
        if let Some(expires) = expires {
            s.store.set_expiry(&id, expires).await?;
        }
        Ok::<_, auth_sqlx::Error>(())
    }
    .await;
    match result {
        Ok(()) => get_key(State(s), UrlPath(id)).await,
        Err(e) => store_error(&e),
    }
}

/// The OpenAPI document of this API (3.1), with its two security schemes.
pub fn openapi() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let key = json!({"$ref": "#/components/schemas/Key"});
    let admin = json!([{"adminKey": []}, {"adminBearer": []}]);
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let answers = |ok: &str, schema: &Value| {
        json!({
            ok: {"description": "done", "content": {"application/json": {"schema": schema}}},
            "400": {"description": "bad input", "content": {"application/json": {"schema": error}}},
            "401": {"description": "no or wrong admin key"},
            "404": {"description": "no such key", "content": {"application/json": {"schema": error}}},
            "503": {"description": "the database is unavailable"}
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "auth-server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "The central API key service."},
        "paths": {
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/ready": {"get": {"summary": "Readiness (the database answers)",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/api/v1/api-keys/validate": {"post": {
                "summary": "Validate a key (for services)",
                "security": [{"serviceToken": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["apiKey"],
                    "properties": {"apiKey": {"type": "string"}, "scope": {"type": "string"}}}}}},
                "responses": {"200": {"description": "the answer", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["valid"],
                    "properties": {"valid": {"type": "boolean"}, "userId": {"type": "string"},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "rateLimit": {"$ref": "#/components/schemas/RateLimit"},
                        "error": {"type": "string"}}}}}},
                    "401": {"description": "not a known service"},
                    "503": {"description": "the database is unavailable"}}}},
            "/api/v1/keys": {
                "get": {"summary": "List keys", "security": admin, "responses": answers("200", &json!({
                    "type": "object", "properties": {"keys": {"type": "array", "items": key}}}))},
                "post": {"summary": "Create a key (the answer holds it, once)", "security": admin,
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["owner"], "additionalProperties": false,
                        "properties": {"owner": {"type": "string"},
                            "scopes": {"type": "array", "items": {"type": "string"}},
                            "rateLimit": {"$ref": "#/components/schemas/RateLimit"},
                            "expiresAt": {"type": "integer", "description": "Unix seconds"}}}}}},
                    "responses": answers("201", &key)}},
            "/api/v1/keys/{id}": {
                "parameters": id,
                "get": {"summary": "One key", "security": admin, "responses": answers("200", &key)},
                "patch": {"summary": "Change scopes, rate limit or expiry", "security": admin,
                    "responses": answers("200", &key)},
                "delete": {"summary": "Delete a key", "security": admin,
                    "responses": {"204": {"description": "deleted"}, "404": {"description": "no such key"}}}},
            "/api/v1/keys/{id}/disable": {"parameters": id, "post": {"summary": "Disable a key now",
                "security": admin, "responses": answers("200", &key)}},
            "/api/v1/keys/{id}/rotate": {"parameters": id, "post": {
                "summary": "A new key; the old one valid for the overlap", "security": admin,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["overlap"],
                    "properties": {"overlap": {"type": "integer", "description": "seconds"}}}}}},
                "responses": answers("201", &key)}}
        },
        "components": {
            "securitySchemes": {
                "adminKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "adminBearer": {"type": "http", "scheme": "bearer"},
                "serviceToken": {"type": "apiKey", "in": "header", "name": "X-Service-Token"}
            },
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
                "RateLimit": {"type": "object", "properties": {"requests": {"type": "integer"}, "window": {"type": "integer", "description": "seconds"}}},
                "Key": {"type": "object", "properties": {
                    "id": {"type": "string"}, "prefix": {"type": "string"}, "owner": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string"}},
                    "rateLimit": {"$ref": "#/components/schemas/RateLimit"},
                    "createdAt": {"type": "integer"}, "expiresAt": {"type": "integer"},
                    "disabledAt": {"type": "integer"}, "lastUsedAt": {"type": "integer"},
                    "key": {"type": "string", "description": "only in the answer that made the key"}}}
            }
        }
    })
}

/// The admin page: static HTML and script, no data — it fetches the keys
/// with the admin key the operator gives it.
async fn admin_page() -> Response {
    (
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
        ],
        axum::response::Html(include_str!("admin.html")),
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    match s.store.ping().await {
        Ok(_) => Json(json!({"status": "ready", "database": "ok"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready", "database": "unavailable"})),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidateBody {
    api_key: String,
    scope: Option<String>,
}

/// The protocol auth-remote speaks: `{apiKey, scope}` → `{valid, userId,
/// scopes, rateLimit, error}`.
async fn validate(State(s): State<AppState>, Body(b): Body<ValidateBody>) -> Response {
    let credential = Credential::new(b.api_key.into_bytes());
    let answer = s.keys.verify(&credential, &VerifyContext::default()).await;
    let principal: Arc<Principal> = match answer {
        Ok(p) => p,
        Err(VerifyError::Unavailable) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the key store is unavailable",
            );
        }
        Err(e) => {
            return Json(json!({"valid": false, "error": e.reason()})).into_response();
        }
    };
    if let Some(scope) = b.scope.as_deref().filter(|s| !s.is_empty()) {
        if !principal.has_scope(scope) {
            return Json(json!({
                "valid": false,
                "error": format!("API key does not have scope: {scope}"),
            }))
            .into_response();
        }
    }
    let mut answer = json!({
        "valid": true,
        "userId": principal.id(),
        "scopes": principal.scopes(),
    });
    if let Some(p) = principal.rate_limit() {
        answer["rateLimit"] = json!({"requests": p.requests, "window": p.window.as_secs()});
    }
    Json(answer).into_response()
}
