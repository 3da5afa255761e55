//! The changes stream: `RemoteVerifier` against the test double of the
//! key service (`common::double`) whose events endpoint the test drives,
//! served by axum on 127.0.0.1 over real HTTP.
#![allow(unused_crate_dependencies)]

mod common;
use common::Captured;
use common::double::{GOOD, SECOND, SERVICE_HEADER, SERVICE_TOKEN, StreamMode, started_with};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auth_core::clock::ManualClock;
use auth_core::protocol::{ChangeEvent, Code};
use auth_core::{Credential, Digest, Verifier, VerifyContext, VerifyError};
use auth_remote::RemoteVerifier;

fn remote(addr: SocketAddr) -> auth_remote::RemoteVerifierBuilder {
    RemoteVerifier::builder(&format!("http://{addr}"))
        .service_credential(SERVICE_HEADER, SERVICE_TOKEN)
        .timeout(Duration::from_secs(2))
}

async fn verify(v: &RemoteVerifier, key: &str) -> Result<String, VerifyError> {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .await
        .map(|p| p.id().to_owned())
}

/// Whether the verifier answers `key` from its cache.
fn cached(v: &RemoteVerifier, key: &str) -> bool {
    v.verify(&Credential::new(key), &VerifyContext::default())
        .now()
        .is_some()
}

/// Waits until `done`, failing after `within`; how long it took.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Generous: for things that take milliseconds.
const SOON: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_event_evicts_that_grant_within_a_second_and_no_other() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    assert_eq!(double.stream_requests(), 1);

    for key in [GOOD, SECOND, GOOD, SECOND] {
        assert_eq!(verify(&v, key).await.unwrap(), "user-1");
    }
    assert_eq!(double.calls(), 2);

    // Events for other digests leave a grant alone: one nobody cached,
    // then SECOND's, which is evicted (so the first was read too).
    double.key_changed("sk_live_nobody_cached_this_one");
    double.key_changed(SECOND);
    eventually("SECOND evicted", SOON, || !cached(&v, SECOND)).await;
    assert!(cached(&v, GOOD), "an event for another digest evicted it");

    // Revoked upstream, and its event: gone from the cache within a
    // second; the next request asks and sees it disabled.
    double.set_code(GOOD, Code::Disabled);
    assert!(cached(&v, GOOD));
    double.key_changed(GOOD);
    let took = eventually("GOOD evicted", Duration::from_secs(1), || !cached(&v, GOOD)).await;
    eprintln!("evicted {took:?} after the event was sent");
    let before = double.calls();
    assert_eq!(verify(&v, GOOD).await.unwrap_err(), VerifyError::Disabled);
    assert_eq!(double.calls(), before + 1);
    assert!(v.stream_live());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_clears_every_cached_answer() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    verify(&v, GOOD).await.unwrap();
    verify(&v, SECOND).await.unwrap();
    verify(&v, "sk_live_unknown").await.unwrap_err();
    assert!(cached(&v, GOOD) && cached(&v, SECOND) && cached(&v, "sk_live_unknown"));
    double.send(|seq| ChangeEvent::Reset { seq });
    eventually("cleared", SOON, || {
        !cached(&v, GOOD) && !cached(&v, SECOND) && !cached(&v, "sk_live_unknown")
    })
    .await;
    assert!(v.stream_live(), "a reset is not a broken stream");
    assert_eq!(double.stream_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_stream_is_down_grants_are_used_for_the_short_ttl_only() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .cache_ttl(Duration::from_secs(300))
        .negative_ttl(Duration::from_secs(10))
        .stream_down_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    let secs = Duration::from_secs;

    verify(&v, GOOD).await.unwrap(); // filled at 0 s
    clock.advance(secs(10));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 1, "live: the long TTL");

    // The stream drops, and reconnects are refused.
    double.set_stream(StreamMode::Status(503));
    double.close();
    eventually("down", SOON, || !v.stream_live()).await; // down at 10 s
    clock.advance(secs(4));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 1, "4 s into the outage: still used");
    clock.advance(secs(2));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 2, "6 s into the outage: asked again");
    // Filled during the outage (at 16 s): used for 5 s.
    clock.advance(secs(4));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 2);
    clock.advance(secs(2));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 3, "filled 6 s ago, during the outage");
    // Denials keep their own TTL.
    verify(&v, "sk_live_unknown").await.unwrap_err();
    clock.advance(secs(8));
    assert_eq!(
        verify(&v, "sk_live_unknown").await.unwrap_err(),
        VerifyError::Invalid
    );
    assert_eq!(double.calls(), 4, "a denial is not bounded by the outage");

    // Back (the double replays nothing: it has nothing to replay).
    double.set_stream(StreamMode::Serve);
    eventually("live again", SOON, || v.stream_live()).await;
    // Filled at 22 s: used until 322 s again.
    verify(&v, GOOD).await.unwrap();
    let before = double.calls();
    clock.advance(secs(290));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), before, "live again: the long TTL");
    clock.advance(secs(3));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), before + 1, "and no longer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_sends_the_last_seq_seen_and_keeps_the_cache() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    verify(&v, GOOD).await.unwrap();
    verify(&v, SECOND).await.unwrap();
    // Seqs 6 and 7, the second evicting SECOND; then the stream drops.
    double.key_changed("sk_live_nobody_cached_this_one");
    double.key_changed(SECOND);
    eventually("SECOND evicted", SOON, || !cached(&v, SECOND)).await;
    double.close();
    eventually("down", SOON, || !v.stream_live()).await;
    eventually("live again", SOON, || v.stream_live()).await;
    assert_eq!(
        *double.last_event_ids.lock(),
        [None, Some("7".to_owned())],
        "the first connection sends none, the next the last seq seen"
    );
    // Resumed where it left off: nothing cached before is dropped.
    let before = double.calls();
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), before, "resuming dropped the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_ready_drops_what_was_cached_before_it() {
    // Answers cached before the stream's first `ready` may predate changes
    // nobody will replay: they are dropped.
    let (double, addr) = started_with(StreamMode::Quiet).await;
    let v = remote(addr).build().unwrap();
    eventually("connected", SOON, || double.ping()).await;
    verify(&v, GOOD).await.unwrap();
    assert!(cached(&v, GOOD));
    assert!(!v.stream_live());
    double.send(|seq| ChangeEvent::Ready { seq });
    eventually("live", SOON, || v.stream_live()).await;
    assert!(!cached(&v, GOOD));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_are_ignored_and_unreadable_ones_break_the_stream() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    verify(&v, GOOD).await.unwrap();
    verify(&v, SECOND).await.unwrap();
    // An event of a later protocol, comments, CRLF and a key event split
    // over writes: read as one stream.
    assert!(double.send_raw("event: party\r\ndata: {\"seq\":6}\r\n\r\n: ping\r\n\r\n"));
    let digest = Digest::of(SECOND.as_bytes()).to_hex();
    assert!(double.send_raw("id: 6\nevent: key\ndata: {\"seq\":6,"));
    assert!(double.send_raw(&format!("\"digest\":\"{digest}\"}}\n\n")));
    eventually("SECOND evicted", SOON, || !cached(&v, SECOND)).await;
    assert!(v.stream_live());
    assert_eq!(
        double.stream_requests(),
        1,
        "an unknown event broke the stream"
    );

    // A known event that cannot be read: the stream is broken, reconnected
    // from the last event read.
    double.seq.store(6, Ordering::SeqCst);
    assert!(double.send_raw("id: 7\nevent: key\ndata: {\"seq\":7}\n\n"));
    eventually("reconnected", SOON, || double.stream_requests() == 2).await;
    eventually("live again", SOON, || v.stream_live()).await;
    assert_eq!(double.last_event_ids.lock()[1].as_deref(), Some("6"));
    assert!(cached(&v, GOOD), "a broken stream is not a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_reconnected_and_pings_keep_it_up() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr)
        .stream_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    // Pings twenty times as often as the idle timeout: not silent.
    for _ in 0..40 {
        assert!(double.ping());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(double.stream_requests(), 1, "a pinged stream was dropped");
    // Silent: dropped after the idle timeout, and reconnected.
    eventually("reconnected", SOON, || double.stream_requests() == 2).await;
    eventually("live again", SOON, || v.stream_live()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_the_stream_works_as_before() {
    for status in [404, 405] {
        let (double, addr) = started_with(StreamMode::Status(status)).await;
        let clock = Arc::new(ManualClock::new());
        let v = remote(addr)
            .clock(clock.clone())
            .cache_ttl(Duration::from_secs(300))
            .build()
            .unwrap();
        verify(&v, GOOD).await.unwrap();
        eventually("asked", SOON, || double.stream_requests() >= 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let requests = double.stream_requests();
        assert!(requests <= 2, "{status}: {requests} stream requests in 1 s");
        assert!(!v.stream_live());
        // The long TTL, as without a stream.
        clock.advance(Duration::from_secs(299));
        verify(&v, GOOD).await.unwrap();
        assert_eq!(double.calls(), 1, "{status}");
        clock.advance(Duration::from_secs(2));
        verify(&v, GOOD).await.unwrap();
        assert_eq!(double.calls(), 2, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_ends_with_the_last_verifier_clone() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    let clone = v.clone();
    eventually("live", SOON, || v.stream_live()).await;
    drop(v);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(double.ping(), "the stream ended with a clone still alive");
    drop(clone);
    eventually("the stream closed", SOON, || !double.ping()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(double.stream_requests(), 1, "it reconnected");

    // Between reconnects (100 ms, then 200 ms, ... apart) too.
    let (double, addr) = started_with(StreamMode::Status(503)).await;
    let v = remote(addr).build().unwrap();
    eventually("retrying", SOON, || double.stream_requests() >= 2).await;
    drop(v);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests = double.stream_requests();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(double.stream_requests(), requests, "still reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_can_be_switched_off() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).changes_stream(false).build().unwrap();
    verify(&v, GOOD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(double.stream_requests(), 0);
    assert!(!v.stream_live());
}

// --- the refused credential, in the logs ---

#[tokio::test(flavor = "current_thread")]
async fn a_refused_credential_is_logged_once_and_bounds_grants() {
    let logs = Captured::start();
    let (double, addr) = started_with(StreamMode::Status(403)).await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .stream_down_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let refused = "refused our service credential for its changes stream";
    eventually("logged", SOON, || logs.count("ERROR", refused) == 1).await;
    // Filled at 0 s, the stream refused since 0 s: used for 5 s.
    verify(&v, GOOD).await.unwrap();
    clock.advance(Duration::from_secs(4));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 1);
    clock.advance(Duration::from_secs(2));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 2);
    // Retried slowly, logged once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(double.stream_requests() <= 2);
    assert_eq!(logs.count("ERROR", refused), 1);
    assert!(!logs.text().contains(SERVICE_TOKEN), "{}", logs.text());
    assert!(!logs.text().contains(GOOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_lookup_reads_the_service_token() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let url = format!("http://{addr}");
    let lookup = |token: Option<&'static str>| {
        let url = url.clone();
        move |name: &str| match name {
            "AUTH_REMOTE_ENABLED" => Some("true".to_owned()),
            "AUTH_REMOTE_URL" => Some(url.clone()),
            "AUTH_REMOTE_SERVICE_TOKEN" => token.map(str::to_owned),
            _ => None,
        }
    };
    // Read and sent: the double refuses calls without it.
    let v = RemoteVerifier::from_lookup(lookup(Some(SERVICE_TOKEN)))
        .unwrap()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(verify(&v, GOOD).await.unwrap(), "user-1");
    eventually("live", SOON, || v.stream_live()).await;
    let without = RemoteVerifier::from_lookup(lookup(None))
        .unwrap()
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        verify(&without, GOOD).await.unwrap_err(),
        VerifyError::Unavailable
    );
    assert_eq!(double.calls(), 2);

    // Blank: an error naming the variable.
    let err = RemoteVerifier::from_lookup(lookup(Some(" \t "))).unwrap_err();
    assert!(
        err.to_string().contains("AUTH_REMOTE_SERVICE_TOKEN"),
        "{err}"
    );
    // Not a header value: an error without the value.
    let bad = "secret-part\nother-part";
    let err = RemoteVerifier::from_lookup(lookup(Some(bad)))
        .unwrap()
        .unwrap()
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("secret-part"), "{err}");
    let builder = RemoteVerifier::from_lookup(lookup(Some(SERVICE_TOKEN)))
        .unwrap()
        .unwrap();
    assert!(!format!("{builder:?}").contains(SERVICE_TOKEN));
}

/// A stream request answered 502 (a proxy in front of a key service whose
/// stream is down) is no "no stream": grants stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_error_on_the_stream_bounds_grants() {
    let (double, addr) = started_with(StreamMode::Status(502)).await;
    let clock = Arc::new(ManualClock::new());
    let v = remote(addr)
        .clock(clock.clone())
        .cache_ttl(Duration::from_secs(300))
        .stream_down_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually("asked", SOON, || double.stream_requests() >= 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    verify(&v, GOOD).await.unwrap();
    clock.advance(Duration::from_secs(4));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(double.calls(), 1);
    clock.advance(Duration::from_secs(2));
    verify(&v, GOOD).await.unwrap();
    assert_eq!(
        double.calls(),
        2,
        "a grant outlived the bound while the stream was failing"
    );
    assert!(!v.stream_live());
}

/// An answer from an instance behind what the stream already said (a load
/// balancer spreading validate calls over instances whose followers lag)
/// is used for its request but not cached; an answer that is not behind is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_behind_the_stream_is_not_cached() {
    let (double, addr) = started_with(StreamMode::Serve).await;
    let v = remote(addr).build().unwrap();
    eventually("live", SOON, || v.stream_live()).await;
    assert_eq!(verify(&v, SECOND).await.unwrap(), "user-1");
    double.key_changed("sk_live_someone_elses_key_000000");
    double.key_changed(SECOND);
    // SECOND evicted: the stream's position (7) has been read.
    eventually("SECOND evicted", SOON, || !cached(&v, SECOND)).await;
    // An instance answering from position 6: behind the stream.
    *double.answer_seq.lock() = Some(6);
    for round in 1..=3 {
        assert_eq!(verify(&v, GOOD).await.unwrap(), "user-1");
        assert!(
            !cached(&v, GOOD),
            "round {round}: an answer behind the stream was kept"
        );
    }
    assert_eq!(double.calls(), 1 + 3);
    *double.answer_seq.lock() = Some(7);
    assert_eq!(verify(&v, GOOD).await.unwrap(), "user-1");
    assert!(cached(&v, GOOD));
}
