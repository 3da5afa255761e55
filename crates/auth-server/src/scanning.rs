//! Leaked keys, disabled in seconds (issue 17, item 3): the endpoint of
//! GitHub's secret scanning partner program.
//!
//! GitHub finds one of our keys in public content and POSTs a JSON array of
//! `{"token", "type", "url", "source"}` to [`GITHUB_PATH`], signed with
//! ECDSA P-256 / SHA-256 over the raw body (`Github-Public-Key-Signature`,
//! base64 of the ASN.1 DER signature) by the key named in
//! `Github-Public-Key-Identifier`, one of those GitHub publishes at
//! `https://api.github.com/meta/public_keys/secret_scanning`. This machine
//! does not fetch that list: operators save it to a file
//! ([`ScanningKeys::load`]) and refresh it (SIGHUP re-reads it).
//!
//! Nothing is read of the body before the headers check (both there, a
//! known key id, a signature of at most 80 bytes), at most
//! [`CONCURRENT_REPORTS`] reports are read at once, each within 10 s, and
//! nothing is taken from a body before its signature verifies. Each token
//! is then checked offline (our format and its CRC32), looked up by digest
//! — client keys and service credentials alike: a leaked credential is
//! leaked — disabled if ours and not yet disabled (recorded in the audit
//! trail as `scanner:github`, with the URL as its source), and labelled in
//! the answer as the program expects (`true_positive` / `false_positive`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use auth_core::Digest;
use auth_sqlx::{Actor, KeyKind, MAX_SOURCE_CHARS};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::metrics::{Action, Resource};
use crate::{AppState, ErrorBody, error};

/// Where GitHub's secret scanning sends its reports.
pub const GITHUB_PATH: &str = "/api/v1/secret-scanning/github";
/// The largest report accepted (1 MiB); a larger one is refused (413)
/// before anything is looked up.
pub const REPORT_BODY_LIMIT: usize = 1024 * 1024;
/// The most distinct well-formed tokens one report may carry; more is
/// refused (413) before anything is looked up.
pub const MAX_REPORT_TOKENS: usize = 1000;
/// How many reports are handled at once; one more is answered 503 `busy`.
pub(crate) const CONCURRENT_REPORTS: usize = 4;
/// How long a report's body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest decoded signature taken (a P-256 DER signature is at most
/// 72 bytes).
const MAX_SIGNATURE_BYTES: usize = 80;
/// The largest keys file read.
const KEYS_FILE_LIMIT: u64 = 1024 * 1024;
/// The header naming GitHub's signing key (its `key_identifier`).
const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header with the base64 of the DER signature of the raw body.
const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// Who a disable is recorded as made by: `scanner:github`.
const SCANNER: &str = "github";

/// GitHub's public keys for secret scanning, read from a file in the shape
/// of `https://api.github.com/meta/public_keys/secret_scanning`:
///
/// ```json
/// {"public_keys": [{"key_identifier": "90a4…", "key": "-----BEGIN PUBLIC KEY-----\n…", "is_current": true}]}
/// ```
///
/// Every listed key is accepted, current or not (GitHub may still sign with
/// a key it is retiring). [`reload`](Self::reload) re-reads the file; a
/// file that no longer parses leaves the keys as they were.
pub struct ScanningKeys {
    path: PathBuf,
    keys: RwLock<Arc<Vec<SigningKey>>>,
}

struct SigningKey {
    id: String,
    key: ParsedPublicKey,
}

/// Key ids and the path only: nothing else to show.
impl fmt::Debug for ScanningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanningKeys")
            .field("path", &self.path)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// A keys file that could not be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("secret scanning keys file {}: {why}", path.display())]
pub struct ScanningKeysError {
    path: PathBuf,
    why: String,
}

#[derive(Deserialize)]
struct KeysFile {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

impl ScanningKeys {
    /// Reads and checks the keys file: valid JSON of GitHub's shape, at
    /// least one key, every key an ECDSA P-256 public key in PEM
    /// (SubjectPublicKeyInfo), no identifier twice.
    pub fn load(path: &Path) -> Result<Self, ScanningKeysError> {
        let keys = read_keys(path)?;
        Ok(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Reads the file again; on success the new keys replace the old ones
    /// (their number is returned), else the old ones stay.
    pub fn reload(&self) -> Result<usize, ScanningKeysError> {
        let keys = read_keys(&self.path)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// The file the keys come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identifiers of the keys in use.
    pub fn key_ids(&self) -> Vec<String> {
        self.current().iter().map(|k| k.id.clone()).collect()
    }

    fn current(&self) -> Arc<Vec<SigningKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key named in the headers and the decoded signature, checked
    /// before the body is read: both headers there, a known key id, a
    /// signature that is base64 of at most [`MAX_SIGNATURE_BYTES`].
    fn signed_by(&self, headers: &HeaderMap) -> Result<Signed, &'static str> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(key_id), Some(signature)) = (header(KEY_ID_HEADER), header(SIGNATURE_HEADER))
        else {
            return Err(
                "a report needs Github-Public-Key-Identifier and Github-Public-Key-Signature",
            );
        };
        let keys = self.current();
        let Some(index) = keys.iter().position(|k| k.id == key_id.trim()) else {
            return Err("unknown public key identifier (refresh the secret scanning keys file?)");
        };
        let signature = signature.trim();
        // Base64 of 80 bytes is 108 characters: no longer one is decoded.
        if signature.len() > MAX_SIGNATURE_BYTES.div_ceil(3) * 4 {
            return Err("the signature is too long");
        }
        let signature = STANDARD
            .decode(signature)
            .map_err(|_| "the signature is not base64")?;
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err("the signature is too long");
        }
        Ok(Signed {
            keys,
            index,
            signature,
        })
    }
}

/// The signing key a report names (from the keys in use when it came) and
/// its signature.
struct Signed {
    keys: Arc<Vec<SigningKey>>,
    index: usize,
    signature: Vec<u8>,
}

impl Signed {
    /// Whether `body` is what was signed.
    fn verify(&self, body: &[u8]) -> Result<(), &'static str> {
        self.keys[self.index]
            .key
            .verify_sig(body, &self.signature)
            .map_err(|_| "the signature does not verify")
    }
}

fn read_keys(path: &Path) -> Result<Vec<SigningKey>, ScanningKeysError> {
    let fail = |why: String| ScanningKeysError {
        path: path.to_owned(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, KEYS_FILE_LIMIT + 1),
        &mut text,
    )
    .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > KEYS_FILE_LIMIT {
        return Err(fail("over 1 MiB".into()));
    }
    let file: KeysFile = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "not GitHub's {{\"public_keys\": [{{\"key_identifier\", \"key\"}}]}} ({e})"
        ))
    })?;
    if file.public_keys.is_empty() {
        return Err(fail("no public keys in \"public_keys\"".into()));
    }
    let mut keys: Vec<SigningKey> = Vec::with_capacity(file.public_keys.len());
    for entry in file.public_keys {
        let id = entry.key_identifier.trim().to_owned();
        if id.is_empty() {
            return Err(fail("a key has an empty key_identifier".into()));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(fail(format!("key_identifier {id} is listed twice")));
        }
        let der = pem_public_key(&entry.key)
            .ok_or_else(|| fail(format!("key {id}: not a PEM PUBLIC KEY")))?;
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .map_err(|e| fail(format!("key {id}: not an ECDSA P-256 public key ({e})")))?;
        keys.push(SigningKey { id, key });
    }
    Ok(keys)
}

/// The DER of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo): the base64
/// between its armour lines.
fn pem_public_key(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let body = pem.trim().strip_prefix(BEGIN)?.strip_suffix(END)?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b64).ok().filter(|der| !der.is_empty())
}

/// One token GitHub found.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Reported {
    /// The token as found.
    pub(crate) token: String,
    /// The secret type registered with GitHub (echoed as `token_type`;
    /// `null` or missing: empty).
    #[serde(rename = "type", default, deserialize_with = "null_as_empty")]
    pub(crate) kind: String,
    /// The public URL where it was found (`null`, missing or empty: none):
    /// the audit record's `source`, the token in it replaced by its
    /// display prefix.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) url: String,
    /// Where on GitHub: `content`, `commit`, `issue_comment`, `npm`, …
    /// (`null` or missing: empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) source: String,
}

/// A string, or `null` as the empty string.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// GitHub's feedback format: a label for each reported token.
#[derive(Serialize, ToSchema)]
pub(crate) struct Labelled {
    /// The token as reported (the program's `token_raw` feedback form).
    pub(crate) token_raw: String,
    /// The reported `type`.
    pub(crate) token_type: String,
    /// `true_positive` (one of ours, now disabled) or `false_positive`.
    pub(crate) label: &'static str,
}

const TRUE_POSITIVE: &str = "true_positive";
const FALSE_POSITIVE: &str = "false_positive";

/// One element of a report: parsed, or what can be echoed of it.
enum Element {
    Parsed(Reported, Option<KeyKind>),
    Unparsed { token: String, kind: String },
}

/// `POST /api/v1/secret-scanning/github`.
#[utoipa::path(post, path = "/api/v1/secret-scanning/github", tag = "secret-scanning",
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "which of GitHub's secret scanning keys signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "base64 of the ECDSA P-256 SHA-256 signature (ASN.1 DER) of the raw body")),
    request_body(content = Vec<Reported>, description = "the tokens GitHub found (at most 1 MiB, at most 1,000 distinct tokens of our format)"),
    responses(
        (status = 200, description = "each element labelled (one that does not parse: false_positive); ours are disabled", body = Vec<Labelled>),
        (status = 400, description = "signed, but not a JSON array; or the body could not be read", body = ErrorBody),
        (status = 401, description = "no signature, an unknown key identifier, or a signature that is not base64 of at most 80 bytes or does not verify: nothing changed", body = ErrorBody),
        (status = 404, description = "no secret scanning keys file configured on this server", body = ErrorBody),
        (status = 408, description = "the body took over 10 s to arrive: nothing changed", body = ErrorBody),
        (status = 413, description = "a body over 1 MiB, or over 1,000 distinct tokens of our format: nothing changed", body = ErrorBody),
        (status = 503, description = "the key store failed, or 4 reports are being handled (`busy`); send again (labels are stable, disables idempotent)", body = ErrorBody)))]
pub(crate) async fn github(State(state): State<AppState>, request: Request) -> Response {
    let Some(keys) = state.scanning.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "secret scanning is not configured on this server (serve --secret-scanning-keys FILE)",
        );
    };
    let (parts, body) = request.into_parts();
    // Everything that needs no body first: nothing is read for a report
    // that could not verify.
    let signed = match keys.signed_by(&parts.headers) {
        Ok(signed) => signed,
        Err(why) => {
            tracing::warn!(reason = why, "secret scanning report refused");
            return error(StatusCode::UNAUTHORIZED, "unauthorized", why);
        }
    };
    // Held until the answer: at most this many bodies in memory, and
    // lookups, at once.
    let Ok(_permit) = state.scanning_permits.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many secret scanning reports at once; send again",
        );
    };
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, REPORT_BODY_LIMIT),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) if is_length_limit(&e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "a report is at most 1 MiB",
            );
        }
        Ok(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body could not be read",
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the body took over 10 s to arrive",
            );
        }
    };
    if let Err(why) = signed.verify(&body) {
        tracing::warn!(reason = why, "secret scanning report refused");
        return error(StatusCode::UNAUTHORIZED, "unauthorized", why);
    }
    // A fixed message: serde's would quote the body, tokens included.
    let Ok(values) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a report is a JSON array of {\"token\", \"type\", \"url\", \"source\"}",
        );
    };
    drop(body);
    // Each element on its own: one that does not parse is answered
    // `false_positive`, the others handled. Tokens checked offline (our
    // format and checksum) here, without a lookup.
    let elements: Vec<Element> = values
        .into_iter()
        .map(|value| {
            let echo = |field: &str| value[field].as_str().unwrap_or_default().to_owned();
            let (token, kind) = (echo("token"), echo("type"));
            match serde_json::from_value::<Reported>(value) {
                Ok(report) => {
                    let kind = [KeyKind::Client, KeyKind::Service]
                        .into_iter()
                        .find(|kind| {
                            state
                                .store
                                .format(*kind)
                                .is_well_formed(report.token.as_bytes())
                        });
                    Element::Parsed(report, kind)
                }
                Err(_) => Element::Unparsed { token, kind },
            }
        })
        .collect();
    // Each distinct token of our format once (its first element's URL and
    // source), at most MAX_REPORT_TOKENS of them.
    let mut distinct: Vec<(KeyKind, &Reported)> = Vec::new();
    let mut labels: HashMap<&str, &'static str> = HashMap::new();
    for element in &elements {
        if let Element::Parsed(report, Some(kind)) = element {
            if labels.insert(&report.token, FALSE_POSITIVE).is_none() {
                distinct.push((*kind, report));
            }
        }
    }
    if distinct.len() > MAX_REPORT_TOKENS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_tokens",
            "a report has at most 1,000 distinct tokens of our format",
        );
    }
    for (kind, report) in distinct {
        match judge(&state, kind, report).await {
            Ok(true) => {
                labels.insert(&report.token, TRUE_POSITIVE);
            }
            Ok(false) => {}
            // GitHub sends again: the tokens disabled so far are then
            // found disabled, labelled the same, not written twice.
            Err(e) => return state.store_error(&e),
        }
    }
    let answer: Vec<Labelled> = elements
        .iter()
        .map(|element| match element {
            Element::Parsed(report, _) => Labelled {
                token_raw: report.token.clone(),
                token_type: report.kind.clone(),
                label: labels
                    .get(report.token.as_str())
                    .copied()
                    .unwrap_or(FALSE_POSITIVE),
            },
            Element::Unparsed { token, kind } => Labelled {
                token_raw: token.clone(),
                token_type: kind.clone(),
                label: FALSE_POSITIVE,
            },
        })
        .collect();
    let ours = answer.iter().filter(|a| a.label == TRUE_POSITIVE).count();
    tracing::info!(
        reported = answer.len(),
        ours,
        "secret scanning report from GitHub handled"
    );
    (StatusCode::OK, Json(answer)).into_response()
}

/// Whether reading a body failed for its size.
fn is_length_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|e| e.is::<http_body_util::LengthLimitError>())
}

/// Whether the reported token — of our format, a `kind` key — is ours;
/// disables it if it is and is not disabled yet.
async fn judge(
    state: &AppState,
    kind: KeyKind,
    report: &Reported,
) -> Result<bool, auth_sqlx::Error> {
    let token = report.token.as_str();
    // A read that is not counted as a use of the key (its last-used time
    // stays what the key's holders made it).
    let Some(info) = state
        .store
        .get_by_digest(kind, &Digest::of(token.as_bytes()))
        .await?
    else {
        return Ok(false);
    };
    if info.disabled_at.is_some() {
        // Already disabled: left as it is (its disable time, no record).
        return Ok(true);
    }
    // The URL may hold the token (a file named after it): the token
    // replaced by its display prefix before it is recorded or logged.
    let shown = display_prefix(token);
    let url = report.url.replace(token, &shown);
    // Disabled whatever its expiry: an expiry can be moved, a leak cannot
    // be undone.
    let scanner = state.store.acting(Actor::SecretScanner {
        name: SCANNER.to_owned(),
        url: url.clone(),
    });
    let (disabled, resource) = match kind {
        KeyKind::Client => (scanner.disable(&info.id).await?, Resource::Key),
        KeyKind::Service => (
            scanner.services().disable(&info.id).await?,
            Resource::Service,
        ),
    };
    if disabled {
        state.wrote(resource, Action::Disable);
        let capped = |text: &str| -> String {
            text.replace(token, &shown)
                .chars()
                .take(MAX_SOURCE_CHARS)
                .collect()
        };
        // Never the token: its id, and where it was found (public).
        tracing::warn!(
            key_id = %info.id,
            kind = kind.as_str(),
            url = ?capped(&url),
            source = ?capped(&report.source),
            "leaked key disabled: reported by GitHub secret scanning"
        );
        // Its key.disabled and key.leaked webhooks were queued with the
        // write, in its transaction.
    }
    Ok(true)
}

/// A key's display prefix as `keys check` shows it: the format prefix and
/// the first 4 random characters, then `…`.
fn display_prefix(key: &str) -> String {
    // The last '_' ends the prefix (prefixes may contain '_', base62 never).
    let cut = key.rfind('_').map_or(0, |i| i + 1);
    let shown: String = key.chars().take(cut + 4).collect();
    format!("{shown}…")
}

/// What `auth-server keys check` says of `key`, offline: `Ok` with a line
/// naming its kind when it has our format and a valid checksum, `Err`
/// with why not. Neither shows more of the key than its display prefix.
pub fn check_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let formats = [
        ("client key", auth_core::ApiKeyFormat::default()),
        (
            "service credential",
            auth_core::ApiKeyFormat::new("sk_svc", 256).map_err(|e| e.to_string())?,
        ),
    ];
    for (kind, format) in &formats {
        let prefix = format!("{}_", format.prefix());
        if !key.starts_with(&prefix) {
            continue;
        }
        if format.is_well_formed(key.as_bytes()) {
            let shown = display_prefix(key);
            return Ok(format!("{shown} ({kind}): our format, checksum valid"));
        }
        let body = &key[prefix.len()..];
        let why = if key.len() != format.key_len() {
            format!(
                "{} characters, a {kind} has {}",
                key.chars().count(),
                format.key_len()
            )
        } else if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            "characters outside 0-9, A-Z, a-z after the prefix".to_owned()
        } else {
            "the checksum does not match (a changed or mistyped character)".to_owned()
        };
        return Err(format!("{prefix}… ({kind} prefix): not a valid key: {why}"));
    }
    Err(format!(
        "not one of our keys: no sk_live_ or sk_svc_ prefix ({} characters)",
        key.chars().count()
    ))
}
