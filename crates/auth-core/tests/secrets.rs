//! Extraction never panics; verification grants only the exact key. (That
//! no secret reaches logs, `Debug` output or bodies is `secrets_logs.rs`, a
//! test binary of its own: see there.)
#![allow(unused_crate_dependencies)]

use auth_core::{
    Credential, CredentialSources, Decision, Guard, KeySet, PlainRequest, Principal, StaticKey,
};
use proptest::prelude::*;

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
