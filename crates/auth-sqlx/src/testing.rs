//! Test support (feature `testing`): a fresh PostgreSQL schema per test.

use std::time::SystemTime;

use crate::{Error, SqlKeyStore};

/// How to start the local PostgreSQL, for failure messages.
pub const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The test database: `AUTH_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    std::env::var("AUTH_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Creates a schema of its own for `test` in the test database, and
/// returns a URL whose connections use it and carry its name as their
/// application name (so that a test can find its own connections).
///
/// # Panics
/// When PostgreSQL is not reachable, with the command that starts it.
pub async fn postgres_schema(test: &str) -> String {
    let base = database_url();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let schema = format!("t_{test}_{nanos}");
    let admin = SqlKeyStore::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {base} ({e}); start it with: {START_POSTGRES}")
    });
    execute_raw(&admin, &format!("CREATE SCHEMA {schema}"))
        .await
        .expect("CREATE SCHEMA");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}&application_name={schema}")
}

/// The schema (and application name) of a URL made by [`postgres_schema`].
pub fn schema_of(url: &str) -> &str {
    url.rsplit("application_name=").next().unwrap_or_default()
}

/// Runs `sql` as it is on `store`'s pool, ignoring any rows: for tests'
/// administration (schemas, terminating connections). Never with input
/// from outside.
pub async fn execute_raw(store: &SqlKeyStore, sql: &str) -> Result<(), Error> {
    sqlx::query(sql).fetch_all(&store.inner.pool).await?;
    Ok(())
}
