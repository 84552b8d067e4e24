//! A device over AMQP 1.0 (`dps-protocol.md` §6), on fe2o3-amqp's client over the device's
//! own TLS stream: SASL PLAIN with the SAS token (symmetric key) or ANONYMOUS (X.509, the
//! identity is the client certificate), one session, a receiver then a sender link on
//! `{idScope}/registrations/{registrationId}` (as the Node SDK attaches them), requests by
//! `iotdps-operation-type`, answers matched by `correlation-id`, failures as rejected
//! dispositions whose description is DPS's error JSON.

use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, Fields};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use serde::Deserialize;

use super::{timeout, Answer, Exchange, Failure, Identity, Step, Stream, SERVER_NAME};

/// The device api-version of the link property (the Node SDK's).
const API_VERSION: &str = "2019-03-31";
/// Largest frame the device accepts: DPS's message limit and headers fit in one.
const MAX_FRAME: u32 = 128 * 1024;

/// TLS stream → AMQP header, SASL, OPEN, BEGIN and the two ATTACHes, each phase within
/// `limit`.
pub(super) async fn open(
    stream: Stream,
    device: &Identity<'_>,
    limit: Duration,
) -> Result<Link, Failure> {
    let profile = match device.sas_token() {
        Some(token) => SaslProfile::Plain {
            username: device.resource.clone(),
            password: token,
        },
        None => SaslProfile::Anonymous,
    };
    let opening = Connection::builder()
        .container_id(device.registration_id)
        .hostname(SERVER_NAME)
        .max_frame_size(MAX_FRAME)
        .sasl_profile(profile)
        .open_with_stream(stream);
    let mut connection = tokio::time::timeout(limit, opening)
        .await
        .map_err(timeout(Step::Open))?
        .map_err(|e| match e {
            OpenError::Io(_) => Failure::Closed,
            OpenError::SaslError { .. } => Failure::Refused,
            _ => Failure::Protocol("AMQP open"),
        })?;
    let attaching = async {
        // dpsd ends a connection it does not authorize right after its OPEN: the session is
        // where a refusal shows.
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|_| Failure::Refused)?;
        let mut properties = Fields::new();
        properties.insert(
            Symbol::from("com.microsoft:api-version"),
            Value::String(API_VERSION.to_owned()),
        );
        let receiver = Receiver::builder()
            .name("receiver")
            .source(device.resource.clone())
            .properties(properties.clone())
            .attach(&mut session)
            .await
            .map_err(|_| Failure::Attach)?;
        let sender = Sender::builder()
            .name("sender")
            .target(device.resource.clone())
            .properties(properties)
            .attach(&mut session)
            .await
            .map_err(|_| Failure::Attach)?;
        Ok::<_, Failure>((session, receiver, sender))
    };
    let (session, receiver, sender) = tokio::time::timeout(limit, attaching)
        .await
        .map_err(timeout(Step::Subscribe))??;
    Ok(Link {
        register_body: serde_json::json!({ "registrationId": device.registration_id })
            .to_string()
            .into_bytes(),
        sender,
        receiver,
        _session: session,
        connection,
    })
}

/// One device's AMQP connection with its session and links. Dropping it ends them (fe2o3's
/// handles send END and CLOSE when dropped).
pub(super) struct Link {
    register_body: Vec<u8>,
    sender: Sender,
    receiver: Receiver,
    _session: SessionHandle<()>,
    connection: ConnectionHandle<()>,
}

impl Exchange for Link {
    async fn request(
        &mut self,
        n: u32,
        operation: Option<&str>,
    ) -> Result<(Answer, Bytes), Failure> {
        let correlation = MessageId::Ulong(u64::from(n));
        let message = match operation {
            None => request(
                correlation.clone(),
                &[
                    ("iotdps-operation-type", "iotdps-register".into()),
                    ("iotdps-forceRegistration", SimpleValue::Bool(false)),
                ],
                Body::Data(vec![Data(Binary::from(self.register_body.clone()))].into()),
            ),
            Some(id) => request(
                correlation.clone(),
                &[
                    ("iotdps-operation-type", "iotdps-get-operationstatus".into()),
                    ("iotdps-operation-id", id.into()),
                ],
                // As the Node SDK polls: an empty string body.
                Body::Value(AmqpValue(Value::String(String::new()))),
            ),
        };
        match self
            .sender
            .send(message)
            .await
            .map_err(|_| Failure::Closed)?
        {
            Outcome::Accepted(_) => {}
            Outcome::Rejected(rejected) => {
                return rejection(rejected.error).map(|a| (a, Bytes::new()))
            }
            _ => return Err(Failure::Protocol("request neither accepted nor rejected")),
        }
        let delivery = self
            .receiver
            .recv::<Body<Value>>()
            .await
            .map_err(|_| Failure::Closed)?;
        self.receiver
            .accept(&delivery)
            .await
            .map_err(|_| Failure::Closed)?;
        let message = delivery.into_message();
        if message.properties.and_then(|p| p.correlation_id) != Some(correlation) {
            return Err(Failure::Protocol("answer to another request"));
        }
        let retry_after = message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get("retry-after").or_else(|| p.0.get("Retry-After")))
            .and_then(|v| match v {
                SimpleValue::String(s) => s.parse().ok(),
                _ => None,
            });
        let body = match message.body {
            Body::Data(sections) => sections
                .into_iter()
                .next()
                .map(|d| Bytes::from(d.0.into_vec()))
                .unwrap_or_default(),
            _ => return Err(Failure::Protocol("answer body is not a data section")),
        };
        // An answer message is DPS's 200 or 202: the body's status says which.
        Ok((
            Answer {
                status: 200,
                retry_after,
            },
            body,
        ))
    }

    /// CLOSE, waiting for the server's; the session and links end with it.
    async fn close(&mut self) {
        let _ = self.connection.close().await;
    }
}

fn request(
    correlation: MessageId,
    properties: &[(&str, SimpleValue)],
    body: Body<Value>,
) -> Message<Body<Value>> {
    let mut application = ApplicationProperties::builder();
    for (key, value) in properties {
        application = application.insert(*key, value.clone());
    }
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: Some(correlation),
            ..Properties::default()
        }),
        application_properties: Some(application.build()),
        body,
        footer: None,
    }
}

/// DPS's error JSON in a rejection's description.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetails {
    error_code: u32,
}

/// The answer a rejection stands for: `errorCode / 1000` as the status, `retry-after` from
/// the error's info.
fn rejection(error: Option<definitions::Error>) -> Result<Answer, Failure> {
    let error = error.ok_or(Failure::Protocol("rejection without an error"))?;
    let details: ErrorDetails = error
        .description
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .ok_or(Failure::Protocol("rejection without DPS error JSON"))?;
    let status = u16::try_from(details.error_code / 1000)
        .map_err(|_| Failure::Protocol("rejection with an impossible errorCode"))?;
    let retry_after = error.info.as_ref().and_then(|info| {
        ["retry-after", "Retry-After"]
            .into_iter()
            .find_map(|key| info.get(&Symbol::from(key)))
            .and_then(|v| match v {
                Value::String(s) => s.parse().ok(),
                Value::Uint(n) => Some(u64::from(*n)),
                Value::Ulong(n) => Some(*n),
                _ => None,
            })
    });
    Ok(Answer {
        status,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::AmqpError;

    fn error(description: &str, retry_after: Option<&str>) -> definitions::Error {
        let info = retry_after.map(|secs| {
            let mut info = Fields::new();
            info.insert(Symbol::from("retry-after"), Value::String(secs.to_owned()));
            info
        });
        definitions::Error::new(AmqpError::NotAllowed, description.to_owned(), info)
    }

    #[test]
    fn a_rejection_becomes_the_status_of_its_error_code() {
        let throttled = error(r#"{"errorCode":429001,"message":"Throttled"}"#, Some("3"));
        assert_eq!(
            rejection(Some(throttled)),
            Ok(Answer {
                status: 429,
                retry_after: Some(3)
            })
        );
        let unauthorized = error(r#"{"errorCode":401002,"trackingId":"t"}"#, None);
        assert_eq!(rejection(Some(unauthorized)).map(|a| a.status), Ok(401));
        for bad in [
            "not json",
            r#"{"message":"no code"}"#,
            r#"{"errorCode":999999999}"#,
        ] {
            assert!(matches!(
                rejection(Some(error(bad, None))),
                Err(Failure::Protocol(_))
            ));
        }
        assert!(rejection(None).is_err());
    }
}
