//! The session's limits: CONNECT and idle timeouts, the keep-alive cap, the maximum lifetime,
//! the per-device connection cap, CONNACK 1 for other protocol levels, and 400 answers to
//! requests whose topic has a `$rid` but is otherwise malformed.

use super::*;

#[test]
fn connect_timeout_and_idle_timeout() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), t0);
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));
    s.handle_tick(t0 + Duration::from_secs(9));
    assert!(drain(&mut s).is_empty());
    s.handle_tick(t0 + Duration::from_secs(10));
    assert_eq!(drain(&mut s), [Action::Close(CloseReason::ConnectTimeout)]);

    // keep-alive 60 → 90 s idle, reset by every packet.
    let mut s = connected("dev-1", t0);
    s.handle_packet(Inbound::PingReq, t0 + Duration::from_secs(80));
    assert_eq!(drain(&mut s), [Action::Send(Outbound::PingResp)]);
    s.handle_tick(t0 + Duration::from_secs(169));
    assert!(drain(&mut s).is_empty());
    s.handle_tick(t0 + Duration::from_secs(170));
    assert_eq!(drain(&mut s), [Action::Close(CloseReason::IdleTimeout)]);

    let cap = MAX_KEEP_ALIVE * 3 / 2;
    assert_eq!(idle_timeout(0, MAX_KEEP_ALIVE), cap);
    assert_eq!(idle_timeout(u16::MAX, MAX_KEEP_ALIVE), cap);
    assert_eq!(idle_timeout(181, MAX_KEEP_ALIVE), cap);
    assert_eq!(idle_timeout(180, MAX_KEEP_ALIVE), cap);
    assert_eq!(idle_timeout(1, MAX_KEEP_ALIVE), Duration::from_millis(1500));
}

/// Connects `id` with `keep_alive` and accepts it; returns the session, actions drained.
fn connected_with_keep_alive(id: &str, keep_alive: u16, now: Instant) -> Session {
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet(id, Some(&username(id)), Some("sas"), keep_alive),
        now,
    );
    s.handle_authenticated(now);
    drain(&mut s);
    s
}

#[test]
fn keep_alive_0_or_above_the_cap_is_the_cap() {
    let t0 = Instant::now();
    let cap = MAX_KEEP_ALIVE * 3 / 2;
    for keep_alive in [0, 181, u16::MAX] {
        let mut s = connected_with_keep_alive("dev-1", keep_alive, t0);
        assert_eq!(s.next_deadline(), Some(t0 + cap), "keep-alive {keep_alive}");
        s.handle_tick(t0 + cap - Duration::from_millis(1));
        assert!(drain(&mut s).is_empty());
        s.handle_tick(t0 + cap);
        assert_eq!(drain(&mut s), [Action::Close(CloseReason::IdleTimeout)]);
    }
}

#[test]
fn a_connection_closes_at_its_maximum_lifetime_however_busy() {
    let t0 = Instant::now();
    let lifetime = Duration::from_secs(300);
    let mut s = Session::new(
        SessionConfig {
            max_lifetime: lifetime,
            ..config()
        },
        t0,
    );
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), Some("sas"), 60),
        t0,
    );
    s.handle_authenticated(t0);
    drain(&mut s);
    // A ping every 50 s keeps it from idling; the lifetime still ends it.
    let mut now = t0;
    while now + Duration::from_secs(50) < t0 + lifetime {
        now += Duration::from_secs(50);
        s.handle_tick(now);
        s.handle_packet(Inbound::PingReq, now);
        assert_eq!(drain(&mut s), [Action::Send(Outbound::PingResp)]);
    }
    assert_eq!(s.next_deadline(), Some(t0 + lifetime));
    s.handle_tick(t0 + lifetime);
    assert_eq!(
        drain(&mut s),
        [Action::Close(CloseReason::LifetimeExceeded)]
    );
    assert!(s.is_closed());
}

#[test]
fn a_device_over_its_connection_cap_gets_connack_3() {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    s.handle_packet(
        connect_packet("dev-1", Some(&username("dev-1")), Some("sas"), 60),
        now,
    );
    assert!(matches!(&drain(&mut s)[..], [Action::Authenticate(_)]));
    s.handle_packet(Inbound::PingReq, now);
    s.handle_device_busy();
    assert_eq!(
        drain(&mut s),
        [
            Action::Send(Outbound::ConnAck(ConnAckCode::ServerUnavailable)),
            Action::Close(CloseReason::DeviceConnectionLimit)
        ]
    );
}

/// A CONNECT's bytes with the given protocol name, level and flags (no payload fields
/// beyond an empty client id).
fn raw_connect(name: &[u8], level: u8, flags: u8) -> BytesMut {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60, 0, 0]);
    let mut frame = BytesMut::from(&[0x10, u8::try_from(body.len()).unwrap()][..]);
    frame.extend_from_slice(&body);
    frame
}

/// Feeds `bytes` through the codec into a new session; what went back on the wire and the
/// close reason.
fn wire_connect(mut bytes: BytesMut) -> (Vec<u8>, Option<CloseReason>) {
    let now = Instant::now();
    let mut s = Session::new(config(), now);
    let packet = codec::decode(&mut bytes, 96 * 1024).unwrap().unwrap();
    assert!(bytes.is_empty(), "the whole frame is consumed");
    s.handle_packet(packet, now);
    let mut wire = BytesMut::new();
    let mut closed = None;
    for action in drain(&mut s) {
        match action {
            Action::Send(packet) => codec::encode(packet, &mut wire).unwrap(),
            Action::Close(reason) => closed = Some(reason),
            other => panic!("{other:?}"),
        }
    }
    (wire.to_vec(), closed)
}

#[test]
fn another_protocol_level_gets_connack_1_and_a_reserved_flag_a_close() {
    // MQTT 5, MQTT 3.1 (`MQIsdp`, level 3), and a made-up level: CONNACK 1, then close.
    for (name, level) in [(&b"MQTT"[..], 5), (b"MQIsdp", 3), (b"MQTT", 9)] {
        let (wire, closed) = wire_connect(raw_connect(name, level, 0b10));
        assert_eq!(wire, [0x20, 2, 0, 1], "level {level}");
        assert_eq!(closed, Some(CloseReason::UnsupportedProtocolVersion));
    }
    // MQTT 3.1.1 with the reserved flag: closed without CONNACK (§3.1.2.3).
    let (wire, closed) = wire_connect(raw_connect(b"MQTT", 4, 0b11));
    assert!(wire.is_empty());
    assert_eq!(
        closed,
        Some(CloseReason::ProtocolViolation(
            "the reserved CONNECT flag is set"
        ))
    );
    // The same CONNECT without it is read as usual.
    let mut ok = raw_connect(b"MQTT", 4, 0b10);
    assert!(matches!(
        codec::decode(&mut ok, 96 * 1024),
        Ok(Some(Inbound::Connect(_)))
    ));
}

#[test]
fn a_request_with_a_rid_but_a_bad_query_is_answered_400() {
    let now = Instant::now();
    for topic in [
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=42",
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=42&operationId=",
        "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=%zz&$rid=42",
        "$dps/registrations/PUT/iotdps-register/?$rid=42&novalue",
    ] {
        let mut s = connected("dev-1", now);
        s.handle_packet(publish(QoS::AtLeastOnce, 9, topic, ""), now);
        let actions = drain(&mut s);
        assert_eq!(
            actions[0],
            Action::Send(Outbound::PubAck { pkid: 9 }),
            "{topic}"
        );
        let answers = responses(&actions);
        assert_eq!(answers.len(), 1, "{topic}: {actions:?}");
        assert_eq!(answers[0].topic, "$dps/registrations/res/400/?$rid=42");
        assert_eq!(answers[0].body["errorCode"], 400001, "{topic}");
        assert!(!s.is_closed());
    }
    // Without a `$rid` (or with two) there is nothing to answer on: closed as before.
    for topic in [
        "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=1",
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&$rid=2",
        "$dps/registrations/PUT/iotdps-register/?$rid=a$b",
    ] {
        let mut s = connected("dev-1", now);
        s.handle_packet(publish(QoS::AtLeastOnce, 9, topic, ""), now);
        assert_eq!(
            drain(&mut s),
            [Action::Close(CloseReason::UnknownTopic)],
            "{topic}"
        );
    }
}
