//! The crate's error enum: why one connection ended abnormally. Grouped by who is at fault;
//! none of them affects another connection.

use fe2o3_amqp::acceptor::error::AcceptorAttachError;
use fe2o3_amqp::connection::OpenError;
use fe2o3_amqp::link::{DispositionError, RecvError, SendError};
use fe2o3_amqp::session::BeginError;

use crate::sasl::SaslFailure;

/// Why a connection ended other than by our own decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    // The peer misbehaved, was too slow, or went away.
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    TlsHandshake(#[source] std::io::Error),
    /// The TLS handshake did not finish within `tls_handshake_timeout`.
    #[error("TLS handshake timed out")]
    TlsHandshakeTimeout,
    /// The protocol header, SASL, OPEN, BEGIN and both ATTACHes did not finish within
    /// `open_timeout`.
    #[error("the connection did not open its links in time")]
    OpenTimeout,
    /// The first bytes after TLS were not the AMQP or AMQP SASL protocol header (we answered
    /// with ours and closed, AMQP 1.0 §2.2).
    #[error("not an AMQP 1.0 protocol header")]
    ProtocolHeader,
    /// The SASL exchange failed (outcome `auth`).
    #[error("SASL failed")]
    Sasl(#[source] SaslFailure),
    /// Opening the connection failed: malformed frames, an oversized frame, a frame before
    /// OPEN, or the peer went away.
    #[error("the AMQP connection did not open")]
    Open(#[source] OpenError),
    /// The device's session did not begin.
    #[error("the session did not begin")]
    Begin(#[source] BeginError),
    /// A link could not be attached.
    #[error("a link could not be attached")]
    Attach(#[source] AcceptorAttachError),
    /// The device's sender link failed: an oversized or undecodable message, a transfer beyond
    /// its credit, or the session ended with an error.
    #[error("receiving a request failed")]
    Receive(#[source] RecvError),
    /// Settling a request failed (the link or session is gone).
    #[error("settling a request failed")]
    Dispose(#[source] DispositionError),
    /// Sending an answer failed (the link or session is gone).
    #[error("sending an answer failed")]
    Send(#[source] SendError),
    /// The device gave no credit for an answer within `send_timeout`.
    #[error("the device took no answer in time")]
    SendTimeout,
    /// The session or connection ended before both links were attached.
    #[error("the device left before its links were attached")]
    ClosedWhileOpening,
    /// Reading or writing the socket failed.
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
}
