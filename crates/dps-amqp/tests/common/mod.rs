//! An in-process AMQP frontend on 127.0.0.1 port 0 over a temporary store, and a device built
//! on fe2o3-amqp's client (over our own tokio-rustls stream, for client certificates) that
//! talks to it as the DPS SDKs do, or misbehaves on purpose.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_amqp::{AmqpCounters, AmqpLimits, AmqpStats};
use dps_attest::SasToken;
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig};
use dps_store::{Precondition, Store};
use dps_test_util::{DeviceCert, TestPki};
use dps_types::{EnrollmentGroup, HubName, IdScope, IndividualEnrollment, SymmetricKey};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub const SCOPE: &str = "0ne00000A1B";
pub const HUB: &str = "hub-a.azure-devices.net";
/// How long a test waits for any one answer before it fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap()
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn address(id: &str) -> String {
    format!("{SCOPE}/registrations/{id}")
}

/// A device SAS token as the Node SDK signs it (raw `sr`, `skn=registration`).
pub fn sas_token(id: &str, key: &SymmetricKey) -> String {
    SasToken::generate(&address(id), key, Some("registration"), unix_now() + 3600)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A running frontend.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub store: Store,
    pub registrar: Registrar,
    pub counters: AmqpCounters,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Self::with_limits(AmqpLimits::default()).await
    }

    pub async fn with_limits(limits: AmqpLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hubs = vec![LinkedHub {
            host_name: HubName::parse(HUB).unwrap(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }];
        let config = RegistrarConfig::new(IdScope::parse(SCOPE).unwrap(), hubs);
        let registrar = Registrar::new(store.clone(), config).unwrap();
        let pki = TestPki::new();
        let server_cert = pki.server("localhost");
        let provider = provider();
        let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(dps_attest::PossessionVerifier::new(provider)))
            .with_single_cert(certs(&server_cert.chain_pem), key(&server_cert.key_pem))
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = AmqpCounters::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dps_amqp::serve_with_counters(
            listener,
            Arc::new(tls),
            registrar.clone(),
            limits,
            counters.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            pki,
            store,
            registrar,
            counters,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn stats(&self) -> AmqpStats {
        self.counters.snapshot()
    }

    /// The refusal reasons the registrar recorded for `id`, oldest first, and their transport.
    pub fn refusals(&self, id: &str) -> Vec<(&'static str, String)> {
        self.registrar
            .diagnostics()
            .attempts(id)
            .iter()
            .map(|a| {
                (
                    a.reason,
                    serde_json::to_value(a.transport)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    pub async fn enroll(&self, body: serde_json::Value) {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.registrar.enrollment_rules()).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    pub async fn enroll_group(&self, body: serde_json::Value) {
        let g: EnrollmentGroup = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.registrar.enrollment_rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    /// An individual symmetric-key enrollment; returns its primary key.
    pub async fn enroll_sas(&self, id: &str) -> SymmetricKey {
        let key = SymmetricKey::generate();
        self.enroll(json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key.expose_base64()}}}))
            .await;
        key
    }

    /// A TLS connection, with `device`'s chain as client certificate if given.
    pub async fn tls(&self, device: Option<&DeviceCert>) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.pki.root().der()))
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match device {
            Some(d) => builder
                .with_client_auth_cert(certs(&d.chain_pem), key(&d.key_pem))
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An AMQP connection: SASL `profile` if given (else none), `device`'s certificate if given.
    pub async fn connection(
        &self,
        device: Option<&DeviceCert>,
        profile: Option<SaslProfile>,
    ) -> ConnectionHandle<()> {
        let tls = self.tls(device).await;
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

    /// A symmetric-key device's connection with SASL PLAIN.
    pub async fn sas_connection(&self, id: &str, key: &SymmetricKey) -> ConnectionHandle<()> {
        let profile = SaslProfile::Plain {
            username: address(id),
            password: sas_token(id, key),
        };
        self.connection(None, Some(profile)).await
    }

    /// A device with both links attached on its own address.
    pub async fn sas_device(&self, id: &str, key: &SymmetricKey) -> Device {
        let connection = self.sas_connection(id, key).await;
        Device::attach(connection, id).await
    }

    /// Proves the frontend still serves: a fresh device registers to `assigned`.
    pub async fn assert_still_serving(&self) {
        let id = unique("canary");
        let key = self.enroll_sas(&id).await;
        let mut device = self.sas_device(&id, &key).await;
        let state = device.register_until_done().await;
        assert_eq!(state["status"], "assigned", "{state}");
        device.close().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
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
    /// the device's address.
    pub async fn attach(mut connection: ConnectionHandle<()>, id: &str) -> Device {
        let mut session = Session::begin(&mut connection).await.unwrap();
        let receiver = Receiver::attach(&mut session, "receiver", address(id))
            .await
            .unwrap();
        let sender = Sender::attach(&mut session, "sender", address(id))
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
