//! X.509 attestation (dps-protocol.md §9.2): the certificate chain a device presented in its
//! TLS handshake, and the registration id it claims, against the enrollments.
//!
//! The TLS layer ([`crate::PossessionVerifier`]) has already checked that the device holds
//! the leaf's private key; here is decided whether an enrollment trusts that leaf. Order:
//! the individual enrollment with the leaf's CN (matched by certificate thumbprint), then
//! enrollment groups whose signing certificate is in the chain (nearest the leaf first),
//! then groups whose signing certificate issued the top of the chain. The first group the
//! chain verifies against (rustls-webpki, the group's certificate as the only trust anchor)
//! wins, enabled or not.

use std::borrow::Cow;
use std::sync::Arc;

use dps_types::{
    Attestation, AttestationType, EnrollmentGroup, EnrollmentLookup, IndividualEnrollment,
    RegistrationId, Timestamp, X509CertificateInfo, X509CertificateWithInfo,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};

use crate::cert::{der_from_text, MAX_CERTIFICATE_DER};
use crate::refusal::{parse_claimed_id, quoted};
use crate::{AttestedDevice, FailureReason, MatchedEnrollment, ParsedCertificate, Refusal};

/// Most certificates a device may present: the leaf and up to four CA certificates. Real
/// device chains are a leaf and one or two intermediates; a bound keeps what one handshake
/// can make us parse and hash small.
pub const MAX_CHAIN_CERTS: usize = 5;

/// Longest registration id of an X.509 device: the CN's upper bound in X.520 (64), which DPS
/// documents as the X.509 registration-id limit.
const MAX_X509_REGISTRATION_ID: usize = 64;

/// Most distinct signing certificates one attestation verifies the chain against. Only
/// certificates that are in the chain or named as an issuer in it are tried, and groups that
/// share a certificate cost one verification, so a real configuration needs one or two; the
/// bound caps what a device can make us compute (about 100 µs per verification).
const MAX_ANCHORS: usize = 16;

/// Signature algorithms accepted in chains: everything rustls-webpki supports with aws-lc-rs
/// (ECDSA P-256/P-384/P-521, RSA 2048 to 8192 bits PKCS#1 and PSS, Ed25519, ML-DSA).
static ALGORITHMS: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] =
    webpki::ALL_VERIFICATION_ALGS;

/// Attests a device by its X.509 certificate chain.
///
/// `chain_der` is what the TLS client sent, leaf first; `claimed_registration_id` is the id
/// the device registers with (MQTT client id, HTTP path), which must equal the leaf's CN up to
/// letter case; `now` is the verifier's clock. The leaf must be within its validity period
/// and, when it has an extended key usage extension, allow clientAuth.
///
/// The individual enrollment with that registration id wins if there is one: it must be an
/// X.509 enrollment whose primary or secondary certificate is the leaf (SHA-256 thumbprint;
/// a self-signed leaf is fine). Otherwise enrollment groups are tried in the order described
/// in the module documentation.
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
    let chain = Chain::new(leaf_der, &leaf, ca_ders)?;
    chain.attest_group(lookup, leaf, registration_id, now)
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

/// One CA certificate the device presented.
struct PresentedCa {
    sha256: String,
    issuer: String,
}

/// The presented chain, prepared for group matching.
struct Chain<'a> {
    leaf: CertificateDer<'a>,
    intermediates: Vec<CertificateDer<'a>>,
    cas: Vec<PresentedCa>,
    leaf_issuer: String,
    self_signed_leaf: bool,
}

/// Whether a group's signing certificate may anchor the chain at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// The certificate itself is in the presented chain.
    InChain,
    /// A presented certificate names it as issuer.
    NamedIssuer,
}

/// What verifying the chain against one signing certificate gave.
type Outcome = Result<(), Refusal>;

impl<'a> Chain<'a> {
    fn new(
        leaf_der: &'a [u8],
        leaf: &ParsedCertificate,
        ca_ders: &[&'a [u8]],
    ) -> Result<Self, Refusal> {
        let mut cas = Vec::with_capacity(ca_ders.len());
        for (index, der) in ca_ders.iter().enumerate() {
            let what = || format!("CA certificate {} of the presented chain", index + 2);
            if der.len() > MAX_CERTIFICATE_DER {
                return Err(Refusal::new(
                    FailureReason::CertificateInvalid,
                    format!(
                        "{} is {} bytes long; at most {MAX_CERTIFICATE_DER} are accepted",
                        what(),
                        der.len()
                    ),
                ));
            }
            let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
                Refusal::new(
                    FailureReason::CertificateInvalid,
                    format!("{} does not parse: {e}", what()),
                )
            })?;
            cas.push(PresentedCa {
                sha256: hex::encode_upper(Sha256::digest(der)),
                issuer: cert.issuer().to_string(),
            });
        }
        let info = leaf.info_ref();
        Ok(Self {
            leaf: CertificateDer::from(leaf_der),
            intermediates: ca_ders.iter().map(|d| CertificateDer::from(*d)).collect(),
            cas,
            leaf_issuer: info.issuer_name.clone(),
            self_signed_leaf: ca_ders.is_empty() && info.issuer_name == info.subject_name,
        })
    }

    /// The issuer name of the topmost presented certificate.
    fn top_issuer(&self) -> &str {
        self.cas.last().map_or(&self.leaf_issuer, |ca| &ca.issuer)
    }

    /// How a signing certificate relates to the chain, if at all.
    fn relation(&self, info: &X509CertificateInfo) -> Option<Relation> {
        if self
            .cas
            .iter()
            .any(|ca| ca.sha256.eq_ignore_ascii_case(&info.sha256_thumbprint))
        {
            Some(Relation::InChain)
        } else if self.leaf_issuer == info.subject_name
            || self.cas.iter().any(|ca| ca.issuer == info.subject_name)
        {
            Some(Relation::NamedIssuer)
        } else {
            None
        }
    }

    /// Rule (b): enrollment groups, nearest the leaf first.
    fn attest_group(
        &self,
        lookup: &dyn EnrollmentLookup,
        leaf: ParsedCertificate,
        registration_id: RegistrationId,
        now: UnixTime,
    ) -> Result<AttestedDevice, Refusal> {
        let end_entity = EndEntityCert::try_from(&self.leaf).map_err(|e| {
            Refusal::new(
                FailureReason::CertificateInvalid,
                format!("the device certificate is not a valid end-entity certificate: {e}"),
            )
        })?;
        let candidates = self.candidates(lookup);
        if candidates.is_empty() {
            return Err(self.no_candidate(&registration_id));
        }
        // Outcomes by signing-certificate thumbprint: groups sharing a certificate verify once.
        let mut tried: Vec<(String, Outcome)> = Vec::new();
        let mut first_failure = None;
        'groups: for group in candidates {
            for (slot, certificate) in signing_slots(&group) {
                let Some(anchor) = Anchor::load(certificate, slot) else {
                    continue;
                };
                let Some(relation) = self.relation(&anchor.info) else {
                    continue;
                };
                let outcome = match tried
                    .iter()
                    .find(|(t, _)| *t == anchor.info.sha256_thumbprint)
                {
                    Some((_, outcome)) => outcome.clone(),
                    None if tried.len() >= MAX_ANCHORS => break 'groups,
                    None => {
                        let outcome = self.verify(&end_entity, &anchor, relation, now);
                        tried.push((anchor.info.sha256_thumbprint.clone(), outcome.clone()));
                        outcome
                    }
                };
                match outcome {
                    Ok(()) => {
                        return Ok(AttestedDevice::new(
                            registration_id,
                            MatchedEnrollment::Group(Arc::clone(&group)),
                            AttestationType::X509,
                            Some(leaf.info()),
                            Some(anchor.info),
                        ))
                    }
                    Err(refusal) => {
                        first_failure.get_or_insert(Refusal::new(
                            refusal.reason,
                            format!(
                                "enrollment group {}: {}",
                                quoted(group.enrollment_group_id.as_str()),
                                refusal.detail
                            ),
                        ));
                    }
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| self.no_candidate(&registration_id)))
    }

    /// Groups that may anchor the chain, in precedence order, each once: by the thumbprint of
    /// each presented CA certificate from the leaf up, then by the top certificate's issuer.
    fn candidates(&self, lookup: &dyn EnrollmentLookup) -> Vec<Arc<EnrollmentGroup>> {
        let mut candidates: Vec<Arc<EnrollmentGroup>> = Vec::new();
        let by_thumbprint = self
            .cas
            .iter()
            .flat_map(|ca| lookup.groups_by_thumbprint(&ca.sha256));
        for group in by_thumbprint.chain(lookup.groups_by_subject(self.top_issuer())) {
            if !candidates
                .iter()
                .any(|c| c.enrollment_group_id == group.enrollment_group_id)
            {
                candidates.push(group);
            }
        }
        candidates
    }

    fn no_candidate(&self, registration_id: &RegistrationId) -> Refusal {
        if self.self_signed_leaf {
            return Refusal::new(
                FailureReason::NoEnrollment,
                format!(
                    "no individual enrollment has registration id {}, and a self-signed \
                     certificate cannot belong to an enrollment group",
                    quoted(registration_id.as_str())
                ),
            );
        }
        Refusal::new(
            FailureReason::UnknownCa,
            format!(
                "no individual enrollment has registration id {}, and no enrollment group's \
                 signing certificate is among the {} presented CA certificates or is {}, the \
                 issuer of the topmost one",
                quoted(registration_id.as_str()),
                self.cas.len(),
                quoted(self.top_issuer())
            ),
        )
    }

    /// Verifies the chain with `anchor` as the only trust anchor.
    fn verify(
        &self,
        end_entity: &EndEntityCert<'_>,
        anchor: &Anchor,
        relation: Relation,
        now: UnixTime,
    ) -> Outcome {
        check_validity(&anchor.info, now, || {
            format!("the {} signing certificate", anchor.slot)
        })?;
        let anchor_der = CertificateDer::from(anchor.der.as_slice());
        let trust_anchor = webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| {
            Refusal::new(
                FailureReason::UnknownCa,
                format!(
                    "the {} signing certificate cannot be a trust anchor: {e}",
                    anchor.slot
                ),
            )
        })?;
        end_entity
            .verify_for_usage(
                ALGORITHMS,
                &[trust_anchor],
                &self.intermediates,
                now,
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map(drop)
            .map_err(|e| refusal_for(&e, anchor, relation))
    }
}

/// Maps a webpki chain error to a reason. The leaf's own validity and usage were checked
/// before, so time and usage errors are about a CA certificate of the chain.
fn refusal_for(err: &webpki::Error, anchor: &Anchor, relation: Relation) -> Refusal {
    use webpki::Error as E;
    let slot = anchor.slot;
    let subject = quoted(&anchor.info.subject_name);
    let (reason, detail) = match err {
        E::CertExpired { .. } => (
            FailureReason::CertificateExpired,
            format!("a CA certificate between the device certificate and the {slot} signing certificate {subject} has expired"),
        ),
        E::CertNotValidYet { .. } => (
            FailureReason::CertificateNotYetValid,
            format!("a CA certificate between the device certificate and the {slot} signing certificate {subject} is not valid yet"),
        ),
        E::RequiredEkuNotFoundContext(_) => (
            FailureReason::CertificateNotForClientAuth,
            format!("a CA certificate between the device certificate and the {slot} signing certificate {subject} has an extended key usage without clientAuth"),
        ),
        E::UnknownIssuer => (
            FailureReason::ChainIncomplete,
            format!("the presented certificates do not link the device certificate to the {slot} signing certificate {subject}; send every intermediate certificate up to it"),
        ),
        E::InvalidSignatureForPublicKey if relation == Relation::NamedIssuer => (
            FailureReason::UnknownCa,
            format!("the chain names the {slot} signing certificate {subject} as issuer, but was signed with another key"),
        ),
        other => (
            FailureReason::CertificateInvalid,
            format!("verifying the chain up to the {slot} signing certificate {subject}: {other}"),
        ),
    };
    Refusal::new(reason, detail)
}

/// A group's signing certificate, decoded.
struct Anchor {
    der: Vec<u8>,
    info: X509CertificateInfo,
    slot: &'static str,
}

impl Anchor {
    /// `None` when the stored certificate has no text or does not decode (the API validated
    /// it on write, so neither happens to records it stored).
    fn load(certificate: &X509CertificateWithInfo, slot: &'static str) -> Option<Self> {
        let der = der_from_text(certificate.certificate.as_deref()?).ok()?;
        let info = match &certificate.info {
            Some(info) => info.clone(),
            None => ParsedCertificate::parse_der(&der).ok()?.info(),
        };
        Some(Self { der, info, slot })
    }
}

/// The group's signing certificates: `("primary", _)` then `("secondary", _)`.
fn signing_slots(
    group: &EnrollmentGroup,
) -> impl Iterator<Item = (&'static str, &X509CertificateWithInfo)> {
    let certificates = match &group.attestation {
        Attestation::X509(x509) => x509.signing_certificates.as_ref(),
        _ => None,
    };
    certificates.into_iter().flat_map(|c| {
        c.primary
            .iter()
            .map(|p| ("primary", p))
            .chain(c.secondary.iter().map(|s| ("secondary", s)))
    })
}

#[cfg(test)]
mod tests;
