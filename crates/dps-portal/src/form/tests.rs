//! Form parsing and validation.

use super::*;

/// Every hub these tests name is linked; plain-http webhooks are allowed.
fn rules() -> EnrollmentRules {
    EnrollmentRules {
        linked_hubs: [
            "hub1.azure-devices.net",
            "hub1.example.net",
            "hub2.example.net",
        ]
        .map(|h| HubName::parse(h).unwrap())
        .to_vec(),
        webhook: dps_types::WebhookPolicy {
            allow_http: true,
            allowed_hosts: Vec::new(),
        },
    }
}

fn new_group(f: &EnrollmentForm) -> Result<EnrollmentGroup, FieldErrors> {
    super::new_group(f, &rules()).map(Prepared::into_inner)
}

fn new_individual(f: &EnrollmentForm) -> Result<IndividualEnrollment, FieldErrors> {
    super::new_individual(f, &rules()).map(Prepared::into_inner)
}

fn update_group(
    stored: &EnrollmentGroup,
    f: &EnrollmentForm,
) -> Result<EnrollmentGroup, FieldErrors> {
    super::update_group(stored, f, &rules()).map(Prepared::into_inner)
}

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

fn custom_group(pairs: &[(&str, &str)]) -> Result<EnrollmentGroup, FieldErrors> {
    let mut all = vec![
        ("id", "g"),
        ("mechanism", "symmetricKey"),
        ("generate_keys", "on"),
        ("allocation_policy", "custom"),
    ];
    // The test's own values go first: the first value of a field counts.
    all.splice(0..0, pairs.iter().copied());
    new_group(&form(&all))
}

#[test]
fn custom_allocation_stores_the_webhook_and_its_candidate_hubs() {
    let g = custom_group(&[
        (
            "webhook_url",
            "https://alloc.example.net/api/allocate?code=abc",
        ),
        ("api_version", "2021-10-01"),
        ("iot_hubs", "hub1.example.net"),
        ("iot_hubs", "hub2.example.net"),
    ])
    .unwrap();
    assert_eq!(g.allocation_policy, Some(AllocationPolicy::Custom));
    assert_eq!(
        g.custom_allocation_definition,
        Some(CustomAllocationDefinition {
            webhook_url: "https://alloc.example.net/api/allocate?code=abc".into(),
            api_version: "2021-10-01".into(),
        })
    );
    let hubs: Vec<_> = g.iot_hubs.iter().flatten().map(|h| h.as_str()).collect();
    assert_eq!(hubs, ["hub1.example.net", "hub2.example.net"]);

    // The details form shows the definition again, and another policy drops it.
    let mut f = EnrollmentForm::from_group(&g);
    assert_eq!(f.allocation_policy, "custom");
    assert_eq!(
        f.webhook_url,
        "https://alloc.example.net/api/allocate?code=abc"
    );
    assert_eq!(f.api_version, "2021-10-01");
    f.allocation_policy = "hashed".into();
    let updated = update_group(&g, &f).unwrap();
    assert_eq!(updated.custom_allocation_definition, None);
    assert_eq!(updated.allocation_policy, Some(AllocationPolicy::Hashed));
    // A new form preselects the Azure portal's default API version.
    assert_eq!(EnrollmentForm::default().api_version, DEFAULT_API_VERSION);
}

#[test]
fn custom_allocation_needs_a_webhook_url_and_api_version() {
    let errors = custom_group(&[("webhook_url", ""), ("api_version", "")]).unwrap_err();
    let fields: Vec<_> = errors.keys().copied().collect();
    assert_eq!(fields, ["api_version", "webhook_url"]);
    assert!(errors["webhook_url"].contains("webhook URL"), "{errors:?}");

    // The typed values stay in the form shown again.
    let data = FormData::from_pairs(&[
        ("allocation_policy", "custom"),
        ("webhook_url", " https://kept.example.net/x "),
        ("api_version", "2019-03-31"),
    ]);
    let f = EnrollmentForm::from_data(&data);
    assert_eq!(f.webhook_url, "https://kept.example.net/x");
    assert_eq!(f.api_version, "2019-03-31");
}

#[test]
fn custom_allocation_webhook_must_be_an_absolute_http_url() {
    for bad in [
        "ftp://alloc.example.net/x",
        "javascript:alert(1)",
        "alloc.example.net/api",
        "/api/allocate",
        "https://",
        "https:///path",
        "https://user@/x",
        "https://alloc.example.net/a b",
    ] {
        let errors =
            custom_group(&[("webhook_url", bad), ("api_version", "2021-10-01")]).expect_err(bad);
        assert!(errors.contains_key("webhook_url"), "{bad}: {errors:?}");
    }
    let long = format!("https://alloc.example.net/{}", "a".repeat(MAX_WEBHOOK_URL));
    let errors =
        custom_group(&[("webhook_url", &long), ("api_version", "2021-10-01")]).unwrap_err();
    assert!(errors["webhook_url"].contains("longer"), "{errors:?}");
    let errors = custom_group(&[
        ("webhook_url", "http://localhost:7071/api/allocate"),
        ("api_version", "2021-10-01<script>"),
    ])
    .unwrap_err();
    assert_eq!(errors.keys().copied().collect::<Vec<_>>(), ["api_version"]);
    for good in [
        "http://localhost:7071/api/allocate",
        "HTTPS://[::1]:8443/alloc",
        "https://fn.azurewebsites.net/api/alloc?code=k%3D%3D#frag",
    ] {
        custom_group(&[("webhook_url", good), ("api_version", "2021-10-01")]).expect(good);
    }
}
