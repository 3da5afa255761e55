//! Issue 15, item 4: `docs/grafana-dashboard.json` is a dashboard Grafana
//! can import, and every metric it names is one the code exports — scraped
//! from a running auth-server, the `remote_service` example in front of
//! it, and a Redis limiter's source.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use auth_core::prometheus::Metrics;
use auth_core::prometheus::prometheus_client::{encoding::text::encode, registry::Registry};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../docs/grafana-dashboard.json");

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn scrape(addr: SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The sample names a scrape can hold, from its `# TYPE` lines: a
/// counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`.
fn exported(text: &str, names: &mut BTreeSet<String>) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
}

/// The metric names in a PromQL expression: identifiers that start `auth_`.
fn named(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("auth_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if !preceded {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_only_metrics_the_code_exports() {
    // Everything that exports metrics, running.
    let dir = tempfile::tempdir().unwrap();
    let store = auth_server::open_store(dir.path(), None).await.unwrap();
    let app = auth_server::build(store, dir.path(), auth_server::Options::default())
        .await
        .unwrap();
    let key_service = serve(app.api).await;
    let server_metrics = serve(app.metrics).await;
    let verifier = auth_examples::remote_service::verifier_from(|name| match name {
        "AUTH_REMOTE_URL" => Some(format!("http://{key_service}")),
        _ => None,
    })
    .unwrap()
    .build()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_metrics = metrics.local_addr().unwrap();
    tokio::spawn(auth_examples::remote_service::run(
        listener,
        Some(metrics),
        verifier,
        std::future::pending(),
    ));
    // Built, never connected: its source needs no Redis.
    let limiter = auth_redis::RedisLimiter::new("redis://127.0.0.1:1").unwrap();
    let mut registry = Registry::default();
    Metrics::register(&mut registry).add(limiter);
    let mut limiter_text = String::new();
    encode(&mut limiter_text, &registry).unwrap();

    let mut names = BTreeSet::new();
    exported(&scrape(server_metrics).await, &mut names);
    exported(&scrape(service_metrics).await, &mut names);
    exported(&limiter_text, &mut names);
    assert!(names.len() > 20, "{names:?}");

    // Valid JSON, shaped as Grafana imports it.
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() > 0);
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let metrics = named(expr);
            assert!(!metrics.is_empty(), "{title}: `{expr}` names no metric");
            for metric in metrics {
                assert!(
                    names.contains(&metric),
                    "{title}: `{metric}` is not exported (exported: {names:?})"
                );
                used.insert(metric);
            }
        }
    }
    // What issue 15 asks the dashboard to show.
    for needed in [
        "auth_guard_decisions_total",
        "auth_cache_hits_total",
        "auth_cache_misses_total",
        "auth_server_validate_duration_seconds_bucket",
        "auth_remote_circuit_open",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        named(r#"sum by (le) (rate(auth_a_bucket{job=~"x"}[5m])) / my_auth_b + auth_c"#),
        ["auth_a_bucket", "auth_c"]
    );
}
