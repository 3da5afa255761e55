//! The conformance suite every adapter runs (juniper's pattern): the
//! expected behaviour written once, as cases of requests and the answers
//! they must get, driven through each framework's real request pipeline.
//!
//! An adapter implements [`Harness`]: given a [`Guard`] and a
//! [`TestRequest`], build the standard app around the guard and send the
//! request through it. Then its tests call [`run_suite`].
//!
//! ## The standard app
//!
//! | route | handler |
//! |---|---|
//! | `GET /health` | `200`, body `ok` — reached only through the guard's public paths |
//! | `GET /api/items` | `200`, body: the principal's id, or `anonymous` when none |
//! | `OPTIONS /api/items` | `204` (a CORS preflight that got through) |
//! | `GET /api/stt` | like `/api/items`, behind the adapter's scope check for `stt` |
//! | `OPTIONS /api/stt` | `204`, behind the same scope check (a preflight must not pass it) |
//! | `GET /admin` | like `/api/items` |
//!
//! Every route sits behind the adapter's guard; both `/api/stt` routes also
//! behind its scope check for [`SCOPE`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    CacheConfig, Cached, Credential, CredentialSources, Deferred, Guard, KeySet, Keyrings, Mode,
    Principal, RateLimitPolicy, StaticKey, VerifyError, verifier_fn,
};

/// The key that the suite's guards accept.
pub const KEY: &str = "conformance-key-0123456789abcdef";
/// The principal id granted for [`KEY`].
pub const PRINCIPAL: &str = "svc-conformance";
/// The scope `/api/stt` requires.
pub const SCOPE: &str = "stt";
/// A key that holds only the `tts` scope.
pub const OTHER_SCOPE_KEY: &str = "conformance-tts-only-key";

/// A request for the harness to send.
#[derive(Clone, Debug)]
pub struct TestRequest {
    /// HTTP method.
    pub method: &'static str,
    /// Path (what goes on the request line).
    pub path: String,
    /// Headers in order; values are raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TestRequest {
    fn get(path: &str) -> Self {
        Self {
            method: "GET",
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn key(self, key: impl AsRef<[u8]>) -> Self {
        self.header("X-Api-Key", key)
    }
}

/// What the harness got back.
#[derive(Clone, Debug, Default)]
pub struct TestResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body as text (lossy).
    pub body: String,
}

impl TestResponse {
    /// A response from a framework's parts: status, header names and raw
    /// values (names are lowercased; values read as text, lossily), body.
    pub fn from_parts<'a>(
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: &[u8],
    ) -> Self {
        Self {
            status,
            headers: headers
                .into_iter()
                .map(|(n, v)| {
                    (
                        n.to_ascii_lowercase(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An adapter's way of sending a request through its framework.
pub trait Harness {
    /// Builds the standard app (see the module docs) around `guard` and
    /// sends `request` through the framework's real pipeline.
    fn send(&mut self, guard: &Guard, request: TestRequest) -> impl Future<Output = TestResponse>;

    /// Whether an unknown route answers 404 before the guard runs. Where a
    /// framework cannot (the guard wraps the whole router), 401 is accepted.
    fn unknown_route_is_404(&self) -> bool {
        true
    }
}

/// What a response must look like.
#[derive(Clone, Debug, Default)]
struct Expect {
    statuses: Vec<u16>,
    error: Option<&'static str>,
    message: Option<&'static str>,
    headers: Vec<(&'static str, Option<String>)>,
    /// Headers that must not be sent.
    absent: Vec<&'static str>,
    body_contains: Option<String>,
}

impl Expect {
    fn status(status: u16) -> Self {
        Self {
            statuses: vec![status],
            ..Self::default()
        }
    }

    fn one_of(statuses: &[u16]) -> Self {
        Self {
            statuses: statuses.to_vec(),
            ..Self::default()
        }
    }

    fn error(mut self, code: &'static str) -> Self {
        self.error = Some(code);
        self
    }

    /// The body's `message` must be exactly this.
    fn message(mut self, text: &'static str) -> Self {
        self.message = Some(text);
        self
    }

    /// The header must be present, with this exact value if given.
    fn header(mut self, name: &'static str, value: Option<&str>) -> Self {
        self.headers.push((name, value.map(str::to_owned)));
        self
    }

    fn without_header(mut self, name: &'static str) -> Self {
        self.absent.push(name);
        self
    }

    fn body(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_owned());
        self
    }

    fn ok_as(principal: &str) -> Self {
        Self::status(200).body(principal)
    }

    fn challenge(self, value: &str) -> Self {
        self.header("www-authenticate", Some(value))
    }

    fn check(&self, response: &TestResponse) -> Result<(), String> {
        if !self.statuses.contains(&response.status) {
            return Err(format!(
                "status {} (expected {:?}); body {}",
                response.status, self.statuses, response.body
            ));
        }
        if let Some(code) = self.error {
            let needle = format!("\"error\":\"{code}\"");
            if !response.body.contains(&needle) {
                return Err(format!("body lacks {needle}: {}", response.body));
            }
            if response.header("content-type") != Some(crate::rejection::JSON_CONTENT_TYPE) {
                return Err(format!(
                    "content-type {:?}, expected application/json",
                    response.header("content-type")
                ));
            }
        }
        if let Some(text) = self.message {
            let needle = format!("\"message\":\"{text}\"");
            if !response.body.contains(&needle) {
                return Err(format!("body lacks {needle}: {}", response.body));
            }
        }
        for (name, value) in &self.headers {
            match (response.header(name), value) {
                (None, _) => return Err(format!("header {name} missing")),
                (Some(got), Some(want)) if got != want => {
                    return Err(format!("header {name}: {got:?}, expected {want:?}"));
                }
                _ => {}
            }
        }
        for name in &self.absent {
            if let Some(got) = response.header(name) {
                return Err(format!("header {name} sent ({got:?}), expected none"));
            }
        }
        if let Some(text) = &self.body_contains {
            if !response.body.contains(text.as_str()) {
                return Err(format!("body lacks {text:?}: {}", response.body));
            }
        }
        Ok(())
    }
}

/// A check of the guard after a case's requests.
type GuardCheck = Box<dyn FnOnce(&Guard) -> Result<(), String>>;

/// One step of a case.
enum Step {
    Send(TestRequest, Expect),
    /// Changes the world between requests (revoke a key, …).
    Act(Box<dyn FnOnce()>),
    /// Checks the guard after the requests (counters, …).
    Check(GuardCheck),
}

/// One conformance case: a guard and the steps run against it.
struct Case {
    name: &'static str,
    guard: Guard,
    steps: Vec<Step>,
}

fn standard_keys() -> KeySet {
    KeySet::new()
        .with_key(KEY, Principal::new(PRINCIPAL).with_scopes([SCOPE, "tts"]))
        .expect("distinct keys")
        .with_key(
            OTHER_SCOPE_KEY,
            Principal::new("svc-tts").with_scopes(["tts"]),
        )
        .expect("distinct keys")
}

fn enforce() -> Guard {
    Guard::builder(standard_keys())
        .build()
        .expect("valid guard")
}

/// A guard over the standard keys that lets CORS preflights through.
fn with_preflight() -> Guard {
    Guard::builder(standard_keys())
        .allow_preflight(true)
        .build()
        .expect("valid guard")
}

fn options(path: &str) -> TestRequest {
    TestRequest {
        method: "OPTIONS",
        ..TestRequest::get(path)
    }
}

/// A browser's CORS preflight for `path`.
fn preflight(path: &str) -> TestRequest {
    options(path)
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
}

fn send(request: TestRequest, expect: Expect) -> Step {
    Step::Send(request, expect)
}

fn case(name: &'static str, guard: Guard, steps: Vec<Step>) -> Case {
    Case { name, guard, steps }
}

const MISSING: &str = "Bearer realm=\"api\"";
const INVALID: &str = "Bearer realm=\"api\", error=\"invalid_token\"";
const MALFORMED: &str = "Bearer realm=\"api\", error=\"invalid_request\"";

fn unauthorized() -> Expect {
    Expect::status(401)
        .error("missing_credential")
        .challenge(MISSING)
}

fn malformed() -> Expect {
    Expect::status(400)
        .error("invalid_request")
        .challenge(MALFORMED)
}

/// A guard that reads only `X-Service-Token` (no bearer) asks for exactly
/// that: the 401's message and challenge name it, a valid key sent any
/// other way is not read (401), and the token where it reads it reaches the
/// handler.
fn service_token_only() -> Case {
    const CHALLENGE: &str = "ApiKey realm=\"api\", header=\"X-Service-Token\"";
    const INVALID: &str =
        "ApiKey realm=\"api\", header=\"X-Service-Token\", error=\"invalid_token\"";
    let guard = Guard::builder(standard_keys())
        .sources(
            CredentialSources::default()
                .key_header("X-Service-Token")
                .bearer(false),
        )
        .build()
        .expect("valid guard");
    let items = || TestRequest::get("/api/items");
    let asks_for_the_token = || {
        Expect::status(401)
            .error("missing_credential")
            .message("authentication required: send X-Service-Token")
            .challenge(CHALLENGE)
    };
    case(
        "a guard reading only X-Service-Token asks for it and reads nothing else",
        guard,
        vec![
            send(items(), asks_for_the_token()),
            send(
                items().header("Authorization", format!("Bearer {KEY}")),
                asks_for_the_token(),
            ),
            send(items().key(KEY), asks_for_the_token()),
            send(
                items().header("X-Service-Token", "not-the-service-token"),
                Expect::status(401)
                    .error("invalid_token")
                    .challenge(INVALID),
            ),
            send(
                items().header("X-Service-Token", KEY),
                Expect::ok_as(PRINCIPAL),
            ),
            Step::Check(Box::new(|g: &Guard| {
                let c = g.counts();
                if (c.missing, c.invalid, c.allowed) == (3, 1, 1) {
                    Ok(())
                } else {
                    Err(format!("counts {c:?}"))
                }
            })),
        ],
    )
}

#[allow(clippy::too_many_lines)]
fn cases(unknown_is_404: bool) -> Vec<Case> {
    let items = || TestRequest::get("/api/items");
    let mut cases = vec![
        case(
            "no credential → 401",
            enforce(),
            vec![send(items(), unauthorized())],
        ),
        case(
            "wrong key → 401 invalid_token",
            enforce(),
            vec![send(
                items().key("not-the-key"),
                Expect::status(401)
                    .error("invalid_token")
                    .challenge(INVALID),
            )],
        ),
        case(
            "right key by X-Api-Key → 200",
            enforce(),
            vec![send(items().key(KEY), Expect::ok_as(PRINCIPAL))],
        ),
        case(
            "right key by Authorization: Bearer → 200",
            enforce(),
            vec![send(
                items().header("Authorization", format!("Bearer {KEY}")),
                Expect::ok_as(PRINCIPAL),
            )],
        ),
        case(
            "lowercase bearer → 200",
            enforce(),
            vec![send(
                items().header("authorization", format!("bearer {KEY}")),
                Expect::ok_as(PRINCIPAL),
            )],
        ),
        case(
            "extra spaces after Bearer → 200",
            enforce(),
            vec![send(
                items().header("Authorization", format!("Bearer    {KEY}")),
                Expect::ok_as(PRINCIPAL),
            )],
        ),
        case(
            "empty token → 400",
            enforce(),
            vec![
                send(items().header("Authorization", "Bearer "), malformed()),
                send(items().header("X-Api-Key", ""), malformed()),
            ],
        ),
        case(
            "two Authorization headers → 400",
            enforce(),
            vec![send(
                items()
                    .header("Authorization", format!("Bearer {KEY}"))
                    .header("Authorization", format!("Bearer {KEY}")),
                malformed(),
            )],
        ),
        case(
            "key header and bearer that differ → 400",
            enforce(),
            vec![send(
                items()
                    .key(KEY)
                    .header("Authorization", "Bearer something-else"),
                malformed(),
            )],
        ),
        case(
            "64 KiB header → 400 (or the server's 431)",
            enforce(),
            vec![send(
                items().header("Authorization", format!("Bearer {}", "a".repeat(64 * 1024))),
                Expect::one_of(&[400, 431]),
            )],
        ),
        case(
            "non-ASCII bytes → 400",
            enforce(),
            vec![send(
                items().header("X-Api-Key", b"caf\xc3\xa9-key"),
                malformed(),
            )],
        ),
        case(
            "bad input matrix: every malformed credential → 400 invalid_request",
            enforce(),
            [
                items().key("secret-part another-part"),
                items().key("secret-part\tanother-part"),
                items().key(b"secret-part-\xff\xfe"),
                items().key("k".repeat(1025)),
                items().header("Authorization", "Bearer"),
                items().header("Authorization", "Bearer    "),
                items().header("Authorization", b"Bearer \x80\x81"),
                items().header("Authorization", format!("Bearer {KEY} extra")),
                items().key(KEY).key(KEY),
                items().key("first-secret").key("second-secret"),
                items()
                    .header("Authorization", format!("Bearer {KEY}"))
                    .header("Authorization", "Basic dXNlcjpwYXNz"),
            ]
            .into_iter()
            .map(|request| send(request, malformed()))
            .collect(),
        ),
        case(
            "other schemes are not ours: no bearer credential → 401",
            enforce(),
            [
                items().header("Authorization", "Basic dXNlcjpwYXNz"),
                items().header("Authorization", format!("Bearerx{KEY}")),
                items().header("Authorization", format!("Token {KEY}")),
            ]
            .into_iter()
            .map(|request| send(request, unauthorized()))
            .collect(),
        ),
        case(
            "the same key by X-Api-Key and Bearer → 200",
            enforce(),
            vec![send(
                items()
                    .key(KEY)
                    .header("Authorization", format!("Bearer {KEY}")),
                Expect::ok_as(PRINCIPAL),
            )],
        ),
        case(
            "/health without a key → 200",
            enforce(),
            vec![send(
                TestRequest::get("/health"),
                Expect::status(200).body("ok"),
            )],
        ),
        case(
            "path tricks around /health never pass as public",
            enforce(),
            [
                "/health/../admin",
                "/health/",
                "/health/%2e%2e/admin",
                "/healthx",
                "/health;/admin",
            ]
            .into_iter()
            .map(|p| send(TestRequest::get(p), Expect::one_of(&[401, 404])))
            .collect(),
        ),
        case(
            "open mode lets everything through",
            Guard::open(),
            vec![
                send(items(), Expect::ok_as("anonymous")),
                send(items().key("whatever"), Expect::ok_as("anonymous")),
            ],
        ),
        {
            let slot: Arc<Deferred<KeySet>> = Arc::new(Deferred::new());
            let guard = Guard::builder(slot.clone())
                .mode(Mode::Uninitialised)
                .build()
                .expect("valid guard");
            case(
                "uninitialised → 503 with Retry-After, then ready",
                guard,
                vec![
                    send(
                        items().key(KEY),
                        Expect::status(503)
                            .error("not_ready")
                            .header("retry-after", Some("1")),
                    ),
                    send(TestRequest::get("/health"), Expect::status(200)),
                    Step::Act(Box::new(move || {
                        let _ = slot.set(standard_keys());
                    })),
                    send(items().key(KEY), Expect::ok_as(PRINCIPAL)),
                ],
            )
        },
        case(
            "valid key without the route's scope → 403",
            enforce(),
            vec![
                send(
                    TestRequest::get("/api/stt").key(OTHER_SCOPE_KEY),
                    Expect::status(403).error("insufficient_scope").challenge(
                        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"stt\"",
                    ),
                ),
                send(
                    TestRequest::get("/api/stt").key(KEY),
                    Expect::ok_as(PRINCIPAL),
                ),
                send(TestRequest::get("/api/stt"), unauthorized()),
            ],
        ),
        {
            let keys = KeySet::new()
                .with_key(
                    KEY,
                    Principal::new(PRINCIPAL)
                        .with_rate_limit(RateLimitPolicy::new(2, Duration::from_secs(60))),
                )
                .expect("one key");
            let guard = Guard::builder(keys).build().expect("valid guard");
            case(
                "rate limit exceeded → 429 with Retry-After",
                guard,
                vec![
                    send(
                        items().key(KEY),
                        Expect::ok_as(PRINCIPAL).header("ratelimit", Some("\"default\";r=1;t=30")),
                    ),
                    send(items().key(KEY), Expect::ok_as(PRINCIPAL)),
                    send(
                        items().key(KEY),
                        Expect::status(429)
                            .error("rate_limited")
                            .header("retry-after", Some("30"))
                            .header("ratelimit-policy", Some("\"default\";q=2;w=60")),
                    ),
                ],
            )
        },
        case(
            "out of usage credits → 429 usage_exceeded, Retry-After until the refill",
            Guard::builder(verifier_fn(|c: &Credential| match c.expose() {
                b"refills-later" => Err(VerifyError::UsageExceeded {
                    retry_after: Some(Duration::from_secs(3600)),
                }),
                b"never-refills" => Err(VerifyError::UsageExceeded { retry_after: None }),
                _ => Err(VerifyError::Invalid),
            }))
            .build()
            .expect("valid guard"),
            vec![
                send(
                    items().key("refills-later"),
                    Expect::status(429)
                        .error("usage_exceeded")
                        .header("retry-after", Some("3600")),
                ),
                send(
                    items().key("never-refills"),
                    Expect::status(429)
                        .error("usage_exceeded")
                        .without_header("retry-after"),
                ),
                Step::Check(Box::new(|g: &Guard| {
                    let c = g.counts();
                    if (c.usage_exceeded, c.limited, c.invalid) == (2, 0, 0) {
                        Ok(())
                    } else {
                        Err(format!("counts {c:?}"))
                    }
                })),
            ],
        ),
        {
            let revoked = Arc::new(AtomicBool::new(false));
            let source = {
                let revoked = Arc::clone(&revoked);
                verifier_fn(move |c: &Credential| {
                    if c.expose() == KEY.as_bytes() && !revoked.load(Ordering::SeqCst) {
                        Ok(Arc::new(Principal::new(PRINCIPAL)))
                    } else {
                        Err(VerifyError::Invalid)
                    }
                })
            };
            let cached = Arc::new(Cached::new(source, CacheConfig::default()));
            let guard = Guard::builder(Arc::clone(&cached))
                .build()
                .expect("valid guard");
            case(
                "revoked key in a Cached verifier after invalidate → 401",
                guard,
                vec![
                    send(items().key(KEY), Expect::ok_as(PRINCIPAL)),
                    send(items().key(KEY), Expect::ok_as(PRINCIPAL)),
                    Step::Act(Box::new(move || {
                        revoked.store(true, Ordering::SeqCst);
                        cached.invalidate(&crate::Digest::of(KEY.as_bytes()));
                    })),
                    send(items().key(KEY), Expect::status(401).error("invalid_token")),
                ],
            )
        },
        case(
            "report-only lets a bad key through and counts it",
            Guard::builder(standard_keys())
                .mode(Mode::ReportOnly)
                .build()
                .expect("valid guard"),
            vec![
                send(items().key("bad-key"), Expect::ok_as("anonymous")),
                send(items().key(KEY), Expect::ok_as(PRINCIPAL)),
                Step::Check(Box::new(|g: &Guard| {
                    let c = g.counts();
                    if (c.report_only, c.invalid, c.allowed) == (1, 1, 1) {
                        Ok(())
                    } else {
                        Err(format!("counts {c:?}"))
                    }
                })),
            ],
        ),
        case(
            "CORS preflight passes only with the option",
            with_preflight(),
            vec![send(preflight("/api/items"), Expect::one_of(&[200, 204]))],
        ),
        case(
            "OPTIONS without Origin or a requested method is no preflight → 401",
            with_preflight(),
            vec![
                send(
                    options("/api/items").header("Access-Control-Request-Method", "GET"),
                    unauthorized(),
                ),
                send(
                    options("/api/items")
                        .header("Origin", "")
                        .header("Access-Control-Request-Method", "GET"),
                    unauthorized(),
                ),
                send(
                    options("/api/items").header("Origin", "https://app.example"),
                    unauthorized(),
                ),
                send(
                    items()
                        .header("Origin", "https://app.example")
                        .header("Access-Control-Request-Method", "GET"),
                    unauthorized(),
                ),
            ],
        ),
        case(
            "a preflight does not pass a route's scope → 401",
            with_preflight(),
            vec![
                send(preflight("/api/stt"), unauthorized()),
                // The same route with the key and scope is reached.
                send(options("/api/stt").key(KEY), Expect::one_of(&[200, 204])),
                // Each request counted once by the guard (the preflight as
                // passed), the route's refusal apart.
                Step::Check(Box::new(|g: &Guard| {
                    let c = g.counts();
                    if (c.passed_preflight, c.route_missing, c.missing, c.allowed) == (1, 1, 0, 1) {
                        Ok(())
                    } else {
                        Err(format!("counts {c:?}"))
                    }
                })),
            ],
        ),
        case(
            "CORS preflight without the option → 401",
            enforce(),
            vec![send(preflight("/api/items"), unauthorized())],
        ),
        {
            let rings = Keyrings::new()
                .with(
                    "internal",
                    StaticKey::new("internal-boundary-key").expect("key"),
                )
                .expect("ring")
                .with("hub", StaticKey::new("hub-boundary-key").expect("key"))
                .expect("ring");
            case(
                "a key of keyring internal on a route of keyring hub → 401",
                rings
                    .guard("hub")
                    .expect("ring")
                    .build()
                    .expect("valid guard"),
                vec![
                    send(
                        items().key("internal-boundary-key"),
                        Expect::status(401)
                            .error("invalid_token")
                            .challenge("Bearer realm=\"hub\", error=\"invalid_token\""),
                    ),
                    send(items().key("hub-boundary-key"), Expect::ok_as("service")),
                ],
            )
        },
    ];
    cases.push(service_token_only());
    cases.push(case(
        "unknown route → 404, not 401",
        enforce(),
        vec![send(
            TestRequest::get("/no/such/route"),
            if unknown_is_404 {
                Expect::status(404)
            } else {
                Expect::one_of(&[401, 404])
            },
        )],
    ));
    cases
}

/// Runs every case through `harness`; panics listing every case that
/// failed. Every response is also checked never to be a 5xx other than 503
/// and never to echo a presented key.
pub async fn run_suite<H: Harness>(harness: &mut H) {
    let mut failures = Vec::new();
    let mut requests = 0usize;
    let cases = cases(harness.unknown_route_is_404());
    let total = cases.len();
    for Case { name, guard, steps } in cases {
        for step in steps {
            match step {
                Step::Send(request, expect) => {
                    requests += 1;
                    let secrets: Vec<Vec<u8>> = request
                        .headers
                        .iter()
                        .filter(|(n, v)| {
                            (n.eq_ignore_ascii_case("x-api-key")
                                || n.eq_ignore_ascii_case("x-service-token")
                                || n.eq_ignore_ascii_case("authorization"))
                                && v.len() >= 8
                        })
                        .map(|(_, v)| v.clone())
                        .collect();
                    let line = format!("{} {}", request.method, request.path);
                    let response = harness.send(&guard, request).await;
                    if let Err(e) = expect.check(&response) {
                        failures.push(format!("{name}: {line}: {e}"));
                    }
                    if response.status >= 500 && response.status != 503 {
                        failures.push(format!("{name}: {line}: server error {}", response.status));
                    }
                    let leaked = secrets.iter().any(|s| {
                        let s = String::from_utf8_lossy(s);
                        let token = s.rsplit(' ').next().unwrap_or(&s).to_owned();
                        // Short tokens ("a", "") occur in any text.
                        token.len() >= 8
                            && (response.body.contains(token.as_str())
                                || response
                                    .headers
                                    .iter()
                                    .any(|(_, v)| v.contains(token.as_str())))
                    });
                    if leaked {
                        failures.push(format!("{name}: {line}: the credential was echoed"));
                    }
                }
                Step::Act(act) => act(),
                Step::Check(check) => {
                    if let Err(e) = check(&guard) {
                        failures.push(format!("{name}: {e}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} conformance cases failed ({requests} requests):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Watches for a secret: captures everything logged on this thread (at
/// TRACE) while it lives, collects texts the test adds (`Debug` output,
/// bodies, headers), and on [`finish`](SecretWatch::finish) asserts that
/// neither the secrets nor their full SHA-256 digests appear anywhere. The
/// adapters' secret tests use it.
///
/// Put the test that uses it in a test binary of its own (one `#[test]` in
/// its file), and keep the work it watches on the test's thread (a
/// current-thread runtime). `tracing` caches each callsite's interest when
/// a thread first reaches it; a parallel test thread with no subscriber can
/// cache "never" for `auth_core`'s callsites just as this one is installed,
/// and the capture then sees nothing (cargo's threaded runner, unlike
/// nextest, runs a binary's tests as threads of one process). Nothing done
/// inside the process closes that race for certain.
pub struct SecretWatch {
    secrets: Vec<String>,
    logs: Arc<std::sync::Mutex<Vec<u8>>>,
    seen: String,
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

#[derive(Clone)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl SecretWatch {
    /// Starts capturing this thread's logs; `secrets` must never appear.
    pub fn new(secrets: &[&str]) -> Self {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(LogBuffer(Arc::clone(&logs)))
            .with_ansi(false)
            .finish();
        // With one dispatcher, tracing caches a callsite's interest from the
        // default of whichever thread reaches it first (another test's, with
        // none); a second one makes it ask every dispatcher. Made first, so
        // that the capturing one never exists alone.
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let default = tracing::subscriber::set_default(subscriber);
        tracing::callsite::rebuild_interest_cache();
        Self {
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            logs,
            seen: String::new(),
            _default: default,
            _second: second,
        }
    }

    /// A guard that accepts exactly `secret` (a [`StaticKey`]).
    ///
    /// # Panics
    /// If `secret` is not a valid key.
    pub fn guard(secret: &str) -> Guard {
        Guard::builder(StaticKey::new(secret).expect("a valid key"))
            .build()
            .expect("a valid guard")
    }

    /// The requests every adapter's secret test sends, as header name and
    /// value: `secret` and the wrong `guess` by each header, and a malformed
    /// value holding both.
    pub fn probes(secret: &str, guess: &str) -> Vec<(&'static str, String)> {
        vec![
            ("x-api-key", secret.to_owned()),
            ("authorization", format!("Bearer {secret}")),
            ("x-api-key", guess.to_owned()),
            ("authorization", format!("Bearer {guess}")),
            ("x-api-key", format!("{secret} {guess}")),
        ]
    }

    /// Adds a text to check (a `Debug` rendering, a body, a header).
    pub fn observe(&mut self, text: impl std::fmt::Display) {
        self.seen.push_str(&text.to_string());
        self.seen.push('\n');
    }

    /// Asserts that no secret appeared in the logs or the observed texts,
    /// and that the logs saw both an allowed and a denied request (so that
    /// the check looked at something).
    ///
    /// # Panics
    /// When a secret or its digest appears, or nothing was logged.
    pub fn finish(self) {
        let logs = String::from_utf8_lossy(&self.logs.lock().expect("log buffer")).into_owned();
        assert!(
            logs.contains("allowed"),
            "no allow event was logged:\n{logs}"
        );
        assert!(logs.contains("denied"), "no deny event was logged:\n{logs}");
        for secret in &self.secrets {
            let digest = crate::Digest::of(secret.as_bytes()).to_hex();
            for (what, text) in [("logs", &logs), ("observed text", &self.seen)] {
                assert!(
                    !text.contains(secret.as_str()),
                    "a secret leaked into the {what}"
                );
                assert!(
                    !text.contains(&digest),
                    "a secret's digest leaked into the {what}"
                );
            }
        }
    }
}
