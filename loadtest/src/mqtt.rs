//! The few MQTT 3.1.1 packets a DPS device exchanges, as plain functions over bytes (no I/O).
//!
//! A device writes CONNECT, SUBSCRIBE, PUBLISH (QoS 1), PUBACK and DISCONNECT, and reads
//! CONNACK, SUBACK, PUBACK and PUBLISH. That is small enough to write here rather than go
//! through rumqttd's codec, which hides a PUBLISH's QoS and packet id (the server crate needs
//! byte-layout workarounds for both); it also keeps the load tool independent of the codec
//! the server uses, so a disagreement between the two shows up as failures.
//!
//! Bounded: [`decode`] refuses a frame longer than its `max_len` as soon as the fixed header
//! is in.

use bytes::{Buf, Bytes, BytesMut};

/// Largest remaining length the variable-length encoding can express (MQTT 3.1.1 §2.2.3).
const MAX_REMAINING_LEN: usize = 268_435_455;

/// A packet from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNACK: session-present flag and return code.
    ConnAck {
        /// Session present (DPS always sends 0).
        session_present: bool,
        /// Return code (0 accepted).
        code: u8,
    },
    /// SUBACK: packet id and the per-filter return codes.
    SubAck {
        /// The SUBSCRIBE's packet id.
        pkid: u16,
        /// Granted QoS per filter, 0x80 = refused.
        codes: Vec<u8>,
    },
    /// PUBACK for one of our QoS 1 publishes.
    PubAck {
        /// Its packet id.
        pkid: u16,
    },
    /// A PUBLISH (a DPS response).
    Publish {
        /// Delivery QoS (0, 1 or 2).
        qos: u8,
        /// Packet id (0 for QoS 0).
        pkid: u16,
        /// Topic name.
        topic: String,
        /// Body.
        payload: Bytes,
    },
    /// Any other packet type (its fixed-header type nibble).
    Other(u8),
}

/// Why bytes from the server are not a packet we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length is longer than the caller allows.
    #[error("a packet of {len} bytes is over the {max}-byte limit")]
    TooLong {
        /// Announced remaining length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The packet breaks the MQTT 3.1.1 encoding.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Decodes one packet from the front of `buf` and removes it; `Ok(None)` when the frame is
/// not complete yet (nothing is consumed).
pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, len)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if len > max_len {
        return Err(DecodeError::TooLong { len, max: max_len });
    }
    if buf.len() < header_len + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header_len);
    let mut body = buf.split_to(len).freeze();
    let packet = match first >> 4 {
        2 => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("CONNACK length"));
            }
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        3 => {
            let qos = (first >> 1) & 0b11;
            let topic_len = usize::from(take_u16(&mut body, "PUBLISH topic length")?);
            if body.len() < topic_len {
                return Err(DecodeError::Malformed("PUBLISH topic"));
            }
            let topic = String::from_utf8(body.split_to(topic_len).to_vec())
                .map_err(|_| DecodeError::Malformed("PUBLISH topic is not UTF-8"))?;
            let pkid = if qos > 0 {
                take_u16(&mut body, "PUBLISH packet id")?
            } else {
                0
            };
            Packet::Publish {
                qos,
                pkid,
                topic,
                payload: body,
            }
        }
        4 => Packet::PubAck {
            pkid: take_u16(&mut body, "PUBACK packet id")?,
        },
        9 => Packet::SubAck {
            pkid: take_u16(&mut body, "SUBACK packet id")?,
            codes: body.to_vec(),
        },
        other => Packet::Other(other),
    };
    Ok(Some(packet))
}

/// The fixed header's length and the remaining length, once all of the header is in.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((i + 2, len)));
        }
    }
    if buf.len() >= 5 {
        return Err(DecodeError::Malformed("remaining length over four bytes"));
    }
    Ok(None)
}

fn take_u16(body: &mut Bytes, what: &'static str) -> Result<u16, DecodeError> {
    if body.len() < 2 {
        return Err(DecodeError::Malformed(what));
    }
    Ok(body.get_u16())
}

/// Appends a packet: fixed header byte, remaining length, then `body`.
fn frame(first: u8, body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(body.len() <= MAX_REMAINING_LEN);
    out.push(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

/// Appends a length-prefixed MQTT string. The caller's strings are ours (ids, topics, SAS
/// tokens), all far below 64 KiB; longer ones are cut at the limit, which the server then
/// refuses, rather than panicking.
fn put_str(body: &mut Vec<u8>, text: &[u8]) {
    let len = text.len().min(usize::from(u16::MAX));
    body.extend_from_slice(&(len as u16).to_be_bytes());
    body.extend_from_slice(&text[..len]);
}

/// CONNECT, MQTT 3.1.1, clean session, with a username and, when given, a password (an
/// X.509 device sends none).
pub fn connect(
    client_id: &str,
    username: &str,
    password: Option<&str>,
    keep_alive_secs: u16,
    out: &mut Vec<u8>,
) {
    let password_len = password.map_or(0, str::len);
    let mut body = Vec::with_capacity(16 + client_id.len() + username.len() + password_len);
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
                  // Username, password when given, clean session.
    body.push(if password.is_some() {
        0b1100_0010
    } else {
        0b1000_0010
    });
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, username.as_bytes());
    if let Some(password) = password {
        put_str(&mut body, password.as_bytes());
    }
    frame(0x10, &body, out);
}

/// SUBSCRIBE to one filter at `qos`.
pub fn subscribe(pkid: u16, filter: &str, qos: u8, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(5 + filter.len());
    body.extend_from_slice(&pkid.to_be_bytes());
    put_str(&mut body, filter.as_bytes());
    body.push(qos & 0b11);
    frame(0x82, &body, out);
}

/// PUBLISH at QoS 1 with packet id `pkid` (must not be 0).
pub fn publish_qos1(pkid: u16, topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(4 + topic.len() + payload.len());
    put_str(&mut body, topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    frame(0x32, &body, out);
}

/// PUBACK for the server's QoS 1 PUBLISH `pkid`.
pub fn puback(pkid: u16, out: &mut Vec<u8>) {
    frame(0x40, &pkid.to_be_bytes(), out);
}

/// DISCONNECT.
pub fn disconnect(out: &mut Vec<u8>) {
    frame(0xe0, &[], out);
}

/// PINGREQ (the server answers PINGRESP, [`Packet::Other`]`(13)`).
pub fn pingreq(out: &mut Vec<u8>) {
    frame(0xc0, &[], out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{
        ConnAck, ConnectReturnCode, Packet as Wire, Protocol, PubAck, PubAckReason, Publish, QoS,
        SubAck, SubscribeReasonCode,
    };

    /// rumqttd's reading of bytes we wrote.
    fn read(bytes: &[u8]) -> Wire {
        let mut buf = BytesMut::from(bytes);
        let packet = V4.read_mut(&mut buf, 1 << 20).unwrap();
        assert!(buf.is_empty(), "rumqttd left {} bytes", buf.len());
        packet
    }

    /// Our reading of bytes rumqttd wrote.
    fn decoded(packet: Wire) -> Packet {
        let mut buf = BytesMut::new();
        V4.write(packet, &mut buf).unwrap();
        let packet = decode(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(buf.is_empty());
        packet
    }

    #[test]
    fn a_real_codec_reads_what_we_write() {
        let mut out = Vec::new();
        connect(
            "dev-1",
            "0ne1/registrations/dev-1/api-version=x",
            Some("sas"),
            60,
            &mut out,
        );
        match read(&out) {
            Wire::Connect(connect, _, will, _, Some(login)) => {
                assert_eq!(connect.client_id, "dev-1");
                assert_eq!(connect.keep_alive, 60);
                assert!(connect.clean_session);
                assert!(will.is_none());
                assert_eq!(login.username, "0ne1/registrations/dev-1/api-version=x");
                assert_eq!(login.password, "sas");
            }
            other => panic!("{other:?}"),
        }

        // An X.509 device: no password.
        out.clear();
        connect(
            "dev-2",
            "0ne1/registrations/dev-2/api-version=x",
            None,
            60,
            &mut out,
        );
        assert_eq!(out[9], 0b1000_0010, "username and clean session flags only");
        match read(&out) {
            Wire::Connect(connect, _, _, _, Some(login)) => {
                assert_eq!(connect.client_id, "dev-2");
                assert_eq!(login.username, "0ne1/registrations/dev-2/api-version=x");
                assert_eq!(login.password, "");
            }
            other => panic!("{other:?}"),
        }

        out.clear();
        subscribe(7, "$dps/registrations/res/#", 1, &mut out);
        match read(&out) {
            Wire::Subscribe(sub, _) => {
                assert_eq!(sub.pkid, 7);
                assert_eq!(sub.filters[0].path, "$dps/registrations/res/#");
                assert_eq!(sub.filters[0].qos, QoS::AtLeastOnce);
            }
            other => panic!("{other:?}"),
        }

        out.clear();
        let payload = vec![b'x'; 300]; // a two-byte remaining length
        publish_qos1(
            9,
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            &payload,
            &mut out,
        );
        match read(&out) {
            Wire::Publish(publish, _) => {
                assert_eq!(
                    &publish.topic[..],
                    b"$dps/registrations/PUT/iotdps-register/?$rid=1"
                );
                assert_eq!(&publish.payload[..], &payload[..]);
                // rumqttd keeps qos and pkid private; its storage format starts with them.
                let raw = publish.serialize();
                assert_eq!(&raw[..3], &[0b0011_0010, 0, 9]);
            }
            other => panic!("{other:?}"),
        }

        out.clear();
        puback(513, &mut out);
        assert!(matches!(
            read(&out),
            Wire::PubAck(PubAck { pkid: 513, .. }, _)
        ));
        out.clear();
        disconnect(&mut out);
        assert!(matches!(read(&out), Wire::Disconnect(..)));
    }

    #[test]
    fn we_read_what_a_real_codec_writes() {
        let connack = Wire::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            },
            None,
        );
        assert_eq!(
            decoded(connack),
            Packet::ConnAck {
                session_present: false,
                code: 5
            }
        );
        let suback = Wire::SubAck(
            SubAck {
                pkid: 1,
                return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            },
            None,
        );
        assert_eq!(
            decoded(suback),
            Packet::SubAck {
                pkid: 1,
                codes: vec![1]
            }
        );
        let puback = Wire::PubAck(
            PubAck {
                pkid: 3,
                reason: PubAckReason::Success,
            },
            None,
        );
        assert_eq!(decoded(puback), Packet::PubAck { pkid: 3 });
        let publish = Publish::new("$dps/registrations/res/200/?$rid=1", "{}", false);
        assert_eq!(
            decoded(Wire::Publish(publish, None)),
            Packet::Publish {
                qos: 0,
                pkid: 0,
                topic: "$dps/registrations/res/200/?$rid=1".into(),
                payload: Bytes::from_static(b"{}"),
            }
        );
    }

    #[test]
    fn a_qos1_publish_carries_its_packet_id() {
        // 0x32, remaining 9: topic "a/b" (2+3), pkid 0x0102, payload "hi".
        let mut buf = BytesMut::from(&[0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'h', b'i'][..]);
        assert_eq!(
            decode(&mut buf, 64).unwrap(),
            Some(Packet::Publish {
                qos: 1,
                pkid: 0x0102,
                topic: "a/b".into(),
                payload: Bytes::from_static(b"hi"),
            })
        );
    }

    #[test]
    fn partial_frames_wait_and_long_ones_are_refused() {
        let mut out = Vec::new();
        publish_qos1(1, "t", &[0; 200], &mut out);
        for cut in [0, 1, 2, out.len() - 1] {
            let mut buf = BytesMut::from(&out[..cut]);
            assert_eq!(decode(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
        let mut buf = BytesMut::from(&out[..3]);
        assert!(matches!(
            decode(&mut buf, 100),
            Err(DecodeError::TooLong { .. })
        ));
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            decode(&mut buf, usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[0x20, 1, 0][..]);
        assert!(matches!(
            decode(&mut buf, 64),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn two_packets_in_one_read_come_out_one_at_a_time() {
        let mut buf = BytesMut::from(&[0x40, 2, 0, 1, 0x40, 2, 0, 2][..]);
        assert_eq!(decode(&mut buf, 64), Ok(Some(Packet::PubAck { pkid: 1 })));
        assert_eq!(decode(&mut buf, 64), Ok(Some(Packet::PubAck { pkid: 2 })));
        assert_eq!(decode(&mut buf, 64), Ok(None));
    }
}
