//! Form parsing and validation.

use super::*;

fn form(pairs: &[(&str, &str)]) -> EnrollmentForm {
    // The first value of a field counts, so the test's own values go first.
    let mut all = pairs.to_vec();
    all.extend_from_slice(&[
        ("allocation_policy", "hashed"),
        ("status", "enabled"),
        ("reprovision", "migrate"),
    ]);
    EnrollmentForm::from_data(&FormData::from_pairs(&all))
}

#[test]
fn initial_twin_must_be_tags_and_desired_properties() {
    assert_eq!(parse_initial_twin("  ").unwrap(), None);
    let t = parse_initial_twin(r#"{"tags":{"a":1},"properties":{"desired":{"b":2}}}"#)
        .unwrap()
        .unwrap();
    assert_eq!(t.tags.unwrap()["a"], 1);
    for (bad, needle) in [
        ("[1]", "JSON object"),
        ("{", "not valid JSON"),
        (r#"{"tags":1}"#, "\"tags\" must be an object"),
        (r#"{"properties":{"reported":{}}}"#, "properties.reported"),
        (r#"{"deviceId":"x"}"#, "\"deviceId\" is not allowed"),
    ] {
        let err = parse_initial_twin(bad).unwrap_err();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn reprovision_choices_map_to_the_two_flags() {
    for (choice, update, migrate) in [
        ("migrate", true, true),
        ("reset", true, false),
        ("never", false, false),
    ] {
        let g = new_group(&form(&[
            ("id", "g1"),
            ("mechanism", "symmetricKey"),
            ("generate_keys", "on"),
            ("reprovision", choice),
        ]))
        .unwrap();
        let p = g.reprovision_policy.unwrap();
        assert_eq!(
            (p.update_hub_assignment, p.migrate_device_data),
            (update, migrate)
        );
        assert_eq!(reprovision_choice(Some(&p)), choice);
    }
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let errors = new_individual(&form(&[
        ("id", "bad id!"),
        ("mechanism", "tpm"),
        ("endorsement_key", "not base64!"),
        ("device_id", "a b"),
        ("initial_twin", "[]"),
        ("allocation_policy", "static"),
    ]))
    .unwrap_err();
    let fields: Vec<_> = errors.keys().copied().collect();
    assert_eq!(
        fields,
        [
            "device_id",
            "endorsement_key",
            "id",
            "initial_twin",
            "static_hub"
        ]
    );
}

#[test]
fn x509_individual_takes_its_registration_id_from_the_cn() {
    let pki = dps_test_util::TestPki::new();
    let leaf = pki.device("Device-From-CN");
    let data = FormData::from_pairs(&[
        ("mechanism", "x509"),
        ("id", "ignored"),
        ("allocation_policy", "static"),
        ("static_hub", "hub1.azure-devices.net"),
        ("status", "disabled"),
        ("reprovision", "never"),
    ])
    .with_file("primary_cert", &leaf.der);
    let f = EnrollmentForm::from_data(&data);
    let e = new_individual(&f).unwrap();
    assert_eq!(e.registration_id.as_str(), "Device-From-CN");
    assert_eq!(
        e.iot_hubs.as_ref().unwrap()[0].as_str(),
        "hub1.azure-devices.net"
    );
    let Attestation::X509(x) = &e.attestation else {
        panic!("x509 expected")
    };
    let info = x.client_certificates.as_ref().unwrap().primary.as_ref();
    assert!(info.unwrap().info.is_some(), "certificate info filled");

    // Garbage in the file input is an error on that field, and the typed values stay.
    let data = FormData::from_pairs(&[("mechanism", "x509"), ("device_id", "kept")])
        .with_file("primary_cert", b"-----BEGIN CERTIFICATE-----\nnope");
    let f = EnrollmentForm::from_data(&data);
    let errors = new_individual(&f).unwrap_err();
    assert!(errors.contains_key("primary_cert"), "{errors:?}");
    assert_eq!(f.device_id, "kept");
}

#[test]
fn update_keeps_the_attestation_and_changes_the_rest() {
    let mut stored = new_group(&form(&[
        ("id", "g"),
        ("mechanism", "symmetricKey"),
        ("generate_keys", "on"),
    ]))
    .unwrap();
    stored.stamp(None, dps_types::Timestamp::now());
    let mut f = EnrollmentForm::from_group(&stored);
    f.mechanism = "x509".into();
    f.iot_hubs = vec!["hub2.example.net".into()];
    f.initial_twin = r#"{"tags":{"site":"b"}}"#.into();
    f.status = "disabled".into();
    let updated = update_group(&stored, &f).unwrap();
    assert_eq!(updated.attestation, stored.attestation);
    assert_eq!(updated.iot_hubs.unwrap()[0].as_str(), "hub2.example.net");
    assert_eq!(
        updated.provisioning_status,
        Some(ProvisioningStatus::Disabled)
    );
    assert_eq!(updated.etag, stored.etag, "the store stamps a new one");
}

#[test]
fn entered_keys_are_validated() {
    let errors = new_group(&form(&[
        ("id", "g"),
        ("mechanism", "symmetricKey"),
        ("primary_key", "c2VjcmV0c2VjcmV0c2VjcmV0"),
    ]))
    .unwrap_err();
    assert!(errors.contains_key("secondary_key"), "{errors:?}");
    assert!(!errors.contains_key("primary_key"), "{errors:?}");
}
