//! A device over MQTT: CONNECT (SAS token as password, or none for X.509), SUBSCRIBE to the
//! response topics, then each request a QoS 1 PUBLISH answered on
//! `$dps/registrations/res/<status>/?$rid=<rid>`. The codec is [`crate::mqtt`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{timeout, Answer, Exchange, Failure, Identity, Step, Stream};
use crate::mqtt::{self, Packet};

/// The device api-version of the MQTT username (the C SDK's).
const API_VERSION: &str = "2021-06-01";
/// The only subscription a DPS device makes.
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";
/// Largest packet accepted from the server: DPS's maximum message size.
const MAX_PACKET: usize = 96 * 1024;
/// MQTT keep-alive announced in CONNECT (the Python SDK's default); a device lives seconds.
const KEEP_ALIVE_SECS: u16 = 60;

/// A response topic: `$dps/registrations/res/<status>/?$rid=<rid>[&retry-after=<n>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseTopic {
    /// HTTP-like status.
    pub status: u16,
    /// The request id echoed back.
    pub rid: String,
    /// Seconds to wait, when given.
    pub retry_after: Option<u64>,
}

/// Parses a response topic; `None` if it is not one.
pub fn parse_response_topic(topic: &str) -> Option<ResponseTopic> {
    let (status, query) = topic.strip_prefix(RESPONSE_PREFIX)?.split_once("/?")?;
    let mut rid = None;
    let mut retry_after = None;
    for pair in query.split('&') {
        match pair.split_once('=')? {
            ("$rid", value) => rid = Some(value.to_owned()),
            ("retry-after", value) => retry_after = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some(ResponseTopic {
        status: status.parse().ok()?,
        rid: rid?,
        retry_after,
    })
}

/// CONNECT → CONNACK and SUBSCRIBE → SUBACK, each within `limit`.
pub(super) async fn open(
    stream: Stream,
    device: &Identity<'_>,
    limit: Duration,
) -> Result<Connection, Failure> {
    let mut conn = Connection {
        stream,
        buf: BytesMut::with_capacity(1024),
        out: Vec::with_capacity(1024),
        register_body: serde_json::json!({ "registrationId": device.registration_id }).to_string(),
    };
    let username = format!("{}/api-version={API_VERSION}", device.resource);
    let password = device.sas_token();
    mqtt::connect(
        device.registration_id,
        &username,
        password.as_deref(),
        KEEP_ALIVE_SECS,
        &mut conn.out,
    );
    let connack = tokio::time::timeout(limit, async {
        conn.flush().await?;
        conn.recv().await
    })
    .await
    .map_err(timeout(Step::Open))??;
    match connack {
        Packet::ConnAck {
            session_present: false,
            code: 0,
        } => {}
        Packet::ConnAck { code: 0, .. } => return Err(Failure::Protocol("session present")),
        Packet::ConnAck { code, .. } => return Err(Failure::ConnAck(code)),
        _ => return Err(Failure::Protocol("expected CONNACK")),
    }

    mqtt::subscribe(1, RESPONSE_FILTER, 1, &mut conn.out);
    let suback = tokio::time::timeout(limit, async {
        conn.flush().await?;
        conn.recv().await
    })
    .await
    .map_err(timeout(Step::Subscribe))??;
    match suback {
        Packet::SubAck { pkid: 1, codes } if codes.first().is_some_and(|c| *c <= 1) => Ok(conn),
        _ => Err(Failure::Protocol("subscription refused")),
    }
}

/// One device's MQTT connection: bytes in `buf` until a whole packet is there, bytes to send
/// collected in `out`.
pub(super) struct Connection {
    stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
    register_body: String,
}

impl Connection {
    async fn flush(&mut self) -> Result<(), Failure> {
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|_| Failure::Closed)?;
        self.out.clear();
        self.stream.flush().await.map_err(|_| Failure::Closed)
    }

    async fn recv(&mut self) -> Result<Packet, Failure> {
        loop {
            match mqtt::decode(&mut self.buf, MAX_PACKET) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(_) => return Err(Failure::Protocol("malformed packet")),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(Failure::Closed),
                Ok(_) => {}
            }
        }
    }
}

impl Exchange for Connection {
    /// PUBLISH at QoS 1 and wait for the response PUBLISH with our `rid` (PUBACKing it);
    /// the PUBACK for our publish may come before or after it.
    async fn request(
        &mut self,
        n: u32,
        operation: Option<&str>,
    ) -> Result<(Answer, Bytes), Failure> {
        let rid = n.to_string();
        let topic = match operation {
            None => format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
            Some(id) => format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}"
            ),
        };
        let payload = match operation {
            None => self.register_body.as_bytes(),
            Some(_) => b" ",
        };
        // Packet id 1 is the SUBSCRIBE's.
        let pkid = u16::try_from(n + 1).unwrap_or(u16::MAX);
        mqtt::publish_qos1(pkid, &topic, payload, &mut self.out);
        self.flush().await?;
        loop {
            match self.recv().await? {
                Packet::PubAck { pkid: acked } if acked == pkid => {}
                Packet::Publish {
                    qos,
                    pkid: their_pkid,
                    topic,
                    payload,
                } => {
                    if qos == 1 {
                        mqtt::puback(their_pkid, &mut self.out);
                        self.flush().await?;
                    }
                    let answer = parse_response_topic(&topic)
                        .ok_or(Failure::Protocol("not a response topic"))?;
                    if answer.rid != rid {
                        return Err(Failure::Protocol("response to another request"));
                    }
                    let answer = Answer {
                        status: answer.status,
                        retry_after: answer.retry_after,
                    };
                    return Ok((answer, payload));
                }
                _ => return Err(Failure::Protocol("unexpected packet")),
            }
        }
    }

    /// DISCONNECT and TLS close_notify, best effort.
    async fn close(&mut self) {
        mqtt::disconnect(&mut self.out);
        if self.flush().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(text: &str) -> ResponseTopic {
        parse_response_topic(text).unwrap()
    }

    #[test]
    fn response_topics_parse() {
        assert_eq!(
            topic("$dps/registrations/res/202/?$rid=1&retry-after=3"),
            ResponseTopic {
                status: 202,
                rid: "1".into(),
                retry_after: Some(3)
            }
        );
        assert_eq!(
            topic("$dps/registrations/res/200/?$rid=abc").retry_after,
            None
        );
        for bad in [
            "$dps/registrations/res/200",
            "$dps/registrations/res/x/?$rid=1",
            "$dps/registrations/res/200/?retry-after=1",
            "$dps/registrations/res/200/?$rid=1&retry-after=soon",
            "$dps/registrations/res/200/?$rid",
            "devices/x/messages",
        ] {
            assert_eq!(parse_response_topic(bad), None, "{bad}");
        }
    }
}
