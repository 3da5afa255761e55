#![cfg_attr(any(doc, test), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(any(doc, test)),
    doc = "Framework-agnostic API-key authentication."
)]
#![forbid(unsafe_code)]
// Dev-dependencies serve the integration tests; unit tests need not use each.
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod api_key;
mod cache;
mod clock;
mod combinators;
mod credential;
mod digest;
mod error;
mod guard;
mod key_file;
mod keys;
mod local;
mod metrics;
mod rate_limit;
mod rejection;
mod store;
mod verifier;

#[cfg(feature = "openapi")]
pub mod openapi;
#[cfg(feature = "protocol")]
pub mod protocol;
#[cfg(feature = "testing")]
pub mod testing;

pub use api_key::{ApiKey, ApiKeyFormat};
pub use cache::{Cache, CacheConfig, CacheEntry, Denial, FillTicket, TtlCache};
pub use clock::{Clock, CoarseClock, ManualClock, SystemClock};
pub use combinators::{Cached, Deferred, Fallback, FormatChecked};
pub use credential::{
    Credential, CredentialSources, DEFAULT_MAX_CREDENTIAL_LEN, ExtractError, PlainRequest,
    RequestView,
};
pub use digest::{Digest, DigestHasher, DigestStateHasher, digest};
pub use error::Error;
pub use guard::{
    DEFAULT_KEYRING, DEFAULT_REALM, Decision, Grant, Guard, GuardBuilder, Keyrings, Mode,
    PassReason, PublicPaths, RouteScope,
};
pub use key_file::{DEFAULT_KEY_FILE_ENV, DEFAULT_KEY_FILE_PRINCIPAL, KeyFile, KeyFileBuilder};
pub use keys::{DEFAULT_STATIC_PRINCIPAL, KeySet, StaticKey};
pub use metrics::{DecisionCounters, DecisionCounts};
pub use rate_limit::{GcraLimiter, RateDecision, RateLimiter, RateStatus};
pub use rejection::{
    JSON_CONTENT_TYPE, Rejection, RejectionKind, rate_limit_headers, retry_after_secs,
};
pub use store::{HashedKeyStore, KeyRecord, KeyStore, MemoryKeyStore, StoreError};
pub use verifier::{
    BoxFuture, FnVerifier, Principal, RateLimitPolicy, Verifier, VerifyContext, VerifyError,
    VerifyResult, verifier_fn,
};
