//! MQTT and AMQP over WebSocket on dpsd's HTTPS listener: devices with symmetric keys and
//! X.509 certificates register through the one port; bad upgrades get clear HTTP errors; an
//! oversized message ends its own connection only; `api.websocket = false` turns it off.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::ServiceClient;
use dps_api::WebSocketBytes;
use dps_loadtest::mqtt::{self, Packet};
use dps_test_util::amqp::{self, Device};
use dps_test_util::{DeviceCert, TestPki};
use dps_types::{SymmetricKey, Timestamp};
use fe2o3_amqp::sasl_profile::SaslProfile;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const HUB: &str = "hub-ws.example.net";
/// How long a test waits for any one answer.
const WAIT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// dpsd's development CA, DER.
fn ca_der(running: &dpsd::Running) -> Vec<u8> {
    let pem = std::fs::read_to_string(&running.ca_file).unwrap();
    dps_test_util::tls::certs(&pem).remove(0).to_vec()
}

/// TLS to `addr` as `localhost`, with `device`'s chain if given, then the upgrade on `path`
/// offering `subprotocol`.
async fn websocket(
    addr: SocketAddr,
    ca: &[u8],
    device: Option<&DeviceCert>,
    path: &str,
    subprotocol: &str,
) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(dps_test_util::tls::client_config(ca, device))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("wss://localhost:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(subprotocol).unwrap(),
    );
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
        .await
        .expect("the upgrade is answered in time")?;
    assert_eq!(response.headers()["sec-websocket-protocol"], subprotocol);
    Ok(ws)
}

async fn enroll(service: &ServiceClient, id: &str, attestation: Value) {
    let response = service
        .request(reqwest::Method::PUT, &format!("/enrollments/{id}"))
        .json(&json!({ "registrationId": id, "attestation": attestation }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// Enrolls `id` with a fresh symmetric key; returns it.
async fn enroll_key(service: &ServiceClient, id: &str) -> SymmetricKey {
    let key = SymmetricKey::generate();
    let attestation = json!({"type": "symmetricKey",
        "symmetricKey": {"primaryKey": key.expose_base64()}});
    enroll(service, id, attestation).await;
    key
}

/// Enrolls `id` with a fresh device certificate of `pki`; returns it.
async fn enroll_x509(service: &ServiceClient, pki: &TestPki, id: &str) -> DeviceCert {
    let cert = pki.device(id);
    let attestation = json!({"type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": cert.cert_pem}}}});
    enroll(service, id, attestation).await;
    cert
}

/// A device SAS token for `id` under `scope`, as the Node SDK signs it.
fn device_token(scope: &str, id: &str, key: &SymmetricKey) -> String {
    dps_attest::SasToken::generate(
        &format!("{scope}/registrations/{id}"),
        key,
        Some("registration"),
        Timestamp::now().unix() + 3600,
    )
}

/// An MQTT device over a byte stream, with the load tool's packet codec.
struct MqttDevice {
    stream: WebSocketBytes<TlsStream<TcpStream>>,
    buf: BytesMut,
}

impl MqttDevice {
    async fn send(&mut self, out: Vec<u8>) {
        self.stream.write_all(&out).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.buf, 1 << 20).unwrap() {
                return packet;
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a packet in time")
                .unwrap();
            assert_ne!(read, 0, "the server closed the connection");
        }
    }

    /// CONNECT (password = SAS token, or none for X.509), then SUBSCRIBE; the CONNACK code.
    async fn connect(&mut self, scope: &str, id: &str, password: Option<&str>) -> u8 {
        let mut out = Vec::new();
        let username = format!("{scope}/registrations/{id}/api-version=2019-03-31");
        mqtt::connect(id, &username, password, 60, &mut out);
        self.send(out).await;
        let Packet::ConnAck { code, .. } = self.recv().await else {
            panic!("expected CONNACK");
        };
        if code == 0 {
            let mut out = Vec::new();
            mqtt::subscribe(1, "$dps/registrations/res/#", 1, &mut out);
            self.send(out).await;
            assert!(matches!(self.recv().await, Packet::SubAck { pkid: 1, .. }));
        }
        code
    }

    /// One request; the answer's status and JSON body.
    async fn request(&mut self, pkid: u16, topic: &str, payload: &[u8]) -> (u16, Value) {
        let mut out = Vec::new();
        mqtt::publish_qos1(pkid, topic, payload, &mut out);
        self.send(out).await;
        loop {
            match self.recv().await {
                Packet::PubAck { .. } => {}
                Packet::Publish { topic, payload, .. } => {
                    let answer = dps_loadtest::device::parse_response_topic(&topic).unwrap();
                    assert_eq!(answer.rid, pkid.to_string());
                    return (answer.status, serde_json::from_slice(&payload).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Registers and polls until done; the last body.
    async fn register(&mut self, id: &str) -> Value {
        let register = json!({ "registrationId": id }).to_string();
        let (status, body) = self
            .request(
                2,
                "$dps/registrations/PUT/iotdps-register/?$rid=2",
                register.as_bytes(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let operation = body["operationId"].as_str().unwrap().to_owned();
        for pkid in 3..100u16 {
            let topic = format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={pkid}&operationId={operation}"
            );
            let (status, body) = self.request(pkid, &topic, b" ").await;
            match status {
                200 => return body,
                202 => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("poll answered {other}: {body}"),
            }
        }
        panic!("the registration never finished");
    }
}

fn mqtt_device(ws: Ws) -> MqttDevice {
    MqttDevice {
        stream: WebSocketBytes::new(ws),
        buf: BytesMut::new(),
    }
}

/// What the service API says of `id`'s registration record.
async fn record(service: &ServiceClient, id: &str) -> Value {
    service
        .request(reqwest::Method::GET, &format!("/registrations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_over_mqtt_and_amqp_over_websocket_on_the_https_port() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start_with_hub(dir.path(), HUB, &[]).await;
    let service = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let scope = running.id_scope.to_string();
    let ca = ca_der(&running);
    let pki = TestPki::new();
    let api = running.api_addr;

    // MQTT, symmetric key, on the SDKs' path.
    let id = "ws-mqtt-sas";
    let key = enroll_key(&service, id).await;
    let ws = websocket(api, &ca, None, "/$iothub/websocket", "mqtt")
        .await
        .unwrap();
    let mut device = mqtt_device(ws);
    let token = device_token(&scope, id, &key);
    assert_eq!(device.connect(&scope, id, Some(&token)).await, 0);
    let done = device.register(id).await;
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB);

    // MQTT, X.509, on `/` (the C# SDK's path), the C SDK's spelling of the subprotocol.
    let id = "ws-mqtt-x509";
    let cert = enroll_x509(&service, &pki, id).await;
    let ws = websocket(api, &ca, Some(&cert), "/", "MQTT").await.unwrap();
    let mut device = mqtt_device(ws);
    assert_eq!(device.connect(&scope, id, None).await, 0);
    let done = device.register(id).await;
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(record(&service, id).await["status"], "assigned");

    // A wrong key is refused as on 8883: CONNACK 5, the attempt recorded as mqtt.
    let ws = websocket(api, &ca, None, "/$iothub/websocket", "mqtt")
        .await
        .unwrap();
    let mut refused = mqtt_device(ws);
    let wrong = device_token(&scope, "ws-mqtt-sas", &SymmetricKey::generate());
    assert_eq!(
        refused.connect(&scope, "ws-mqtt-sas", Some(&wrong)).await,
        5
    );
    let attempts: Value = service
        .request(reqwest::Method::GET, "/registrations/ws-mqtt-sas/attempts")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attempts["attempts"][0]["transport"], "mqtt", "{attempts}");

    // AMQP, symmetric key (SASL PLAIN).
    let id = "ws-amqp-sas";
    let key = enroll_key(&service, id).await;
    let address = format!("{scope}/registrations/{id}");
    let ws = websocket(api, &ca, None, "/$iothub/websocket", "AMQPWSB10")
        .await
        .unwrap();
    let profile = SaslProfile::Plain {
        username: address.clone(),
        password: device_token(&scope, id, &key),
    };
    let connection = amqp::connect(WebSocketBytes::new(ws), Some(profile)).await;
    let mut device = Device::attach(connection, &address).await;
    let done = device.register_until_done().await;
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB);
    device.close().await;

    // AMQP, X.509 (no SASL, as the Node SDK).
    let id = "ws-amqp-x509";
    let cert = enroll_x509(&service, &pki, id).await;
    let address = format!("{scope}/registrations/{id}");
    let ws = websocket(api, &ca, Some(&cert), "/$iothub/websocket", "AMQPWSB10")
        .await
        .unwrap();
    let connection = amqp::connect(WebSocketBytes::new(ws), None).await;
    let mut device = Device::attach(connection, &address).await;
    let done = device.register_until_done().await;
    assert_eq!(done["status"], "assigned", "{done}");
    device.close().await;
    assert_eq!(record(&service, id).await["status"], "assigned");

    running.shutdown().await.unwrap();
}

/// The HTTP status a failed upgrade got.
fn refused_status(result: Result<Ws, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_get_http_errors_and_an_oversized_message_ends_its_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start_with_hub(dir.path(), HUB, &[]).await;
    let service = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let scope = running.id_scope.to_string();
    let ca = ca_der(&running);
    let api = running.api_addr;

    let wrong_protocol = websocket(api, &ca, None, "/$iothub/websocket", "xmpp").await;
    assert_eq!(refused_status(wrong_protocol), 400);
    let wrong_path = websocket(api, &ca, None, "/enrollments", "mqtt").await;
    assert_eq!(refused_status(wrong_path), 404);

    // Pings are answered while the frontend waits for the device's first packet.
    let mut pinger = websocket(api, &ca, None, "/$iothub/websocket", "mqtt")
        .await
        .unwrap();
    pinger
        .send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, pinger.next())
        .await
        .expect("a pong in time");
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(payload))) if payload.as_ref() == b"are you there"),
        "{pong:?}"
    );

    // A device part-way through its registration, then a peer sending a message over the
    // limit: the second connection is closed, the first goes on.
    let id = "ws-survivor";
    let key = enroll_key(&service, id).await;
    let ws = websocket(api, &ca, None, "/$iothub/websocket", "mqtt")
        .await
        .unwrap();
    let mut survivor = mqtt_device(ws);
    let token = device_token(&scope, id, &key);
    assert_eq!(survivor.connect(&scope, id, Some(&token)).await, 0);

    let mut flood = websocket(api, &ca, None, "/$iothub/websocket", "mqtt")
        .await
        .unwrap();
    let oversized = vec![0x10u8; dps_api::websocket::DEFAULT_MAX_MESSAGE_BYTES + 1];
    // The server may close while the message is still going out.
    let _ = flood.send(Message::binary(oversized)).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match flood.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the oversized message's connection is closed"
    );
    // By the WebSocket layer: the bytes never reached the MQTT codec (which would have found
    // them malformed).
    let closed = |reason: &str| {
        let text = String::from_utf8(running.metrics.encode().unwrap()).unwrap();
        let line =
            format!("dps_mqtt_connections_closed_total{{reason=\"{reason}\",transport=\"mqtt\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map(|n| n.trim().to_owned())
    };
    assert_eq!(closed("io_error").as_deref(), Some("1"));
    assert_eq!(closed("malformed_packet").as_deref(), Some("0"));

    let done = survivor.register(id).await;
    assert_eq!(done["status"], "assigned", "{done}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_websocket_off_an_upgrade_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start_with_hub(dir.path(), HUB, &[("DPSD_API_WEBSOCKET", "false")]).await;
    let ca = ca_der(&running);
    let result = websocket(running.api_addr, &ca, None, "/$iothub/websocket", "mqtt").await;
    // The request goes to the service API as any other, which refuses it (no api-version).
    assert_eq!(refused_status(result), 400);
    running.shutdown().await.unwrap();
}
