//! The session driven in memory: packets and time in, actions out. Some tests go through the
//! byte codec both ways to check what a device would see on the wire.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dps_types::{DeviceId, HubName, RegistrationStatus};
use rumqttd::protocol::{Packet, Protocol};
use serde_json::{json, Value};

use super::*;
use crate::codec::{self, ConnectPacket, PublishPacket, QoS};

/// Keep-alive, lifetime, per-device and CONNECT-version limits, and 400 answers.
mod limits;

const SCOPE: &str = "0ne00000001";
const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/?$rid=1";

fn config() -> SessionConfig {
    SessionConfig {
        id_scope: IdScope::parse(SCOPE).unwrap(),
        connect_timeout: Duration::from_secs(10),
        max_requests: 64,
        max_operations: 4,
        max_keep_alive: MAX_KEEP_ALIVE,
        max_lifetime: LIFETIME,
    }
}

/// The keep-alive cap of [`config`]: 1.5 × 180 s = 270 s idle at most.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(180);
/// The lifetime of [`config`]'s connections (longer than any other deadline in these tests).
const LIFETIME: Duration = Duration::from_secs(3600);

fn connect_packet(
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    keep_alive: u16,
) -> Inbound {
    Inbound::Connect(ConnectPacket {
        client_id: client_id.into(),
        username: username.map(Into::into),
        password: password.map(Into::into),
        keep_alive,
        clean_session: false,
    })
}

fn username(id: &str) -> String {
    format!("{SCOPE}/registrations/{id}/api-version=2019-03-31&ClientVersion=test%2F1.0")
}

fn publish(qos: QoS, pkid: u16, topic: &str, payload: &str) -> Inbound {
    Inbound::Publish(PublishPacket {
        qos,
        pkid,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

fn poll_topic(rid: &str, op: &str) -> String {
    format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}")
}

fn drain(session: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| session.poll_action()).collect()
}

/// A decoded response publish.
#[derive(Debug)]
struct Response {
    pkid: Option<u16>,
    topic: String,
    body: Value,
}

fn responses(actions: &[Action]) -> Vec<Response> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outbound::Publish {
                pkid,
                topic,
                payload,
            }) => Some(Response {
                pkid: *pkid,
                topic: topic.clone(),
                body: serde_json::from_slice(payload).unwrap(),
            }),
            _ => None,
        })
        .collect()
}

/// A session past CONNACK 0 and SUBSCRIBE (QoS 1 granted), with its actions drained.
fn connected(id: &str, now: Instant) -> Session {
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet(id, Some(&username(id)), Some("sas"), 60),
        now,
    );
    let actions = drain(&mut s);
    assert!(
        matches!(&actions[..], [Action::Authenticate(c)] if c.registration_id.as_str() == id && c.password.as_deref() == Some("sas"))
    );
    s.handle_authenticated(now);
    s.handle_packet(
        Inbound::Subscribe {
            pkid: 1,
            filters: vec![(topics::RESPONSE_FILTER.into(), QoS::AtLeastOnce)],
        },
        now,
    );
    assert_eq!(
        drain(&mut s),
        [
            Action::Send(Outbound::ConnAck(ConnAckCode::Accepted)),
            Action::Send(Outbound::SubAck {
                pkid: 1,
                granted: vec![Some(QoS::AtLeastOnce)]
            })
        ]
    );
    s
}

/// Registers and returns the operation id from the `Register` action.
fn register(s: &mut Session, now: Instant) -> String {
    s.handle_packet(
        publish(
            QoS::AtLeastOnce,
            7,
            REGISTER,
            r#"{"payload": null, "registrationId": "dev-1"}"#,
        ),
        now,
    );
    let actions = drain(s);
    assert_eq!(actions[0], Action::Send(Outbound::PubAck { pkid: 7 }));
    let r = responses(&actions);
    assert_eq!(
        r[0].topic,
        "$dps/registrations/res/202/?$rid=1&retry-after=1"
    );
    let Some(Action::Register {
        operation_id,
        payload,
    }) = actions.last()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(payload, &None);
    assert_eq!(
        r[0].body,
        json!({"operationId": operation_id, "status": "assigning",
        "registrationState": {"registrationId": "dev-1", "status": "assigning"}})
    );
    operation_id.clone()
}

fn assigned(id: &str) -> DeviceRegistrationResult {
    let mut result = DeviceRegistrationResult::new(
        RegistrationId::parse(id).unwrap(),
        RegistrationStatus::Assigned,
    );
    result.assigned_hub = Some(HubName::parse("hub1.azure-devices.net").unwrap());
    result.device_id = Some(DeviceId::parse(id).unwrap());
    result
}

#[test]
fn register_then_poll_until_assigned() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let op = register(&mut s, now);
    assert!(op.starts_with("4.") && op.len() == 55, "{op}");

    // Still running: 202 assigning with retry-after.
    s.handle_packet(
        publish(QoS::AtLeastOnce, 8, &poll_topic("2", &op), " "),
        now,
    );
    let actions = drain(&mut s);
    assert_eq!(actions[0], Action::Send(Outbound::PubAck { pkid: 8 }));
    let r = responses(&actions);
    assert_eq!(
        r[0].topic,
        "$dps/registrations/res/202/?$rid=2&retry-after=1"
    );
    assert_eq!(r[0].body["status"], "assigning");
    assert_eq!(r[0].body["registrationState"]["registrationId"], "dev-1");

    s.handle_registration_done(&op, RegistrationOutcome::Done(Box::new(assigned("dev-1"))));
    assert_eq!(s.running_operations(), 0);
    // C polls at QoS 0 and re-sends the registration JSON as the poll body.
    s.handle_packet(
        publish(
            QoS::AtMostOnce,
            0,
            &poll_topic("3", &op),
            r#"{"registrationId":"dev-1"}"#,
        ),
        now,
    );
    let r = responses(&drain(&mut s));
    assert_eq!(r[0].topic, "$dps/registrations/res/200/?$rid=3");
    assert_eq!(r[0].body["operationId"], op.as_str());
    assert_eq!(r[0].body["status"], "assigned");
    assert_eq!(
        r[0].body["registrationState"]["assignedHub"],
        "hub1.azure-devices.net"
    );
    assert_eq!(r[0].body["registrationState"]["deviceId"], "dev-1");
}

#[test]
fn failed_and_disabled_results_are_reported_on_poll() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let op = register(&mut s, now);
    let mut failed = assigned("dev-1");
    failed.status = RegistrationStatus::Failed;
    failed.assigned_hub = None;
    failed.device_id = None;
    failed.error_code = Some(400208);
    failed.error_message = Some("no hub".into());
    s.handle_registration_done(&op, RegistrationOutcome::Done(Box::new(failed)));
    s.handle_packet(publish(QoS::AtLeastOnce, 2, &poll_topic("x", &op), ""), now);
    let r = responses(&drain(&mut s));
    assert_eq!(r[0].body["status"], "failed");
    assert_eq!(r[0].body["registrationState"]["errorCode"], 400208);
    assert_eq!(r[0].body["registrationState"]["errorMessage"], "no hub");

    let op = register(&mut s, now);
    let mut disabled = assigned("dev-1");
    disabled.status = RegistrationStatus::Disabled;
    s.handle_registration_done(&op, RegistrationOutcome::Done(Box::new(disabled)));
    s.handle_packet(publish(QoS::AtLeastOnce, 3, &poll_topic("y", &op), ""), now);
    assert_eq!(responses(&drain(&mut s))[0].body["status"], "disabled");
}

#[test]
fn busy_answers_429_once_then_the_next_poll_restarts_it() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let op = register(&mut s, now);
    s.handle_registration_done(
        &op,
        RegistrationOutcome::Busy {
            retry_after_secs: 5,
        },
    );
    s.handle_packet(
        publish(QoS::AtLeastOnce, 2, &poll_topic("a", &op), " "),
        now,
    );
    let actions = drain(&mut s);
    let r = responses(&actions);
    assert_eq!(
        r[0].topic,
        "$dps/registrations/res/429/?$rid=a&retry-after=5"
    );
    assert_eq!(r[0].body["errorCode"], 429001);
    assert!(!actions.iter().any(|a| matches!(a, Action::Register { .. })));

    s.handle_packet(
        publish(QoS::AtLeastOnce, 3, &poll_topic("b", &op), " "),
        now,
    );
    let actions = drain(&mut s);
    assert_eq!(
        responses(&actions)[0].topic,
        "$dps/registrations/res/202/?$rid=b&retry-after=1"
    );
    assert!(
        matches!(actions.last(), Some(Action::Register { operation_id, .. }) if *operation_id == op)
    );
    s.handle_registration_done(&op, RegistrationOutcome::Done(Box::new(assigned("dev-1"))));
    s.handle_packet(
        publish(QoS::AtLeastOnce, 4, &poll_topic("c", &op), " "),
        now,
    );
    assert_eq!(responses(&drain(&mut s))[0].body["status"], "assigned");
}

#[test]
fn internal_failure_answers_500_then_404() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let op = register(&mut s, now);
    s.handle_registration_done(&op, RegistrationOutcome::Failed);
    s.handle_packet(
        publish(QoS::AtLeastOnce, 2, &poll_topic("a", &op), " "),
        now,
    );
    let r = responses(&drain(&mut s));
    assert_eq!(r[0].topic, "$dps/registrations/res/500/?$rid=a");
    assert_eq!(r[0].body["errorCode"], 500001);
    s.handle_packet(
        publish(QoS::AtLeastOnce, 3, &poll_topic("b", &op), " "),
        now,
    );
    assert_eq!(
        responses(&drain(&mut s))[0].topic,
        "$dps/registrations/res/404/?$rid=b"
    );
}

#[test]
fn unknown_operation_is_404_with_error_details() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    s.handle_packet(
        publish(QoS::AtLeastOnce, 2, &poll_topic("a", "4.nope"), " "),
        now,
    );
    let r = responses(&drain(&mut s));
    assert_eq!(r[0].topic, "$dps/registrations/res/404/?$rid=a");
    assert_eq!(r[0].body["errorCode"].as_i64().unwrap() / 1000, 404);
    assert!(r[0].body["trackingId"].is_string() && r[0].body["timestampUtc"].is_string());
    assert!(!s.is_closed());
}

#[test]
fn malformed_register_body_is_400_and_empty_is_fine() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    s.handle_packet(publish(QoS::AtLeastOnce, 2, REGISTER, "{not json"), now);
    let actions = drain(&mut s);
    let r = responses(&actions);
    assert_eq!(r[0].topic, "$dps/registrations/res/400/?$rid=1");
    assert_eq!(r[0].body["errorCode"], 400001);
    assert!(!actions.iter().any(|a| matches!(a, Action::Register { .. })));

    s.handle_packet(publish(QoS::AtMostOnce, 0, REGISTER, ""), now);
    let actions = drain(&mut s);
    assert_eq!(
        responses(&actions)[0].topic,
        "$dps/registrations/res/202/?$rid=1&retry-after=1"
    );

    s.handle_packet(
        publish(
            QoS::AtMostOnce,
            0,
            REGISTER,
            r#"{"registrationId":"dev-1","payload":{"a":[1]}}"#,
        ),
        now,
    );
    let actions = drain(&mut s);
    assert!(
        matches!(actions.last(), Some(Action::Register { payload: Some(p), .. }) if p == &json!({"a":[1]}))
    );
}

#[test]
fn concurrent_operation_limit_answers_429() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let ops: Vec<String> = (0..4).map(|_| register(&mut s, now)).collect();
    s.handle_packet(publish(QoS::AtLeastOnce, 9, REGISTER, "{}"), now);
    let actions = drain(&mut s);
    assert_eq!(
        responses(&actions)[0].topic,
        "$dps/registrations/res/429/?$rid=1&retry-after=2"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Register { .. })));
    s.handle_registration_done(
        &ops[0],
        RegistrationOutcome::Done(Box::new(assigned("dev-1"))),
    );
    register(&mut s, now);
}

#[test]
fn request_budget_answers_429() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionConfig {
            max_requests: 2,
            ..config()
        },
        now,
    );
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), None, 0),
        now,
    );
    s.handle_authenticated(now);
    drain(&mut s);
    for rid in ["a", "b"] {
        s.handle_packet(publish(QoS::AtMostOnce, 0, &poll_topic(rid, "x"), ""), now);
        assert!(responses(&drain(&mut s))[0].topic.contains("/404/"));
    }
    s.handle_packet(publish(QoS::AtMostOnce, 0, &poll_topic("c", "x"), ""), now);
    let r = responses(&drain(&mut s));
    assert_eq!(
        r[0].topic,
        "$dps/registrations/res/429/?$rid=c&retry-after=30"
    );
    // Nothing subscribed: responses still go at QoS 1 (DPS's documented delivery QoS).
    assert!(r[0].pkid.is_some());
    assert!(!s.is_closed());
}

#[test]
fn connect_rules() {
    let now = Instant::now();
    let cases: Vec<(Inbound, ConnAckCode, CloseReason)> = vec![
        (
            connect_packet("dev-1", None, None, 60),
            ConnAckCode::BadUsernameOrPassword,
            CloseReason::BadUsername,
        ),
        (
            connect_packet("dev-1", Some("nonsense"), None, 60),
            ConnAckCode::BadUsernameOrPassword,
            CloseReason::BadUsername,
        ),
        (
            connect_packet("other", Some(&username("dev-1")), None, 60),
            ConnAckCode::IdentifierRejected,
            CloseReason::ClientIdMismatch,
        ),
        (
            connect_packet(
                "dev-1",
                Some("0ne99999999/registrations/dev-1/api-version=1"),
                None,
                60,
            ),
            ConnAckCode::NotAuthorized,
            CloseReason::WrongIdScope,
        ),
    ];
    for (packet, code, reason) in cases {
        let mut s = Session::new(config(), now);
        s.handle_packet(packet, now);
        assert_eq!(
            drain(&mut s),
            [Action::Send(Outbound::ConnAck(code)), Action::Close(reason)]
        );
        assert!(s.is_closed() && s.next_deadline().is_none());
    }

    // Client id compared case-insensitively; the scope too; CleanSession 1 fine.
    let mut s = Session::new(config(), now);
    s.handle_packet(
        Inbound::Connect(ConnectPacket {
            client_id: "DEV-1".into(),
            username: Some("0NE00000001/registrations/dev-1/api-version=2021-06-01".into()),
            password: None,
            keep_alive: 0,
            clean_session: true,
        }),
        now,
    );
    assert!(matches!(&drain(&mut s)[..], [Action::Authenticate(c)] if c.password.is_none()));
    s.handle_refused();
    assert_eq!(
        drain(&mut s),
        [
            Action::Send(Outbound::ConnAck(ConnAckCode::NotAuthorized)),
            Action::Close(CloseReason::NotAuthorized)
        ]
    );
}

#[test]
fn first_packet_must_be_connect() {
    let now = Instant::now();
    for packet in [
        Inbound::PingReq,
        publish(QoS::AtMostOnce, 0, REGISTER, "{}"),
        Inbound::Disconnect,
    ] {
        let mut s = Session::new(config(), now);
        s.handle_packet(packet, now);
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Close(CloseReason::ProtocolViolation(_))]
        ));
    }
}

#[test]
fn subscribe_unsubscribe_ping_disconnect() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    s.handle_packet(
        Inbound::Subscribe {
            pkid: 2,
            filters: vec![
                (topics::RESPONSE_FILTER.into(), QoS::ExactlyOnce),
                ("$dps/registrations/res/+".into(), QoS::AtLeastOnce),
                ("#".into(), QoS::AtMostOnce),
            ],
        },
        now,
    );
    s.handle_packet(Inbound::Unsubscribe { pkid: 3 }, now);
    s.handle_packet(Inbound::PingReq, now);
    s.handle_packet(Inbound::Disconnect, now);
    s.handle_packet(Inbound::PingReq, now);
    assert_eq!(
        drain(&mut s),
        [
            Action::Send(Outbound::SubAck {
                pkid: 2,
                granted: vec![Some(QoS::AtLeastOnce), None, None]
            }),
            Action::Send(Outbound::UnsubAck { pkid: 3 }),
            Action::Send(Outbound::PingResp),
            Action::Close(CloseReason::ClientDisconnected),
        ]
    );
}

#[test]
fn qos0_subscription_gets_qos0_responses() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    s.handle_packet(
        Inbound::Subscribe {
            pkid: 2,
            filters: vec![(topics::RESPONSE_FILTER.into(), QoS::AtMostOnce)],
        },
        now,
    );
    drain(&mut s);
    s.handle_packet(publish(QoS::AtMostOnce, 0, &poll_topic("a", "x"), ""), now);
    assert_eq!(responses(&drain(&mut s))[0].pkid, None);
}

#[test]
fn protocol_violations_close() {
    let now = Instant::now();
    for (packet, reason) in [
        (
            publish(QoS::AtLeastOnce, 2, "devices/dev-1/messages/events/", "{}"),
            CloseReason::UnknownTopic,
        ),
        (
            publish(
                QoS::AtLeastOnce,
                2,
                "$dps/registrations/res/200/?$rid=1",
                "{}",
            ),
            CloseReason::UnknownTopic,
        ),
        (
            publish(QoS::ExactlyOnce, 2, REGISTER, "{}"),
            CloseReason::ProtocolViolation("QoS 2 PUBLISH"),
        ),
        (
            connect_packet("dev-1", Some(&username("dev-1")), None, 1),
            CloseReason::ProtocolViolation("a second CONNECT"),
        ),
        (
            Inbound::Unexpected("PUBREL"),
            CloseReason::ProtocolViolation("a packet only a server sends"),
        ),
    ] {
        let mut s = connected("dev-1", now);
        s.handle_packet(packet, now);
        assert_eq!(drain(&mut s), [Action::Close(reason)]);
    }
}

#[test]
fn packets_pipelined_behind_connect_wait_for_the_connack() {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), Some("sas"), 60),
        now,
    );
    s.handle_packet(
        Inbound::Subscribe {
            pkid: 1,
            filters: vec![(topics::RESPONSE_FILTER.into(), QoS::AtLeastOnce)],
        },
        now,
    );
    s.handle_packet(publish(QoS::AtLeastOnce, 2, REGISTER, "{}"), now);
    assert!(matches!(&drain(&mut s)[..], [Action::Authenticate(_)]));
    s.handle_authenticated(now);
    let actions = drain(&mut s);
    assert_eq!(
        actions[0],
        Action::Send(Outbound::ConnAck(ConnAckCode::Accepted))
    );
    assert!(matches!(actions[1], Action::Send(Outbound::SubAck { .. })));
    assert!(matches!(actions.last(), Some(Action::Register { .. })));

    // Refused: the pipelined packets are dropped.
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), Some("sas"), 60),
        now,
    );
    s.handle_packet(publish(QoS::AtLeastOnce, 2, REGISTER, "{}"), now);
    drain(&mut s);
    s.handle_refused();
    assert_eq!(drain(&mut s).len(), 2);

    // Too many: closed.
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), Some("sas"), 60),
        now,
    );
    for _ in 0..=MAX_PENDING_BEFORE_CONNACK {
        s.handle_packet(Inbound::PingReq, now);
    }
    assert!(s.is_closed());
}

#[test]
fn packet_ids_skip_unacked_and_never_zero() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    let mut ids = Vec::new();
    for i in 0..40 {
        s.handle_packet(
            publish(QoS::AtMostOnce, 0, &poll_topic(&i.to_string(), "x"), ""),
            now,
        );
        let r = responses(&drain(&mut s));
        let id = r[0].pkid.unwrap();
        ids.push(id);
        if i % 2 == 0 {
            s.handle_packet(Inbound::PubAck { pkid: id }, now);
        }
    }
    assert!(ids.iter().all(|&id| id != 0));
    assert!(s.unacked.len() <= MAX_UNACKED);

    s.last_pkid = u16::MAX - 1;
    s.unacked.clear();
    s.unacked.push_back(1);
    assert_eq!(s.allocate_pkid(), u16::MAX);
    assert_eq!(s.allocate_pkid(), 2);
}

#[test]
fn results_for_unknown_or_finished_operations_are_ignored() {
    let now = Instant::now();
    let mut s = connected("dev-1", now);
    s.handle_registration_done("4.x", RegistrationOutcome::Failed);
    let op = register(&mut s, now);
    s.handle_registration_done(&op, RegistrationOutcome::Done(Box::new(assigned("dev-1"))));
    s.handle_registration_done(&op, RegistrationOutcome::Failed);
    assert_eq!(s.running_operations(), 0);
    assert!(drain(&mut s).is_empty());
}

/// The whole exchange as bytes: what rumqttd's client-side encoder writes goes through
/// `codec::decode`, and what the session answers is decoded again with rumqttd.
#[test]
fn the_wire_view() {
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{Connect, Filter, Login, RetainForwardRule, Subscribe};

    let now = Instant::now();
    let mut inbound = BytesMut::new();
    for packet in [
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "dev-1".into(),
                clean_session: false,
            },
            None,
            None,
            None,
            Some(Login {
                username: username("dev-1"),
                password: "SharedAccessSignature sr=a&sig=b&se=1".into(),
            }),
        ),
        Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: vec![Filter {
                    path: topics::RESPONSE_FILTER.into(),
                    qos: rumqttd::protocol::QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        ),
        Packet::Publish(
            codec::build_publish(
                Some(5),
                REGISTER.as_bytes(),
                br#"{"payload": null, "registrationId": "dev-1"}"#,
            )
            .unwrap(),
            None,
        ),
    ] {
        V4.write(packet, &mut inbound).unwrap();
    }

    let mut s = Session::new(config(), now);
    let mut outbound = BytesMut::new();
    while let Some(packet) = codec::decode(&mut inbound, 96 * 1024).unwrap() {
        s.handle_packet(packet, now);
        while let Some(action) = s.poll_action() {
            match action {
                Action::Send(packet) => codec::encode(packet, &mut outbound).unwrap(),
                Action::Authenticate(_) => s.handle_authenticated(now),
                Action::Register { .. } => {}
                Action::Close(reason) => panic!("closed: {reason:?}"),
            }
        }
    }

    let mut seen = Vec::new();
    while let Ok(packet) = V4.read_mut(&mut outbound, 1 << 20) {
        seen.push(packet);
    }
    assert!(
        matches!(&seen[0], Packet::ConnAck(ack, _) if !ack.session_present && ack.code == rumqttd::protocol::ConnectReturnCode::Success)
    );
    assert!(matches!(&seen[1], Packet::SubAck(ack, _) if ack.pkid == 1));
    assert!(matches!(&seen[2], Packet::PubAck(ack, _) if ack.pkid == 5));
    let Packet::Publish(response, _) = &seen[3] else {
        panic!("{seen:?}")
    };
    assert_eq!(
        &response.topic[..],
        b"$dps/registrations/res/202/?$rid=1&retry-after=1"
    );
    assert_eq!(codec::publish_qos_pkid(response), (QoS::AtLeastOnce, 1));
    let body: Value = serde_json::from_slice(&response.payload).unwrap();
    assert_eq!(body["status"], "assigning");
    assert_eq!(seen.len(), 4);
}
