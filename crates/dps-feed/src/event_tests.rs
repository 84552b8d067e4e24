use super::*;
use serde_json::{json, Value};

struct Ids {
    registration: RegistrationId,
    device: DeviceId,
    hub: HubName,
    other_hub: HubName,
    etag: Etag,
    time: Timestamp,
    twin: Value,
    payload: Value,
}

fn ids() -> Ids {
    Ids {
        registration: RegistrationId::parse("Sensor-01").unwrap(),
        device: DeviceId::parse("Sensor-01").unwrap(),
        hub: HubName::parse("hub-a.example.net").unwrap(),
        other_hub: HubName::parse("hub-b.example.net").unwrap(),
        etag: Etag::parse("\"etag-1\"").unwrap(),
        time: Timestamp::parse("2024-03-01T12:00:00.5Z").unwrap(),
        twin: json!({"tags": {"site": "north"}, "properties": {"desired": {"rate": 5}}}),
        payload: json!({"model": "x1"}),
    }
}

fn keys() -> DeviceAuthentication {
    DeviceAuthentication::SymmetricKey {
        primary: SymmetricKey::from_bytes(&[1u8; 32]).unwrap(),
        secondary: SymmetricKey::from_bytes(&[2u8; 32]).unwrap(),
    }
}

fn assignment<'a>(ids: &'a Ids, authentication: DeviceAuthentication) -> Assignment<'a> {
    Assignment {
        registration_id: &ids.registration,
        device_id: &ids.device,
        hub: &ids.hub,
        previous_hub: None,
        enrollment: EnrollmentRef::Group(EnrollmentGroupId::parse("line-1").unwrap()),
        iot_edge: false,
        initial_twin: Some(&ids.twin),
        payload: Some(&ids.payload),
        substatus: AssignedDeviceSubstatus::InitialAssignment,
        authentication,
        record_etag: &ids.etag,
        time: ids.time,
    }
}

fn body(event: &FeedEvent) -> Value {
    serde_json::from_str(&event.body).unwrap()
}

#[test]
fn assigned_with_symmetric_keys_is_the_documented_document() {
    let ids = ids();
    let event = assigned_event(&assignment(&ids, keys()), true);
    assert_eq!(event.event_type, EventType::Assigned);
    assert_eq!(event.routing_key, "hub-a.example.net.device.assigned");
    assert_eq!(event.hub, ids.hub);
    assert_eq!(event.time_utc, ids.time);
    assert_eq!(
        body(&event),
        json!({
            "schemaVersion": 1,
            "type": "device.assigned",
            "eventId": event.message_id,
            "timeUtc": "2024-03-01T12:00:00.5000000Z",
            "registrationId": "Sensor-01",
            "deviceId": "Sensor-01",
            "iotHubHostName": "hub-a.example.net",
            "enrollment": {"kind": "group", "id": "line-1"},
            "iotEdge": false,
            "substatus": "initialAssignment",
            "initialTwin": {"tags": {"site": "north"}, "properties": {"desired": {"rate": 5}}},
            "payload": {"model": "x1"},
            "authentication": {
                "type": "sas",
                "symmetricKey": {
                    "primaryKey": SymmetricKey::from_bytes(&[1u8; 32]).unwrap().expose_base64(),
                    "secondaryKey": SymmetricKey::from_bytes(&[2u8; 32]).unwrap().expose_base64(),
                }
            }
        })
    );
}

#[test]
fn keys_can_be_left_out() {
    let ids = ids();
    let with = assigned_event(&assignment(&ids, keys()), true);
    let without = assigned_event(&assignment(&ids, keys()), false);
    assert_eq!(body(&without)["authentication"], json!({"type": "sas"}));
    assert!(!without.body.contains(
        &SymmetricKey::from_bytes(&[1u8; 32])
            .unwrap()
            .expose_base64()
    ));
    // Leaving keys out changes the document, not the event's identity.
    assert_eq!(with.message_id, without.message_id);
}

#[test]
fn a_new_hub_makes_a_reassigned_event_and_the_same_hub_does_not() {
    let ids = ids();
    let mut moved = assignment(&ids, DeviceAuthentication::Tpm);
    moved.previous_hub = Some(&ids.other_hub);
    moved.substatus = AssignedDeviceSubstatus::DeviceDataMigrated;
    let event = assigned_event(&moved, true);
    assert_eq!(event.event_type, EventType::Reassigned);
    assert_eq!(event.routing_key, "hub-a.example.net.device.reassigned");
    let doc = body(&event);
    assert_eq!(doc["type"], "device.reassigned");
    assert_eq!(doc["previousIotHubHostName"], "hub-b.example.net");
    assert_eq!(doc["substatus"], "deviceDataMigrated");

    let mut stayed = assignment(&ids, DeviceAuthentication::Tpm);
    stayed.previous_hub = Some(&ids.hub);
    let event = assigned_event(&stayed, true);
    assert_eq!(event.event_type, EventType::Assigned);
    assert!(body(&event).get("previousIotHubHostName").is_none());
}

#[test]
fn x509_and_tpm_authentication() {
    let ids = ids();
    let sha1 = "ab".repeat(20);
    let sha256 = "cd".repeat(32);
    let self_signed = DeviceAuthentication::SelfSigned {
        primary_thumbprint: Thumbprint::parse(&sha1).unwrap(),
        secondary_thumbprint: None,
    };
    let mut individual = assignment(&ids, self_signed);
    individual.enrollment = EnrollmentRef::Individual(ids.registration.clone());
    individual.iot_edge = true;
    let doc = body(&assigned_event(&individual, true));
    assert_eq!(
        doc["authentication"],
        json!({"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": sha1.to_uppercase()}})
    );
    assert_eq!(
        doc["enrollment"],
        json!({"kind": "individual", "id": "Sensor-01"})
    );
    assert_eq!(doc["iotEdge"], true);

    let ca = DeviceAuthentication::CertificateAuthority {
        leaf_thumbprint: Thumbprint::parse(&sha1).unwrap(),
        leaf_sha256_thumbprint: Thumbprint::parse(&sha256).unwrap(),
    };
    let doc = body(&assigned_event(&assignment(&ids, ca), true));
    assert_eq!(
        doc["authentication"],
        json!({"type": "certificateAuthority", "x509Thumbprint": {
            "primaryThumbprint": sha1.to_uppercase(),
            "sha256Thumbprint": sha256.to_uppercase(),
        }})
    );

    let mut tpm = assignment(&ids, DeviceAuthentication::Tpm);
    tpm.initial_twin = None;
    tpm.payload = None;
    let doc = body(&assigned_event(&tpm, false));
    assert_eq!(doc["authentication"], json!({"type": "tpm"}));
    assert!(doc.get("initialTwin").is_none() && doc.get("payload").is_none());
}

#[test]
fn deprovisioned_for_both_reasons() {
    let ids = ids();
    for (reason, text) in [
        (
            DeprovisionReason::RegistrationDeleted,
            "registrationDeleted",
        ),
        (DeprovisionReason::EnrollmentDeleted, "enrollmentDeleted"),
    ] {
        let event = deprovisioned_event(&Deprovision {
            registration_id: &ids.registration,
            device_id: &ids.device,
            hub: &ids.hub,
            enrollment: EnrollmentRef::Individual(ids.registration.clone()),
            record_etag: &ids.etag,
            reason,
            time: ids.time,
        });
        assert_eq!(event.event_type, EventType::Deprovisioned);
        assert_eq!(event.routing_key, "hub-a.example.net.device.deprovisioned");
        assert_eq!(
            body(&event),
            json!({
                "schemaVersion": 1,
                "type": "device.deprovisioned",
                "eventId": event.message_id,
                "timeUtc": "2024-03-01T12:00:00.5000000Z",
                "registrationId": "Sensor-01",
                "deviceId": "Sensor-01",
                "iotHubHostName": "hub-a.example.net",
                "enrollment": {"kind": "individual", "id": "Sensor-01"},
                "reason": text,
            })
        );
    }
}

#[test]
fn message_ids_are_stable_and_distinct() {
    let ids = ids();
    let id = message_id(&ids.registration, &ids.etag, EventType::Assigned);
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // The same inputs give the same id, whatever the letter case of the registration id.
    let lower = RegistrationId::parse("sensor-01").unwrap();
    assert_eq!(message_id(&lower, &ids.etag, EventType::Assigned), id);
    assert_eq!(
        assigned_event(&assignment(&ids, keys()), true).message_id,
        id
    );
    // A fixed value: the id must not change between releases, or consumers would see
    // re-publications from an older node as new events.
    assert_eq!(
        message_id(
            &RegistrationId::parse("a").unwrap(),
            &Etag::parse("e").unwrap(),
            EventType::Assigned
        ),
        "7da7f8d8083529cf4fec88c6ee1926b6"
    );
    let other_etag = Etag::parse("\"etag-2\"").unwrap();
    let others = [
        message_id(&ids.registration, &other_etag, EventType::Assigned),
        message_id(&ids.registration, &ids.etag, EventType::Reassigned),
        message_id(&ids.registration, &ids.etag, EventType::Deprovisioned),
        message_id(
            &RegistrationId::parse("sensor-02").unwrap(),
            &ids.etag,
            EventType::Assigned,
        ),
    ];
    for other in &others {
        assert_ne!(other, &id);
    }
}

#[test]
fn events_round_trip_through_the_outbox_form() {
    let ids = ids();
    let event = assigned_event(&assignment(&ids, keys()), true);
    let stored = serde_json::to_vec(&event).unwrap();
    let back: FeedEvent = serde_json::from_slice(&stored).unwrap();
    assert_eq!(back, event);
    let doc: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(doc["eventType"], "device.assigned");
}

#[test]
fn thumbprints() {
    let t = Thumbprint::parse(&format!("{}aB", "Ab:".repeat(19))).unwrap();
    assert_eq!(t.as_str(), "AB".repeat(20));
    assert!(Thumbprint::parse(&"a".repeat(64)).is_ok());
    assert!(Thumbprint::parse(&"a".repeat(41)).is_err());
    assert!(Thumbprint::parse(&"g".repeat(40)).is_err());
    assert!(Thumbprint::parse("").is_err());
}
