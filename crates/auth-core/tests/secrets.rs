//! No secret in logs, Debug output or bodies; extraction never panics;
//! verification grants only the exact key.
#![allow(unused_crate_dependencies)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use auth_core::{
    ApiKey, CacheConfig, Cached, Credential, CredentialSources, Decision, Digest, Guard,
    HashedKeyStore, KeyFile, KeyRecord, KeySet, MemoryKeyStore, Mode, PlainRequest, Principal,
    RateLimitPolicy, StaticKey,
};
use proptest::prelude::*;
use tracing_subscriber::fmt::MakeWriter;

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

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn assert_secret_free(text: &str, secret: &str) {
    assert!(!text.contains(secret), "secret leaked into:\n{text}");
    let full_digest = Digest::of(secret.as_bytes()).to_hex();
    assert!(
        !text.contains(&full_digest),
        "full digest leaked into:\n{text}"
    );
}

#[test]
fn logs_and_debug_never_carry_the_key() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // With one dispatcher, tracing caches a callsite's interest from the
    // default of whichever thread reaches it first (another test's thread,
    // with none); a second one makes it ask every dispatcher.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_file = KeyFile::builder()
        .path(dir.path().join(".api_key"))
        .env_var(None)
        .load_or_create()
        .unwrap();
    let file_key = std::fs::read_to_string(key_file.path()).unwrap();
    key_file.rotate().unwrap();
    let rotated_away = file_key.clone();
    let file_key = std::fs::read_to_string(key_file.path()).unwrap();

    let api_key = ApiKey::generate().unwrap();
    let store = Arc::new(MemoryKeyStore::new());
    let mut record = KeyRecord::new("k1", api_key.digest(), "svc");
    record.rate_limit = Some(RateLimitPolicy::new(1, std::time::Duration::from_secs(60)));
    store.insert(record);
    let cached = Cached::new(HashedKeyStore::new(store.clone()), CacheConfig::default());
    let set = KeySet::new()
        .with_key("set-member-secret", Principal::new("m"))
        .unwrap();
    let static_key = StaticKey::new("static-secret-value").unwrap();

    let mut debug = String::new();
    debug.push_str(&format!(
        "{key_file:?}{api_key:?}{cached:?}{set:?}{static_key:?}{store:?}"
    ));

    let secrets = [
        file_key.as_str(),
        api_key.expose(),
        "set-member-secret",
        "static-secret-value",
        "wrong-guess-secret",
    ];
    let guards = [
        Guard::builder(key_file).build().unwrap(),
        Guard::builder(cached).build().unwrap(),
        Guard::builder(set).build().unwrap(),
        Guard::builder(static_key).build().unwrap(),
        Guard::builder(StaticKey::new("x").unwrap())
            .mode(Mode::ReportOnly)
            .build()
            .unwrap(),
    ];
    for guard in &guards {
        for secret in secrets {
            for req in [
                PlainRequest::get("/x").header("x-api-key", secret),
                PlainRequest::get("/x").header("authorization", format!("Bearer {secret}")),
                PlainRequest::get("/x")
                    .header("x-api-key", secret)
                    .header("authorization", "Bearer other"),
                PlainRequest::get("/x").header("x-api-key", format!("{secret} ")),
            ] {
                // Twice: the second hits caches and rate limits.
                for _ in 0..2 {
                    let decision = rt.block_on(guard.check(&req));
                    debug.push_str(&format!("{decision:?}{req:?}"));
                    match &decision {
                        Decision::Reject(r) => {
                            debug.push_str(&r.body());
                            debug.push_str(&format!("{r}{:?}", r.headers()));
                        }
                        Decision::Allow(g) => debug.push_str(&format!("{:?}", g.headers())),
                        Decision::Pass(_) => {}
                    }
                }
            }
        }
        debug.push_str(&format!("{guard:?}{:?}", guard.counts()));
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("denied"), "the capture saw no deny event");
    assert!(logs.contains("allowed"), "the capture saw no allow event");
    assert!(
        logs.contains(&Digest::of(api_key.expose().as_bytes()).fingerprint()),
        "logs should carry the fingerprint"
    );
    for secret in secrets.iter().chain([&rotated_away.as_str()]) {
        assert_secret_free(&logs, secret);
        assert_secret_free(&debug, secret);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// For any set of headers, extraction returns an answer, never panics,
    /// and a credential it returns is one of the values sent.
    #[test]
    fn extraction_never_panics(
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just("x-api-key".to_owned()),
                    Just("authorization".to_owned()),
                    Just("X-Api-Key".to_owned()),
                    "[a-z-]{1,12}",
                ],
                proptest::collection::vec(any::<u8>(), 0..80),
            ),
            0..5,
        ),
        max_len in 1usize..100,
    ) {
        let mut req = PlainRequest::get("/x");
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        let sources = CredentialSources::default().max_len(max_len);
        if let Ok(c) = sources.extract(&req) {
            prop_assert!(!c.expose().is_empty());
            prop_assert!(c.expose().len() <= max_len);
            prop_assert!(c.expose().iter().all(|b| (0x21..=0x7e).contains(b)));
            prop_assert!(headers.iter().any(|(_, v)| v.ends_with(c.expose())));
        }
    }

    /// Verification grants access only for the exact configured key.
    #[test]
    fn grants_only_the_exact_key(
        key in "[!-~]{1,64}",
        other in "[!-~]{1,64}",
        same in any::<bool>(),
    ) {
        // Half the cases present the real key, so both branches are tested.
        let presented = if same { key.clone() } else { other };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let guard = Guard::builder(StaticKey::new(&key).unwrap()).build().unwrap();
        let decision = rt.block_on(guard.check(&PlainRequest::get("/x").header("x-api-key", &presented)));
        prop_assert_eq!(matches!(decision, Decision::Allow(_)), key == presented);
        let set = KeySet::new().with_key(&key, Principal::new("p")).unwrap();
        let set_guard = Guard::builder(set).build().unwrap();
        let decision = rt.block_on(set_guard.check(&PlainRequest::get("/x").header("authorization", format!("Bearer {presented}"))));
        prop_assert_eq!(matches!(decision, Decision::Allow(_)), key == presented);
    }

    /// Near misses of a real key (one byte changed, one added, one removed)
    /// are refused.
    #[test]
    fn near_misses_are_refused(index in 0usize..64, byte in 0x21u8..=0x7e) {
        let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let sk = StaticKey::new(key).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut changed = key.as_bytes().to_vec();
        changed[index] = byte;
        let mut longer = key.as_bytes().to_vec();
        longer.insert(index, byte);
        let shorter = [&key.as_bytes()[..index], &key.as_bytes()[index + 1..]].concat();
        for candidate in [changed, longer, shorter] {
            let ok = rt.block_on(auth_core::Verifier::verify(&sk, &Credential::new(candidate.clone()), &auth_core::VerifyContext::default())).is_ok();
            prop_assert_eq!(ok, candidate == key.as_bytes());
        }
    }
}
