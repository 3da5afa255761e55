//! The changes stream: a background subscriber to the key service's
//! Server-Sent Events ([`auth_core::protocol::EVENTS_PATH`]), which drops
//! cached answers the moment a key changes, and the state that bounds how
//! long cached grants are used while it is down.
//!
//! The subscriber is one task per verifier. It holds the verifier only
//! weakly (the verifier aborts it when its last clone goes), reads the body
//! a chunk at a time, and reconnects with backoff, sending `Last-Event-ID`
//! so the service replays what was missed (or sends `reset`).
//!
//! "Down" means: the service is known to offer the stream (its last telling
//! answer to the stream request was an event stream or a 401/403; connect
//! errors and 5xx tell nothing), and the stream is not live (no `ready` on
//! the current connection). While down, a grant is used until
//! `max(down_since, filled) + down_ttl` at most. A service that offers no
//! stream (404/405, or an answer that is no event stream), a stream
//! switched off, and the time before the service first answered the stream
//! request are not "down": grants live their whole TTL, as without a
//! stream.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use auth_core::Digest;
use auth_core::protocol::ChangeEvent;
use reqwest::header::{HeaderName, HeaderValue};

/// `down_since` while grants live their whole TTL.
const UNBOUNDED: u64 = u64::MAX;

/// The first wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a service that offers no stream is asked again (it may be
/// upgraded meanwhile).
const ABSENT_RETRY: Duration = Duration::from_secs(60);
/// How often a stream that refuses our credential is asked again.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// The largest event read; a larger one means the stream is broken.
pub(crate) const MAX_EVENT: usize = 16 * 1024;

/// What the verifier and its subscriber share. Only the subscriber writes
/// (one task at a time), so plain stores do: no read-modify-write anywhere.
#[derive(Debug)]
pub(crate) struct StreamState {
    /// Since when the stream has been down, in nanoseconds of the
    /// verifier's clock; [`UNBOUNDED`] while grants live their whole TTL.
    /// Read on every cache hit.
    down_since: AtomicU64,
    /// A `ready` came on the current connection.
    live: AtomicBool,
    /// The last sequence number seen on the stream (0 before any).
    seen: AtomicU64,
}

impl StreamState {
    pub(crate) fn new() -> Self {
        Self {
            down_since: AtomicU64::new(UNBOUNDED),
            live: AtomicBool::new(false),
            seen: AtomicU64::new(0),
        }
    }

    /// The last sequence number seen on the stream.
    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Until when a grant filled at `filled`, fresh until `until`, is used:
    /// one atomic load, for the hit path.
    #[inline]
    pub(crate) fn served_until(
        &self,
        filled: Duration,
        until: Duration,
        down_ttl: Duration,
    ) -> Duration {
        let down = self.down_since.load(Ordering::Acquire);
        if down == UNBOUNDED {
            return until;
        }
        until.min(
            Duration::from_nanos(down)
                .max(filled)
                .saturating_add(down_ttl),
        )
    }

    pub(crate) fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Whether grants are bounded now.
    fn bounded(&self) -> bool {
        self.down_since.load(Ordering::Acquire) != UNBOUNDED
    }

    /// Not live; grants bounded from `now` on, unless they already are
    /// (an outage is counted from its start).
    fn down(&self, now: Duration) {
        // The bound first: whoever sees "not live" sees it.
        if !self.bounded() {
            let now = u64::try_from(now.as_nanos()).unwrap_or(UNBOUNDED - 1);
            self.down_since
                .store(now.min(UNBOUNDED - 1), Ordering::Release);
        }
        self.live.store(false, Ordering::Release);
    }

    /// Live: grants live their whole TTL again.
    fn up(&self) {
        self.down_since.store(UNBOUNDED, Ordering::Release);
        self.live.store(true, Ordering::Release);
    }

    /// The service offers no stream: as without one.
    fn absent(&self) {
        self.live.store(false, Ordering::Release);
        self.down_since.store(UNBOUNDED, Ordering::Release);
    }
}

/// What the subscriber acts on: the verifier's cache, clock and state.
pub(crate) trait Target: Send + Sync + 'static {
    fn stream(&self) -> &StreamState;
    fn now(&self) -> Duration;
    fn invalidate(&self, digest: &Digest);
    fn clear(&self);
}

/// How to reach the stream.
#[derive(Clone)]
pub(crate) struct StreamConfig {
    pub(crate) url: String,
    pub(crate) credential: Option<(HeaderName, HeaderValue)>,
    /// The verifier's client: a connect timeout, no total timeout (the
    /// answer lasts as long as the stream), no redirects.
    pub(crate) client: reqwest::Client,
    /// How long the answer's headers may take.
    pub(crate) answer_within: Duration,
    /// How long the stream may stay silent (pings included) before it
    /// counts as dead.
    pub(crate) idle: Duration,
    /// For the logs: how long grants are used while the stream is down.
    pub(crate) down_ttl: Duration,
}

/// The verifier is gone: the subscriber ends.
struct Gone;

struct Subscriber<T> {
    target: Weak<T>,
    config: StreamConfig,
    /// The last sequence number seen, sent back as `Last-Event-ID`.
    last_seq: Option<u64>,
    backoff: Duration,
    /// The service answered the stream request with anything but 404/405.
    offered: bool,
    /// An INFO "live" was logged and no WARN "lost" since.
    announced: bool,
    logged_absent: bool,
    logged_refused: bool,
}

/// The subscriber's task: runs until the verifier is gone.
pub(crate) async fn run<T: Target>(target: Weak<T>, config: StreamConfig) {
    let mut s = Subscriber {
        target,
        config,
        last_seq: None,
        backoff: FIRST_BACKOFF,
        offered: false,
        announced: false,
        logged_absent: false,
        logged_refused: false,
    };
    // Taking over from a subscriber that ended (its runtime shut down):
    // what it saw live is not live any more.
    let Ok(offered) = s.with(|t| {
        let state = t.stream();
        if state.live() {
            state.down(t.now());
        }
        state.bounded()
    }) else {
        return;
    };
    s.offered = offered;
    loop {
        let Ok(wait) = s.attempt().await else {
            return;
        };
        tokio::time::sleep(wait).await;
        if s.target.strong_count() == 0 {
            return;
        }
    }
}

impl<T: Target> Subscriber<T> {
    /// Runs `f` on the verifier, if it is still there. The strong reference
    /// is never held across an await.
    fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, Gone> {
        self.target.upgrade().map(|t| f(&t)).ok_or(Gone)
    }

    /// One connection, read until it ends; the wait before the next.
    async fn attempt(&mut self) -> Result<Duration, Gone> {
        let mut request = self
            .config
            .client
            .get(&self.config.url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache");
        if let Some((name, value)) = &self.config.credential {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(seq) = self.last_seq {
            request = request.header("last-event-id", seq.to_string());
        }
        let response = match tokio::time::timeout(self.config.answer_within, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if e.is_connect() => return self.lost("connect error", None),
            Ok(Err(_)) => return self.lost("request error", None),
            Err(_) => return self.lost("no answer in time", None),
        };
        let status = response.status().as_u16();
        match status {
            200 if is_event_stream(&response) => {}
            // A catch-all page is no stream either.
            200 | 404 | 405 => return self.absent(status),
            401 | 403 => return self.refused(status),
            _ => return self.lost("error status", Some(status)),
        }
        self.offered = true;
        self.logged_absent = false;
        self.logged_refused = false;
        // Connected, not live until `ready`: grants stay bounded.
        self.with(|t| t.stream().down(t.now()))?;
        let fresh_start = self.last_seq.is_none();
        let why = self.read(response, fresh_start).await?;
        self.lost(why, None)
    }

    /// Reads events until the stream ends or breaks; why it did.
    async fn read(
        &mut self,
        mut response: reqwest::Response,
        fresh_start: bool,
    ) -> Result<&'static str, Gone> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.config.idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok("closed by the key service"),
                Ok(Err(_)) => return Ok("cut off"),
                Err(_) => return Ok("silent past the idle timeout"),
            };
            if parser.feed(&chunk, &mut events).is_err() {
                return Ok("an event too large or not UTF-8");
            }
            for event in events.drain(..) {
                if let Some(why) = self.apply(event, fresh_start)? {
                    return Ok(why);
                }
            }
        }
    }

    /// Acts on one event; `Some(why)` when the stream is broken.
    fn apply(&mut self, event: SseEvent, fresh_start: bool) -> Result<Option<&'static str>, Gone> {
        let Some(change) = ChangeEvent::parse(&event.name, &event.data) else {
            if matches!(event.name.as_str(), "ready" | "key" | "reset") {
                return Ok(Some("an unreadable event"));
            }
            // Unknown: ignored, but its id counts (as for any SSE client).
            if let Some(id) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                self.last_seq = Some(id);
            }
            return Ok(None);
        };
        match &change {
            ChangeEvent::Key { digest, .. } => {
                let Ok(digest) = Digest::from_hex(digest) else {
                    return Ok(Some("an unreadable event"));
                };
                self.with(|t| t.invalidate(&digest))?;
            }
            ChangeEvent::Reset { .. } => {
                self.with(|t| t.clear())?;
                tracing::debug!(target: "auth_remote", "changes stream: reset, cache cleared");
            }
            ChangeEvent::Ready { .. } => {
                self.with(|t| {
                    // Without a `Last-Event-ID` nothing was replayed: what
                    // changed before this connection cannot be known, so
                    // nothing cached before it is trusted.
                    if fresh_start {
                        t.clear();
                    }
                    t.stream().up();
                })?;
                self.backoff = FIRST_BACKOFF;
                if !self.announced {
                    self.announced = true;
                    tracing::info!(target: "auth_remote",
                        "changes stream live: key changes reach the cache at once");
                }
            }
        }
        self.last_seq = Some(change.seq());
        self.with(|t| t.stream().seen.store(change.seq(), Ordering::Release))?;
        Ok(None)
    }

    /// The stream ended or could not be reached: bounded grants if the
    /// service offers it; the backoff's wait.
    fn lost(&mut self, why: &'static str, status: Option<u16>) -> Result<Duration, Gone> {
        // Only a 404/405 says "no stream": a connect error, a timeout or a
        // 5xx (a proxy's 502 included) leave grants bounded, never open.
        self.offered = true;
        let offered = self.offered;
        let was_live = self.with(|t| {
            let state = t.stream();
            let was_live = state.live();
            if offered {
                state.down(t.now());
            } else {
                state.absent();
            }
            was_live
        })?;
        if was_live && self.announced {
            self.announced = false;
            tracing::warn!(target: "auth_remote", why, status, down_ttl = ?self.config.down_ttl,
                "changes stream lost: cached grants are used for at most down_ttl until it is back");
        } else {
            tracing::debug!(target: "auth_remote", why, status, "changes stream not connected");
        }
        let wait = self.backoff;
        self.backoff = (wait * 2).min(MAX_BACKOFF);
        Ok(jitter(wait))
    }

    /// 404/405 (or not an event stream): the service offers no stream.
    fn absent(&mut self, status: u16) -> Result<Duration, Gone> {
        self.offered = false;
        self.backoff = FIRST_BACKOFF;
        self.with(|t| t.stream().absent())?;
        if !self.logged_absent {
            self.logged_absent = true;
            tracing::info!(target: "auth_remote", status,
                "the key service offers no changes stream: cached grants live their whole TTL");
        }
        Ok(ABSENT_RETRY)
    }

    /// 401/403: the stream is there, our credential is refused.
    fn refused(&mut self, status: u16) -> Result<Duration, Gone> {
        self.offered = true;
        self.with(|t| t.stream().down(t.now()))?;
        if !self.logged_refused {
            self.logged_refused = true;
            let sent = self.config.credential.is_some();
            tracing::error!(target: "auth_remote", status, credential_sent = sent,
                down_ttl = ?self.config.down_ttl,
                "the key service refused our service credential for its changes stream: \
                 cached grants are used for at most down_ttl; check the credential's configuration");
        }
        Ok(REFUSED_RETRY)
    }
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Up to a quarter more, so that services restarted together do not all
/// reconnect at once.
fn jitter(wait: Duration) -> Duration {
    let random = RandomState::new().build_hasher().finish();
    wait + wait.mul_f64((random % 1_000) as f64 / 4_000.0)
}

/// One event as SSE frames it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` (`message` when absent).
    pub(crate) name: String,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
    /// The last `id:` seen on the stream so far.
    pub(crate) id: Option<String>,
}

/// An event over [`MAX_EVENT`], or bytes that are not UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken;

/// The SSE framing, fed chunk by chunk (a line may span chunks): lines end
/// with LF, CRLF or CR; a blank line dispatches; `:` starts a comment;
/// `event`, `data` and `id` are read, other fields ignored.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The last line ended with CR: an LF right after it ends nothing.
    after_cr: bool,
    /// Past the first line (where a byte-order mark is dropped).
    started: bool,
    name: String,
    data: String,
    id: Option<String>,
    /// Bytes of the event's field lines so far.
    size: usize,
}

impl SseParser {
    /// Reads `bytes`, pushing the events they complete onto `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), Broken> {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(out)?;
                }
                _ => {
                    self.after_cr = false;
                    if self.size + self.line.len() >= MAX_EVENT {
                        return Err(Broken);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), Broken> {
        let bytes = std::mem::take(&mut self.line);
        let mut line = String::from_utf8(bytes).map_err(|_| Broken)?;
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_owned();
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        self.size += line.len() + 1;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.name),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        self.size = 0;
        let name = std::mem::take(&mut self.name);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(SseEvent {
            name: if name.is_empty() {
                "message".to_owned()
            } else {
                name
            },
            data,
            id: self.id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, Broken> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn event(name: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            name: name.to_owned(),
            data: data.to_owned(),
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn fields_comments_and_dispatch() {
        let text = b": ping\n\nid: 7\nevent: key\ndata: {\"a\":1}\n\n: ping\n\n";
        assert_eq!(
            parse(&[text]).unwrap(),
            [event("key", "{\"a\":1}", Some("7"))]
        );
        // No blank line yet: nothing dispatched.
        assert_eq!(parse(&[b"event: key\ndata: x\n"]).unwrap(), []);
        // No data: nothing dispatched, and the name does not carry over.
        assert_eq!(
            parse(&[b"event: key\n\ndata: x\n\n"]).unwrap(),
            [event("message", "x", None)]
        );
    }

    #[test]
    fn multi_line_data_crlf_and_split_chunks() {
        let text: &[u8] =
            b"\xef\xbb\xbfevent:ready\r\ndata: one\r\ndata:two\r\n\r\nid: 3\rdata: x\r\r";
        let whole = parse(&[text]).unwrap();
        assert_eq!(
            whole,
            [
                event("ready", "one\ntwo", None),
                event("message", "x", Some("3"))
            ]
        );
        // Split anywhere, even between CR and LF: the same events.
        for at in 0..text.len() {
            let (a, b) = text.split_at(at);
            assert_eq!(parse(&[a, b]).unwrap(), whole, "split at {at}");
        }
    }

    #[test]
    fn oversized_events_and_bad_utf8_break_the_stream() {
        let big = format!("data: {}\n", "x".repeat(MAX_EVENT));
        assert_eq!(parse(&[big.as_bytes()]), Err(Broken));
        // Many small lines add up.
        let many = "data: xxxxxxxxxxxxxxxx\n".repeat(MAX_EVENT / 16);
        assert_eq!(parse(&[many.as_bytes()]), Err(Broken));
        // Pings do not: a comment line is not part of an event.
        let pings = ": ping\n".repeat(MAX_EVENT);
        assert_eq!(parse(&[pings.as_bytes()]).unwrap(), []);
        assert_eq!(parse(&[b"data: \xff\n\n"]), Err(Broken));
    }

    #[test]
    fn a_grant_is_bounded_only_while_the_stream_is_down() {
        let s = StreamState::new();
        let (ttl, short) = (Duration::from_secs(300), Duration::from_secs(5));
        let secs = Duration::from_secs;
        assert_eq!(s.served_until(secs(1), ttl, short), ttl);
        s.down(secs(10));
        // Filled before the drop: 5 s after it; filled after: 5 s after that.
        assert_eq!(s.served_until(secs(1), ttl, short), secs(15));
        assert_eq!(s.served_until(secs(12), ttl, short), secs(17));
        // Never past its own freshness.
        assert_eq!(s.served_until(secs(1), secs(12), short), secs(12));
        // An outage counts from its start.
        s.down(secs(20));
        assert_eq!(s.served_until(secs(1), ttl, short), secs(15));
        s.up();
        assert!(s.live());
        assert_eq!(s.served_until(secs(1), ttl, short), ttl);
        s.down(Duration::ZERO);
        assert!(!s.live());
        assert_eq!(s.served_until(Duration::ZERO, ttl, short), short);
        s.absent();
        assert_eq!(s.served_until(secs(1), ttl, short), ttl);
    }
}
