use dps_test_util::{MemoryLookup, TestPki};

use super::*;
use crate::fixtures::{
    disabled_individual, sas_group, sas_individual, x509_group, x509_individual,
};

const NOW: i64 = 1_700_000_000;

fn scope() -> IdScope {
    IdScope::parse("0ne00000A1B").unwrap()
}

/// A token as the Python SDK makes it, valid for an hour.
fn token(resource: &str, key: &SymmetricKey) -> String {
    SasToken::generate(resource, key, None, NOW + 3600)
}

fn device_token(id: &str, key: &SymmetricKey) -> String {
    token(&format!("0ne00000A1B/registrations/{id}"), key)
}

fn attest(password: &str, claimed: &str, lookup: &MemoryLookup) -> Result<AttestedDevice, Refusal> {
    attest_sas(password, &scope(), claimed, lookup, NOW)
}

fn refused(result: Result<AttestedDevice, Refusal>, reason: FailureReason) -> String {
    let refusal = result.expect_err("attestation should have been refused");
    assert_eq!(refusal.reason, reason, "{}", refusal.detail);
    refusal.detail
}

fn matched_id(device: &AttestedDevice) -> (&'static str, &str) {
    match device.enrollment() {
        MatchedEnrollment::Individual(e) => ("individual", e.registration_id.as_str()),
        MatchedEnrollment::Group(g) => ("group", g.enrollment_group_id.as_str()),
    }
}

struct Keys {
    primary: SymmetricKey,
    secondary: SymmetricKey,
}

fn keys() -> Keys {
    Keys {
        primary: SymmetricKey::generate(),
        secondary: SymmetricKey::generate(),
    }
}

#[test]
fn individual_enrollment_primary_or_secondary_key() {
    let k = keys();
    let lookup =
        MemoryLookup::new().with_enrollment(sas_individual("My-Device", &k.primary, &k.secondary));
    for key in [&k.primary, &k.secondary] {
        let attested = attest(&device_token("my-device", key), "my-device", &lookup).unwrap();
        assert_eq!(matched_id(&attested), ("individual", "My-Device"));
        assert_eq!(
            attested.registration_id().as_str(),
            "my-device",
            "as the device spelled it"
        );
        assert_eq!(attested.method(), AttestationType::SymmetricKey);
        assert!(attested.certificate_info().is_none());
        assert!(attested.signing_certificate_info().is_none());
    }
    let detail = refused(
        attest(
            &device_token("my-device", &SymmetricKey::generate()),
            "my-device",
            &lookup,
        ),
        FailureReason::SasSignatureMismatch,
    );
    assert!(
        detail.contains("individual enrollment 'My-Device'"),
        "{detail}"
    );
}

#[test]
fn every_client_encoding_of_the_resource_verifies() {
    // dps-protocol.md §2.2 vectors: Python (%2F), Node (raw), C (%2f), all with one key.
    let key = SymmetricKey::parse("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    let lookup = MemoryLookup::new().with_enrollment(sas_individual("my-device", &key, &key));
    let scope = IdScope::parse("0ne00000000").unwrap();
    for token in [
        "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fmy-device&sig=eJvW2ynjiG4iWnmaZwj7FmFoZjsi8sGKGxXaQ7a9ga8%3D&se=1700000000",
        "SharedAccessSignature sr=0ne00000000/registrations/my-device&sig=cSSRVMJE2MdNDBH%2F4S6uDo2WyL6ms4HMbddp2JVMnMk%3D&skn=registration&se=1700000000",
        "SharedAccessSignature sr=0ne00000000%2fregistrations%2fmy-device&sig=cezKdgfPtJjfDRGEBtMnzdDxBrY1rpqQL1awf0J3l8g%3d&se=1700000000&skn=registration",
    ] {
        attest_sas(token, &scope, "my-device", &lookup, 1_699_999_000).unwrap();
    }
}

#[test]
fn disabled_individual_enrollment_still_matches_and_beats_groups() {
    let (k, g) = (keys(), keys());
    let lookup = MemoryLookup::new()
        .with_enrollment(disabled_individual(sas_individual(
            "dev",
            &k.primary,
            &k.secondary,
        )))
        .with_group(sas_group("group", &g.primary, &g.secondary));
    let attested = attest(&device_token("dev", &k.primary), "dev", &lookup).unwrap();
    assert_eq!(matched_id(&attested), ("individual", "dev"));
    assert!(!attested.enrollment().is_enabled());
    // A group-derived key does not help a device that has an individual enrollment.
    let derived = derive_device_key(&g.primary, "dev");
    refused(
        attest(&device_token("dev", &derived), "dev", &lookup),
        FailureReason::SasSignatureMismatch,
    );
}

#[test]
fn group_derived_keys() {
    let (a, b) = (keys(), keys());
    let lookup = MemoryLookup::new()
        .with_group(sas_group("group-a", &a.primary, &a.secondary))
        .with_group(sas_group("group-b", &b.primary, &b.secondary));
    for (group, key) in [
        ("group-a", &a.primary),
        ("group-a", &a.secondary),
        ("group-b", &b.primary),
        ("group-b", &b.secondary),
    ] {
        let derived = derive_device_key(key, "Sensor-7");
        let attested = attest(&device_token("sensor-7", &derived), "Sensor-7", &lookup).unwrap();
        assert_eq!(matched_id(&attested), ("group", group));
        assert_eq!(attested.registration_id().as_str(), "Sensor-7");
    }
    // The key is derived from the id as the device spells it.
    let lower = derive_device_key(&a.primary, "sensor-7");
    refused(
        attest(&device_token("sensor-7", &lower), "Sensor-7", &lookup),
        FailureReason::SasSignatureMismatch,
    );
    let detail = refused(
        attest(
            &device_token("sensor-7", &SymmetricKey::generate()),
            "sensor-7",
            &lookup,
        ),
        FailureReason::SasSignatureMismatch,
    );
    assert!(
        detail.contains("2 symmetric-key enrollment groups"),
        "{detail}"
    );
}

#[test]
fn a_group_key_used_directly() {
    let g = keys();
    let lookup = MemoryLookup::new().with_group(sas_group("group", &g.primary, &g.secondary));
    for key in [&g.primary, &g.secondary] {
        let detail = refused(
            attest(&device_token("dev", key), "dev", &lookup),
            FailureReason::DerivedKeyExpected,
        );
        assert!(detail.contains("enrollment group 'group'"), "{detail}");
        assert!(!detail.contains(&key.expose_base64()));
    }
}

#[test]
fn resource_must_be_this_scope_and_device() {
    let k = keys();
    let lookup =
        MemoryLookup::new().with_enrollment(sas_individual("dev", &k.primary, &k.secondary));
    let wrong_scope = token("0ne00000FFF/registrations/dev", &k.primary);
    let detail = refused(
        attest(&wrong_scope, "dev", &lookup),
        FailureReason::SasWrongResource,
    );
    assert_eq!(
        detail,
        "the token's sr is '0ne00000FFF/registrations/dev'; this device must sign \
         '0ne00000A1B/registrations/dev'"
    );
    let other_device = token("0ne00000A1B/registrations/dev2", &k.primary);
    refused(
        attest(&other_device, "dev", &lookup),
        FailureReason::SasWrongResource,
    );
    for resource in [
        "0ne00000A1B/registrations",
        "0ne00000A1B/devices/dev",
        "0ne00000A1B/registrations/dev/",
        "0ne00000A1B%2Fregistrations%2Fdev",
    ] {
        refused(
            attest(&token(resource, &k.primary), "dev", &lookup),
            FailureReason::SasWrongResource,
        );
    }
    // Letter case does not matter (IoT Edge lower-cases the whole resource).
    attest(
        &token("0NE00000a1b/REGISTRATIONS/DEV", &k.primary),
        "dev",
        &lookup,
    )
    .unwrap();
    assert!(is_device_resource(
        "0ne00000a1b/registrations/dév",
        &scope(),
        "dév"
    ));
    assert!(!is_device_resource(
        "0ne00000a1b/registrations/déw",
        &scope(),
        "dév"
    ));
}

#[test]
fn expired_and_malformed_tokens() {
    let k = keys();
    let lookup =
        MemoryLookup::new().with_enrollment(sas_individual("dev", &k.primary, &k.secondary));
    let stale = SasToken::generate("0ne00000A1B/registrations/dev", &k.primary, None, NOW - 301);
    let detail = refused(attest(&stale, "dev", &lookup), FailureReason::SasExpired);
    assert!(detail.contains("expired at 1699999699"), "{detail}");
    // Within the tolerated skew.
    let recent = SasToken::generate("0ne00000A1B/registrations/dev", &k.primary, None, NOW - 299);
    attest(&recent, "dev", &lookup).unwrap();
    let token = device_token("dev", &k.primary);
    let detail = refused(
        attest(&token.replace("SharedAccessSignature ", ""), "dev", &lookup),
        FailureReason::SasMalformed,
    );
    assert!(detail.contains("does not start"), "{detail}");
    refused(attest("", "dev", &lookup), FailureReason::SasMalformed);
    refused(
        attest(&token, "not valid!", &lookup),
        FailureReason::RegistrationIdInvalid,
    );
}

#[test]
fn no_enrollment_and_wrong_attestation_type() {
    let k = keys();
    let token = device_token("dev", &k.primary);
    refused(
        attest(&token, "dev", &MemoryLookup::new()),
        FailureReason::NoEnrollment,
    );
    // X.509 groups are no candidates for a SAS token.
    let pki = TestPki::new();
    let x509_groups = MemoryLookup::new().with_group(x509_group("x", &pki.root_pem(), None));
    refused(
        attest(&token, "dev", &x509_groups),
        FailureReason::NoEnrollment,
    );
    let x509 = MemoryLookup::new().with_enrollment(x509_individual(
        "dev",
        &pki.device("dev").cert_pem,
        None,
    ));
    let detail = refused(
        attest(&token, "dev", &x509),
        FailureReason::WrongAttestationType,
    );
    assert_eq!(
        detail,
        "individual enrollment 'dev' uses x509 attestation, but the device sent a SAS token"
    );
}

#[test]
fn refusals_never_carry_the_signature_or_keys() {
    let (k, g) = (keys(), keys());
    let lookup = MemoryLookup::new()
        .with_enrollment(sas_individual("dev", &k.primary, &k.secondary))
        .with_group(sas_group("group", &g.primary, &g.secondary));
    let token = device_token("dev", &SymmetricKey::generate());
    let signature = token
        .split("sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    for claimed in ["dev", "other"] {
        let refusal = attest(&token, claimed, &lookup).unwrap_err();
        let text = format!("{refusal} {refusal:?}");
        assert!(!text.contains(&signature), "{text}");
        for key in [&k.primary, &k.secondary, &g.primary, &g.secondary] {
            assert!(!text.contains(&key.expose_base64()), "{text}");
        }
    }
}
