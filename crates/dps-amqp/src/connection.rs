//! One device connection (mini-redis shape): TLS under its timeout (or a stream another
//! listener ran TLS for: AMQP over WebSocket), [`crate::open`] under
//! `open_timeout`, then the [`Handler`] loop that takes requests from the device's sender
//! link, feeds them to [`Operations`], settles them, answers on the device's receiver link
//! and runs registrations, until the device leaves, the lifetime ends or the listener drains.

use std::collections::HashMap;
use std::sync::Arc;

use dps_listener::{Admitted, DeviceConnections, Draining};
use dps_registrar::{Registrar, RegistrarError, Transport};
use fe2o3_amqp::link::delivery::{Delivery, Sendable};
use fe2o3_amqp::link::{LinkStateError, RecvError};
use fe2o3_amqp::types::definitions::{AmqpError as Condition, ConnectionError, ErrorCondition};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::message;
use crate::open::{self, Opened, Ready};
use crate::operations::{Answer, OperationLimits, Operations, Outcome};
use crate::stats::{bump, AmqpCounters};
use crate::{AmqpError, AmqpLimits};

/// What every connection task reads.
pub(crate) struct Shared {
    pub(crate) registrar: Registrar,
    /// Where the authenticated connections of each device are counted.
    pub(crate) devices: DeviceConnections,
    pub(crate) limits: AmqpLimits,
    pub(crate) counters: AmqpCounters,
}

/// Why a connection closed on our decision or the device's. Bounded: a label for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The device detached, ended its session or closed the connection.
    ClientClosed,
    /// Attestation refused the device (`amqp:unauthorized-access`).
    NotAuthorized,
    /// The attested device already held `max_connections_per_device` connections
    /// (`amqp:resource-limit-exceeded`).
    DeviceConnectionLimit,
    /// The device asked for too many links we had to refuse.
    TooManyRefusedLinks,
    /// The device attached a link with the name of one it already holds.
    DuplicateLinkName,
    /// The server is shutting down and the connection had no registration running.
    ServerShutdown,
    /// The connection reached its maximum lifetime.
    LifetimeExceeded,
}

impl CloseReason {
    /// A fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::NotAuthorized => "not_authorized",
            CloseReason::DeviceConnectionLimit => "device_connection_limit",
            CloseReason::TooManyRefusedLinks => "too_many_refused_links",
            CloseReason::DuplicateLinkName => "duplicate_link_name",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::LifetimeExceeded => "lifetime_exceeded",
        }
    }
}

/// One connection, from the TCP stream to the end.
pub(crate) async fn serve_connection(
    admitted: Admitted<TcpStream>,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    let peer = admitted.peer;
    let end = run_connection(admitted, &acceptor, &shared).await;
    finish(&shared, peer, &end);
}

/// One connection over a stream whose TLS another listener ran (AMQP over WebSocket), to
/// the end.
pub(crate) async fn serve_stream<S>(
    admitted: Admitted<S>,
    chain: Vec<CertificateDer<'static>>,
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = admitted.peer;
    let end = run_session(admitted, chain, shared).await;
    finish(shared, peer, &end);
}

/// Counts and logs how a connection ended.
fn finish(shared: &Shared, peer: std::net::SocketAddr, end: &Result<CloseReason, AmqpError>) {
    count_end(&shared.counters, end);
    match end {
        Ok(reason) => tracing::debug!(%peer, reason = reason.label(), "AMQP connection closed"),
        Err(e) => {
            tracing::debug!(%peer, error = %e, source = ?std::error::Error::source(e), "AMQP connection failed")
        }
    }
}

async fn run_connection(
    admitted: Admitted<TcpStream>,
    acceptor: &TlsAcceptor,
    shared: &Shared,
) -> Result<CloseReason, AmqpError> {
    let Admitted {
        stream: tcp,
        peer,
        slot,
        mut draining,
    } = admitted;
    // Answers are small and latency-bound; don't let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let _socket = SocketGuard::new(&tcp);
    let limits = &shared.limits;
    let handshake = shared
        .counters
        .listener()
        .timed_handshake(limits.tls_handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        tls = handshake => tls
            .map_err(|_elapsed| AmqpError::TlsHandshakeTimeout)?
            .map_err(AmqpError::TlsHandshake)?,
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

/// Open, then the request loop, over an established byte stream.
async fn run_session<S>(
    admitted: Admitted<S>,
    chain: Vec<CertificateDer<'static>>,
    shared: &Shared,
) -> Result<CloseReason, AmqpError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Admitted {
        stream,
        slot,
        mut draining,
        ..
    } = admitted;
    let limits = &shared.limits;
    let expires = Instant::now() + limits.max_connection_lifetime;
    let opening = tokio::time::timeout(
        limits.open_timeout,
        open::open(stream, chain, shared, &slot),
    );
    let ready = tokio::select! {
        opened = opening => match opened.map_err(|_elapsed| AmqpError::OpenTimeout)?? {
            Opened::Ready(ready) => ready,
            Opened::Closed(reason) => return Ok(reason),
        },
        () = draining.wait() => return Ok(CloseReason::ServerShutdown),
    };
    let operations = Operations::new(
        OperationLimits {
            max_requests: limits.max_requests_per_connection,
            max_running: limits.max_operations_per_connection,
        },
        ready.registration_id.clone(),
    );
    // A refused device has its first request rejected; it gets no longer to send it than
    // it had to open.
    let expires = match ready.device {
        Ok(_) => expires,
        Err(_) => expires.min(Instant::now() + limits.open_timeout),
    };
    let mut handler = Handler {
        ready,
        shared,
        operations,
        registrations: JoinSet::new(),
        operation_of_task: HashMap::new(),
        draining,
        expires,
    };
    let end = handler.run().await;
    let Handler { ready, .. } = handler;
    let end = match end {
        Ok(Ending::Closed(reason)) => Ok(reason),
        Ok(Ending::DeviceLeft) => {
            wind_down(ready, limits.send_timeout).await;
            return Ok(CloseReason::ClientClosed);
        }
        Err(e) => Err(e),
    };
    // Dropping `ready` drops the kill switch: fe2o3's engine tasks end with us.
    drop(slot);
    end
}

/// Shuts the socket down (both ways) when the connection task ends, however it ends: fe2o3's
/// tasks own the stream and may be parked on one of their channels rather than on the
/// socket, and the device must see its connection end with ours (a FIN, not silence), and
/// those tasks must see it too (their next read ends). Holds a duplicate of the socket's
/// descriptor; `None` if it could not be duplicated (the kill switch alone ends the stream then).
struct SocketGuard(Option<std::net::TcpStream>);

impl SocketGuard {
    fn new(tcp: &TcpStream) -> Self {
        use std::os::fd::AsFd;
        Self(
            tcp.as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from),
        )
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(socket) = &self.0 {
            // Fails only if the peer already closed it: nothing left to do then.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// How the request loop ended without an error.
enum Ending {
    /// We closed the connection (or the device was refused).
    Closed(CloseReason),
    /// The device began to leave: detached a link or ended its session.
    DeviceLeft,
}

/// The device is leaving: answer its DETACHes and wait for its CLOSE (which fe2o3 answers),
/// so its SDK sees a clean disconnect rather than a reset; at most `within`.
async fn wind_down(ready: Box<Ready>, within: std::time::Duration) {
    let Ready {
        mut connection,
        session,
        mut sender,
        receiver,
        _kill,
        ..
    } = *ready;
    let leaving = async move {
        // Errors only mean the device is already further along (or gone).
        let _ = receiver.close().await;
        let _ = sender.on_detach().await;
        let _ = sender.close().await;
        drop(session);
        let _ = connection.on_close().await;
    };
    let _ = tokio::time::timeout(within, leaving).await;
}

/// The request loop of one opened connection.
struct Handler<'a> {
    ready: Box<Ready>,
    shared: &'a Shared,
    operations: Operations,
    registrations: JoinSet<Outcome>,
    /// Bounded by `max_operations_per_connection` (only running registrations have a task).
    operation_of_task: HashMap<tokio::task::Id, String>,
    draining: Draining,
    expires: Instant,
}

impl Handler<'_> {
    async fn run(&mut self) -> Result<Ending, AmqpError> {
        loop {
            // Every branch is cancel-safe: `recv`, `next_incoming_attach` and
            // `join_next_with_id` lose nothing when another branch wins.
            tokio::select! {
                delivery = self.ready.receiver.recv::<Body<Value>>() => match delivery {
                    Ok(delivery) => self.on_request(delivery).await?,
                    Err(e) if device_left(&e) => return Ok(Ending::DeviceLeft),
                    Err(e) => {
                        let error = message::error(
                            ErrorCondition::AmqpError(Condition::DecodeError),
                            "the request could not be received",
                        );
                        self.close(error).await;
                        return Err(AmqpError::Receive(e));
                    }
                },
                Some(done) = self.registrations.join_next_with_id(), if !self.registrations.is_empty() => {
                    self.registration_done(done);
                }
                attach = self.ready.session.next_incoming_attach() => match attach {
                    Some(attach) if self.holds_link(&attach.name) => {
                        bump(&self.shared.counters.get().refused_links);
                        self.close(open::duplicate_link_name()).await;
                        return Ok(Ending::Closed(CloseReason::DuplicateLinkName));
                    }
                    Some(attach) => self.refuse_link(attach).await?,
                    None => return Ok(Ending::DeviceLeft),
                },
                // One deadline branch: two branches on one instant would race (`select!`
                // polls from a random branch), and a refused device could be closed as if it
                // had reached its lifetime.
                () = tokio::time::sleep_until(self.expires) => {
                    let (error, reason) = match self.ready.device {
                        Err(refused) => (refused.error(), refused.close_reason()),
                        Ok(_) => (
                            message::error(
                                ErrorCondition::ConnectionError(ConnectionError::ConnectionForced),
                                "the connection reached its maximum lifetime",
                            ),
                            CloseReason::LifetimeExceeded,
                        ),
                    };
                    self.close(error).await;
                    return Ok(Ending::Closed(reason));
                }
                () = self.draining.wait(), if self.registrations.is_empty() => {
                    let error = message::error(
                        ErrorCondition::ConnectionError(ConnectionError::ConnectionForced),
                        "the service is shutting down",
                    );
                    self.close(error).await;
                    return Ok(Ending::Closed(CloseReason::ServerShutdown));
                }
            }
        }
    }

    /// Parses, answers and settles one request; starts its registration. A refused device's
    /// requests are rejected with `amqp:unauthorized-access` (the SDKs then leave; one that
    /// does not is closed at its shortened deadline). Closing at once could overtake the
    /// rejection: fe2o3 sends a CLOSE ahead of the session's queued frames.
    async fn on_request(&mut self, delivery: Delivery<Body<Value>>) -> Result<(), AmqpError> {
        if let Err(refused) = self.ready.device {
            return self
                .ready
                .receiver
                .reject(&delivery, refused.error())
                .await
                .map_err(AmqpError::Dispose);
        }
        let (answer, correlation_id, start) = match message::parse_request(delivery.message()) {
            Ok((correlation_id, request)) => {
                let (answer, start) = self.operations.handle(request);
                (answer, Some(correlation_id), start)
            }
            Err(malformed) => {
                bump(&self.shared.counters.get().bad_requests);
                let answer = self
                    .operations
                    .handle_malformed()
                    .unwrap_or_else(|| malformed.answer());
                (answer, None, None)
            }
        };
        if answer.status() == 429 {
            bump(&self.shared.counters.get().throttled);
        }
        let receiver = &self.ready.receiver;
        match (&answer, message::rejection(&answer)) {
            (_, Some(error)) => receiver.reject(&delivery, error).await,
            (Answer::Status { .. }, None) | (Answer::Error { .. }, None) => {
                receiver.accept(&delivery).await
            }
        }
        .map_err(AmqpError::Dispose)?;
        if let Some(response) = correlation_id.and_then(|id| message::response(id, &answer)) {
            let sendable = Sendable::builder().message(response).settled(true).build();
            let sending = self.ready.sender.send_batchable(sendable);
            // The delivery's own outcome is not awaited: DPS never resends an answer.
            drop(
                tokio::time::timeout(self.shared.limits.send_timeout, sending)
                    .await
                    .map_err(|_elapsed| AmqpError::SendTimeout)?
                    .map_err(AmqpError::Send)?,
            );
        }
        if let Some(start) = start {
            self.start_registration(start.operation_id, start.payload);
        }
        Ok(())
    }

    fn start_registration(&mut self, operation_id: String, payload: Option<serde_json::Value>) {
        bump(&self.shared.counters.get().registrations_started);
        let registrar = self.shared.registrar.clone();
        let Ok((device, _)) = &self.ready.device else {
            tracing::error!("bug: a registration was asked for a refused device");
            self.operations.done(&operation_id, Outcome::Failed);
            return;
        };
        let device = Arc::clone(device);
        let tpm_keys = self.ready.tpm_keys.clone();
        let task = self.registrations.spawn(async move {
            match registrar.register(&device, Transport::Amqp, payload).await {
                Ok(mut result) => {
                    if let Some(keys) = &tpm_keys {
                        seal_hub_key(&mut result, &device, keys);
                    }
                    Outcome::Done(Box::new(result))
                }
                Err(
                    RegistrarError::Busy { retry_after_secs }
                    | RegistrarError::BrokerUnavailable { retry_after_secs },
                ) => Outcome::Busy { retry_after_secs },
                Err(e) => {
                    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "registration failed");
                    Outcome::Failed
                }
            }
        });
        self.operation_of_task.insert(task.id(), operation_id);
    }

    fn registration_done(
        &mut self,
        done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "bug: a registration task failed");
                (e.id(), Outcome::Failed)
            }
        };
        let Some(operation_id) = self.operation_of_task.remove(&id) else {
            return;
        };
        let counters = self.shared.counters.get();
        match outcome {
            Outcome::Busy { .. } => bump(&counters.registrations_busy),
            Outcome::Failed => bump(&counters.registrations_failed),
            Outcome::Done(_) => {}
        }
        self.operations.done(&operation_id, outcome);
    }

    /// Whether one of the connection's two links is called `name`.
    fn holds_link(&self, name: &str) -> bool {
        self.ready.sender.name() == name || self.ready.receiver.name() == name
    }

    /// A link beyond the two: attached and detached at once (fe2o3 answers an ATTACH only by
    /// attaching).
    async fn refuse_link(
        &mut self,
        attach: fe2o3_amqp::types::performatives::Attach,
    ) -> Result<(), AmqpError> {
        bump(&self.shared.counters.get().refused_links);
        let link = fe2o3_amqp::acceptor::LinkAcceptor::new()
            .accept_incoming_attach(attach, &mut self.ready.session)
            .await
            .map_err(AmqpError::Attach)?;
        let error = message::error(
            ErrorCondition::AmqpError(Condition::NotAllowed),
            "one sender and one receiver link per connection",
        );
        open::detach(link, error).await;
        Ok(())
    }

    async fn close(&mut self, error: fe2o3_amqp::types::definitions::Error) {
        open::close(&mut self.ready.connection, error, self.shared).await;
    }
}

/// Whether a receive error means the device detached its link or left.
fn device_left(e: &RecvError) -> bool {
    matches!(
        e,
        RecvError::LinkStateError(
            LinkStateError::RemoteDetached
                | LinkStateError::RemoteClosed
                | LinkStateError::SessionStopped(_)
        )
    )
}

/// Seconds since the Unix epoch, for SAS expiry.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Counts how a connection ended.
fn count_end(counters: &AmqpCounters, end: &Result<CloseReason, AmqpError>) {
    let c = counters.get();
    match end {
        // Refused devices are counted where they are refused.
        Ok(
            CloseReason::ClientClosed
            | CloseReason::ServerShutdown
            | CloseReason::NotAuthorized
            | CloseReason::DeviceConnectionLimit,
        ) => {}
        Ok(CloseReason::TooManyRefusedLinks | CloseReason::DuplicateLinkName) => {
            bump(&c.protocol_errors)
        }
        Ok(CloseReason::LifetimeExceeded) => bump(&c.lifetime_ends),
        Err(AmqpError::TlsHandshake(_)) => bump(&c.tls_failures),
        Err(AmqpError::TlsHandshakeTimeout) => bump(&c.tls_timeouts),
        Err(AmqpError::OpenTimeout) => bump(&c.open_timeouts),
        Err(AmqpError::ProtocolHeader) => bump(&c.bad_headers),
        Err(AmqpError::Sasl(_)) => bump(&c.sasl_failures),
        Err(AmqpError::Io(_) | AmqpError::SendTimeout) => bump(&c.io_errors),
        Err(_) => bump(&c.protocol_errors),
    }
}

/// An assigned TPM device's result carries its hub key (`AttestedDevice::hub_key`, which the
/// assignment feed tells the hub) sealed to its TPM, as `tpm.authenticationKey`: the Azure TPM
/// clients import it once assigned (dps-protocol.md §5.2 item 5).
fn seal_hub_key(
    result: &mut dps_types::DeviceRegistrationResult,
    device: &dps_attest::AttestedDevice,
    keys: &crate::sasl::TpmKeys,
) {
    use base64::Engine;
    use dps_attest::tpm::{seal_key, TpmKey, TpmKeyRole};

    if result.status != dps_types::RegistrationStatus::Assigned {
        return;
    }
    let Some(hub_key) = device.hub_key() else {
        return;
    };
    let sealed = TpmKey::parse(TpmKeyRole::Endorsement, &keys.endorsement_key).and_then(|ek| {
        let srk = TpmKey::parse(TpmKeyRole::StorageRoot, &keys.storage_root_key)?;
        seal_key(&ek, &srk, hub_key)
    });
    match sealed {
        Ok(blob) => {
            result.tpm = Some(dps_types::TpmRegistrationResult {
                authentication_key: base64::engine::general_purpose::STANDARD.encode(blob),
            })
        }
        // The challenge sealed to these same keys, so they parse.
        Err(e) => tracing::error!(error = %e, "bug: an attested TPM device's keys do not seal"),
    }
}
