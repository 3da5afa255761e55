//! Credential extraction and the guard's decision over arbitrary header
//! sets, paths and source configurations: never a panic; a credential is
//! always one of the values sent, non-empty, within the length limit and
//! visible ASCII; access is granted only for the exact configured key.
#![no_main]
#![forbid(unsafe_code)]

use arbitrary::Arbitrary;
use auth_core::{
    CredentialSources, Decision, Guard, PassReason, PlainRequest, RequestView, StaticKey,
};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Arbitrary, Debug)]
struct Input {
    method: Method,
    path: String,
    headers: Vec<(Name, Value)>,
    custom_key_header: String,
    use_custom_key_header: bool,
    bearer: bool,
    max_len: u16,
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Options,
    Other(String),
}

/// A header value: arbitrary bytes, or the real key in the forms that
/// matter (a fuzzer cannot find 64 exact bytes behind a hash by itself).
#[derive(Arbitrary, Debug)]
enum Value {
    Bytes(Vec<u8>),
    Key,
    BearerKey,
    KeyWithSuffix(Vec<u8>),
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Bytes(b) => b.clone(),
            Value::Key => KEY.as_bytes().to_vec(),
            Value::BearerKey => format!("Bearer {KEY}").into_bytes(),
            Value::KeyWithSuffix(s) => [KEY.as_bytes(), s].concat(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    ApiKey,
    Authorization,
    AccessControlRequestMethod,
    Other(String),
}

fuzz_target!(|input: Input| {
    let method = match &input.method {
        Method::Get => "GET",
        Method::Options => "OPTIONS",
        Method::Other(m) => m.as_str(),
    };
    let mut req = PlainRequest::new(method, &input.path);
    let values: Vec<Vec<u8>> = input.headers.iter().map(|(_, v)| v.bytes()).collect();
    for ((name, _), value) in input.headers.iter().zip(&values) {
        let name = match name {
            Name::ApiKey => "X-Api-Key",
            Name::Authorization => "Authorization",
            Name::AccessControlRequestMethod => "Access-Control-Request-Method",
            Name::Other(n) => n.as_str(),
        };
        req = req.header(name, value);
    }
    let mut sources = CredentialSources::default()
        .bearer(input.bearer)
        .max_len(usize::from(input.max_len).max(1));
    if input.use_custom_key_header && !input.custom_key_header.is_empty() {
        sources = sources.key_header(&input.custom_key_header);
    }

    let extracted = sources.extract(&req);
    if let Ok(credential) = &extracted {
        let bytes = credential.expose();
        assert!(!bytes.is_empty());
        assert!(bytes.len() <= usize::from(input.max_len).max(1));
        assert!(bytes.iter().all(|b| (0x21..=0x7e).contains(b)));
        assert!(
            values.iter().any(|v| v.ends_with(bytes)),
            "a credential that was not sent"
        );
    }

    // The guard rejects a bad configuration at build; that is an answer too.
    let Ok(guard) = Guard::builder(StaticKey::new(KEY).expect("key"))
        .sources(sources)
        .build()
    else {
        return;
    };
    let decision = guard
        .check(&req)
        .now()
        .expect("a static key decides without waiting");
    match decision {
        Decision::Allow(_) => assert!(
            matches!(&extracted, Ok(c) if c.expose() == KEY.as_bytes()),
            "granted without the exact key"
        ),
        Decision::Pass(PassReason::PublicPath) => assert_eq!(req.path(), "/health"),
        Decision::Pass(reason) => panic!("passed without a key for {reason:?}"),
        Decision::Reject(rejection) => {
            assert!(
                !matches!(&extracted, Ok(c) if c.expose() == KEY.as_bytes()),
                "the exact key was refused"
            );
            let body = rejection.body();
            for value in &values {
                if value.len() >= 8 {
                    assert!(
                        !body
                            .as_bytes()
                            .windows(value.len())
                            .any(|w| w == value.as_slice()),
                        "the body echoes a header value"
                    );
                }
            }
        }
    }
});
