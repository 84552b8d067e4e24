//! One simulated device: TCP connect, TLS, CONNECT, SUBSCRIBE, register, poll until the
//! answer is final, DISCONNECT, every step under a timeout.
//!
//! The decisions (what a response topic says, what to do with an answer) are plain functions
//! ([`parse_response_topic`], [`decide`]) tested without sockets; [`run`] only moves bytes and
//! keeps time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use dps_attest::{derive_device_key, SasToken};
use dps_types::SymmetricKey;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::mqtt::{self, Packet};
use crate::target::Loopback;
use crate::LoadError;

/// The device api-version of the MQTT username (the C SDK's).
const API_VERSION: &str = "2021-06-01";
/// The name TLS checks in dpsd's development server certificate.
const SERVER_NAME: &str = "localhost";
/// The only subscription a DPS device makes.
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const RESPONSE_PREFIX: &str = "$dps/registrations/res/";
/// Largest packet accepted from the server: DPS's maximum message size.
const MAX_PACKET: usize = 96 * 1024;
/// MQTT keep-alive announced in CONNECT (the Python SDK's default); a device lives seconds.
const KEEP_ALIVE_SECS: u16 = 60;
/// Lifetime of a device SAS token (the Node and Python SDKs' default).
const SAS_LIFETIME_SECS: i64 = 3600;
/// Time allowed for DISCONNECT and the TLS close after the answer (not measured, not a
/// failure if it runs out).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every device shares.
pub struct DeviceContext {
    /// The MQTT listener.
    pub mqtt: Loopback,
    /// TLS trusting only dpsd's CA.
    pub tls: TlsConnector,
    /// The ID scope.
    pub id_scope: String,
    /// Registration ids are `{id_prefix}-{n:06}`.
    pub id_prefix: String,
    /// The enrollment group's key; each device's key is derived from it.
    pub group_key: SymmetricKey,
    /// Limit of each step.
    pub step_timeout: Duration,
    /// Wait before a poll (capped by the server's `retry-after`).
    pub poll_delay: Duration,
    /// Register and poll requests one device may send.
    pub max_requests: u32,
}

impl DeviceContext {
    /// The registration id of device `n`.
    pub fn registration_id(&self, n: usize) -> String {
        format!("{}-{n:06}", self.id_prefix)
    }
}

/// TLS client configuration trusting only `ca_pem`, without session resumption (each real
/// device is its own process and makes a full handshake; resuming would flatter the numbers).
pub fn tls_connector(ca_pem: &[u8]) -> Result<TlsConnector, LoadError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert: CertificateDer<'static> = cert.map_err(|e| LoadError::DataFile {
            path: "pki/ca.pem".into(),
            why: e.to_string(),
        })?;
        roots.add(cert).map_err(LoadError::Tls)?;
    }
    if roots.is_empty() {
        return Err(LoadError::DataFile {
            path: "pki/ca.pem".into(),
            why: "no certificate".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(LoadError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A step of the flow, for timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// CONNECT → CONNACK.
    ConnAck,
    /// SUBSCRIBE → SUBACK.
    SubAck,
    /// Register → answer.
    Register,
    /// Poll → answer.
    Poll,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Tls => "tls",
            Step::ConnAck => "connack",
            Step::SubAck => "suback",
            Step::Register => "register",
            Step::Poll => "poll",
        }
    }
}

/// Why a device did not end `assigned`. Bounded: [`Failure::label`] is the report's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// CONNACK with a non-zero return code.
    ConnAck(u8),
    /// A step ran out of time.
    Timeout(Step),
    /// An answer with an unexpected status.
    Status(u16),
    /// A final answer whose status is not `assigned` (`failed`, `disabled`).
    NotAssigned,
    /// Still `assigning` (or throttled) after the request budget.
    TooManyRequests,
    /// The server closed the connection or the socket failed.
    Closed,
    /// The server broke MQTT or DPS rules.
    Protocol(&'static str),
}

impl Failure {
    /// The report's key, e.g. `connack-5`, `timeout-poll`, `status-429`.
    pub fn label(&self) -> String {
        match self {
            Failure::Connect => "connect".into(),
            Failure::Tls => "tls".into(),
            Failure::ConnAck(code) => format!("connack-{code}"),
            Failure::Timeout(step) => format!("timeout-{}", step.label()),
            Failure::Status(status) => format!("status-{status}"),
            Failure::NotAssigned => "not-assigned".into(),
            Failure::TooManyRequests => "request-budget".into(),
            Failure::Closed => "closed".into(),
            Failure::Protocol(_) => "protocol".into(),
        }
    }
}

/// A successful device's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// TCP connect to `assigned`.
    pub flow: Duration,
    /// The TLS handshake.
    pub tls: Duration,
    /// Polls sent.
    pub polls: u32,
    /// `429` answers received.
    pub throttled: u32,
}

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

/// The parts of a `RegistrationOperationStatus` the device reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationStatus {
    operation_id: Option<String>,
    status: Option<String>,
}

/// What a device does after an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Poll `operation_id` after `wait`.
    Poll {
        /// The operation to poll.
        operation_id: String,
        /// How long to wait first.
        wait: Duration,
    },
    /// Send the same request again after `wait` (a `429` before any operation id).
    Retry {
        /// How long to wait first.
        wait: Duration,
    },
    /// Assigned: done.
    Assigned,
    /// Give up.
    Fail(Failure),
}

/// Decides what follows an answer to a register (`operation` is `None`) or a poll.
/// `poll_delay` is the wait the tool wants; a `retry-after` from the server caps it.
pub fn decide(
    answer: &ResponseTopic,
    payload: &[u8],
    operation: Option<&str>,
    poll_delay: Duration,
) -> Next {
    let wait = match answer.retry_after {
        Some(secs) => poll_delay.min(Duration::from_secs(secs)),
        None => poll_delay,
    };
    match answer.status {
        200 | 202 => {}
        429 => {
            // Every SDK re-polls the same operation after a 429 (dpsd then starts it again).
            return match operation {
                Some(id) => Next::Poll {
                    operation_id: id.to_owned(),
                    wait,
                },
                None => Next::Retry { wait },
            };
        }
        other => return Next::Fail(Failure::Status(other)),
    }
    let Ok(body) = serde_json::from_slice::<OperationStatus>(payload) else {
        return Next::Fail(Failure::Protocol("answer body is not an operation status"));
    };
    match (answer.status, body.status.as_deref()) {
        (200, Some("assigned")) => Next::Assigned,
        (200, Some("assigning")) | (202, _) => match body.operation_id.as_deref().or(operation) {
            Some(id) => Next::Poll {
                operation_id: id.to_owned(),
                wait,
            },
            None => Next::Fail(Failure::Protocol("202 without operationId")),
        },
        _ => Next::Fail(Failure::NotAssigned),
    }
}

/// Runs device `n` (0-based) of the group to the end.
pub async fn run(ctx: &DeviceContext, n: usize) -> Result<Timings, Failure> {
    let start = Instant::now();
    let id = ctx.registration_id(n);
    let registration_id = id.as_str();
    let step = |s: Step| move |_: tokio::time::error::Elapsed| Failure::Timeout(s);
    let limit = ctx.step_timeout;

    let tcp = tokio::time::timeout(limit, TcpStream::connect(ctx.mqtt.addr()))
        .await
        .map_err(step(Step::Connect))?
        .map_err(|_| Failure::Connect)?;
    // Small request/response packets: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let tls_start = Instant::now();
    let server_name = ServerName::try_from(SERVER_NAME).map_err(|_| Failure::Tls)?;
    let stream = tokio::time::timeout(limit, ctx.tls.connect(server_name, tcp))
        .await
        .map_err(step(Step::Tls))?
        .map_err(|_| Failure::Tls)?;
    let tls = tls_start.elapsed();
    let mut conn = Connection {
        stream,
        buf: BytesMut::with_capacity(1024),
        out: Vec::with_capacity(1024),
    };

    let key = derive_device_key(&ctx.group_key, registration_id);
    let resource = format!("{}/registrations/{registration_id}", ctx.id_scope);
    let sas = SasToken::generate(
        &resource,
        &key,
        Some("registration"),
        unix_now() + SAS_LIFETIME_SECS,
    );
    let username = format!("{resource}/api-version={API_VERSION}");
    mqtt::connect(
        registration_id,
        &username,
        &sas,
        KEEP_ALIVE_SECS,
        &mut conn.out,
    );
    let connack = tokio::time::timeout(limit, async {
        conn.flush().await?;
        conn.recv().await
    })
    .await
    .map_err(step(Step::ConnAck))??;
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
    .map_err(step(Step::SubAck))??;
    match suback {
        Packet::SubAck { pkid: 1, codes } if codes.first().is_some_and(|c| *c <= 1) => {}
        _ => return Err(Failure::Protocol("subscription refused")),
    }

    let register_body = serde_json::json!({ "registrationId": registration_id }).to_string();
    let mut operation: Option<String> = None;
    let (mut polls, mut throttled) = (0, 0);
    for n in 1..=ctx.max_requests {
        let rid = n.to_string();
        let (topic, payload, which) = match &operation {
            None => (
                format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
                register_body.as_bytes(),
                Step::Register,
            ),
            Some(id) => (
                format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}"),
                &b" "[..],
                Step::Poll,
            ),
        };
        let pkid = u16::try_from(n + 1).unwrap_or(u16::MAX);
        let (answer, body) = tokio::time::timeout(limit, conn.request(pkid, &topic, payload, &rid))
            .await
            .map_err(step(which))??;
        if answer.status == 429 {
            throttled += 1;
        }
        match decide(&answer, &body, operation.as_deref(), ctx.poll_delay) {
            Next::Assigned => {
                let flow = start.elapsed();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
                return Ok(Timings {
                    flow,
                    tls,
                    polls,
                    throttled,
                });
            }
            Next::Poll { operation_id, wait } => {
                operation = Some(operation_id);
                polls += 1;
                tokio::time::sleep(wait).await;
            }
            Next::Retry { wait } => tokio::time::sleep(wait).await,
            Next::Fail(failure) => return Err(failure),
        }
    }
    Err(Failure::TooManyRequests)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One device's MQTT connection: bytes in `buf` until a whole packet is there, bytes to send
/// collected in `out`.
struct Connection {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    out: Vec<u8>,
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

    /// PUBLISH at QoS 1 and wait for the response PUBLISH with our `rid` (PUBACKing it);
    /// the PUBACK for our publish may come before or after it.
    async fn request(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &[u8],
        rid: &str,
    ) -> Result<(ResponseTopic, bytes::Bytes), Failure> {
        mqtt::publish_qos1(pkid, topic, payload, &mut self.out);
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

    const DELAY: Duration = Duration::from_millis(100);

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

    #[test]
    fn a_202_leads_to_a_poll_after_the_smaller_of_delay_and_retry_after() {
        let body = br#"{"operationId":"op-1","status":"assigning"}"#;
        let registered = topic("$dps/registrations/res/202/?$rid=1&retry-after=1");
        assert_eq!(
            decide(&registered, body, None, DELAY),
            Next::Poll {
                operation_id: "op-1".into(),
                wait: DELAY
            }
        );
        assert_eq!(
            decide(&registered, body, None, Duration::from_secs(5)),
            Next::Poll {
                operation_id: "op-1".into(),
                wait: Duration::from_secs(1)
            }
        );
        let none = topic("$dps/registrations/res/202/?$rid=1&retry-after=0");
        assert!(matches!(
            decide(&none, body, None, DELAY),
            Next::Poll { wait, .. } if wait.is_zero()
        ));
    }

    #[test]
    fn final_answers() {
        let ok = topic("$dps/registrations/res/200/?$rid=2");
        let assigned = br#"{"operationId":"op","status":"assigned","registrationState":{}}"#;
        assert_eq!(decide(&ok, assigned, Some("op"), DELAY), Next::Assigned);
        let failed = br#"{"operationId":"op","status":"failed"}"#;
        assert_eq!(
            decide(&ok, failed, Some("op"), DELAY),
            Next::Fail(Failure::NotAssigned)
        );
        let unauthorized = topic("$dps/registrations/res/401/?$rid=1");
        assert_eq!(
            decide(&unauthorized, b"{}", None, DELAY),
            Next::Fail(Failure::Status(401))
        );
        assert_eq!(
            decide(&ok, b"not json", Some("op"), DELAY),
            Next::Fail(Failure::Protocol("answer body is not an operation status"))
        );
        let accepted = topic("$dps/registrations/res/202/?$rid=1");
        assert_eq!(
            decide(&accepted, b"{}", None, DELAY),
            Next::Fail(Failure::Protocol("202 without operationId"))
        );
    }

    #[test]
    fn a_429_repolls_the_same_operation_or_retries_the_register() {
        let busy = topic("$dps/registrations/res/429/?$rid=3&retry-after=2");
        assert_eq!(
            decide(&busy, b"{}", Some("op"), DELAY),
            Next::Poll {
                operation_id: "op".into(),
                wait: DELAY
            }
        );
        assert_eq!(
            decide(&busy, b"{}", None, DELAY),
            Next::Retry { wait: DELAY }
        );
    }

    #[test]
    fn failure_labels_are_bounded_names() {
        assert_eq!(Failure::ConnAck(5).label(), "connack-5");
        assert_eq!(Failure::Timeout(Step::Poll).label(), "timeout-poll");
        assert_eq!(Failure::Status(429).label(), "status-429");
        assert_eq!(Failure::Protocol("anything").label(), "protocol");
    }
}
