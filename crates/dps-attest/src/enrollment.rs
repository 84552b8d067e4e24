//! Validation of an enrollment before it is stored: every writer (service API, portal) calls
//! [`prepare_individual`] or [`prepare_group`], and the store takes only their [`Prepared`]
//! result.
//!
//! Certificates are parsed and their `info` (re)computed here, overwriting whatever the client
//! sent. Nothing here decides trust: a device certificate whose CN differs from the
//! registration id is stored, because DPS checks the CN when the device registers.

use dps_types::{
    Attestation, EnrollmentGroup, IndividualEnrollment, X509Attestation, X509CaReferences,
    X509CertificateWithInfo, X509Certificates,
};

use crate::{AttestError, EnrollmentRules, ParsedCertificate, Prepared};

const NONE_UNSUPPORTED: &str = "attestation type none is not supported";
const GROUP_TPM_UNSUPPORTED: &str = "enrollment groups do not support TPM attestation";

/// JSON paths of the certificate members, for error messages.
const CLIENT_PRIMARY: &str = "attestation.x509.clientCertificates.primary.certificate";
const CLIENT_SECONDARY: &str = "attestation.x509.clientCertificates.secondary.certificate";
const SIGNING_PRIMARY: &str = "attestation.x509.signingCertificates.primary.certificate";
const SIGNING_SECONDARY: &str = "attestation.x509.signingCertificates.secondary.certificate";
const CA_PRIMARY: &str = "attestation.x509.caReferences.primary";
const CA_SECONDARY: &str = "attestation.x509.caReferences.secondary";
const GROUP_X509_MEMBERS: &str =
    "attestation.x509.signingCertificates.primary.certificate or attestation.x509.caReferences.primary";

/// Checks an individual enrollment before it is stored and fills the `info` of its
/// certificates; the [`Prepared`] result is what the store accepts.
///
/// X.509: `clientCertificates.primary.certificate` is required, `secondary` optional, and
/// both must parse; `signingCertificates` and `caReferences` belong to groups. TPM (the
/// endorsement key was checked when the JSON was read) and symmetric keys (generated when
/// the record is stamped) need nothing here. `none` is refused. Then the settings must follow
/// `rules`: hubs linked, a `custom` policy with its definition, the webhook URL allowed.
pub fn prepare_individual(
    mut enrollment: IndividualEnrollment,
    rules: &EnrollmentRules,
) -> Result<Prepared<IndividualEnrollment>, AttestError> {
    match &mut enrollment.attestation {
        Attestation::None => return Err(AttestError::UnsupportedAttestation(NONE_UNSUPPORTED)),
        Attestation::Tpm(_) | Attestation::SymmetricKey(_) => {}
        Attestation::X509(x509) => prepare_individual_x509(x509)?,
    }
    rules.check(&enrollment)?;
    Ok(Prepared::new(enrollment))
}

/// Checks an enrollment group before it is stored and fills the `info` of its certificates;
/// the [`Prepared`] result is what the store accepts.
///
/// X.509: `signingCertificates.primary.certificate` (parsed, `secondary` optional) or
/// `caReferences.primary`, not both; `clientCertificates` belong to individual enrollments.
/// Symmetric keys need nothing here. TPM and `none` are refused: DPS groups do not support
/// them. Then the settings must follow `rules`, as for [`prepare_individual`].
pub fn prepare_group(
    mut group: EnrollmentGroup,
    rules: &EnrollmentRules,
) -> Result<Prepared<EnrollmentGroup>, AttestError> {
    match &mut group.attestation {
        Attestation::None => return Err(AttestError::UnsupportedAttestation(NONE_UNSUPPORTED)),
        Attestation::Tpm(_) => {
            return Err(AttestError::UnsupportedAttestation(GROUP_TPM_UNSUPPORTED))
        }
        Attestation::SymmetricKey(_) => {}
        Attestation::X509(x509) => prepare_group_x509(x509)?,
    }
    rules.check(&group)?;
    Ok(Prepared::new(group))
}

fn prepare_individual_x509(x509: &mut X509Attestation) -> Result<(), AttestError> {
    if x509
        .signing_certificates
        .as_ref()
        .is_some_and(has_certificates)
    {
        return Err(AttestError::InvalidAttestation(
            "attestation.x509.signingCertificates belong to enrollment groups; an individual \
             enrollment takes attestation.x509.clientCertificates",
        ));
    }
    if x509.ca_references.as_ref().is_some_and(has_references) {
        return Err(AttestError::InvalidAttestation(
            "attestation.x509.caReferences belong to enrollment groups; an individual \
             enrollment takes attestation.x509.clientCertificates",
        ));
    }
    let certificates = x509
        .client_certificates
        .as_mut()
        .ok_or(AttestError::MissingMember {
            member: CLIENT_PRIMARY,
        })?;
    fill_certificates(certificates, CLIENT_PRIMARY, CLIENT_SECONDARY)
}

fn prepare_group_x509(x509: &mut X509Attestation) -> Result<(), AttestError> {
    if x509
        .client_certificates
        .as_ref()
        .is_some_and(has_certificates)
    {
        return Err(AttestError::InvalidAttestation(
            "attestation.x509.clientCertificates belong to individual enrollments; an \
             enrollment group takes attestation.x509.signingCertificates or \
             attestation.x509.caReferences",
        ));
    }
    let signing = x509
        .signing_certificates
        .as_mut()
        .filter(|c| has_certificates(c));
    let references = x509.ca_references.as_ref().filter(|r| has_references(r));
    match (signing, references) {
        (Some(_), Some(_)) => Err(AttestError::InvalidAttestation(
            "an enrollment group takes attestation.x509.signingCertificates or \
             attestation.x509.caReferences, not both",
        )),
        (Some(certificates), None) => fill_signing_certificates(certificates),
        (None, Some(references)) => check_references(references),
        (None, None) => Err(AttestError::MissingMember {
            member: GROUP_X509_MEMBERS,
        }),
    }
}

/// Fills a group's signing certificates like [`fill_certificates`], and refuses one that may
/// not sign certificates: a group trusts its certificate to issue every device's, so it must
/// be a CA with `keyCertSign`, never a leaf.
fn fill_signing_certificates(certificates: &mut X509Certificates) -> Result<(), AttestError> {
    fill_certificates(certificates, SIGNING_PRIMARY, SIGNING_SECONDARY)?;
    let slots = [
        (SIGNING_PRIMARY, &certificates.primary),
        (SIGNING_SECONDARY, &certificates.secondary),
    ];
    for (member, certificate) in slots {
        let Some(text) = certificate.as_ref().and_then(|c| c.certificate.as_deref()) else {
            continue;
        };
        let parsed =
            ParsedCertificate::parse(text).map_err(|source| AttestError::InvalidCertificate {
                member,
                source: Box::new(source),
            })?;
        parsed
            .check_can_issue()
            .map_err(|why| AttestError::SigningCertificateNotCa { member, why })?;
    }
    Ok(())
}

/// Parses the primary (required) and secondary (optional) certificate and overwrites their
/// `info`.
fn fill_certificates(
    certificates: &mut X509Certificates,
    primary: &'static str,
    secondary: &'static str,
) -> Result<(), AttestError> {
    let first = certificates
        .primary
        .as_mut()
        .ok_or(AttestError::MissingMember { member: primary })?;
    fill_info(first, primary)?;
    if let Some(second) = certificates.secondary.as_mut() {
        fill_info(second, secondary)?;
    }
    Ok(())
}

fn fill_info(
    certificate: &mut X509CertificateWithInfo,
    member: &'static str,
) -> Result<(), AttestError> {
    let text = certificate
        .certificate
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or(AttestError::MissingMember { member })?;
    let parsed =
        ParsedCertificate::parse(text).map_err(|source| AttestError::InvalidCertificate {
            member,
            source: Box::new(source),
        })?;
    certificate.info = Some(parsed.info());
    Ok(())
}

fn check_references(references: &X509CaReferences) -> Result<(), AttestError> {
    let named = |name: Option<&String>| name.is_some_and(|n| !n.trim().is_empty());
    if !named(references.primary.as_ref()) {
        return Err(AttestError::MissingMember { member: CA_PRIMARY });
    }
    if references.secondary.is_some() && !named(references.secondary.as_ref()) {
        return Err(AttestError::MissingMember {
            member: CA_SECONDARY,
        });
    }
    Ok(())
}

/// `{}` (or all-null members), as some SDKs send for an unused member, counts as absent.
fn has_certificates(certificates: &X509Certificates) -> bool {
    certificates.primary.is_some() || certificates.secondary.is_some()
}

fn has_references(references: &X509CaReferences) -> bool {
    references.primary.is_some() || references.secondary.is_some()
}

#[cfg(test)]
mod tests {
    use dps_test_util::{IssuerFlaw, TestCa, TestPki};
    use serde_json::json;

    use super::*;

    fn no_hubs() -> EnrollmentRules {
        EnrollmentRules::default()
    }

    fn individual(attestation: serde_json::Value) -> IndividualEnrollment {
        serde_json::from_value(json!({"registrationId": "my-device", "attestation": attestation}))
            .unwrap()
    }

    fn group(attestation: serde_json::Value) -> EnrollmentGroup {
        serde_json::from_value(json!({"enrollmentGroupId": "g1", "attestation": attestation}))
            .unwrap()
    }

    fn x509(body: serde_json::Value) -> serde_json::Value {
        json!({"type": "x509", "x509": body})
    }

    fn client_certs(e: &IndividualEnrollment) -> &X509Certificates {
        let Attestation::X509(x) = &e.attestation else {
            panic!("not x509")
        };
        x.client_certificates.as_ref().unwrap()
    }

    #[test]
    fn individual_x509_fills_info_and_overwrites_client_info() {
        let pki = TestPki::new();
        let primary = pki.device("my-device");
        let secondary = pki.device("another-name");
        let bogus_info = json!({"subjectName": "CN=lies", "sha1Thumbprint": "00",
            "sha256Thumbprint": "00", "issuerName": "CN=lies",
            "notBeforeUtc": "2000-01-01T00:00:00Z", "notAfterUtc": "2000-01-01T00:00:00Z",
            "serialNumber": "00", "version": 1});
        let e = individual(x509(json!({"clientCertificates": {
            "primary": {"certificate": primary.cert_pem, "info": bogus_info},
            "secondary": {"certificate": secondary.cert_pem}}})));
        let e = prepare_individual(e, &no_hubs()).unwrap();
        let certs = client_certs(&e);
        let info = certs.primary.as_ref().unwrap().info.as_ref().unwrap();
        assert_eq!(info.subject_name, "CN=my-device");
        assert_eq!(info.version, 3);
        let info2 = certs.secondary.as_ref().unwrap().info.as_ref().unwrap();
        assert_eq!(
            info2.subject_name, "CN=another-name",
            "a CN mismatch is stored"
        );
    }

    fn individual_err(attestation: serde_json::Value) -> String {
        prepare_individual(individual(attestation), &no_hubs())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn individual_x509_refusals() {
        let pki = TestPki::new();
        let cert = pki.device("my-device").cert_pem;
        let err = individual_err(x509(json!({"clientCertificates": {}})));
        assert_eq!(err, format!("{CLIENT_PRIMARY} is required"));
        let err = individual_err(x509(json!({"clientCertificates": {"primary": {}}})));
        assert_eq!(err, format!("{CLIENT_PRIMARY} is required"));
        let err = individual_err(x509(json!({"clientCertificates": {
            "primary": {"certificate": cert}, "secondary": {"certificate": "junk!"}}})));
        assert!(
            err.starts_with(CLIENT_SECONDARY) && err.contains("not PEM, base64 or DER"),
            "{err}"
        );
        let err = individual_err(x509(json!({
            "clientCertificates": {"primary": {"certificate": cert}},
            "signingCertificates": {"primary": {"certificate": pki.root_pem()}}})));
        assert!(
            err.contains("signingCertificates belong to enrollment groups"),
            "{err}"
        );
        let err = individual_err(x509(json!({
            "clientCertificates": {"primary": {"certificate": cert}},
            "caReferences": {"primary": "my-ca"}})));
        assert!(
            err.contains("caReferences belong to enrollment groups"),
            "{err}"
        );
        assert_eq!(individual_err(json!({"type": "none"})), NONE_UNSUPPORTED);
    }

    #[test]
    fn individual_x509_tolerates_empty_group_members() {
        let cert = TestPki::new().device("my-device").cert_pem;
        let e = individual(x509(json!({
            "clientCertificates": {"primary": {"certificate": cert}},
            "signingCertificates": {}, "caReferences": {"primary": null}})));
        prepare_individual(e, &no_hubs()).unwrap();
    }

    #[test]
    fn individual_tpm_and_symmetric_key_pass() {
        let mut ek = vec![0x00, 0x04];
        ek.extend([1, 2, 3, 4]);
        let ek = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ek);
        let tpm = individual(json!({"type": "tpm", "tpm": {"endorsementKey": ek}}));
        prepare_individual(tpm, &no_hubs()).unwrap();
        let sym = individual(json!({"type": "symmetricKey"}));
        prepare_individual(sym, &no_hubs()).unwrap();
    }

    fn group_err(attestation: serde_json::Value) -> String {
        prepare_group(group(attestation), &no_hubs())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn group_x509_signing_certificates() {
        let pki = TestPki::new();
        let g = group(x509(json!({"signingCertificates": {
            "primary": {"certificate": pki.intermediate_pem()},
            "secondary": {"certificate": pki.root_pem()}}})));
        let g = prepare_group(g, &no_hubs()).unwrap();
        let Attestation::X509(x) = &g.attestation else {
            panic!("not x509")
        };
        let certs = x.signing_certificates.as_ref().unwrap();
        let subject = |c: &Option<X509CertificateWithInfo>| {
            c.as_ref()
                .unwrap()
                .info
                .as_ref()
                .unwrap()
                .subject_name
                .clone()
        };
        assert_eq!(
            subject(&certs.primary),
            "CN=DPS Test Intermediate CA, O=DPS Test"
        );
        assert_eq!(subject(&certs.secondary), "CN=DPS Test Root CA, O=DPS Test");
    }

    #[test]
    fn group_signing_certificates_must_be_able_to_issue() {
        let pki = TestPki::new();
        let leaf = pki.device("not-a-ca").cert_pem;
        let no_cert_sign =
            TestCa::flawed_intermediate("No keyCertSign", pki.root(), IssuerFlaw::NoKeyCertSign);
        let err = group_err(x509(json!({"signingCertificates": {
            "primary": {"certificate": leaf}}})));
        assert_eq!(
            err,
            format!(
                "{SIGNING_PRIMARY} cannot be an enrollment group's signing certificate: its \
                 basicConstraints do not say CA:TRUE; enroll the CA certificate that issues the \
                 devices' certificates"
            )
        );
        let err = group_err(x509(json!({"signingCertificates": {
            "primary": {"certificate": pki.root_pem()},
            "secondary": {"certificate": no_cert_sign.pem()}}})));
        assert!(
            err.starts_with(SIGNING_SECONDARY) && err.contains("does not allow keyCertSign"),
            "{err}"
        );
    }

    #[test]
    fn group_x509_ca_references() {
        let g = group(x509(json!({"caReferences": {"primary": "my-root"},
            "clientCertificates": {}})));
        prepare_group(g, &no_hubs()).unwrap();
        let err = group_err(x509(
            json!({"caReferences": {"primary": "a", "secondary": " "}}),
        ));
        assert_eq!(err, format!("{CA_SECONDARY} is required"));
        let err = group_err(x509(json!({"caReferences": {"secondary": "b"}})));
        assert_eq!(err, format!("{CA_PRIMARY} is required"));
    }

    #[test]
    fn group_refusals() {
        let pki = TestPki::new();
        assert_eq!(
            group_err(x509(json!({}))),
            format!("{GROUP_X509_MEMBERS} is required")
        );
        let err = group_err(x509(json!({
            "signingCertificates": {"primary": {"certificate": pki.root_pem()}},
            "caReferences": {"primary": "my-root"}})));
        assert!(err.contains("not both"), "{err}");
        let err = group_err(x509(json!({
            "clientCertificates": {"primary": {"certificate": pki.device("d").cert_pem}}})));
        assert!(
            err.contains("clientCertificates belong to individual"),
            "{err}"
        );
        let err = group_err(x509(json!({"signingCertificates": {
            "secondary": {"certificate": pki.root_pem()}}})));
        assert_eq!(err, format!("{SIGNING_PRIMARY} is required"));
        let err = group_err(x509(json!({"signingCertificates": {
            "primary": {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}}})));
        assert!(
            err.starts_with(&format!("{SIGNING_PRIMARY}: DER does not parse")),
            "{err}"
        );
        let mut ek = vec![0x00, 0x02];
        ek.extend([1, 2]);
        let ek = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ek);
        assert_eq!(
            group_err(json!({"type": "tpm", "tpm": {"endorsementKey": ek}})),
            GROUP_TPM_UNSUPPORTED
        );
        assert_eq!(group_err(json!({"type": "none"})), NONE_UNSUPPORTED);
        prepare_group(group(json!({"type": "symmetricKey"})), &no_hubs()).unwrap();
    }
}
