//! An in-process MQTT frontend on 127.0.0.1 port 0 over a temporary store, and a small MQTT
//! 3.1.1 client built on rumqttd's codec and tokio-rustls that talks to it as the DPS SDKs do
//! (and can also misbehave: raw bytes, oversized packets, silence).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use dps_attest::SasToken;
use dps_mqtt::{codec, MqttCounters, MqttLimits, MqttStats};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig};
use dps_store::{Precondition, Store};
use dps_test_util::{DeviceCert, TestPki};
use dps_types::{EnrollmentGroup, HubName, IdScope, IndividualEnrollment, SymmetricKey};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Connect, ConnectReturnCode, Filter, Login, Packet, Protocol, PubAck, PubAckReason, QoS,
    RetainForwardRule, Subscribe,
};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub const SCOPE: &str = "0ne00000A1B";
pub const HUB: &str = "hub-a.azure-devices.net";
/// How long a test waits for any one answer before it fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

use dps_test_util::tls;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A running frontend.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub store: Store,
    pub registrar: Registrar,
    pub counters: MqttCounters,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Self::with_limits(MqttLimits {
            connect_timeout: Duration::from_millis(500),
            ..MqttLimits::default()
        })
        .await
    }

    pub async fn with_limits(limits: MqttLimits) -> Server {
        // Plenty for the few devices a test runs at once.
        Self::with(limits, 64).await
    }

    /// A server whose registrar runs at most `max_in_flight` registrations at once.
    pub async fn with(limits: MqttLimits, max_in_flight: usize) -> Server {
        Self::build(limits, max_in_flight, None).await
    }

    /// A server whose registrar publishes every assignment through an assignment feed
    /// started with `feed` (the real RabbitMQ).
    pub async fn with_feed(limits: MqttLimits, feed: dps_feed::FeedConfig) -> Server {
        Self::build(limits, 4096, Some(feed)).await
    }

    async fn build(
        limits: MqttLimits,
        max_in_flight: usize,
        feed: Option<dps_feed::FeedConfig>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hubs = vec![LinkedHub {
            host_name: HubName::parse(HUB).unwrap(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }];
        let mut config = RegistrarConfig::new(IdScope::parse(SCOPE).unwrap(), hubs);
        config.max_in_flight = max_in_flight;
        let feed = match feed {
            Some(feed) => Some(
                dps_registrar::FeedLink::start(&store, feed, vec![HubName::parse(HUB).unwrap()])
                    .await
                    .unwrap(),
            ),
            None => None,
        };
        let registrar = Registrar::with_feed(store.clone(), config, feed).unwrap();
        let pki = TestPki::new();
        let tls = tls::server_config(&pki, |provider| {
            Arc::new(dps_attest::PossessionVerifier::new(provider))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = MqttCounters::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dps_mqtt::serve_with_counters(
            listener,
            tls,
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

    pub fn stats(&self) -> MqttStats {
        self.counters.snapshot()
    }

    /// The refusal reasons the registrar recorded for `id`, oldest first.
    pub fn refusals(&self, id: &str) -> Vec<&'static str> {
        self.registrar
            .diagnostics()
            .attempts(id)
            .iter()
            .map(|a| a.reason)
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

    pub async fn enroll(&self, body: Value) {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.registrar.enrollment_rules()).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    pub async fn enroll_group(&self, body: Value) {
        let g: EnrollmentGroup = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.registrar.enrollment_rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    /// An individual symmetric-key enrollment; returns its primary key.
    pub async fn enroll_sas(&self, id: &str, extra: Value) -> SymmetricKey {
        let key = SymmetricKey::generate();
        let mut body = json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key.expose_base64()}}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.enroll(body).await;
        key
    }

    /// A TLS connection, with `device`'s chain as client certificate if given.
    /// Connects (with an optional client certificate), sends CONNECT and returns the CONNACK
    /// code; a refused connection must then be closed by the server.
    pub async fn connack(
        &self,
        device: Option<&DeviceCert>,
        client_id: &str,
        username: &str,
        password: Option<&str>,
    ) -> Option<u8> {
        let mut client = self.tls(device).await;
        let code = client.connect(client_id, username, password).await;
        if code != Some(0) {
            client.assert_closed().await;
        }
        code
    }

    pub async fn tls(&self, device: Option<&DeviceCert>) -> Client {
        self.tls_from([127, 0, 0, 1], device).await
    }

    /// A TCP connection from `source` (any 127.x.y.z is loopback on Linux).
    pub async fn tcp_from(&self, source: [u8; 4]) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(self.addr).await.unwrap()
    }

    /// A TLS connection from `source`, with `device`'s chain as client certificate if given.
    pub async fn tls_from(&self, source: [u8; 4], device: Option<&DeviceCert>) -> Client {
        let tcp = self.tcp_from(source).await;
        let config = tls::client_config(&self.pki.root().der(), device);
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
            next_pkid: 0,
        }
    }

    /// A connected (CONNACK 0) and subscribed symmetric-key device.
    pub async fn sas_device(&self, id: &str, key: &SymmetricKey) -> Client {
        let mut client = self.tls(None).await;
        let token = sas_token(id, key, unix_now() + 3600);
        assert_eq!(
            client.connect(id, &username(id), Some(&token)).await,
            Some(0)
        );
        client.subscribe().await;
        client
    }

    /// Proves the frontend still serves: a fresh device registers to `assigned`.
    pub async fn assert_still_serving(&self) {
        let id = format!("canary-{}", rand_suffix());
        let key = self.enroll_sas(&id, json!({})).await;
        let mut client = self.sas_device(&id, &key).await;
        let state = client
            .register_until_done(json!({"registrationId": id}))
            .await;
        assert_eq!(state["status"], "assigned", "{state}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn rand_suffix() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

pub fn username(id: &str) -> String {
    format!("{SCOPE}/registrations/{id}/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0")
}

/// A device SAS token as Python signs it (`sr` upper-case percent-encoded, no `skn`).
pub fn sas_token(id: &str, key: &SymmetricKey, expiry: i64) -> String {
    SasToken::generate(&format!("{SCOPE}/registrations/{id}"), key, None, expiry)
}

/// A response PUBLISH, decoded.
#[derive(Debug)]
pub struct Response {
    pub topic: String,
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: Value,
}

/// A small MQTT 3.1.1 client.
pub struct Client {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    next_pkid: u16,
}

impl Client {
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        V4.write(packet, &mut out).unwrap();
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; the caller checks with `closed()`.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet; `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match V4.read_mut(&mut self.buf, 1 << 20) {
                    Ok(packet) => return Some(packet),
                    Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("the server sent a malformed packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no answer from the server in time")
    }

    /// Waits for the server to close the connection, skipping any packets before that.
    pub async fn assert_closed(&mut self) {
        while let Some(packet) = self.recv().await {
            assert!(
                !matches!(packet, Packet::Publish(..)),
                "unexpected {packet:?}"
            );
        }
    }

    /// CONNECT with keep-alive 60 s; the CONNACK return code, or `None` if the server closed
    /// without one.
    pub async fn connect(
        &mut self,
        client_id: &str,
        username: &str,
        password: Option<&str>,
    ) -> Option<u8> {
        self.connect_with_keep_alive(client_id, username, password, 60)
            .await
    }

    /// CONNECT with `keep_alive` seconds; as [`Client::connect`].
    pub async fn connect_with_keep_alive(
        &mut self,
        client_id: &str,
        username: &str,
        password: Option<&str>,
        keep_alive: u16,
    ) -> Option<u8> {
        self.send(Packet::Connect(
            Connect {
                keep_alive,
                client_id: client_id.into(),
                clean_session: false,
            },
            None,
            None,
            None,
            Some(Login {
                username: username.into(),
                password: password.unwrap_or_default().into(),
            }),
        ))
        .await;
        match self.recv().await? {
            Packet::ConnAck(ack, _) => {
                assert!(!ack.session_present);
                Some(match ack.code {
                    ConnectReturnCode::Success => 0,
                    ConnectReturnCode::RefusedProtocolVersion => 1,
                    ConnectReturnCode::ClientIdentifierNotValid => 2,
                    ConnectReturnCode::ServiceUnavailable => 3,
                    ConnectReturnCode::BadUserNamePassword => 4,
                    ConnectReturnCode::NotAuthorized => 5,
                    other => panic!("{other:?}"),
                })
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self) {
        self.send(Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: vec![Filter {
                    path: "$dps/registrations/res/#".into(),
                    qos: QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        ))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack, _)) => assert_eq!(ack.pkid, 1),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// PUBLISH at QoS 1, expects our PUBACK and the response, PUBACKs the response.
    pub async fn request(&mut self, topic: &str, payload: &[u8]) -> Response {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        let pkid = self.next_pkid;
        let publish = codec::build_publish(Some(pkid), topic.as_bytes(), payload).unwrap();
        self.send(Packet::Publish(publish, None)).await;
        match self.recv().await {
            Some(Packet::PubAck(ack, _)) => assert_eq!(ack.pkid, pkid),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let Some(Packet::Publish(response, _)) = self.recv().await else {
            panic!("expected a response PUBLISH")
        };
        let (qos, response_pkid) = codec::publish_qos_pkid(&response);
        assert_eq!(qos, codec::QoS::AtLeastOnce);
        self.send(Packet::PubAck(
            PubAck {
                pkid: response_pkid,
                reason: PubAckReason::Success,
            },
            None,
        ))
        .await;
        parse_response(
            std::str::from_utf8(&response.topic).unwrap(),
            &response.payload,
        )
    }

    pub async fn register(&mut self, rid: &str, body: Value) -> Response {
        let topic = format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}");
        self.request(&topic, body.to_string().as_bytes()).await
    }

    pub async fn poll(&mut self, rid: &str, operation_id: &str) -> Response {
        let topic = format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation_id}");
        self.request(&topic, b" ").await
    }

    /// Registers (expects 202 assigning) and polls until the status is no longer
    /// `assigning`; returns the final 200 body.
    pub async fn register_until_done(&mut self, body: Value) -> Value {
        let registered = self.register("r1", body).await;
        assert_eq!(registered.status, 202, "{registered:?}");
        assert_eq!(registered.retry_after, Some(1));
        assert_eq!(registered.body["status"], "assigning");
        let operation_id = registered.body["operationId"].as_str().unwrap().to_owned();
        for attempt in 0..100 {
            let polled = self.poll(&format!("p{attempt}"), &operation_id).await;
            match polled.status {
                202 => {
                    assert_eq!(polled.body["status"], "assigning");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                200 => {
                    assert_eq!(polled.body["operationId"], operation_id.as_str());
                    assert_eq!(
                        polled.body["status"],
                        polled.body["registrationState"]["status"]
                    );
                    return polled.body;
                }
                _ => panic!("unexpected poll answer {polled:?}"),
            }
        }
        panic!("the registration did not finish");
    }
}

/// Parses a response the way the SDKs do (Python splits on `$`, everyone reads `retry-after`).
fn parse_response(topic: &str, payload: &[u8]) -> Response {
    let rest = topic.strip_prefix("$dps/registrations/res/").expect(topic);
    let (status, query) = rest.split_once("/?").expect(topic);
    assert_eq!(topic.matches('$').count(), 2, "{topic}");
    let mut pairs = query.split('&').map(|p| p.split_once('=').expect(topic));
    assert_eq!(pairs.next().map(|p| p.0), Some("$rid"), "{topic}");
    let retry_after = pairs
        .find(|p| p.0 == "retry-after")
        .map(|p| p.1.parse().unwrap());
    Response {
        topic: topic.to_owned(),
        status: status.parse().unwrap(),
        retry_after,
        body: serde_json::from_slice(payload).unwrap(),
    }
}
