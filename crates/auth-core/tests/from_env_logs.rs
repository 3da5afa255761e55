//! `Guard::from_env`: while the variable is unset, a builder in open mode
//! whose build logs a WARN naming the variable; set but blank, an error;
//! set, a guard that enforces the key.
//!
//! A test binary with this one test, on one thread: `tracing` caches a
//! callsite's interest the first time any thread reaches it, and while one
//! subscriber exists that is decided by the reaching thread's default — a
//! parallel test without a subscriber could hide the warning. Keep it alone.
//! The variable is set only in child processes (`Command::env`), never in
//! this one.
#![allow(unused_crate_dependencies)]

use std::process::Command;

use auth_core::{
    CredentialSources, Decision, Error, Guard, Mode, PassReason, PlainRequest, RejectionKind,
};

mod common;
use common::Logs;

const VAR: &str = "AUTH_CORE_TEST_FROM_ENV_LOGS_TOKEN";
/// Set in a child: what to check there.
const CHILD: &str = "AUTH_CORE_TEST_FROM_ENV_LOGS_CHILD";
const TEST_NAME: &str = "from_env_is_open_and_warns_while_unset_and_refuses_a_blank_value";
const KEY: &str = "from-env-service-token-0123";

fn token_only() -> CredentialSources {
    CredentialSources::default()
        .key_header("X-Service-Token")
        .bearer(false)
}

/// In a child process with `VAR` set: what `from_env` makes of the value.
fn child(what: &str) {
    match what {
        "blank" => {
            let value = std::env::var(VAR).unwrap();
            assert!(value.trim().is_empty(), "{value:?}");
            let err = Guard::from_env(VAR).unwrap_err();
            assert!(matches!(err, Error::EnvInvalid { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(VAR),
                "the error does not name the variable: {msg}"
            );
        }
        "set" => {
            let guard = Guard::from_env(VAR)
                .unwrap()
                .sources(token_only())
                .build()
                .unwrap();
            assert_eq!(guard.mode(), Mode::Enforce);
            let allowed = guard
                .check(&PlainRequest::get("/p").header("x-service-token", KEY))
                .now()
                .unwrap();
            assert!(matches!(allowed, Decision::Allow(_)), "{allowed:?}");
            let refused = guard.check(&PlainRequest::get("/p")).now().unwrap();
            assert_eq!(refused.rejection().unwrap().status(), 401);
        }
        other => panic!("unknown child case {other}"),
    }
    println!("CHILD-OK {what}");
}

/// Runs this test in a child process with `VAR` set to `value`.
fn run_child(what: &str, value: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(VAR, value)
        .env(CHILD, what)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("CHILD-OK {what}")),
        "child {what:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn from_env_is_open_and_warns_while_unset_and_refuses_a_blank_value() {
    if let Ok(what) = std::env::var(CHILD) {
        child(&what);
        return;
    }
    assert!(
        std::env::var_os(VAR).is_none(),
        "{VAR} is set in the test's environment"
    );

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .without_time()
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    // Unset: a builder (sources, realm, paths can still be set), in open
    // mode; the warning comes when it is built, and names the variable.
    let builder = Guard::from_env(VAR).unwrap().sources(token_only());
    assert!(
        !logs.text().contains("WARN"),
        "warned before the guard was built:\n{}",
        logs.text()
    );
    let guard = builder.build().unwrap();
    let text = logs.text();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(&format!("{VAR} is not set")) && warnings[0].contains("OPEN MODE"),
        "the warning does not name the variable: {}",
        warnings[0]
    );
    assert!(
        warnings[0].contains(&format!("variable={VAR}")),
        "the variable is not a field of the warning: {}",
        warnings[0]
    );
    assert_eq!(guard.mode(), Mode::Open);
    for req in [
        PlainRequest::get("/admin"),
        PlainRequest::get("/admin").header("x-service-token", "anything"),
    ] {
        assert!(matches!(
            guard.check(&req).now(),
            Some(Decision::Pass(PassReason::Open))
        ));
    }
    assert_eq!(guard.counts().passed, 2);
    // Its sources were kept: switched to enforcing, it asks for the token.
    guard.set_mode(Mode::Enforce);
    let r = guard.check(&PlainRequest::get("/admin")).now().unwrap();
    let r = r.rejection().unwrap();
    assert_eq!(r.kind(), RejectionKind::Missing);
    assert_eq!(r.message(), "authentication required: send X-Service-Token");

    // Set but blank: an error, never open mode. Set: enforced.
    for (what, value) in [("blank", ""), ("blank", "   "), ("set", KEY)] {
        run_child(what, value);
    }
}
