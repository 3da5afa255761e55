//! Keys held in memory: one shared secret ([`StaticKey`]) or many ([`KeySet`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::digest::DigestHasher;
use crate::local;
use crate::{Credential, Digest, Error, Principal, VerifyError, VerifyResult};

/// The `Verifier` of a verifier that answers from memory through its
/// `check(&Credential)`: always at once.
macro_rules! in_memory_verifier {
    ($ty:ty, |$this:ident| $digests:expr) => {
        impl $crate::Verifier for $ty {
            fn verify(
                &self,
                credential: &$crate::Credential,
                _ctx: &$crate::VerifyContext<'_>,
            ) -> $crate::Answer<$crate::VerifyResult> {
                $crate::Answer::Ready(self.check(credential))
            }

            fn known_digests(&self) -> Option<Vec<$crate::Digest>> {
                let $this = self;
                Some($digests)
            }
        }
    };
}
pub(crate) use in_memory_verifier;

/// The principal id given to a [`StaticKey`] unless another is set.
pub const DEFAULT_STATIC_PRINCIPAL: &str = "service";

/// One shared secret: the internal-service-key pattern.
///
/// Only the SHA-256 digest of the secret is kept. A presented credential is
/// hashed and the two digests are compared in constant time, so neither the
/// content nor the length of the real key can be learned from timing.
///
/// ```
/// use auth_core::{Credential, StaticKey, Verifier, VerifyContext, VerifyError};
///
/// let key = StaticKey::new("s3cret-internal-key").unwrap().principal_id("trust-api");
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let ok = rt.block_on(key.verify(&Credential::new("s3cret-internal-key"), &VerifyContext::default()));
/// assert_eq!(ok.unwrap().id(), "trust-api");
/// let bad = rt.block_on(key.verify(&Credential::new("guess"), &VerifyContext::default()));
/// assert_eq!(bad.unwrap_err(), VerifyError::Invalid);
/// assert!(!format!("{key:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct StaticKey {
    digest: Digest,
    principal: Arc<Principal>,
    /// Identifies this key's (immutable) contents to per-thread copies.
    owner: u64,
}

impl StaticKey {
    /// A static key. Refuses an empty or blank secret.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, Error> {
        let secret = secret.as_ref();
        if secret.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::EmptyKey);
        }
        Ok(Self::from_digest(Digest::of(secret)))
    }

    /// A static key known only by its digest.
    pub fn from_digest(digest: Digest) -> Self {
        Self {
            digest,
            principal: Arc::new(Principal::new(DEFAULT_STATIC_PRINCIPAL)),
            owner: local::new_owner(),
        }
    }

    /// Reads the secret from the environment variable `var`.
    ///
    /// `Ok(None)` when the variable is unset (the caller decides whether that
    /// means open mode); an error when it is set but empty or blank, or not
    /// valid UTF-8 — a half-configured key must never open the API.
    pub fn from_env(var: &str) -> Result<Option<Self>, Error> {
        Self::from_env_value(var, std::env::var_os(var))
    }

    /// [`from_env`](Self::from_env) given the variable's value.
    pub(crate) fn from_env_value(
        var: &str,
        value: Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, Error> {
        let Some(value) = value else {
            return Ok(None);
        };
        let Some(value) = value.to_str() else {
            return Err(Error::EnvInvalid {
                var: var.to_owned(),
                problem: "is not valid UTF-8",
            });
        };
        if value.trim().is_empty() {
            return Err(Error::EnvInvalid {
                var: var.to_owned(),
                problem: "is set but empty; unset it for open mode or give it the key",
            });
        }
        Self::new(value).map(Some)
    }

    /// Sets the principal granted to holders of the key.
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principal = Arc::new(principal);
        self.owner = local::new_owner();
        self
    }

    /// Sets the id of the principal granted to holders of the key.
    pub fn principal_id(self, id: impl Into<String>) -> Self {
        let principal = Principal::clone(&self.principal);
        let mut p = Principal::new(id).with_scopes(principal.scopes().iter().cloned());
        if let Some(limit) = principal.rate_limit() {
            p = p.with_rate_limit(limit);
        }
        self.principal(p)
    }

    /// The digest of the key.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    #[inline]
    pub(crate) fn check(&self, credential: &Credential) -> VerifyResult {
        if bool::from(self.digest.ct_eq(credential.digest())) {
            Ok(local::principal(self.owner, &self.digest, &self.principal))
        } else {
            Err(VerifyError::Invalid)
        }
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("digest", &self.digest)
            .field("principal", &self.principal.id())
            .finish()
    }
}

in_memory_verifier!(StaticKey, |key| vec![key.digest]);

/// Several keys valid at once, each with its own principal: rotation (old
/// and new both valid during a roll-over) and one key per caller.
///
/// Keys are looked up by their SHA-256 digest in a hash map, whose equality
/// on digests is constant-time: the cost does not grow with the number of
/// keys and no O(N) sweep leaks how many there are.
///
/// ```
/// use auth_core::{Credential, KeySet, Principal, Verifier, VerifyContext};
///
/// let keys = KeySet::new()
///     .with_key("old-key", Principal::new("billing"))
///     .unwrap()
///     .with_key("new-key", Principal::new("billing").with_scopes(["invoices"]))
///     .unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// for k in ["old-key", "new-key"] {
///     let p = rt.block_on(keys.verify(&Credential::new(k), &VerifyContext::default()));
///     assert_eq!(p.unwrap().id(), "billing");
/// }
/// assert_eq!(keys.len(), 2);
/// ```
#[derive(Clone)]
pub struct KeySet {
    keys: HashMap<Digest, Arc<Principal>, DigestHasher>,
    /// Identifies the set's contents to per-thread copies; renewed on change.
    owner: u64,
    /// The principal inserted last, shared with the next key if equal.
    last: Option<Arc<Principal>>,
}

impl Default for KeySet {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl KeySet {
    /// An empty set (accepts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for `n` keys.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            keys: HashMap::with_capacity_and_hasher(n, DigestHasher::new()),
            owner: local::new_owner(),
            last: None,
        }
    }

    /// Adds a key. Refuses an empty key and a key already in the set.
    pub fn with_key(self, secret: impl AsRef<[u8]>, principal: Principal) -> Result<Self, Error> {
        let secret = secret.as_ref();
        if secret.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::EmptyKey);
        }
        self.with_digest(Digest::of(secret), principal)
    }

    /// Adds a key known only by its digest. Refuses a digest already present.
    pub fn with_digest(mut self, digest: Digest, principal: Principal) -> Result<Self, Error> {
        self.insert_digest(digest, principal)?;
        Ok(self)
    }

    /// Adds a key known only by its digest, in place.
    pub fn insert_digest(&mut self, digest: Digest, principal: Principal) -> Result<(), Error> {
        use std::collections::hash_map::Entry;
        match self.keys.entry(digest) {
            Entry::Occupied(_) => Err(Error::DuplicateKey {
                fingerprint: digest.fingerprint(),
            }),
            Entry::Vacant(v) => {
                // Keys added in a row for one principal share its allocation
                // (a million keys of one service cost ~50 bytes each, not ~260).
                let shared = match &self.last {
                    Some(last) if **last == principal => Arc::clone(last),
                    _ => Arc::new(principal),
                };
                v.insert(Arc::clone(&shared));
                self.last = Some(shared);
                self.owner = local::new_owner();
                Ok(())
            }
        }
    }

    /// Removes a key by digest; returns whether it was present.
    pub fn remove_digest(&mut self, digest: &Digest) -> bool {
        self.owner = local::new_owner();
        self.keys.remove(digest).is_some()
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[inline]
    pub(crate) fn check(&self, credential: &Credential) -> VerifyResult {
        let digest = credential.digest();
        // A thread copy exists only for a key found in this very set (the
        // owner id changes with the contents): it proves membership.
        if let Some(p) = local::get::<Arc<Principal>>(self.owner, digest, 0, 0) {
            return Ok(p);
        }
        let shared = self.keys.get(digest).ok_or(VerifyError::Invalid)?;
        Ok(local::principal(self.owner, digest, shared))
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .finish()
    }
}

in_memory_verifier!(KeySet, |set| set.keys.keys().copied().collect());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_key_accepts_only_the_exact_key() {
        let key = StaticKey::new("abc123").unwrap();
        assert!(key.check(&Credential::new("abc123")).is_ok());
        for wrong in ["abc124", "abc12", "abc1234", "ABC123", "bc123", " abc123"] {
            assert_eq!(
                key.check(&Credential::new(wrong)).unwrap_err(),
                VerifyError::Invalid,
                "{wrong}"
            );
        }
    }

    #[test]
    fn static_key_from_env_value() {
        assert!(StaticKey::from_env_value("V", None).unwrap().is_none());
        for blank in ["", " ", "\t\n"] {
            let err = StaticKey::from_env_value("V", Some(blank.into())).unwrap_err();
            assert!(matches!(err, Error::EnvInvalid { .. }), "{blank:?}");
            assert!(err.to_string().contains("V is set but empty"));
        }
        let key = StaticKey::from_env_value("V", Some("tok".into()))
            .unwrap()
            .unwrap();
        assert!(key.check(&Credential::new("tok")).is_ok());
    }

    #[test]
    fn static_key_refuses_empty_secret() {
        assert!(matches!(StaticKey::new(""), Err(Error::EmptyKey)));
        assert!(matches!(StaticKey::new("  \n"), Err(Error::EmptyKey)));
    }

    #[test]
    fn static_key_principal_id_keeps_scopes() {
        let key = StaticKey::new("k")
            .unwrap()
            .principal(Principal::new("a").with_scopes(["x"]))
            .principal_id("b");
        let p = key.check(&Credential::new("k")).unwrap();
        assert_eq!(p.id(), "b");
        assert!(p.has_scope("x"));
    }

    #[test]
    fn key_set_maps_each_key_to_its_principal() {
        let set = KeySet::new()
            .with_key("k1", Principal::new("one"))
            .unwrap()
            .with_key("k2", Principal::new("two"))
            .unwrap();
        assert_eq!(set.check(&Credential::new("k1")).unwrap().id(), "one");
        assert_eq!(set.check(&Credential::new("k2")).unwrap().id(), "two");
        assert_eq!(
            set.check(&Credential::new("k3")).unwrap_err(),
            VerifyError::Invalid
        );
    }

    #[test]
    fn key_set_refuses_duplicates_and_removes() {
        let set = KeySet::new().with_key("k1", Principal::new("one")).unwrap();
        assert!(matches!(
            set.clone().with_key("k1", Principal::new("other")),
            Err(Error::DuplicateKey { .. })
        ));
        let mut set = set;
        assert!(set.remove_digest(&Digest::of(b"k1")));
        assert!(set.check(&Credential::new("k1")).is_err());
        assert!(set.is_empty());
    }

    #[test]
    fn changes_are_never_hidden_by_thread_copies() {
        let mut set = KeySet::new().with_key("k1", Principal::new("one")).unwrap();
        for _ in 0..3 {
            assert_eq!(set.check(&Credential::new("k1")).unwrap().id(), "one");
        }
        assert!(set.remove_digest(&Digest::of(b"k1")));
        assert!(set.check(&Credential::new("k1")).is_err());
        set.insert_digest(Digest::of(b"k1"), Principal::new("two"))
            .unwrap();
        assert_eq!(set.check(&Credential::new("k1")).unwrap().id(), "two");

        let key = StaticKey::new("s").unwrap().principal_id("a");
        for _ in 0..3 {
            assert_eq!(key.check(&Credential::new("s")).unwrap().id(), "a");
        }
        let renamed = key.clone().principal_id("b");
        assert_eq!(renamed.check(&Credential::new("s")).unwrap().id(), "b");
        assert_eq!(key.check(&Credential::new("s")).unwrap().id(), "a");
    }

    #[test]
    fn debug_never_shows_keys() {
        let set = KeySet::new()
            .with_key("hunter2", Principal::new("p"))
            .unwrap();
        let key = StaticKey::new("hunter2").unwrap();
        let hex = Digest::of(b"hunter2").to_hex();
        for s in [format!("{set:?}"), format!("{key:?}")] {
            assert!(!s.contains("hunter2"));
            assert!(!s.contains(&hex));
        }
    }
}
