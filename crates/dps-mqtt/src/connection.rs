//! One device connection (mini-redis shape): [`Connection`] moves bytes and frames packets;
//! [`Handler`] runs the loop that feeds the [`Session`] and carries out its actions:
//! attestation (`dps-attest`), registration (`dps-registrar`), writes, close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dps_attest::{AttestedDevice, Refusal};
use dps_listener::{DeviceConnections, DevicePlace, Draining, Slot};
use dps_registrar::{Registrar, RegistrarError, Transport};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::codec::{self, Inbound};
use crate::stats::{bump, MqttCounters};
use crate::{Action, CloseReason, Credentials, MqttError, RegistrationOutcome, Session};

/// Bytes asked of the socket per read: a TLS record's plaintext is at most 16 KiB, and DPS
/// packets are usually under 1 KiB, so 4 KiB serves nearly every packet in one read.
const READ_CHUNK: usize = 4 * 1024;

// Memory of an idle connection (a device between packets, or held connected with pings): the
// read and write buffers are freed once empty, so it keeps only its task, rustls' state and
// rustls' own read buffer. A packet's first byte is read on its own (into the stack), and only
// then is a buffer allocated for the rest, which rustls already holds decrypted.

/// Time to deliver what we wrote (responses are small; a peer that takes nothing for this
/// long is stuck or hostile) and to send TLS close_notify when closing.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffered framing over one byte stream (TLS, or a WebSocket inside TLS).
pub(crate) struct Connection<S> {
    stream: S,
    /// The client's TLS certificate chain, leaf first, until attestation takes it.
    chain: Vec<CertificateDer<'static>>,
    read: BytesMut,
    write: BytesMut,
    max_packet_size: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(crate) fn new(
        stream: S,
        chain: Vec<CertificateDer<'static>>,
        max_packet_size: usize,
    ) -> Self {
        Self {
            stream,
            chain,
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_packet_size,
        }
    }

    /// The next packet; `None` when the peer closed cleanly between packets.
    ///
    /// Cancel-safe: a packet is returned as soon as it is complete, before any await, and a
    /// cancelled `read_buf` loses nothing (the bytes stay in the TLS session).
    ///
    /// Bounded: `decode` refuses a frame over `max_packet_size` from its header, so the
    /// buffer holds at most one partial packet of that size plus one read.
    async fn read_packet(&mut self) -> Result<Option<Inbound>, MqttError> {
        loop {
            if let Some(packet) = codec::decode(&mut self.read, self.max_packet_size)? {
                return Ok(Some(packet));
            }
            if self.read.is_empty() {
                // Between packets: wait holding no buffer.
                self.read = BytesMut::new();
                let mut first = [0u8; 1];
                if self.stream.read(&mut first).await? == 0 {
                    return Ok(None);
                }
                self.read.reserve(READ_CHUNK);
                self.read.extend_from_slice(&first);
                continue;
            }
            self.read.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(MqttError::ClosedMidPacket);
            }
        }
    }

    fn queue(&mut self, packet: codec::Outbound) -> Result<(), MqttError> {
        codec::encode(packet, &mut self.write).map_err(MqttError::Encode)
    }

    /// Writes everything queued, within [`WRITE_TIMEOUT`].
    async fn flush(&mut self) -> Result<(), MqttError> {
        if self.write.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.write).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_elapsed| MqttError::WriteTimeout)??;
        self.write = BytesMut::new();
        Ok(())
    }

    /// Sends TLS close_notify and closes the socket (best effort, bounded).
    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.stream.shutdown()).await;
    }

    /// The chain the client presented in the handshake, leaf first (empty if none); no
    /// longer held afterwards (a connection attests once).
    fn take_chain(&mut self) -> Vec<CertificateDer<'static>> {
        std::mem::take(&mut self.chain)
    }
}

/// The loop of one connection.
pub(crate) struct Handler<S> {
    pub(crate) connection: Connection<S>,
    pub(crate) session: Session,
    pub(crate) registrar: Registrar,
    pub(crate) counters: MqttCounters,
    /// The connection's listener slot, marked authenticated with the CONNACK 0.
    pub(crate) slot: Slot,
    /// Where the authenticated connections of each device are counted.
    pub(crate) devices: DeviceConnections,
    /// The proof attestation gave, and the connection's place among the device's
    /// connections; the registrar accepts nothing weaker.
    pub(crate) device: Option<(Arc<AttestedDevice>, DevicePlace)>,
    /// Registrations in progress (at most `max_operations_per_connection`, enforced by the
    /// session) with the operation id of each task.
    pub(crate) registrations: JoinSet<RegistrationOutcome>,
    pub(crate) operation_of_task: HashMap<tokio::task::Id, String>,
    /// True once the server drains; a connection with no registration running then closes,
    /// one with a registration running finishes it first (within the drain timeout).
    pub(crate) draining: Draining,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handler<S> {
    /// Runs until the session closes or the connection fails. Registrations still running
    /// when it returns are aborted with the `JoinSet`.
    pub(crate) async fn run(&mut self) -> Result<CloseReason, MqttError> {
        loop {
            if let Some(reason) = self.act().await? {
                self.connection.shutdown().await;
                return Ok(reason);
            }
            let deadline = self.session.next_deadline().map(Instant::from_std);
            tokio::select! {
                packet = self.connection.read_packet() => match packet? {
                    Some(packet) => self.session.handle_packet(packet, now()),
                    None => return Ok(CloseReason::ClientDisconnected),
                },
                Some(done) = self.registrations.join_next_with_id(), if !self.registrations.is_empty() => {
                    self.registration_done(done);
                }
                () = sleep_until(deadline) => self.session.handle_tick(now()),
                // Cancel-safe; resolves at once while the listener drains.
                () = self.draining.wait(), if self.registrations.is_empty() => {
                    self.connection.shutdown().await;
                    return Ok(CloseReason::ServerShutdown);
                }
            }
        }
    }

    /// Carries out every pending action, then writes. `Some` once the session closed.
    async fn act(&mut self) -> Result<Option<CloseReason>, MqttError> {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Send(packet) => {
                    if is_throttled(&packet) {
                        bump(&self.counters.get().throttled);
                    }
                    self.connection.queue(packet)?
                }
                Action::Authenticate(credentials) => self.authenticate(&credentials),
                Action::Register {
                    operation_id,
                    payload,
                } => self.start_registration(operation_id, payload),
                Action::Close(reason) => {
                    self.connection.flush().await?;
                    return Ok(Some(reason));
                }
            }
        }
        self.connection.flush().await?;
        Ok(None)
    }

    /// SAS token if the device sent a password, else the TLS client certificate chain.
    fn authenticate(&mut self, credentials: &Credentials) {
        let claimed = credentials.registration_id.as_str();
        let lookup = self.registrar.lookup();
        let attested: Result<AttestedDevice, Refusal> = match &credentials.password {
            Some(password) => dps_attest::attest_sas(
                password,
                self.registrar.id_scope(),
                claimed,
                lookup,
                unix_now(),
            ),
            // An empty chain is refused as `NoClientCertificate`.
            None => dps_attest::attest_x509(
                &self
                    .connection
                    .take_chain()
                    .iter()
                    .map(AsRef::as_ref)
                    .collect::<Vec<_>>(),
                claimed,
                lookup,
                dps_attest::UnixTime::now(),
            ),
        };
        match attested {
            Ok(device) => match self.devices.enter(credentials.registration_id.as_str()) {
                Some(place) => {
                    self.device = Some((Arc::new(device), place));
                    self.slot.authenticated();
                    self.session.handle_authenticated(now());
                }
                None => {
                    tracing::debug!("MQTT CONNECT refused: the device holds its connections");
                    self.session.handle_device_busy();
                }
            },
            Err(refusal) => {
                tracing::debug!(reason = refusal.reason.label(), "MQTT CONNECT refused");
                self.registrar
                    .record_refusal(claimed, Transport::Mqtt, &refusal);
                self.session.handle_refused();
            }
        }
    }

    fn start_registration(&mut self, operation_id: String, payload: Option<serde_json::Value>) {
        let Some(device) = self.device.as_ref().map(|(device, _)| Arc::clone(device)) else {
            tracing::error!("bug: a registration was asked for before attestation");
            self.session
                .handle_registration_done(&operation_id, RegistrationOutcome::Failed);
            return;
        };
        bump(&self.counters.get().registrations_started);
        let registrar = self.registrar.clone();
        let task = self.registrations.spawn(async move {
            match registrar.register(&device, Transport::Mqtt, payload).await {
                Ok(result) => RegistrationOutcome::Done(Box::new(result)),
                Err(
                    RegistrarError::Busy { retry_after_secs }
                    | RegistrarError::BrokerUnavailable { retry_after_secs },
                ) => RegistrationOutcome::Busy { retry_after_secs },
                Err(e) => {
                    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "registration failed");
                    RegistrationOutcome::Failed
                }
            }
        });
        self.operation_of_task.insert(task.id(), operation_id);
    }

    fn registration_done(
        &mut self,
        done: Result<(tokio::task::Id, RegistrationOutcome), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "bug: a registration task failed");
                (e.id(), RegistrationOutcome::Failed)
            }
        };
        let Some(operation_id) = self.operation_of_task.remove(&id) else {
            return;
        };
        let counters = self.counters.get();
        match outcome {
            RegistrationOutcome::Busy { .. } => bump(&counters.registrations_busy),
            RegistrationOutcome::Failed => bump(&counters.registrations_failed),
            RegistrationOutcome::Done(_) => {}
        }
        self.session
            .handle_registration_done(&operation_id, outcome);
    }
}

/// Whether `packet` is a `429` answer (too many requests; the registrar is busy).
fn is_throttled(packet: &codec::Outbound) -> bool {
    matches!(packet, codec::Outbound::Publish { topic, .. }
        if topic.strip_prefix(crate::topics::RESPONSE_PREFIX).is_some_and(|t| t.starts_with("429/")))
}

/// Sleeps until `deadline`; forever without one (the session is closed then anyway).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The session's clock: tokio's, so paused-time tests drive it too.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Seconds since the Unix epoch, for SAS expiry.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Counts how a connection ended.
pub(crate) fn count_end(counters: &MqttCounters, end: &Result<CloseReason, MqttError>) {
    let c = counters.get();
    match end {
        Ok(CloseReason::ClientDisconnected | CloseReason::ServerShutdown) => {}
        Ok(CloseReason::DeviceConnectionLimit) => bump(&c.device_limit),
        Ok(CloseReason::LifetimeExceeded) => bump(&c.lifetime_ends),
        Ok(CloseReason::ConnectTimeout) => bump(&c.connect_timeouts),
        Ok(CloseReason::IdleTimeout) => bump(&c.idle_timeouts),
        Ok(
            CloseReason::UnsupportedProtocolVersion
            | CloseReason::BadUsername
            | CloseReason::ClientIdMismatch
            | CloseReason::WrongIdScope,
        ) => bump(&c.bad_connects),
        Ok(CloseReason::NotAuthorized) => bump(&c.not_authorized),
        Ok(CloseReason::UnknownTopic | CloseReason::ProtocolViolation(_)) => {
            bump(&c.protocol_violations)
        }
        Err(MqttError::Codec(codec::CodecError::TooLarge { .. })) => bump(&c.oversized_packets),
        Err(MqttError::Codec(_)) => bump(&c.malformed_packets),
        Err(MqttError::TlsHandshake(_)) => bump(&c.tls_failures),
        Err(MqttError::TlsHandshakeTimeout) => bump(&c.tls_timeouts),
        Err(MqttError::Encode(_)) => {}
        Err(_) => bump(&c.io_errors),
    }
}
