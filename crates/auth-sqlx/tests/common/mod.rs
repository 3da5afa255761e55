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
// (Not every test binary uses it.)
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($test:ident, $schema:literal) => {
        on_both_backends!(@ $test, $schema, tokio::test);
    };
    ($test:ident, $schema:literal, multi_thread) => {
        on_both_backends!(@ $test, $schema, tokio::test(flavor = "multi_thread", worker_threads = 2));
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
