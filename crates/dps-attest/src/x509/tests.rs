use std::time::Duration;

use dps_test_util::{
    DeviceCert, DeviceOptions, Eku, IssuerFlaw, KeyKind, MemoryLookup, Signer, TestCa, TestPki,
    Validity,
};
use dps_types::{EnrollmentGroup, SymmetricKey};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;
use crate::fixtures::{chain, disabled, sas_individual, x509_group, x509_individual};

fn now() -> UnixTime {
    UnixTime::now()
}

fn attest(
    device: &DeviceCert,
    claimed: &str,
    lookup: &MemoryLookup,
) -> Result<AttestedDevice, Refusal> {
    attest_x509(&chain(device), claimed, lookup, now())
}

fn refused(result: Result<AttestedDevice, Refusal>, reason: FailureReason) -> String {
    let refusal = result.expect_err("attestation should have been refused");
    assert_eq!(refusal.reason, reason, "{}", refusal.detail);
    refusal.detail
}

fn group_id(device: &AttestedDevice) -> &str {
    match device.enrollment() {
        MatchedEnrollment::Group(g) => g.enrollment_group_id.as_str(),
        MatchedEnrollment::Individual(e) => panic!("matched individual {}", e.registration_id),
    }
}

fn signing_subject(device: &AttestedDevice) -> &str {
    &device.signing_certificate_info().unwrap().subject_name
}

fn with(signer: Signer, key: KeyKind, validity: Validity, eku: Eku) -> DeviceOptions {
    DeviceOptions {
        signer,
        key,
        validity,
        eku,
    }
}

fn options(validity: Validity) -> DeviceOptions {
    with(
        Signer::Intermediate,
        KeyKind::EcdsaP256,
        validity,
        Eku::ClientAuth,
    )
}

const ROOT: &str = "CN=DPS Test Root CA, O=DPS Test";
const INTERMEDIATE: &str = "CN=DPS Test Intermediate CA, O=DPS Test";

#[test]
fn individual_enrollment_by_primary_or_secondary_certificate() {
    let pki = TestPki::new();
    let (primary, secondary, other) = (pki.device("dev"), pki.device("dev"), pki.device("dev"));
    let lookup = MemoryLookup::new()
        .with_enrollment(x509_individual(
            "dev",
            &primary.cert_pem,
            Some(&secondary.cert_pem),
        ))
        // A group that would also verify: the individual enrollment wins.
        .with_group(x509_group("root", &pki.root_pem(), None));
    for device in [&primary, &secondary] {
        let attested = attest(device, "DEV", &lookup).unwrap();
        assert!(matches!(
            attested.enrollment(),
            MatchedEnrollment::Individual(_)
        ));
        assert_eq!(attested.method(), AttestationType::X509);
        assert_eq!(
            attested.registration_id().as_str(),
            "dev",
            "the CN's spelling"
        );
        let info = attested.certificate_info().unwrap();
        assert_eq!(
            info.sha256_thumbprint,
            hex::encode_upper(Sha256::digest(&device.der))
        );
        assert!(attested.signing_certificate_info().is_none());
    }
    let detail = refused(
        attest(&other, "dev", &lookup),
        FailureReason::ThumbprintMismatch,
    );
    assert!(detail.contains("individual enrollment 'dev'"), "{detail}");
}

#[test]
fn self_signed_leaf_for_an_individual_enrollment() {
    let pki = TestPki::new();
    let self_signed = with(
        Signer::SelfSigned,
        KeyKind::EcdsaP256,
        Validity::Current,
        Eku::ClientAuth,
    );
    let device = pki.device_with("solo", self_signed);
    let lookup =
        MemoryLookup::new().with_enrollment(x509_individual("solo", &device.cert_pem, None));
    attest(&device, "solo", &lookup).unwrap();
    // Without the enrollment there is nothing it could match.
    refused(
        attest(&device, "solo", &MemoryLookup::new()),
        FailureReason::NoEnrollment,
    );
    // Validity is still checked.
    let expired = pki.device_with(
        "old",
        DeviceOptions {
            validity: Validity::Expired,
            ..self_signed
        },
    );
    let lookup =
        MemoryLookup::new().with_enrollment(x509_individual("old", &expired.cert_pem, None));
    refused(
        attest(&expired, "old", &lookup),
        FailureReason::CertificateExpired,
    );
}

#[test]
fn individual_enrollment_of_another_type() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let key = SymmetricKey::generate();
    let lookup = MemoryLookup::new()
        .with_enrollment(sas_individual("dev", &key, &key))
        .with_group(x509_group("root", &pki.root_pem(), None));
    let detail = refused(
        attest(&device, "dev", &lookup),
        FailureReason::WrongAttestationType,
    );
    assert!(detail.contains("symmetricKey"), "{detail}");
}

#[test]
fn group_through_the_intermediate() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("int", &pki.intermediate_pem(), None));
    let device = pki.device("dev-1");
    let attested = attest(&device, "dev-1", &lookup).unwrap();
    assert_eq!(group_id(&attested), "int");
    assert_eq!(signing_subject(&attested), INTERMEDIATE);
    assert_eq!(
        attested.certificate_info().unwrap().subject_name,
        "CN=dev-1"
    );
    // A device that sends only its leaf finds the group by the leaf's issuer.
    let leaf_only = attest_x509(&[&device.der], "dev-1", &lookup, now()).unwrap();
    assert_eq!(group_id(&leaf_only), "int");
}

#[test]
fn group_through_the_root() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let attested = attest(&pki.device("dev-1"), "dev-1", &lookup).unwrap();
    assert_eq!(group_id(&attested), "root");
    assert_eq!(signing_subject(&attested), ROOT);
    // Signed by the root directly, the leaf alone is the chain.
    let root_signed = pki.device_with(
        "dev-2",
        with(
            Signer::Root,
            KeyKind::EcdsaP256,
            Validity::Current,
            Eku::ClientAuth,
        ),
    );
    assert_eq!(
        group_id(&attest(&root_signed, "dev-2", &lookup).unwrap()),
        "root"
    );
}

#[test]
fn the_secondary_signing_certificate_anchors_too() {
    let pki = TestPki::new();
    let other = TestPki::unrelated_ca();
    let lookup =
        MemoryLookup::new().with_group(x509_group("g", &other.pem(), Some(&pki.root_pem())));
    let attested = attest(&pki.device("dev"), "dev", &lookup).unwrap();
    assert_eq!(signing_subject(&attested), ROOT);
}

#[test]
fn intermediate_group_beats_root_group_and_disabled_still_matches() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    // The root group is found first by the lookup; precedence still picks the intermediate.
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(x509_group("int", &pki.intermediate_pem(), None));
    assert_eq!(group_id(&attest(&device, "dev", &lookup).unwrap()), "int");
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(disabled(x509_group("int", &pki.intermediate_pem(), None)));
    let attested = attest(&device, "dev", &lookup).unwrap();
    assert_eq!(group_id(&attested), "int");
    assert!(!attested.enrollment().is_enabled());
    assert_eq!(attested.enrollment().id(), "int");
}

#[test]
fn deeper_chains_walk_from_the_first_intermediate_up() {
    let pki = TestPki::new();
    let upper = TestCa::intermediate_with_path_len("Upper CA", pki.root(), 1);
    let lower = TestCa::intermediate("Lower CA", &upper);
    let device = lower.issue("deep", DeviceOptions::default());
    assert_eq!(device.chain_der.len(), 3);
    let all = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(x509_group("upper", &upper.pem(), None))
        .with_group(x509_group("lower", &lower.pem(), None));
    assert_eq!(group_id(&attest(&device, "deep", &all).unwrap()), "lower");
    let no_lower = MemoryLookup {
        groups: all.groups[..2].to_vec(),
        ..Default::default()
    };
    assert_eq!(
        group_id(&attest(&device, "deep", &no_lower).unwrap()),
        "upper"
    );
    let root_only = MemoryLookup {
        groups: all.groups[..1].to_vec(),
        ..Default::default()
    };
    assert_eq!(
        group_id(&attest(&device, "deep", &root_only).unwrap()),
        "root"
    );
}

#[test]
fn unknown_ca() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let stranger = TestPki::unrelated_ca().issue("dev", DeviceOptions::default());
    let detail = refused(attest(&stranger, "dev", &lookup), FailureReason::UnknownCa);
    assert!(detail.contains("CN=DPS Unrelated Root CA"), "{detail}");
    // Another PKI whose CAs have the same names but other keys.
    let twin = TestPki::new();
    let detail = refused(
        attest(&twin.device("dev"), "dev", &lookup),
        FailureReason::UnknownCa,
    );
    assert!(
        detail.contains("group 'root'") && detail.contains("another key"),
        "{detail}"
    );
}

#[test]
fn chain_incomplete_and_forged_links() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let root = pki.root().der();
    // The device sends the enrolled root but not the intermediate between.
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let detail = refused(
        attest_x509(&[&device.der, &root], "dev", &lookup, now()),
        FailureReason::ChainIncomplete,
    );
    assert!(detail.contains("intermediate"), "{detail}");
    // The device sends an enrolled intermediate of the same name that did not sign its leaf:
    // its key identifier is not the leaf's authority key identifier, so it is no link; found
    // by name, it fails the signature check.
    let twin = TestPki::new();
    let twin_intermediate = twin.intermediate().der();
    let lookup = MemoryLookup::new().with_group(x509_group("twin", &twin.intermediate_pem(), None));
    let detail = refused(
        attest_x509(&[&device.der, &twin_intermediate], "dev", &lookup, now()),
        FailureReason::UnknownCa,
    );
    assert!(detail.contains("another key"), "{detail}");
}

#[test]
fn validity_period_against_the_injected_clock() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let expired = pki.device_with("dev", options(Validity::Expired));
    let detail = refused(
        attest(&expired, "dev", &lookup),
        FailureReason::CertificateExpired,
    );
    assert!(
        detail.starts_with("the device certificate expired at "),
        "{detail}"
    );
    let early = pki.device_with("dev", options(Validity::NotYetValid));
    refused(
        attest(&early, "dev", &lookup),
        FailureReason::CertificateNotYetValid,
    );
    // The same current certificate, a year and a half from now and a week ago.
    let device = pki.device("dev");
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now().as_secs() + 540 * 86_400));
    let earlier = UnixTime::since_unix_epoch(Duration::from_secs(now().as_secs() - 7 * 86_400));
    refused(
        attest_x509(&chain(&device), "dev", &lookup, later),
        FailureReason::CertificateExpired,
    );
    refused(
        attest_x509(&chain(&device), "dev", &lookup, earlier),
        FailureReason::CertificateNotYetValid,
    );
}

#[test]
fn cn_must_be_the_claimed_registration_id() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let device = pki.device("dev-a");
    let detail = refused(attest(&device, "dev-b", &lookup), FailureReason::CnMismatch);
    assert_eq!(
        detail,
        "the certificate CN is 'dev-a' but the device claims 'dev-b'"
    );
    refused(
        attest(&device, "dev a", &lookup),
        FailureReason::RegistrationIdInvalid,
    );
    let long = "x".repeat(65);
    refused(
        attest(&pki.device(&long), &long, &lookup),
        FailureReason::RegistrationIdInvalid,
    );
    let sixty_four = "y".repeat(64);
    attest(&pki.device(&sixty_four), &sixty_four, &lookup).unwrap();
}

#[test]
fn extended_key_usage_must_allow_client_auth() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    let eku = |eku| {
        with(
            Signer::Intermediate,
            KeyKind::EcdsaP256,
            Validity::Current,
            eku,
        )
    };
    let server_only = pki.device_with("dev", eku(Eku::ServerAuthOnly));
    refused(
        attest(&server_only, "dev", &lookup),
        FailureReason::CertificateNotForClientAuth,
    );
    attest(&pki.device_with("dev", eku(Eku::Absent)), "dev", &lookup).unwrap();
}

#[test]
fn rsa_2048_device() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("int", &pki.intermediate_pem(), None));
    let rsa = pki.device_with(
        "rsa-dev",
        with(
            Signer::Intermediate,
            KeyKind::Rsa2048,
            Validity::Current,
            Eku::ClientAuth,
        ),
    );
    assert_eq!(group_id(&attest(&rsa, "rsa-dev", &lookup).unwrap()), "int");
}

#[test]
fn malformed_and_oversized_chains() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None));
    refused(
        attest_x509(&[], "dev", &lookup, now()),
        FailureReason::NoClientCertificate,
    );
    let garbage: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x00];
    refused(
        attest_x509(&[garbage], "dev", &lookup, now()),
        FailureReason::CertificateInvalid,
    );
    let device = pki.device("dev");
    let intermediate = pki.intermediate().der();
    refused(
        attest_x509(&[&device.der, garbage], "dev", &lookup, now()),
        FailureReason::CertificateInvalid,
    );
    let mut too_long: Vec<&[u8]> = vec![&device.der];
    too_long.extend(std::iter::repeat_n(
        intermediate.as_slice(),
        MAX_CHAIN_CERTS,
    ));
    let detail = refused(
        attest_x509(&too_long, "dev", &lookup, now()),
        FailureReason::CertificateInvalid,
    );
    assert!(detail.contains("at most 5"), "{detail}");
    // Repeating the intermediate within the limit is harmless.
    attest_x509(&too_long[..MAX_CHAIN_CERTS], "dev", &lookup, now()).unwrap();
}

#[test]
fn groups_sharing_a_certificate_match_in_lookup_order() {
    let pki = TestPki::new();
    let lookup = MemoryLookup::new()
        .with_group(x509_group("first", &pki.root_pem(), None))
        .with_group(x509_group("second", &pki.root_pem(), None));
    assert_eq!(
        group_id(&attest(&pki.device("dev"), "dev", &lookup).unwrap()),
        "first"
    );
}

#[test]
fn refusal_details_are_bounded() {
    let pki = TestPki::new();
    let long = "z".repeat(10_000);
    let detail = refused(
        attest(&pki.device("dev"), &long, &MemoryLookup::new()),
        FailureReason::RegistrationIdInvalid,
    );
    assert!(detail.len() < 400, "{}", detail.len());
}

/// Every order of `items`.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.is_empty() {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for (index, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(index);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

/// The leaf followed by `cas`, as a TLS client would send them.
fn presented<'a>(leaf: &'a DeviceCert, cas: &[&'a [u8]]) -> Vec<&'a [u8]> {
    std::iter::once(leaf.der.as_slice())
        .chain(cas.iter().copied())
        .collect()
}

#[test]
fn the_nearest_enrolled_certificate_decides_in_every_order() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let (int, root) = (pki.intermediate().der(), pki.root().der());
    // The enabled root group comes first in the lookup; the disabled intermediate group is
    // nearer the leaf, so it decides and the registrar refuses the device.
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(disabled(x509_group("int", &pki.intermediate_pem(), None)));
    let mut orders = permutations(&[int.as_slice(), root.as_slice()]);
    orders.extend([vec![], vec![int.as_slice()], vec![root.as_slice()]]);
    for cas in orders {
        let attested = attest_x509(&presented(&device, &cas), "dev", &lookup, now()).unwrap();
        assert_eq!(group_id(&attested), "int", "{} CA certificates", cas.len());
        assert!(!attested.enrollment().is_enabled());
        assert_eq!(signing_subject(&attested), INTERMEDIATE);
    }
}

#[test]
fn duplicated_certificates_change_nothing() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let (int, root) = (pki.intermediate().der(), pki.root().der());
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(disabled(x509_group("int", &pki.intermediate_pem(), None)));
    let chains: [&[&[u8]]; 4] = [
        &[&root, &root, &int],
        &[&root, &int, &int, &root],
        &[&device.der, &root, &int],
        &[&root, &device.der, &root],
    ];
    for cas in chains {
        let attested = attest_x509(&presented(&device, cas), "dev", &lookup, now()).unwrap();
        assert_eq!(group_id(&attested), "int");
    }
}

#[test]
fn unrelated_extra_certificates_are_ignored() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let (int, root) = (pki.intermediate().der(), pki.root().der());
    let other_ca = TestPki::unrelated_ca();
    let other_leaf = other_ca.issue("other", DeviceOptions::default());
    // A CA with the intermediate's name but another key: the leaf's authority key identifier
    // rules it out as a link.
    let twin_int = TestPki::new().intermediate().der();
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(x509_group("other", &other_ca.pem(), None))
        .with_group(disabled(x509_group("int", &pki.intermediate_pem(), None)));
    let extras = [other_ca.der(), other_leaf.der.clone(), twin_int];
    for extra in &extras {
        for cas in permutations(&[int.as_slice(), root.as_slice(), extra.as_slice()]) {
            let attested = attest_x509(&presented(&device, &cas), "dev", &lookup, now()).unwrap();
            assert_eq!(group_id(&attested), "int");
        }
    }
    // Without the intermediate, the root is presented but unreachable from the leaf.
    let detail = refused(
        attest_x509(
            &presented(&device, &[&other_ca.der(), &root]),
            "dev",
            &MemoryLookup::new().with_group(x509_group("root", &pki.root_pem(), None)),
            now(),
        ),
        FailureReason::ChainIncomplete,
    );
    assert!(detail.contains("group 'root'"), "{detail}");
}

#[test]
fn two_enrolled_intermediates_the_lower_one_decides() {
    let pki = TestPki::new();
    let int1 = TestCa::intermediate_with_path_len("Int1 CA", pki.root(), 1);
    let int2 = TestCa::intermediate("Int2 CA", &int1);
    let device = int2.issue("deep", DeviceOptions::default());
    let (root_der, int1_der, int2_der) = (pki.root().der(), int1.der(), int2.der());
    // Lookup order from the root down, the reverse of precedence.
    let both = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(x509_group("int1", &int1.pem(), None))
        .with_group(x509_group("int2", &int2.pem(), None));
    let without_int2 = MemoryLookup {
        groups: both.groups[..2].to_vec(),
        ..Default::default()
    };
    let cas = [
        root_der.as_slice(),
        int1_der.as_slice(),
        int2_der.as_slice(),
    ];
    for order in permutations(&cas) {
        let chain = presented(&device, &order);
        let attested = attest_x509(&chain, "deep", &both, now()).unwrap();
        assert_eq!(group_id(&attested), "int2");
        let attested = attest_x509(&chain, "deep", &without_int2, now()).unwrap();
        assert_eq!(group_id(&attested), "int1");
    }
}

#[test]
fn an_individual_enrollment_beats_groups_in_any_order() {
    let pki = TestPki::new();
    let device = pki.device("dev");
    let (int, root) = (pki.intermediate().der(), pki.root().der());
    let lookup = MemoryLookup::new()
        .with_group(x509_group("root", &pki.root_pem(), None))
        .with_group(disabled(x509_group("int", &pki.intermediate_pem(), None)))
        .with_enrollment(x509_individual("dev", &device.cert_pem, None));
    for cas in permutations(&[int.as_slice(), root.as_slice()]) {
        let attested = attest_x509(&presented(&device, &cas), "dev", &lookup, now()).unwrap();
        assert!(matches!(
            attested.enrollment(),
            MatchedEnrollment::Individual(_)
        ));
    }
}

/// A group holding `pem` as a store written before signing certificates were checked holds
/// it: the certificate and its info, without `prepare_group`.
fn stored_unchecked(id: &str, pem: &str) -> EnrollmentGroup {
    let info = ParsedCertificate::parse(pem).unwrap().info();
    let mut group: EnrollmentGroup = serde_json::from_value(json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": pem, "info": info}}}}}))
    .unwrap();
    group.stamp(None, Timestamp::now());
    group
}

#[test]
fn a_group_certificate_that_is_not_a_ca_issues_no_device() {
    let pki = TestPki::new();
    for (flaw, why) in [
        (IssuerFlaw::NotCa, "CA:TRUE"),
        (IssuerFlaw::NoKeyCertSign, "keyCertSign"),
    ] {
        let rogue = TestCa::flawed_intermediate("Rogue", pki.root(), flaw);
        let minted = rogue.issue("anyone", DeviceOptions::default());
        let alone = MemoryLookup::new().with_group(stored_unchecked("rogue", &rogue.pem()));
        // The root's group nearer the top changes nothing: the nearest certificate decides.
        let with_root = alone
            .clone()
            .with_group(x509_group("root", &pki.root_pem(), None));
        for lookup in [&alone, &with_root] {
            for chain in [chain(&minted), vec![minted.der.as_slice()]] {
                let detail = refused(
                    attest_x509(&chain, "anyone", lookup, now()),
                    FailureReason::GroupCertificateNotCa,
                );
                assert!(
                    detail.contains("group 'rogue'") && detail.contains(why),
                    "{detail}"
                );
            }
        }
    }
}
