//! What kind of device each device is: a transport and an attestation ([`Kind`]), and the
//! weighted [`Mix`] that gives device `n` its kind, deterministically from `n`.
//!
//! `--mix mqtt-x509:3,amqp-sas:1` makes three MQTT X.509 devices for every AMQP symmetric-key
//! device, interleaved (weighted round robin over `n`), so every stretch of the run carries
//! the same proportions and a rerun gives each device the same kind.

use std::fmt;

/// Largest weight of one kind in a mix: proportions, not counts (the total, at most nine
/// times this, indexes devices as a `u32`).
pub const MAX_WEIGHT: u32 = 1000;

/// How a device talks to dpsd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// MQTT 3.1.1 over TLS (`$dps/registrations/...` topics).
    Mqtt,
    /// AMQP 1.0 over TLS (a sender and a receiver link on the device's address).
    Amqp,
    /// The DPS device REST API over HTTPS (one TLS connection kept alive).
    Https,
}

/// How a device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attestation {
    /// A SAS token signed with the key derived from the symmetric-key group's key.
    Sas,
    /// A SAS token signed with the device's own individual enrollment's key (enrollments
    /// created in bulk before the clock starts).
    SasIndividual,
    /// A TLS client certificate (leaf CN = registration id) under the X.509 group's CA.
    X509,
}

/// One kind of device: its transport and attestation, e.g. `mqtt-x509`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// The transport.
    pub transport: Transport,
    /// The attestation.
    pub attestation: Attestation,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::new(Transport::Mqtt, Attestation::Sas),
        Kind::new(Transport::Mqtt, Attestation::SasIndividual),
        Kind::new(Transport::Mqtt, Attestation::X509),
        Kind::new(Transport::Amqp, Attestation::Sas),
        Kind::new(Transport::Amqp, Attestation::SasIndividual),
        Kind::new(Transport::Amqp, Attestation::X509),
        Kind::new(Transport::Https, Attestation::Sas),
        Kind::new(Transport::Https, Attestation::SasIndividual),
        Kind::new(Transport::Https, Attestation::X509),
    ];

    /// The kind for `transport` and `attestation`.
    pub const fn new(transport: Transport, attestation: Attestation) -> Self {
        Self {
            transport,
            attestation,
        }
    }

    /// `mqtt-sas`, `mqtt-sas-individual`, `mqtt-x509`, the same with `amqp` and `https`:
    /// bounded, fit for a report key.
    pub fn label(self) -> &'static str {
        match (self.transport, self.attestation) {
            (Transport::Mqtt, Attestation::Sas) => "mqtt-sas",
            (Transport::Mqtt, Attestation::SasIndividual) => "mqtt-sas-individual",
            (Transport::Mqtt, Attestation::X509) => "mqtt-x509",
            (Transport::Amqp, Attestation::Sas) => "amqp-sas",
            (Transport::Amqp, Attestation::SasIndividual) => "amqp-sas-individual",
            (Transport::Amqp, Attestation::X509) => "amqp-x509",
            (Transport::Https, Attestation::Sas) => "https-sas",
            (Transport::Https, Attestation::SasIndividual) => "https-sas-individual",
            (Transport::Https, Attestation::X509) => "https-x509",
        }
    }

    /// The kind whose [`Kind::label`] is `text`.
    pub fn parse(text: &str) -> Result<Self, MixError> {
        Self::ALL
            .into_iter()
            .find(|k| k.label() == text)
            .ok_or_else(|| MixError(format!("unknown device kind {text:?}; {KINDS_HELP}")))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

const KINDS_HELP: &str = "kinds are mqtt-sas, mqtt-sas-individual, mqtt-x509, amqp-sas, \
                          amqp-sas-individual, amqp-x509, https-sas, https-sas-individual and \
                          https-x509";

/// Why a `--mix` was refused; the text says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MixError(String);

/// Device kinds with weights. Parsed from `kind:weight,...`; never empty, each kind at most
/// once, weights 1 to [`MAX_WEIGHT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Kinds with their cumulative weight (the end of their range in `0..total`).
    entries: Vec<(Kind, u32)>,
}

impl Mix {
    /// Every device of one kind.
    pub fn single(kind: Kind) -> Self {
        Self {
            entries: vec![(kind, 1)],
        }
    }

    /// Parses `mqtt-x509:3,amqp-sas:1`; a kind without `:weight` has weight 1.
    pub fn parse(text: &str) -> Result<Self, MixError> {
        let mut entries: Vec<(Kind, u32)> = Vec::new();
        let mut total = 0u32;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(MixError(format!(
                    "{text:?} has an empty entry; write kind:weight,kind:weight (e.g. mqtt-x509:3,amqp-sas:1)"
                )));
            }
            let (name, weight) = match part.split_once(':') {
                Some((name, weight)) => (name, weight),
                None => (part, "1"),
            };
            let kind = Kind::parse(name)?;
            let weight: u32 = weight
                .parse()
                .ok()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| {
                    MixError(format!(
                        "the weight of {name} must be a whole number from 1 to {MAX_WEIGHT}, not {weight:?}"
                    ))
                })?;
            if entries.iter().any(|(k, _)| *k == kind) {
                return Err(MixError(format!("{name} appears twice in {text:?}")));
            }
            total += weight;
            entries.push((kind, total));
        }
        Ok(Self { entries })
    }

    /// The kind of device `n`: weighted round robin, so any `total weight` consecutive
    /// devices hold each kind exactly its weight times.
    pub fn kind(&self, n: usize) -> Kind {
        let total = self.entries.last().map_or(1, |(_, end)| *end);
        // `total` is at most 9 * MAX_WEIGHT, so the remainder fits a u32.
        let slot = (n % total as usize) as u32;
        self.entries
            .iter()
            .find(|(_, end)| slot < *end)
            .or(self.entries.last())
            .map_or(Kind::ALL[0], |(kind, _)| *kind)
    }

    /// The kinds in the mix, in the order given.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.entries.iter().map(|(kind, _)| *kind)
    }

    /// Whether any device uses `attestation`.
    pub fn uses(&self, attestation: Attestation) -> bool {
        self.kinds().any(|k| k.attestation == attestation)
    }

    /// Whether any device uses `transport`.
    pub fn uses_transport(&self, transport: Transport) -> bool {
        self.kinds().any(|k| k.transport == transport)
    }
}

impl Default for Mix {
    /// Every device `mqtt-sas`, as before mixes existed.
    fn default() -> Self {
        Self::single(Kind::ALL[0])
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = 0;
        for (i, (kind, end)) in self.entries.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{kind}:{}", end - start)?;
            start = *end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_weights_in_every_window() {
        let mix = Mix::parse("mqtt-x509:3,amqp-sas:1").unwrap();
        let kinds: Vec<&str> = (0..8).map(|n| mix.kind(n).label()).collect();
        assert_eq!(
            kinds,
            [
                "mqtt-x509",
                "mqtt-x509",
                "mqtt-x509",
                "amqp-sas",
                "mqtt-x509",
                "mqtt-x509",
                "mqtt-x509",
                "amqp-sas"
            ]
        );
        assert_eq!(mix.to_string(), "mqtt-x509:3,amqp-sas:1");
        assert!(mix.uses(Attestation::X509) && mix.uses(Attestation::Sas));
        assert!(mix.uses_transport(Transport::Amqp) && mix.uses_transport(Transport::Mqtt));
        assert_eq!(
            Mix::parse("amqp-sas-individual:2")
                .unwrap()
                .kind(1)
                .attestation,
            Attestation::SasIndividual
        );
        let one = Mix::parse("amqp-x509").unwrap();
        assert!((0..5).all(|n| one.kind(n) == Kind::new(Transport::Amqp, Attestation::X509)));
        assert_eq!(Mix::default().kind(12).label(), "mqtt-sas");
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        for (bad, says) in [
            ("", "empty entry"),
            ("mqtt-sas:1,", "empty entry"),
            ("http-sas:1", "kinds are mqtt-sas"),
            ("https-tpm:1", "https-x509"),
            ("mqtt-x509:0", "from 1 to 1000"),
            ("mqtt-x509:1001", "from 1 to 1000"),
            ("mqtt-x509:-1", "from 1 to 1000"),
            ("mqtt-x509:many", "from 1 to 1000"),
            ("mqtt-sas:1,mqtt-sas:2", "appears twice"),
        ] {
            let err = Mix::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
