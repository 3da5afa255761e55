//! Usage counts: services' reports of the decisions they made without
//! asking (`POST` [`USAGE_PATH`]), and the admin API's reads of the counts
//! by key and hour.

use std::time::{Duration, SystemTime};

use auth_core::Digest;
use auth_core::protocol::{UsageAccepted, UsageCounts, UsageReport};
use auth_sqlx::{KeyUsage, UsageBucket};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{AppState, Body, ErrorBody, MAX_UNIX, bad, error, interval_secs, not_found};

/// Largest usage report body: 5,000 entries of up to ~260 bytes (every
/// code at its largest count).
pub(crate) const REPORT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// How old a reported hour may be (older entries are skipped).
pub(crate) const REPORT_PAST: Duration = Duration::from_secs(7 * 86_400);

/// How far back a read of every key's usage may look (one key's: as far
/// as counts are kept).
pub(crate) const ALL_KEYS_PAST: Duration = Duration::from_secs(31 * 86_400);

/// How far back a read may look without `since`.
const DEFAULT_SINCE: Duration = Duration::from_secs(24 * 3600);

/// A service's report of the decisions it made about keys without asking
/// (answers from its cache, credits spent from a lease): added to this
/// service's counts, written with them. The whole report is refused (400)
/// if one entry is out of range; entries for digests of no key are
/// dropped when written.
#[utoipa::path(post, path = "/api/v1/api-keys/usage", tag = "validate",
    request_body = UsageReport, security(("serviceToken" = [])),
    responses((status = 200, description = "the entries taken", body = UsageAccepted),
        (status = 400, description = "a malformed report or an entry out of range", body = ErrorBody),
        (status = 401, description = "not a known service"),
        (status = 503, description = "too many counts waiting to be written; send again later", body = ErrorBody)))]
pub(crate) async fn report(
    // The route's guard admitted the caller (`--validate-auth
    // service-token`): anyone may count for any key it reports.
    State(s): State<AppState>,
    Body(report): Body<UsageReport>,
) -> Response {
    if let Err(e) = report.check() {
        return bad(&e.to_string());
    }
    let now = crate::unix(SystemTime::now());
    let mut decisions = 0u64;
    let mut entries = Vec::with_capacity(report.entries.len());
    for entry in &report.entries {
        // Checked: 64 lowercase hex digits, an hour's start in range.
        let (Ok(digest), Ok(hour)) = (Digest::from_hex(&entry.digest), i64::try_from(entry.hour))
        else {
            return bad("a usage entry is out of range");
        };
        // Only hours a read can show and pruning will end: a service
        // whose clock is off, or that kept counts through a long outage,
        // loses those entries, never the report.
        if entry.hour.saturating_add(REPORT_PAST.as_secs()) < now
            || entry.hour > now.saturating_add(3600)
        {
            continue;
        }
        decisions = decisions.saturating_add(
            entry
                .counts
                .by_code()
                .iter()
                .fold(0u64, |sum, (_, n)| sum.saturating_add(n.unsigned_abs())),
        );
        entries.push((digest, hour, entry.counts));
    }
    // All or nothing: a refused report is sent again whole.
    if !s.store.add_usage(&entries) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many usage counts are waiting to be written; send the report again later",
        );
    }
    s.metrics.usage("reported", decisions);
    Json(UsageAccepted {
        accepted: entries.len() as u64,
    })
    .into_response()
}

/// `since`: Unix seconds, or a time back from now (`90m`, `24h`, `7d`).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct KeyUsageQuery {
    /// From this hour on: Unix seconds or a time back from now (`24h`,
    /// `7d`); default 24 hours ago.
    since: Option<String>,
}

/// `owner` and `since`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// Only this owner's keys (default: every key).
    owner: Option<String>,
    /// From this hour on: Unix seconds or a time back from now (`24h`,
    /// `7d`), at most 31 days back; default 24 hours ago.
    since: Option<String>,
}

/// Reads `since`: Unix seconds (up to the year 9999) or a time back from
/// now; default 24 hours ago.
pub(crate) fn since(text: Option<&str>, now: SystemTime) -> Result<SystemTime, &'static str> {
    const WHAT: &str = "since must be Unix seconds or a time back from now such as 24h or 7d";
    let Some(text) = text.map(str::trim) else {
        return Ok(now
            .checked_sub(DEFAULT_SINCE)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    };
    if let Ok(unix) = text.parse::<u64>() {
        return (i64::try_from(unix).is_ok_and(|u| u <= MAX_UNIX))
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
            .ok_or(WHAT);
    }
    let back = interval_secs(text).ok_or(WHAT)?;
    // Never before 1970 (which `SystemTime` could hold).
    Ok(now
        .checked_sub(Duration::from_secs(back))
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

/// One hour of a key's usage as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct BucketView {
    /// The hour's start, Unix seconds.
    hour: u64,
    /// Decisions by code (codes with none left out).
    counts: UsageCounts,
    /// All decisions in the hour.
    total: u64,
}

/// A key's usage as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyUsageView {
    /// The key's id.
    id: String,
    /// Its owner.
    owner: String,
    /// Hours with decisions, oldest first.
    buckets: Vec<BucketView>,
}

/// The answer for one key.
#[derive(Serialize, ToSchema)]
pub(crate) struct OneKeyUsage {
    /// The key's id.
    id: String,
    /// Its owner.
    owner: String,
    /// The hour the buckets start from, Unix seconds.
    since: u64,
    /// Hours with decisions, oldest first.
    buckets: Vec<BucketView>,
}

/// The answer for many keys.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageList {
    /// The hour the buckets start from, Unix seconds.
    since: u64,
    /// The owner asked for, if any.
    owner: Option<String>,
    /// Keys with decisions since then.
    keys: Vec<KeyUsageView>,
}

fn buckets(buckets: Vec<UsageBucket>) -> Vec<BucketView> {
    buckets
        .into_iter()
        .map(|b| BucketView {
            hour: b.hour,
            total: b.total(),
            counts: b.counts,
        })
        .collect()
}

/// A key's usage as JSON, as `GET /api/v1/keys/{id}/usage` answers (the
/// CLI's `--json`).
pub fn usage_json(usage: &KeyUsage, since: SystemTime) -> serde_json::Value {
    serde_json::to_value(OneKeyUsage {
        id: usage.id.clone(),
        owner: usage.owner.clone(),
        since: hour_secs(since),
        buckets: buckets(usage.buckets.clone()),
    })
    .unwrap_or(serde_json::Value::Null)
}

fn hour_secs(at: SystemTime) -> u64 {
    u64::try_from(auth_sqlx::hour_of(at)).unwrap_or(0)
}

/// A key's decisions by hour and code: what this instance counted (its
/// counts not yet written are written first), what other instances have
/// written (every 10 s), and what services reported.
#[utoipa::path(get, path = "/api/v1/keys/{id}/usage", tag = "keys",
    params(("id" = String, Path), KeyUsageQuery),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = OneKeyUsage), (status = 400, body = ErrorBody), (status = 401),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn key_usage(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<KeyUsageQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad("the query takes `since` only");
    };
    let from = match since(query.since.as_deref(), SystemTime::now()) {
        Ok(t) => t,
        Err(message) => return bad(message),
    };
    match s.store.key_usage(&id, from).await {
        Ok(Some(KeyUsage {
            id,
            owner,
            buckets: b,
        })) => Json(OneKeyUsage {
            id,
            owner,
            since: hour_secs(from),
            buckets: buckets(b),
        })
        .into_response(),
        Ok(None) => not_found(),
        Err(e) => s.store_error(&e),
    }
}

/// Every key's decisions by hour and code (or one owner's keys'), as for
/// one key; keys without decisions since then are left out.
#[utoipa::path(get, path = "/api/v1/usage", tag = "keys", params(UsageQuery),
    security(("adminKey" = []), ("adminBearer" = [])),
    responses((status = 200, body = UsageList), (status = 400, body = ErrorBody), (status = 401),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn usage(
    State(s): State<AppState>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad("the query takes `owner` and `since` only");
    };
    let from = match since(query.since.as_deref(), SystemTime::now()) {
        Ok(t) => t,
        Err(message) => return bad(message),
    };
    if SystemTime::now()
        .duration_since(from)
        .is_ok_and(|back| back > ALL_KEYS_PAST + Duration::from_secs(3600))
    {
        return bad(
            "every key's usage goes back at most 31 days (one key's: GET /api/v1/keys/{id}/usage)",
        );
    }
    let owner = query.owner.filter(|o| !o.is_empty());
    match s.store.usage(owner.as_deref(), from).await {
        Ok(keys) => Json(UsageList {
            since: hour_secs(from),
            owner,
            keys: keys
                .into_iter()
                .map(|k| KeyUsageView {
                    id: k.id,
                    owner: k.owner,
                    buckets: buckets(k.buckets),
                })
                .collect(),
        })
        .into_response(),
        Err(e) => s.store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_unix_seconds_or_a_time_back() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |t: &str| {
            since(Some(t), now).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(at("1700000000"), Ok(1_700_000_000));
        assert_eq!(at("24h"), Ok(1_800_000_000 - 86_400));
        assert_eq!(at("7d"), Ok(1_800_000_000 - 7 * 86_400));
        assert_eq!(at("100000000d"), Ok(0), "before 1970: from the start");
        for bad in [
            "",
            "-5",
            "1e9",
            "24x",
            "253402300800",
            "99999999999999999999",
            "h",
        ] {
            assert!(at(bad).is_err(), "{bad}");
        }
        let default = since(None, now).unwrap();
        assert_eq!(now.duration_since(default).unwrap(), DEFAULT_SINCE);
    }
}
