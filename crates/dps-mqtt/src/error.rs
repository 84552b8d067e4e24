//! The crate's error enum: why one connection ended abnormally. Grouped by who is at fault;
//! none of them affects another connection.

use crate::codec::CodecError;

/// Why a connection ended other than by the session's own decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    // The peer misbehaved or went away.
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    TlsHandshake(#[source] std::io::Error),
    /// The TLS handshake did not finish within `tls_handshake_timeout`.
    #[error("TLS handshake timed out")]
    TlsHandshakeTimeout,
    /// The bytes are not MQTT 3.1.1, or a packet is over the size limit.
    #[error("bad packet")]
    Codec(#[from] CodecError),
    /// The peer closed the connection in the middle of a packet.
    #[error("connection closed in the middle of a packet")]
    ClosedMidPacket,
    /// The peer did not take our bytes within the write timeout.
    #[error("writing to the peer timed out")]
    WriteTimeout,
    /// Reading or writing the socket failed.
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),

    // Our own bug.
    /// A packet we built could not be encoded (a topic over 64 KiB, a packet id of 0).
    #[error("bug: an outgoing packet could not be encoded")]
    Encode(#[source] rumqttd::protocol::Error),
}
