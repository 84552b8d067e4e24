//! The MQTT frontend over real TLS on 127.0.0.1: registrations as the DPS SDKs do them, and
//! misbehaving or unauthorized devices, each of which must leave the server serving others.

mod common;

use std::time::Duration;

use common::{sas_token, unix_now, username, Server, HUB};
use dps_mqtt::MqttLimits;
use dps_test_util::{DeviceOptions, TestPki, Validity};
use dps_types::SymmetricKey;
use serde_json::json;

#[tokio::test]
async fn symmetric_key_individual_registers_then_polls_assigned() {
    let server = Server::start().await;
    let key = server.enroll_sas("sym-dev-1", json!({})).await;
    let mut device = server.sas_device("sym-dev-1", &key).await;

    let registered = device
        .register(
            "3f2a",
            json!({"payload": null, "registrationId": "sym-dev-1"}),
        )
        .await;
    assert_eq!(
        registered.topic,
        "$dps/registrations/res/202/?$rid=3f2a&retry-after=1"
    );
    let operation_id = registered.body["operationId"].as_str().unwrap().to_owned();
    assert_eq!(
        registered.body["registrationState"]["registrationId"],
        "sym-dev-1"
    );

    let mut polled = device.poll("7", &operation_id).await;
    while polled.status == 202 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        polled = device.poll("7", &operation_id).await;
    }
    assert_eq!(polled.topic, "$dps/registrations/res/200/?$rid=7");
    let state = &polled.body["registrationState"];
    assert_eq!(polled.body["status"], "assigned");
    assert_eq!(state["assignedHub"], HUB);
    assert_eq!(state["deviceId"], "sym-dev-1");
    assert_eq!(state["registrationId"], "sym-dev-1");
    assert_eq!(state["substatus"], "initialAssignment");

    // An unknown operation is a 404 with ProvisioningServiceErrorDetails.
    let unknown = device.poll("8", "4.0000000000000000.nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["errorCode"].as_i64().unwrap() / 1000, 404);

    let stats = server.stats();
    assert_eq!(stats.registrations_started, 1);
    assert_eq!(stats.listener.active, 1);
}

#[tokio::test]
async fn symmetric_key_group_device_with_a_derived_key() {
    let server = Server::start().await;
    let group_key = SymmetricKey::generate();
    server
        .enroll_group(json!({"enrollmentGroupId": "sym-group",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key.expose_base64()}}}))
        .await;
    let derived = dps_attest::derive_device_key(&group_key, "grp-sensor-9");
    let mut device = server.sas_device("grp-sensor-9", &derived).await;
    let body = device
        .register_until_done(json!({"registrationId": "grp-sensor-9"}))
        .await;
    assert_eq!(body["status"], "assigned");
    assert_eq!(body["registrationState"]["deviceId"], "grp-sensor-9");
    assert_eq!(body["registrationState"]["assignedHub"], HUB);
    assert_eq!(
        body["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        "sym-group"
    );

    // The group key itself is not the device's key.
    let mut wrong = server.tls(None).await;
    let token = sas_token("grp-sensor-10", &group_key, unix_now() + 3600);
    assert_eq!(
        wrong
            .connect("grp-sensor-10", &username("grp-sensor-10"), Some(&token))
            .await,
        Some(5)
    );
    wrong.assert_closed().await;
}

#[tokio::test]
async fn x509_device_through_an_intermediate_group() {
    let server = Server::start().await;
    server
        .enroll_group(json!({"enrollmentGroupId": "x509-group",
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": server.pki.intermediate_pem()}}}}}))
        .await;
    let cert = server.pki.device("x509-dev-1");
    let mut device = server.tls(Some(&cert)).await;
    // No password: X.509 devices authenticate with the TLS client certificate.
    assert_eq!(
        device
            .connect("x509-dev-1", &username("x509-dev-1"), None)
            .await,
        Some(0)
    );
    device.subscribe().await;
    let body = device
        .register_until_done(json!({"registrationId": "x509-dev-1"}))
        .await;
    assert_eq!(body["status"], "assigned");
    assert_eq!(body["registrationState"]["deviceId"], "x509-dev-1");
    assert_eq!(
        body["registrationState"]["x509"]["enrollmentGroupId"],
        "x509-group"
    );
}

#[tokio::test]
async fn refused_credentials_get_connack_5_and_the_server_keeps_serving() {
    let server = Server::start().await;
    server
        .enroll_group(json!({"enrollmentGroupId": "x509-group",
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": server.pki.intermediate_pem()}}}}}))
        .await;
    let key = server.enroll_sas("sym-dev-2", json!({})).await;

    // Wrong key.
    let wrong = sas_token("sym-dev-2", &SymmetricKey::generate(), unix_now() + 3600);
    assert_eq!(
        server
            .connack(None, "sym-dev-2", &username("sym-dev-2"), Some(&wrong))
            .await,
        Some(5)
    );
    // Expired token (beyond the tolerated clock skew).
    let expired = sas_token("sym-dev-2", &key, unix_now() - 3600);
    assert_eq!(
        server
            .connack(None, "sym-dev-2", &username("sym-dev-2"), Some(&expired))
            .await,
        Some(5)
    );
    // A certificate from a CA no group knows.
    let stranger = TestPki::new().device("x509-dev-2");
    assert_eq!(
        server
            .connack(Some(&stranger), "x509-dev-2", &username("x509-dev-2"), None)
            .await,
        Some(5)
    );
    // A good certificate whose CN is not the id the device claims.
    let cert = server.pki.device("x509-dev-3");
    assert_eq!(
        server
            .connack(Some(&cert), "x509-dev-4", &username("x509-dev-4"), None)
            .await,
        Some(5)
    );
    // An expired certificate.
    let expired = server.pki.device_with(
        "x509-dev-5",
        DeviceOptions {
            validity: Validity::Expired,
            ..DeviceOptions::default()
        },
    );
    assert_eq!(
        server
            .connack(Some(&expired), "x509-dev-5", &username("x509-dev-5"), None)
            .await,
        Some(5)
    );
    // Neither a password nor a certificate.
    assert_eq!(
        server
            .connack(None, "x509-dev-6", &username("x509-dev-6"), None)
            .await,
        Some(5)
    );
    // Client id that is not the username's registration id; a username of another scope.
    let token = sas_token("sym-dev-2", &key, unix_now() + 3600);
    assert_eq!(
        server
            .connack(None, "someone-else", &username("sym-dev-2"), Some(&token))
            .await,
        Some(2)
    );
    let other_scope = "0ne99999999/registrations/sym-dev-2/api-version=2019-03-31";
    assert_eq!(
        server
            .connack(None, "sym-dev-2", other_scope, Some(&token))
            .await,
        Some(5)
    );

    // Each refusal was recorded with its precise reason (the device only saw CONNACK 5).
    let mut sym = server.refusals("sym-dev-2");
    sym.sort_unstable();
    assert_eq!(sym, ["sas_expired", "sas_signature_mismatch"]);
    assert_eq!(server.refusals("x509-dev-2"), ["unknown_ca"]);
    assert_eq!(server.refusals("x509-dev-4"), ["cn_mismatch"]);
    assert_eq!(server.refusals("x509-dev-5"), ["certificate_expired"]);
    assert_eq!(server.refusals("x509-dev-6"), ["no_client_certificate"]);

    let stats = server.stats();
    assert_eq!(stats.not_authorized, 6, "{stats:?}");
    assert_eq!(stats.bad_connects, 2, "{stats:?}");
    server.assert_still_serving().await;
}

#[tokio::test]
async fn disabled_enrollment_polls_to_disabled() {
    let server = Server::start().await;
    let key = server
        .enroll_sas("sym-off", json!({"provisioningStatus": "disabled"}))
        .await;
    let mut device = server.sas_device("sym-off", &key).await;
    let body = device
        .register_until_done(json!({"registrationId": "sym-off"}))
        .await;
    assert_eq!(body["status"], "disabled");
    assert_eq!(body["registrationState"]["registrationId"], "sym-off");
}

#[tokio::test]
async fn malformed_register_body_is_answered_400() {
    let server = Server::start().await;
    let key = server.enroll_sas("sym-dev-7", json!({})).await;
    let mut device = server.sas_device("sym-dev-7", &key).await;
    let topic = "$dps/registrations/PUT/iotdps-register/?$rid=1";
    let answer = device.request(topic, b"{\"registrationId\": ").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["errorCode"], 400001);
    // The connection stays usable.
    let body = device
        .register_until_done(json!({"registrationId": "sym-dev-7"}))
        .await;
    assert_eq!(body["status"], "assigned");
}

#[tokio::test]
async fn broken_peers_are_closed_alone() {
    let server = Server::start().await;
    let key = server.enroll_sas("sym-dev-8", json!({})).await;

    // Garbage after the TLS handshake.
    let mut garbage = server.tls(None).await;
    garbage
        .send_raw(b"\x16\x03\x01\x02\x00\x01 this is not MQTT")
        .await;
    garbage.assert_closed().await;

    // Not even TLS.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut plain,
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
    )
    .await
    .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut sink),
    )
    .await
    .expect("the server closes a non-TLS connection");

    // A packet over 96 KiB after a good CONNECT: the header alone gets the connection closed.
    let mut big = server.sas_device("sym-dev-8", &key).await;
    let size = 200 * 1024;
    let mut header = vec![0x32];
    let mut len = size;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        header.push(byte);
        if len == 0 {
            break;
        }
    }
    header.extend_from_slice(&[0u8; 1024]);
    big.send_raw(&header).await;
    big.assert_closed().await;

    // A client that never sends CONNECT is closed after the connect timeout (500 ms here).
    let mut silent = server.tls(None).await;
    let started = tokio::time::Instant::now();
    silent.assert_closed().await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // An unknown topic closes the connection: DPS is not a broker.
    let mut stray = server.sas_device("sym-dev-8", &key).await;
    let publish =
        dps_mqtt::codec::build_publish(Some(3), b"devices/sym-dev-8/messages/events/", b"{}")
            .unwrap();
    stray
        .send(rumqttd::protocol::Packet::Publish(publish, None))
        .await;
    stray.assert_closed().await;

    let stats = server.stats();
    assert_eq!(stats.malformed_packets, 1, "{stats:?}");
    assert_eq!(stats.tls_failures, 1, "{stats:?}");
    assert_eq!(stats.listener.tls_failures, 1, "{stats:?}");
    assert_eq!(
        stats.listener.tls_handshakes + stats.listener.tls_failures,
        stats.listener.accepted,
        "every admitted connection made or failed its handshake: {stats:?}"
    );
    assert_eq!(stats.oversized_packets, 1, "{stats:?}");
    assert_eq!(stats.connect_timeouts, 1, "{stats:?}");
    assert_eq!(stats.protocol_violations, 1, "{stats:?}");
    server.assert_still_serving().await;
}

#[tokio::test]
async fn load_is_shed_before_tls_and_shutdown_drains() {
    let mut server = Server::with_limits(MqttLimits {
        max_connections: 1,
        ..MqttLimits::default()
    })
    .await;
    let key = server.enroll_sas("sym-dev-9", json!({})).await;
    let mut holder = server.sas_device("sym-dev-9", &key).await;

    // The only slot is taken: the next TCP connection is closed before any TLS byte.
    let mut shed = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut shed, &mut first),
    )
    .await
    .expect("a shed connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(server.stats().listener.shed_connection_limit, 1);

    // The holder still works; once it leaves, the slot is free again.
    let body = holder
        .register_until_done(json!({"registrationId": "sym-dev-9"}))
        .await;
    assert_eq!(body["status"], "assigned");
    holder
        .send(rumqttd::protocol::Packet::Disconnect(
            rumqttd::protocol::Disconnect {
                reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await;
    holder.assert_closed().await;
    for _ in 0..500 {
        if server.stats().listener.active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = server.sas_device("sym-dev-9", &key).await;

    // Shutdown: the open connection may finish (it closes itself here), then serve returns.
    let stop = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        again
            .send(rumqttd::protocol::Packet::Disconnect(
                rumqttd::protocol::Disconnect {
                    reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ))
            .await;
        again.assert_closed().await;
    };
    tokio::join!(server.stop(), stop);
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_busy_registrar_is_answered_429_on_poll() {
    // A registrar with no capacity answers every registration "busy".
    let server = Server::with(MqttLimits::default(), 0).await;
    let key = server.enroll_sas("sym-busy", json!({})).await;
    let mut device = server.sas_device("sym-busy", &key).await;
    let registered = device
        .register("1", json!({"registrationId": "sym-busy"}))
        .await;
    assert_eq!(registered.status, 202);
    let operation_id = registered.body["operationId"].as_str().unwrap().to_owned();

    // Each poll after a busy attempt gets 429 with the registrar's retry-after; the poll
    // after that starts the registration again (202), as every SDK re-polls after a 429.
    let mut seen = Vec::new();
    for attempt in 0..6 {
        let polled = device.poll(&attempt.to_string(), &operation_id).await;
        if polled.status == 429 {
            assert_eq!(polled.body["errorCode"], 429001);
            assert!(polled.retry_after.is_some());
        }
        seen.push(polled.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(&429) && seen.contains(&202), "{seen:?}");
    assert!(server.stats().registrations_busy >= 2);
    let answered_429 = seen.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(server.stats().throttled, answered_429);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_without_waiting_for_the_drain_timeout() {
    let mut server = Server::with_limits(MqttLimits {
        drain_timeout: Duration::from_secs(30),
        ..MqttLimits::default()
    })
    .await;
    let key = server.enroll_sas("sym-idle", json!({})).await;
    let mut idle = server.sas_device("sym-idle", &key).await;
    let started = tokio::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an idle device (e.g. one whose registration failed) must not hold shutdown for the drain timeout"
    );
    idle.assert_closed().await;
    assert_eq!(server.stats().listener.active, 0);
}

/// Reads until the server closes `tcp`; fails if it stays open for 10 s.
async fn assert_tcp_closed(tcp: &mut tokio::net::TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(tcp, &mut byte),
    )
    .await
    .expect("the connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_flood_from_one_address_does_not_keep_devices_of_another_out() {
    let server = Server::with_limits(MqttLimits {
        max_unauthenticated_per_ip: 2,
        max_connections_per_ip: 4,
        // Long enough that the flood still holds its slots when it is checked.
        tls_handshake_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(60),
        ..MqttLimits::default()
    })
    .await;
    let flooder = [127, 0, 0, 2];

    // Connections from 127.0.0.2 that do not finish: one never starts TLS, one sends no
    // CONNECT (yet). The third connection from that address is shed before TLS.
    let _no_tls = server.tcp_from(flooder).await;
    let mut no_connect_yet = server.tls_from(flooder, None).await;
    let mut shed = server.tcp_from(flooder).await;
    assert_tcp_closed(&mut shed).await;
    assert_eq!(server.stats().listener.shed_unauthenticated_limit, 1);

    // A device from 127.0.0.1 registers meanwhile.
    server.assert_still_serving().await;

    // An accepted CONNECT stops counting as unauthenticated, so the address may open more...
    let key = server.enroll_sas("sym-flood", json!({})).await;
    let token = sas_token("sym-flood", &key, unix_now() + 3600);
    assert_eq!(
        no_connect_yet
            .connect("sym-flood", &username("sym-flood"), Some(&token))
            .await,
        Some(0)
    );
    let mut device = server.tls_from(flooder, None).await;
    assert_eq!(
        device
            .connect("sym-flood", &username("sym-flood"), Some(&token))
            .await,
        Some(0)
    );
    let _fourth = server.tcp_from(flooder).await;
    // ...but its share of slots stays bounded.
    let mut over = server.tcp_from(flooder).await;
    assert_tcp_closed(&mut over).await;
    let stats = server.stats().listener;
    assert_eq!(stats.shed_address_limit, 1, "{stats:?}");
    assert_eq!(stats.shed_unauthenticated_limit, 1, "{stats:?}");
}

#[tokio::test]
async fn keep_alive_0_is_closed_after_the_cap() {
    let server = Server::with_limits(MqttLimits {
        // 1.5 × 1 s of silence closes it.
        max_keep_alive: Duration::from_secs(1),
        ..MqttLimits::default()
    })
    .await;
    let key = server.enroll_sas("sym-ka0", json!({})).await;
    let mut device = server.tls(None).await;
    let token = sas_token("sym-ka0", &key, unix_now() + 3600);
    assert_eq!(
        device
            .connect_with_keep_alive("sym-ka0", &username("sym-ka0"), Some(&token), 0)
            .await,
        Some(0)
    );
    device.assert_closed().await;
    assert_eq!(server.stats().idle_timeouts, 1);
}

#[tokio::test]
async fn a_connection_is_closed_at_its_maximum_lifetime() {
    let server = Server::with_limits(MqttLimits {
        max_connection_lifetime: Duration::from_secs(1),
        ..MqttLimits::default()
    })
    .await;
    let key = server.enroll_sas("sym-life", json!({})).await;
    // Keep-alive 60 s: only the lifetime can end it within the test's patience.
    let mut device = server.sas_device("sym-life", &key).await;
    device.assert_closed().await;
    let stats = server.stats();
    assert_eq!(stats.lifetime_ends, 1, "{stats:?}");
    assert_eq!(stats.idle_timeouts, 0, "{stats:?}");
}

#[tokio::test]
async fn connections_of_one_device_beyond_the_cap_get_connack_3() {
    let server = Server::with_limits(MqttLimits {
        max_connections_per_device: 2,
        ..MqttLimits::default()
    })
    .await;
    let key = server.enroll_sas("sym-twice", json!({})).await;
    let token = sas_token("sym-twice", &key, unix_now() + 3600);
    let _first = server.sas_device("sym-twice", &key).await;
    let _second = server.sas_device("sym-twice", &key).await;
    // Any letter case is the same device.
    assert_eq!(
        server
            .connack(None, "SYM-TWICE", &username("SYM-TWICE"), Some(&token))
            .await,
        Some(3)
    );
    assert_eq!(server.stats().device_limit, 1);
    // A claim that fails attestation is refused as such, and never counts for the device.
    assert_eq!(
        server
            .connack(None, "sym-twice", &username("sym-twice"), Some("bad"))
            .await,
        Some(5)
    );
    server.assert_still_serving().await;
}

/// A CONNECT's bytes with the given protocol name, level and flags (and a client id).
fn raw_connect(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60, 0, 3]);
    body.extend_from_slice(b"dev");
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test]
async fn another_protocol_version_gets_connack_1_and_a_reserved_flag_is_closed() {
    let server = Server::start().await;
    for (name, level) in [(&b"MQTT"[..], 5), (b"MQIsdp", 3)] {
        let mut client = server.tls(None).await;
        client.send_raw(&raw_connect(name, level, 0b10)).await;
        match client.recv().await {
            Some(rumqttd::protocol::Packet::ConnAck(ack, _)) => assert_eq!(
                ack.code,
                rumqttd::protocol::ConnectReturnCode::RefusedProtocolVersion
            ),
            other => panic!("expected CONNACK 1, got {other:?}"),
        }
        client.assert_closed().await;
    }
    let mut reserved = server.tls(None).await;
    reserved.send_raw(&raw_connect(b"MQTT", 4, 0b11)).await;
    assert!(reserved.recv().await.is_none(), "closed without a CONNACK");
    assert_eq!(server.stats().bad_connects, 2);
    assert_eq!(server.stats().protocol_violations, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn a_poll_without_operation_id_is_answered_400_on_its_rid() {
    let server = Server::start().await;
    let key = server.enroll_sas("sym-400", json!({})).await;
    let mut device = server.sas_device("sym-400", &key).await;
    let answer = device
        .request(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=5",
            b" ",
        )
        .await;
    assert_eq!(answer.topic, "$dps/registrations/res/400/?$rid=5");
    assert_eq!(answer.body["errorCode"], 400001);
    // The connection still serves.
    let body = device
        .register_until_done(json!({"registrationId": "sym-400"}))
        .await;
    assert_eq!(body["status"], "assigned");
}
