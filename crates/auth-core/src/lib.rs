#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(any(doc, test)),
    doc = "Framework-agnostic API-key authentication."
)]
#![forbid(unsafe_code)]
// Dev-dependencies serve the integration tests; unit tests need not use each.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod answer;
mod api_key;
pub mod cache;
pub mod clock;
mod combinators;
mod credential;
pub mod digest;
mod error;
mod guard;
#[cfg(feature = "http")]
pub mod http;
mod key_file;
mod keys;
mod local;
mod metrics;
mod rate_limit;
pub mod rejection;
mod store;
#[cfg(feature = "tower")]
pub mod tower;
mod verifier;

#[cfg(feature = "openapi")]
pub mod openapi;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "protocol")]
pub mod protocol;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "webhooks")]
pub mod webhook;

// The names users write; plumbing (cache internals, clocks, hashers, header
// helpers) stays in its module.
pub use answer::Answer;
pub use api_key::{ApiKey, ApiKeyFormat};
pub use cache::CacheConfig;
pub use combinators::{Cached, Deferred, Fallback, FormatChecked};
pub use credential::{Credential, CredentialSources, ExtractError, PlainRequest, RequestView};
pub use digest::Digest;
pub use error::Error;
pub use guard::{
    Admission, Admitted, Decision, Grant, Guard, GuardBuilder, Keyrings, Mode, PassReason,
    PublicPaths, RouteScope,
};
pub use key_file::{KeyFile, KeyFileBuilder};
pub use keys::{KeySet, StaticKey};
pub use metrics::DecisionCounts;
pub use rate_limit::{GcraLimiter, RateDecision, RateLimitPolicy, RateLimiter, RateStatus};
pub use rejection::{Rejection, RejectionKind};
pub use store::{
    FindById, HashedKeyStore, KeyRecord, KeyStore, Lookup, MemoryKeyStore, StoreError,
};
pub use verifier::{
    FnVerifier, Principal, Recheck, RefusedAfter, Verifier, VerifyContext, VerifyError,
    VerifyResult, verifier_fn,
};

/// Defaults that configurations name.
pub mod defaults {
    pub use crate::credential::DEFAULT_MAX_CREDENTIAL_LEN;
    pub use crate::guard::{DEFAULT_KEYRING, DEFAULT_REALM};
    pub use crate::key_file::{DEFAULT_KEY_FILE_ENV, DEFAULT_KEY_FILE_PRINCIPAL};
    pub use crate::keys::DEFAULT_STATIC_PRINCIPAL;
}
