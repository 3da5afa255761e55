//! SHA-256 digests of keys: the only form in which keys are stored, compared, cached or logged.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::Error;

/// The SHA-256 digest of a key.
///
/// Equality is constant-time. `Debug` and `Display` print only the
/// [fingerprint](Digest::fingerprint) (the first 8 hex characters), which is
/// enough to correlate log lines and too little to help an attacker.
///
/// ```
/// use auth_core::Digest;
///
/// let d = Digest::of(b"my-secret-key");
/// assert_eq!(d, Digest::from_hex(&d.to_hex()).unwrap());
/// assert_eq!(d.fingerprint().len(), 8);
/// assert!(!format!("{d:?}").contains("my-secret-key"));
/// ```
#[derive(Clone, Copy)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Hashes `key` with SHA-256, byte for byte as presented.
    #[inline]
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Wraps 32 bytes that already are a SHA-256 digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(hex_str: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str.as_bytes(), &mut out).map_err(|_| Error::InvalidDigest)?;
        Ok(Self(out))
    }

    /// The 64 lowercase hex characters of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters: a short, non-secret handle for logs.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Constant-time comparison: folds the 32 bytes into 64-bit words and
    /// decides once, so the time does not depend on where the digests differ.
    #[inline]
    pub fn ct_eq(&self, other: &Self) -> Choice {
        let mut acc = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            acc |= u64::from_le_bytes(a.try_into().expect("8-byte chunk"))
                ^ u64::from_le_bytes(b.try_into().expect("8-byte chunk"));
        }
        acc.ct_eq(&0)
    }

    fn leading_word(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Digest {}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Digests are already uniform: 8 bytes are plenty for bucketing.
        state.write_u64(self.leading_word());
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}…)", self.fingerprint())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// Hashes `key` with SHA-256. Shorthand for [`Digest::of`].
pub fn digest(key: &[u8]) -> Digest {
    Digest::of(key)
}

/// A [`BuildHasher`] for maps keyed by [`Digest`].
///
/// SipHash (the std default) costs ≈ 30 ns per lookup; digests are already
/// uniform, so this mixes their first 8 bytes with a per-process random seed
/// through one 128-bit multiply (≈ 3 ns). The seed keeps bucket positions
/// unpredictable, so an attacker cannot grind keys into one bucket.
#[derive(Clone, Copy, Debug)]
pub struct DigestHasher {
    seed: [u64; 2],
}

impl DigestHasher {
    /// A hasher with a fresh random seed.
    pub fn new() -> Self {
        let mut bytes = [0u8; 16];
        // On the (theoretical) failure of the OS RNG fall back to a seed from
        // the address space and clock: buckets stay usable, only less secret.
        if getrandom::fill(&mut bytes).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            bytes = t.to_le_bytes();
        }
        let a = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        Self { seed: [a, b | 1] }
    }
}

impl Default for DigestHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildHasher for DigestHasher {
    type Hasher = DigestStateHasher;

    fn build_hasher(&self) -> DigestStateHasher {
        DigestStateHasher {
            seed: self.seed,
            state: 0,
        }
    }
}

/// The [`Hasher`] made by [`DigestHasher`].
#[derive(Debug)]
pub struct DigestStateHasher {
    seed: [u64; 2],
    state: u64,
}

impl DigestStateHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let m = u128::from(word ^ self.seed[0] ^ self.state) * u128::from(self.seed[1]);
        self.state = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for DigestStateHasher {
    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `Digest`; still a sound hash.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            Digest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let d = Digest::of(b"k");
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()).unwrap(), d);
        assert!(Digest::from_hex("abc").is_err());
        assert!(Digest::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn equality_differs_in_every_position() {
        let base = Digest::of(b"k");
        for i in 0..32 {
            let mut bytes = *base.as_bytes();
            bytes[i] ^= 0x80;
            assert_ne!(Digest::from_bytes(bytes), base, "byte {i}");
        }
        assert_eq!(base, Digest::from_bytes(*base.as_bytes()));
    }

    #[test]
    fn debug_and_display_show_only_fingerprint() {
        let d = Digest::of(b"k");
        let hex = d.to_hex();
        assert_eq!(format!("{d}"), &hex[..8]);
        assert!(!format!("{d:?}").contains(&hex[8..]));
    }

    #[test]
    fn hasher_is_seeded() {
        let d = Digest::of(b"k");
        let a = DigestHasher::new().hash_one(d);
        let b = DigestHasher::new().hash_one(d);
        assert_ne!(a, b, "two seeds gave the same hash");
        let h = DigestHasher::new();
        assert_eq!(h.hash_one(d), h.hash_one(d));
    }
}
