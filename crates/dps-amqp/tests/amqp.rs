//! The AMQP frontend end to end, with fe2o3-amqp's client as the device: the registrations
//! the SDKs do, and the wire cases they never send. Every refusal or close is followed by a
//! fresh device that still registers.

mod common;

use std::time::Duration;

use common::*;
use dps_amqp::{AmqpLimits, MAX_REFUSED_LINKS, SASL_HEADER};
use dps_test_util::{DeviceOptions, TestCa};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{Body, Data};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};
use fe2o3_amqp::{Receiver, Sender, Session};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_symmetric_key_device_registers_over_plain_and_its_record_says_amqp() {
    let server = Server::start().await;
    let id = unique("sas");
    let key = server.enroll_sas(&id).await;
    let mut device = server.sas_device(&id, &key).await;

    let Reply::Answer { body, retry_after } = device.register().await else {
        panic!("the register was rejected");
    };
    assert_eq!(body["status"], "assigning", "{body}");
    assert_eq!(body["registrationState"]["registrationId"], id.as_str());
    assert_eq!(retry_after.as_deref(), Some("1"));
    let operation_id = body["operationId"].as_str().unwrap().to_owned();

    let state = loop {
        match device.poll(&operation_id).await {
            Reply::Answer { body, .. } if body["status"] == "assigning" => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Reply::Answer { body, .. } => break body,
            other => panic!("poll: {other:?}"),
        }
    };
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["operationId"], operation_id.as_str());
    assert_eq!(state["registrationState"]["assignedHub"], HUB);
    assert_eq!(state["registrationState"]["deviceId"], id.as_str());
    device.close().await;
    assert!(server.store.cache().registration(&id).is_some());
}

#[tokio::test]
async fn an_x509_device_registers_without_sasl_and_with_anonymous_sasl() {
    let server = Server::start().await;
    for profile in [None, Some(SaslProfile::Anonymous)] {
        let id = unique("x509");
        let cert = server.pki.device(&id);
        server
            .enroll(json!({"registrationId": id, "attestation": {"type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": cert.cert_pem}}}}}))
            .await;
        let connection = server.connection(Some(&cert), profile.clone()).await;
        let mut device = Device::attach(connection, &address(&id)).await;
        let state = device.register_until_done().await;
        assert_eq!(state["status"], "assigned", "{profile:?}: {state}");
        assert_eq!(state["registrationState"]["deviceId"], id.as_str());
        device.close().await;
    }
}

#[tokio::test]
async fn an_x509_group_device_registers_with_a_chain_through_an_intermediate() {
    let server = Server::start().await;
    let group = unique("group");
    server
        .enroll_group(
            json!({"enrollmentGroupId": group, "attestation": {"type": "x509",
            "x509": {"signingCertificates": {"primary": {"certificate": server.pki.root_pem()}}}}}),
        )
        .await;
    let id = unique("member");
    let cert = server.pki.device(&id);
    let connection = server.connection(Some(&cert), None).await;
    let mut device = Device::attach(connection, &address(&id)).await;
    let state = device.register_until_done().await;
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["registrationState"]["deviceId"], id.as_str());
    device.close().await;
}

#[tokio::test]
async fn a_wrong_key_is_closed_with_unauthorized_access_and_the_reason_is_recorded() {
    let server = Server::start().await;
    let id = unique("wrong-key");
    server.enroll_sas(&id).await;
    let mut connection = server
        .sas_connection(&id, &dps_types::SymmetricKey::generate())
        .await;
    let error = closed_with(&mut connection)
        .await
        .expect("closed with an error");
    assert!(error.contains("UnauthorizedAccess"), "{error}");
    assert!(error.contains("401002"), "{error}");
    assert_eq!(
        server.refusals(&id),
        [("sas_signature_mismatch", "amqp".to_owned())]
    );
    assert_eq!(server.stats().not_authorized, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn an_unknown_certificate_gets_its_request_rejected_as_unauthorized_and_is_closed() {
    let server = Server::start().await;
    let id = unique("stranger");
    let cert = TestCa::root("Nobody's CA").issue(&id, DeviceOptions::default());
    let connection = server.connection(Some(&cert), None).await;
    let mut device = Device::attach(connection, &address(&id)).await;
    let Reply::Rejected {
        condition,
        description,
        ..
    } = device.register().await
    else {
        panic!("an unknown certificate was answered");
    };
    assert!(condition.contains("UnauthorizedAccess"), "{condition}");
    assert_eq!(description["errorCode"], 401002, "{description}");
    let error = closed_with(&mut device.connection)
        .await
        .expect("closed with an error");
    assert!(error.contains("UnauthorizedAccess"), "{error}");
    let refusals = server.refusals(&id);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].1, "amqp");
    assert_eq!(server.stats().not_authorized, 1);
    assert_eq!(server.stats().registrations_started, 0);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_device_holding_its_two_connections_is_refused_a_third_with_resource_limit_exceeded() {
    let server = Server::start().await;
    // Symmetric key: refused at open, with a CLOSE.
    let id = unique("capped-sas");
    let key = server.enroll_sas(&id).await;
    let first = server.sas_device(&id, &key).await;
    let second = server.sas_device(&id, &key).await;
    let mut third = server.sas_connection(&id, &key).await;
    let error = closed_with(&mut third).await.expect("closed with an error");
    assert!(error.contains("ResourceLimitExceeded"), "{error}");
    assert!(error.contains("429001"), "{error}");
    // X.509: refused on its first request (its identity is known only once a link names it).
    let x509 = unique("capped-x509");
    let cert = server.pki.device(&x509);
    server
        .enroll(
            json!({"registrationId": x509, "attestation": {"type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": cert.cert_pem}}}}}),
        )
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            Device::attach(server.connection(Some(&cert), None).await, &address(&x509)).await,
        );
    }
    let mut over =
        Device::attach(server.connection(Some(&cert), None).await, &address(&x509)).await;
    let Reply::Rejected {
        condition,
        description,
        ..
    } = over.register().await
    else {
        panic!("a device over its connection cap was answered");
    };
    assert!(condition.contains("ResourceLimitExceeded"), "{condition}");
    assert_eq!(description["errorCode"], 429001, "{description}");
    over.close().await;
    assert_eq!(server.stats().device_limit, 2);
    assert!(server.refusals(&id).is_empty() && server.refusals(&x509).is_empty());

    // Once one of its connections ends, the device connects and registers again; the held
    // connections were never disturbed.
    first.close().await;
    wait_until("the closed connection frees its place", || {
        server.stats().listener.active == 3
    })
    .await;
    let mut again = server.sas_device(&id, &key).await;
    assert_eq!(again.register_until_done().await["status"], "assigned");
    for mut device in held.into_iter().chain([second]) {
        assert_eq!(device.register_until_done().await["status"], "assigned");
        device.close().await;
    }
    again.close().await;
}

#[tokio::test]
async fn a_link_on_a_wrong_or_foreign_address_is_detached_and_the_right_ones_still_work() {
    let server = Server::start().await;
    let id = unique("addr");
    let key = server.enroll_sas(&id).await;
    let mut connection = server.sas_connection(&id, &key).await;
    let mut session = Session::begin(&mut connection).await.unwrap();
    for (name, address) in [
        ("bad-shape", "not/a/device/path".to_owned()),
        ("other-scope", "0ne00000FFF/registrations/x".to_owned()),
        ("other-device", common::address("someone-else")),
    ] {
        let mut sender = Sender::attach(&mut session, name, address.as_str())
            .await
            .unwrap();
        let sent = tokio::time::timeout(ANSWER_TIMEOUT, sender.send(register_message(Some("c"))))
            .await
            .expect("the send ends in time");
        assert!(
            sent.is_err(),
            "{name}: a request went through a refused link"
        );
    }
    let receiver = Receiver::attach(&mut session, "receiver", address(&id))
        .await
        .unwrap();
    let sender = Sender::attach(&mut session, "sender", address(&id))
        .await
        .unwrap();
    let mut device = Device {
        connection,
        session,
        sender,
        receiver,
    };
    let state = device.register_until_done().await;
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(server.stats().refused_links, 3);
    device.close().await;
}

#[tokio::test]
async fn too_many_refused_links_close_the_connection() {
    let server = Server::start().await;
    let id = unique("probe");
    let key = server.enroll_sas(&id).await;
    let mut connection = server.sas_connection(&id, &key).await;
    let mut session = Session::begin(&mut connection).await.unwrap();
    for i in 0..MAX_REFUSED_LINKS {
        // Each attach is answered, then detached; the last one is followed by the close.
        let _ = Sender::attach(&mut session, format!("l{i}"), "nowhere").await;
    }
    let error = closed_with(&mut connection)
        .await
        .expect("closed with an error");
    assert!(error.contains("ResourceLimitExceeded"), "{error}");
    server.assert_still_serving().await;
}

#[tokio::test]
async fn malformed_requests_are_rejected_with_dps_error_json_and_the_link_stays_up() {
    let server = Server::start().await;
    let id = unique("bad-req");
    let key = server.enroll_sas(&id).await;
    let mut device = server.sas_device(&id, &key).await;
    let cases = [
        ("no correlation id", register_message(None)),
        (
            "unknown operation",
            request_message(
                Some("c"),
                &[("iotdps-operation-type", SimpleValue::from("iotdps-reboot"))],
                Body::Empty,
            ),
        ),
        (
            "no operation type",
            request_message(Some("c"), &[], Body::Empty),
        ),
        (
            "bad body",
            request_message(
                Some("c"),
                &[(
                    "iotdps-operation-type",
                    SimpleValue::from("iotdps-register"),
                )],
                Body::Data(vec![Data(Binary::from(b"{oops".to_vec()))].into()),
            ),
        ),
    ];
    for (what, message) in cases {
        let Reply::Rejected {
            condition,
            description,
            ..
        } = device.request(message).await
        else {
            panic!("{what}: accepted");
        };
        assert!(condition.contains("argument-error"), "{what}: {condition}");
        assert_eq!(description["errorCode"], 400001, "{what}: {description}");
    }
    let Reply::Rejected {
        condition,
        description,
        ..
    } = device.poll("4.0000000000000000.unknown").await
    else {
        panic!("an unknown operation was answered");
    };
    assert!(condition.contains("NotFound"), "{condition}");
    assert_eq!(
        description["errorCode"].as_i64().map(|c| c / 1000),
        Some(404)
    );
    assert_eq!(server.stats().bad_requests, 4);
    let state = device.register_until_done().await;
    assert_eq!(state["status"], "assigned", "{state}");
    device.close().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_against_the_announced_maximum() {
    let server = Server::start().await;
    let id = unique("big");
    let key = server.enroll_sas(&id).await;
    let mut device = server.sas_device(&id, &key).await;
    let mut body = b"{\"payload\":\"".to_vec();
    body.extend(std::iter::repeat_n(
        b'a',
        dps_amqp::DEFAULT_MAX_MESSAGE_SIZE,
    ));
    body.extend(b"\"}");
    let message = request_message(
        Some("c"),
        &[(
            "iotdps-operation-type",
            SimpleValue::from("iotdps-register"),
        )],
        Body::Data(vec![Data(Binary::from(body))].into()),
    );
    // We announce DPS's 96 KiB at attach; fe2o3's sender refuses a larger message before
    // sending it (its receiver, ours, detaches a link that sends one anyway with
    // `amqp:link:message-size-exceeded`, which fe2o3's own tests cover).
    let sent = tokio::time::timeout(ANSWER_TIMEOUT, device.sender.send(message))
        .await
        .expect("the send ends in time");
    assert!(sent.is_err(), "an oversized message was accepted: {sent:?}");
    assert_eq!(
        device.sender.max_message_size(),
        Some(dps_amqp::DEFAULT_MAX_MESSAGE_SIZE as u64)
    );
    device.close().await;
    server.assert_still_serving().await;
}

#[tokio::test]
async fn garbage_after_the_protocol_header_closes_that_connection_only() {
    let server = Server::start().await;
    for header in [SASL_HEADER, dps_amqp::AMQP_HEADER] {
        let mut tls = server.tls(None).await;
        tls.write_all(&header).await.unwrap();
        tls.write_all(&[0xff; 64]).await.unwrap();
        tls.flush().await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, tls.read_to_end(&mut sink))
            .await
            .expect("the server closes in time");
        // A TLS close or a reset: either ends the connection.
        drop(read);
        assert!(sink.len() < 1024, "{} bytes back", sink.len());
    }
    assert!(server.stats().protocol_errors + server.stats().sasl_failures >= 2);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_frame_shorter_than_its_header_is_a_protocol_error_not_a_panic() {
    // fe2o3's decoders read a frame's 4 header bytes after its size without checking that
    // they are there: a size of 4 to 7 panicked the connection task.
    let server = Server::start().await;
    for (header, size) in [(SASL_HEADER, 4u32), (dps_amqp::AMQP_HEADER, 7)] {
        let mut tls = server.tls(None).await;
        tls.write_all(&header).await.unwrap();
        tls.write_all(&size.to_be_bytes()).await.unwrap();
        tls.write_all(&[2, 0, 0][..size as usize - 4])
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, tls.read_to_end(&mut sink))
            .await
            .expect("the server closes in time");
        drop(read);
    }
    // Counted as a protocol error: the connection task ended with an error, not a panic (a
    // panicking task counts nothing). The count follows the close, so wait for it.
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while server.stats().protocol_errors < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats().protocol_errors, 2);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_wrong_protocol_header_gets_ours_and_a_close() {
    let server = Server::start().await;
    let mut tls = server.tls(None).await;
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, tls.read_to_end(&mut answer))
        .await
        .expect("the server closes in time");
    assert_eq!(answer, SASL_HEADER);
    assert_eq!(server.stats().bad_headers, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_sasl_is_closed_at_the_open_timeout() {
    let server = Server::with_limits(AmqpLimits {
        open_timeout: Duration::from_millis(500),
        ..AmqpLimits::default()
    })
    .await;
    let mut tls = server.tls(None).await;
    tls.write_all(&SASL_HEADER).await.unwrap();
    let mut got = Vec::new();
    // Our header and the mechanisms, then the close once the SASL init never comes.
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, tls.read_to_end(&mut got))
        .await
        .expect("the server closes in time");
    assert!(got.starts_with(&SASL_HEADER), "{got:?}");
    assert!(
        got.windows(5).any(|w| w == b"PLAIN"),
        "the mechanisms offer PLAIN: {got:?}"
    );
    assert_eq!(server.stats().open_timeouts, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_plain_username_of_another_scope_fails_sasl() {
    let server = Server::start().await;
    let tls = server.tls(None).await;
    let opened = fe2o3_amqp::Connection::builder()
        .container_id("t")
        .sasl_profile(SaslProfile::Plain {
            username: "0ne00000FFF/registrations/x".into(),
            password: "SharedAccessSignature sr=x&sig=y&se=1".into(),
        })
        .open_with_stream(tls)
        .await;
    assert!(opened.is_err(), "a foreign scope opened a connection");
    assert_eq!(server.stats().sasl_failures, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn shutdown_drains_and_serve_returns() {
    let mut server = Server::start().await;
    let id = unique("drain");
    let key = server.enroll_sas(&id).await;
    let mut device = server.sas_device(&id, &key).await;
    let registered = device.register_until_done().await;
    assert_eq!(registered["status"], "assigned");
    server.stop().await;
    let error = closed_with(&mut device.connection).await;
    assert!(
        error
            .as_deref()
            .is_none_or(|e| e.contains("ConnectionForced")),
        "{error:?}"
    );
}
