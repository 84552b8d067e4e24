//! The enrollment group of an X.509 device: the group whose signing certificate is nearest
//! the leaf on the issuer path.
//!
//! The path is built from the leaf upwards. The presented CA certificates are an unordered
//! pool (parsed once, duplicates and copies of the leaf dropped). Level 1 holds the presented
//! certificates that issued the leaf ([`ParsedCertificate::names_as_issuer`]: issuer name and
//! key identifiers), level 2 those that issued a level-1 certificate, and so on; every
//! certificate is placed once, at its shortest distance, so loops are impossible and there
//! are at most [`MAX_CHAIN_CERTS`](crate::MAX_CHAIN_CERTS) levels. Certificates the path never reaches (another CA,
//! another device's leaf) are ignored.
//!
//! At each level the lookup is asked which groups are enrolled there: by the thumbprint of
//! each presented certificate of the level, and by subject for the issuer names the level
//! below names (an enrolled certificate the device did not send). Each candidate signing
//! certificate is then checked, nearest level first and in lookup order within a level: it
//! must be within its validity period and the chain must verify against it (rustls-webpki,
//! that certificate as the only trust anchor, every presented certificate offered as
//! intermediate). The first that verifies decides: its group is the match, enabled or not,
//! unless the certificate may not issue certificates (not a CA with `keyCertSign`; stored
//! before writes checked this), which refuses the device. When none verifies, the refusal of
//! the nearest candidate is the answer.

use std::collections::HashSet;
use std::sync::Arc;

use dps_types::{
    Attestation, AttestationType, EnrollmentGroup, EnrollmentLookup, RegistrationId,
    X509CertificateInfo, X509CertificateWithInfo,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::check_validity;
use crate::cert::der_from_text;
use crate::refusal::quoted;
use crate::{AttestedDevice, FailureReason, MatchedEnrollment, ParsedCertificate, Refusal};

/// Most distinct signing certificates one attestation verifies the chain against. Only
/// certificates on the issuer path or named as an issuer on it are tried, and groups that
/// share a certificate cost one verification, so a real configuration needs one or two; the
/// bound caps what a device can make us compute (about 100 µs per verification).
const MAX_ANCHORS: usize = 16;

/// Signature algorithms accepted in chains: everything rustls-webpki supports with aws-lc-rs
/// (ECDSA P-256/P-384/P-521, RSA 2048 to 8192 bits PKCS#1 and PSS, Ed25519, ML-DSA).
static ALGORITHMS: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] =
    webpki::ALL_VERIFICATION_ALGS;

/// The presented chain, prepared for the group search.
pub(super) struct Chain<'a> {
    leaf: CertificateDer<'a>,
    /// The presented CA certificates, each once, as rustls-webpki takes them.
    intermediates: Vec<CertificateDer<'a>>,
    /// The same certificates, parsed.
    pool: Vec<ParsedCertificate>,
    self_signed_leaf: bool,
}

/// How a group's signing certificate was found at a level.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// The certificate itself was presented.
    InChain,
    /// A certificate of the level below names it as issuer; the device did not send it.
    NamedIssuer,
}

/// The certificates one step further from the leaf than the level before.
struct Level<'c> {
    /// The certificates of the step before (the leaf, for level 1), whose issuers this level
    /// holds.
    children: Vec<&'c ParsedCertificate>,
    /// The presented certificates that issued one of them.
    presented: Vec<&'c ParsedCertificate>,
}

/// What checking the chain against one signing certificate gave.
#[derive(Clone)]
enum Outcome {
    /// The chain verifies against it and it may issue certificates: its group is the match.
    Match,
    /// The chain verifies against it, but it may not issue certificates: the device is
    /// refused, whatever groups further up would say.
    Refuse(Refusal),
    /// The chain does not verify against it; the search goes on.
    NoMatch(Refusal),
}

impl<'a> Chain<'a> {
    pub(super) fn new(
        leaf_der: &'a [u8],
        leaf: &ParsedCertificate,
        ca_ders: &[&'a [u8]],
    ) -> Result<Self, Refusal> {
        let mut intermediates = Vec::with_capacity(ca_ders.len());
        let mut pool: Vec<ParsedCertificate> = Vec::with_capacity(ca_ders.len());
        for (index, &der) in ca_ders.iter().enumerate() {
            let ca = ParsedCertificate::parse_der(der).map_err(|e| {
                Refusal::new(
                    FailureReason::CertificateInvalid,
                    format!("CA certificate {} of the presented chain: {e}", index + 2),
                )
            })?;
            let thumbprint = &ca.info_ref().sha256_thumbprint;
            let seen = *thumbprint == leaf.info_ref().sha256_thumbprint
                || pool
                    .iter()
                    .any(|p| p.info_ref().sha256_thumbprint == *thumbprint);
            if !seen {
                intermediates.push(CertificateDer::from(der));
                pool.push(ca);
            }
        }
        let info = leaf.info_ref();
        Ok(Self {
            leaf: CertificateDer::from(leaf_der),
            intermediates,
            pool,
            self_signed_leaf: ca_ders.is_empty() && info.issuer_name == info.subject_name,
        })
    }

    /// The issuer path from `leaf` through the pool, level by level; the last level presents
    /// nothing.
    fn levels<'c>(&'c self, leaf: &'c ParsedCertificate) -> Vec<Level<'c>> {
        let mut placed = vec![false; self.pool.len()];
        let mut levels = Vec::new();
        let mut children = vec![leaf];
        // Each round places at least one more pool certificate or is the last, so there are
        // at most `pool.len() + 1 <= MAX_CHAIN_CERTS` rounds.
        while !children.is_empty() {
            let mut presented = Vec::new();
            for (ca, placed) in self.pool.iter().zip(placed.iter_mut()) {
                if !*placed && children.iter().any(|child| child.names_as_issuer(ca)) {
                    *placed = true;
                    presented.push(ca);
                }
            }
            let next = presented.clone();
            levels.push(Level {
                children,
                presented,
            });
            children = next;
        }
        levels
    }

    /// The enrollment group nearest the leaf whose signing certificate the chain verifies
    /// against.
    pub(super) fn attest_group(
        &self,
        lookup: &dyn EnrollmentLookup,
        leaf: &ParsedCertificate,
        registration_id: RegistrationId,
        now: UnixTime,
    ) -> Result<AttestedDevice, Refusal> {
        let end_entity = EndEntityCert::try_from(&self.leaf).map_err(|e| {
            Refusal::new(
                FailureReason::CertificateInvalid,
                format!("the device certificate is not a valid end-entity certificate: {e}"),
            )
        })?;
        let levels = self.levels(leaf);
        // Outcomes by signing-certificate thumbprint: groups sharing a certificate verify once.
        let mut tried: Vec<(String, Outcome)> = Vec::new();
        let mut nearest_failure = None;
        'levels: for level in &levels {
            for group in level.groups(lookup) {
                for (slot, certificate) in signing_slots(&group) {
                    // The lookup matches groups through the stored info, which every write
                    // fills; a certificate without it was not how this group was found.
                    let Some(info) = &certificate.info else {
                        continue;
                    };
                    let Some(relation) = level.relation(info) else {
                        continue;
                    };
                    let outcome = match tried
                        .iter()
                        .find(|(t, _)| t.eq_ignore_ascii_case(&info.sha256_thumbprint))
                    {
                        Some((_, outcome)) => outcome.clone(),
                        None if tried.len() >= MAX_ANCHORS => break 'levels,
                        None => {
                            let outcome = self.check(&end_entity, certificate, slot, relation, now);
                            tried.push((info.sha256_thumbprint.clone(), outcome.clone()));
                            outcome
                        }
                    };
                    let of_group = |refusal: Refusal| {
                        Refusal::new(
                            refusal.reason,
                            format!(
                                "enrollment group {}: {}",
                                quoted(group.enrollment_group_id.as_str()),
                                refusal.detail
                            ),
                        )
                    };
                    match outcome {
                        Outcome::Match => {
                            return Ok(AttestedDevice::new(
                                registration_id,
                                MatchedEnrollment::Group(Arc::clone(&group)),
                                AttestationType::X509,
                                Some(leaf.info()),
                                Some(info.clone()),
                            ))
                        }
                        Outcome::Refuse(refusal) => return Err(of_group(refusal)),
                        Outcome::NoMatch(refusal) => {
                            nearest_failure.get_or_insert_with(|| of_group(refusal));
                        }
                    }
                }
            }
        }
        Err(nearest_failure.unwrap_or_else(|| self.no_candidate(lookup, &levels, &registration_id)))
    }

    /// Why no group was even a candidate: an enrolled certificate was presented but the path
    /// does not reach it, the leaf is self-signed, or nothing on the path is enrolled.
    fn no_candidate(
        &self,
        lookup: &dyn EnrollmentLookup,
        levels: &[Level<'_>],
        registration_id: &RegistrationId,
    ) -> Refusal {
        let on_path = |ca: &ParsedCertificate| {
            levels
                .iter()
                .flat_map(|level| &level.presented)
                .any(|placed| std::ptr::eq(*placed, ca))
        };
        for ca in self.pool.iter().filter(|ca| !on_path(ca)) {
            let groups = lookup.groups_by_thumbprint(&ca.info_ref().sha256_thumbprint);
            if let Some(group) = groups.first() {
                return Refusal::new(
                    FailureReason::ChainIncomplete,
                    format!(
                        "enrollment group {}: its signing certificate {} is among the presented \
                         certificates, but they do not link the device certificate to it; send \
                         every intermediate certificate between them",
                        quoted(group.enrollment_group_id.as_str()),
                        quoted(&ca.info_ref().subject_name)
                    ),
                );
            }
        }
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
        let top_issuer = levels
            .last()
            .and_then(|level| level.children.first())
            .map_or("", |top| top.info_ref().issuer_name.as_str());
        Refusal::new(
            FailureReason::UnknownCa,
            format!(
                "no individual enrollment has registration id {}, and no enrollment group's \
                 signing certificate is on the issuer path from the device certificate through \
                 the {} presented CA certificates, nor is {}, the last issuer named on it",
                quoted(registration_id.as_str()),
                self.pool.len(),
                quoted(top_issuer)
            ),
        )
    }

    /// Checks the chain against one group signing certificate: it is valid now, the chain
    /// verifies with it as the only trust anchor, and it may issue certificates.
    fn check(
        &self,
        end_entity: &EndEntityCert<'_>,
        certificate: &X509CertificateWithInfo,
        slot: &'static str,
        relation: Relation,
        now: UnixTime,
    ) -> Outcome {
        // Stored records were parsed when written; one that no longer decodes anchors nothing.
        let Some(anchor) = Anchor::load(certificate, slot) else {
            return Outcome::NoMatch(Refusal::new(
                FailureReason::UnknownCa,
                format!("the {slot} signing certificate does not decode"),
            ));
        };
        match self.verify(end_entity, &anchor, relation, now) {
            Err(refusal) => Outcome::NoMatch(refusal),
            // rustls-webpki takes a trust anchor as given; whether it may sign is ours to ask.
            Ok(()) => match anchor.parsed.check_can_issue() {
                Ok(()) => Outcome::Match,
                Err(why) => Outcome::Refuse(Refusal::new(
                    FailureReason::GroupCertificateNotCa,
                    format!(
                        "the {slot} signing certificate {} issued the device certificate's \
                         chain but may not issue certificates: {why}",
                        quoted(&anchor.parsed.info_ref().subject_name)
                    ),
                )),
            },
        }
    }

    /// Verifies the chain with `anchor` as the only trust anchor.
    fn verify(
        &self,
        end_entity: &EndEntityCert<'_>,
        anchor: &Anchor,
        relation: Relation,
        now: UnixTime,
    ) -> Result<(), Refusal> {
        let slot = anchor.slot;
        check_validity(anchor.parsed.info_ref(), now, || {
            format!("the {slot} signing certificate")
        })?;
        let anchor_der = CertificateDer::from(anchor.parsed.der());
        let trust_anchor = webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| {
            Refusal::new(
                FailureReason::UnknownCa,
                format!("the {slot} signing certificate cannot be a trust anchor: {e}"),
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

impl Level<'_> {
    /// The groups enrolled at this level, each once: by the thumbprint of each presented
    /// certificate, then by the issuer names the level below names.
    fn groups(&self, lookup: &dyn EnrollmentLookup) -> Vec<Arc<EnrollmentGroup>> {
        let mut names: Vec<&str> = Vec::new();
        for child in &self.children {
            let name = child.info_ref().issuer_name.as_str();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let by_thumbprint = self
            .presented
            .iter()
            .flat_map(|ca| lookup.groups_by_thumbprint(&ca.info_ref().sha256_thumbprint));
        let by_subject = names
            .into_iter()
            .flat_map(|name| lookup.groups_by_subject(name));
        let mut seen = HashSet::new();
        by_thumbprint
            .chain(by_subject)
            .filter(|group| seen.insert(group.enrollment_group_id.as_str().to_owned()))
            .collect()
    }

    /// How a signing certificate belongs to this level, if it does.
    fn relation(&self, info: &X509CertificateInfo) -> Option<Relation> {
        if self.presented.iter().any(|ca| {
            ca.info_ref()
                .sha256_thumbprint
                .eq_ignore_ascii_case(&info.sha256_thumbprint)
        }) {
            Some(Relation::InChain)
        } else if self
            .children
            .iter()
            .any(|child| child.info_ref().issuer_name == info.subject_name)
        {
            Some(Relation::NamedIssuer)
        } else {
            None
        }
    }
}

/// Maps a webpki chain error to a reason. The leaf's own validity and usage were checked
/// before, so time and usage errors are about a CA certificate of the chain.
fn refusal_for(err: &webpki::Error, anchor: &Anchor, relation: Relation) -> Refusal {
    use webpki::Error as E;
    let slot = anchor.slot;
    let subject = quoted(&anchor.parsed.info_ref().subject_name);
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
    parsed: ParsedCertificate,
    slot: &'static str,
}

impl Anchor {
    /// `None` when the stored certificate has no text or does not parse (every write parsed
    /// it, so neither happens to records this service stored).
    fn load(certificate: &X509CertificateWithInfo, slot: &'static str) -> Option<Self> {
        let der = der_from_text(certificate.certificate.as_deref()?).ok()?;
        let parsed = ParsedCertificate::parse_der(&der).ok()?;
        Some(Self { parsed, slot })
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
