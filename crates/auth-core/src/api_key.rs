//! Keys for humans and code: a recognisable prefix, base62 randomness and a
//! CRC32 checksum, so that secret scanners find leaked keys and a mistyped
//! or forged key is refused before any store or remote lookup.

use std::fmt;

use zeroize::Zeroizing;

use crate::{Digest, Error};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 digits of a CRC32: 62^6 > 2^32.
const CHECKSUM_LEN: usize = 6;

/// The shape of generated keys: `<prefix>_<base62 random><base62 CRC32>`.
///
/// Default: prefix `sk_live`, 256 bits of randomness (43 base62 chars), so a
/// key looks like `sk_live_` followed by 49 characters. The checksum is the
/// CRC32 of everything before it, prefix included, as 6 base62 digits (the
/// scheme GitHub uses for its tokens).
///
/// ```
/// use auth_core::ApiKeyFormat;
///
/// let format = ApiKeyFormat::default();
/// let key = format.generate().unwrap();
/// assert!(key.expose().starts_with("sk_live_"));
/// assert_eq!(key.expose().len(), "sk_live_".len() + 43 + 6);
/// assert!(format.is_well_formed(key.expose().as_bytes()));
///
/// // One changed character breaks the checksum.
/// let mut typo = key.expose().to_owned().into_bytes();
/// typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
/// assert!(!format.is_well_formed(&typo));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyFormat {
    prefix: String,
    random_bytes: usize,
    body_len: usize,
}

impl Default for ApiKeyFormat {
    fn default() -> Self {
        Self::new("sk_live", 256).expect("the default format is valid")
    }
}

/// Base62 digits needed to hold `bytes` bytes: the least `n` with
/// 62^n ≥ 256^bytes (never an exact power, so the float is safe).
fn base62_len(bytes: usize) -> usize {
    ((bytes * 8) as f64 / 62f64.log2()).ceil() as usize
}

impl ApiKeyFormat {
    /// A format with this prefix (ASCII letters, digits and `_`, 1 to 32
    /// chars) and this many bits of randomness (a multiple of 8, at least 128).
    pub fn new(prefix: &str, random_bits: usize) -> Result<Self, Error> {
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::Config(
                "an API key prefix is 1 to 32 ASCII letters, digits or '_'".into(),
            ));
        }
        if random_bits < 128 || random_bits % 8 != 0 || random_bits > 1024 {
            return Err(Error::Config(
                "API keys need 128 to 1024 random bits, a multiple of 8".into(),
            ));
        }
        let random_bytes = random_bits / 8;
        Ok(Self {
            prefix: prefix.to_owned(),
            random_bytes,
            body_len: base62_len(random_bytes),
        })
    }

    /// The prefix, without the separating `_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The total length of a key in this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + 1 + self.body_len + CHECKSUM_LEN
    }

    /// A new key from the OS RNG.
    pub fn generate(&self) -> Result<ApiKey, Error> {
        let mut raw = Zeroizing::new(vec![0u8; self.random_bytes]);
        getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
        let mut key = Zeroizing::new(String::with_capacity(self.key_len()));
        key.push_str(&self.prefix);
        key.push('_');
        encode_base62(&raw, self.body_len, &mut key);
        let crc = crc32fast::hash(key.as_bytes());
        encode_base62(&crc.to_be_bytes(), CHECKSUM_LEN, &mut key);
        Ok(ApiKey { key })
    }

    /// Whether `key` has this format's shape and a correct checksum. Costs
    /// a CRC32 of ~50 bytes: run it before any lookup.
    pub fn is_well_formed(&self, key: &[u8]) -> bool {
        if key.len() != self.key_len() {
            return false;
        }
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return false;
        };
        if rest.first() != Some(&b'_') || !rest[1..].iter().all(u8::is_ascii_alphanumeric) {
            return false;
        }
        let (signed, checksum) = key.split_at(key.len() - CHECKSUM_LEN);
        decode_base62_u32(checksum) == Some(crc32fast::hash(signed))
    }
}

/// Appends `bytes` (big-endian) as exactly `len` base62 digits.
fn encode_base62(bytes: &[u8], len: usize, out: &mut String) {
    let mut num = Zeroizing::new(bytes.to_vec());
    let mut digits = Zeroizing::new(vec![b'0'; len]);
    for slot in digits.iter_mut().rev() {
        // Long division of the big-endian number by 62.
        let mut rem = 0u32;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = BASE62[rem as usize];
    }
    out.extend(digits.iter().map(|&b| char::from(b)));
}

fn decode_base62_u32(digits: &[u8]) -> Option<u32> {
    let mut value = 0u64;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        value = value * 62 + u64::from(d);
    }
    u32::try_from(value).ok()
}

/// A freshly generated key. Show it to its owner once, store only its
/// [`digest`](ApiKey::digest).
///
/// `Debug` is redacted; the memory is zeroized on drop.
pub struct ApiKey {
    key: Zeroizing<String>,
}

impl ApiKey {
    /// Generates a key in the default format.
    pub fn generate() -> Result<Self, Error> {
        ApiKeyFormat::default().generate()
    }

    /// The plaintext key.
    pub fn expose(&self) -> &str {
        &self.key
    }

    /// The SHA-256 digest to store.
    pub fn digest(&self) -> Digest {
        Digest::of(self.key.as_bytes())
    }

    /// A display prefix safe to show in lists: the format prefix and the
    /// first 4 random characters (`sk_live_Ab3x…`).
    pub fn display_prefix(&self) -> String {
        // The last '_' ends the prefix (prefixes may contain '_', base62 never).
        let cut = self.key.rfind('_').map_or(0, |i| i + 1);
        let end = (cut + 4).min(self.key.len());
        format!("{}…", &self.key[..end])
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(base62_len(32), 43);
        assert_eq!(base62_len(16), 22);
        let f = ApiKeyFormat::new("ghp", 128).unwrap();
        let k = f.generate().unwrap();
        assert_eq!(k.expose().len(), 4 + 22 + 6);
        assert!(f.is_well_formed(k.expose().as_bytes()));
    }

    #[test]
    fn base62_round_trip_of_checksum() {
        for v in [0u32, 1, 61, 62, 12345, u32::MAX] {
            let mut s = String::new();
            encode_base62(&v.to_be_bytes(), CHECKSUM_LEN, &mut s);
            assert_eq!(s.len(), 6);
            assert_eq!(decode_base62_u32(s.as_bytes()), Some(v));
        }
        assert_eq!(decode_base62_u32(b"zzzzzz"), None, "over u32 must not wrap");
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let f = ApiKeyFormat::default();
        let key = f.generate().unwrap();
        let bytes = key.expose().as_bytes();
        for i in 0..bytes.len() {
            for c in [b'0', b'Z', b'z', b'_', b'-'] {
                if bytes[i] == c {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = c;
                assert!(!f.is_well_formed(&typo), "position {i} -> {}", c as char);
            }
        }
        assert!(!f.is_well_formed(&bytes[..bytes.len() - 1]));
        assert!(
            !ApiKeyFormat::new("sk_test", 256)
                .unwrap()
                .is_well_formed(bytes)
        );
    }

    #[test]
    fn keys_differ_and_are_redacted() {
        let a = ApiKey::generate().unwrap();
        let b = ApiKey::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "ApiKey(<redacted>)");
        assert_eq!(a.digest(), Digest::of(a.expose().as_bytes()));
        let shown = a.display_prefix();
        assert!(shown.starts_with("sk_live_") && shown.ends_with('…'));
        assert_eq!(shown.chars().count(), "sk_live_".len() + 4 + 1);
    }

    #[test]
    fn bad_formats_refused() {
        assert!(ApiKeyFormat::new("", 256).is_err());
        assert!(ApiKeyFormat::new("sk-live", 256).is_err());
        assert!(ApiKeyFormat::new("sk", 64).is_err());
        assert!(ApiKeyFormat::new("sk", 130).is_err());
    }
}
