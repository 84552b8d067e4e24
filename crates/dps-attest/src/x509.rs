//! X.509 attestation (dps-protocol.md §9.2): the certificate chain a device presented in its
//! TLS handshake, and the registration id it claims, against the enrollments.
//!
//! The TLS layer ([`crate::PossessionVerifier`]) has already checked that the device holds
//! the leaf's private key; here is decided whether an enrollment trusts that leaf. Order:
//! the individual enrollment with the leaf's CN (matched by certificate thumbprint); else the
//! enrollment group whose signing certificate is nearest the leaf ([`group`]). The device's
//! CA certificates are an unordered pool: the path is built from the leaf by issuer links, so
//! the order they come in, duplicates and unrelated extra certificates change nothing. The
//! nearest enrolled certificate the chain verifies against (rustls-webpki, that certificate
//! as the only trust anchor) decides, enabled or not: a disabled group refuses its devices
//! even when a group further up would take them, and so does a group whose certificate may
//! not issue certificates (one stored before writes refused non-CA certificates).

mod group;

use std::borrow::Cow;
use std::sync::Arc;

use dps_types::{
    Attestation, AttestationType, EnrollmentLookup, IndividualEnrollment, RegistrationId,
    Timestamp, X509CertificateInfo, X509CertificateWithInfo,
};
use rustls::pki_types::UnixTime;

use crate::refusal::{parse_claimed_id, quoted};
use crate::{AttestedDevice, FailureReason, MatchedEnrollment, ParsedCertificate, Refusal};

/// Most certificates a device may present: the leaf and up to four CA certificates. Real
/// device chains are a leaf and one or two intermediates; a bound keeps what one handshake
/// can make us parse and hash small.
pub const MAX_CHAIN_CERTS: usize = 5;

/// Longest registration id of an X.509 device: the CN's upper bound in X.520 (64), which DPS
/// documents as the X.509 registration-id limit.
const MAX_X509_REGISTRATION_ID: usize = 64;

/// Attests a device by its X.509 certificate chain.
///
/// `chain_der` is what the TLS client sent, leaf first; `claimed_registration_id` is the id
/// the device registers with (MQTT client id, HTTP path), which must equal the leaf's CN up to
/// letter case; `now` is the verifier's clock. The leaf must be within its validity period
/// and, when it has an extended key usage extension, allow clientAuth.
///
/// The individual enrollment with that registration id wins if there is one: it must be an
/// X.509 enrollment whose primary or secondary certificate is the leaf (SHA-256 thumbprint;
/// a self-signed leaf is fine). Otherwise the enrollment group whose signing certificate is
/// nearest the leaf on the issuer path decides, whatever order the CA certificates come in.
pub fn attest_x509(
    chain_der: &[&[u8]],
    claimed_registration_id: &str,
    lookup: &dyn EnrollmentLookup,
    now: UnixTime,
) -> Result<AttestedDevice, Refusal> {
    let Some((&leaf_der, ca_ders)) = chain_der.split_first() else {
        return Err(Refusal::new(
            FailureReason::NoClientCertificate,
            "the TLS handshake carried no client certificate",
        ));
    };
    if chain_der.len() > MAX_CHAIN_CERTS {
        return Err(Refusal::new(
            FailureReason::CertificateInvalid,
            format!(
                "the device presented {} certificates; at most {MAX_CHAIN_CERTS} are accepted",
                chain_der.len()
            ),
        ));
    }
    let leaf = ParsedCertificate::parse_der(leaf_der).map_err(|e| {
        Refusal::new(
            FailureReason::CertificateInvalid,
            format!("the device certificate: {e}"),
        )
    })?;
    let registration_id = registration_id_of(&leaf, claimed_registration_id)?;
    check_validity(leaf.info_ref(), now, || "the device certificate".into())?;
    if !leaf.allows_client_auth() {
        return Err(Refusal::new(
            FailureReason::CertificateNotForClientAuth,
            "the device certificate has an extended key usage extension without clientAuth",
        ));
    }

    if let Some(enrollment) = lookup.enrollment(registration_id.as_str()) {
        return individual(enrollment, leaf, registration_id);
    }
    let chain = group::Chain::new(leaf_der, &leaf, ca_ders)?;
    chain.attest_group(lookup, &leaf, registration_id, now)
}

/// The registration id of an X.509 device: the leaf's CN, which must equal the claimed id.
fn registration_id_of(leaf: &ParsedCertificate, claimed: &str) -> Result<RegistrationId, Refusal> {
    let claimed = parse_claimed_id(claimed)?;
    let Some(cn) = leaf.common_name_ref() else {
        return Err(Refusal::new(
            FailureReason::CertificateInvalid,
            "the device certificate's subject has no CN; an X.509 device registers with its \
             CN as registration id",
        ));
    };
    if !cn.eq_ignore_ascii_case(claimed.as_str()) {
        return Err(Refusal::new(
            FailureReason::CnMismatch,
            format!(
                "the certificate CN is {} but the device claims {}",
                quoted(cn),
                quoted(claimed.as_str())
            ),
        ));
    }
    if cn.len() > MAX_X509_REGISTRATION_ID {
        return Err(Refusal::new(
            FailureReason::RegistrationIdInvalid,
            format!(
                "an X.509 registration id (the certificate CN) has at most \
                 {MAX_X509_REGISTRATION_ID} characters; this one has {}",
                cn.len()
            ),
        ));
    }
    // Equal to a valid id up to ASCII case, so valid itself.
    RegistrationId::parse(cn)
        .map_err(|e| Refusal::new(FailureReason::RegistrationIdInvalid, e.to_string()))
}

/// Refuses a certificate outside its validity period (bounds inclusive, as in webpki).
fn check_validity(
    info: &X509CertificateInfo,
    now: UnixTime,
    what: impl Fn() -> String,
) -> Result<(), Refusal> {
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let now_text = || {
        Timestamp::from_unix(secs)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| format!("{secs} s after the Unix epoch"))
    };
    if secs < info.not_before_utc.unix() {
        return Err(Refusal::new(
            FailureReason::CertificateNotYetValid,
            format!(
                "{} is valid from {} (now {})",
                what(),
                info.not_before_utc,
                now_text()
            ),
        ));
    }
    if secs > info.not_after_utc.unix() {
        return Err(Refusal::new(
            FailureReason::CertificateExpired,
            format!(
                "{} expired at {} (now {})",
                what(),
                info.not_after_utc,
                now_text()
            ),
        ));
    }
    Ok(())
}

/// Rule (a): the individual enrollment of this registration id.
fn individual(
    enrollment: Arc<IndividualEnrollment>,
    leaf: ParsedCertificate,
    registration_id: RegistrationId,
) -> Result<AttestedDevice, Refusal> {
    let Attestation::X509(x509) = &enrollment.attestation else {
        return Err(Refusal::new(
            FailureReason::WrongAttestationType,
            format!(
                "individual enrollment {} uses {} attestation, but the device presented an \
                 X.509 certificate",
                quoted(enrollment.registration_id.as_str()),
                enrollment.attestation.kind()
            ),
        ));
    };
    let thumbprint = &leaf.info_ref().sha256_thumbprint;
    let matched = x509
        .client_certificates
        .iter()
        .flat_map(|certificates| certificates.iter())
        .filter_map(sha256_of)
        .any(|enrolled| enrolled.eq_ignore_ascii_case(thumbprint));
    if !matched {
        return Err(Refusal::new(
            FailureReason::ThumbprintMismatch,
            format!(
                "the device certificate (SHA-256 {thumbprint}) is neither the primary nor the \
                 secondary certificate of individual enrollment {}",
                quoted(enrollment.registration_id.as_str())
            ),
        ));
    }
    Ok(AttestedDevice::new(
        registration_id,
        MatchedEnrollment::Individual(enrollment),
        AttestationType::X509,
        Some(leaf.info()),
        None,
    ))
}

/// The SHA-256 thumbprint of an enrolled certificate: its stored `info`, or computed from its
/// text when the info is missing.
fn sha256_of(certificate: &X509CertificateWithInfo) -> Option<Cow<'_, str>> {
    match (&certificate.info, &certificate.certificate) {
        (Some(info), _) => Some(Cow::Borrowed(&info.sha256_thumbprint)),
        (None, Some(text)) => ParsedCertificate::parse(text)
            .ok()
            .map(|c| Cow::Owned(c.info().sha256_thumbprint)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
