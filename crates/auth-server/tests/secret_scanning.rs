//! Issue 17, item 3: leaked keys reported by GitHub's secret scanning are
//! disabled within one request — and nothing changes for a report whose
//! signature does not verify. GitHub's signing key is a key pair made here.
#![allow(unused_crate_dependencies)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auth_server::{GITHUB_PATH, MAX_REPORT_TOKENS, Options, ScanningKeys};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::receiver::{Attempt, Receiver};
use common::{Instance, instance};
use serde_json::{Value, json};

/// A GitHub stand-in: a P-256 key pair and its identifier.
struct Signer {
    id: String,
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
        }
    }

    /// Base64 of the DER signature of `body`, as GitHub sends it.
    fn sign(&self, body: &[u8]) -> String {
        let signature = self.pair.sign(&SystemRandom::new(), body).unwrap();
        STANDARD.encode(signature.as_ref())
    }

    /// The public key as PEM (SubjectPublicKeyInfo), 64 columns.
    fn pem(&self) -> String {
        let der = self.pair.public_key().as_der().unwrap();
        let b64 = STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }
}

/// `signers`' public keys in the shape of GitHub's
/// `/meta/public_keys/secret_scanning` answer, written to `dir`.
fn keys_file(dir: &Path, signers: &[&Signer]) -> PathBuf {
    let keys: Vec<Value> = signers
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"key_identifier": s.id, "key": s.pem(), "is_current": i == 0}))
        .collect();
    let path = dir.join("github-secret-scanning.json");
    std::fs::write(&path, json!({ "public_keys": keys }).to_string()).unwrap();
    path
}

/// An instance taking GitHub's reports signed by `github`, and a service
/// credential for its validate endpoint.
async fn scanning_instance(dir: &Path, github: &Signer) -> (Instance, String) {
    let path = keys_file(dir, &[github]);
    let options = Options {
        secret_scanning: Some(Arc::new(ScanningKeys::load(&path).unwrap())),
        ..Default::default()
    };
    let s = instance(dir, None, options).await;
    let service = s.service("stt-service").await;
    (s, service)
}

/// POSTs `body` to the secret scanning path with these headers.
async fn post(s: &Instance, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}{GITHUB_PATH}", s.api))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `body`, signed by `signer`, as GitHub sends it.
async fn report(s: &Instance, signer: &Signer, body: &[u8]) -> (u16, Value) {
    let signature = signer.sign(body);
    post(
        s,
        body,
        &[
            ("Github-Public-Key-Identifier", &signer.id),
            ("Github-Public-Key-Signature", &signature),
        ],
    )
    .await
}

/// A new client key: (id, key).
async fn client_key(s: &Instance, owner: &str) -> (String, String) {
    let (status, made) = s
        .call(
            "POST",
            "/api/v1/keys",
            Some(json!({"owner": owner, "scopes": ["stt"]})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    (
        made["id"].as_str().unwrap().to_owned(),
        made["key"].as_str().unwrap().to_owned(),
    )
}

/// The validate endpoint's answer for `key`, asked as `service`.
async fn validate(s: &Instance, service: &str, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/api-keys/validate", s.api))
        .header(auth_server::SERVICE_HEADER, service)
        .json(&json!({ "apiKey": key }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every audit record, newest first.
async fn trail(s: &Instance) -> Vec<Value> {
    let (status, answer) = s.call("GET", "/api/v1/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{answer}");
    answer["records"].as_array().unwrap().clone()
}

/// `key` with the character at `at` changed (still base62).
fn typo(key: &str, at: usize) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

/// What the test's tracing output collects (every log line of the server
/// in this process).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's log subscriber (once) writing into a buffer.
fn capture_logs() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            captured
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_report_disables_our_leaked_keys_and_labels_each_token() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a");
    let (s, service) = scanning_instance(dir.path(), &github).await;
    let (active_id, active) = client_key(&s, "user-leaky").await;
    let (old_id, already) = client_key(&s, "user-careful").await;
    let (status, _) = s
        .call("POST", &format!("/api/v1/keys/{old_id}/disable"), None)
        .await;
    assert_eq!(status, 200);
    let before = s
        .call("GET", &format!("/api/v1/keys/{old_id}"), None)
        .await
        .1;
    // A leaked service credential is leaked too.
    let (_, leaked_service) = s
        .call(
            "POST",
            "/api/v1/services",
            Some(json!({"name": "tts-service"})),
        )
        .await;
    let leaked_service_key = leaked_service["key"].as_str().unwrap().to_owned();
    let leaked_service_id = leaked_service["id"].as_str().unwrap().to_owned();
    let (_, bystander) = client_key(&s, "user-bystander").await;
    assert_eq!(validate(&s, &service, &active).await.1["valid"], true);
    assert_eq!(validate(&s, &leaked_service_key, &bystander).await.0, 200);

    let unknown = auth_core::ApiKeyFormat::default().generate().unwrap();
    let unknown = unknown.expose().to_owned();
    let garbage = "sk_live_this-is-not-a-key".to_owned();
    let mistyped = typo(&bystander, 20);
    let url = "https://github.com/octocat/Hello-World/blob/1234/config/.env";
    let body = json!([
        {"token": active, "type": "auth_server_api_key", "url": url, "source": "content"},
        {"token": already, "type": "auth_server_api_key", "url": url, "source": "commit"},
        {"token": unknown, "type": "auth_server_api_key", "url": "", "source": "content"},
        {"token": garbage, "type": "auth_server_api_key", "url": url, "source": "content"},
        {"token": mistyped, "type": "auth_server_api_key", "url": url, "source": "content"},
        {"token": leaked_service_key, "type": "auth_server_service_credential",
            "url": "https://gist.github.com/octocat/1", "source": "gist_content"},
    ])
    .to_string();
    let (status, answer) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let labels: Vec<(&str, &str, &str)> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["token_raw"].as_str().unwrap(),
                a["token_type"].as_str().unwrap(),
                a["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            (active.as_str(), "auth_server_api_key", "true_positive"),
            (already.as_str(), "auth_server_api_key", "true_positive"),
            (unknown.as_str(), "auth_server_api_key", "false_positive"),
            (garbage.as_str(), "auth_server_api_key", "false_positive"),
            (mistyped.as_str(), "auth_server_api_key", "false_positive"),
            (
                leaked_service_key.as_str(),
                "auth_server_service_credential",
                "true_positive"
            ),
        ]
    );
    // Exactly the program's feedback fields (the raw form, no hash).
    for a in answer.as_array().unwrap() {
        let mut fields: Vec<&String> = a.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["label", "token_raw", "token_type"]);
    }

    // Refused at once: the very next request.
    let (status, refused) = validate(&s, &service, &active).await;
    assert_eq!((status, &refused["code"]), (200, &json!("disabled")));
    assert_eq!(refused["valid"], false);
    assert_eq!(validate(&s, &leaked_service_key, &bystander).await.0, 401);
    // Others untouched.
    assert_eq!(validate(&s, &service, &bystander).await.1["valid"], true);
    // Already disabled: left as it was (its disable time kept).
    let after = s
        .call("GET", &format!("/api/v1/keys/{old_id}"), None)
        .await
        .1;
    assert_eq!(after["disabledAt"], before["disabledAt"]);

    // Recorded: who (the scanner), what, and where the key was found.
    let records = trail(&s).await;
    let by_scanner: Vec<&Value> = records
        .iter()
        .filter(|r| r["actor"] == "scanner:github")
        .collect();
    assert_eq!(by_scanner.len(), 2, "{records:?}");
    let of = |id: &str| {
        *by_scanner
            .iter()
            .find(|r| r["keyId"] == id)
            .unwrap_or_else(|| panic!("no record of {id}"))
    };
    let key_record = of(&active_id);
    assert_eq!(
        (
            &key_record["action"],
            &key_record["resource"],
            &key_record["source"]
        ),
        (&json!("disable"), &json!("key"), &json!(url))
    );
    let service_record = of(&leaked_service_id);
    assert_eq!(
        (&service_record["resource"], &service_record["source"]),
        (
            &json!("service"),
            &json!("https://gist.github.com/octocat/1")
        )
    );

    // The same report again: the same labels, nothing written twice.
    let (status, again) = report(&s, &github, body.as_bytes()).await;
    assert_eq!((status, &again), (200, &answer));
    assert_eq!(trail(&s).await.len(), records.len());

    // No token in the logs (the answer to GitHub is the only place one is
    // repeated: the program's `token_raw`).
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("leaked key disabled"), "{text}");
    for token in [&active, &already, &unknown, &leaked_service_key, &mistyped] {
        assert!(!text.contains(token.as_str()), "a token in the logs");
    }
}

/// A leaked key's disable is announced: `key.leaked` (with where it was
/// found, the token cut from the URL) and `key.disabled`, signed, to the
/// endpoints that receive them; an unverified report and a report of a key
/// already disabled announce nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_key_is_announced_by_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("a1b2c3");
    let (s, _) = scanning_instance(dir.path(), &github).await;
    let receiver = Receiver::start().await;
    let (status, made) = s
        .call(
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": receiver.url(), "events": ["key.leaked", "key.disabled"]})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    receiver.trust(made["secret"].as_str().unwrap());
    let (id, leaked) = client_key(&s, "user-leaky").await;
    let url = format!("https://github.com/octocat/repo/blob/main/{leaked}.env");
    let body = json!([{"token": leaked, "type": "auth_server_api_key", "url": url,
        "source": "content"}])
    .to_string();
    // Signed by someone else: refused, nothing announced.
    let (status, _) = report(&s, &Signer::new("a1b2c3"), body.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, _) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200);
    let accepted = receiver.accepted_within(2, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 2);
    let mut events: Vec<Value> = accepted.iter().map(Attempt::payload).collect();
    events.sort_by_key(|e| e["type"].as_str().unwrap().to_owned());
    assert_eq!(events[0]["type"], "key.disabled");
    assert_eq!(events[1]["type"], "key.leaked");
    for e in &events {
        assert_eq!(e["data"]["id"], id.as_str());
        assert_eq!(e["data"]["owner"], "user-leaky");
        assert_eq!(e["data"]["actor"], "scanner:github");
    }
    let shown = events[1]["data"]["url"].as_str().unwrap();
    assert!(shown.starts_with("https://github.com/octocat/repo/blob/main/sk_live_"));
    assert!(shown.ends_with("….env"), "{shown}");
    for a in &accepted {
        assert!(a.verified);
        assert!(!a.body.contains(&leaked), "the token in a webhook");
    }
    // Reported again: already disabled, nothing more.
    let (status, _) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.attempts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_reports_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("github-key-1");
    let (s, service) = scanning_instance(dir.path(), &github).await;
    let (_, key) = client_key(&s, "user-1").await;
    let records = trail(&s).await.len();
    let body = json!([{"token": key, "type": "auth_server_api_key",
        "url": "https://github.com/o/r/blob/1/a", "source": "content"}])
    .to_string();
    let good = github.sign(body.as_bytes());
    let impostor = Signer::new("github-key-1");
    let by_impostor = impostor.sign(body.as_bytes());
    let altered = body.replace("content", "commit");
    assert_ne!(altered, body);
    let other_body = github.sign(b"[]");
    let id = "Github-Public-Key-Identifier";
    let sig = "Github-Public-Key-Signature";
    type Case<'a> = (&'a str, &'a [u8], Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("no headers", body.as_bytes(), vec![]),
        ("no signature", body.as_bytes(), vec![(id, "github-key-1")]),
        ("no key id", body.as_bytes(), vec![(sig, &good)]),
        (
            "an unknown key id",
            body.as_bytes(),
            vec![(id, "github-key-2"), (sig, &good)],
        ),
        (
            "signed by another key",
            body.as_bytes(),
            vec![(id, "github-key-1"), (sig, &by_impostor)],
        ),
        (
            "a signature of another body",
            body.as_bytes(),
            vec![(id, "github-key-1"), (sig, &other_body)],
        ),
        (
            "altered after signing",
            altered.as_bytes(),
            vec![(id, "github-key-1"), (sig, &good)],
        ),
        (
            "not base64",
            body.as_bytes(),
            vec![(id, "github-key-1"), (sig, "%%%not base64%%%")],
        ),
        (
            "garbage",
            body.as_bytes(),
            vec![
                (id, "github-key-1"),
                (sig, "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32A=="),
            ],
        ),
    ];
    for (case, body, headers) in cases {
        let (status, answer) = post(&s, body, &headers).await;
        assert_eq!(status, 401, "{case}: {answer}");
        assert_eq!(answer["error"], "unauthorized", "{case}");
        assert!(answer["message"].is_string(), "{case}");
        assert!(
            !answer.to_string().contains(&key),
            "{case}: a token in the answer"
        );
    }
    assert_eq!(validate(&s, &service, &key).await.1["valid"], true);
    assert_eq!(trail(&s).await.len(), records, "nothing recorded");
    // The genuine report, last, does disable it.
    let (status, _) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(validate(&s, &service, &key).await.1["code"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_reports_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("k1");
    let (s, service) = scanning_instance(dir.path(), &github).await;
    let (_, key) = client_key(&s, "user-1").await;
    // Over 1 MiB, validly signed: refused before anything is read.
    let mut big = json!([{"token": key, "type": "t", "url": "", "source": "content"}]).to_string();
    big.pop();
    big.push_str(&format!(
        ",{{\"token\":\"{}\",\"type\":\"t\"}}]",
        "x".repeat(1024 * 1024)
    ));
    let (status, answer) = report(&s, &github, big.as_bytes()).await;
    assert_eq!((status, &answer["error"]), (413, &json!("too_large")));
    // Signed, but not an array: a fixed message, never the body. (An
    // array with an element that does not parse is answered: below.)
    for body in [
        format!("{{\"token\": \"{key}\"}}"),
        format!("{{\"a\": [{{\"token\": \"{key}\"}}]}}"),
        "not json".to_owned(),
    ] {
        let (status, answer) = report(&s, &github, body.as_bytes()).await;
        assert_eq!((status, &answer["error"]), (400, &json!("invalid_request")));
        assert!(!answer.to_string().contains(&key), "{answer}");
    }
    // An empty report is an empty answer.
    assert_eq!(report(&s, &github, b"[]").await, (200, json!([])));
    assert_eq!(validate(&s, &service, &key).await.1["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keys_file_the_route_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, Options::default()).await;
    let (_, key) = client_key(&s, "user-1").await;
    let github = Signer::new("k1");
    let body = json!([{"token": key, "type": "t", "url": "", "source": "content"}]).to_string();
    let (status, answer) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(
        (status, &answer["error"]),
        (404, &json!("not_found")),
        "{answer}"
    );
    let service = s.service("svc").await;
    assert_eq!(validate(&s, &service, &key).await.1["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_files_are_checked_at_start_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let one = Signer::new("one");
    let p256 = one.pem();
    for (bad, why) in [
        ("not json".to_owned(), "public_keys"),
        (json!({"public_keys": []}).to_string(), "no public keys"),
        (
            json!({"public_keys": [{"key_identifier": "a", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}]})
                .to_string(),
            "not an ECDSA P-256",
        ),
        (
            json!({"public_keys": [{"key_identifier": "a", "key": "MFkw"}]}).to_string(),
            "not a PEM",
        ),
        (
            json!({"public_keys": [{"key_identifier": "a", "key": p256}, {"key_identifier": "a", "key": p256}]})
                .to_string(),
            "twice",
        ),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let e = ScanningKeys::load(&path).unwrap_err().to_string();
        assert!(e.contains("keys.json") && e.contains(why), "{e}");
    }
    assert!(ScanningKeys::load(&dir.path().join("missing.json")).is_err());

    // The binary refuses to start with a bad file, saying why.
    std::fs::write(&path, "{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--bind", "127.0.0.1:0", "--secret-scanning-keys"])
        .arg(&path)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret scanning keys file"), "{stderr}");

    // Reloaded: a new key list replaces the old; a broken one is ignored.
    let two = Signer::new("two");
    let path = keys_file(dir.path(), &[&one]);
    let keys = ScanningKeys::load(&path).unwrap();
    assert_eq!(keys.key_ids(), ["one"]);
    keys_file(dir.path(), &[&two, &one]);
    assert_eq!(keys.reload().unwrap(), 2);
    assert_eq!(keys.key_ids(), ["two", "one"]);
    std::fs::write(&path, "{").unwrap();
    assert!(keys.reload().is_err());
    assert_eq!(keys.key_ids(), ["two", "one"], "the keys in use are kept");
    let shown = format!("{keys:?}");
    assert!(shown.contains("two") && !shown.contains("BEGIN"), "{shown}");
}

/// `auth-server keys check`: its exit status and stdout, stderr.
fn check(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .args(["--data-dir", "/nonexistent/never-created", "keys", "check"])
        .args(args)
        .env("DATABASE_URL", "postgres://127.0.0.1:1/never-connected")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_says_whether_a_key_is_ours_offline() {
    // Offline: no database (a data dir that cannot exist, a URL that
    // never answers), and the key never printed back in full.
    let dir = tempfile::tempdir().unwrap();
    let s = instance(dir.path(), None, Options::default()).await;
    let (_, key) = client_key(&s, "user-1").await;
    let service = s.service("svc").await;
    for good in [&key, &service] {
        let (ok, stdout, stderr) = check(&[good], None);
        assert!(ok, "{stdout}{stderr}");
        assert!(stdout.contains("checksum valid"), "{stdout}");
        assert!(stdout.contains(&good[..11]), "{stdout}");
        assert!(!stdout.contains(good.as_str()) && !stderr.contains(good.as_str()));
    }
    let (ok, stdout, _) = check(&["-"], Some(&format!("{key}\n")));
    assert!(ok && stdout.contains("client key"), "{stdout}");

    let mistyped = typo(&key, 30);
    let (ok, stdout, stderr) = check(&[&mistyped], None);
    assert!(!ok);
    assert!(stderr.contains("checksum does not match"), "{stderr}");
    assert!(!stdout.contains(&mistyped) && !stderr.contains(&mistyped));
    let (ok, _, stderr) = check(&[&key[..key.len() - 1]], None);
    assert!(!ok && stderr.contains("characters"), "{stderr}");
    for garbage in ["ghp_0123456789abcdefghijklmnopqrstuvwxyzAB", "", "sk_live_"] {
        let (ok, stdout, stderr) = check(&[garbage], None);
        assert!(!ok, "{garbage}: {stdout}");
        if garbage.len() > 8 {
            assert!(!stderr.contains(garbage), "{stderr}");
        }
    }
}

/// The labels of an answer: (token_raw, token_type, label).
fn labels(answer: &Value) -> Vec<(String, String, String)> {
    answer
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {answer}"))
        .iter()
        .map(|a| {
            let field = |name: &str| a[name].as_str().unwrap().to_owned();
            (field("token_raw"), field("token_type"), field("label"))
        })
        .collect()
}

/// The records the scanner wrote.
async fn by_scanner(s: &Instance) -> Vec<Value> {
    trail(s)
        .await
        .into_iter()
        .filter(|r| r["actor"] == "scanner:github")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_tokens_count_once_and_a_report_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("k1");
    let (s, service) = scanning_instance(dir.path(), &github).await;
    let (_, key) = client_key(&s, "user-1").await;
    let element =
        |token: &str| json!({"token": token, "type": "t", "url": "", "source": "content"});

    // The same token three times: each element answered, one disable.
    let body = json!([element(&key), element("nope"), element(&key), element(&key)]).to_string();
    let (status, answer) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let got: Vec<String> = labels(&answer).into_iter().map(|l| l.2).collect();
    assert_eq!(
        got,
        [
            "true_positive",
            "false_positive",
            "true_positive",
            "true_positive"
        ]
    );
    assert_eq!(by_scanner(&s).await.len(), 1);

    // Over the cap of distinct tokens of our format: 413, nothing changed.
    let (_, fresh) = client_key(&s, "user-2").await;
    let format = auth_core::ApiKeyFormat::default();
    let unknown: Vec<String> = (0..MAX_REPORT_TOKENS)
        .map(|_| format.generate().unwrap().expose().to_owned())
        .collect();
    let mut over: Vec<Value> = unknown.iter().map(|t| element(t)).collect();
    over.push(element(&fresh));
    let records = trail(&s).await.len();
    let (status, answer) = report(&s, &github, json!(over).to_string().as_bytes()).await;
    assert_eq!((status, &answer["error"]), (413, &json!("too_many_tokens")));
    assert!(!answer.to_string().contains(&fresh));
    assert_eq!(validate(&s, &service, &fresh).await.1["valid"], true);
    assert_eq!(trail(&s).await.len(), records, "nothing recorded");

    // At the cap, duplicates and tokens not of our format not counted.
    let mut at: Vec<Value> = unknown[1..].iter().map(|t| element(t)).collect();
    at.push(element(&fresh));
    at.push(element(&fresh));
    at.push(element(&unknown[1]));
    at.extend((0..50).map(|i| element(&format!("ghp_{i}"))));
    let (status, answer) = report(&s, &github, json!(at).to_string().as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let got = labels(&answer);
    assert_eq!(got.len(), at.len());
    let ours: Vec<&str> = got
        .iter()
        .filter(|l| l.2 == "true_positive")
        .map(|l| l.0.as_str())
        .collect();
    assert_eq!(ours, [fresh.as_str(), fresh.as_str()]);
    assert_eq!(validate(&s, &service, &fresh).await.1["code"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_element_that_does_not_parse_does_not_refuse_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("k1");
    let (s, service) = scanning_instance(dir.path(), &github).await;
    let (_, one) = client_key(&s, "user-1").await;
    let (_, two) = client_key(&s, "user-2").await;
    let body = json!([
        {"token": one, "type": null, "url": null, "source": null},
        {"token": 5, "type": "t"},
        {"type": "t", "url": "https://github.com/o/r"},
        7,
        "a string",
        null,
        {"token": two},
    ])
    .to_string();
    let (status, answer) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    let f = |token: &str, kind: &str, label: &str| {
        (token.to_owned(), kind.to_owned(), label.to_owned())
    };
    assert_eq!(
        labels(&answer),
        [
            f(&one, "", "true_positive"),
            f("", "t", "false_positive"),
            f("", "t", "false_positive"),
            f("", "", "false_positive"),
            f("", "", "false_positive"),
            f("", "", "false_positive"),
            f(&two, "", "true_positive"),
        ]
    );
    for key in [&one, &two] {
        assert_eq!(validate(&s, &service, key).await.1["code"], "disabled");
    }
    // No URL: an empty source.
    for record in by_scanner(&s).await {
        assert_eq!(record["source"], "", "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_is_not_recorded_or_logged() {
    let logs = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("k1");
    let (s, _) = scanning_instance(dir.path(), &github).await;
    let (id, key) = client_key(&s, "user-1").await;
    let url = format!("https://github.com/o/r/blob/main/{key}.txt?k={key}");
    let body = json!([{"token": key, "type": "t", "url": url, "source": "content"}]).to_string();
    let (status, _) = report(&s, &github, body.as_bytes()).await;
    assert_eq!(status, 200);
    let records = by_scanner(&s).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["keyId"], id.as_str());
    let shown = format!("{}…", &key[.."sk_live_".len() + 4]);
    assert_eq!(
        records[0]["source"],
        format!("https://github.com/o/r/blob/main/{shown}.txt?k={shown}")
    );
    assert!(!trail(&s).await.iter().any(|r| r.to_string().contains(&key)));
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("leaked key disabled"), "{text}");
    assert!(!text.contains(&key), "the token in the logs");
}

/// Sends `head` (a request line and headers, then `body`) on a raw
/// connection; the connection, to read the answer from later.
async fn raw(s: &Instance, head: &[(&str, &str)], body: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(s.api).await.unwrap();
    let mut text =
        format!("POST {GITHUB_PATH} HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n");
    for (name, value) in head {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    conn.write_all(text.as_bytes()).await.unwrap();
    conn
}

/// The status of the answer on `conn`, waiting at most `within`.
async fn status_of(conn: &mut tokio::net::TcpStream, within: Duration) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(within, conn.read(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_checked_before_the_body_is_read_and_reads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let github = Signer::new("k1");
    let (s, _) = scanning_instance(dir.path(), &github).await;
    let good = github.sign(b"[]");
    let long = STANDARD.encode([7u8; 81]);
    // A body announced and never sent: the header checks answer at once.
    for head in [
        vec![("content-length", "1000")],
        vec![
            ("content-length", "1000"),
            ("Github-Public-Key-Identifier", "k1"),
        ],
        vec![
            ("content-length", "1000"),
            ("Github-Public-Key-Identifier", "k2"),
            ("Github-Public-Key-Signature", good.as_str()),
        ],
        vec![
            ("content-length", "1000"),
            ("Github-Public-Key-Identifier", "k1"),
            ("Github-Public-Key-Signature", long.as_str()),
        ],
    ] {
        let mut conn = raw(&s, &head, "").await;
        assert_eq!(
            status_of(&mut conn, Duration::from_secs(3)).await,
            401,
            "{head:?}"
        );
    }

    // Four reports whose bodies never finish hold the four places.
    let head = [
        ("content-length", "1000"),
        ("Github-Public-Key-Identifier", "k1"),
        ("Github-Public-Key-Signature", good.as_str()),
    ];
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(raw(&s, &head, "[").await);
    }
    // A fifth is turned away (once the four are in).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, answer) = report(&s, &github, b"[]").await;
        if status == 503 {
            assert_eq!(answer["error"], "busy");
            break;
        }
        assert!(Instant::now() < deadline, "never busy: {status} {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each slow body given up on after 10 s.
    for conn in &mut slow {
        assert_eq!(status_of(conn, Duration::from_secs(15)).await, 408);
    }
    assert!(started.elapsed() >= Duration::from_secs(9));
    // The places are free again.
    assert_eq!(report(&s, &github, b"[]").await, (200, json!([])));
}

#[test]
fn sighup_without_a_keys_file_is_logged_not_fatal() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-server"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env_remove("AUTH_SERVER_SECRET_SCANNING_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(what) {
                return true;
            }
        }
        false
    };
    let found = wait_for("auth-server listening");
    let hup = |child: &std::process::Child| {
        let sent = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    if found {
        hup(&child);
        assert!(wait_for("nothing to reload"), "no log line for the SIGHUP");
        hup(&child);
        assert!(wait_for("nothing to reload"));
    }
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the server never listened");
    assert!(alive, "SIGHUP ended the server");
}
