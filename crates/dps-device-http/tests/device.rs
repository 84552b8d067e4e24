//! The DPS device REST API over a real HTTPS listener (TLS with client certificates, the
//! service API on the same port), as a device sees it: register, poll, status lookup, and
//! every refusal with its precise reason in the registrar's diagnostics.

mod common;

use common::{Credential, Server, HOST, HUB, SCOPE};
use dps_attest::derive_device_key;
use dps_test_util::{DeviceOptions, Signer, TestPki};
use dps_types::{RegistrationId, SymmetricKey};
use serde_json::json;

/// The final answer is `assigned` to the test hub with `device_id`, and says so in the
/// registration state too.
fn assert_assigned(done: &serde_json::Value, id: &str, device_id: &str) {
    assert_eq!(done["status"], "assigned", "{done}");
    let state = &done["registrationState"];
    assert_eq!(state["registrationId"], id, "{done}");
    assert_eq!(state["deviceId"], device_id, "{done}");
    assert_eq!(state["assignedHub"], HUB, "{done}");
    assert_eq!(state["status"], "assigned", "{done}");
    assert_eq!(state["substatus"], "initialAssignment", "{done}");
}

#[tokio::test]
async fn symmetric_key_individual_registers_202_first_then_200_assigned() {
    let server = Server::start().await;
    let id = common::unique("sas");
    let key = server.enroll_sas(&id).await;
    let device = server.device(&id, Credential::Key(&key));

    let answer = device.register(json!({ "registrationId": id })).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["status"], "assigning");
    assert_eq!(
        answer.body["registrationState"]["registrationId"],
        id.as_str()
    );
    let operation_id = answer.body["operationId"].as_str().unwrap().to_owned();
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(
        answer.location,
        Some(format!(
            "https://{HOST}:{}/{SCOPE}/registrations/{id}/register",
            server.addr.port()
        ))
    );

    let (polled, done) = device.register_until_done().await;
    assert_ne!(polled, operation_id, "every register is a new operation");
    assert_eq!(done["operationId"], polled.as_str());
    assert_assigned(&done, &id, &id);
    let record = server
        .store
        .registration(&RegistrationId::parse(&id).unwrap())
        .unwrap();
    assert_eq!(record.state.assigned_hub.as_ref().unwrap().as_str(), HUB);
    assert!(server.attempts(&id).is_empty());
}

#[tokio::test]
async fn symmetric_key_group_device_registers_with_its_derived_key() {
    let server = Server::start().await;
    let group_key = SymmetricKey::generate();
    let group = common::unique("grp");
    server
        .enroll_group(json!({"enrollmentGroupId": group,
            "attestation": {"type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key.expose_base64()}}}))
        .await;
    let id = common::unique("member");
    let key = derive_device_key(&group_key, &id);
    let (_, done) = server
        .device(&id, Credential::Key(&key))
        .register_until_done()
        .await;
    assert_assigned(&done, &id, &id);
    assert_eq!(
        done["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        group.as_str()
    );
}

#[tokio::test]
async fn x509_individual_registers_with_its_certificate() {
    let server = Server::start().await;
    let id = common::unique("x509");
    let cert = server.pki.device_with(
        &id,
        DeviceOptions {
            signer: Signer::SelfSigned,
            ..Default::default()
        },
    );
    server
        .enroll(json!({"registrationId": id, "deviceId": "my-device",
            "attestation": {"type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": cert.cert_pem}}}}}))
        .await;
    let (_, done) = server
        .device(&id, Credential::Certificate(&cert))
        .register_until_done()
        .await;
    assert_assigned(&done, &id, "my-device");
}

#[tokio::test]
async fn x509_group_device_registers_through_an_intermediate() {
    let server = Server::start().await;
    let group = common::unique("x509-grp");
    server
        .enroll_group(json!({"enrollmentGroupId": group,
            "attestation": {"type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": server.pki.root_pem()}}}}}))
        .await;
    let id = common::unique("x509-member");
    // Leaf + intermediate in the handshake; the group holds the root.
    let cert = server.pki.device(&id);
    assert_eq!(cert.chain_der.len(), 2);
    let (_, done) = server
        .device(&id, Credential::Certificate(&cert))
        .register_until_done()
        .await;
    assert_assigned(&done, &id, &id);
    assert_eq!(
        done["registrationState"]["x509"]["enrollmentGroupId"],
        group.as_str()
    );
}

#[tokio::test]
async fn polls_on_the_registering_connection_reuse_its_attestation_others_attest_again() {
    let server = Server::start().await;
    let group = common::unique("x509-gone");
    server
        .enroll_group(json!({"enrollmentGroupId": group,
            "attestation": {"type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": server.pki.root_pem()}}}}}))
        .await;
    let id = common::unique("x509-poller");
    let cert = server.pki.device(&id);
    let device = server.device(&id, Credential::Certificate(&cert));
    let (operation, done) = device.register_until_done().await;
    assert_assigned(&done, &id, &id);

    // The group goes away: the connection that registered still reads its result, a new
    // connection with the same certificate is no longer trusted.
    server
        .registrar
        .delete_group(
            &dps_types::EnrollmentGroupId::parse(&group).unwrap(),
            &dps_store::Precondition::Any,
        )
        .await
        .unwrap();
    let again = device.poll(&operation).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, done);
    let fresh = server
        .device(&id, Credential::Certificate(&cert))
        .poll(&operation)
        .await;
    assert_eq!(fresh.status, 401, "{fresh:?}");
    assert_eq!(server.attempts(&id), [("https".to_owned(), "unknown_ca")]);
}

#[tokio::test]
async fn a_wrong_key_is_401_and_its_reason_is_recorded() {
    let server = Server::start().await;
    let id = common::unique("wrong-key");
    server.enroll_sas(&id).await;
    let answer = server
        .device(&id, Credential::Key(&SymmetricKey::generate()))
        .register(json!({ "registrationId": id }))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.body["errorCode"], 401002);
    assert_eq!(answer.body["message"], "Unauthorized");
    assert_eq!(answer.error_code.as_deref(), Some("InvalidCertificate"));
    assert_eq!(
        server.attempts(&id),
        [("https".to_owned(), "sas_signature_mismatch")]
    );
}

#[tokio::test]
async fn refusals_name_their_precise_reasons() {
    let server = Server::start().await;
    // A certificate of a CA no group holds.
    let stranger = common::unique("stranger");
    let cert = TestPki::unrelated_ca().issue(&stranger, DeviceOptions::default());
    let answer = server
        .device(&stranger, Credential::Certificate(&cert))
        .register(json!({}))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        server.attempts(&stranger),
        [("https".to_owned(), "unknown_ca")]
    );

    // Neither a token nor a certificate.
    let bare = common::unique("bare");
    let answer = server
        .device(&bare, Credential::None)
        .register(json!({}))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        server.attempts(&bare),
        [("https".to_owned(), "no_client_certificate")]
    );

    // Something that is not a SAS token.
    let garbled = common::unique("garbled");
    let answer = server
        .device(&garbled, Credential::Token("Bearer abc"))
        .register(json!({}))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        server.attempts(&garbled),
        [("https".to_owned(), "sas_malformed")]
    );

    // A certificate whose CN is another id than the path's.
    let cn = common::unique("cn");
    let cert = server.pki.device(&cn);
    let other = common::unique("other");
    let answer = server
        .device(&other, Credential::Certificate(&cert))
        .register(json!({}))
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        server.attempts(&other),
        [("https".to_owned(), "cn_mismatch")]
    );
}

#[tokio::test]
async fn operations_are_polled_from_a_new_connection_and_only_by_their_device() {
    let server = Server::start().await;
    let (a, b) = (common::unique("a"), common::unique("b"));
    let (key_a, key_b) = (server.enroll_sas(&a).await, server.enroll_sas(&b).await);
    let answer = server
        .device(&a, Credential::Key(&key_a))
        .register(json!({}))
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let operation = answer.body["operationId"].as_str().unwrap().to_owned();

    // Another client (a new TLS connection) of the same device finds it.
    let again = server.device(&a, Credential::Key(&key_a));
    let mut polled = again.poll(&operation).await;
    for _ in 0..50 {
        if polled.status != 202 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        polled = again.poll(&operation).await;
    }
    assert_eq!(polled.status, 200, "{polled:?}");
    assert_eq!(polled.body["status"], "assigned");

    // Device b, authenticated as itself, does not find a's operation.
    let answer = server
        .device(&b, Credential::Key(&key_b))
        .poll(&operation)
        .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.body["errorCode"], 404001);
    // ...and cannot poll under a's path with its own key.
    let intruder = server.device(&a, Credential::Key(&key_b));
    let answer = intruder.poll(&operation).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        server.attempts(&a),
        [("https".to_owned(), "sas_signature_mismatch")]
    );

    // An operation id nobody issued.
    let answer = again.poll("4.0123456789abcdef.not-an-operation").await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.error_code.as_deref(), Some("NotFound"));
}

#[tokio::test]
async fn the_status_lookup_returns_the_record_once_there_is_one() {
    let server = Server::start().await;
    let id = common::unique("lookup");
    let key = server.enroll_sas(&id).await;
    let device = server.device(&id, Credential::Key(&key));
    let answer = device.status(json!({ "registrationId": id })).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.body["errorCode"], 404203);

    let (_, done) = device.register_until_done().await;
    let answer = device.status(json!({ "registrationId": id })).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, done["registrationState"]);
}

#[tokio::test]
async fn bodies_are_bounded_and_must_be_json() {
    let server = Server::start().await;
    let id = common::unique("big");
    let key = server.enroll_sas(&id).await;
    let device = server.device(&id, Credential::Key(&key));
    let payload = "x".repeat(dps_device_http::MAX_BODY_BYTES);
    let answer = device
        .register(json!({ "registrationId": id, "payload": payload }))
        .await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.error_code.as_deref(), Some("RequestEntityTooLarge"));

    let answer = device
        .raw(
            device
                .http()
                .put(device.url("/register"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    // Nothing was registered, and nothing counts as a failed attempt.
    assert!(server
        .store
        .registration(&RegistrationId::parse(&id).unwrap())
        .is_none());
    assert!(server.attempts(&id).is_empty());
}

#[tokio::test]
async fn a_busy_registrar_answers_429_with_retry_after_and_the_poll_after_runs_it_again() {
    // No registration may run: every one is answered busy.
    let server = Server::with_config(|c| c.max_in_flight = 0).await;
    let id = common::unique("busy");
    let key = server.enroll_sas(&id).await;
    let device = server.device(&id, Credential::Key(&key));
    let answer = device.register(json!({})).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let operation = answer.body["operationId"].as_str().unwrap().to_owned();
    let mut polled = device.poll(&operation).await;
    for _ in 0..50 {
        if polled.status != 202 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        polled = device.poll(&operation).await;
    }
    assert_eq!(polled.status, 429, "{polled:?}");
    assert_eq!(polled.retry_after.as_deref(), Some("2"));
    assert_eq!(polled.error_code.as_deref(), Some("ThrottlingException"));
    // The next poll starts it again (and it is busy again).
    let answer = device.poll(&operation).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["status"], "assigning");
}

#[tokio::test]
async fn unknown_device_paths_and_methods_are_dps_errors() {
    let server = Server::start().await;
    let device = server.device("dev", Credential::None);
    let answer = device
        .raw(device.http().delete(device.url("/register")))
        .await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.error_code.as_deref(), Some("MethodNotAllowed"));
    let answer = device
        .raw(device.http().get(device.url("/elsewhere")))
        .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.body["errorCode"], 404001);
}

#[tokio::test]
async fn the_service_api_on_the_same_listener_is_unaffected_by_client_certificates() {
    let server = Server::start().await;
    let cert = server.pki.device("some-device");
    for credential in [Credential::None, Credential::Certificate(&cert)] {
        let client = server.device("unused", credential);
        let expiry = dps_types::Timestamp::now().unix() + 600;
        let token = dps_attest::SasToken::generate(
            HOST,
            &server.owner.primary_key,
            Some(&server.owner.name),
            expiry,
        );
        let url = format!(
            "https://{HOST}:{}/enrollments/query?api-version=2021-10-01",
            server.addr.port()
        );
        let response = client
            .http()
            .post(&url)
            .header("authorization", token)
            .json(&json!({"query": "*"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // A device's own credentials are nothing to the service API.
        let response = client
            .http()
            .post(&url)
            .json(&json!({"query": "*"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
}
