//! What the store's tests share: a store on a fresh SQLite file, or in a
//! schema of its own on the local PostgreSQL (`AUTH_TEST_DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`), migrated.
// Each test binary uses part of it.
#![allow(dead_code)]

use auth_sqlx::SqlKeyStore;

/// A store on a fresh SQLite file (kept while the directory lives).
pub(crate) async fn sqlite() -> (SqlKeyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = SqlKeyStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A store in a fresh schema named after `test` on PostgreSQL.
pub(crate) async fn postgres(test: &str) -> SqlKeyStore {
    let url = auth_sqlx::testing::postgres_schema(test).await;
    let store = SqlKeyStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Two tests running `$test(store)`: `$test::on_sqlite` on a fresh SQLite
/// file and `$test::on_postgres` on a fresh schema named after `$schema`
/// (short: PostgreSQL cuts names at 63 bytes). `multi_thread` runs them on
/// two worker threads.
/// Two stores on one fresh PostgreSQL schema, as two instances share one
/// database (migrated once).
pub(crate) async fn postgres_pair(test: &str) -> (SqlKeyStore, SqlKeyStore) {
    let url = auth_sqlx::testing::postgres_schema(test).await;
    let a = SqlKeyStore::connect(&url).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqlKeyStore::connect(&url).await.unwrap();
    (a, b)
}

/// Two stores on one fresh SQLite file (kept while the directory lives).
pub(crate) async fn sqlite_pair() -> (SqlKeyStore, SqlKeyStore, tempfile::TempDir) {
    let (a, dir) = sqlite().await;
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let b = SqlKeyStore::connect(&url).await.unwrap();
    (a, b, dir)
}

// (Not every test binary uses it.)
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($test:ident, $schema:literal) => {
        on_both_backends!(@ $test, $schema, tokio::test);
    };
    ($test:ident, $schema:literal, multi_thread) => {
        on_both_backends!(@ $test, $schema, tokio::test(flavor = "multi_thread", worker_threads = 2));
    };
    ($test:ident, $schema:literal, two_instances) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                let (a, b, _dir) = crate::common::sqlite_pair().await;
                super::$test(a, b).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let (a, b) = crate::common::postgres_pair($schema).await;
                super::$test(a, b).await;
            }
        }
    };
    (@ $test:ident, $schema:literal, $($attr:tt)+) => {
        mod $test {
            #[$($attr)+]
            async fn on_sqlite() {
                let (store, _dir) = crate::common::sqlite().await;
                super::$test(store).await;
            }

            #[$($attr)+]
            async fn on_postgres() {
                super::$test(crate::common::postgres($schema).await).await;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;
