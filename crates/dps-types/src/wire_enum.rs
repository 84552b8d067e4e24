//! String enums of the DPS wire format: parsed in any letter case (clients disagree on
//! spelling, e.g. `updateIfMatchEtag` vs `updateIfMatchETag`), always emitted as the spec spells
//! them.

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in spec order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spec spelling.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses any letter case of the spec spelling.
            pub fn parse(text: &str) -> Result<Self, $crate::TypeError> {
                $(if text.eq_ignore_ascii_case($text) {
                    return Ok($name::$variant);
                })+
                Err($crate::TypeError::UnknownValue {
                    kind: stringify!($name),
                    value: text.chars().take(64).collect(),
                    expected: concat!($($text, " "),+).trim_end(),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use wire_enum;
