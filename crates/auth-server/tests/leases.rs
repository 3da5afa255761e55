//! Issue 16, item 3: credit leases through the validate endpoint — their
//! size, their returns (once, by their holder, clamped), bad input, keys
//! without credits, `--validate-auth none`, and two instances on one
//! PostgreSQL with concurrent clients that never get more than the key had.
#![allow(unused_crate_dependencies)]

mod common;
use common::{Instance, instance};

use std::net::SocketAddr;

use auth_core::protocol::{LEASE_RETURN_PATH, VALIDATE_PATH};
use auth_server::{Options, ValidateAuth};
use serde_json::{Value, json};

impl Instance {
    /// A new key with `credits` (none: no credit limit): the key and its id.
    async fn key(&self, credits: Option<u64>) -> (String, String) {
        let mut body = json!({"owner": "user-1"});
        if let Some(c) = credits {
            body["credits"] = json!({"remaining": c});
        }
        let (status, made) = self.call("POST", "/api/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{made}");
        (
            made["key"].as_str().unwrap().to_owned(),
            made["id"].as_str().unwrap().to_owned(),
        )
    }

    /// The key's credits left, as the admin API shows them.
    async fn remaining(&self, id: &str) -> u64 {
        let (status, view) = self.call("GET", &format!("/api/v1/keys/{id}"), None).await;
        assert_eq!(status, 200, "{view}");
        view["credits"]["remaining"].as_u64().unwrap()
    }
}

/// A POST of `body` (JSON text as it is) to `path` on `addr`, with the
/// service credential `token` if any: the status and the JSON answer.
async fn post(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut request = http
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.header(auth_server::SERVICE_HEADER, token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn validate(http: &reqwest::Client, addr: SocketAddr, token: &str, body: Value) -> Value {
    let (status, answer) = post(http, addr, VALIDATE_PATH, Some(token), body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A return: the credits given back.
async fn give_back(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
    lease: &str,
    unused: u64,
) -> u64 {
    let body = json!({"leaseId": lease, "unused": unused}).to_string();
    let (status, answer) = post(http, addr, LEASE_RETURN_PATH, token, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["returned"].as_u64().unwrap()
}

/// An answer's (creditsRemaining, lease.credits).
fn seen(answer: &Value) -> (Option<u64>, Option<u64>) {
    assert_eq!(answer["code"], "valid", "{answer}");
    (
        answer["creditsRemaining"].as_u64(),
        answer["lease"]["credits"].as_u64(),
    )
}

const GRANTED: &str = r#"auth_server_credit_leases_total{event="granted"}"#;
const RETURNED: &str = r#"auth_server_credit_leases_total{event="returned"}"#;

/// 1,000 credits: `lease: 500` takes (1000 - 1) / 10 = 99, leaving 900;
/// again (900 - 1) / 10 = 89, leaving 810; `lease: 5` takes 5, leaving 804.
/// A key with 5 credits has too few for a lease: the spend alone. A key
/// without credits ignores `lease`. Bad `lease` values are 400s that spend
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_takes_at_most_a_tenth_of_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, Options::default()).await;
    let token = s.service("svc").await;
    let http = reqwest::Client::new();
    let (key, id) = s.key(Some(1000)).await;
    let call = |body: Value| validate(&http, s.api, &token, body);

    let answer = call(json!({"apiKey": key, "lease": 500})).await;
    assert_eq!(seen(&answer), (Some(900), Some(99)), "{answer}");
    let lease = &answer["lease"];
    assert_eq!(lease["ttlMs"], 10_000, "{answer}");
    let lease_id = lease["id"].as_str().unwrap();
    assert!(
        lease_id.starts_with("ls_") && lease_id.len() == 35,
        "{lease_id}"
    );
    let answer = call(json!({"apiKey": key, "lease": 500})).await;
    assert_eq!(seen(&answer), (Some(810), Some(89)), "{answer}");
    assert_ne!(answer["lease"]["id"].as_str(), Some(lease_id), "a new id");
    let answer = call(json!({"apiKey": key, "lease": 5})).await;
    assert_eq!(seen(&answer), (Some(804), Some(5)), "{answer}");
    // With a cost: taken first, then the share of what is left.
    let answer = call(json!({"apiKey": key, "cost": 4, "lease": 10_000})).await;
    assert_eq!(seen(&answer), (Some(720), Some(80)), "{answer}");

    // Too few for a lease: the spend alone, no `lease` field.
    let (small, small_id) = s.key(Some(5)).await;
    let answer = call(json!({"apiKey": small, "lease": 50})).await;
    assert_eq!(seen(&answer), (Some(4), None), "{answer}");
    assert!(answer.get("lease").is_none(), "{answer}");
    let answer = call(json!({"apiKey": small, "cost": 5, "lease": 50})).await;
    assert_eq!(answer["code"], "usage_exceeded", "{answer}");
    assert!(answer.get("lease").is_none(), "{answer}");

    // No credits: `lease` (and `cost`) ignored, answered as before.
    let (plain, _) = s.key(None).await;
    let answer = call(json!({"apiKey": plain, "lease": 50})).await;
    assert_eq!(seen(&answer), (None, None), "{answer}");
    assert!(answer.get("lease").is_none() && answer.get("creditsRemaining").is_none());
    let answer = call(json!({"apiKey": plain, "cost": 7, "lease": 10_000})).await;
    assert_eq!(seen(&answer), (None, None), "{answer}");

    // Bad `lease`: 400 before anything is spent, for any key.
    for bad in [
        json!(0),
        json!(10_001),
        json!(-1),
        json!(1.5),
        json!("5"),
        json!(u64::MAX),
        json!(null),
    ] {
        for k in [&key, &plain] {
            let body = json!({"apiKey": k, "lease": bad}).to_string();
            let (status, answer) = post(&http, s.api, VALIDATE_PATH, Some(&token), body).await;
            if bad.is_null() {
                // `null` is an absent lease: a plain validation.
                assert_eq!(status, 200, "{answer}");
                continue;
            }
            assert_eq!(status, 400, "lease {bad}: {answer}");
            assert_eq!(answer["error"], "invalid_request", "{answer}");
        }
    }
    assert_eq!(s.remaining(&id).await, 719, "only the `null` one spent");
    assert_eq!(s.remaining(&small_id).await, 4);

    // Counted in credits: 99 + 89 + 5 + 80; none returned.
    assert_eq!(s.metric(GRANTED).await, 273.0);
    assert_eq!(s.metric(RETURNED).await, 0.0);
    let bad = r#"auth_server_validate_requests_total{code="bad_request"}"#;
    assert_eq!(s.metric(bad).await, 12.0);
}

/// What a service did not spend goes back once, to the key it came from,
/// when its holder returns it; clamped to what was leased. Another
/// service's return, a second one, one without a credential: 0. Bad
/// bodies: 400, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_credits_go_back_once_and_to_the_holder_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, Options::default()).await;
    let (holder, other) = (s.service("svc-a").await, s.service("svc-b").await);
    let http = reqwest::Client::new();
    let (key, id) = s.key(Some(1000)).await;
    let answer = validate(&http, s.api, &holder, json!({"apiKey": key, "lease": 50})).await;
    assert_eq!(seen(&answer), (Some(949), Some(50)), "{answer}");
    let lease = answer["lease"]["id"].as_str().unwrap().to_owned();

    // Not its holder: nothing, and no hint that the lease exists.
    assert_eq!(give_back(&http, s.api, Some(&other), &lease, 20).await, 0);
    let (status, _) = post(
        &http,
        s.api,
        LEASE_RETURN_PATH,
        None,
        json!({"leaseId": lease, "unused": 20}).to_string(),
    )
    .await;
    assert_eq!(status, 401, "no credential: the guard refuses");
    let (status, _) = post(
        &http,
        s.api,
        LEASE_RETURN_PATH,
        Some("sk_svc_not-a-credential"),
        json!({"leaseId": lease, "unused": 20}).to_string(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(s.remaining(&id).await, 949);

    // Bad bodies: 400, nothing changed (the lease can still be returned).
    for bad in [
        "not json".to_owned(),
        json!({"leaseId": lease}).to_string(),
        json!({"unused": 20}).to_string(),
        json!({"leaseId": lease, "unused": -1}).to_string(),
        json!({"leaseId": lease, "unused": "20"}).to_string(),
        json!({"leaseId": lease, "unused": 1.5}).to_string(),
        json!({"leaseId": lease, "unused": 20, "credits": 5}).to_string(),
        json!({"leaseId": 7, "unused": 20}).to_string(),
        json!({"leaseId": "ls_short", "unused": 20}).to_string(),
        json!({"leaseId": lease.to_uppercase(), "unused": 20}).to_string(),
        json!({"leaseId": "x".repeat(20_000), "unused": 20}).to_string(),
    ] {
        let (status, answer) = post(&http, s.api, LEASE_RETURN_PATH, Some(&holder), bad).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
    }
    assert_eq!(s.remaining(&id).await, 949);

    // The holder: once.
    assert_eq!(give_back(&http, s.api, Some(&holder), &lease, 20).await, 20);
    assert_eq!(s.remaining(&id).await, 969);
    assert_eq!(give_back(&http, s.api, Some(&holder), &lease, 20).await, 0);
    assert_eq!(s.remaining(&id).await, 969);
    // Clamped to what was leased: 96 of (969 - 1) / 10.
    let answer = validate(&http, s.api, &holder, json!({"apiKey": key, "lease": 500})).await;
    assert_eq!(seen(&answer), (Some(872), Some(96)), "{answer}");
    let lease = answer["lease"]["id"].as_str().unwrap();
    let all = give_back(&http, s.api, Some(&holder), lease, u64::MAX).await;
    assert_eq!(all, 96);
    assert_eq!(s.remaining(&id).await, 968);
    // An unknown lease of the right form: 0.
    let unknown = format!("ls_{}", "0".repeat(32));
    assert_eq!(give_back(&http, s.api, Some(&holder), &unknown, 5).await, 0);

    assert_eq!(s.metric(GRANTED).await, 146.0);
    assert_eq!(s.metric(RETURNED).await, 116.0);
}

/// `--validate-auth none`: a lease belongs to no credential, and is
/// returned without one; the OpenAPI document asks for none on either
/// route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_validate_auth_none_leases_are_returned_without_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        validate_auth: ValidateAuth::None,
        ..Default::default()
    };
    let s = instance(dir.path(), None, options).await;
    let http = reqwest::Client::new();
    let (key, id) = s.key(Some(100)).await;
    let body = json!({"apiKey": key, "lease": 50}).to_string();
    let (status, answer) = post(&http, s.api, VALIDATE_PATH, None, body).await;
    assert_eq!(status, 200);
    assert_eq!(seen(&answer), (Some(90), Some(9)), "{answer}");
    let lease = answer["lease"]["id"].as_str().unwrap();
    assert_eq!(give_back(&http, s.api, None, lease, 9).await, 9);
    assert_eq!(s.remaining(&id).await, 99);

    let doc: Value = reqwest::get(format!("http://{}/openapi.json", s.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [VALIDATE_PATH, LEASE_RETURN_PATH] {
        let op = &doc["paths"][path]["post"];
        assert!(op.is_object(), "{path}");
        assert!(op.get("security").is_none(), "{path}: {op}");
    }
}

/// The issue's promise with leases: 1,000 credits, two instances on one
/// PostgreSQL, 8 concurrent clients on each asking `lease: 50` until
/// refused, every other lease returning half its credits (through the
/// other instance). What the answers granted (1 + the lease's credits,
/// less what went back) is exactly 1,000 less what is left — and what is
/// left is 0: never more than the key had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_never_overspend_with_leases() {
    let url = auth_sqlx::testing::postgres_schema("leases").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), Options::default()).await;
    let token = a.service("svc").await;
    let (key, id) = a.key(Some(1000)).await;

    let mut tasks = Vec::new();
    for (i, (addr, back_to)) in [(a.api, b.api), (b.api, a.api)]
        .into_iter()
        .cycle()
        .take(16)
        .enumerate()
    {
        let (token, key) = (token.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut granted, mut returned, mut leased) = (0u64, 0u64, 0u64);
            let mut leases = 0usize;
            loop {
                let answer =
                    validate(&http, addr, &token, json!({"apiKey": key, "lease": 50})).await;
                if answer["code"] == "usage_exceeded" {
                    break;
                }
                let (Some(left), lease) = seen(&answer) else {
                    panic!("{answer}")
                };
                // Below what the key had (returns may raise it meanwhile).
                assert!(left < 1000, "{answer}");
                granted += 1 + lease.unwrap_or(0);
                if let Some(credits) = lease {
                    assert!((1..=50).contains(&credits), "{answer}");
                    leases += 1;
                    leased += credits;
                    if (i + leases) % 2 == 0 {
                        let id = answer["lease"]["id"].as_str().unwrap();
                        returned += give_back(&http, back_to, Some(&token), id, credits / 2).await;
                    }
                }
            }
            (granted, returned, leased, leases)
        }));
    }
    let (mut granted, mut returned, mut leased, mut leases) = (0, 0, 0, 0);
    for t in tasks {
        let (g, r, c, l) = t.await.unwrap();
        granted += g;
        returned += r;
        leased += c;
        leases += l;
    }
    let left = a.remaining(&id).await;
    println!("{leases} leases, {granted} granted, {returned} returned, {left} left");
    assert!(granted - returned <= 1000);
    assert_eq!(granted - returned, 1000 - left, "exact accounting");
    assert_eq!(left, 0);
    assert!(leases > 0 && returned > 0);
    // The instances count credits leased and returned as the answers say.
    let mut counted = (0.0, 0.0);
    for i in [&a, &b] {
        counted.0 += i.metric(GRANTED).await;
        counted.1 += i.metric(RETURNED).await;
    }
    #[allow(clippy::cast_precision_loss)] // far below 2^53
    let expected = (leased as f64, returned as f64);
    assert_eq!(counted, expected);
}

/// Issue 16, item 3, through three services (auth-remote, leases on) in
/// front of two key-service instances on one PostgreSQL: never more allowed
/// than the key had; while the services hold leases, at most the stated
/// bound (three services × the lease asked for) is unspendable by others;
/// once the leases end (the services stop and give back what they did not
/// spend), nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_with_leases_never_allow_more_than_the_key_had() {
    use auth_core::{Credential, Verifier, VerifyContext, VerifyError};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const CREDITS: u64 = 1_000;
    const WANT: u32 = 20;
    let url = auth_sqlx::testing::postgres_schema("leases_three").await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(dir_a.path(), Some(&url), Options::default()).await;
    let b = instance(dir_b.path(), Some(&url), Options::default()).await;
    let (key, id) = a.key(Some(CREDITS)).await;
    let mut services = Vec::new();
    for (n, instance) in [&a, &b, &a].into_iter().enumerate() {
        let token = a.service(&format!("svc-{n}")).await;
        let verifier = auth_remote::RemoteVerifier::builder(&format!("http://{}", instance.api))
            .service_credential(auth_server::SERVICE_HEADER, &token)
            .credit_leases(WANT)
            .upstream_budget(0)
            .build()
            .unwrap();
        services.push(verifier);
    }
    // A few requests on each: each service now holds a lease with credits
    // it has not spent — unspendable by others, within the bound, until
    // the leases end.
    let mut warm = 0;
    for service in &services {
        for _ in 0..5 {
            service
                .verify(&Credential::new(key.clone()), &VerifyContext::default())
                .await
                .unwrap();
            warm += 1;
        }
    }
    let held = CREDITS - warm - a.remaining(&id).await;
    println!("after {warm} requests: {held} credits held in leases");
    assert!(held > 0 && held <= 3 * u64::from(WANT), "{held} held");
    assert!(services.iter().all(|s| s.leases_len() == 1));

    // Eight callers per service, 150 requests each: 3,600 requests for
    // what is left.
    let allowed = Arc::new(AtomicU64::new(warm));
    let mut callers = Vec::new();
    for service in &services {
        for _ in 0..8 {
            let (service, allowed, key) = (service.clone(), allowed.clone(), key.clone());
            callers.push(tokio::spawn(async move {
                for _ in 0..150 {
                    match service
                        .verify(&Credential::new(key.clone()), &VerifyContext::default())
                        .await
                    {
                        Ok(_) => {
                            allowed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(VerifyError::UsageExceeded { .. }) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let allowed = allowed.load(Ordering::SeqCst);
    let remaining = a.remaining(&id).await;
    let held = CREDITS - allowed - remaining;
    println!("allowed {allowed}, remaining {remaining}, held in leases {held}");
    assert!(allowed <= CREDITS, "allowed {allowed} of {CREDITS}");
    // The bound: each service holds at most one lease of at most WANT.
    assert!(held <= 3 * u64::from(WANT), "{held} held in leases");
    let calls: f64 = a
        .metric(r#"auth_server_validate_requests_total{code="valid"}"#)
        .await
        + b.metric(r#"auth_server_validate_requests_total{code="valid"}"#)
            .await;
    assert!(
        calls < allowed as f64 / 2.0,
        "leases should spare most calls: {calls} calls for {allowed} grants"
    );

    // The services stop: what they did not spend goes back.
    drop(services);
    let mut back = false;
    for _ in 0..100 {
        if a.remaining(&id).await + allowed == CREDITS {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        back,
        "{} + {allowed} != {CREDITS}: leased credits were lost",
        a.remaining(&id).await
    );
}
