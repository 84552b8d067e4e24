//! Enrollments for the attestation tests, prepared as the service API stores them.

use dps_test_util::DeviceCert;
use dps_types::{
    EnrollmentGroup, IndividualEnrollment, ProvisioningStatus, SymmetricKey, Timestamp,
};
use serde_json::{json, Value};

use crate::{prepare_group, prepare_individual, EnrollmentRules};

/// The chain a TLS client sends, as `attest_x509` takes it.
pub fn chain(device: &DeviceCert) -> Vec<&[u8]> {
    device.chain_der.iter().map(Vec::as_slice).collect()
}

fn certificates(primary: &str, secondary: Option<&str>) -> Value {
    let mut certificates = json!({"primary": {"certificate": primary}});
    if let Some(secondary) = secondary {
        certificates["secondary"] = json!({"certificate": secondary});
    }
    certificates
}

fn individual(id: &str, attestation: Value) -> IndividualEnrollment {
    let e: IndividualEnrollment =
        serde_json::from_value(json!({"registrationId": id, "attestation": attestation})).unwrap();
    let mut e = prepare_individual(e, &EnrollmentRules::default())
        .unwrap()
        .into_inner();
    e.stamp(None, Timestamp::now());
    e
}

fn group(id: &str, attestation: Value) -> EnrollmentGroup {
    let g: EnrollmentGroup =
        serde_json::from_value(json!({"enrollmentGroupId": id, "attestation": attestation}))
            .unwrap();
    let mut g = prepare_group(g, &EnrollmentRules::default())
        .unwrap()
        .into_inner();
    g.stamp(None, Timestamp::now());
    g
}

/// An individual X.509 enrollment with these client certificates (PEM).
pub fn x509_individual(id: &str, primary: &str, secondary: Option<&str>) -> IndividualEnrollment {
    individual(
        id,
        json!({"type": "x509", "x509": {"clientCertificates": certificates(primary, secondary)}}),
    )
}

/// An X.509 enrollment group with these signing certificates (PEM).
pub fn x509_group(id: &str, primary: &str, secondary: Option<&str>) -> EnrollmentGroup {
    group(
        id,
        json!({"type": "x509", "x509": {"signingCertificates": certificates(primary, secondary)}}),
    )
}

fn keys(primary: &SymmetricKey, secondary: &SymmetricKey) -> Value {
    json!({"type": "symmetricKey", "symmetricKey": {
        "primaryKey": primary.expose_base64(),
        "secondaryKey": secondary.expose_base64(),
    }})
}

/// An individual symmetric-key enrollment with these keys.
pub fn sas_individual(
    id: &str,
    primary: &SymmetricKey,
    secondary: &SymmetricKey,
) -> IndividualEnrollment {
    individual(id, keys(primary, secondary))
}

/// A symmetric-key enrollment group with these keys.
pub fn sas_group(id: &str, primary: &SymmetricKey, secondary: &SymmetricKey) -> EnrollmentGroup {
    group(id, keys(primary, secondary))
}

/// The group, disabled.
pub fn disabled(mut group: EnrollmentGroup) -> EnrollmentGroup {
    group.provisioning_status = Some(ProvisioningStatus::Disabled);
    group
}

/// The individual enrollment, disabled.
pub fn disabled_individual(mut enrollment: IndividualEnrollment) -> IndividualEnrollment {
    enrollment.provisioning_status = Some(ProvisioningStatus::Disabled);
    enrollment
}

/// An individual TPM enrollment with this endorsement key (the `TPM2B_PUBLIC` bytes).
pub fn tpm_individual(id: &str, endorsement_key: &[u8]) -> IndividualEnrollment {
    use base64::Engine;
    let ek = base64::engine::general_purpose::STANDARD.encode(endorsement_key);
    individual(id, json!({"type": "tpm", "tpm": {"endorsementKey": ek}}))
}
