//! `SharedAccessSignature` tokens: parsing, HMAC verification, expiry, generation, and the
//! derivation of a device key from an enrollment group key.
//!
//! Real clients disagree on how they encode `sr` (upper-case `%2F`, lower-case `%2f`, or not
//! at all) and sign exactly what they send, so verification HMACs the `sr` and `se` strings
//! as they appear in the token (dps-protocol.md §2.2).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use dps_types::SymmetricKey;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::AttestError;

/// Longest token accepted, in bytes. Real tokens are under 400 bytes (a 128-character
/// registration id, a 44-character signature, a 10-digit expiry); 4 KiB leaves room for any
/// legitimate resource while bounding what a peer can make us decode.
pub const MAX_TOKEN_LEN: usize = 4096;

/// How long after `se` a token is still accepted, in seconds. Device clocks drift and some
/// clients mint very short tokens (IoT Edge: 30 s), so a device whose clock lags ours would
/// otherwise be refused; five minutes is the skew Azure's own services tolerate.
pub const CLOCK_SKEW_SECS: i64 = 300;

const PREFIX: &str = "SharedAccessSignature ";
/// HMAC-SHA256 output length.
const SIGNATURE_LEN: usize = 32;
/// SHA-256's block size: HMAC zero-pads keys up to it (RFC 2104 §2).
const HMAC_BLOCK_LEN: usize = 64;
/// Longest field name or expiry quoted back in an error.
const MAX_QUOTED: usize = 24;

/// Standard base64, with or without padding (hand-written tokens sometimes lose the `=`).
const SIGNATURE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`.
///
/// Parsing checks the shape only; [`SasToken::verify_signature`] and
/// [`SasToken::check_expiry`] are the checks, and the caller compares
/// [`SasToken::resource_decoded`] with the resource it expects.
#[derive(Clone)]
pub struct SasToken {
    /// `sr` exactly as sent (still percent-encoded, original hex case): it is what was signed.
    resource: String,
    /// `sr` percent-decoded.
    resource_decoded: String,
    /// The decoded HMAC.
    signature: [u8; SIGNATURE_LEN],
    /// `se` exactly as sent: it is what was signed.
    expiry_text: String,
    expiry: i64,
    /// `skn`, percent-decoded.
    key_name: Option<String>,
}

impl SasToken {
    /// Parses a token: the case-sensitive prefix `SharedAccessSignature `, then `&`-separated
    /// `name=value` fields in any order; `sr`, `sig` and `se` are required, `skn` optional;
    /// unknown or repeated fields are refused.
    pub fn parse(text: &str) -> Result<Self, AttestError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(AttestError::SasTooLong {
                len: text.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let fields = text
            .strip_prefix(PREFIX)
            .ok_or(AttestError::SasMissingPrefix)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for (index, field) in fields.split('&').enumerate() {
            let (name, value) = field
                .split_once('=')
                .ok_or(AttestError::SasMalformedField {
                    position: index + 1,
                })?;
            let (field, slot) = match name {
                "sr" => ("sr", &mut sr),
                "sig" => ("sig", &mut sig),
                "se" => ("se", &mut se),
                "skn" => ("skn", &mut skn),
                other => {
                    return Err(AttestError::SasUnknownField {
                        name: truncated(other),
                    })
                }
            };
            if slot.replace(value).is_some() {
                return Err(AttestError::SasDuplicateField { field });
            }
        }
        let resource = required(sr, "sr")?;
        let sig = required(sig, "sig")?;
        let expiry_text = required(se, "se")?;

        let resource_decoded = decode_text(resource, "sr")?;
        let key_name = skn
            .filter(|v| !v.is_empty())
            .map(|v| decode_text(v, "skn"))
            .transpose()?;
        Ok(Self {
            resource: resource.to_owned(),
            resource_decoded,
            signature: decode_signature(sig)?,
            expiry: parse_expiry(expiry_text)?,
            expiry_text: expiry_text.to_owned(),
            key_name,
        })
    }

    /// Builds a token the way the Python device SDK does: `sr` is `resource` with everything
    /// but unreserved characters percent-encoded (upper-case hex), the signature is over that
    /// encoded `sr`, and `skn` is appended when given. A negative `expiry_unix` is clamped to
    /// 0. Used by tests and the load tool.
    pub fn generate(
        resource: &str,
        key: &SymmetricKey,
        key_name: Option<&str>,
        expiry_unix: i64,
    ) -> String {
        let sr = percent_encode(resource, HexCase::Upper);
        let se = expiry_unix.max(0).to_string();
        let sig = percent_encode(&STANDARD.encode(sign(key, &sr, &se)), HexCase::Upper);
        let mut token = format!("{PREFIX}sr={sr}&sig={sig}&se={se}");
        if let Some(name) = key_name {
            token.push_str("&skn=");
            token.push_str(&percent_encode(name, HexCase::Upper));
        }
        token
    }

    /// `sr` exactly as sent (still percent-encoded).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// `sr` percent-decoded (`+` stays `+`), e.g. `0ne00000000/registrations/my-device`.
    pub fn resource_decoded(&self) -> &str {
        &self.resource_decoded
    }

    /// `se`: seconds since the Unix epoch.
    pub fn expiry(&self) -> i64 {
        self.expiry
    }

    /// `skn` (the policy or key name), when present.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Checks that the signature is HMAC-SHA256(`key`, `sr + "\n" + se`) over the literal `sr`;
    /// as fallbacks it also accepts the signature over the decoded `sr` and over its canonical
    /// lower-case percent-encoding (§2.2 step 3). All candidates are always computed and
    /// compared in constant time.
    pub fn verify_signature(&self, key: &SymmetricKey) -> Result<(), AttestError> {
        let canonical = percent_encode(&self.resource_decoded, HexCase::Lower);
        let matched = self.signed_with(key, &self.resource)
            | self.signed_with(key, &self.resource_decoded)
            | self.signed_with(key, &canonical);
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AttestError::SasSignatureMismatch)
        }
    }

    /// Refuses a token whose `se` is more than [`CLOCK_SKEW_SECS`] before `now_unix`.
    pub fn check_expiry(&self, now_unix: i64) -> Result<(), AttestError> {
        if self.expiry.saturating_add(CLOCK_SKEW_SECS) <= now_unix {
            return Err(AttestError::SasExpired {
                expiry: self.expiry,
                now: now_unix,
            });
        }
        Ok(())
    }

    fn signed_with(&self, key: &SymmetricKey, resource: &str) -> Choice {
        sign(key, resource, &self.expiry_text).ct_eq(&self.signature)
    }
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// The device key of `registration_id` in a symmetric-key enrollment group:
/// HMAC-SHA256(group key bytes, UTF-8 registration id), as every SDK and the DPS docs compute
/// it (§9.1). The id is used as given: derive with the spelling the device registers with.
pub fn derive_device_key(group_key: &SymmetricKey, registration_id: &str) -> SymmetricKey {
    let derived = hmac_sha256(group_key, &[registration_id.as_bytes()]);
    // 32 bytes is always a valid key length (16 to 64), so this never falls back; if it did,
    // a random key fails closed: no device can sign with it.
    SymmetricKey::from_bytes(&derived).unwrap_or_else(|_| SymmetricKey::generate())
}

/// The SAS signature of `resource` and `expiry` as strings.
fn sign(key: &SymmetricKey, resource: &str, expiry: &str) -> [u8; SIGNATURE_LEN] {
    hmac_sha256(key, &[resource.as_bytes(), b"\n", expiry.as_bytes()])
}

/// HMAC-SHA256 over the concatenation of `parts`.
fn hmac_sha256(key: &SymmetricKey, parts: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
    // HMAC zero-pads a key shorter than the block (RFC 2104 §2), so keying with the padded
    // block equals keying with the key itself, through a constructor that cannot fail.
    // `SymmetricKey` holds at most 64 bytes, exactly one SHA-256 block.
    let mut block = [0u8; HMAC_BLOCK_LEN];
    block
        .iter_mut()
        .zip(key.bytes())
        .for_each(|(slot, byte)| *slot = *byte);
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A required field's value: present and not empty.
fn required<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, AttestError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(AttestError::SasMissingField { field })
}

/// Percent-decodes a text field (`sr`, `skn`).
fn decode_text(value: &str, field: &'static str) -> Result<String, AttestError> {
    let bytes = dps_types::percent_decode(value).ok_or(AttestError::SasMalformedValue {
        field,
        why: "is not valid percent-encoding",
    })?;
    String::from_utf8(bytes).map_err(|_| AttestError::SasMalformedValue {
        field,
        why: "does not decode to UTF-8",
    })
}

/// `sig`: percent-decoded (a `+` stays a `+`, a raw `/` is fine), then base64.
fn decode_signature(sig: &str) -> Result<[u8; SIGNATURE_LEN], AttestError> {
    let malformed = |why| AttestError::SasMalformedSignature { why };
    let text = dps_types::percent_decode(sig).ok_or(malformed("is not valid percent-encoding"))?;
    let bytes = SIGNATURE_BASE64
        .decode(text)
        .map_err(|_| malformed("is not base64"))?;
    <[u8; SIGNATURE_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| malformed("does not decode to the 32 bytes of an HMAC-SHA256"))
}

/// `se`: ASCII digits only (no sign, no fraction), fitting an `i64`.
fn parse_expiry(text: &str) -> Result<i64, AttestError> {
    text.bytes()
        .try_fold(0i64, |acc, b| {
            let digit = b.is_ascii_digit().then(|| i64::from(b - b'0'))?;
            acc.checked_mul(10)?.checked_add(digit)
        })
        .ok_or_else(|| AttestError::SasMalformedExpiry {
            value: truncated(text),
        })
}

#[derive(Clone, Copy)]
enum HexCase {
    Upper,
    Lower,
}

/// Percent-encodes every byte except the RFC 3986 unreserved set (`A-Z a-z 0-9 - . _ ~`), as
/// Python's `quote(s, safe="")` does.
fn percent_encode(text: &str, case: HexCase) -> String {
    let digits: &[u8; 16] = match case {
        HexCase::Upper => b"0123456789ABCDEF",
        HexCase::Lower => b"0123456789abcdef",
    };
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(digits[usize::from(b >> 4)]));
            out.push(char::from(digits[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Keeps quoted peer text in errors short.
fn truncated(text: &str) -> String {
    text.chars().take(MAX_QUOTED).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dps-protocol.md §2.2: key = ASCII "0123456789abcdef0123456789abcdef".
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const PY: &str = "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fmy-device&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8%3D&se=1700000000";
    const NODE: &str = "SharedAccessSignature sr=0ne00000000/registrations/my-device&sig=cSSRVMJE2MdNDBH%2F4S6uDo2WyL6ms4HMbddp2JVMnMk%3D&skn=registration&se=1700000000";
    const C: &str = "SharedAccessSignature sr=0ne00000000%2fregistrations%2fmy-device&sig=cezKdgfPtJjfDRGEBtMnzdDxBrY1rpqQL1awf0J3l8g%3d&se=1700000000&skn=registration";

    fn key() -> SymmetricKey {
        SymmetricKey::parse(KEY).unwrap()
    }

    #[test]
    fn client_vectors_verify() {
        for token in [PY, NODE, C] {
            let t = SasToken::parse(token).unwrap();
            t.verify_signature(&key()).unwrap();
            assert_eq!(t.resource_decoded(), "0ne00000000/registrations/my-device");
            assert_eq!(t.expiry(), 1_700_000_000);
        }
        assert_eq!(SasToken::parse(PY).unwrap().key_name(), None);
        assert_eq!(SasToken::parse(C).unwrap().key_name(), Some("registration"));
        assert_eq!(
            SasToken::parse(C).unwrap().resource(),
            "0ne00000000%2fregistrations%2fmy-device"
        );
    }

    #[test]
    fn a_flipped_bit_or_another_key_does_not_verify() {
        let t = SasToken::parse(PY).unwrap();
        let mut other = key().bytes().to_vec();
        other[0] ^= 1;
        let other = SymmetricKey::from_bytes(&other).unwrap();
        assert!(matches!(
            t.verify_signature(&other),
            Err(AttestError::SasSignatureMismatch)
        ));
        let mut flipped = t.clone();
        flipped.signature[31] ^= 1;
        assert!(flipped.verify_signature(&key()).is_err());
        let later = PY.replace("se=1700000000", "se=1700000001");
        assert!(SasToken::parse(&later)
            .unwrap()
            .verify_signature(&key())
            .is_err());
        let other_device = PY.replace("my-device", "my-devicf");
        assert!(SasToken::parse(&other_device)
            .unwrap()
            .verify_signature(&key())
            .is_err());
    }

    #[test]
    fn fallback_forms_verify() {
        // Signed over the decoded resource but sent encoded, and signed over lower-case hex
        // but sent with upper-case hex.
        let se = "1700000000";
        let raw = "0ne00000000/registrations/my-device";
        let encoded = "0ne00000000%2Fregistrations%2Fmy-device";
        for signed in [raw, "0ne00000000%2fregistrations%2fmy-device"] {
            let sig = percent_encode(&STANDARD.encode(sign(&key(), signed, se)), HexCase::Upper);
            let token = format!("{PREFIX}sr={encoded}&sig={sig}&se={se}");
            SasToken::parse(&token)
                .unwrap()
                .verify_signature(&key())
                .unwrap();
        }
    }

    #[test]
    fn generate_matches_the_python_sdk_and_round_trips() {
        let token = SasToken::generate(
            "0ne00000000/registrations/my-device",
            &key(),
            None,
            1_700_000_000,
        );
        assert_eq!(token, PY);
        for resource in [
            "mydps.azure-devices-provisioning.net",
            "https://mydps.azure-devices-provisioning.net",
            "0ne00000000/registrations/a.b_c:d~e-",
            "scope/registrations/ünïcode+plus space",
        ] {
            let token = SasToken::generate(resource, &key(), Some("provisioningserviceowner"), 42);
            let parsed = SasToken::parse(&token).unwrap();
            assert_eq!(parsed.resource_decoded(), resource);
            assert_eq!(parsed.key_name(), Some("provisioningserviceowner"));
            assert_eq!(parsed.expiry(), 42);
            parsed.verify_signature(&key()).unwrap();
        }
    }

    #[test]
    fn hmac_keying_equals_the_plain_constructor() {
        for len in [16, 32, 33, 64] {
            let k = SymmetricKey::from_bytes(&vec![0xa5; len]).unwrap();
            let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(k.bytes()).unwrap();
            plain.update(b"message");
            let expected: [u8; 32] = plain.finalize().into_bytes().into();
            assert_eq!(hmac_sha256(&k, &[b"mess", b"age"]), expected);
        }
    }

    #[test]
    fn group_key_derivation_vectors() {
        let group = SymmetricKey::parse(
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
        )
        .unwrap();
        assert_eq!(
            derive_device_key(&group, "my-device").expose_base64(),
            "1RNn5RISon+lrRATA6bAcDICE2++gLL1VQdRaalkNHc="
        );
        let docs = SymmetricKey::parse(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        )
        .unwrap();
        assert_eq!(
            derive_device_key(&docs, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6").expose_base64(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
    }

    #[test]
    fn signature_with_raw_slash_and_plus_is_accepted() {
        // PY-v1 leaves `/` raw; `+` must stay `+`, never become a space.
        let sig = STANDARD.encode(sign(&key(), "r", "1"));
        let raw = format!("{PREFIX}sr=r&sig={sig}&se=1");
        let t = SasToken::parse(&raw).unwrap();
        t.verify_signature(&key()).unwrap();
        let sig = SasToken::parse(NODE).unwrap().signature;
        let raw_slash = NODE.replace("%2F", "/");
        assert_eq!(SasToken::parse(&raw_slash).unwrap().signature, sig);
        // An unpadded signature is tolerated.
        let unpadded = PY.replace("%3D&", "&");
        SasToken::parse(&unpadded)
            .unwrap()
            .verify_signature(&key())
            .unwrap();
    }

    fn parse_err(text: &str) -> String {
        SasToken::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_wrong_part() {
        assert!(parse_err("sharedaccesssignature sr=a&sig=b&se=1").contains("does not start"));
        assert!(parse_err(&PY.replace("&se=1700000000", "")).contains("'se'"));
        assert!(parse_err(&PY.replace("sr=", "xx=")).contains("unknown field 'xx'"));
        assert!(parse_err(&format!("{PY}&se=1")).contains("more than one 'se'"));
        assert!(parse_err(&format!("{PY}&")).contains("field 4 of"));
        assert!(parse_err(&PY.replace("sig=eJvW2", "sig=")).contains("'sig'"));
        let no_sig = "SharedAccessSignature sr=a&se=1";
        assert!(parse_err(no_sig).contains("no 'sig' value"));
        assert!(parse_err("SharedAccessSignature sig=a&se=1").contains("no 'sr' value"));
        assert!(parse_err(&PY.replace("sr=", "sr=%zz")).contains("percent-encoding"));
        assert!(parse_err(&PY.replace("sr=", "sr=%ff")).contains("UTF-8"));
        for bad in ["-1", "+1", "1.5", "1e9", "99999999999999999999"] {
            let err = parse_err(&PY.replace("1700000000", bad));
            assert!(err.contains("expiry") && err.contains(bad), "{bad}: {err}");
        }
        assert!(parse_err(&PY.replace("%3D", "%3")).contains("percent-encoding"));
        assert!(parse_err(&PY.replace("sig=eJ", "sig=*J")).contains("not base64"));
        assert!(parse_err(&PY.replace("sig=eJvW", "sig=")).contains("32 bytes"));
        let huge = format!("{PY}&skn={}", "a".repeat(MAX_TOKEN_LEN));
        assert!(parse_err(&huge).contains("at most 4096"));
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let t = SasToken::parse(PY).unwrap();
        let debug = format!("{t:?}");
        assert!(
            !debug.contains("eJvW2y") && debug.contains("<redacted>"),
            "{debug}"
        );
        let err = t.verify_signature(&SymmetricKey::generate()).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("eJvW2y"));
    }

    #[test]
    fn expiry_allows_the_clock_skew() {
        let t = SasToken::parse(PY).unwrap();
        t.check_expiry(1_700_000_000 - 1).unwrap();
        t.check_expiry(1_700_000_000 + CLOCK_SKEW_SECS - 1).unwrap();
        let err = t.check_expiry(1_700_000_000 + CLOCK_SKEW_SECS).unwrap_err();
        assert!(err.to_string().contains("expired at 1700000000"), "{err}");
    }
}
