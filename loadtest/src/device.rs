//! One simulated device of any [`Kind`]: TCP connect, TLS (with its own client certificate
//! for X.509), the transport's open (MQTT CONNECT + SUBSCRIBE, or AMQP open + two links; none
//! over HTTPS), register, poll until the answer is final, close; every step under a timeout.
//!
//! The transports live in [`mqtt`], [`amqp`] and [`https`]; what they share is here: the context, the
//! failures, and the register-and-poll loop over one [`Exchange`]. The decisions (what to do
//! with an answer) are plain functions ([`decide`]) tested without sockets; the rest only
//! moves bytes and keeps time.

mod amqp;
mod https;
mod mqtt;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dps_attest::{derive_device_key, SasToken};
use dps_types::SymmetricKey;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use mqtt::{parse_response_topic, ResponseTopic};

use crate::mix::{Attestation, Kind, Mix, Transport};
use crate::target::Loopback;
use crate::x509::Leaf;
use crate::LoadError;

/// The name TLS checks in dpsd's development server certificate.
const SERVER_NAME: &str = "localhost";
/// Lifetime of a device SAS token (the Node and Python SDKs' default).
const SAS_LIFETIME_SECS: i64 = 3600;
/// Time allowed for the transport's close and the TLS close after the answer (not
/// measured, not a failure if it runs out).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every device shares.
pub struct DeviceContext {
    /// The MQTT listener.
    pub mqtt: Loopback,
    /// The AMQP listener.
    pub amqp: Loopback,
    /// The HTTPS listener (the service API's, which serves the device API too).
    pub https: Loopback,
    /// TLS trusting only dpsd's CA.
    pub tls: TlsClients,
    /// The ID scope.
    pub id_scope: String,
    /// Registration ids are `{id_prefix}-{n:06}`.
    pub id_prefix: String,
    /// Which kind device `n` is.
    pub mix: Mix,
    /// The symmetric-key group's key; each group SAS device's key is derived from it.
    pub group_key: SymmetricKey,
    /// The key each individual enrollment's primary key is derived from (as a group's
    /// device keys are), so no per-device key is kept.
    pub individual_key: SymmetricKey,
    /// The leaf of each X.509 device, by device index (`None` for the others).
    pub leaves: Vec<Option<Leaf>>,
    /// Certificates each X.509 device sends after its leaf.
    pub chain_tail: Vec<CertificateDer<'static>>,
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

/// The TLS client configurations: server authentication against dpsd's CA only, without
/// session resumption (each real device is its own process and makes a full handshake;
/// resuming would flatter the numbers).
pub struct TlsClients {
    server_auth: TlsConnector,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl TlsClients {
    /// Trusts only the certificates of `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> Result<Self, LoadError> {
        let mut roots = RootCertStore::empty();
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
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = builder(&provider, &roots)
            .map_err(LoadError::Tls)?
            .with_no_client_auth();
        Ok(Self {
            server_auth: TlsConnector::from(Arc::new(no_resumption(config))),
            roots,
            provider,
        })
    }

    /// The client without a certificate (symmetric-key devices).
    pub fn server_auth(&self) -> TlsConnector {
        self.server_auth.clone()
    }

    /// A client presenting `leaf` (with its key), then `tail`.
    fn with_cert(
        &self,
        leaf: &Leaf,
        tail: &[CertificateDer<'static>],
    ) -> Result<TlsConnector, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + tail.len());
        chain.push(leaf.cert());
        chain.extend(tail.iter().cloned());
        let config =
            builder(&self.provider, &self.roots)?.with_client_auth_cert(chain, leaf.key())?;
        Ok(TlsConnector::from(Arc::new(no_resumption(config))))
    }
}

fn builder(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone()))
}

fn no_resumption(mut config: ClientConfig) -> ClientConfig {
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// A step of the flow, for timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// MQTT CONNECT → CONNACK, or the AMQP header, SASL and OPEN exchange.
    Open,
    /// MQTT SUBSCRIBE → SUBACK, or the AMQP BEGIN and both ATTACHes.
    Subscribe,
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
            Step::Open => "open",
            Step::Subscribe => "subscribe",
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
    /// The TLS handshake failed (or the device's client certificate could not be loaded).
    Tls,
    /// CONNACK with a non-zero return code.
    ConnAck(u8),
    /// The AMQP connection was refused at SASL or OPEN (an authentication failure).
    Refused,
    /// The AMQP session or a link was refused.
    Attach,
    /// A step ran out of time.
    Timeout(Step),
    /// An answer with an unexpected status (over AMQP: a rejection's `errorCode / 1000`).
    Status(u16),
    /// A final answer whose status is not `assigned` (`failed`, `disabled`).
    NotAssigned,
    /// Still `assigning` (or throttled) after the request budget.
    TooManyRequests,
    /// The server closed the connection or the socket failed.
    Closed,
    /// The server broke MQTT, AMQP or DPS rules.
    Protocol(&'static str),
}

impl Failure {
    /// The report's key, e.g. `connack-5`, `timeout-poll`, `status-429`, `refused`.
    pub fn label(&self) -> String {
        match self {
            Failure::Connect => "connect".into(),
            Failure::Tls => "tls".into(),
            Failure::ConnAck(code) => format!("connack-{code}"),
            Failure::Refused => "refused".into(),
            Failure::Attach => "attach".into(),
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

/// An answer's status and `retry-after`, whatever the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// HTTP-like status (over AMQP: 200 for an answer message, `errorCode / 1000` for a
    /// rejection).
    pub status: u16,
    /// Seconds to wait, when given.
    pub retry_after: Option<u64>,
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
    answer: &Answer,
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

/// A device's open transport: sends requests and returns their answers.
trait Exchange {
    /// Sends request number `n` (from 1): a register when `operation` is `None`, else a poll
    /// of it; returns the answer and its body.
    fn request(
        &mut self,
        n: u32,
        operation: Option<&str>,
    ) -> impl Future<Output = Result<(Answer, Bytes), Failure>> + Send;

    /// Ends the transport and TLS, best effort.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs device `n` (0-based) of the context's mix to the end; its kind comes with the
/// outcome.
pub async fn run(ctx: &DeviceContext, n: usize) -> (Kind, Result<Timings, Failure>) {
    let kind = ctx.mix.kind(n);
    let id = ctx.registration_id(n);
    (kind, run_kind(ctx, kind, n, &id).await)
}

async fn run_kind(
    ctx: &DeviceContext,
    kind: Kind,
    n: usize,
    registration_id: &str,
) -> Result<Timings, Failure> {
    // The client certificate's configuration is the device's own state, not the service's
    // work: it is built before the clock starts.
    let tls = match kind.attestation {
        Attestation::Sas | Attestation::SasIndividual => ctx.tls.server_auth.clone(),
        Attestation::X509 => {
            let leaf = ctx
                .leaves
                .get(n)
                .and_then(Option::as_ref)
                .ok_or(Failure::Tls)?;
            ctx.tls
                .with_cert(leaf, &ctx.chain_tail)
                .map_err(|_| Failure::Tls)?
        }
    };
    let start = Instant::now();
    let target = match kind.transport {
        Transport::Mqtt => ctx.mqtt,
        Transport::Amqp => ctx.amqp,
        Transport::Https => ctx.https,
    };
    let limit = ctx.step_timeout;
    let tcp = tokio::time::timeout(limit, TcpStream::connect(target.addr()))
        .await
        .map_err(timeout(Step::Connect))?
        .map_err(|_| Failure::Connect)?;
    // Small request/response packets: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let tls_start = Instant::now();
    let server_name = ServerName::try_from(SERVER_NAME).map_err(|_| Failure::Tls)?;
    let stream = tokio::time::timeout(limit, tls.connect(server_name, tcp))
        .await
        .map_err(timeout(Step::Tls))?
        .map_err(|_| Failure::Tls)?;
    let tls = tls_start.elapsed();
    let device = Identity {
        registration_id,
        resource: format!("{}/registrations/{registration_id}", ctx.id_scope),
        key: match kind.attestation {
            Attestation::Sas => Some(derive_device_key(&ctx.group_key, registration_id)),
            Attestation::SasIndividual => {
                Some(derive_device_key(&ctx.individual_key, registration_id))
            }
            Attestation::X509 => None,
        },
    };
    match kind.transport {
        Transport::Mqtt => {
            let mut conn = mqtt::open(stream, &device, limit).await?;
            register(ctx, &mut conn, start, tls).await
        }
        Transport::Amqp => {
            let mut conn = amqp::open(stream, &device, limit).await?;
            register(ctx, &mut conn, start, tls).await
        }
        Transport::Https => {
            let mut client = https::open(stream, &device, target.addr().port());
            register(ctx, &mut client, start, tls).await
        }
    }
}

/// Who a device says it is.
struct Identity<'a> {
    registration_id: &'a str,
    /// `{idScope}/registrations/{registrationId}`: the SAS resource, MQTT username stem, AMQP
    /// link address and HTTPS path.
    resource: String,
    /// The key a SAS device signs with; `None` for X.509.
    key: Option<SymmetricKey>,
}

impl Identity<'_> {
    /// The SAS token of a symmetric-key device.
    fn sas_token(&self) -> Option<String> {
        Some(SasToken::generate(
            &self.resource,
            self.key.as_ref()?,
            Some("registration"),
            unix_now() + SAS_LIFETIME_SECS,
        ))
    }
}

/// Registers, then polls until the answer is final, within the request budget.
async fn register(
    ctx: &DeviceContext,
    conn: &mut impl Exchange,
    start: Instant,
    tls: Duration,
) -> Result<Timings, Failure> {
    let mut operation: Option<String> = None;
    let (mut polls, mut throttled) = (0, 0);
    for n in 1..=ctx.max_requests {
        let which = if operation.is_some() {
            Step::Poll
        } else {
            Step::Register
        };
        let (answer, body) =
            tokio::time::timeout(ctx.step_timeout, conn.request(n, operation.as_deref()))
                .await
                .map_err(timeout(which))??;
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

fn timeout(step: Step) -> impl Fn(tokio::time::error::Elapsed) -> Failure {
    move |_| Failure::Timeout(step)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The TLS stream every transport runs over.
type Stream = TlsStream<TcpStream>;

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(100);

    fn answer(status: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status,
            retry_after,
        }
    }

    #[test]
    fn a_202_leads_to_a_poll_after_the_smaller_of_delay_and_retry_after() {
        let body = br#"{"operationId":"op-1","status":"assigning"}"#;
        let registered = answer(202, Some(1));
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
        assert!(matches!(
            decide(&answer(202, Some(0)), body, None, DELAY),
            Next::Poll { wait, .. } if wait.is_zero()
        ));
        // AMQP answers carry no status: an `assigning` body under 200 is polled too.
        assert!(matches!(
            decide(&answer(200, None), body, None, DELAY),
            Next::Poll { operation_id, .. } if operation_id == "op-1"
        ));
    }

    #[test]
    fn final_answers() {
        let ok = answer(200, None);
        let assigned = br#"{"operationId":"op","status":"assigned","registrationState":{}}"#;
        assert_eq!(decide(&ok, assigned, Some("op"), DELAY), Next::Assigned);
        let failed = br#"{"operationId":"op","status":"failed"}"#;
        assert_eq!(
            decide(&ok, failed, Some("op"), DELAY),
            Next::Fail(Failure::NotAssigned)
        );
        assert_eq!(
            decide(&answer(401, None), b"{}", None, DELAY),
            Next::Fail(Failure::Status(401))
        );
        assert_eq!(
            decide(&ok, b"not json", Some("op"), DELAY),
            Next::Fail(Failure::Protocol("answer body is not an operation status"))
        );
        assert_eq!(
            decide(&answer(202, None), b"{}", None, DELAY),
            Next::Fail(Failure::Protocol("202 without operationId"))
        );
    }

    #[test]
    fn a_429_repolls_the_same_operation_or_retries_the_register() {
        let busy = answer(429, Some(2));
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
        assert_eq!(Failure::Timeout(Step::Open).label(), "timeout-open");
        assert_eq!(Failure::Status(429).label(), "status-429");
        assert_eq!(Failure::Refused.label(), "refused");
        assert_eq!(Failure::Protocol("anything").label(), "protocol");
    }
}
