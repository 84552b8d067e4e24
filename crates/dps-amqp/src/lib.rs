//! The AMQP 1.0 frontend of the provisioning service: devices register over AMQPS (port
//! 5671) exactly as the Azure IoT SDKs' AMQP transports expect from DPS (`dps-protocol.md`
//! §6).
//!
//! What it does: TLS with optional client certificates; the AMQP or SASL protocol header;
//! SASL `PLAIN` (symmetric keys), `TPM` (the challenge sealed to the device's TPM, [`sasl::tpm`]),
//! `EXTERNAL` / `ANONYMOUS` or no SASL at all (X.509) ([`sasl`]); attestation through
//! `dps-attest` (a SAS token or a TPM-signed one at once, a certificate against the
//! registration id of the first link's address ([`address`])); one session with one
//! sender and one receiver link on `{idScope}/registrations/{registrationId}`; requests by
//! `iotdps-operation-type`, answered by `correlation-id` on the receiver link or rejected with
//! DPS's error JSON ([`message`]); the operation table of a connection ([`operations`]) and
//! registration through `dps-registrar` (transport `amqp` in records and attempts), all on the
//! project's one accept loop (`dps-listener`).
//!
//! Why fe2o3-amqp's acceptors and not a session of our own over its codec: an AMQP session
//! is far bigger than MQTT's (frames, channels, handles, delivery ids, two flow-control
//! windows, multi-frame transfers, settlement), and fe2o3's connection, session and link
//! acceptors implement it with the bounds we need as settings - the frame size and idle
//! timeout in our OPEN (frames before the OPEN are limited to 512 bytes, a larger frame ends
//! the connection), one channel, a few link handles, `max-message-size` at attach (enforced
//! on every transfer), link credit for requests in flight, and bounded channels between its
//! tasks, which stop reading the socket when full. What stays ours is small and sans-IO:
//! the SASL exchange, the link address, request parsing and answers, the operation table.
//! What we add around fe2o3: the handshake, open and send timeouts, the connection lifetime,
//! a check of frame sizes before its decoders see them ([`frame`]: they panic on a frame
//! shorter than its header), and a kill switch on the stream it owns, so its tasks end with
//! our connection task.
//!
//! What it must never do: read the store (it calls the registrar), trust a SASL identity or a
//! link address without attestation, let one device's links name another, panic or grow
//! without bound on anything a peer sends, or log a SAS token.
//!
//! Main types: [`serve`], [`AmqpFrontend`] (one per process, shared by the AMQPS listener and
//! AMQP over WebSocket on the HTTPS listener) and [`AmqpLimits`], [`sasl::Exchange`], [`operations::Operations`],
//! [`frame::FrameGuard`],
//! [`AmqpCounters`] / [`AmqpStats`], [`CloseReason`], and [`AmqpError`], the crate's error
//! enum.

pub mod address;
mod connection;
pub mod encoding;
mod error;
pub mod frame;
pub mod message;
mod open;
pub mod operations;
pub mod sasl;
mod server;
mod stats;
mod stream;
mod transfer;

pub use connection::CloseReason;
pub use error::AmqpError;
pub use open::{AMQP_HEADER, MAX_REFUSED_LINKS, SASL_HEADER};
pub use server::{serve, serve_with_counters, AmqpFrontend, AmqpLimits, DEFAULT_MAX_MESSAGE_SIZE};
pub use stats::{AmqpCounters, AmqpStats};
