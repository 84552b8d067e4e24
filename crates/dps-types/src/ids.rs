//! Identifier newtypes. Each has a `parse` that enforces the DPS rule for that identifier;
//! once a value exists it is valid.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::TypeError;

/// Maximum length of a registration or enrollment group id (DPS `concepts-service.md`).
const MAX_ID_LEN: usize = 128;

/// DPS id grammar: alphanumerics and `- . _ :`, the last character alphanumeric or `-`.
fn check_dps_id(kind: &'static str, text: &str) -> Result<(), TypeError> {
    let invalid = |why: &'static str| TypeError::InvalidId {
        kind,
        why,
        value: truncated(text),
    };
    if text.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if text.len() > MAX_ID_LEN {
        return Err(invalid("is longer than 128 characters"));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        return Err(invalid("may contain only letters, digits and - . _ :"));
    }
    let last = text.as_bytes()[text.len() - 1];
    if !(last.is_ascii_alphanumeric() || last == b'-') {
        return Err(invalid("must end with a letter, a digit or -"));
    }
    Ok(())
}

/// Keeps error messages bounded when a peer sends a huge id.
fn truncated(text: &str) -> String {
    text.chars().take(140).collect()
}

macro_rules! case_insensitive_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// Compared and hashed case-insensitively; the spelling it was created with is kept
        /// for display. [`Self::key`] is the lower-case form used as a storage key.
        #[derive(Debug, Clone)]
        pub struct $name(Box<str>);

        impl $name {
            /// Checks the DPS id grammar.
            pub fn parse(text: &str) -> Result<Self, TypeError> {
                check_dps_id($kind, text)?;
                Ok(Self(text.into()))
            }

            /// The id as it was written.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The lower-case form, the key under which the id is stored and looked up.
            pub fn key(&self) -> String {
                self.0.to_ascii_lowercase()
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.eq_ignore_ascii_case(&other.0)
            }
        }
        impl Eq for $name {}

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                for b in self.0.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = TypeError;
            fn from_str(s: &str) -> Result<Self, TypeError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

case_insensitive_id!(
    /// The id a device registers with (one individual enrollment, or one device of a group).
    RegistrationId,
    "registration id"
);
case_insensitive_id!(
    /// The id of an enrollment group.
    EnrollmentGroupId,
    "enrollment group id"
);

/// The device id an IoT hub knows the device by: at most 128 ASCII characters from the
/// IoT Hub device-id alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(Box<str>);

impl DeviceId {
    /// Checks the IoT Hub device-id rule.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let invalid = |why| TypeError::InvalidId {
            kind: "device id",
            why,
            value: truncated(text),
        };
        if text.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if text.len() > MAX_ID_LEN {
            return Err(invalid("is longer than 128 characters"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-.+%_#*?!(),:=@$'".contains(&b);
        if !text.bytes().all(allowed) {
            return Err(invalid(
                "may contain only letters, digits and -.+%_#*?!(),:=@$'",
            ));
        }
        Ok(Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&RegistrationId> for DeviceId {
    /// A registration id is always a valid device id (its alphabet is a subset).
    fn from(id: &RegistrationId) -> Self {
        Self(id.as_str().into())
    }
}

/// The host name of a linked IoT hub, e.g. `myhub.azure-devices.net`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubName(Box<str>);

impl HubName {
    /// A DNS host name, optionally with `:port`: labels of letters, digits and `-`.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        let invalid = |why| TypeError::InvalidId {
            kind: "IoT hub host name",
            why,
            value: truncated(text),
        };
        if text.is_empty() || text.len() > 253 {
            return Err(invalid("must be 1 to 253 characters"));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        if let Some(p) = port {
            if p.parse::<u16>().is_err() {
                return Err(invalid("has a port that is not a number from 0 to 65535"));
            }
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(invalid(
                "must be a DNS host name (letters, digits, - and dots)",
            ));
        }
        Ok(Self(text.to_ascii_lowercase().into()))
    }

    /// The host name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The ID scope of this provisioning service, e.g. `0ne00111111`; compared case-insensitively.
#[derive(Debug, Clone)]
pub struct IdScope(Box<str>);

impl IdScope {
    /// 1 to 32 letters and digits.
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TypeError::InvalidId {
                kind: "ID scope",
                why: "must be 1 to 32 letters and digits",
                value: truncated(text),
            });
        }
        Ok(Self(text.into()))
    }

    /// A fresh scope in the DPS shape: `0ne` and eight upper-case hex digits.
    pub fn generate() -> Self {
        Self(format!("0ne{:08X}", rand::random::<u32>()).into())
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Case-insensitive comparison with text from a device.
    pub fn matches(&self, text: &str) -> bool {
        self.0.eq_ignore_ascii_case(text)
    }
}

impl PartialEq for IdScope {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}
impl Eq for IdScope {}

/// An opaque entity tag. Fresh ones are quoted UUIDs, as DPS emits them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Etag(Box<str>);

impl Etag {
    /// A new, unique etag.
    pub fn generate() -> Self {
        Self(format!("\"{}\"", uuid::Uuid::new_v4()).into())
    }

    /// Wraps an etag read from a request or the store (any text, at most 256 bytes).
    pub fn parse(text: &str) -> Result<Self, TypeError> {
        if text.len() > 256 {
            return Err(TypeError::InvalidId {
                kind: "etag",
                why: "is longer than 256 bytes",
                value: truncated(text),
            });
        }
        Ok(Self(text.into()))
    }

    /// The etag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// RFC 7232 `If-Match` against this etag, with DPS client leniency: one level of
    /// surrounding quotes and a `W/` prefix are ignored on both sides, `*` matches anything,
    /// and a comma-separated list matches when any member does.
    pub fn matches_if_match(&self, header: &str) -> bool {
        let mine = strip_etag(&self.0);
        header
            .split(',')
            .map(str::trim)
            .any(|candidate| candidate == "*" || strip_etag(candidate) == mine)
    }
}

fn strip_etag(text: &str) -> &str {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Etag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Etag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

macro_rules! plain_string_serde {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
plain_string_serde!(DeviceId);
plain_string_serde!(HubName);
plain_string_serde!(IdScope);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_id_grammar() {
        assert!(RegistrationId::parse("my-device.01_a:b").is_ok());
        assert!(RegistrationId::parse("ends-with-dash-").is_ok());
        assert!(RegistrationId::parse("").is_err());
        assert!(RegistrationId::parse("ends.").is_err());
        assert!(RegistrationId::parse("has space").is_err());
        assert!(RegistrationId::parse("slash/no").is_err());
        assert!(RegistrationId::parse(&"a".repeat(128)).is_ok());
        let err = RegistrationId::parse(&"a".repeat(129)).unwrap_err();
        assert!(err.to_string().contains("longer than 128"), "{err}");
    }

    #[test]
    fn registration_ids_compare_case_insensitively() {
        let a = RegistrationId::parse("My-Device").unwrap();
        let b = RegistrationId::parse("my-device").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key(), "my-device");
        assert_eq!(a.as_str(), "My-Device");
    }

    #[test]
    fn hub_names() {
        assert_eq!(
            HubName::parse("Hub-1.Azure-Devices.net").unwrap().as_str(),
            "hub-1.azure-devices.net"
        );
        assert!(HubName::parse("localhost:8443").is_ok());
        assert!(HubName::parse("bad_host").is_err());
        assert!(HubName::parse("a..b").is_err());
    }

    #[test]
    fn etag_if_match_leniency() {
        let e = Etag::parse("\"abc\"").unwrap();
        assert!(e.matches_if_match("\"abc\""));
        assert!(e.matches_if_match("abc"));
        assert!(e.matches_if_match("W/\"abc\""));
        assert!(e.matches_if_match("*"));
        assert!(e.matches_if_match("\"x\", \"abc\""));
        assert!(!e.matches_if_match("\"abd\""));
    }

    #[test]
    fn id_scope_shape() {
        let s = IdScope::generate();
        assert!(s.as_str().starts_with("0ne") && s.as_str().len() == 11);
        assert!(s.matches(&s.as_str().to_lowercase()));
    }
}
