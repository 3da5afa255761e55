//! Glue for frameworks built on the [`http`] crate (axum, warp, hyper and
//! tower services), written once (feature `http`): [`RequestView`] for
//! `http` requests and request parts, rejections as `http` responses, and
//! the header work every adapter does.

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

use http::{Request, Response, StatusCode};

use crate::{CredentialSources, Rejection, RequestView};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Every value of `name` in `headers`, by constant for the default sources
/// (a lookup by `&str` parses the name on every request).
fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    let values = match name {
        "authorization" => headers.get_all(AUTHORIZATION),
        "x-api-key" => headers.get_all(X_API_KEY),
        other => headers.get_all(other),
    };
    values.into_iter().map(HeaderValue::as_bytes)
}

impl<B> RequestView for Request<B> {
    fn method(&self) -> &str {
        Request::method(self).as_str()
    }

    fn path(&self) -> &str {
        self.uri().path()
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values(self.headers(), name)
    }
}

impl RequestView for http::request::Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        values(&self.headers, name)
    }
}

/// Appends `headers` (lowercase names and visible-ASCII values, as the core
/// makes them) to `map`, keeping what is there.
pub fn append_headers(map: &mut HeaderMap, headers: Vec<(&'static str, String)>) {
    for (name, value) in headers {
        // The core's values are visible ASCII; a failure would be a core bug.
        if let Ok(value) = HeaderValue::try_from(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
}

/// The rejection as a response: status, headers and JSON body.
///
/// ```
/// use auth_core::{Decision, Guard, PlainRequest, StaticKey};
///
/// let guard = Guard::builder(StaticKey::new("k").unwrap()).build().unwrap();
/// let Some(Decision::Reject(r)) = guard.check(&PlainRequest::get("/x")).now() else { panic!() };
/// let response: http::Response<String> = auth_core::http::response(&r);
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// ```
pub fn response<B: From<String>>(rejection: &Rejection) -> Response<B> {
    let mut response = Response::new(B::from(rejection.body()));
    *response.status_mut() = status(rejection);
    append_headers(response.headers_mut(), rejection.headers());
    response
}

/// The rejection's status code.
fn status(rejection: &Rejection) -> StatusCode {
    StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::UNAUTHORIZED)
}

/// The credential headers a guard reads, by name, to mark them sensitive on
/// each request: HTTP/2 then never indexes them (HPACK), and `Debug` output
/// of the headers shows `Sensitive` instead of the key.
///
/// ```
/// use auth_core::CredentialSources;
/// use auth_core::http::CredentialHeaders;
///
/// let names = CredentialHeaders::of(&CredentialSources::default());
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-api-key", "s3cret".parse().unwrap());
/// // Sent twice (let through by open mode or a public path): every value.
/// headers.append("authorization", "Bearer one".parse().unwrap());
/// headers.append("authorization", "Bearer two".parse().unwrap());
/// names.mark_sensitive(&mut headers);
/// assert!(headers["x-api-key"].is_sensitive());
/// assert!(headers.get_all("authorization").iter().all(|v| v.is_sensitive()));
/// let shown = format!("{headers:?}");
/// assert!(!shown.contains("s3cret") && !shown.contains("one") && !shown.contains("two"));
/// ```
#[derive(Clone, Debug)]
pub struct CredentialHeaders {
    /// Shared: services are cloned per request (axum's route layers), and
    /// a clone must not allocate.
    names: Arc<[HeaderName]>,
}

impl CredentialHeaders {
    /// The headers `sources` reads.
    pub fn of(sources: &CredentialSources) -> Self {
        let mut names: Vec<HeaderName> = sources
            .key_header_names()
            .iter()
            .filter_map(|n| match n.as_str() {
                "x-api-key" => Some(X_API_KEY),
                n => HeaderName::from_bytes(n.as_bytes()).ok(),
            })
            .collect();
        if sources.reads_bearer() {
            names.push(AUTHORIZATION);
        }
        Self {
            names: names.into(),
        }
    }

    /// Marks every value of each credential header sensitive (open and
    /// report-only modes and public paths let a header sent twice through).
    pub fn mark_sensitive(&self, headers: &mut HeaderMap) {
        for name in self.names.iter() {
            let Some(first) = headers.get_mut(name) else {
                continue;
            };
            first.set_sensitive(true);
            // Sent more than once (rare): the entry reaches every value.
            if headers.get_all(name).iter().nth(1).is_some() {
                if let http::header::Entry::Occupied(mut entry) = headers.entry(name.clone()) {
                    entry.iter_mut().for_each(|v| v.set_sensitive(true));
                }
            }
        }
    }
}
