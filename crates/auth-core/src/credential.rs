//! Credential extraction, written once for every framework.
//!
//! An adapter implements [`RequestView`] over its framework's request; the
//! rules below ([`CredentialSources::extract`]) decide what the caller sent.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::Digest;

/// The secret a caller presented.
///
/// `Debug` and `Display` print `Credential(<redacted>)`; the bytes are
/// zeroized when the value is dropped. The SHA-256 digest is computed once,
/// when the credential is made (every verifier and cache needs it), and
/// shared by all of them.
///
/// ```
/// use auth_core::Credential;
///
/// let c = Credential::new(b"s3cret".to_vec());
/// assert_eq!(format!("{c:?}"), "Credential(<redacted>)");
/// assert_eq!(c.to_string(), "<redacted>");
/// assert_eq!(c.expose(), b"s3cret");
/// ```
pub struct Credential {
    secret: Secret,
    digest: Digest,
}

/// A copy for a future that must own it (a verifier that waits); each copy
/// is wiped when dropped.
impl Clone for Credential {
    fn clone(&self) -> Self {
        let secret = match &self.secret {
            Secret::Inline { len, bytes } => Secret::Inline {
                len: *len,
                bytes: *bytes,
            },
            Secret::Heap(v) => Secret::Heap(v.clone()),
        };
        Self {
            secret,
            digest: self.digest,
        }
    }
}

/// Keys up to this many bytes are held inline: no allocation per request.
const INLINE: usize = 96;

enum Secret {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Zeroizing<Vec<u8>>),
}

impl Drop for Credential {
    fn drop(&mut self) {
        // The heap form is wiped by `Zeroizing`; the inline one here.
        if let Secret::Inline { len, bytes } = &mut self.secret {
            bytes[..usize::from(*len)].zeroize();
        }
    }
}

impl Credential {
    /// Wraps presented bytes. Extraction through [`CredentialSources`] is the
    /// normal way in; this is for tests and custom sources.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self::from_secret(Secret::Heap(Zeroizing::new(secret.into())))
    }

    /// Copies presented bytes: inline (no allocation) when they are short,
    /// as API keys are.
    pub fn from_slice(secret: &[u8]) -> Self {
        match u8::try_from(secret.len()) {
            Ok(len) if secret.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..secret.len()].copy_from_slice(secret);
                Self::from_secret(Secret::Inline { len, bytes })
            }
            _ => Self::new(secret.to_vec()),
        }
    }

    fn from_secret(secret: Secret) -> Self {
        // Hashed eagerly: a lazy cell costs an atomic handshake per request.
        let digest = Digest::of(match &secret {
            Secret::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Secret::Heap(v) => v,
        });
        Self { secret, digest }
    }

    /// The presented bytes. Named so that every use stands out in review.
    pub fn expose(&self) -> &[u8] {
        match &self.secret {
            Secret::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Secret::Heap(v) => v,
        }
    }

    /// The SHA-256 digest of the presented bytes.
    #[inline]
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// A short non-secret handle for logs: the first 8 hex chars of the digest.
    pub fn fingerprint(&self) -> String {
        self.digest().fingerprint()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What an adapter exposes of its framework's request: method, routed path
/// and raw header values. Header names are passed in lowercase.
pub trait RequestView {
    /// The HTTP method, e.g. `"GET"`.
    fn method(&self) -> &str;

    /// The path as the framework routes it (no query string).
    fn path(&self) -> &str;

    /// Every value of the header `name`, in order, as raw bytes.
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

/// A request held as plain data: for tests, examples and integrations that
/// have no framework request at hand.
///
/// ```
/// use auth_core::{PlainRequest, RequestView};
///
/// let req = PlainRequest::get("/items").header("X-Api-Key", "k");
/// assert_eq!(req.header_values("x-api-key").count(), 1);
/// ```
#[derive(Clone, Default)]
pub struct PlainRequest {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl PlainRequest {
    /// A request with this method and path and no headers.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }

    /// A `GET` request for `path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// Adds a header (names are case-insensitive; values may be any bytes).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }
}

impl fmt::Debug for PlainRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may hold secrets: list names only.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PlainRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &names)
            .finish()
    }
}

impl RequestView for PlainRequest {
    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why no usable credential could be taken from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtractError {
    /// No credential in any enabled source (→ 401).
    Missing,
    /// A source was present but empty, e.g. `X-Api-Key:` or `Bearer ` (→ 400).
    Empty,
    /// More than one credential: a header repeated, or a key header and a
    /// bearer token that differ (→ 400).
    Duplicate,
    /// Bytes outside visible ASCII (`0x21..=0x7E`) (→ 400).
    NotVisibleAscii,
    /// Longer than the configured bound (→ 400).
    TooLong,
}

impl ExtractError {
    /// A short, fixed description (never contains request data).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Missing => "no credential was sent",
            Self::Empty => "the credential is empty",
            Self::Duplicate => "more than one credential was sent",
            Self::NotVisibleAscii => "the credential contains characters outside visible ASCII",
            Self::TooLong => "the credential is too long",
        }
    }
}

/// Where credentials are read from, and the bounds they must respect.
///
/// Defaults: the `X-Api-Key` header and `Authorization: Bearer`, both on;
/// at most 1 KiB.
///
/// ```
/// use auth_core::{CredentialSources, ExtractError, PlainRequest};
///
/// let sources = CredentialSources::default();
/// let c = sources
///     .extract(&PlainRequest::get("/").header("authorization", "bearer  abc"))
///     .unwrap();
/// assert_eq!(c.expose(), b"abc");
///
/// let only_token = CredentialSources::default()
///     .key_header("X-Service-Token")
///     .bearer(false);
/// assert_eq!(
///     only_token.extract(&PlainRequest::get("/").header("authorization", "Bearer abc")).unwrap_err(),
///     ExtractError::Missing
/// );
/// ```
#[derive(Clone, Debug)]
pub struct CredentialSources {
    key_headers: Vec<String>,
    bearer: bool,
    max_len: usize,
}

/// The default upper bound on a credential's length, in bytes.
pub const DEFAULT_MAX_CREDENTIAL_LEN: usize = 1024;

impl Default for CredentialSources {
    fn default() -> Self {
        Self {
            key_headers: vec!["x-api-key".to_owned()],
            bearer: true,
            max_len: DEFAULT_MAX_CREDENTIAL_LEN,
        }
    }
}

impl CredentialSources {
    /// Reads the key from this header only (replacing `X-Api-Key`).
    pub fn key_header(mut self, name: &str) -> Self {
        self.key_headers = vec![name.to_ascii_lowercase()];
        self
    }

    /// Reads the key from any of these headers (replacing `X-Api-Key`).
    /// Sending more than one of them is a [`ExtractError::Duplicate`].
    pub fn key_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.key_headers = names
            .into_iter()
            .map(|n| n.as_ref().to_ascii_lowercase())
            .collect();
        self
    }

    /// Turns the key-header source off (bearer only).
    pub fn no_key_header(mut self) -> Self {
        self.key_headers.clear();
        self
    }

    /// Turns `Authorization: Bearer` on or off.
    pub fn bearer(mut self, on: bool) -> Self {
        self.bearer = on;
        self
    }

    /// Sets the upper bound on a credential's length in bytes.
    pub fn max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// The configured key header names, lowercase.
    pub fn key_header_names(&self) -> &[String] {
        &self.key_headers
    }

    /// Whether `Authorization: Bearer` is read.
    pub fn reads_bearer(&self) -> bool {
        self.bearer
    }

    /// Whether at least one source is enabled.
    pub fn is_enabled(&self) -> bool {
        self.bearer || !self.key_headers.is_empty()
    }

    /// Takes the one credential the request carries, or says why there is none.
    pub fn extract<R: RequestView + ?Sized>(&self, req: &R) -> Result<Credential, ExtractError> {
        let mut from_key: Option<&[u8]> = None;
        for name in &self.key_headers {
            for value in req.header_values(name) {
                if from_key.replace(value).is_some() {
                    return Err(ExtractError::Duplicate);
                }
            }
        }

        let mut from_bearer: Option<&[u8]> = None;
        if self.bearer {
            let mut authorizations = req.header_values("authorization");
            if let Some(value) = authorizations.next() {
                if authorizations.next().is_some() {
                    return Err(ExtractError::Duplicate);
                }
                from_bearer = bearer_token(value);
            }
        }

        let token = match (from_key, from_bearer) {
            (None, None) => return Err(ExtractError::Missing),
            (Some(t), None) | (None, Some(t)) => t,
            // Both carry the same token: one credential, sent twice by a
            // careful client. Different tokens: refuse to guess.
            (Some(a), Some(b)) if a == b => a,
            (Some(_), Some(_)) => return Err(ExtractError::Duplicate),
        };
        self.check(token)?;
        Ok(Credential::from_slice(token))
    }

    fn check(&self, token: &[u8]) -> Result<(), ExtractError> {
        if token.is_empty() {
            return Err(ExtractError::Empty);
        }
        if token.len() > self.max_len {
            return Err(ExtractError::TooLong);
        }
        // No early exit: this form vectorises, and keys are short.
        if !token
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e))
        {
            return Err(ExtractError::NotVisibleAscii);
        }
        Ok(())
    }
}

/// The token of an `Authorization: Bearer <token>` value, or `None` when the
/// scheme is not `Bearer` (another scheme is not ours to judge).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let scheme = value.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    if rest.is_empty() {
        // "Bearer" alone: the scheme with an empty token.
        return Some(rest);
    }
    if rest[0] != b' ' {
        // "Bearerxyz" is some other scheme.
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    Some(&rest[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(req: PlainRequest) -> Result<Vec<u8>, ExtractError> {
        CredentialSources::default()
            .extract(&req)
            .map(|c| c.expose().to_vec())
    }

    fn get() -> PlainRequest {
        PlainRequest::get("/x")
    }

    #[test]
    fn key_header_and_bearer_both_accepted() {
        assert_eq!(extract(get().header("X-Api-Key", "abc")).unwrap(), b"abc");
        assert_eq!(
            extract(get().header("Authorization", "Bearer abc")).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn bearer_scheme_case_and_spaces() {
        for v in ["bearer abc", "BEARER abc", "BeArEr    abc"] {
            assert_eq!(
                extract(get().header("authorization", v)).unwrap(),
                b"abc",
                "{v}"
            );
        }
        // The token is taken byte for byte: case kept, nothing trimmed inside.
        assert_eq!(
            extract(get().header("authorization", "Bearer AbC.d~e")).unwrap(),
            b"AbC.d~e"
        );
    }

    #[test]
    fn other_schemes_are_not_credentials() {
        for v in ["Basic dXNlcjpwYXNz", "Bearerabc", "Token abc", "Bear"] {
            assert_eq!(
                extract(get().header("authorization", v)),
                Err(ExtractError::Missing),
                "{v}"
            );
        }
        assert_eq!(
            extract(get().header("authorization", "Bearer\tabc")),
            Err(ExtractError::Missing)
        );
    }

    #[test]
    fn missing_and_empty() {
        assert_eq!(extract(get()), Err(ExtractError::Missing));
        assert_eq!(
            extract(get().header("x-api-key", "")),
            Err(ExtractError::Empty)
        );
        for v in ["Bearer", "Bearer ", "bearer    "] {
            assert_eq!(
                extract(get().header("authorization", v)),
                Err(ExtractError::Empty),
                "{v:?}"
            );
        }
    }

    #[test]
    fn duplicates() {
        let two_auth = get()
            .header("authorization", "Bearer a")
            .header("authorization", "Bearer a");
        assert_eq!(extract(two_auth), Err(ExtractError::Duplicate));
        let two_keys = get().header("x-api-key", "a").header("X-API-KEY", "a");
        assert_eq!(extract(two_keys), Err(ExtractError::Duplicate));
        let differ = get()
            .header("x-api-key", "a")
            .header("authorization", "Bearer b");
        assert_eq!(extract(differ), Err(ExtractError::Duplicate));
        let same = get()
            .header("x-api-key", "a")
            .header("authorization", "Bearer a");
        assert_eq!(extract(same).unwrap(), b"a");
        let two_named = CredentialSources::default()
            .key_headers(["X-Service-Token", "X-Internal-Service-Key"])
            .extract(
                &get()
                    .header("x-service-token", "a")
                    .header("x-internal-service-key", "b"),
            );
        assert_eq!(two_named.unwrap_err(), ExtractError::Duplicate);
    }

    #[test]
    fn bytes_outside_visible_ascii() {
        for v in [
            &b"ab c"[..],
            b"abc ",
            b"a\tb",
            b"caf\xc3\xa9",
            b"\x7f",
            b"a\x00b",
        ] {
            assert_eq!(
                extract(get().header("x-api-key", v)),
                Err(ExtractError::NotVisibleAscii),
                "{v:?}"
            );
        }
        assert_eq!(
            extract(get().header("authorization", b"Bearer \xff\xfe")),
            Err(ExtractError::NotVisibleAscii)
        );
    }

    #[test]
    fn length_bound() {
        let at = "a".repeat(DEFAULT_MAX_CREDENTIAL_LEN);
        assert_eq!(extract(get().header("x-api-key", &at)).unwrap().len(), 1024);
        let over = "a".repeat(DEFAULT_MAX_CREDENTIAL_LEN + 1);
        assert_eq!(
            extract(get().header("x-api-key", &over)),
            Err(ExtractError::TooLong)
        );
        let huge = format!("Bearer {}", "a".repeat(64 * 1024));
        assert_eq!(
            extract(get().header("authorization", huge)),
            Err(ExtractError::TooLong)
        );
        let small = CredentialSources::default().max_len(3);
        assert_eq!(
            small
                .extract(&get().header("x-api-key", "abcd"))
                .unwrap_err(),
            ExtractError::TooLong
        );
    }

    #[test]
    fn sources_can_be_switched_off() {
        let bearer_only = CredentialSources::default().no_key_header();
        assert_eq!(
            bearer_only
                .extract(&get().header("x-api-key", "a"))
                .unwrap_err(),
            ExtractError::Missing
        );
        let custom = CredentialSources::default()
            .key_header("X-Service-Token")
            .bearer(false);
        assert_eq!(
            custom
                .extract(&get().header("X-Service-Token", "t"))
                .unwrap()
                .expose(),
            b"t"
        );
        assert_eq!(
            custom.extract(&get().header("x-api-key", "t")).unwrap_err(),
            ExtractError::Missing
        );
        // With bearer off, a stray Authorization header does not conflict.
        assert_eq!(
            custom
                .extract(
                    &get()
                        .header("X-Service-Token", "t")
                        .header("authorization", "Bearer u")
                )
                .unwrap()
                .expose(),
            b"t"
        );
    }

    #[test]
    fn short_and_long_credentials_hold_the_same_bytes() {
        for len in [1, 63, 64, 95, 96, 97, 200, 1024] {
            let bytes: Vec<u8> = (0..len).map(|i| b'!' + (i % 90) as u8).collect();
            let c = Credential::from_slice(&bytes);
            assert_eq!(c.expose(), &bytes[..], "{len}");
            assert_eq!(*c.digest(), Digest::of(&bytes), "{len}");
            assert_eq!(Credential::new(bytes.clone()).expose(), &bytes[..]);
        }
    }

    #[test]
    fn credential_is_redacted_and_digested() {
        let c = Credential::new("topsecret");
        assert!(!format!("{c:?}{c}").contains("topsecret"));
        assert_eq!(*c.digest(), Digest::of(b"topsecret"));
        let req = get().header("x-api-key", "topsecret");
        assert!(!format!("{req:?}").contains("topsecret"));
    }
}
