//! [`GuardBuilder`]: a guard's configuration, checked once at start.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use super::paths::PublicPaths;
use super::scope::check_scope_token;
use super::{Guard, Mode, Shared};
use crate::metrics::DecisionCounters;
use crate::rejection::{Challenge, is_plain_token};
use crate::{
    Credential, CredentialSources, Error, GcraLimiter, RateLimitPolicy, RateLimiter, StaticKey,
    Verifier, VerifyError,
};

/// The keyring name of a guard built without one.
pub const DEFAULT_KEYRING: &str = "default";
/// The realm of a guard built without one.
pub const DEFAULT_REALM: &str = "api";

/// Builds a [`Guard`].
pub struct GuardBuilder {
    keyring: String,
    realm: Option<String>,
    verifier: Arc<dyn Verifier>,
    sources: CredentialSources,
    public: PublicPaths,
    allow_preflight: bool,
    scope: Option<String>,
    mode: Mode,
    /// The environment variable whose absence chose open mode, for the
    /// warning.
    open_because: Option<String>,
    limiter: Option<Arc<dyn RateLimiter>>,
    default_rate_limit: Option<RateLimitPolicy>,
    retry_unavailable: Duration,
    retry_not_ready: Duration,
}

impl Guard {
    /// A builder over `verifier`, in [`Mode::Enforce`], `/health` public.
    pub fn builder(verifier: impl Verifier + 'static) -> GuardBuilder {
        GuardBuilder::new(Arc::new(verifier))
    }

    /// A guard in open mode: everything passes. Logs a loud warning.
    pub fn open() -> Self {
        GuardBuilder::new(Arc::new(deny_all()))
            .mode(Mode::Open)
            .build()
            .expect("the open guard's configuration is valid")
    }

    /// The shared-secret pattern with rollout, in two lines: a builder over
    /// a [`StaticKey`] from the environment variable `var` — or, while `var`
    /// is unset, a builder in [`Mode::Open`] whose loud warning names `var`.
    /// Any sources, paths and realm can be set on it. A variable that is set
    /// but blank is an error, never open mode.
    ///
    /// ```
    /// use auth_core::{CredentialSources, Guard, Mode};
    ///
    /// // X-Service-Token from OST_LINKER_SERVICE_TOKEN, open while unset.
    /// let guard = Guard::from_env("OST_LINKER_SERVICE_TOKEN")?
    ///     .sources(CredentialSources::default().key_header("X-Service-Token").bearer(false))
    ///     .build()?;
    /// # assert_eq!(guard.mode(), Mode::Open);
    /// # Ok::<(), auth_core::Error>(())
    /// ```
    pub fn from_env(var: &str) -> Result<GuardBuilder, Error> {
        Self::from_env_value(var, std::env::var_os(var))
    }

    pub(crate) fn from_env_value(
        var: &str,
        value: Option<std::ffi::OsString>,
    ) -> Result<GuardBuilder, Error> {
        // A name no variable can have reads as unset: it must not mean open.
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(Error::Config(format!(
                "`{}` is not an environment variable name",
                var.escape_debug()
            )));
        }
        Ok(match StaticKey::from_env_value(var, value)? {
            Some(key) => Guard::builder(key),
            None => {
                let mut builder = GuardBuilder::new(Arc::new(deny_all())).mode(Mode::Open);
                builder.open_because = Some(var.to_owned());
                builder
            }
        })
    }
}

/// The verifier of a guard with no key: never reached in open mode, and
/// "could not decide" (503) if the mode is changed.
fn deny_all() -> impl Verifier {
    crate::verifier_fn(|_: &Credential| Err(VerifyError::Unavailable))
}

impl GuardBuilder {
    pub(super) fn new(verifier: Arc<dyn Verifier>) -> Self {
        Self {
            keyring: DEFAULT_KEYRING.to_owned(),
            realm: None,
            verifier,
            sources: CredentialSources::default(),
            public: PublicPaths::default(),
            allow_preflight: false,
            scope: None,
            mode: Mode::Enforce,
            open_because: None,
            limiter: None,
            default_rate_limit: None,
            retry_unavailable: Duration::from_secs(5),
            retry_not_ready: Duration::from_secs(1),
        }
    }

    /// Names the keyring (trust boundary) for logs.
    pub fn keyring(mut self, name: &str) -> Self {
        self.keyring = name.to_owned();
        self
    }

    /// The realm of the challenge (default `api`).
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Some(realm.to_owned());
        self
    }

    /// Where credentials are read from. Rejections name exactly these: a
    /// guard that reads only `X-Service-Token` asks for it, and sends an
    /// `ApiKey` challenge instead of a `Bearer` one.
    pub fn sources(mut self, sources: CredentialSources) -> Self {
        self.sources = sources;
        self
    }

    /// Paths that skip authentication (default: `/health`).
    pub fn public_paths(mut self, public: PublicPaths) -> Self {
        self.public = public;
        self
    }

    /// Lets CORS preflights through unauthenticated (default: off).
    ///
    /// A preflight is an `OPTIONS` request with both a non-blank `Origin`
    /// and a non-blank `Access-Control-Request-Method` header; any other
    /// `OPTIONS` request needs a key. A preflight passes with
    /// [`PassReason::Preflight`](super::PassReason) and no principal, and
    /// never satisfies a scope: a guard that
    /// [requires a scope](GuardBuilder::require_scope) does not let it
    /// through, and a [`RouteScope`](super::RouteScope) refuses it (401).
    /// Answer preflights for scoped routes with a CORS layer in front of
    /// the guard.
    pub fn allow_preflight(mut self, on: bool) -> Self {
        self.allow_preflight = on;
        self
    }

    /// Requires a scope of every request this guard lets in (for a guard
    /// over a group of routes; per route, use
    /// [`Guard::route_scope`](super::Guard::route_scope)).
    pub fn require_scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// The starting mode (default: [`Mode::Enforce`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The rate limiter (default: an in-memory [`GcraLimiter`]). It is only
    /// asked for principals with a rate-limit policy.
    pub fn rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// A policy for principals that carry none.
    pub fn default_rate_limit(mut self, policy: RateLimitPolicy) -> Self {
        self.default_rate_limit = Some(policy);
        self
    }

    /// `Retry-After` for 503 when a backend is unavailable (default 5 s).
    pub fn retry_after_unavailable(mut self, after: Duration) -> Self {
        self.retry_unavailable = after;
        self
    }

    /// `Retry-After` for 503 while not ready (default 1 s).
    pub fn retry_after_not_ready(mut self, after: Duration) -> Self {
        self.retry_not_ready = after;
        self
    }

    /// Checks the configuration and builds the guard.
    pub fn build(self) -> Result<Guard, Error> {
        let realm = self.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
        if !is_plain_token(&realm) {
            return Err(Error::Config(
                "the realm must be visible ASCII or spaces, without quotes or backslashes".into(),
            ));
        }
        if !self.sources.is_enabled() {
            return Err(Error::Config(
                "no credential source enabled: turn on a key header or bearer".into(),
            ));
        }
        if let Some(bad) = self
            .sources
            .key_header_names()
            .iter()
            .find(|h| !is_header_name(h))
        {
            return Err(Error::Config(format!(
                "`{}` is not a header name",
                bad.escape_debug()
            )));
        }
        let names = self.sources.key_header_names();
        if let Some((i, _)) = names
            .iter()
            .enumerate()
            .find(|(i, n)| names[..*i].contains(n))
        {
            return Err(Error::Config(format!(
                "the key header `{}` is listed twice",
                names[i]
            )));
        }
        if self.sources.reads_bearer() && names.iter().any(|n| n == "authorization") {
            return Err(Error::Config(
                "`authorization` is read as bearer already; turn bearer off to read it as a key header"
                    .into(),
            ));
        }
        if let Some(scope) = &self.scope {
            check_scope_token(scope)?;
        }
        self.public.validate()?;
        if self.mode == Mode::Open {
            match &self.open_because {
                Some(var) => tracing::warn!(target: "auth_core", keyring = %self.keyring,
                    variable = %var,
                    "{var} is not set: OPEN MODE, every request passes without authentication"),
                None => tracing::warn!(target: "auth_core", keyring = %self.keyring,
                    "OPEN MODE: every request passes without authentication"),
            }
        }
        Ok(Guard {
            shared: Arc::new(Shared {
                challenge: Arc::new(Challenge::new(&realm, &self.sources)),
                keyring: self.keyring.into(),
                verifier: self.verifier,
                sources: self.sources,
                public: self.public,
                allow_preflight: self.allow_preflight,
                limiter: self.limiter.unwrap_or_else(|| Arc::new(GcraLimiter::new())),
                default_rate_limit: self.default_rate_limit,
                retry_unavailable: self.retry_unavailable,
                retry_not_ready: self.retry_not_ready,
                mode: AtomicU8::new(self.mode.to_u8()),
                counters: DecisionCounters::default(),
                realm: realm.into(),
            }),
            scope: self.scope.map(Into::into),
        })
    }
}

/// An RFC 9110 field name (a token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl fmt::Debug for GuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("keyring", &self.keyring)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
