//! A webhook receiver on 127.0.0.1, as an operator would write one: it
//! verifies each delivery's signature with the endpoint's secret
//! (`auth_core::webhook`), and can be told to fail attempts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use auth_core::webhook::{
    ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookHeaders, WebhookSecret,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// One request received.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    /// `webhook-id`.
    pub(crate) id: String,
    /// `webhook-timestamp`, read.
    pub(crate) timestamp: u64,
    /// `webhook-signature`, as sent.
    pub(crate) signature: String,
    /// The body.
    pub(crate) body: String,
    /// When it arrived.
    pub(crate) at: Instant,
    /// Whether its signature verified with the trusted secret.
    pub(crate) verified: bool,
    /// The status answered.
    pub(crate) answered: u16,
}

impl Attempt {
    /// The body as JSON.
    pub(crate) fn payload(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Inner {
    /// The first this many attempts of each message are answered 500.
    fail_first: AtomicUsize,
    /// Every attempt answered 500.
    refuse: AtomicBool,
    /// Every attempt answered 500 after 5 s (the sender times out first).
    hang: AtomicBool,
    secret: Mutex<Option<WebhookSecret>>,
    attempts: Mutex<Vec<Attempt>>,
}

/// The receiver: its address and what it received.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    inner: Arc<Inner>,
}

async fn hook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header(ID_HEADER),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
    );
    let verified = inner.secret.lock().unwrap().as_ref().is_some_and(|secret| {
        let headers = WebhookHeaders {
            id: &id,
            timestamp: &timestamp,
            signature: &signature,
        };
        secret.verify(&headers, &body, SystemTime::now()).is_ok()
    });
    // The lock is let go before any wait.
    let (answered, hang) = {
        let mut attempts = inner.attempts.lock().unwrap();
        let before = attempts.iter().filter(|a| a.id == id).count();
        let answered = if inner.refuse.load(Ordering::SeqCst)
            || before < inner.fail_first.load(Ordering::SeqCst)
        {
            StatusCode::INTERNAL_SERVER_ERROR
        } else if !verified {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::NO_CONTENT
        };
        let hang = inner.hang.load(Ordering::SeqCst);
        let answered = if hang {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            answered
        };
        attempts.push(Attempt {
            id,
            timestamp: timestamp.parse().unwrap_or(0),
            signature: signature.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
            verified,
            answered: answered.as_u16(),
        });
        (answered, hang)
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    answered
}

impl Receiver {
    /// Listening on a free port of 127.0.0.1, accepting everything signed
    /// with the secret it is told to [`trust`](Self::trust).
    pub(crate) async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(inner.clone());
        let addr = super::serve(app).await;
        Self { addr, inner }
    }

    /// Where deliveries go.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Verifies deliveries with this secret (`whsec_…`).
    pub(crate) fn trust(&self, secret: &str) {
        *self.inner.secret.lock().unwrap() = Some(WebhookSecret::parse(secret).unwrap());
    }

    /// Answers the first `n` attempts of each message 500.
    pub(crate) fn fail_first(&self, n: usize) {
        self.inner.fail_first.store(n, Ordering::SeqCst);
    }

    /// Answers every attempt 500 (or not).
    pub(crate) fn refuse(&self, on: bool) {
        self.inner.refuse.store(on, Ordering::SeqCst);
    }

    /// Answers every attempt only after 5 s (or not).
    pub(crate) fn hang(&self, on: bool) {
        self.inner.hang.store(on, Ordering::SeqCst);
    }

    /// Every attempt received, in order.
    pub(crate) fn attempts(&self) -> Vec<Attempt> {
        self.inner.attempts.lock().unwrap().clone()
    }

    /// The attempts answered 2xx.
    pub(crate) fn accepted(&self) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(|a| a.answered < 300)
            .collect()
    }

    /// Waits (up to `within`) until `n` deliveries were accepted; returns
    /// those accepted by then.
    pub(crate) async fn accepted_within(&self, n: usize, within: Duration) -> Vec<Attempt> {
        let start = Instant::now();
        while self.accepted().len() < n && start.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.accepted()
    }
}
