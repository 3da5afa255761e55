//! The test double of the central key service every test binary uses,
//! served by axum on 127.0.0.1 (a free port), over real HTTP: one key
//! table, so a key means the same in every test. Validate, lease returns,
//! the changes stream and usage reports are always routed; a test drives
//! only the part it is about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auth_core::Digest;
use auth_core::protocol::{
    ChangeEvent, Code, Lease, LeaseReturned, RateLimit, ReturnLease, UsageAccepted, UsageCounts,
    UsageReport, ValidateRequest, ValidateResponse,
};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Valid: `user-1`, scopes `stt` and `tts`.
pub(crate) const GOOD: &str = "sk_live_good_key_0123456789abcdef";
/// Valid: another key of `user-1`'s (scope `stt`), to tell evictions apart.
pub(crate) const SECOND: &str = "sk_live_second_key_0123456789abc";
/// Valid (`user-2`, scope `stt`), two requests an hour, enforced by the
/// guard: an hour, so that no test, however slow the machine, outlives the
/// window before its third request.
pub(crate) const LIMITED: &str = "sk_live_limited_key_0123456789ab";
pub(crate) const EXPIRED: &str = "sk_live_expired_key_0123456789ab";
pub(crate) const DISABLED: &str = "sk_live_disabled_key_0123456789a";
/// Over a limit the service enforces: `rate_limited`.
pub(crate) const THROTTLED: &str = "sk_live_throttled_key_0123456789";
/// Valid, expiring 2 s after each answer.
pub(crate) const EXPIRING: &str = "sk_live_expiring_key_0123456789a";
/// Valid, says the service, with an `expiresAt` already past.
pub(crate) const LAPSED: &str = "sk_live_lapsed_key_0123456789abc";
/// A key with credits: spent from `Double::credits` (none until
/// [`Double::credit`]), leased on request.
pub(crate) const CREDITED: &str = "sk_live_credited_key_0123456789a";
/// Well-formed, never issued: invalid.
pub(crate) const UNKNOWN: &str = "sk_live_unknown_key_0123456789ab";
pub(crate) const SERVICE_HEADER: &str = auth_core::protocol::SERVICE_TOKEN_HEADER;
/// Our service's credential: the double answers 401 without it.
pub(crate) const SERVICE_TOKEN: &str = "our-service-credential";

/// How the double answers validate calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// From the key table.
    Normal,
    /// After 2 s (past the verifiers' timeouts).
    Slow,
    /// Answers normally, after 150 ms (within the verifiers' timeout):
    /// callers pile up on one call.
    Sluggish,
    Status(u16),
    Garbage,
    /// This JSON body, whatever the key.
    Raw(&'static str),
    /// This JSON body, after 150 ms (callers pile up on one call).
    SluggishRaw(&'static str),
    /// 307 to `/other`, which would say valid.
    Redirect,
}

/// How the double answers a changes stream request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StreamMode {
    /// An event stream, `ready` first.
    Serve,
    /// An event stream that sends nothing until told to.
    Quiet,
    /// This status; 404 (a service without the stream) unless told
    /// otherwise, so that grants keep their plain TTLs.
    Status(u16),
}

/// How the double answers usage reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Reports {
    Accept,
    /// This status (without a body), the report not taken.
    Status(u16),
    /// 503 `{"error":"unavailable",…}`: the key service's own "too many
    /// counts waiting", the report not taken.
    Busy,
    /// Taken, this many entries fewer accepted (skipped).
    Skip(u64),
    /// Taken, then answered after 1 s (past the verifiers' timeout).
    Slow,
}

/// A key as the double knows it.
pub(crate) struct KeyInfo {
    user: &'static str,
    scopes: Vec<&'static str>,
    /// Requests, window in seconds.
    limit: Option<(u32, u64)>,
    /// Valid, or why not.
    code: Code,
    /// `expiresAt`, in seconds from the answer.
    expires_in: Option<i64>,
    /// Whether it has credits (`Double::credits`).
    credited: bool,
}

impl KeyInfo {
    fn valid(user: &'static str, scopes: Vec<&'static str>) -> Self {
        Self {
            user,
            scopes,
            limit: None,
            code: Code::Valid,
            expires_in: None,
            credited: false,
        }
    }
}

/// The credits of [`CREDITED`], as a key service with leases keeps them.
pub(crate) struct Credits {
    /// What the key has left.
    pub(crate) left: u64,
    /// Credits spent by validate calls (their cost).
    charged: u64,
    /// Credits leased, by lease id, and what was given back of each.
    leases: HashMap<String, (u64, Option<u64>)>,
    /// Every return received: lease id, unused.
    returns: Vec<(String, u64)>,
    /// How long a lease lasts.
    ttl_ms: u64,
}

pub(crate) struct Double {
    /// Validate calls.
    pub(crate) calls: AtomicUsize,
    /// Calls to `/other`, the redirect's target.
    pub(crate) other_calls: AtomicUsize,
    pub(crate) mode: Mutex<Mode>,
    /// Keys not here are invalid.
    keys: Mutex<HashMap<&'static str, KeyInfo>>,
    pub(crate) credits: Mutex<Credits>,
    /// The `lease` asked for by every validate request.
    pub(crate) asked: Mutex<Vec<Option<u32>>>,
    /// Lease returns answer 500.
    pub(crate) refuse_returns: AtomicBool,
    /// The `seq` validate answers carry (an instance's applied position).
    pub(crate) answer_seq: Mutex<Option<u64>>,
    pub(crate) stream: Mutex<StreamMode>,
    /// Stream requests, and the `Last-Event-ID` of each.
    pub(crate) stream_requests: AtomicUsize,
    pub(crate) last_event_ids: Mutex<Vec<Option<String>>>,
    /// The current connection's body.
    conn: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// The last sequence number sent: 5 before the first connection, as
    /// for a service that has been running a while.
    pub(crate) seq: AtomicU64,
    pub(crate) reports: Mutex<Reports>,
    /// Usage requests received, whatever the answer.
    pub(crate) attempts: AtomicUsize,
    /// Reports taken.
    pub(crate) taken: Mutex<Vec<UsageReport>>,
}

impl Double {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            other_calls: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Normal),
            keys: Mutex::new(HashMap::from([
                (GOOD, KeyInfo::valid("user-1", vec!["stt", "tts"])),
                (SECOND, KeyInfo::valid("user-1", vec!["stt"])),
                (
                    LIMITED,
                    KeyInfo {
                        limit: Some((2, 3600)),
                        ..KeyInfo::valid("user-2", vec!["stt"])
                    },
                ),
                (
                    EXPIRED,
                    KeyInfo {
                        code: Code::Expired,
                        ..KeyInfo::valid("user-3", vec![])
                    },
                ),
                (
                    DISABLED,
                    KeyInfo {
                        code: Code::Disabled,
                        ..KeyInfo::valid("user-4", vec![])
                    },
                ),
                (
                    THROTTLED,
                    KeyInfo {
                        code: Code::RateLimited,
                        ..KeyInfo::valid("user-8", vec![])
                    },
                ),
                (
                    EXPIRING,
                    KeyInfo {
                        expires_in: Some(2),
                        ..KeyInfo::valid("user-5", vec![])
                    },
                ),
                (
                    LAPSED,
                    KeyInfo {
                        expires_in: Some(-10),
                        ..KeyInfo::valid("user-6", vec![])
                    },
                ),
                (
                    CREDITED,
                    KeyInfo {
                        credited: true,
                        ..KeyInfo::valid("user-7", vec!["stt"])
                    },
                ),
            ])),
            credits: Mutex::new(Credits {
                left: 0,
                charged: 0,
                leases: HashMap::new(),
                returns: Vec::new(),
                ttl_ms: 30_000,
            }),
            asked: Mutex::new(Vec::new()),
            refuse_returns: AtomicBool::new(false),
            answer_seq: Mutex::new(None),
            stream: Mutex::new(StreamMode::Status(404)),
            stream_requests: AtomicUsize::new(0),
            last_event_ids: Mutex::new(Vec::new()),
            conn: Mutex::new(None),
            seq: AtomicU64::new(5),
            reports: Mutex::new(Reports::Accept),
            attempts: AtomicUsize::new(0),
            taken: Mutex::new(Vec::new()),
        })
    }

    // --- validate ---

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// Changes what the service says of `key` (revoked upstream, say).
    pub(crate) fn set_code(&self, key: &str, code: Code) {
        self.keys
            .lock()
            .get_mut(key)
            .expect("a key of the table")
            .code = code;
    }

    /// The answer to `body` from the key table (and the credits).
    fn answer(&self, body: &ValidateRequest) -> ValidateResponse {
        let keys = self.keys.lock();
        let Some(info) = keys.get(body.api_key.as_str()) else {
            return ValidateResponse::refusal(Code::Invalid);
        };
        if info.code != Code::Valid {
            return ValidateResponse::refusal(info.code);
        }
        let refusal = |code| {
            let mut answer = ValidateResponse::refusal(code);
            answer.user_id = Some(info.user.to_owned());
            answer
        };
        if let Some(scope) = body.scope.as_deref() {
            if !info.scopes.contains(&scope) {
                return refusal(Code::InsufficientScope);
            }
        }
        let mut answer = ValidateResponse::valid(
            info.user,
            info.scopes.iter().map(|s| (*s).to_owned()).collect(),
        );
        answer.rate_limit = info
            .limit
            .map(|(requests, window)| RateLimit { requests, window });
        answer.expires_at = info
            .expires_in
            .map(|s| u64::try_from(unix_now() + s).unwrap());
        if info.credited {
            // The request's cost first, then up to the lease asked for.
            let mut c = self.credits.lock();
            let cost = u64::from(body.cost.unwrap_or(1));
            if c.left < cost {
                return refusal(Code::UsageExceeded);
            }
            c.left -= cost;
            c.charged += cost;
            if let Some(want) = body.lease {
                let credits = c.left.min(u64::from(want));
                if credits > 0 {
                    c.left -= credits;
                    let id = format!("lease-{}", c.leases.len() + 1);
                    c.leases.insert(id.clone(), (credits, None));
                    answer.lease = Some(Lease {
                        id,
                        credits,
                        ttl_ms: c.ttl_ms,
                    });
                }
            }
            answer.credits_remaining = Some(c.left);
        }
        answer
    }

    // --- credits and leases ---

    /// Gives [`CREDITED`] `left` credits and leases of `ttl_ms`.
    pub(crate) fn credit(&self, left: u64, ttl_ms: u64) {
        let mut c = self.credits.lock();
        c.left = left;
        c.ttl_ms = ttl_ms;
    }

    /// Credits charged by calls, leased, and returned so far.
    pub(crate) fn ledger(&self) -> (u64, u64, u64) {
        let c = self.credits.lock();
        let leased = c.leases.values().map(|(n, _)| n).sum();
        let returned = c.leases.values().filter_map(|(_, r)| *r).sum();
        (c.charged, leased, returned)
    }

    /// The returns received so far.
    pub(crate) fn returns(&self) -> Vec<(String, u64)> {
        self.credits.lock().returns.clone()
    }

    /// Waits (5 s at most) until `n` returns came in; returns them.
    pub(crate) async fn returned(&self, n: usize) -> Vec<(String, u64)> {
        let start = Instant::now();
        while self.returns().len() < n && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.returns()
    }

    // --- the changes stream ---

    pub(crate) fn set_stream(&self, mode: StreamMode) {
        *self.stream.lock() = mode;
    }

    pub(crate) fn stream_requests(&self) -> usize {
        self.stream_requests.load(Ordering::SeqCst)
    }

    /// Writes raw text on the current connection; `false` when there is
    /// none or it is gone.
    pub(crate) fn send_raw(&self, text: &str) -> bool {
        self.conn
            .lock()
            .as_ref()
            .is_some_and(|tx| tx.send(text.to_owned()).is_ok())
    }

    /// Sends an event, numbered after the last one.
    pub(crate) fn send(&self, make: impl FnOnce(u64) -> ChangeEvent) {
        let event = make(self.seq.fetch_add(1, Ordering::SeqCst) + 1);
        assert!(self.send_raw(&frame(&event)), "no stream connected");
    }

    /// A `key` event for `key`'s digest.
    pub(crate) fn key_changed(&self, key: &str) {
        self.send(|seq| ChangeEvent::Key {
            seq,
            digest: Digest::of(key.as_bytes()).to_hex(),
        });
    }

    /// Ends the current connection.
    pub(crate) fn close(&self) {
        self.conn.lock().take();
    }

    /// A keep-alive; `false` once the client is gone.
    pub(crate) fn ping(&self) -> bool {
        self.send_raw(": ping\n\n")
    }

    // --- usage reports ---

    pub(crate) fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    pub(crate) fn set_reports(&self, reports: Reports) {
        *self.reports.lock() = reports;
    }

    /// Everything reported for `key`, over all hours (a test may cross
    /// one); every entry checked as the key service checks it.
    pub(crate) fn totals(&self, key: &str) -> UsageCounts {
        let hex = Digest::of(key.as_bytes()).to_hex();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut sum = UsageCounts::default();
        for report in self.taken.lock().iter() {
            assert_eq!(report.check(), Ok(()));
            for entry in &report.entries {
                assert_eq!(entry.hour % 3600, 0);
                assert!(now - entry.hour < 2 * 3600, "{} at {now}", entry.hour);
                if entry.digest == hex {
                    for (code, n) in entry.counts.by_code() {
                        sum.add(code, n);
                    }
                }
            }
        }
        sum
    }

    /// Entries taken, in all reports.
    pub(crate) fn entries(&self) -> usize {
        self.taken.lock().iter().map(|r| r.entries.len()).sum()
    }
}

fn frame(event: &ChangeEvent) -> String {
    format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.seq(),
        event.name(),
        event.data()
    )
}

fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

/// Whether the request carries our service's credential.
fn authorized(headers: &HeaderMap) -> bool {
    headers.get(SERVICE_HEADER).and_then(|v| v.to_str().ok()) == Some(SERVICE_TOKEN)
}

async fn validate(
    State(double): State<Arc<Double>>,
    headers: HeaderMap,
    Json(body): Json<ValidateRequest>,
) -> Response {
    double.calls.fetch_add(1, Ordering::SeqCst);
    double.asked.lock().push(body.lease);
    let mode = *double.mode.lock();
    match mode {
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        Mode::Sluggish => tokio::time::sleep(Duration::from_millis(150)).await,
        Mode::Status(code) => return StatusCode::from_u16(code).unwrap().into_response(),
        Mode::Garbage => return "<html>not json</html>".into_response(),
        Mode::Raw(text) => {
            return ([("content-type", "application/json")], text).into_response();
        }
        Mode::SluggishRaw(text) => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            return ([("content-type", "application/json")], text).into_response();
        }
        Mode::Redirect => {
            return (StatusCode::TEMPORARY_REDIRECT, [("location", "/other")]).into_response();
        }
        Mode::Normal => {}
    }
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut answer = double.answer(&body);
    answer.seq = *double.answer_seq.lock();
    Json(answer).into_response()
}

/// `POST /api/v1/api-keys/lease/return`: once per lease, at most what
/// was leased; counted.
async fn lease_return(
    State(double): State<Arc<Double>>,
    headers: HeaderMap,
    Json(body): Json<ReturnLease>,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut c = double.credits.lock();
    c.returns.push((body.lease_id.clone(), body.unused));
    if double.refuse_returns.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let returned = match c.leases.get_mut(&body.lease_id) {
        Some((leased, returned @ None)) if body.unused <= *leased => {
            *returned = Some(body.unused);
            body.unused
        }
        _ => 0,
    };
    c.left += returned;
    Json(LeaseReturned { returned }).into_response()
}

/// The changes stream, as `Double::stream` says: counted, and its
/// `Last-Event-ID` kept, whatever the answer.
async fn events(State(double): State<Arc<Double>>, headers: HeaderMap) -> Response {
    double.stream_requests.fetch_add(1, Ordering::SeqCst);
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    double.last_event_ids.lock().push(last);
    let mode = *double.stream.lock();
    if let StreamMode::Status(code) = mode {
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    if mode == StreamMode::Serve {
        let seq = double.seq.load(Ordering::SeqCst);
        tx.send(frame(&ChangeEvent::Ready { seq })).unwrap();
    }
    // A new connection replaces the old one, which ends.
    *double.conn.lock() = Some(tx);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|text| (Ok::<_, std::convert::Infallible>(text), rx))
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// `POST /api/v1/api-keys/usage`, as the key service answers it.
async fn usage(
    State(double): State<Arc<Double>>,
    headers: HeaderMap,
    Json(report): Json<UsageReport>,
) -> Response {
    double.attempts.fetch_add(1, Ordering::SeqCst);
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if report.check().is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let mode = *double.reports.lock();
    match mode {
        Reports::Status(status) => return StatusCode::from_u16(status).unwrap().into_response(),
        Reports::Busy => {
            let body = serde_json::json!({
                "error": "unavailable",
                "message": "too many usage counts are waiting to be written; send the report again later",
            });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
        _ => {}
    }
    let skipped = match mode {
        Reports::Skip(n) => n,
        _ => 0,
    };
    let accepted = (report.entries.len() as u64).saturating_sub(skipped);
    double.taken.lock().push(report);
    if mode == Reports::Slow {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Json(UsageAccepted { accepted }).into_response()
}

/// The redirect's target: would say valid to anything.
async fn other(State(double): State<Arc<Double>>) -> Response {
    double.other_calls.fetch_add(1, Ordering::SeqCst);
    Json(ValidateResponse::valid("redirected", vec![])).into_response()
}

/// A double, served; its changes stream not offered (404).
pub(crate) async fn started() -> (Arc<Double>, SocketAddr) {
    started_with(StreamMode::Status(404)).await
}

/// A double, served, its changes stream answering as `stream` says.
pub(crate) async fn started_with(stream: StreamMode) -> (Arc<Double>, SocketAddr) {
    let double = Double::new();
    double.set_stream(stream);
    let app = axum::Router::new()
        .route(auth_core::protocol::VALIDATE_PATH, post(validate))
        .route("/other", post(other))
        .route(auth_core::protocol::LEASE_RETURN_PATH, post(lease_return))
        .route(auth_core::protocol::EVENTS_PATH, get(events))
        .route(auth_core::protocol::USAGE_PATH, post(usage))
        .with_state(double.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (double, addr)
}
