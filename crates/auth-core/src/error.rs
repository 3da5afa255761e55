//! The one error type of auth-core: configuration and key-file problems,
//! raised at start or on an admin action — never on the request path (the
//! request path answers with a [`Rejection`](crate::Rejection)).

use std::path::PathBuf;

/// Configuration and key-file errors. No variant ever carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key was empty or only whitespace.
    #[error("the key is empty; configure a non-blank secret")]
    EmptyKey,

    /// The same key was added twice to one set.
    #[error("key {fingerprint} was added twice")]
    DuplicateKey {
        /// Fingerprint (first 8 hex chars of the digest) of the key.
        fingerprint: String,
    },

    /// The same key is valid in two keyrings: a key leaked on one trust
    /// boundary would drive the other.
    #[error(
        "key {fingerprint} is valid in keyrings `{first}` and `{second}`; give each trust boundary its own key"
    )]
    KeyShared {
        /// Fingerprint of the shared key.
        fingerprint: String,
        /// One keyring.
        first: String,
        /// The other keyring.
        second: String,
    },

    /// Two keyrings were given the same name.
    #[error("keyring `{0}` is defined twice")]
    DuplicateKeyring(String),

    /// No keyring of that name.
    #[error("no keyring named `{0}`")]
    UnknownKeyring(String),

    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {var} {problem}")]
    EnvInvalid {
        /// The variable's name.
        var: String,
        /// What is wrong with it (never its value).
        problem: &'static str,
    },

    /// A digest was not 64 hex characters.
    #[error("a digest must be 64 hex characters")]
    InvalidDigest,

    /// The key file exists but cannot be used.
    #[error("key file {path}: {problem}; {fix}")]
    KeyFileRefused {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },

    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    KeyFileIo {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),

    /// A guard or policy was configured inconsistently.
    #[error("invalid configuration: {0}")]
    Config(String),
}
