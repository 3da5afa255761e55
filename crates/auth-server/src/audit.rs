//! The audit trail, read: `GET /api/v1/audit` and its JSON, which the
//! CLI's `audit --json` prints too. The records are written by the store,
//! in each admin write's own transaction (see `auth_sqlx::Actor`).

use std::time::SystemTime;

use auth_sqlx::{AuditFilter, AuditRecord, MAX_AUDIT_READ};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::{AppState, ErrorBody, bad};

/// How many records a read returns without `limit`.
pub(crate) const DEFAULT_LIMIT: u32 = 100;

/// `key`, `since` and `limit`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only the records of this key or service credential id (a deleted
    /// one's too).
    key: Option<String>,
    /// From this time on: Unix seconds or a time back from now (`24h`,
    /// `7d`); default: from the first record.
    since: Option<String>,
    /// At most this many, newest first: 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// One record as the API shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditRecordView {
    /// Its place in the trail: unique, increasing in commit order.
    seq: u64,
    /// When the write was made, Unix MILLISECONDS.
    at: u64,
    /// `admin:<fingerprint of the admin key's digest>`, `service:svc_…`,
    /// `cli:<OS user>` or `library`.
    actor: String,
    /// `create`, `update`, `disable`, `delete` or `rotate`.
    action: String,
    /// `key` or `service`.
    resource: String,
    /// The key's or credential's id.
    key_id: String,
    /// The fields the write changed: `{"field": {"from": …, "to": …}}`
    /// (`owner` or `name`, `scopes`, `rateLimit`, `expiresAt`,
    /// `disabledAt`, `credits`; a rotation's `replacedBy` and `replaces`).
    /// Never a key or a digest.
    #[schema(value_type = Object)]
    changes: Value,
    /// Where the write came from when not a person; `null` for admin writes.
    source: Option<String>,
}

/// The records read, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditList {
    records: Vec<AuditRecordView>,
}

fn view(r: &AuditRecord) -> AuditRecordView {
    AuditRecordView {
        seq: r.seq,
        at: crate::unix_ms(r.at),
        actor: r.actor.clone(),
        action: r.action.clone(),
        resource: r.resource.clone(),
        key_id: r.key_id.clone(),
        changes: r.changes_json(),
        source: r.source.clone(),
    }
}

/// Audit records as JSON, as `GET /api/v1/audit` answers (the CLI's
/// `audit --json`): `{"records": [...]}`.
pub fn audit_json(records: &[AuditRecord]) -> Value {
    serde_json::to_value(AuditList {
        records: records.iter().map(view).collect(),
    })
    .unwrap_or(Value::Null)
}

/// The audit trail, newest first: one record per write to a key or a
/// service credential — through this API, the admin page or the CLI — with
/// who made it and the fields before and after. Append-only: no route, and
/// no statement in the code, changes or removes a record.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = AuditList),
        (status = 400, description = "an unknown parameter, a bad `since` or `limit`", body = ErrorBody),
        (status = 401), (status = 503, body = ErrorBody)))]
pub(crate) async fn audit(
    State(s): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad("the query takes `key`, `since` and `limit` (1 to 1000) only");
    };
    let since = match query.since.as_deref() {
        None => None,
        Some(text) => match crate::usage::since(Some(text), SystemTime::now()) {
            Ok(t) => Some(t),
            Err(message) => return bad(message),
        },
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_AUDIT_READ).contains(&limit) {
        return bad("limit must be 1 to 1000");
    }
    let key = query.key.filter(|k| !k.is_empty());
    // An id (`key_…`, `svc_…`), never a key pasted into a URL that proxies
    // may log: refused before anything else reads it.
    if key.as_deref().is_some_and(|k| !is_record_id(k)) {
        return bad(
            "key must be a record id such as key_0123456789abcdef (or a webhook's wh_…), never the key itself",
        );
    }
    let filter = AuditFilter {
        key_id: key.as_deref(),
        since,
        limit,
    };
    match s.store.audit(filter).await {
        Ok(records) => Json(audit_json(&records)).into_response(),
        Err(e) => s.store_error(&e),
    }
}

/// `key_…`, `svc_…` or `wh_…` and lowercase hex: what record ids look
/// like.
fn is_record_id(text: &str) -> bool {
    let Some((kind, hex)) = text.split_once('_') else {
        return false;
    };
    matches!(kind, "key" | "svc" | "wh")
        && (1..=64).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
