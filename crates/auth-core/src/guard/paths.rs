//! Paths that skip authentication, and the CORS preflight.

use crate::{Error, RequestView};

/// Paths that skip authentication: exact paths and segment prefixes.
///
/// Matching is on the path as routed, and only on clean paths: a path with
/// `.` or `..` segments, `//`, `%`-escapes, `;`, `\` or control characters
/// is never public, so `/health/../admin` or `/health%2F..%2Fadmin` cannot
/// slip through. Prefixes match whole segments (`/static` matches
/// `/static/app.js`, not `/staticfiles`).
///
/// ```
/// use auth_core::PublicPaths;
///
/// let public = PublicPaths::default().prefix("/docs");
/// assert!(public.is_public("/health"));
/// assert!(public.is_public("/docs/index.html"));
/// for p in ["/health/", "/healthx", "/health/../admin", "/docs/../admin", "/docsx", "/health%2e"] {
///     assert!(!public.is_public(p), "{p}");
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicPaths {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Default for PublicPaths {
    /// Only `/health`.
    fn default() -> Self {
        Self::none().exact("/health")
    }
}

impl PublicPaths {
    /// No public path at all.
    pub fn none() -> Self {
        Self {
            exact: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    /// Adds an exact public path.
    pub fn exact(mut self, path: &str) -> Self {
        self.exact.push(path.to_owned());
        self
    }

    /// Adds a public prefix (whole segments; a trailing `/` is ignored).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefixes.push(prefix.trim_end_matches('/').to_owned());
        self
    }

    /// Whether `path` skips authentication.
    pub fn is_public(&self, path: &str) -> bool {
        if self.exact.is_empty() && self.prefixes.is_empty() {
            return false;
        }
        // Matched first, checked after: most requests match nothing, and
        // the cleanliness check is the dearer half.
        let matched = self.exact.iter().any(|p| p == path)
            || self.prefixes.iter().any(|p| {
                path.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            });
        matched && is_clean_path(path)
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        for p in self.exact.iter().chain(&self.prefixes) {
            if !is_clean_path(p) {
                return Err(Error::Config(format!(
                    "public path `{p}` must be a clean absolute path"
                )));
            }
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(Error::Config(
                "the public prefix `/` would make every path public; use Mode::Open".into(),
            ));
        }
        Ok(())
    }
}

/// A CORS preflight as browsers send it: `OPTIONS` with a non-blank
/// `Origin` and a non-blank `Access-Control-Request-Method`. An `OPTIONS`
/// without `Origin` is no browser's preflight, so it is authenticated.
pub(super) fn is_preflight<R: RequestView + ?Sized>(req: &R) -> bool {
    let non_blank = |name| {
        req.header_values(name)
            .next()
            .is_some_and(|v| !v.trim_ascii().is_empty())
    };
    req.method().eq_ignore_ascii_case("OPTIONS")
        && non_blank("origin")
        && non_blank("access-control-request-method")
}

/// An absolute path with no dot segments, empty segments, escapes or
/// characters that some router or proxy might reinterpret.
fn is_clean_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if !path
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b';' | b'\\' | b'?' | b'#'))
    {
        return false;
    }
    if path == "/" {
        return true;
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    body[1..]
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}
