//! The tokio driver (mini-redis shape): [`serve`] runs the [`Listener`] accept loop, one task
//! per connection, until `shutdown` resolves; then it stops accepting and gives the open
//! connections [`MqttLimits::drain_timeout`] to finish before aborting them.
//!
//! Order per connection, each step bounded: a slot from the connection semaphore (none left →
//! the TCP connection is closed at once, before any TLS work, and counted as shed); the TLS
//! handshake under `tls_handshake_timeout`; the CONNECT under `connect_timeout`; then the
//! [`Handler`] loop until the session closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_registrar::Registrar;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::connection::{count_end, Connection, Handler};
use crate::stats::{bump, ActiveGuard, MqttCounters};
use crate::{CloseReason, MqttError, Session, SessionConfig};

/// DPS's largest message (`iot-dps-limits.md`: "Maximum size of message 96 KB").
pub const DEFAULT_MAX_PACKET_SIZE: usize = 96 * 1024;

/// First pause after a failed `accept()`; doubles up to [`MAX_ACCEPT_BACKOFF`]. Accept
/// failures are nearly always "out of file descriptors", which frees up as connections close.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Longest pause between `accept()` attempts: short enough that a recovered listener is back
/// within a second, long enough not to spin on a persistent error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The bounds of the MQTT frontend.
#[derive(Debug, Clone)]
pub struct MqttLimits {
    /// Connections served at once; more are closed right after `accept()`, before TLS.
    pub max_connections: usize,
    /// Time for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time from the end of the TLS handshake to a complete CONNECT.
    pub connect_timeout: Duration,
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
    /// * `tls_handshake_timeout` 10 s: a handshake is two round trips even on a slow cellular
    ///   link; longer only serves slowloris.
    /// * `connect_timeout` 10 s: every SDK sends CONNECT right after the handshake.
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
/// Failing `accept()`s are retried with back-off (and counted), never returned: the `Result`
/// is for the caller's convenience in a `try_join!` with the other listeners.
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
    let mut server = Listener {
        listener,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        shared: Arc::new(Shared {
            acceptor: TlsAcceptor::from(tls),
            registrar,
            limits,
            counters,
            draining: watch::channel(false).0,
        }),
        connections: JoinSet::new(),
    };
    server.run(shutdown).await;
    server.drain().await;
    Ok(())
}

/// What every connection task reads.
struct Shared {
    acceptor: TlsAcceptor,
    registrar: Registrar,
    limits: MqttLimits,
    counters: MqttCounters,
    /// Set when the server starts draining: idle connections close at once.
    draining: watch::Sender<bool>,
}

/// The accept loop.
struct Listener {
    listener: TcpListener,
    /// One permit per connection; a connection task holds its permit until it ends.
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// Connection tasks (at most `max_connections`, finished ones reaped as they end).
    connections: JoinSet<()>,
}

impl Listener {
    /// Accepts until `shutdown` resolves.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = FIRST_ACCEPT_BACKOFF;
        loop {
            // Every branch is cancel-safe: `accept` and `join_next` lose nothing when another
            // branch wins.
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
                Some(ended) = self.connections.join_next(), if !self.connections.is_empty() => {
                    if let Err(e) = ended {
                        tracing::error!(error = %e, "bug: an MQTT connection task failed");
                    }
                    continue;
                }
            };
            match accepted {
                Ok((tcp, peer)) => {
                    backoff = FIRST_ACCEPT_BACKOFF;
                    self.admit(tcp, peer);
                }
                Err(e) => {
                    bump(&self.shared.counters.get().accept_errors);
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis(), "MQTT accept failed");
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Takes a slot for the connection or, when none is free, closes it before any TLS work.
    fn admit(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            bump(&self.shared.counters.get().shed);
            tracing::debug!(%peer, "MQTT connection shed: every slot is taken");
            drop(tcp);
            return;
        };
        bump(&self.shared.counters.get().accepted);
        self.connections.spawn(serve_connection(
            tcp,
            peer,
            permit,
            Arc::clone(&self.shared),
        ));
    }

    /// Stops accepting (the listener closes) and waits for open connections, aborting those
    /// still open after the drain timeout.
    async fn drain(self) {
        let Listener {
            listener,
            mut connections,
            shared,
            ..
        } = self;
        drop(listener);
        shared.draining.send_replace(true);
        let open = connections.len();
        let wait_all = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(shared.limits.drain_timeout, wait_all)
            .await
            .is_err()
        {
            tracing::info!(
                open,
                "MQTT drain timeout: aborting the remaining connections"
            );
            connections.shutdown().await;
        }
    }
}

/// One connection, from the TCP stream to the end.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let _permit = permit;
    let _active = ActiveGuard::new(&shared.counters);
    let end = run_connection(tcp, &shared).await;
    count_end(&shared.counters, &end);
    match &end {
        Ok(reason) => tracing::debug!(%peer, reason = reason.label(), "MQTT connection closed"),
        Err(MqttError::Encode(e)) => {
            tracing::error!(%peer, error = %e, "bug: MQTT connection closed")
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, source = ?std::error::Error::source(e), "MQTT connection failed")
        }
    }
}

async fn run_connection(tcp: TcpStream, shared: &Shared) -> Result<CloseReason, MqttError> {
    // Responses are small and latency-bound; don't let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let limits = &shared.limits;
    let tls = tokio::time::timeout(limits.tls_handshake_timeout, shared.acceptor.accept(tcp))
        .await
        .map_err(|_elapsed| MqttError::TlsHandshakeTimeout)?
        .map_err(MqttError::TlsHandshake)?;
    let session = Session::new(
        SessionConfig {
            id_scope: shared.registrar.id_scope().clone(),
            connect_timeout: limits.connect_timeout,
            max_requests: limits.max_requests_per_connection,
            max_operations: limits.max_operations_per_connection,
        },
        tokio::time::Instant::now().into_std(),
    );
    let mut handler = Handler {
        connection: Connection::new(tls, limits.max_packet_size),
        session,
        registrar: shared.registrar.clone(),
        counters: shared.counters.clone(),
        device: None,
        registrations: JoinSet::new(),
        operation_of_task: Default::default(),
        draining: shared.draining.subscribe(),
    };
    handler.run().await
}
