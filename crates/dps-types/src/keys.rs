//! Key material newtypes. Their `Debug` never shows the secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::TypeError;

/// Shortest symmetric key DPS accepts, in bytes (`concepts-symmetric-key-attestation.md`).
const MIN_KEY_BYTES: usize = 16;
/// Longest symmetric key DPS accepts, in bytes; also the length the portal generates.
const MAX_KEY_BYTES: usize = 64;
/// An endorsement key is a marshalled `TPM2B_PUBLIC`; RSA-2048 ones are about 316 bytes, and
/// nothing legitimate comes near this bound.
const MAX_EK_BYTES: usize = 2048;

/// A base64 symmetric key of 16 to 64 bytes (individual enrollment key, group key or a
/// device key derived from a group key).
///
/// Only the bytes are kept (the base64 text is made when needed): the cache holds two keys
/// per enrollment, for up to millions of enrollments.
#[derive(Clone, PartialEq, Eq)]
pub struct SymmetricKey {
    bytes: Box<[u8]>,
}

impl SymmetricKey {
    /// Decodes base64 and checks the length.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| TypeError::InvalidKey {
                kind: "symmetric key",
                why: "is not valid base64".into(),
            })?;
        Self::from_bytes(&bytes)
    }

    /// Wraps raw key bytes (16 to 64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TypeError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return Err(TypeError::InvalidKey {
                kind: "symmetric key",
                why: format!("must decode to 16 to 64 bytes, not {}", bytes.len()),
            });
        }
        Ok(Self {
            bytes: bytes.into(),
        })
    }

    /// A fresh random 64-byte key, as the portal and DPS generate them.
    pub fn generate() -> Self {
        let bytes: [u8; MAX_KEY_BYTES] = std::array::from_fn(|_| rand::random());
        Self {
            bytes: bytes.into(),
        }
    }

    /// The key bytes (for HMAC).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The base64 text (only for places where DPS returns keys).
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }
}

impl std::fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

impl Serialize for SymmetricKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expose_base64())
    }
}

impl<'de> Deserialize<'de> for SymmetricKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A TPM endorsement (or storage root) key: base64 of a marshalled `TPM2B_PUBLIC`, whose
/// two-byte big-endian size prefix must equal the length of what follows.
#[derive(Clone, PartialEq, Eq)]
pub struct EndorsementKey {
    text: Box<str>,
}

impl EndorsementKey {
    /// Decodes base64 and checks the `TPM2B_PUBLIC` framing.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let invalid = |why: String| TypeError::InvalidKey {
            kind: "TPM endorsement key",
            why,
        };
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| invalid("is not valid base64".into()))?;
        if bytes.len() < 4 || bytes.len() > MAX_EK_BYTES {
            return Err(invalid(format!(
                "must decode to 4 to {MAX_EK_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        let declared = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        if declared != bytes.len() - 2 {
            return Err(invalid(format!(
                "is not a TPM2B_PUBLIC: its size field says {declared} bytes but {} follow",
                bytes.len() - 2
            )));
        }
        Ok(Self {
            text: STANDARD.encode(&bytes).into(),
        })
    }

    /// The decoded `TPM2B_PUBLIC` bytes.
    pub fn bytes(&self) -> Vec<u8> {
        // The text was produced by our own encoder in `parse`, so decoding cannot fail; an
        // empty vector would only make a later comparison fail closed.
        STANDARD.decode(self.text.as_bytes()).unwrap_or_default()
    }

    /// The base64 text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for EndorsementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EndorsementKey({}…)",
            self.text.chars().take(12).collect::<String>()
        )
    }
}

impl Serialize for EndorsementKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for EndorsementKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_key_lengths() {
        assert!(SymmetricKey::parse(&STANDARD.encode([0u8; 15])).is_err());
        assert!(SymmetricKey::parse(&STANDARD.encode([0u8; 16])).is_ok());
        assert!(SymmetricKey::parse(&STANDARD.encode([0u8; 64])).is_ok());
        let err = SymmetricKey::parse(&STANDARD.encode([0u8; 65])).unwrap_err();
        assert!(err.to_string().contains("16 to 64 bytes"), "{err}");
        assert!(SymmetricKey::parse("not base64!").is_err());
        assert_eq!(SymmetricKey::generate().bytes().len(), 64);
    }

    #[test]
    fn symmetric_key_debug_is_redacted() {
        let k = SymmetricKey::generate();
        assert!(!format!("{k:?}").contains(&k.expose_base64()));
    }

    #[test]
    fn endorsement_key_framing() {
        let mut ek = vec![0x01, 0x3a];
        ek.extend(std::iter::repeat_n(7u8, 0x13a));
        assert!(EndorsementKey::parse(&STANDARD.encode(&ek)).is_ok());
        ek.push(0);
        assert!(EndorsementKey::parse(&STANDARD.encode(&ek)).is_err());
        assert!(EndorsementKey::parse("%%%").is_err());
    }
}
