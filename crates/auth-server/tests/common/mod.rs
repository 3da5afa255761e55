//! What the in-process tests share: an instance built with
//! `auth_server::build`, served on free ports, and the admin and metrics
//! calls made to it.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod process;
pub(crate) mod receiver;

use std::net::SocketAddr;
use std::path::Path;

use auth_server::Options;
use auth_sqlx::SqlKeyStore;
use serde_json::Value;

/// One instance in this process: its API and metrics addresses, admin key
/// and store.
pub(crate) struct Instance {
    pub(crate) api: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) admin: String,
    pub(crate) store: SqlKeyStore,
}

/// `build` on `data_dir` (and `database_url`), served on free ports.
pub(crate) async fn instance(
    data_dir: &Path,
    database_url: Option<&str>,
    options: Options,
) -> Instance {
    let store = auth_server::open_store(data_dir, database_url)
        .await
        .unwrap();
    let app = auth_server::build(store.clone(), data_dir, options)
        .await
        .unwrap();
    let api = serve(app.api).await;
    let metrics = serve(app.metrics).await;
    let admin = std::fs::read_to_string(auth_server::admin_key_path(data_dir)).unwrap();
    Instance {
        api,
        metrics,
        admin: admin.trim().to_owned(),
        store,
    }
}

/// `router` on a free port of 127.0.0.1: its address.
pub(crate) async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

impl Instance {
    /// A new service credential named `name`.
    pub(crate) async fn service(&self, name: &str) -> String {
        let (status, made) = self
            .call(
                "POST",
                "/api/v1/services",
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{made}");
        made["key"].as_str().unwrap().to_owned()
    }

    /// An admin call: the status and the JSON answer.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", self.api),
            )
            .header("x-api-key", &self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The metrics listener's text.
    pub(crate) async fn scrape(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A sample of the metrics listener.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = self.scrape().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    }
}
