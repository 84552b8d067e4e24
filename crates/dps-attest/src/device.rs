//! [`AttestedDevice`]: the proof that a device holds the credential of an enrollment.

use std::sync::Arc;

use dps_types::{
    AttestationType, EnrollmentGroup, EnrollmentSettings, IndividualEnrollment, RegistrationId,
    SymmetricKey, X509CertificateInfo,
};

/// The enrollment a device matched: its individual enrollment, or the group that covers it.
#[derive(Debug, Clone)]
pub enum MatchedEnrollment {
    /// The individual enrollment with the device's registration id.
    Individual(Arc<IndividualEnrollment>),
    /// The enrollment group whose key (symmetric key) or signing certificate (X.509) the
    /// device's credential derives from.
    Group(Arc<EnrollmentGroup>),
}

impl MatchedEnrollment {
    /// Whether devices may register through this record. A disabled record still matches:
    /// attestation says who the device is, the registration service decides what a disabled
    /// enrollment means.
    pub fn is_enabled(&self) -> bool {
        self.settings().is_enabled()
    }

    /// The settings both kinds share (allocation, reprovisioning, status, ...).
    pub fn settings(&self) -> &dyn EnrollmentSettings {
        match self {
            MatchedEnrollment::Individual(e) => &**e,
            MatchedEnrollment::Group(g) => &**g,
        }
    }

    /// The registration id of an individual enrollment or the id of a group, for logs.
    pub fn id(&self) -> &str {
        match self {
            MatchedEnrollment::Individual(e) => e.registration_id.as_str(),
            MatchedEnrollment::Group(g) => g.enrollment_group_id.as_str(),
        }
    }
}

/// A device whose credential has been verified against an enrollment.
///
/// Only this crate's `attest_*` functions build one (the fields are private and there is no
/// constructor, `Default` or `Deserialize`), so a function that takes an `AttestedDevice`
/// cannot be handed a device nobody checked.
#[derive(Clone)]
pub struct AttestedDevice {
    registration_id: RegistrationId,
    enrollment: MatchedEnrollment,
    method: AttestationType,
    certificate: Option<X509CertificateInfo>,
    signing_certificate: Option<X509CertificateInfo>,
    hub_key: Option<SymmetricKey>,
}

impl AttestedDevice {
    pub(crate) fn new(
        registration_id: RegistrationId,
        enrollment: MatchedEnrollment,
        method: AttestationType,
        certificate: Option<X509CertificateInfo>,
        signing_certificate: Option<X509CertificateInfo>,
    ) -> Self {
        Self {
            registration_id,
            enrollment,
            method,
            certificate,
            signing_certificate,
            hub_key: None,
        }
    }

    /// The device with `key` as the key its IoT hub admits it with (TPM devices).
    pub(crate) fn with_hub_key(self, key: SymmetricKey) -> Self {
        Self {
            hub_key: Some(key),
            ..self
        }
    }

    /// The registration id as the device spelled it: the claimed id for a SAS token (group
    /// device keys are derived from that spelling) or a TPM, the leaf's CN for X.509 (which
    /// equals the claimed id up to letter case).
    pub fn registration_id(&self) -> &RegistrationId {
        &self.registration_id
    }

    /// The enrollment that matched first. It may be disabled.
    pub fn enrollment(&self) -> &MatchedEnrollment {
        &self.enrollment
    }

    /// How the device proved itself: `X509`, `SymmetricKey` or `Tpm`.
    pub fn method(&self) -> AttestationType {
        self.method
    }

    /// For X.509: the device (leaf) certificate.
    pub fn certificate_info(&self) -> Option<&X509CertificateInfo> {
        self.certificate.as_ref()
    }

    /// For X.509 through a group: the group's signing certificate that anchored the chain.
    pub fn signing_certificate_info(&self) -> Option<&X509CertificateInfo> {
        self.signing_certificate.as_ref()
    }

    /// For TPM: the fresh key this registration gives the device for its IoT hub. The
    /// assignment feed tells the hub; the frontend seals it to the device's TPM
    /// (`registrationState.tpm.authenticationKey`). A symmetric-key device's hub keys are its
    /// enrollment's (or derived from its group's), so it has none here.
    pub fn hub_key(&self) -> Option<&SymmetricKey> {
        self.hub_key.as_ref()
    }
}

impl std::fmt::Debug for AttestedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, id) = match &self.enrollment {
            MatchedEnrollment::Individual(e) => ("individual", e.registration_id.as_str()),
            MatchedEnrollment::Group(g) => ("group", g.enrollment_group_id.as_str()),
        };
        f.debug_struct("AttestedDevice")
            .field("registration_id", &self.registration_id.as_str())
            .field("method", &self.method)
            .field("enrollment", &format_args!("{kind} {id}"))
            .field(
                "certificate",
                &self.certificate.as_ref().map(|c| &c.sha256_thumbprint),
            )
            .field(
                "signing_certificate",
                &self.signing_certificate.as_ref().map(|c| &c.subject_name),
            )
            .finish()
    }
}
