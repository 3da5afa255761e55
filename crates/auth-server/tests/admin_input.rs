//! Property test of the admin API's inputs (issue 12, item 10): whatever
//! numbers and text arrive, the answer is 201/200 or a JSON 400, never a
//! panic or a 5xx, and a 400 writes nothing.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;

use proptest::prelude::*;
use serde_json::{Value, json};

struct Server {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    admin: String,
    http: reqwest::Client,
    id: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (addr, admin) = runtime.block_on(async {
            let store = auth_server::open_store(dir.path(), None).await.unwrap();
            let app = auth_server::app(store, dir.path()).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let admin = std::fs::read_to_string(auth_server::admin_key_path(dir.path())).unwrap();
            (addr, admin.trim().to_owned())
        });
        let mut server = Self {
            runtime,
            addr,
            admin,
            http: reqwest::Client::new(),
            id: String::new(),
            _dir: dir,
        };
        let (status, created) = server.call("POST", "/api/v1/keys", &json!({"owner": "base"}));
        assert_eq!(status, 201);
        server.id = created["id"].as_str().unwrap().to_owned();
        server
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.runtime.block_on(async {
            let response = self
                .http
                .request(
                    method.parse().unwrap(),
                    format!("http://{}{path}", self.addr),
                )
                .header("x-api-key", &self.admin)
                .json(body)
                .send()
                .await
                .expect("the server answers (no panic, no dropped connection)");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        })
    }

    /// The keys, the credentials and the newest audit record (a 400
    /// leaves none).
    fn state(&self) -> (Value, Value, Value) {
        (
            self.call("GET", "/api/v1/keys", &Value::Null).1,
            self.call("GET", "/api/v1/services", &Value::Null).1,
            self.call("GET", "/api/v1/audit?limit=1", &Value::Null).1,
        )
    }
}

/// Numbers around every boundary the API has, and anywhere in i64.
fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -2i64..3,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(u32::MAX as i64 + 1),
        Just(1_000_000_001),
        31_535_990i64..31_536_010,
        253_402_300_790i64..253_402_300_810,
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z-]{1,12}",
        ".{0,8}",
        "\\PC{200,202}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a]{1,6}",
    ]
}

/// A refill interval: seconds around the bounds, or text. Valid ones are
/// a day or more, so that no refill falls between two reads of the state.
fn every() -> impl Strategy<Value = Value> {
    prop_oneof![
        number().prop_map(Value::from),
        Just(json!(31_622_400)),
        Just(json!(31_622_401)),
        Just(json!(59)),
        "[0-9]{1,3}d".prop_map(Value::from),
        "(59s|60|1y|d||-1d|99999999999999999999d|8785h|[0-9]{1,3}[smh]x)".prop_map(Value::from),
    ]
}

/// Credits with numbers anywhere, often without a refill, sometimes with
/// a refill alone.
fn credits() -> impl Strategy<Value = Value> {
    (
        prop::option::of(number()),
        prop::option::of((number(), every())),
    )
        .prop_map(|(remaining, refill)| {
            let mut c = json!({});
            if let Some(r) = remaining {
                c["remaining"] = json!(r);
            }
            if let Some((amount, every)) = refill {
                c["refill"] = json!({"amount": amount, "every": every});
            }
            c
        })
}

fn request(id: String) -> impl Strategy<Value = (&'static str, String, Value)> {
    let keys = "/api/v1/keys".to_owned();
    let services = "/api/v1/services".to_owned();
    prop_oneof![
        (text(), credits()).prop_map({
            let keys = keys.clone();
            move |(owner, credits)| {
                (
                    "POST",
                    keys.clone(),
                    json!({"owner": owner, "credits": credits}),
                )
            }
        }),
        credits().prop_map({
            let path = format!("{keys}/{id}");
            move |credits| ("PATCH", path.clone(), json!({"credits": credits}))
        }),
        (text(), number(), number(), prop::option::of(number())).prop_map({
            let keys = keys.clone();
            move |(owner, requests, window, expires)| {
                (
                    "POST",
                    keys.clone(),
                    json!({"owner": owner,
                    "rateLimit": {"requests": requests, "window": window}, "expiresAt": expires}),
                )
            }
        }),
        (text(), prop::option::of(number())).prop_map({
            let keys = keys.clone();
            move |(owner, expires)| {
                (
                    "POST",
                    keys.clone(),
                    json!({"owner": owner, "expiresAt": expires}),
                )
            }
        }),
        number().prop_map({
            let path = format!("{keys}/{id}/rotate");
            move |overlap| ("POST", path.clone(), json!({"overlap": overlap}))
        }),
        (number(), number(), prop::option::of(number())).prop_map({
            let path = format!("{keys}/{id}");
            move |(requests, window, expires)| {
                (
                    "PATCH",
                    path.clone(),
                    json!({"rateLimit": {"requests": requests, "window": window},
                    "expiresAt": expires}),
                )
            }
        }),
        text().prop_map(move |name| ("POST", services.clone(), json!({"name": name}))),
    ]
}

#[test]
fn the_admin_api_never_panics_and_400s_write_nothing() {
    let server = Server::start();
    let strategy = request(server.id.clone());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    runner
        .run(&strategy, |(method, path, body)| {
            let before = server.state();
            let (status, answer) = server.call(method, &path, &body);
            match status {
                400 => {
                    prop_assert_eq!(&answer["error"], "invalid_request", "{}", answer);
                    prop_assert_eq!(server.state(), before, "a 400 wrote: {} {}", path, body);
                }
                200 | 201 => {
                    // What was accepted is within range.
                    if let Some(limit) = answer["rateLimit"].as_object() {
                        let window = limit["window"].as_u64().unwrap();
                        prop_assert!((1..=31_536_000).contains(&window), "{}", answer);
                        prop_assert!(limit["requests"].as_u64().unwrap() >= 1);
                    }
                    // An expiry this request set (one set earlier — a
                    // rotation's short overlap — may have passed since).
                    if let Some(at) = answer["expiresAt"]
                        .as_u64()
                        .filter(|_| !body["expiresAt"].is_null())
                    {
                        prop_assert!(at > now().saturating_sub(5), "{}", answer);
                        prop_assert!(at <= now() + 100 * 365 * 86_400 + 5, "{}", answer);
                    }
                    if let Some(credits) = answer["credits"].as_object() {
                        let remaining = credits["remaining"].as_u64().unwrap();
                        prop_assert!(remaining <= 1_000_000_000_000, "{}", answer);
                        if let Some(refill) = credits["refill"].as_object() {
                            let amount = refill["amount"].as_u64().unwrap();
                            let every = refill["every"].as_u64().unwrap();
                            prop_assert!((1..=1_000_000_000_000).contains(&amount), "{}", answer);
                            prop_assert!((60..=31_622_400).contains(&every), "{}", answer);
                            prop_assert!(credits["nextRefillAt"].as_u64().unwrap() > now());
                        }
                    }
                    for name in [&answer["owner"], &answer["name"]] {
                        if let Some(name) = name.as_str() {
                            prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
                        }
                    }
                }
                other => prop_assert!(false, "{} {} {}: {} {}", method, path, body, other, answer),
            }
            Ok(())
        })
        .unwrap();
}
