//! [`serve`]: the project's one accept loop (`dps-listener`) with one task per connection,
//! until `shutdown` resolves; then it stops accepting and gives the open connections
//! [`AmqpLimits::drain_timeout`] to finish before aborting them. [`AmqpFrontend`] is the
//! state every connection shares, also for those another listener hands over
//! ([`AmqpFrontend::serve_stream`]: AMQP over WebSocket).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dps_listener::{Admitted, DeviceConnections, ListenerLimits};
use dps_registrar::Registrar;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::connection::{self, serve_connection, Shared};
use crate::stats::AmqpCounters;

/// DPS's largest message (`iot-dps-limits.md`: "Maximum size of message 96 KB").
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 96 * 1024;

/// The bounds of the AMQP frontend.
#[derive(Debug, Clone)]
pub struct AmqpLimits {
    /// Connections served at once; more are closed right after `accept()`, before TLS.
    pub max_connections: usize,
    /// Connections served at once from one source address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Connections from one source address that have not been attested yet.
    pub max_unauthenticated_per_ip: usize,
    /// Time for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time from the end of the TLS handshake until both links are attached: protocol
    /// header, SASL, OPEN, BEGIN and the two ATTACHes.
    pub open_timeout: Duration,
    /// The idle timeout we announce in OPEN: a connection that sends nothing (not even an
    /// empty frame) for this long is closed. AMQP stacks send empty frames at half of it.
    pub idle_timeout: Duration,
    /// Longest time a connection may stay open, counted from the end of the TLS handshake.
    pub max_connection_lifetime: Duration,
    /// Attested connections one registration id may hold at once; one more is refused with
    /// `amqp:resource-limit-exceeded`.
    pub max_connections_per_device: usize,
    /// The largest frame we accept (announced in OPEN; a larger one closes the connection).
    pub max_frame_size: usize,
    /// The largest message (announced at ATTACH; a larger one closes the connection).
    pub max_message_size: usize,
    /// Requests a device may send before it has its answers: the credit of its sender link.
    pub link_credit: u32,
    /// Register and poll requests served per connection; later ones are rejected with `429`.
    pub max_requests_per_connection: u32,
    /// Registrations running at once per connection; more are rejected with `429`.
    pub max_operations_per_connection: usize,
    /// How long an answer may wait for the device's credit before the connection closes.
    pub send_timeout: Duration,
    /// After shutdown, how long open connections may finish before they are aborted.
    pub drain_timeout: Duration,
}

impl Default for AmqpLimits {
    /// * `max_connections` 4096, `max_connections_per_ip` 1024, `max_unauthenticated_per_ip`
    ///   256: as for MQTT (`dps_mqtt::MqttLimits`): a DPS connection lives for seconds, a
    ///   quarter of the slots for one address lets a site behind one NAT address register a
    ///   thousand devices at once, and a device is unauthenticated only for milliseconds.
    /// * `tls_handshake_timeout` 10 s: two round trips even on a slow cellular link.
    /// * `open_timeout` 10 s: header, SASL, OPEN, BEGIN and two ATTACHes are four round trips
    ///   that every SDK sends back to back.
    /// * `idle_timeout` 60 s: a registering device talks every 1–2 s (register, polls); rhea
    ///   and the C and C# stacks send empty frames at half the announced value, so only dead
    ///   peers reach it.
    /// * `max_connection_lifetime` 300 s: a device registers (milliseconds, or up to the SDKs'
    ///   30 s behind a slow allocation webhook), polls and leaves: ten times the longest.
    /// * `max_connections_per_device` 2: as for MQTT: the connection that registers, plus one
    ///   left half-open by a device that lost its network and retried before it timed out.
    /// * `max_frame_size` 8 KiB: a register request is a few hundred bytes, so frames this big
    ///   cost an honest device nothing, while they keep what fe2o3's bounded per-connection
    ///   channels can hold to a few hundred KiB.
    /// * `max_message_size` 96 KiB: DPS's documented maximum message.
    /// * `link_credit` 8: SDKs send one request at a time; 8 tolerates a retrying client
    ///   while bounding the requests (and bytes: 8 × 96 KiB) a connection has in flight.
    /// * `max_requests_per_connection` 64 and `max_operations_per_connection` 4: as for MQTT.
    /// * `send_timeout` 10 s: every SDK grants credit on its receiver link at attach.
    /// * `drain_timeout` 10 s: a running registration takes milliseconds and the device polls
    ///   again within a second or two.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            max_unauthenticated_per_ip: 256,
            tls_handshake_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connection_lifetime: Duration::from_secs(300),
            max_connections_per_device: 2,
            max_frame_size: 8 * 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            link_credit: 8,
            max_requests_per_connection: 64,
            max_operations_per_connection: 4,
            send_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves DPS over AMQP on `listener` (TLS with `tls`, which should offer optional client
/// authentication, e.g. with `dps_attest::PossessionVerifier`) until `shutdown` resolves,
/// then drains. Returns once every connection has ended or been aborted.
///
/// Returns `Err` only when `accept` keeps failing (see `dps_listener::serve`), after the
/// drain, so the process can exit and be restarted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registrar: Registrar,
    limits: AmqpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_counters(
        listener,
        tls,
        registrar,
        limits,
        AmqpCounters::default(),
        shutdown,
    )
    .await
}

/// [`serve`], counting into `counters` (keep a clone to read [`AmqpCounters::snapshot`]).
pub async fn serve_with_counters(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registrar: Registrar,
    limits: AmqpLimits,
    counters: AmqpCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    AmqpFrontend::new(registrar, limits, counters)
        .serve(listener, tls, shutdown)
        .await
}

/// The AMQP frontend: what its connections share (the registrar, the limits, the counters, the
/// connections each device holds), whichever listener they came from. Cheap to clone.
#[derive(Clone)]
pub struct AmqpFrontend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpFrontend")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl AmqpFrontend {
    /// A frontend registering through `registrar` under `limits`, counting into `counters`.
    pub fn new(registrar: Registrar, limits: AmqpLimits, counters: AmqpCounters) -> Self {
        Self {
            shared: Arc::new(Shared {
                registrar,
                devices: DeviceConnections::new(limits.max_connections_per_device),
                limits,
                counters,
            }),
        }
    }

    /// Serves AMQP over TLS on `listener` as [`serve`] does.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = &self.shared.limits;
        let listener_limits = ListenerLimits {
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_unauthenticated_per_ip: limits.max_unauthenticated_per_ip,
            drain_timeout: limits.drain_timeout,
        };
        let acceptor = TlsAcceptor::from(tls);
        dps_listener::serve(
            listener,
            listener_limits,
            self.shared.counters.listener().clone(),
            shutdown,
            |admitted| serve_connection(admitted, acceptor.clone(), Arc::clone(&self.shared)),
        )
        .await
    }

    /// Serves one connection whose TLS another listener ran (AMQP over WebSocket on the HTTPS
    /// listener): `admitted` carries that listener's slot (marked authenticated once the
    /// device is attested) and drain signal, `chain` the client's certificate chain, leaf
    /// first. Everything after TLS is as on the AMQPS listener.
    pub async fn serve_stream<S>(&self, admitted: Admitted<S>, chain: Vec<CertificateDer<'static>>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        connection::serve_stream(admitted, chain, &self.shared).await;
    }
}
