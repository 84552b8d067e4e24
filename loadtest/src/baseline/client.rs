//! The baselines' client side: a closed loop (N connections, C at once) over one connection
//! function, and the two connection functions: TLS plus one byte each way, and the MQTT round
//! trip (CONNECT, SUBSCRIBE, PUBLISH QoS 1 echoed back by the broker, DISCONNECT) written with
//! the tool's own codec ([`crate::mqtt`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::server::{certs, private_key};
use crate::conn::MqttConn;
use crate::mqtt::{self, Packet};
use crate::report;
use crate::LoadError;

/// Keep-alive announced in CONNECT (as the devices do).
const KEEP_ALIVE_SECS: u16 = 60;

/// A closed loop's outcome.
#[derive(Debug)]
pub struct LoopTally {
    /// Connections that completed their round trip.
    pub ok: usize,
    /// Failures by step.
    pub failures: BTreeMap<String, u64>,
    /// Latency of the successful connections, microseconds.
    pub latencies_us: Histogram<u64>,
    /// First start to last end.
    pub wall: Duration,
}

/// Runs `connections` calls of `one` (given the connection's number), `concurrency` at once,
/// for at most `limit`: connections still running then, or never started, count as
/// `unfinished` failures.
pub async fn closed_loop<F, Fut>(
    connections: usize,
    concurrency: usize,
    limit: Duration,
    one: F,
) -> LoopTally
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), &'static str>> + Send + 'static,
{
    let start = Instant::now();
    let mut tally = LoopTally {
        ok: 0,
        failures: BTreeMap::new(),
        latencies_us: report::histogram(),
        wall: Duration::ZERO,
    };
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut tasks = JoinSet::new();
    let mut next = 0;
    loop {
        while next < connections && tasks.len() < concurrency.max(1) {
            let attempt = one(next);
            tasks.spawn(async move {
                let began = Instant::now();
                attempt.await.map(|()| began.elapsed())
            });
            next += 1;
        }
        // Both cancel-safe: the deadline keeps its state, `join_next` loses no task.
        let joined = tokio::select! {
            biased;
            () = &mut deadline => {
                let left = connections - tally.ok - tally.failures.values().sum::<u64>() as usize;
                if left > 0 {
                    tally.failures.insert("unfinished".to_owned(), left as u64);
                }
                break;
            }
            joined = tasks.join_next() => match joined {
                Some(joined) => joined,
                None => break,
            },
        };
        match joined {
            Ok(Ok(latency)) => {
                tally.ok += 1;
                tally
                    .latencies_us
                    .saturating_record(report::micros(latency));
            }
            Ok(Err(step)) => *tally.failures.entry(step.to_owned()).or_default() += 1,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => *tally.failures.entry("cancelled".to_owned()).or_default() += 1,
        }
    }
    tally.wall = start.elapsed();
    tasks.shutdown().await;
    tally
}

/// A TLS client trusting only `ca_pem`, presenting `client` (certificate, key PEM) if given,
/// without session resumption (every connection a full handshake, as for the devices).
pub fn connector(ca_pem: &str, client: Option<(&str, &str)>) -> Result<TlsConnector, LoadError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Setup {
        what: "baseline TLS client",
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_pem).map_err(|e| bad(e.into()))? {
        roots.add(cert).map_err(|e| bad(e.into()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(LoadError::Tls)?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certs(cert).map_err(|e| bad(e.into()))?,
                private_key(key).map_err(bad)?,
            )
            .map_err(LoadError::Tls)?,
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What each connection needs.
#[derive(Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The name to check in the server certificate.
    pub server_name: ServerName<'static>,
    /// TLS client configuration.
    pub tls: TlsConnector,
    /// Limit of each step.
    pub step_timeout: Duration,
}

impl Target {
    async fn handshake(&self) -> Result<TlsStream<TcpStream>, &'static str> {
        let tcp = tokio::time::timeout(self.step_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| "timeout-connect")?
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            self.step_timeout,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| "timeout-tls")?
        .map_err(|_| "tls")
    }
}

/// Handshake, write one byte, read one byte back.
pub async fn tls_round_trip(target: Arc<Target>) -> Result<(), &'static str> {
    let mut tls = target.handshake().await?;
    let round_trip = async {
        tls.write_all(b"x").await?;
        tls.flush().await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map(drop)
    };
    tokio::time::timeout(target.step_timeout, round_trip)
        .await
        .map_err(|_| "timeout-round-trip")?
        .map_err(|_| "round-trip")?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// The MQTT round trip of device `id`: CONNECT (username and password, as a DPS device),
/// SUBSCRIBE to `dps/registrations/{id}/res/#`, PUBLISH QoS 1 to
/// `dps/registrations/{id}/res/200`, its PUBACK and the broker's echo (PUBACKed), DISCONNECT.
pub async fn mqtt_round_trip(target: Arc<Target>, id: String) -> Result<(), &'static str> {
    let mut conn = MqttConn::new(target.handshake().await?);
    let limit = target.step_timeout;
    let step = |name| move |_| name;

    mqtt::connect(
        &id,
        &format!("baseline/{id}"),
        Some("password"),
        KEEP_ALIVE_SECS,
        &mut conn.out,
    );
    match tokio::time::timeout(limit, conn.exchange())
        .await
        .map_err(step("timeout-connack"))??
    {
        Packet::ConnAck { code: 0, .. } => {}
        Packet::ConnAck { .. } => return Err("connack-refused"),
        _ => return Err("protocol"),
    }
    mqtt::subscribe(
        1,
        &format!("dps/registrations/{id}/res/#"),
        1,
        &mut conn.out,
    );
    match tokio::time::timeout(limit, conn.exchange())
        .await
        .map_err(step("timeout-suback"))??
    {
        Packet::SubAck { pkid: 1, codes } if codes.first().is_some_and(|c| *c <= 1) => {}
        _ => return Err("subscription-refused"),
    }
    let topic = format!("dps/registrations/{id}/res/200");
    let body = format!("{{\"registrationId\":\"{id}\"}}");
    mqtt::publish_qos1(2, &topic, body.as_bytes(), &mut conn.out);
    let echo = async {
        conn.flush().await?;
        let (mut acked, mut echoed) = (false, false);
        while !(acked && echoed) {
            match conn.recv().await? {
                Packet::PubAck { pkid: 2 } => acked = true,
                Packet::Publish {
                    qos,
                    pkid,
                    topic: t,
                    ..
                } if t == topic => {
                    if qos == 1 {
                        mqtt::puback(pkid, &mut conn.out);
                        conn.flush().await?;
                    }
                    echoed = true;
                }
                _ => return Err("protocol"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(limit, echo)
        .await
        .map_err(step("timeout-echo"))??;
    conn.close().await;
    Ok(())
}
