//! `AttestationMechanism` and its parts. On the wire it is a struct with a `type` and one
//! member per type; here it is an enum, so a mechanism whose `type` and contents disagree
//! cannot exist.

use serde::{Deserialize, Serialize};

use crate::wire_enum::wire_enum;
use crate::{EndorsementKey, SymmetricKey, TypeError};

wire_enum!(
    /// `AttestationType` of the swagger.
    AttestationType {
        /// No attestation (only meaningful in DPS for some legacy records).
        None => "none",
        /// TPM endorsement key.
        Tpm => "tpm",
        /// X.509 certificates.
        X509 => "x509",
        /// Shared symmetric keys and SAS tokens.
        SymmetricKey => "symmetricKey",
    }
);

/// The attestation of an enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AttestationWire", into = "AttestationWire")]
pub enum Attestation {
    /// `type: none`.
    None,
    /// `type: tpm`.
    Tpm(TpmAttestation),
    /// `type: x509` (boxed: certificates are large and most enrollments have none).
    X509(Box<X509Attestation>),
    /// `type: symmetricKey`.
    SymmetricKey(SymmetricKeyAttestation),
}

impl Attestation {
    /// The wire `type`.
    pub fn kind(&self) -> AttestationType {
        match self {
            Attestation::None => AttestationType::None,
            Attestation::Tpm(_) => AttestationType::Tpm,
            Attestation::X509(_) => AttestationType::X509,
            Attestation::SymmetricKey(_) => AttestationType::SymmetricKey,
        }
    }

    /// The mechanism as DPS answers a create or replace: keys included (DPS returns the keys it
    /// was given or generated), certificates reduced to their `info`.
    pub fn without_certificate_text(&self) -> Self {
        match self {
            Attestation::X509(_) => self.redacted(),
            other => other.clone(),
        }
    }

    /// The mechanism as DPS shows it in enrollment reads: symmetric keys removed and
    /// certificates reduced to their `info` (the attestation-mechanism operation is the only
    /// place that returns keys).
    pub fn redacted(&self) -> Self {
        match self {
            Attestation::SymmetricKey(_) => {
                Attestation::SymmetricKey(SymmetricKeyAttestation::default())
            }
            Attestation::X509(x) => Attestation::X509(Box::new(X509Attestation {
                client_certificates: x
                    .client_certificates
                    .as_ref()
                    .map(X509Certificates::info_only),
                signing_certificates: x
                    .signing_certificates
                    .as_ref()
                    .map(X509Certificates::info_only),
                ca_references: x.ca_references.clone(),
            })),
            other => other.clone(),
        }
    }
}

impl Attestation {
    /// Restores certificate text a client left out because it echoed a read: enrollment
    /// responses carry only a certificate's `info`, so a get-modify-put sends `info` without
    /// `certificate`. Each such slot takes the stored certificate whose SHA-256 thumbprint its
    /// `info` names; anything else is left for validation to refuse.
    pub fn restore_certificates_from(&mut self, stored: &Attestation) {
        let (Attestation::X509(new), Attestation::X509(old)) = (self, stored) else {
            return;
        };
        let pairs = [
            (&mut new.client_certificates, &old.client_certificates),
            (&mut new.signing_certificates, &old.signing_certificates),
        ];
        for (new_set, old_set) in pairs {
            let (Some(new_set), Some(old_set)) = (new_set.as_mut(), old_set.as_ref()) else {
                continue;
            };
            for slot in [&mut new_set.primary, &mut new_set.secondary]
                .into_iter()
                .flatten()
            {
                if slot.certificate.is_some() {
                    continue;
                }
                let Some(wanted) = slot.info.as_ref().map(|i| &i.sha256_thumbprint) else {
                    continue;
                };
                slot.certificate = old_set
                    .iter()
                    .find(|c| c.info.as_ref().map(|i| &i.sha256_thumbprint) == Some(wanted))
                    .and_then(|c| c.certificate.clone());
            }
        }
    }
}

/// The JSON shape of `AttestationMechanism`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttestationWire {
    r#type: AttestationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm: Option<TpmAttestation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x509: Option<Box<X509Attestation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symmetric_key: Option<SymmetricKeyAttestation>,
}

impl TryFrom<AttestationWire> for Attestation {
    type Error = TypeError;

    fn try_from(w: AttestationWire) -> Result<Self, TypeError> {
        let mismatch = |why: &'static str| TypeError::Attestation(why.into());
        match w.r#type {
            AttestationType::None => Ok(Attestation::None),
            AttestationType::Tpm => w.tpm.map(Attestation::Tpm).ok_or_else(|| {
                mismatch("attestation type tpm needs a tpm member with an endorsementKey")
            }),
            AttestationType::X509 => w.x509.map(Attestation::X509).ok_or_else(|| {
                mismatch("attestation type x509 needs an x509 member with certificates")
            }),
            // Keys are generated when the request has none.
            AttestationType::SymmetricKey => Ok(Attestation::SymmetricKey(
                w.symmetric_key.unwrap_or_default(),
            )),
        }
    }
}

impl From<Attestation> for AttestationWire {
    fn from(a: Attestation) -> Self {
        let mut w = AttestationWire {
            r#type: a.kind(),
            tpm: None,
            x509: None,
            symmetric_key: None,
        };
        match a {
            Attestation::None => {}
            Attestation::Tpm(t) => w.tpm = Some(t),
            Attestation::X509(x) => w.x509 = Some(x),
            // DPS omits the member when it shows no keys (GET, query, webhook requests).
            Attestation::SymmetricKey(s)
                if s.primary_key.is_none() && s.secondary_key.is_none() => {}
            Attestation::SymmetricKey(s) => w.symmetric_key = Some(s),
        }
        w
    }
}

/// `TpmAttestation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    /// The EK public part (required).
    pub endorsement_key: EndorsementKey,
    /// The SRK public part; DPS does not check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_root_key: Option<EndorsementKey>,
}

/// `SymmetricKeyAttestation`. After an enrollment is accepted both keys are present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<SymmetricKey>,
    /// Secondary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<SymmetricKey>,
}

impl SymmetricKeyAttestation {
    /// Generates whichever key the request left out.
    pub fn fill_missing_keys(&mut self) {
        self.primary_key.get_or_insert_with(SymmetricKey::generate);
        self.secondary_key
            .get_or_insert_with(SymmetricKey::generate);
    }
}

/// `X509Attestation`: client certificates for an individual enrollment, signing certificates or
/// CA references for a group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// Device (leaf) certificates of an individual enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// Root or intermediate CA certificates of a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Names of CA certificates uploaded to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<X509CaReferences>,
}

/// `X509Certificates`: a primary and an optional secondary certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct X509Certificates {
    /// Primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

impl X509Certificates {
    fn info_only(&self) -> Self {
        let strip = |c: &X509CertificateWithInfo| X509CertificateWithInfo {
            certificate: None,
            info: c.info.clone(),
        };
        Self {
            primary: self.primary.as_ref().map(strip),
            secondary: self.secondary.as_ref().map(strip),
        }
    }

    /// The primary and secondary certificates that are present.
    pub fn iter(&self) -> impl Iterator<Item = &X509CertificateWithInfo> {
        self.primary.iter().chain(self.secondary.iter())
    }
}

/// `X509CertificateWithInfo`: the PEM a client sent and the `info` the server computed from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct X509CertificateWithInfo {
    /// PEM (or base64 DER) text as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Filled by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<X509CertificateInfo>,
}

/// `X509CertificateInfo`, computed by the server from the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// Subject distinguished name, e.g. `CN=my-device`.
    pub subject_name: String,
    /// Upper-case hex SHA-1 of the DER.
    pub sha1_thumbprint: String,
    /// Upper-case hex SHA-256 of the DER.
    pub sha256_thumbprint: String,
    /// Issuer distinguished name.
    pub issuer_name: String,
    /// Start of validity.
    pub not_before_utc: crate::Timestamp,
    /// End of validity.
    pub not_after_utc: crate::Timestamp,
    /// Upper-case hex serial number.
    pub serial_number: String,
    /// X.509 version (3 for v3).
    pub version: i32,
}

/// `X509CAReferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509CaReferences {
    /// Primary CA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Secondary CA name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_and_member_must_agree() {
        let err = serde_json::from_str::<Attestation>(r#"{"type":"tpm"}"#).unwrap_err();
        assert!(err.to_string().contains("endorsementKey"), "{err}");
        let err = serde_json::from_str::<Attestation>(r#"{"type":"kerberos"}"#).unwrap_err();
        assert!(err.to_string().contains("kerberos"), "{err}");
    }

    #[test]
    fn type_is_case_insensitive_and_emitted_in_spec_case() {
        let a: Attestation = serde_json::from_str(r#"{"type":"SYMMETRICKEY"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"type":"symmetricKey"}"#
        );
    }

    #[test]
    fn redaction_removes_keys() {
        let mut s = SymmetricKeyAttestation::default();
        s.fill_missing_keys();
        let a = Attestation::SymmetricKey(s.clone());
        let full = serde_json::to_string(&a).unwrap();
        assert!(full.contains(&s.primary_key.as_ref().unwrap().expose_base64()));
        let red = serde_json::to_string(&a.redacted()).unwrap();
        assert_eq!(red, r#"{"type":"symmetricKey"}"#);
    }
}
