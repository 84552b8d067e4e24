//! The tokio driver (mini-redis shape): [`serve`] runs the project's one accept loop
//! (`dps-listener`), one task per connection, until `shutdown` resolves; then it stops
//! accepting and gives the open connections [`MqttLimits::drain_timeout`] to finish before
//! aborting them.
//!
//! Order per connection, each step bounded: a slot from the listener (none left in total, for
//! the source address, or for the address's unauthenticated connections → the TCP connection
//! is closed at once, before any TLS work, and counted as shed); the TLS handshake under
//! `tls_handshake_timeout`; the CONNECT under `connect_timeout`; attestation, then a place
//! among the device's `max_connections_per_device` (the slot stops counting as
//! unauthenticated with the CONNACK 0); then the [`Handler`] loop until the session closes,
//! at the latest at `max_connection_lifetime`.
//!
//! [`MqttFrontend::serve_stream`] runs the same connection over a stream another listener
//! accepted and ran TLS for (MQTT over WebSocket on the HTTPS listener): that listener's slot,
//! limits and drain apply, the rest is the same, the device's connection cap included.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_listener::{Admitted, DeviceConnections, ListenerLimits};
use dps_registrar::Registrar;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::connection::{count_end, Connection, Handler};
use crate::stats::MqttCounters;
use crate::{CloseReason, MqttError, Session, SessionConfig};

/// DPS's largest message (`iot-dps-limits.md`: "Maximum size of message 96 KB").
pub const DEFAULT_MAX_PACKET_SIZE: usize = 96 * 1024;

/// The bounds of the MQTT frontend.
#[derive(Debug, Clone)]
pub struct MqttLimits {
    /// Connections served at once; more are closed right after `accept()`, before TLS.
    pub max_connections: usize,
    /// Connections served at once from one source address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Connections from one source address that have not had their CONNECT accepted yet.
    pub max_unauthenticated_per_ip: usize,
    /// Time for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time from the end of the TLS handshake to a complete CONNECT.
    pub connect_timeout: Duration,
    /// The largest keep-alive honoured: a CONNECT with keep-alive 0 (none) or above it gets
    /// this one, and the connection is closed after 1.5 × of it without a packet.
    pub max_keep_alive: Duration,
    /// Longest time a connection may stay open, counted from the end of the TLS handshake.
    pub max_connection_lifetime: Duration,
    /// Authenticated connections one registration id may hold at once; one more gets
    /// CONNACK 3 (server unavailable).
    pub max_connections_per_device: usize,
    /// Largest MQTT packet (remaining length) accepted; a larger one closes its connection.
    pub max_packet_size: usize,
    /// Register and poll requests served per connection; later ones get `429`.
    pub max_requests_per_connection: u32,
    /// Registrations running at once per connection; more get `429`.
    pub max_operations_per_connection: usize,
    /// After shutdown, how long open connections may finish before they are aborted.
    pub drain_timeout: Duration,
}

impl Default for MqttLimits {
    /// * `max_connections` 4096: a DPS connection lives for seconds (CONNECT, register, one
    ///   or two polls), so 4096 slots carry thousands of registrations per second — far above
    ///   DPS's 1,000/min quota — while capping memory (a TLS session and a small read
    ///   buffer, ~50 KiB a connection; a connection part-way through a maximum-size packet
    ///   holds up to `max_packet_size` more) and file descriptors (raise `ulimit -n` above
    ///   this).
    /// * `max_connections_per_ip` 1024: a quarter of the slots, so one address cannot take
    ///   them all, while a site of devices behind one NAT address still registers a thousand
    ///   at once.
    /// * `max_unauthenticated_per_ip` 256: a device is unauthenticated only for its
    ///   handshake and CONNECT (milliseconds), so even a busy NAT address has few in that
    ///   phase; the load test runs at its documented concurrency (at most 256 devices at
    ///   once from 127.0.0.1) under it. A load test above 256 raises both per-address keys in
    ///   `dpsd.toml` (nothing is exempt, loopback included).
    /// * `tls_handshake_timeout` 10 s: a handshake is two round trips even on a slow cellular
    ///   link; longer only serves slowloris.
    /// * `connect_timeout` 10 s: every SDK sends CONNECT right after the handshake.
    /// * `max_keep_alive` 180 s: Node's default keep-alive, the largest default of any SDK
    ///   (Python 60 s; it allows up to 1740 s). A device polls every 1–2 s while it
    ///   registers, so a shorter cap than it asked for only ends connections that sit idle.
    /// * `max_connection_lifetime` 300 s: a DPS device connects, registers (milliseconds, or
    ///   up to the 30 s SDK timeout behind a slow allocation webhook), polls and leaves;
    ///   five minutes is ten times the longest legitimate registration.
    /// * `max_connections_per_device` 2: the connection that registers, plus one left
    ///   half-open by a device that lost its network and retried before the old one timed out.
    /// * `max_packet_size` 96 KiB: DPS's documented maximum message.
    /// * `max_requests_per_connection` 64: a registration takes one register and a few polls
    ///   (Python polls every 2 s, a registration takes milliseconds); 64 leaves room for
    ///   retries after `429`s while capping the work one connection can ask for.
    /// * `max_operations_per_connection` 4: SDKs run one registration at a time; 4 tolerates
    ///   a retrying client without letting one connection flood the registrar.
    /// * `drain_timeout` 10 s: a running registration takes milliseconds and a device polls
    ///   again within 1–2 s (our `retry-after`, Python's fixed 2 s), so 10 s lets nearly every
    ///   device in flight get its answer.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 1024,
            max_unauthenticated_per_ip: 256,
            max_keep_alive: Duration::from_secs(180),
            max_connection_lifetime: Duration::from_secs(300),
            max_connections_per_device: 2,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_requests_per_connection: 64,
            max_operations_per_connection: 4,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves DPS over MQTT on `listener` (TLS with `tls`, which should offer optional client
/// authentication, e.g. with `dps_attest::PossessionVerifier`) until `shutdown` resolves,
/// then drains. Returns once every connection has ended or been aborted.
///
/// Returns `Err` only when `accept` keeps failing (see `dps_listener::serve`), after the
/// drain, so the process can exit and be restarted.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registrar: Registrar,
    limits: MqttLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_counters(
        listener,
        tls,
        registrar,
        limits,
        MqttCounters::default(),
        shutdown,
    )
    .await
}

/// [`serve`], counting into `counters` (keep a clone to read [`MqttCounters::snapshot`]).
pub async fn serve_with_counters(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registrar: Registrar,
    limits: MqttLimits,
    counters: MqttCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    MqttFrontend::new(registrar, limits, counters)
        .serve(listener, tls, shutdown)
        .await
}

/// The MQTT frontend: what its connections share (the registrar, the limits, the counters, the
/// connections each device holds), whichever listener they came from. Cheap to clone.
#[derive(Clone)]
pub struct MqttFrontend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttFrontend")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl MqttFrontend {
    /// A frontend registering through `registrar` under `limits`, counting into `counters`.
    pub fn new(registrar: Registrar, limits: MqttLimits, counters: MqttCounters) -> Self {
        Self {
            shared: Arc::new(Shared {
                registrar,
                devices: DeviceConnections::new(limits.max_connections_per_device),
                limits,
                counters,
            }),
        }
    }

    /// Serves MQTT over TLS on `listener` as [`serve`] does.
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
            |admitted| {
                let shared = Arc::clone(&self.shared);
                let acceptor = acceptor.clone();
                async move {
                    let peer = admitted.peer;
                    let end = over_tls(admitted, acceptor, &shared).await;
                    finish(&shared, peer, &end);
                }
            },
        )
        .await
    }

    /// Serves one connection whose TLS another listener ran (MQTT over WebSocket on the
    /// HTTPS listener): `admitted` carries that listener's slot (marked authenticated with the
    /// CONNACK 0) and drain signal, `chain` the client's certificate chain, leaf first.
    pub async fn serve_stream<S>(&self, admitted: Admitted<S>, chain: Vec<CertificateDer<'static>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = admitted.peer;
        let end = run_session(admitted, chain, &self.shared).await;
        finish(&self.shared, peer, &end);
    }
}

/// What every connection task reads.
struct Shared {
    registrar: Registrar,
    devices: DeviceConnections,
    limits: MqttLimits,
    counters: MqttCounters,
}

/// Counts and logs how a connection ended.
fn finish(shared: &Shared, peer: SocketAddr, end: &Result<CloseReason, MqttError>) {
    count_end(&shared.counters, end);
    match end {
        Ok(reason) => tracing::debug!(%peer, reason = reason.label(), "MQTT connection closed"),
        Err(MqttError::Encode(e)) => {
            tracing::error!(%peer, error = %e, "bug: MQTT connection closed")
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, source = ?std::error::Error::source(e), "MQTT connection failed")
        }
    }
}

/// The TLS handshake, then the session.
async fn over_tls(
    admitted: Admitted<TcpStream>,
    acceptor: TlsAcceptor,
    shared: &Shared,
) -> Result<CloseReason, MqttError> {
    let Admitted {
        stream: tcp,
        peer,
        slot,
        mut draining,
    } = admitted;
    // Responses are small and latency-bound; don't let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let limits = &shared.limits;
    // Boxed: the handshake's state (2.6 KiB) is freed when it ends instead of sizing the
    // connection's task for its whole life, which matters for devices held connected.
    let handshake = Box::pin(
        shared
            .counters
            .listener()
            .timed_handshake(limits.tls_handshake_timeout, acceptor.accept(tcp)),
    );
    let tls = tokio::select! {
        tls = handshake => tls
            .map_err(|_elapsed| MqttError::TlsHandshakeTimeout)?
            .map_err(MqttError::TlsHandshake)?,
        () = draining.wait() => return Ok(CloseReason::ServerShutdown),
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let admitted = Admitted {
        stream: tls,
        peer,
        slot,
        draining,
    };
    run_session(admitted, chain, shared).await
}

/// The session over an established byte stream, until it closes.
async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    admitted: Admitted<S>,
    chain: Vec<CertificateDer<'static>>,
    shared: &Shared,
) -> Result<CloseReason, MqttError> {
    let Admitted {
        stream,
        slot,
        draining,
        ..
    } = admitted;
    let limits = &shared.limits;
    let session = Session::new(
        SessionConfig {
            id_scope: shared.registrar.id_scope().clone(),
            connect_timeout: limits.connect_timeout,
            max_requests: limits.max_requests_per_connection,
            max_operations: limits.max_operations_per_connection,
            max_keep_alive: limits.max_keep_alive,
            max_lifetime: limits.max_connection_lifetime,
        },
        tokio::time::Instant::now().into_std(),
    );
    let mut handler = Handler {
        connection: Connection::new(stream, chain, limits.max_packet_size),
        session,
        registrar: shared.registrar.clone(),
        counters: shared.counters.clone(),
        slot,
        devices: shared.devices.clone(),
        device: None,
        registrations: JoinSet::new(),
        operation_of_task: Default::default(),
        draining,
    };
    handler.run().await
}
