//! Framing: MQTT 3.1.1 packets to and from bytes with `rumqttd`'s public v4 codec, translated
//! into the small packet model the [`Session`](crate::Session) speaks ([`Inbound`],
//! [`Outbound`]).
//!
//! Why a translation layer: rumqttd keeps `Publish::qos` and `Publish::pkid` crate-private,
//! so a user of its codec can neither read them from a decoded PUBLISH nor set them on one to
//! encode. [`decode`] reads both from the frame's own bytes (after rumqttd has checked that a
//! whole frame is there) and [`encode`] builds a QoS 1 PUBLISH through rumqttd's public
//! `Publish::deserialize`. Both workarounds live here and nowhere else.
//!
//! Bounded: [`decode`] refuses any frame whose remaining length exceeds the caller's
//! `max_packet_size` as soon as the fixed header is in, before the body is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Error as ProtocolError, Packet, PingResp, Protocol, PubAck,
    PubAckReason, Publish, QoS as WireQoS, SubAck, SubscribeReasonCode, UnsubAck,
};

/// MQTT delivery QoS. Our own type, so that the session's API does not name rumqttd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: at most once.
    AtMostOnce,
    /// 1: at least once.
    AtLeastOnce,
    /// 2: exactly once (DPS grants 1 instead and refuses QoS 2 publishes).
    ExactlyOnce,
}

impl QoS {
    /// From the two QoS bits of a fixed header or subscription option (3 is invalid; the
    /// codec rejects it before this is reached, and it is read as 0 here).
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::AtMostOnce,
        }
    }
}

impl From<WireQoS> for QoS {
    fn from(qos: WireQoS) -> Self {
        QoS::from_bits(qos as u8)
    }
}

impl From<QoS> for WireQoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => WireQoS::AtMostOnce,
            QoS::AtLeastOnce => WireQoS::AtLeastOnce,
            QoS::ExactlyOnce => WireQoS::ExactlyOnce,
        }
    }
}

/// A packet from a device, with what DPS needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNECT.
    Connect(ConnectPacket),
    /// A CONNECT that must be refused before anything in it is read.
    BadConnect(BadConnect),
    /// PUBLISH.
    Publish(PublishPacket),
    /// PUBACK for one of our QoS 1 responses.
    PubAck {
        /// Its packet id.
        pkid: u16,
    },
    /// SUBSCRIBE: packet id and `(filter, requested QoS)` pairs.
    Subscribe {
        /// Its packet id.
        pkid: u16,
        /// The filters in order.
        filters: Vec<(String, QoS)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Its packet id.
        pkid: u16,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
    /// A packet a device must never send to DPS: server-to-client packets (CONNACK, SUBACK,
    /// UNSUBACK, PINGRESP) and the QoS 2 handshake (PUBREC, PUBREL, PUBCOMP), which DPS never
    /// starts. Named for diagnostics.
    Unexpected(&'static str),
}

/// Why a CONNECT is refused from its first bytes (rumqttd's codec would only call it
/// malformed, which closes the connection without the answer MQTT asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadConnect {
    /// Another protocol than MQTT 3.1.1: protocol name `MQTT` with a level other than 4
    /// (5 is MQTT 5), or `MQIsdp` (MQTT 3.1). Answered CONNACK 1 (§3.1.2.2).
    ProtocolLevel(u8),
    /// The reserved connect flag (bit 0) is set: closed without CONNACK (§3.1.2.3).
    ReservedFlag,
}

/// The parts of a CONNECT that DPS reads. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    /// Client identifier (must equal the registration id).
    pub client_id: String,
    /// `{idScope}/registrations/{registrationId}/api-version=...`.
    pub username: Option<String>,
    /// A SAS token (symmetric key) or nothing (X.509).
    pub password: Option<String>,
    /// Keep-alive in seconds (0 = none).
    pub keep_alive: u16,
    /// CleanSession (DPS ignores it: no session is ever persisted).
    pub clean_session: bool,
}

impl std::fmt::Debug for ConnectPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPacket")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .finish()
    }
}

/// A PUBLISH from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    /// Delivery QoS.
    pub qos: QoS,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Topic name bytes (not yet checked for UTF-8).
    pub topic: Bytes,
    /// Body.
    pub payload: Bytes,
}

/// CONNACK return codes DPS uses (MQTT 3.1.1 §3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnAckCode {
    /// 0: connection accepted.
    Accepted,
    /// 1: the server does not speak the client's protocol level.
    UnacceptableProtocolVersion,
    /// 2: the client id is not the username's registration id.
    IdentifierRejected,
    /// 3: the service cannot take the connection now (shutting down).
    ServerUnavailable,
    /// 4: the username is malformed.
    BadUsernameOrPassword,
    /// 5: the credentials were refused.
    NotAuthorized,
}

impl ConnAckCode {
    /// The return-code byte.
    pub fn code(self) -> u8 {
        match self {
            ConnAckCode::Accepted => 0,
            ConnAckCode::UnacceptableProtocolVersion => 1,
            ConnAckCode::IdentifierRejected => 2,
            ConnAckCode::ServerUnavailable => 3,
            ConnAckCode::BadUsernameOrPassword => 4,
            ConnAckCode::NotAuthorized => 5,
        }
    }

    fn to_rumqttd(self) -> ConnectReturnCode {
        match self {
            ConnAckCode::Accepted => ConnectReturnCode::Success,
            ConnAckCode::UnacceptableProtocolVersion => ConnectReturnCode::RefusedProtocolVersion,
            ConnAckCode::IdentifierRejected => ConnectReturnCode::ClientIdentifierNotValid,
            ConnAckCode::ServerUnavailable => ConnectReturnCode::ServiceUnavailable,
            ConnAckCode::BadUsernameOrPassword => ConnectReturnCode::BadUserNamePassword,
            ConnAckCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
        }
    }
}

/// A packet for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK; session-present is always 0 (DPS keeps no sessions, and C# fails on 1).
    ConnAck(ConnAckCode),
    /// PUBACK for a device's QoS 1 PUBLISH.
    PubAck {
        /// Its packet id.
        pkid: u16,
    },
    /// SUBACK: one entry per filter, `None` = failure (0x80).
    SubAck {
        /// The SUBSCRIBE's packet id.
        pkid: u16,
        /// Granted QoS per filter.
        granted: Vec<Option<QoS>>,
    },
    /// UNSUBACK.
    UnsubAck {
        /// The UNSUBSCRIBE's packet id.
        pkid: u16,
    },
    /// PINGRESP.
    PingResp,
    /// A response PUBLISH: QoS 1 with `pkid`, or QoS 0 when `pkid` is `None`.
    Publish {
        /// Packet id for QoS 1.
        pkid: Option<u16>,
        /// The response topic.
        topic: String,
        /// The JSON body.
        payload: Bytes,
    },
}

/// Why bytes could not be framed. Both are the peer's fault and close that connection only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame announced a body longer than the limit.
    #[error("packet of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced remaining length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid MQTT 3.1.1 packet.
    #[error("malformed MQTT packet")]
    Malformed(#[source] ProtocolError),
}

/// Takes one complete packet off the front of `buf`. `Ok(None)` when more bytes are needed
/// (nothing is consumed). On error the connection must be closed: `buf` may have been
/// partially consumed.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Inbound>, CodecError> {
    let header = match v4::check(buf.iter(), max_packet_size) {
        Ok(header) => header,
        Err(ProtocolError::InsufficientBytes(_)) => return Ok(None),
        Err(ProtocolError::PayloadSizeLimitExceeded(size)) => {
            return Err(CodecError::TooLarge {
                size,
                max: max_packet_size,
            })
        }
        Err(e) => return Err(CodecError::Malformed(e)),
    };
    if header.byte1 >> 4 == 1 {
        if let Some(bad) = bad_connect(&buf[..header.frame_length()], header) {
            buf.advance(header.frame_length());
            return Ok(Some(Inbound::BadConnect(bad)));
        }
    }
    // rumqttd hides a PUBLISH's QoS and packet id; read them from the (complete) frame.
    let publish_meta =
        (header.byte1 >> 4 == 3).then(|| publish_meta(&buf[..header.frame_length()], header));
    let packet = V4
        .read_mut(buf, max_packet_size)
        .map_err(CodecError::Malformed)?;
    Ok(Some(match packet {
        Packet::Connect(connect, _, _, _, login) => {
            let (username, password) = match login {
                Some(login) => (non_empty(login.username), non_empty(login.password)),
                None => (None, None),
            };
            Inbound::Connect(ConnectPacket {
                client_id: connect.client_id,
                username,
                password,
                keep_alive: connect.keep_alive,
                clean_session: connect.clean_session,
            })
        }
        Packet::Publish(publish, _) => {
            let (qos, pkid) =
                publish_meta.ok_or(CodecError::Malformed(ProtocolError::MalformedPacket))?;
            Inbound::Publish(PublishPacket {
                qos,
                pkid,
                topic: publish.topic,
                payload: publish.payload,
            })
        }
        Packet::PubAck(ack, _) => Inbound::PubAck { pkid: ack.pkid },
        Packet::Subscribe(subscribe, _) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| (f.path, QoS::from(f.qos)))
                .collect(),
        },
        Packet::Unsubscribe(unsubscribe, _) => Inbound::Unsubscribe {
            pkid: unsubscribe.pkid,
        },
        Packet::PingReq(_) => Inbound::PingReq,
        Packet::Disconnect(..) => Inbound::Disconnect,
        Packet::ConnAck(..) => Inbound::Unexpected("CONNACK"),
        Packet::SubAck(..) => Inbound::Unexpected("SUBACK"),
        Packet::UnsubAck(..) => Inbound::Unexpected("UNSUBACK"),
        Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
        Packet::PubRec(..) => Inbound::Unexpected("PUBREC"),
        Packet::PubRel(..) => Inbound::Unexpected("PUBREL"),
        Packet::PubComp(..) => Inbound::Unexpected("PUBCOMP"),
    }))
}

/// QoS and packet id of a complete PUBLISH frame. Invalid values are reported as QoS 0 /
/// id 0 here; rumqttd's own parse (which runs next) rejects them.
fn publish_meta(frame: &[u8], header: v4::FixedHeader) -> (QoS, u16) {
    let qos = QoS::from_bits(header.byte1 >> 1);
    if qos == QoS::AtMostOnce {
        return (qos, 0);
    }
    let body = frame.get(header.fixed_header_len..).unwrap_or_default();
    let pkid = body
        .get(..2)
        .map(|len| usize::from(u16::from_be_bytes([len[0], len[1]])))
        .and_then(|topic_len| body.get(2 + topic_len..4 + topic_len))
        .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
    (qos, pkid)
}

/// What rumqttd would not tell apart from garbage in a complete CONNECT frame: another
/// protocol level (it answers `InvalidProtocolLevel`, or `InvalidProtocol` for MQTT 3.1's
/// `MQIsdp`) and the reserved flag (it ignores it). `None` for anything else, which
/// rumqttd's own parse then checks.
fn bad_connect(frame: &[u8], header: v4::FixedHeader) -> Option<BadConnect> {
    let body = frame.get(header.fixed_header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    let flags = *body.get(3 + name_len)?;
    match name {
        b"MQTT" if level != 4 => Some(BadConnect::ProtocolLevel(level)),
        b"MQIsdp" => Some(BadConnect::ProtocolLevel(level)),
        b"MQTT" if flags & 1 != 0 => Some(BadConnect::ReservedFlag),
        _ => None,
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// Appends `packet` to `buf`.
///
/// Errors only on our own bug (a topic over 64 KiB or an id of 0 for QoS 1), never on
/// anything a peer sent.
pub fn encode(packet: Outbound, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    let packet = match packet {
        Outbound::ConnAck(code) => Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: code.to_rumqttd(),
            },
            None,
        ),
        Outbound::PubAck { pkid } => Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        ),
        Outbound::SubAck { pkid, granted } => Packet::SubAck(
            SubAck {
                pkid,
                return_codes: granted
                    .into_iter()
                    .map(|g| {
                        g.map_or(SubscribeReasonCode::Failure, |q| {
                            SubscribeReasonCode::Success(q.into())
                        })
                    })
                    .collect(),
            },
            None,
        ),
        Outbound::UnsubAck { pkid } => Packet::UnsubAck(
            UnsubAck {
                pkid,
                reasons: Vec::new(),
            },
            None,
        ),
        Outbound::PingResp => Packet::PingResp(PingResp),
        Outbound::Publish {
            pkid,
            topic,
            payload,
        } => Packet::Publish(build_publish(pkid, topic.as_bytes(), &payload)?, None),
    };
    V4.write(packet, buf)?;
    Ok(())
}

/// Builds a PUBLISH with a chosen QoS and packet id. rumqttd's only public way to set them is
/// `Publish::deserialize`, which reads its own storage format: header byte, packet id, topic
/// length, topic, payload. It panics on short input, so the input is built here in full.
pub fn build_publish(
    pkid: Option<u16>,
    topic: &[u8],
    payload: &[u8],
) -> Result<Publish, ProtocolError> {
    let topic_len = u16::try_from(topic.len()).map_err(|_| ProtocolError::PayloadTooLong)?;
    let (header, pkid) = match pkid {
        Some(0) => return Err(ProtocolError::PacketIdZero),
        Some(pkid) => (0b0011_0010, pkid),
        None => (0b0011_0000, 0),
    };
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(header);
    raw.put_u16(pkid);
    raw.put_u16(topic_len);
    raw.put_slice(topic);
    raw.put_slice(payload);
    Ok(Publish::deserialize(raw.freeze()))
}

/// Reads the QoS and packet id of a decoded PUBLISH (for clients and tests that use rumqttd's
/// `Packet` directly): rumqttd's `Publish::serialize` exposes them as its first three bytes.
pub fn publish_qos_pkid(publish: &Publish) -> (QoS, u16) {
    let mut raw = publish.serialize();
    let header = raw.get_u8();
    let pkid = raw.get_u16();
    (QoS::from_bits(header >> 1), pkid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Connect, Filter, Login, RetainForwardRule, Subscribe};

    fn write(packet: Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        V4.write(packet, &mut buf).unwrap();
        buf
    }

    #[test]
    fn connect_with_and_without_password() {
        let mut buf = write(Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: "dev".into(),
                clean_session: false,
            },
            None,
            None,
            None,
            Some(Login {
                username: "0ne1/registrations/dev/api-version=2019-03-31".into(),
                password: "SharedAccessSignature sr=x".into(),
            }),
        ));
        let packet = decode(&mut buf, 1024).unwrap().unwrap();
        let Inbound::Connect(connect) = packet else {
            panic!("{packet:?}")
        };
        assert_eq!(connect.client_id, "dev");
        assert_eq!(
            connect.password.as_deref(),
            Some("SharedAccessSignature sr=x")
        );
        assert!(!format!("{connect:?}").contains("SharedAccessSignature"));
        assert!(buf.is_empty());

        let mut buf = write(Packet::Connect(
            Connect {
                keep_alive: 0,
                client_id: "dev".into(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(Login {
                username: "u".into(),
                password: String::new(),
            }),
        ));
        let Some(Inbound::Connect(connect)) = decode(&mut buf, 1024).unwrap() else {
            panic!()
        };
        assert_eq!(
            (connect.username.as_deref(), connect.password),
            (Some("u"), None)
        );
    }

    #[test]
    fn publish_qos_and_pkid_survive_both_ways() {
        for pkid in [None, Some(1), Some(0xBEEF)] {
            let mut buf = BytesMut::new();
            encode(
                Outbound::Publish {
                    pkid,
                    topic: "$dps/registrations/PUT/iotdps-register/?$rid=1".into(),
                    payload: Bytes::from_static(b"{}"),
                },
                &mut buf,
            )
            .unwrap();
            let Some(Inbound::Publish(p)) = decode(&mut buf, 1024).unwrap() else {
                panic!()
            };
            assert_eq!(p.pkid, pkid.unwrap_or(0));
            assert_eq!(
                p.qos,
                if pkid.is_some() {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                }
            );
            assert_eq!(&p.payload[..], b"{}");
            let built = build_publish(pkid, &p.topic, &p.payload).unwrap();
            assert_eq!(publish_qos_pkid(&built), (p.qos, p.pkid));
        }
    }

    #[test]
    fn partial_frames_wait_and_consume_nothing() {
        let full = write(Packet::Subscribe(
            Subscribe {
                pkid: 3,
                filters: vec![Filter {
                    path: "$dps/registrations/res/#".into(),
                    qos: WireQoS::ExactlyOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        ));
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(decode(&mut part, 1024).unwrap().is_none());
            assert_eq!(part.len(), cut);
        }
        let mut buf = full.clone();
        assert_eq!(
            decode(&mut buf, 1024).unwrap(),
            Some(Inbound::Subscribe {
                pkid: 3,
                filters: vec![("$dps/registrations/res/#".into(), QoS::ExactlyOnce)]
            })
        );
    }

    #[test]
    fn oversized_is_refused_from_the_header_alone() {
        // PUBLISH announcing 200 000 bytes; only the fixed header is here.
        let mut buf = BytesMut::from(&[0x30u8, 0xC0, 0x9A, 0x0C][..]);
        assert!(matches!(
            decode(&mut buf, 96 * 1024),
            Err(CodecError::TooLarge { size: 200_000, .. })
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        // Text can look like the start of a long packet ('G' = PUBACK, 'E' = 69 more bytes):
        // it waits for bytes that never come, and the connect timeout closes it.
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(decode(&mut http, 96 * 1024).unwrap().is_none());
        for bytes in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            &[0x00, 0x00],
            &[0xF0, 0x00],
            &[0x10, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(
                    decode(&mut buf, 96 * 1024),
                    Err(CodecError::Malformed(_)) | Err(CodecError::TooLarge { .. })
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn server_packets_encode() {
        let mut buf = BytesMut::new();
        encode(Outbound::ConnAck(ConnAckCode::NotAuthorized), &mut buf).unwrap();
        assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x05]);
        buf.clear();
        encode(
            Outbound::SubAck {
                pkid: 1,
                granted: vec![Some(QoS::AtLeastOnce), None],
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..], &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(_)) = decode(&mut buf, 256) {}
            }

            #[test]
            fn mutated_packets_never_panic(pos in 0usize..64, byte: u8) {
                let mut buf = BytesMut::new();
                encode(Outbound::Publish { pkid: Some(9), topic: "$dps/a".into(), payload: Bytes::from_static(b"{\"a\":1}") }, &mut buf).unwrap();
                let i = pos % buf.len();
                buf[i] = byte;
                let _ = decode(&mut buf, 256);
            }
        }
    }
}
