//! Opening one device connection, from the TLS stream to two attached links, under the
//! caller's `open_timeout`:
//!
//! 1. the protocol header: `AMQP 3 1 0 0` starts SASL ([`crate::sasl`]), `AMQP 0 1 0 0` skips
//!    it (the Node SDK's X.509 devices); anything else gets our SASL header and a close;
//! 2. fe2o3's connection acceptor runs SASL and exchanges OPENs (announcing our frame size,
//!    idle timeout and a single session);
//! 3. a PLAIN claim is attested at once (`attest_sas`), a TPM claim too (its token against the
//!    key of the challenge the exchange sealed, `TpmChallenges::attest`); a refusal is recorded and the device
//!    gets a CLOSE with `amqp:unauthorized-access` and DPS's `401002` JSON, as from DPS; an
//!    attested device that already holds `max_connections_per_device` connections gets a
//!    CLOSE with `amqp:resource-limit-exceeded` ([`message::device_limit`]);
//! 4. one session; then ATTACHes until there is one link each way on
//!    `{idScope}/registrations/{registrationId}`. Without a PLAIN or TPM claim the first such address
//!    names the registration id the TLS client certificate is attested against
//!    (`attest_x509`). A refusal is recorded, and the links are attached all the same: the
//!    device's first request is then rejected with `amqp:unauthorized-access` (or
//!    `amqp:resource-limit-exceeded` when it holds its connections) and the connection closed. (A CLOSE while its receiver link attaches leaves the Node SDK waiting
//!    45 s for a DETACH that cannot come; a rejected request is reported at once.) A link on
//!    another address, on another device's, or a second link of one direction is attached and
//!    at once detached with an error; a few of those close the connection.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_attest::{AttestedDevice, Refusal};
use dps_listener::{DevicePlace, Slot};
use dps_registrar::Transport;
use dps_types::RegistrationId;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError as Condition, ErrorCondition};
use fe2o3_amqp::types::messaging::TargetArchetype;
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::{Receiver, Sender};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::connection::{unix_now, CloseReason, Shared};
use crate::frame::FrameGuard;
use crate::sasl::{Claim, SaslServer};
use crate::stats::bump;
use crate::stream::{Kill, PeerStream};
use crate::{message, AmqpError};

/// The SASL protocol header (AMQP 1.0 §5.3.1).
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// The plain AMQP protocol header (AMQP 1.0 §2.2).
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// Links refused on one connection before it is closed: an SDK attaches exactly two good
/// ones, so a few refusals are a confused client, more a probe.
pub const MAX_REFUSED_LINKS: usize = 4;

/// Buffer of fe2o3's per-connection and per-session channels (frames). Bounded channels are
/// what keeps a fast peer from queueing without limit: when one is full, fe2o3 stops reading
/// the socket. 16 frames of `max_frame_size` each is a few hundred KiB at most.
const CHANNEL_BUFFER: usize = 16;

/// Our container id in OPEN.
const CONTAINER_ID: &str = "dpsd";

/// An opened connection: one session, a link each way, and the device they name.
pub(crate) struct Ready {
    pub(crate) connection: ListenerConnectionHandle,
    pub(crate) session: ListenerSessionHandle,
    /// Our sender: answers go to the device's receiver link.
    pub(crate) sender: Sender,
    /// Our receiver: requests come from the device's sender link.
    pub(crate) receiver: Receiver,
    /// The registration id both links name.
    pub(crate) registration_id: RegistrationId,
    /// The attested device and its place among the device's connections, or why it may not
    /// register (its requests are rejected with that error).
    pub(crate) device: Result<(Arc<AttestedDevice>, DevicePlace), Refused>,
    /// A TPM device's keys: its hub key is sealed to them in an assigned result.
    pub(crate) tpm_keys: Option<crate::sasl::TpmKeys>,
    /// Ends fe2o3's tasks when the connection is dropped.
    pub(crate) _kill: Kill,
}

/// Why a device that opened its links may not register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Attestation refused it.
    NotAuthorized,
    /// It already holds `max_connections_per_device` connections.
    DeviceLimit,
}

impl Refused {
    /// The error its requests are rejected with and its connection closed with.
    pub(crate) fn error(self) -> definitions::Error {
        match self {
            Refused::NotAuthorized => message::unauthorized(),
            Refused::DeviceLimit => message::device_limit(),
        }
    }

    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            Refused::NotAuthorized => CloseReason::NotAuthorized,
            Refused::DeviceLimit => CloseReason::DeviceConnectionLimit,
        }
    }
}

/// How opening ended without an error.
pub(crate) enum Opened {
    Ready(Box<Ready>),
    Closed(CloseReason),
}

/// Opens `tls` (see the module doc). `chain` is the device's TLS client certificate chain.
pub(crate) async fn open<S>(
    mut tls: S,
    chain: Vec<CertificateDer<'static>>,
    shared: &Shared,
    slot: &Slot,
) -> Result<Opened, AmqpError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut header = [0u8; 8];
    tls.read_exact(&mut header).await?;
    let limits = &shared.limits;
    let acceptor = ConnectionAcceptor::builder()
        .container_id(CONTAINER_ID)
        .max_frame_size(u32::try_from(limits.max_frame_size).unwrap_or(u32::MAX))
        .channel_max(0u16)
        .idle_time_out(u32::try_from(limits.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .buffer_size(CHANNEL_BUFFER);
    let (stream, kill) = PeerStream::new(
        header.to_vec(),
        tls,
        FrameGuard::new(limits.max_frame_size, limits.max_message_size),
    );
    let (mut connection, claim) = if header == SASL_HEADER {
        let sasl = SaslServer::new(shared.registrar.clone());
        let acceptor = acceptor.sasl_acceptor(sasl.clone()).build();
        let accepted = acceptor.accept(stream).await;
        match (accepted, sasl.result()) {
            (Ok(connection), Some(Ok(claim))) => (connection, claim),
            (_, Some(Err(failure))) => return Err(AmqpError::Sasl(failure)),
            (Err(e), _) => return Err(AmqpError::Open(e)),
            (Ok(_), None) => {
                // fe2o3 opens only after an `ok` outcome, which always leaves a result.
                tracing::error!("bug: an AMQP connection opened without a SASL result");
                return Err(AmqpError::ClosedWhileOpening);
            }
        }
    } else if header == AMQP_HEADER {
        let connection = acceptor
            .build()
            .accept(stream)
            .await
            .map_err(AmqpError::Open)?;
        (connection, Claim::Certificate)
    } else {
        let mut stream = stream;
        // AMQP 1.0 §2.2: answer with a header we support, then close.
        stream.write_all(&SASL_HEADER).await?;
        stream.shutdown().await?;
        return Err(AmqpError::ProtocolHeader);
    };

    let tpm_keys = match &claim {
        Claim::Tpm { keys, .. } => Some(keys.clone()),
        _ => None,
    };
    let (mut device, mut claimed) = match attest_claim(claim, shared) {
        None => (None, None),
        Some((registration_id, attested)) => {
            let admitted = match attested {
                Ok(attested) => admit(attested, shared, slot),
                Err(refusal) => {
                    record(shared, registration_id.as_str(), &refusal);
                    Err(Refused::NotAuthorized)
                }
            };
            match admitted {
                Ok(admitted) => (Some(Ok(admitted)), Some(registration_id)),
                Err(refused) => {
                    close(&mut connection, refused.error(), shared).await;
                    return Ok(Opened::Closed(refused.close_reason()));
                }
            }
        }
    };

    let incoming = connection
        .next_incoming_session()
        .await
        .ok_or(AmqpError::ClosedWhileOpening)?;
    let mut session = SessionAcceptor::builder()
        .handle_max(3u32)
        .buffer_size(CHANNEL_BUFFER)
        .build()
        .accept_incoming_session(incoming, &mut connection)
        .await
        .map_err(AmqpError::Begin)?;

    let links = LinkAcceptor::builder()
        .max_message_size(u64::try_from(limits.max_message_size).unwrap_or(u64::MAX))
        .build();
    let mut sender: Option<Sender> = None;
    let mut receiver: Option<Receiver> = None;
    let mut refused = 0;
    while sender.is_none() || receiver.is_none() {
        let attach = session
            .next_incoming_attach()
            .await
            .ok_or(AmqpError::ClosedWhileOpening)?;
        let why = match device_of(&attach, shared) {
            None => Some(wrong_address()),
            Some(named) => {
                if claimed.is_none() {
                    let chain: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
                    device = Some(
                        match dps_attest::attest_x509(
                            &chain,
                            named.as_str(),
                            shared.registrar.lookup(),
                            dps_attest::UnixTime::now(),
                        ) {
                            Ok(attested) => admit(attested, shared, slot),
                            Err(refusal) => {
                                record(shared, named.as_str(), &refusal);
                                Err(Refused::NotAuthorized)
                            }
                        },
                    );
                    claimed = Some(named.clone());
                }
                let ours = claimed.as_ref().is_some_and(|c| c.key() == named.key());
                let taken = match attach.role {
                    fe2o3_amqp::types::definitions::Role::Sender => receiver.is_some(),
                    fe2o3_amqp::types::definitions::Role::Receiver => sender.is_some(),
                };
                if !ours {
                    Some(message::error(
                        ErrorCondition::AmqpError(Condition::UnauthorizedAccess),
                        "the link address names another device",
                    ))
                } else if taken {
                    Some(message::error(
                        ErrorCondition::AmqpError(Condition::NotAllowed),
                        "one sender and one receiver link per connection",
                    ))
                } else {
                    None
                }
            }
        };
        let held = [
            sender.as_ref().map(Sender::name),
            receiver.as_ref().map(Receiver::name),
        ];
        if held.contains(&Some(attach.name.as_str())) {
            bump(&shared.counters.get().refused_links);
            close(&mut connection, duplicate_link_name(), shared).await;
            return Ok(Opened::Closed(CloseReason::DuplicateLinkName));
        }
        let link = links
            .accept_incoming_attach(attach, &mut session)
            .await
            .map_err(AmqpError::Attach)?;
        match (why, link) {
            (Some(error), link) => {
                bump(&shared.counters.get().refused_links);
                refused += 1;
                detach(link, error).await;
                if refused >= MAX_REFUSED_LINKS {
                    let error = message::error(
                        ErrorCondition::AmqpError(Condition::ResourceLimitExceeded),
                        "too many refused links",
                    );
                    close(&mut connection, error, shared).await;
                    return Ok(Opened::Closed(CloseReason::TooManyRefusedLinks));
                }
            }
            (None, LinkEndpoint::Sender(link)) => sender = Some(link),
            (None, LinkEndpoint::Receiver(mut link)) => {
                link.set_credit(limits.link_credit)
                    .await
                    .map_err(|_| AmqpError::ClosedWhileOpening)?;
                receiver = Some(link);
            }
        }
    }
    match (sender, receiver, claimed, device) {
        (Some(sender), Some(receiver), Some(registration_id), Some(device)) => {
            Ok(Opened::Ready(Box::new(Ready {
                connection,
                session,
                sender,
                receiver,
                registration_id,
                device: device.map(|(device, place)| (Arc::new(device), place)),
                tpm_keys,
                _kill: kill,
            })))
        }
        _ => {
            tracing::error!("bug: the AMQP link loop ended without both links and a device");
            Err(AmqpError::ClosedWhileOpening)
        }
    }
}

/// Attests a SASL claim (PLAIN's SAS token, TPM's token signed with its challenge key):
/// the claimed registration id and the outcome. `None` for a certificate, attested later
/// against its first link's address.
fn attest_claim(
    claim: Claim,
    shared: &Shared,
) -> Option<(RegistrationId, Result<AttestedDevice, Refusal>)> {
    let registrar = &shared.registrar;
    match claim {
        Claim::Sas {
            registration_id,
            token,
        } => {
            let attested = dps_attest::attest_sas(
                &token,
                registrar.id_scope(),
                registration_id.as_str(),
                registrar.lookup(),
                unix_now(),
            );
            Some((registration_id, attested))
        }
        Claim::Tpm { keys, token } => {
            let registration_id = keys.registration_id;
            let attested = registrar.tpm_challenges().attest(
                &token,
                registrar.id_scope(),
                registration_id.as_str(),
                Some(&STANDARD.encode(keys.endorsement_key)),
                registrar.lookup(),
                unix_now(),
            );
            Some((registration_id, attested))
        }
        Claim::Certificate => None,
    }
}

/// The registration id a link's address names, if it is this service's device path.
fn device_of(attach: &Attach, shared: &Shared) -> Option<RegistrationId> {
    let address = match attach.role {
        // The device sends on it: its target is the address.
        fe2o3_amqp::types::definitions::Role::Sender => match attach.target.as_deref() {
            Some(TargetArchetype::Target(target)) => target.address.as_deref(),
            _ => None,
        },
        fe2o3_amqp::types::definitions::Role::Receiver => attach
            .source
            .as_deref()
            .and_then(|source| source.address.as_deref()),
    }?;
    let (scope, id) = crate::address::parse_device_path(address)?;
    scope
        .eq_ignore_ascii_case(shared.registrar.id_scope().as_str())
        .then_some(id)
}

/// The close of a connection whose device named a link like one it already holds. AMQP allows
/// that when the roles differ (Qpid Proton's default names do it), but fe2o3's session keys
/// links by name alone and would end the session without a word to the device.
pub(crate) fn duplicate_link_name() -> definitions::Error {
    message::error(
        ErrorCondition::AmqpError(Condition::NotAllowed),
        "each link on a connection needs a name of its own",
    )
}

fn wrong_address() -> definitions::Error {
    message::error(
        ErrorCondition::AmqpError(Condition::NotFound),
        "the link address must be {idScope}/registrations/{registrationId}",
    )
}

/// Gives an attested device its place among its connections (its slot then stops counting
/// as unauthenticated), or refuses it when it holds them all.
fn admit(
    device: AttestedDevice,
    shared: &Shared,
    slot: &Slot,
) -> Result<(AttestedDevice, DevicePlace), Refused> {
    match shared.devices.enter(device.registration_id().as_str()) {
        Some(place) => {
            slot.authenticated();
            Ok((device, place))
        }
        None => {
            tracing::debug!("AMQP device refused: it holds its connections");
            bump(&shared.counters.get().device_limit);
            Err(Refused::DeviceLimit)
        }
    }
}

/// Records an attestation refusal (the device itself only learns "unauthorized").
fn record(shared: &Shared, claimed: &str, refusal: &Refusal) {
    tracing::debug!(reason = refusal.reason.label(), "AMQP device refused");
    bump(&shared.counters.get().not_authorized);
    shared
        .registrar
        .record_refusal(claimed, Transport::Amqp, refusal);
}

/// Closes the connection with `error`, waiting at most `send_timeout` for the device's CLOSE.
pub(crate) async fn close(
    connection: &mut ListenerConnectionHandle,
    error: definitions::Error,
    shared: &Shared,
) {
    let closing = connection.close_with_error(error);
    // The outcome only says how the device answered; it is closed either way.
    let _ = tokio::time::timeout(shared.limits.send_timeout, closing).await;
}

/// Detaches a refused link with `error` (the device sees the reason on its link).
pub(crate) async fn detach(link: LinkEndpoint, error: definitions::Error) {
    // A device that already went away cannot be told; nothing else to do.
    let _ = match link {
        LinkEndpoint::Sender(link) => link.close_with_error(error).await.is_ok(),
        LinkEndpoint::Receiver(link) => link.close_with_error(error).await.is_ok(),
    };
}
