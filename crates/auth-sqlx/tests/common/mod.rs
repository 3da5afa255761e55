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
