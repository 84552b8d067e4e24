//! A DPS device over AMQP 1.0 for tests, on fe2o3-amqp's client over a tokio-rustls stream
//! of the test's own (for client certificates): [`connect`] opens a connection with or without
//! SASL, [`Device`] attaches the two links on a device address and sends requests as the
//! Node SDK does ([`register_message`], [`poll_message`], or any [`request_message`]), and
//! [`closed_with`] says how the server ended a connection.

use std::net::SocketAddr;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::DeviceCert;

/// How long a test waits for any one answer before it fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A TLS connection to `addr` as `localhost`, trusting `root_der` only, with `device`'s chain
/// as client certificate if given.
pub async fn tls(
    addr: SocketAddr,
    root_der: &[u8],
    device: Option<&DeviceCert>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    // As the SDKs' stacks do: small frames go out at once, not after a delayed ACK.
    tcp.set_nodelay(true).unwrap();
    tokio_rustls::TlsConnector::from(crate::tls::client_config(root_der, device))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// An AMQP connection over `tls` (or any byte stream: AMQP over WebSocket): SASL `profile`
/// if given (else none).
pub async fn connect<S>(tls: S, profile: Option<SaslProfile>) -> ConnectionHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let builder = Connection::builder()
        .container_id("dps-amqp-test")
        .hostname("localhost");
    let builder = match profile {
        Some(profile) => builder.sasl_profile(profile),
        None => builder,
    };
    tokio::time::timeout(ANSWER_TIMEOUT, builder.open_with_stream(tls))
        .await
        .expect("the connection opens in time")
        .expect("the connection opens")
}

/// What became of a request.
#[derive(Debug)]
pub enum Reply {
    /// Accepted, and the answer message (JSON body, `retry-after`).
    Answer {
        body: serde_json::Value,
        retry_after: Option<String>,
    },
    /// Rejected: the error's condition, description as JSON, and `retry-after` in its info.
    Rejected {
        condition: String,
        description: serde_json::Value,
        retry_after: Option<String>,
    },
}

/// A device connection with its session and two links.
pub struct Device {
    pub connection: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    pub sender: Sender,
    pub receiver: Receiver,
}

impl Device {
    /// Begins a session and attaches the receiver, then the sender link (as Node does) on
    /// `address` (`{idScope}/registrations/{registrationId}`).
    pub async fn attach(mut connection: ConnectionHandle<()>, address: &str) -> Device {
        let mut session = Session::begin(&mut connection).await.unwrap();
        let receiver = Receiver::attach(&mut session, "receiver", address)
            .await
            .unwrap();
        let sender = Sender::attach(&mut session, "sender", address)
            .await
            .unwrap();
        Device {
            connection,
            session,
            sender,
            receiver,
        }
    }

    /// Sends `message` and returns its outcome, and the answer if it was accepted.
    pub async fn request(&mut self, message: Message<Body<Value>>) -> Reply {
        let correlation = message
            .properties
            .as_ref()
            .and_then(|p| p.correlation_id.clone());
        let outcome = tokio::time::timeout(ANSWER_TIMEOUT, self.sender.send(message))
            .await
            .expect("the request is settled in time")
            .expect("the request is sent");
        match outcome {
            Outcome::Accepted(_) => {}
            Outcome::Rejected(rejected) => {
                let error = rejected.error.expect("a rejection carries an error");
                let retry_after = error
                    .info
                    .as_ref()
                    .and_then(|info| {
                        info.get(&fe2o3_amqp::types::primitives::Symbol::from("retry-after"))
                            .cloned()
                    })
                    .map(|v| match v {
                        Value::String(s) => s,
                        other => panic!("retry-after is {other:?}"),
                    });
                return Reply::Rejected {
                    condition: format!("{:?}", error.condition),
                    description: serde_json::from_str(error.description.as_deref().unwrap())
                        .unwrap(),
                    retry_after,
                };
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        let delivery = tokio::time::timeout(ANSWER_TIMEOUT, self.receiver.recv::<Body<Value>>())
            .await
            .expect("an answer in time")
            .expect("an answer");
        self.receiver.accept(&delivery).await.unwrap();
        let message = delivery.into_message();
        assert_eq!(
            message
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.clone()),
            correlation,
            "the answer carries the request's correlation id"
        );
        let retry_after = message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get("retry-after").cloned())
            .map(|v| match v {
                SimpleValue::String(s) => s,
                other => panic!("retry-after is {other:?}"),
            });
        let Body::Data(sections) = message.body else {
            panic!("the answer body is not a data section: {:?}", message.body);
        };
        Reply::Answer {
            body: serde_json::from_slice(sections[0].0.as_slice()).unwrap(),
            retry_after,
        }
    }

    pub async fn register(&mut self) -> Reply {
        self.request(register_message(Some(&uuid::Uuid::new_v4().to_string())))
            .await
    }

    pub async fn poll(&mut self, operation_id: &str) -> Reply {
        self.request(poll_message(operation_id)).await
    }

    /// Registers and polls until the status is no longer `assigning`; returns the last body.
    pub async fn register_until_done(&mut self) -> serde_json::Value {
        let Reply::Answer { body, .. } = self.register().await else {
            panic!("the register was rejected");
        };
        assert_eq!(body["status"], "assigning", "{body}");
        let operation_id = body["operationId"].as_str().unwrap().to_owned();
        for _ in 0..100 {
            match self.poll(&operation_id).await {
                Reply::Answer { body, .. } if body["status"] == "assigning" => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Reply::Answer { body, .. } => return body,
                other => panic!("poll: {other:?}"),
            }
        }
        panic!("the registration never finished");
    }

    pub async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// A register request as Node sends it.
pub fn register_message(correlation_id: Option<&str>) -> Message<Body<Value>> {
    request_message(
        correlation_id,
        &[
            ("iotdps-operation-type", "iotdps-register".into()),
            ("iotdps-forceRegistration", SimpleValue::Bool(false)),
        ],
        Body::Data(vec![Data(Binary::from(br#"{"registrationId":"x"}"#.to_vec()))].into()),
    )
}

/// A poll as Node sends it (an empty string body).
pub fn poll_message(operation_id: &str) -> Message<Body<Value>> {
    request_message(
        Some(&uuid::Uuid::new_v4().to_string()),
        &[
            ("iotdps-operation-type", "iotdps-get-operationstatus".into()),
            ("iotdps-operation-id", operation_id.into()),
        ],
        Body::Value(AmqpValue(Value::String(String::new()))),
    )
}

pub fn request_message(
    correlation_id: Option<&str>,
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
            correlation_id: correlation_id.map(|c| MessageId::String(c.to_owned())),
            ..Properties::default()
        }),
        application_properties: Some(application.build()),
        body,
        footer: None,
    }
}

/// Waits for the server to end `connection`; returns the error it closed with, if any.
pub async fn closed_with(connection: &mut ConnectionHandle<()>) -> Option<String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, connection.on_close())
        .await
        .expect("the server closes the connection in time")
    {
        Err(fe2o3_amqp::connection::Error::RemoteClosedWithError(e)) => Some(format!(
            "{:?} {}",
            e.condition,
            e.description.unwrap_or_default()
        )),
        _ => None,
    }
}
