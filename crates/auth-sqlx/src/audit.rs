//! The audit trail (issue 17): every admin write to a key or a service
//! credential appends one record — who, when, what, the fields before and
//! after — in the write's own transaction. Nothing updates or deletes a
//! record: there is no such statement in this crate, and the database
//! refuses one (triggers made by [`SqlKeyStore::migrate`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::{Backend, Error, KeyInfo, KeyKind, SqlKeyStore, is_hidden, millis, secs};

/// The most records one [`SqlKeyStore::audit`] read returns.
pub const MAX_AUDIT_READ: u32 = 1000;

/// The longest name an actor keeps, in characters (a stray environment
/// variable cannot fill the trail).
const MAX_ACTOR_CHARS: usize = 100;

/// The longest `source` a record keeps, in characters.
pub const MAX_SOURCE_CHARS: usize = 2048;

/// The message both backends refuse a change to a record with.
const APPEND_ONLY: &str = "auth_audit is append-only";

/// Who made a write, as its audit record names them: never a key, a
/// digest or anything that would let one be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Actor {
    /// The holder of an admin key, by the fingerprint of its digest (8 hex
    /// digits; see [`Actor::admin`]). Recorded as `admin:<fingerprint>`.
    Admin {
        /// The admin key's digest fingerprint.
        fingerprint: String,
    },
    /// A service, by the id of its credential (`svc_…`). Recorded as
    /// `service:<id>`.
    Service {
        /// The service credential's id.
        id: String,
    },
    /// An operator at the CLI, by their OS user name (see [`Actor::cli`]).
    /// Recorded as `cli:<user>`.
    Cli {
        /// The OS user.
        user: String,
    },
    /// A program that used the store without saying who it acts for (the
    /// default): its writes are still recorded, as `library`.
    Library,
    /// A secret scanner that reported the key leaked (auth-server's
    /// secret-scanning endpoint, issue 17). Recorded as `scanner:<name>`,
    /// with `url` — where the key was found — as the record's `source`.
    SecretScanner {
        /// Which scanner: `github`.
        name: String,
        /// Where it found the key (may be empty).
        url: String,
    },
}

impl Actor {
    /// The holder of the admin key with this digest.
    pub fn admin(admin_key: &Digest) -> Self {
        Self::Admin {
            fingerprint: admin_key.fingerprint(),
        }
    }

    /// The operator running this process: the OS user from `USER`, else
    /// `LOGNAME`, else `unknown` (control and invisible characters dropped).
    pub fn cli() -> Self {
        let user = ["USER", "LOGNAME"]
            .into_iter()
            .filter_map(std::env::var_os)
            .map(|v| clean(&v.to_string_lossy()))
            .find(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Self::Cli { user }
    }

    /// What a record of this actor's writes names as its `source`: the URL
    /// a secret scanner found the key at (control and invisible characters
    /// dropped, at most [`MAX_SOURCE_CHARS`]); `None` for the others.
    pub fn source(&self) -> Option<String> {
        match self {
            Self::SecretScanner { url, .. } => Some(
                url.chars()
                    .filter(|c| !is_hidden(*c))
                    .take(MAX_SOURCE_CHARS)
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// `admin:<fingerprint>`, `service:<id>`, `cli:<user>` or `library`, with
/// control and invisible characters dropped (the text reaches terminals).
impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, who) = match self {
            Self::Admin { fingerprint } => ("admin", fingerprint),
            Self::Service { id } => ("service", id),
            Self::Cli { user } => ("cli", user),
            Self::SecretScanner { name, .. } => ("scanner", name),
            Self::Library => return f.write_str("library"),
        };
        let who = clean(who);
        write!(
            f,
            "{kind}:{}",
            if who.trim().is_empty() {
                "unknown"
            } else {
                &who
            }
        )
    }
}

fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !is_hidden(*c))
        .take(MAX_ACTOR_CHARS)
        .collect()
}

/// What an admin write did, as the audit trail records it (and the key
/// service's metrics count it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A key or credential made (a rotation's new one too).
    Create,
    /// Its settings changed.
    Update,
    /// Disabled.
    Disable,
    /// Deleted.
    Delete,
    /// Replaced by a new one, after an overlap.
    Rotate,
}

impl Action {
    /// As recorded: `create`, `update`, `disable`, `delete`, `rotate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Disable => "disable",
            Self::Delete => "delete",
            Self::Rotate => "rotate",
        }
    }
}

/// A field's value before and after a write (`null`: none, or no row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// Before the write.
    pub from: Value,
    /// After it.
    pub to: Value,
}

/// One record of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its place in the trail: unique, increasing in commit order.
    pub seq: u64,
    /// When the write was made (millisecond precision).
    pub at: SystemTime,
    /// Who made it: `admin:<fingerprint>`, `service:svc_…`, `cli:<user>`
    /// or `library` (see [`Actor`]).
    pub actor: String,
    /// `create`, `update`, `disable`, `delete` or `rotate`.
    pub action: String,
    /// `key` (a client key) or `service` (a service credential).
    pub resource: String,
    /// The id of the key or credential written.
    pub key_id: String,
    /// The fields the write changed, by name: `owner` (`name` for a
    /// service), `scopes`, `rateLimit`, `expiresAt`, `disabledAt`,
    /// `credits` — and for a rotation `replacedBy` (on the old key) and
    /// `replaces` (on the new one). Never a key, a digest or a prefix.
    pub changes: BTreeMap<String, FieldChange>,
    /// Where the write came from, when something outside said so (for
    /// writes not made by a person); `None` for admin writes.
    pub source: Option<String>,
}

impl AuditRecord {
    /// The changes as JSON: `{"field": {"from": …, "to": …}}`.
    pub fn changes_json(&self) -> Value {
        changes_json(&self.changes)
    }
}

/// Which records an [`SqlKeyStore::audit`] read returns.
#[derive(Clone, Copy, Debug)]
pub struct AuditFilter<'a> {
    /// Only those of this key or credential id.
    pub key_id: Option<&'a str>,
    /// Only those written at or after this time.
    pub since: Option<SystemTime>,
    /// At most this many, newest first: 1 to [`MAX_AUDIT_READ`].
    pub limit: u32,
}

impl Default for AuditFilter<'_> {
    /// Every key, any time, the newest 100.
    fn default() -> Self {
        Self {
            key_id: None,
            since: None,
            limit: 100,
        }
    }
}

/// `key` or `service`: what the API calls the kinds.
fn resource(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Client => "key",
        KeyKind::Service => "service",
    }
}

/// The fields people see of a row of `kind` (`None`: no row, every field
/// `null`), in a fixed order. Credits as they are at `now`.
fn fields(kind: KeyKind, info: Option<&KeyInfo>, now: SystemTime) -> Vec<(&'static str, Value)> {
    let time = |t: Option<SystemTime>| t.map_or(Value::Null, |t| json!(secs(t)));
    let Some(info) = info else {
        let names: &[&str] = match kind {
            KeyKind::Client => &[
                "owner",
                "scopes",
                "rateLimit",
                "expiresAt",
                "disabledAt",
                "credits",
            ],
            KeyKind::Service => &["name", "expiresAt", "disabledAt"],
        };
        return names.iter().map(|n| (*n, Value::Null)).collect();
    };
    match kind {
        KeyKind::Client => vec![
            ("owner", json!(info.owner)),
            ("scopes", json!(info.scopes)),
            (
                "rateLimit",
                info.rate_limit.map_or(Value::Null, |p| {
                    json!({"requests": p.requests, "window": p.window.as_secs()})
                }),
            ),
            ("expiresAt", time(info.expires_at)),
            ("disabledAt", time(info.disabled_at)),
            (
                "credits",
                info.credits.map_or(Value::Null, |c| {
                    json!({
                        "remaining": c.remaining_at(now),
                        "refill": c.refill.map(|r| json!({"amount": r.amount, "every": r.every.as_secs()})),
                    })
                }),
            ),
        ],
        KeyKind::Service => vec![
            ("name", json!(info.owner)),
            ("expiresAt", time(info.expires_at)),
            ("disabledAt", time(info.disabled_at)),
        ],
    }
}

/// The fields that differ between `before` and `after` (either may be no
/// row).
pub(crate) fn diff(
    kind: KeyKind,
    before: Option<&KeyInfo>,
    after: Option<&KeyInfo>,
    now: SystemTime,
) -> BTreeMap<String, FieldChange> {
    fields(kind, before, now)
        .into_iter()
        .zip(fields(kind, after, now))
        .filter(|((_, from), (_, to))| from != to)
        .map(|((name, from), (_, to))| (name.to_owned(), FieldChange { from, to }))
        .collect()
}

/// Records the credits of a write that set them even when their values
/// did not change (setting them starts a new refill period and voids the
/// key's open leases).
pub(crate) fn credits_set(
    changes: &mut BTreeMap<String, FieldChange>,
    kind: KeyKind,
    before: &KeyInfo,
    after: Option<&KeyInfo>,
    now: SystemTime,
) {
    if changes.contains_key("credits") {
        return;
    }
    let credits = |info: Option<&KeyInfo>| {
        fields(kind, info, now)
            .into_iter()
            .find_map(|(name, value)| (name == "credits").then_some(value))
            .unwrap_or(Value::Null)
    };
    changes.insert(
        "credits".to_owned(),
        FieldChange {
            from: credits(Some(before)),
            to: credits(after),
        },
    );
}

/// A change from nothing to `to` (a rotation's links between keys).
pub(crate) fn set(to: &str) -> FieldChange {
    FieldChange {
        from: Value::Null,
        to: json!(to),
    }
}

fn changes_json(changes: &BTreeMap<String, FieldChange>) -> Value {
    Value::Object(
        changes
            .iter()
            .map(|(name, c)| (name.clone(), json!({"from": c.from, "to": c.to})))
            .collect::<Map<String, Value>>(),
    )
}

/// The changes stored as text, read back; a record whose text is not an
/// object of changes (never written by this crate) shows none.
fn parse_changes(seq: i64, text: &str) -> BTreeMap<String, FieldChange> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        tracing::warn!(target: "auth_sqlx", seq, "an audit record's changes are not JSON");
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(name, mut c)| {
            let change = FieldChange {
                from: c.get_mut("from").map(Value::take).unwrap_or_default(),
                to: c.get_mut("to").map(Value::take).unwrap_or_default(),
            };
            (name, change)
        })
        .collect()
}

impl SqlKeyStore {
    /// Appends the record of a write on `tx`, the write's own transaction:
    /// the record and the write commit together, or neither does. `seq` is
    /// the next after the highest, assigned under the writers' lock (every
    /// caller holds it: see `begin_write`).
    pub(crate) async fn record(
        &self,
        tx: &mut sqlx::AnyConnection,
        action: Action,
        kind: KeyKind,
        key_id: &str,
        changes: &BTreeMap<String, FieldChange>,
    ) -> Result<(), Error> {
        self.append(tx, action, resource(kind), key_id, changes)
            .await?;
        // Its webhook events, in the same transaction.
        self.queue_write_events(tx, action, kind, key_id, changes)
            .await
    }

    /// Appends a record of a write to `resource` (`key`, `service`,
    /// `webhook`) on `tx`, as [`record`](Self::record) does.
    pub(crate) async fn append(
        &self,
        tx: &mut sqlx::AnyConnection,
        action: Action,
        resource: &str,
        key_id: &str,
        changes: &BTreeMap<String, FieldChange>,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO auth_audit (seq, at, actor, action, resource, key_id, changes, source) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM auth_audit",
        )
        .bind(millis(SystemTime::now()))
        .bind(self.actor.to_string())
        .bind(action.as_str())
        .bind(resource)
        .bind(key_id)
        .bind(changes_json(changes).to_string())
        .bind(self.actor.source())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// The audit trail, newest first: the records `filter` selects. Records
    /// outlive what they describe (a deleted key's history stays).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a limit outside 1 to [`MAX_AUDIT_READ`].
    pub async fn audit(&self, filter: AuditFilter<'_>) -> Result<Vec<AuditRecord>, Error> {
        if !(1..=MAX_AUDIT_READ).contains(&filter.limit) {
            return Err(Error::Invalid(format!(
                "an audit read returns 1 to {MAX_AUDIT_READ} records"
            )));
        }
        let mut conditions = Vec::new();
        let mut n = 1;
        if filter.key_id.is_some() {
            conditions.push(format!("key_id = ${n}"));
            n += 1;
        }
        if filter.since.is_some() {
            conditions.push(format!("at >= ${n}"));
            n += 1;
        }
        let sql = format!(
            "SELECT seq, at, actor, action, resource, key_id, changes, source FROM auth_audit{} \
             ORDER BY seq DESC LIMIT ${n}",
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            }
        );
        let mut query = sqlx::query(&sql);
        if let Some(id) = filter.key_id {
            query = query.bind(id);
        }
        if let Some(since) = filter.since {
            query = query.bind(millis(since));
        }
        let rows = query
            .bind(i64::from(filter.limit))
            .fetch_all(&self.inner.pool)
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            let at: i64 = row.try_get("at")?;
            let changes: String = row.try_get("changes")?;
            records.push(AuditRecord {
                seq: u64::try_from(seq).unwrap_or(0),
                at: UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0)),
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                resource: row.try_get("resource")?,
                key_id: row.try_get("key_id")?,
                changes: parse_changes(seq, &changes),
                source: row.try_get("source")?,
            });
        }
        Ok(records)
    }

    /// Makes the database refuse any change to a record (run by
    /// [`migrate`](Self::migrate) after the migrations): triggers that
    /// abort an `UPDATE` or a `DELETE` of `auth_audit` — on SQLite also an
    /// insert that would replace a record (`INSERT OR REPLACE` deletes
    /// without firing delete triggers), on PostgreSQL a `TRUNCATE`. Dropped
    /// and made again at every start (a trigger tampered with under the
    /// same name is repaired; no `CREATE OR REPLACE TRIGGER`, which needs
    /// PostgreSQL 14), in one transaction under the writers' lock, so that
    /// instances starting at once do not replace them under each other.
    pub(crate) async fn protect_audit(&self) -> Result<(), Error> {
        let raise = match self.inner.backend {
            Backend::Sqlite => format!("BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"),
            Backend::Postgres => "EXECUTE FUNCTION auth_audit_append_only()".to_owned(),
        };
        let statements: Vec<String> = match self.inner.backend {
            Backend::Sqlite => [
                ("no_update", "BEFORE UPDATE ON auth_audit".to_owned()),
                ("no_delete", "BEFORE DELETE ON auth_audit".to_owned()),
                (
                    "no_replace",
                    "BEFORE INSERT ON auth_audit WHEN NEW.seq IS NULL OR NEW.seq <= \
                     (SELECT COALESCE(MAX(seq), 0) FROM auth_audit)"
                        .to_owned(),
                ),
            ]
            .into_iter()
            .flat_map(|(name, when)| {
                [
                    format!("DROP TRIGGER IF EXISTS auth_audit_{name}"),
                    format!("CREATE TRIGGER auth_audit_{name} {when} {raise}"),
                ]
            })
            .collect(),
            Backend::Postgres => vec![
                format!(
                    "CREATE OR REPLACE FUNCTION auth_audit_append_only() RETURNS trigger \
                     LANGUAGE plpgsql AS $fn$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $fn$"
                ),
                "DROP TRIGGER IF EXISTS auth_audit_no_change ON auth_audit".to_owned(),
                format!(
                    "CREATE TRIGGER auth_audit_no_change BEFORE UPDATE OR DELETE \
                     ON auth_audit FOR EACH ROW {raise}"
                ),
                "DROP TRIGGER IF EXISTS auth_audit_no_truncate ON auth_audit".to_owned(),
                format!(
                    "CREATE TRIGGER auth_audit_no_truncate BEFORE TRUNCATE \
                     ON auth_audit FOR EACH STATEMENT {raise}"
                ),
            ],
        };
        let mut tx = self.begin_write().await?;
        for sql in &statements {
            // Simple protocol: DDL, nothing bound.
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_are_shown_without_control_characters() {
        let admin = Actor::admin(&Digest::of(b"an admin key"));
        let text = admin.to_string();
        assert!(text.starts_with("admin:") && text.len() == 14, "{text}");
        let cli = Actor::Cli {
            user: "eve\u{1b}[31m\u{202e}x".into(),
        };
        assert_eq!(cli.to_string(), "cli:eve[31mx");
        let blank = Actor::Cli { user: "\n".into() };
        assert_eq!(blank.to_string(), "cli:unknown");
        assert_eq!(Actor::Library.to_string(), "library");
        let svc = Actor::Service {
            id: "svc_0123".into(),
        };
        assert_eq!(svc.to_string(), "service:svc_0123");
        let long = Actor::Cli {
            user: "u".repeat(500),
        };
        assert_eq!(long.to_string().len(), 4 + MAX_ACTOR_CHARS);
    }

    #[test]
    fn changes_read_back_as_written() {
        let mut changes = BTreeMap::new();
        changes.insert("replacedBy".to_owned(), set("key_1"));
        changes.insert(
            "scopes".to_owned(),
            FieldChange {
                from: json!(["a"]),
                to: json!(["a", "b"]),
            },
        );
        let text = changes_json(&changes).to_string();
        assert_eq!(parse_changes(1, &text), changes);
        assert!(parse_changes(1, "not json").is_empty());
    }
}
