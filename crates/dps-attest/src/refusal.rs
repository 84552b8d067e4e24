//! Why a device was not attested: a bounded [`FailureReason`] for metrics and DPS error
//! mapping, and a [`Refusal`] that adds a detail sentence for operators.

use dps_types::RegistrationId;

/// Why attestation refused a device. Every reason has a stable [`label`](Self::label) for
/// metrics and a precise `Display` sentence.
///
/// Grouped by who has to act: the first group are the device's own credentials (broken,
/// expired, or for another id); the second are enrollments that do not fit the device (the
/// operator has to enroll it, or the device uses the wrong credential type). None of them is
/// our own bug: those never reach a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    // The device's credentials.
    /// No client certificate was presented for X.509 attestation.
    NoClientCertificate,
    /// A presented certificate does not parse, has a bad signature, an unsupported algorithm
    /// or key, or the chain is longer than [`crate::MAX_CHAIN_CERTS`].
    CertificateInvalid,
    /// The leaf or a CA certificate of the chain is past its `notAfter`.
    CertificateExpired,
    /// The leaf or a CA certificate of the chain is before its `notBefore`.
    CertificateNotYetValid,
    /// A certificate has an extended key usage extension without `clientAuth`.
    CertificateNotForClientAuth,
    /// The leaf's subject CN differs from the registration id the device claims.
    CnMismatch,
    /// The registration id the device claims (or its certificate CN) breaks the DPS
    /// registration-id rules.
    RegistrationIdInvalid,
    /// The SAS token does not parse.
    SasMalformed,
    /// The SAS token's `se` has passed (beyond the tolerated clock skew).
    SasExpired,
    /// The SAS token's `sr` is not `{idScope}/registrations/{registrationId}` of this
    /// service and this device.
    SasWrongResource,
    /// The SAS signature was not made with any key of the matching enrollment(s).
    SasSignatureMismatch,
    /// The SAS token was signed with an enrollment group key itself instead of the device key
    /// derived from it.
    DerivedKeyExpected,
    /// The TPM endorsement key or storage root key the device sent does not parse, or is not
    /// an RSA 2048 storage key (the only kind supported).
    TpmKeyInvalid,
    /// No TPM challenge is pending for this registration id: none was issued, it expired, it
    /// was evicted by newer ones, or it was used already (a replay).
    TpmChallengeUnknown,
    /// The SAS token was not signed with the key the TPM challenge sealed to the device.
    TpmSignatureInvalid,

    // Enrollments that do not fit.
    /// No individual enrollment has this registration id and no enrollment group could
    /// cover the device.
    NoEnrollment,
    /// The individual enrollment of this registration id uses another attestation type than
    /// the device used (e.g. a SAS token for an X.509 enrollment).
    WrongAttestationType,
    /// The TPM endorsement key the device presented (or the one its pending challenge was
    /// sealed to) is not the one of its individual TPM enrollment.
    TpmEndorsementKeyMismatch,
    /// The individual X.509 enrollment of this registration id has neither the presented
    /// leaf as its primary nor as its secondary certificate.
    ThumbprintMismatch,
    /// No enrollment group's signing certificate is on the issuer path from the leaf through
    /// the presented certificates (or one with the right name is, but with another key).
    UnknownCa,
    /// An enrollment group's signing certificate is among the presented certificates or named
    /// as an issuer, but the presented certificates do not link the leaf to it: an
    /// intermediate is missing.
    ChainIncomplete,
    /// The enrollment group's signing certificate nearest the leaf may not sign certificates
    /// (no basicConstraints `CA:TRUE`, or a keyUsage without `keyCertSign`): it was stored
    /// before groups were checked for this, and is not trusted to issue devices.
    GroupCertificateNotCa,
}

impl FailureReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [FailureReason; 22] = [
        FailureReason::NoClientCertificate,
        FailureReason::CertificateInvalid,
        FailureReason::CertificateExpired,
        FailureReason::CertificateNotYetValid,
        FailureReason::CertificateNotForClientAuth,
        FailureReason::CnMismatch,
        FailureReason::RegistrationIdInvalid,
        FailureReason::SasMalformed,
        FailureReason::SasExpired,
        FailureReason::SasWrongResource,
        FailureReason::SasSignatureMismatch,
        FailureReason::DerivedKeyExpected,
        FailureReason::TpmKeyInvalid,
        FailureReason::TpmChallengeUnknown,
        FailureReason::TpmSignatureInvalid,
        FailureReason::NoEnrollment,
        FailureReason::WrongAttestationType,
        FailureReason::TpmEndorsementKeyMismatch,
        FailureReason::ThumbprintMismatch,
        FailureReason::UnknownCa,
        FailureReason::ChainIncomplete,
        FailureReason::GroupCertificateNotCa,
    ];

    /// A stable snake_case name, for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::NoClientCertificate => "no_client_certificate",
            FailureReason::CertificateInvalid => "certificate_invalid",
            FailureReason::CertificateExpired => "certificate_expired",
            FailureReason::CertificateNotYetValid => "certificate_not_yet_valid",
            FailureReason::CertificateNotForClientAuth => "certificate_not_for_client_auth",
            FailureReason::CnMismatch => "cn_mismatch",
            FailureReason::RegistrationIdInvalid => "registration_id_invalid",
            FailureReason::SasMalformed => "sas_malformed",
            FailureReason::SasExpired => "sas_expired",
            FailureReason::SasWrongResource => "sas_wrong_resource",
            FailureReason::SasSignatureMismatch => "sas_signature_mismatch",
            FailureReason::DerivedKeyExpected => "derived_key_expected",
            FailureReason::TpmKeyInvalid => "tpm_key_invalid",
            FailureReason::TpmChallengeUnknown => "tpm_challenge_unknown",
            FailureReason::TpmSignatureInvalid => "tpm_signature_invalid",
            FailureReason::TpmEndorsementKeyMismatch => "tpm_endorsement_key_mismatch",
            FailureReason::NoEnrollment => "no_enrollment",
            FailureReason::WrongAttestationType => "wrong_attestation_type",
            FailureReason::ThumbprintMismatch => "thumbprint_mismatch",
            FailureReason::UnknownCa => "unknown_ca",
            FailureReason::ChainIncomplete => "chain_incomplete",
            FailureReason::GroupCertificateNotCa => "group_certificate_not_ca",
        }
    }

    /// Whether the device's own credential is at fault (as opposed to an enrollment that
    /// does not fit it).
    pub fn is_credential_fault(self) -> bool {
        !matches!(
            self,
            FailureReason::NoEnrollment
                | FailureReason::WrongAttestationType
                | FailureReason::TpmEndorsementKeyMismatch
                | FailureReason::ThumbprintMismatch
                | FailureReason::UnknownCa
                | FailureReason::ChainIncomplete
                | FailureReason::GroupCertificateNotCa
        )
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureReason::NoClientCertificate => {
                "the device presented no client certificate for X.509 attestation"
            }
            FailureReason::CertificateInvalid => {
                "a certificate the device presented is invalid (it does not parse, a signature \
                 does not verify, or its algorithm or key is not supported)"
            }
            FailureReason::CertificateExpired => "a certificate of the device's chain has expired",
            FailureReason::CertificateNotYetValid => {
                "a certificate of the device's chain is not valid yet"
            }
            FailureReason::CertificateNotForClientAuth => {
                "a certificate of the device's chain has an extended key usage without clientAuth"
            }
            FailureReason::CnMismatch => {
                "the device certificate's subject CN differs from the registration id the \
                 device claims"
            }
            FailureReason::RegistrationIdInvalid => "the registration id is not valid",
            FailureReason::SasMalformed => "the SAS token is malformed",
            FailureReason::SasExpired => "the SAS token has expired",
            FailureReason::SasWrongResource => {
                "the SAS token's resource is not {idScope}/registrations/{registrationId} of \
                 this service and device"
            }
            FailureReason::SasSignatureMismatch => {
                "the SAS token's signature does not match any key of the enrollment"
            }
            FailureReason::DerivedKeyExpected => {
                "the SAS token was signed with an enrollment group key; devices of a group \
                 sign with the device key derived from it"
            }
            FailureReason::TpmKeyInvalid => {
                "the TPM key the device sent is invalid or not an RSA 2048 storage key"
            }
            FailureReason::TpmChallengeUnknown => {
                "no TPM challenge is pending for this device (never issued, expired, or \
                 already used)"
            }
            FailureReason::TpmSignatureInvalid => {
                "the SAS token was not signed with the key of the device's TPM challenge"
            }
            FailureReason::NoEnrollment => "no enrollment covers this registration id",
            FailureReason::WrongAttestationType => {
                "the device's enrollment uses another attestation type"
            }
            FailureReason::TpmEndorsementKeyMismatch => {
                "the TPM endorsement key is not the one of the device's enrollment"
            }
            FailureReason::ThumbprintMismatch => {
                "the device certificate is neither the primary nor the secondary certificate \
                 of its individual enrollment"
            }
            FailureReason::UnknownCa => {
                "no enrollment group's signing certificate issued the device's chain"
            }
            FailureReason::ChainIncomplete => {
                "the device's chain does not reach the enrollment group's signing certificate: \
                 an intermediate certificate is missing"
            }
            FailureReason::GroupCertificateNotCa => {
                "the enrollment group's signing certificate is not a CA certificate and is not \
                 trusted to issue device certificates"
            }
        })
    }
}

/// A refused attestation: the reason, and a detail sentence for operators (which record,
/// which certificate, which times). The detail never holds a key, a signature or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, as a bounded value.
    pub reason: FailureReason,
    /// What exactly, for logs and the registration's diagnostics.
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Longest peer-supplied text (an id, a certificate name) quoted in a detail.
const MAX_QUOTED: usize = 140;

/// `text` in single quotes, cut to [`MAX_QUOTED`] characters, for details.
pub(crate) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_QUOTED) + 2);
    out.push('\'');
    out.extend(text.chars().take(MAX_QUOTED));
    out.push('\'');
    out
}

/// The registration id a device claims, checked against the DPS grammar.
pub(crate) fn parse_claimed_id(text: &str) -> Result<RegistrationId, Refusal> {
    RegistrationId::parse(text)
        .map_err(|e| Refusal::new(FailureReason::RegistrationIdInvalid, e.to_string()))
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn labels_are_unique_bounded_snake_case() {
        let labels: HashSet<_> = FailureReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), FailureReason::ALL.len());
        for label in labels {
            assert!(label.len() <= 32, "{label}");
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn display_joins_reason_and_detail() {
        let refusal = Refusal::new(
            FailureReason::CnMismatch,
            "CN 'a' but the device claims 'b'",
        );
        assert_eq!(
            refusal.to_string(),
            "the device certificate's subject CN differs from the registration id the device \
             claims: CN 'a' but the device claims 'b'"
        );
        assert!(FailureReason::CnMismatch.is_credential_fault());
        assert!(!FailureReason::UnknownCa.is_credential_fault());
    }
}
