//! Named keyrings, one per trust boundary.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::GuardBuilder;
use crate::{Error, Verifier};

/// Named keyrings, one per trust boundary (e.g. `internal` for
/// service-to-service, `hub` for a central caller).
///
/// Adding a keyring whose keys overlap another's is refused, so a key leaked
/// on one boundary cannot drive another. Overlaps are found through
/// [`Verifier::known_digests`]; verifiers that cannot list their keys (a
/// remote service, a database) are not compared.
///
/// ```
/// use auth_core::{Error, Keyrings, StaticKey};
///
/// let rings = Keyrings::new()
///     .with("internal", StaticKey::new("trust-key").unwrap()).unwrap()
///     .with("hub", StaticKey::new("hub-key").unwrap()).unwrap();
/// let internal = rings.guard("internal").unwrap().build().unwrap();
/// assert_eq!(internal.keyring(), "internal");
///
/// let reused = Keyrings::new()
///     .with("internal", StaticKey::new("same").unwrap()).unwrap()
///     .with("hub", StaticKey::new("same").unwrap());
/// assert!(matches!(reused, Err(Error::KeyShared { .. })));
/// ```
#[derive(Clone, Default)]
pub struct Keyrings {
    rings: HashMap<String, Arc<dyn Verifier>>,
    order: Vec<String>,
}

impl Keyrings {
    /// No keyrings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a keyring; refuses a duplicate name or a key another keyring
    /// already accepts.
    pub fn with(mut self, name: &str, verifier: impl Verifier + 'static) -> Result<Self, Error> {
        if self.rings.contains_key(name) {
            return Err(Error::DuplicateKeyring(name.to_owned()));
        }
        if let Some(new) = verifier.known_digests() {
            let new: HashSet<_> = new.into_iter().collect();
            for other in &self.order {
                let Some(theirs) = self.rings[other].known_digests() else {
                    continue;
                };
                if let Some(shared) = theirs.iter().find(|d| new.contains(*d)) {
                    return Err(Error::KeyShared {
                        fingerprint: shared.fingerprint(),
                        first: other.clone(),
                        second: name.to_owned(),
                    });
                }
            }
        }
        self.rings.insert(name.to_owned(), Arc::new(verifier));
        self.order.push(name.to_owned());
        Ok(self)
    }

    /// A guard builder for keyring `name` (keyring and realm set to `name`).
    pub fn guard(&self, name: &str) -> Result<GuardBuilder, Error> {
        let verifier = self
            .rings
            .get(name)
            .ok_or_else(|| Error::UnknownKeyring(name.to_owned()))?;
        Ok(GuardBuilder::new(Arc::clone(verifier))
            .keyring(name)
            .realm(name))
    }

    /// The keyring names, in the order added.
    pub fn names(&self) -> &[String] {
        &self.order
    }
}

impl fmt::Debug for Keyrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyrings")
            .field("names", &self.order)
            .finish()
    }
}
