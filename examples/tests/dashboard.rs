//! Issue 15, item 4: `docs/grafana-dashboard.json` is a dashboard Grafana
//! can import, and every metric it names is one the code exports — scraped
//! from a running auth-server, the `remote_service` example in front of
//! it, and a Redis limiter's source.
#![allow(unused_crate_dependencies)]

use std::collections::{BTreeMap, BTreeSet};
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

/// What a scrape exports: each sample name with its kind (`counter`,
/// `gauge`, `histogram`) and the label values seen for each label name.
#[derive(Default, Debug)]
struct Exported {
    kinds: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    /// Reads a scrape: `# TYPE` lines give the names (a counter's `_total`,
    /// a histogram's `_bucket`, `_sum` and `_count`), sample lines the labels.
    fn read(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{name}_total")],
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{name}{s}"))
                        .collect(),
                    _ => vec![name.to_owned()],
                };
                for n in names {
                    self.kinds.insert(n, kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let entry = self.labels.entry(name.to_owned()).or_default();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (label, value) = pair.split_once('=').unwrap();
                entry
                    .entry(label.to_owned())
                    .or_default()
                    .insert(value.trim_matches('"').to_owned());
            }
        }
    }
}

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The metric names in a PromQL expression (identifiers that start
/// `auth_`), each with where it starts.
fn named(expr: &str) -> Vec<(usize, String)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("auth_") {
        let start = i + at;
        let name = ident(&expr[start..]);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            found.push((start, name.to_owned()));
        }
        i = start + name.len();
    }
    found
}

/// Checks one PromQL expression against what is exported: the metrics
/// exist; a matcher names a label the metric has (an `=` matcher, one of
/// its values); `by (…)` groups by labels the expression's metrics have;
/// `rate`/`increase` read counters (or a histogram's parts) and
/// `histogram_quantile` a histogram's buckets.
fn check_expr(expr: &str, exported: &Exported) -> Result<Vec<String>, String> {
    let metrics = named(expr);
    if metrics.is_empty() {
        return Err(format!("`{expr}` names no metric"));
    }
    let mut all_labels: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
    all_labels.insert("le");
    for (at, metric) in &metrics {
        let Some(kind) = exported.kinds.get(metric) else {
            return Err(format!("`{metric}` is not exported"));
        };
        let labels = exported.labels.get(metric).cloned().unwrap_or_default();
        for label in labels.keys() {
            all_labels.insert(exported.labels[metric].get_key_value(label).unwrap().0);
        }
        // Its matchers, if any.
        let after = &expr[at + metric.len()..];
        if let Some(body) = after.strip_prefix('{') {
            let body = &body[..body.find('}').ok_or("an unclosed matcher")?];
            for matcher in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let label = ident(matcher);
                let rest = matcher[label.len()..].trim_start();
                let (op, value) = ["=~", "!~", "!=", "="]
                    .iter()
                    .find_map(|op| {
                        rest.strip_prefix(op)
                            .map(|v| (*op, v.trim().trim_matches('"')))
                    })
                    .ok_or_else(|| format!("`{matcher}`: not a matcher"))?;
                if TARGET_LABELS.contains(&label) {
                    continue;
                }
                let Some(values) = labels.get(label) else {
                    return Err(format!("`{metric}` has no label `{label}`"));
                };
                if op == "=" && !values.contains(value) {
                    return Err(format!(
                        "`{metric}{{{label}=\"{value}\"}}` is never exported (values: {values:?})"
                    ));
                }
            }
        }
        // The functions around it: every call opened before it and not
        // closed yet.
        for f in ["histogram_quantile(", "rate(", "increase("] {
            let mut from = 0;
            while let Some(i) = expr[from..*at].find(f).map(|i| i + from) {
                let between = &expr[i + f.len()..*at];
                let open = between.matches('(').count() >= between.matches(')').count();
                let ok = match f {
                    "histogram_quantile(" => metric.ends_with("_bucket"),
                    _ => kind == "counter" || kind == "histogram",
                };
                if open && !ok {
                    return Err(format!("`{f}` over `{metric}`, a {kind}"));
                }
                from = i + f.len();
            }
        }
    }
    // Grouping labels.
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let inside = &rest[at + 4..];
        let close = inside.find(')').ok_or("an unclosed `by (`")?;
        for label in inside[..close].split(',').map(str::trim) {
            if !all_labels.contains(label) {
                return Err(format!("`by ({label})`: no metric of `{expr}` has it"));
            }
        }
        rest = &inside[close..];
    }
    Ok(metrics.into_iter().map(|(_, m)| m).collect())
}

/// Every panel, those inside collapsed rows included.
fn panels(list: &[Value]) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in list {
        all.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            all.extend(panels(inner));
        }
    }
    all
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

    let mut exported = Exported::default();
    exported.read(&scrape(server_metrics).await);
    exported.read(&scrape(service_metrics).await);
    exported.read(&limiter_text);
    assert!(exported.kinds.len() > 20, "{exported:?}");

    // Valid JSON, shaped as Grafana imports it.
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 30);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut failures = Vec::new();
    for panel in panels(dashboard["panels"].as_array().unwrap()) {
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
            match check_expr(expr, &exported) {
                Ok(metrics) => used.extend(metrics),
                Err(e) => failures.push(format!("{title}: {e}")),
            }
        }
    }
    // The variables' queries too.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            let expr = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.split_once(','))
                .map(|(metric, label)| format!("sum by ({}) ({metric})", label.trim()))
                .unwrap_or_else(|| query.to_owned());
            if let Err(e) = check_expr(&expr, &exported) {
                failures.push(format!("variable {}: {e}", variable["name"]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
fn the_checks_catch_a_wrong_query() {
    let mut exported = Exported::default();
    exported.read(
        "# TYPE auth_c counter\nauth_c_total{reason=\"missing\"} 1\n\
         # TYPE auth_g gauge\nauth_g 1\n\
         # TYPE auth_h histogram\nauth_h_bucket{le=\"1\"} 1\nauth_h_sum 1\nauth_h_count 1\n",
    );
    let ok = |e: &str| check_expr(e, &exported);
    assert!(ok(r#"sum by (reason) (rate(auth_c_total{job=~"x", reason="missing"}[5m]))"#).is_ok());
    assert!(ok(r#"histogram_quantile(0.99, sum by (le) (rate(auth_h_bucket[5m])))"#).is_ok());
    assert!(ok("max(auth_g) + my_auth_x").is_ok());
    for wrong in [
        "auth_missing_total",
        r#"auth_c_total{reasons="missing"}"#,
        r#"auth_c_total{reason="absent"}"#,
        "sum by (outcome) (auth_c_total)",
        "rate(auth_g[5m])",
        "histogram_quantile(0.9, rate(auth_h_sum[5m]))",
        "sum(nothing)",
    ] {
        assert!(ok(wrong).is_err(), "{wrong} passed");
    }
}
