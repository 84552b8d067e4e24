//! Round trips of bodies shaped like the `x-ms-examples` of the 2021-10-01 service swagger
//! (`IndividualEnrollment_CreateOrUpdate_MinimumSet_Gen`, `DeviceRegistrationState_Get_MaximumSet_Gen`,
//! `*_RunBulkOperation_*`, ...). The generated "maximum set" examples fill every member with
//! random strings (keys that are not base64, thumbprints like `"ei"`); those must be refused
//! with a message that names the problem, while every well-formed body survives a round trip.

use dps_types::{
    BulkEnrollmentGroupOperationResult, BulkEnrollmentOperationResult, DeviceRegistrationState,
    EnrollmentGroup, IndividualEnrollment, QuerySpecification, Timestamp,
};
use serde_json::{json, Value};

/// Parses `body` as `T` and serializes it again.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(body: &Value) -> Value {
    let parsed: T = serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"));
    serde_json::to_value(parsed).unwrap()
}

#[test]
fn minimum_set_enrollments_round_trip_exactly() {
    let individual = json!({"attestation": {"type": "none"}, "registrationId": "kz"});
    assert_eq!(round_trip::<IndividualEnrollment>(&individual), individual);
    let group =
        json!({"attestation": {"type": "none"}, "enrollmentGroupId": "ttxioksxhjlzkrnamknqbiw"});
    assert_eq!(round_trip::<EnrollmentGroup>(&group), group);
    let query = json!({"query": "SELECT * FROM enrollments"});
    assert_eq!(round_trip::<QuerySpecification>(&query), query);
}

#[test]
fn maximum_set_registration_state_round_trips() {
    let state = json!({
        "registrationId": "czvnrxvbka",
        "createdDateTimeUtc": "2025-10-01T17:42:04.759Z",
        "assignedHub": "oasugtinnefgfklhldjhibq",
        "deviceId": "ttnhaugyyh",
        "status": "unassigned",
        "substatus": "initialAssignment",
        "errorCode": 2,
        "errorMessage": "ufqpjjmbiphiynoijjbocvl",
        "lastUpdatedDateTimeUtc": "2025-10-01T17:42:04.759Z",
        "etag": "ctquvtjyhnomcmtddscxwjk",
        "payload": {}
    });
    let mut out = round_trip::<DeviceRegistrationState>(&state);
    // Times come back in DPS's seven-digit form; the instant is the same.
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc"] {
        let sent = Timestamp::parse(state[field].as_str().unwrap()).unwrap();
        let back = Timestamp::parse(out[field].as_str().unwrap()).unwrap();
        assert_eq!(sent, back, "{field}");
        out[field] = state[field].clone();
    }
    assert_eq!(out, state);
}

#[test]
fn bulk_results_round_trip_with_and_without_errors() {
    let ok: BulkEnrollmentOperationResult =
        serde_json::from_value(json!({"isSuccessful": true})).unwrap();
    assert!(ok.is_successful && ok.errors.is_empty());
    let failed = json!({"errors": [{"registrationId": "kz", "errorCode": 409201, "errorStatus": "Enrollment already exists."}],
                        "isSuccessful": false});
    assert_eq!(round_trip::<BulkEnrollmentOperationResult>(&failed), failed);
    let group_failed = json!({"errors": [{"enrollmentGroupId": "g", "errorCode": 409202, "errorStatus": "EnrollmentGroup already exists."}],
                              "isSuccessful": false});
    assert_eq!(
        round_trip::<BulkEnrollmentGroupOperationResult>(&group_failed),
        group_failed
    );
}

#[test]
fn a_full_enrollment_with_valid_values_round_trips_exactly() {
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let twin = json!({"count": 16, "key2428": {}, "metadata": {"lastUpdated": "2025-10-01T17:42:04.76Z", "lastUpdatedVersion": 19}, "version": 9});
    let body = json!({
        "registrationId": "kz",
        "deviceId": "wfgzhrgpvmwddrknnmcggbae",
        "optionalDeviceInformation": twin,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
        "capabilities": {"iotEdge": true},
        "iotHubHostName": "vtewercilhukfboi.azure-devices.net",
        "initialTwin": {"tags": twin, "properties": {"desired": twin}},
        "etag": "ngtrmhcikthymtknva",
        "provisioningStatus": "enabled",
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        "createdDateTimeUtc": "2025-10-01T17:42:04.7600000Z",
        "lastUpdatedDateTimeUtc": "2025-10-01T17:42:04.7600000Z",
        "allocationPolicy": "hashed",
        "iotHubs": ["lwgwrfdherfrbowfdbrdhvnragwrs.azure-devices.net"],
        "customAllocationDefinition": {"webhookUrl": "https://example.net/api/allocate", "apiVersion": "2021-10-01"}
    });
    assert_eq!(round_trip::<IndividualEnrollment>(&body), body);
}

#[test]
fn generated_maximum_set_values_are_refused_with_the_reason() {
    // As in IndividualEnrollment_CreateOrUpdate_MaximumSet_Gen: random text where keys go.
    let body = json!({
        "registrationId": "kz",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "tdoshkmlo"}}
    });
    let err = serde_json::from_value::<IndividualEnrollment>(body)
        .unwrap_err()
        .to_string();
    assert!(err.contains("symmetric key is not valid base64"), "{err}");
    let body = json!({"registrationId": "kz", "attestation": {"type": "tpm", "tpm": {"endorsementKey": "naoofgjbxiulcitlysusxdvagyucgn"}}});
    let err = serde_json::from_value::<IndividualEnrollment>(body)
        .unwrap_err()
        .to_string();
    assert!(err.contains("TPM endorsement key"), "{err}");
}
